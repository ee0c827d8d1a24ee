"""The rules for the fields that name a push's target and purpose: the device token, the app's
name, GMS's service id and action. One rule each, for requests, GMS input and the settings."""

from __future__ import annotations

import re

from relay.core.model import InvalidInput
from relay.core.quoting import shown, shown_token

MIN_TOKEN_HEX = 8
MAX_TOKEN_HEX = 200
TOKEN_RULE = (
    f"must be {MIN_TOKEN_HEX} to {MAX_TOKEN_HEX} hex digits (0-9, a-f), an even number of them"
)
APP_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]*$"
MAX_APP_NAME_CHARS = 64
APP_NAME_RULE = (
    f"must be an app name: 1 to {MAX_APP_NAME_CHARS} of a-z, 0-9, '_', '-', starting with a-z"
    " or 0-9"
)
MAX_SERVICE_ID_CHARS = 128
MAX_ACTION_CHARS = 128
# GMS's POST URL is $(_id)/$(_action), so an action may name a sub-resource in '/'-separated
# segments (the chat's ixn/chat/refresh); "." and ".." segments would climb out of the service.
# Without lookarounds, so the OpenAPI schema (and pydantic's regex engine) can use it as is.
ACTION_SEGMENT = (
    r"(?:[A-Za-z0-9_-][A-Za-z0-9_.-]*|\.[A-Za-z0-9_-][A-Za-z0-9_.-]*|\.\.[A-Za-z0-9_.-]+)"
)
ACTION_SCHEMA_PATTERN = rf"^{ACTION_SEGMENT}(?:/{ACTION_SEGMENT})*$"
ACTION_PATTERN = re.compile(ACTION_SCHEMA_PATTERN.strip("^$"))
_DOT_SEGMENT = re.compile(r"(?:^|/)\.\.?(?:/|$)")
_HEX = re.compile(r"[0-9a-f]*")
_APP_NAME = re.compile(APP_NAME_PATTERN.strip("^$"))


def normalize_device_token(raw: str, field_name: str = "device_token") -> str:
    """A device token as lower-case hex; Apple says not to assume its length, so only bounds.
    One rule for every way a token can be wrong; what was received says which (never the
    token itself)."""
    token = raw.lower()
    if not MIN_TOKEN_HEX <= len(raw) <= MAX_TOKEN_HEX or len(raw) % 2 or not _HEX.fullmatch(token):
        raise InvalidInput(field_name, TOKEN_RULE, received=shown_token(raw))
    return token


def must_be_string(raw: object, field_name: str) -> str:
    if not isinstance(raw, str):
        raise InvalidInput(field_name, "must be a string", received=shown(raw))
    return raw


def validate_service_id(raw: object, field_name: str = "service_id") -> str:
    """A GMS service id: any non-empty string of bounded length (GMS's own are 32 A-Z0-9)."""
    service_id = must_be_string(raw, field_name)
    if not service_id:
        raise InvalidInput(field_name, "must not be empty", received=shown(raw))
    if len(service_id) > MAX_SERVICE_ID_CHARS:
        raise InvalidInput(
            field_name, f"must be at most {MAX_SERVICE_ID_CHARS} characters", received=shown(raw)
        )
    return service_id


def validate_action(raw: object, field_name: str = "action") -> str:
    """A GMS action name; the set is open, so only its alphabet and length are checked."""
    action = must_be_string(raw, field_name)
    if _DOT_SEGMENT.search(action):
        raise InvalidInput(
            field_name, "must not have a '.' or '..' segment", received=shown(action)
        )
    if not ACTION_PATTERN.fullmatch(action):
        raise InvalidInput(
            field_name,
            "must be a non-empty string of A-Z, a-z, 0-9, '_', '.', '-' "
            "(segments separated by '/')",
            received=shown(action),
        )
    if len(action) > MAX_ACTION_CHARS:
        raise InvalidInput(
            field_name, f"must be at most {MAX_ACTION_CHARS} characters", received=shown(action)
        )
    return action


def validate_app_name(raw: str, field_name: str = "app") -> str:
    """An app's name as a request gives it (whether it is configured is the settings' call)."""
    if len(raw) > MAX_APP_NAME_CHARS or not _APP_NAME.fullmatch(raw):
        raise InvalidInput(field_name, APP_NAME_RULE, received=shown(raw))
    return raw
