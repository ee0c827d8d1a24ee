"""The JSON API's request models: the house rules checked first, pydantic's constraints kept for
the OpenAPI document."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, field_validator

from relay.core.fields import (
    ACTION_SCHEMA_PATTERN,
    APP_NAME_PATTERN,
    MAX_ACTION_CHARS,
    MAX_APP_NAME_CHARS,
    MAX_SERVICE_ID_CHARS,
    MAX_TOKEN_HEX,
    MIN_TOKEN_HEX,
    normalize_device_token,
    validate_action,
    validate_app_name,
    validate_service_id,
)
from relay.core.model import PUSH_TYPES, InvalidInput
from relay.core.payload import PRIORITY_RULE, AlertFields, PushSpec
from relay.core.quoting import shown
from relay.store.queue import MAX_BATCH

MAX_NOTIFICATION_ID_CHARS = 128
DEVICE_TOKEN = r"^(?:[0-9a-fA-F]{2})+$"


def _house_rule(check: Callable[[str, str], str]) -> BeforeValidator:
    """A field checked by the relay's own rule before pydantic's constraints, so a request to
    /v1 is refused in the words /gms/push uses; the constraints stay for the OpenAPI document.
    Not a string: left to pydantic's strict type check, whose error says so."""

    def validate(value: object, info: ValidationInfo) -> object:
        return check(value, info.field_name or "") if isinstance(value, str) else value

    return BeforeValidator(validate)


# The constraints before the house rule: pydantic then keeps the pattern in the JSON schema.
DeviceToken = Annotated[
    str,
    Field(pattern=DEVICE_TOKEN, min_length=MIN_TOKEN_HEX, max_length=MAX_TOKEN_HEX),
    _house_rule(normalize_device_token),
]
AppName = Annotated[
    str,
    Field(pattern=APP_NAME_PATTERN, max_length=MAX_APP_NAME_CHARS),
    _house_rule(validate_app_name),
]
ServiceId = Annotated[
    str,
    Field(min_length=1, max_length=MAX_SERVICE_ID_CHARS),
    _house_rule(validate_service_id),
]
NotificationId = Annotated[str, Field(min_length=1, max_length=MAX_NOTIFICATION_ID_CHARS)]
Action = Annotated[
    str,
    Field(pattern=ACTION_SCHEMA_PATTERN, max_length=MAX_ACTION_CHARS),
    _house_rule(validate_action),
]


# Strict: JSON's types are the contract, so "5" or true is no badge (the OpenAPI document says
# integer, and a lenient parse would accept what the document calls invalid).
class AlertIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, strict=True)
    title: str | None = Field(None, max_length=1024)
    subtitle: str | None = Field(None, max_length=1024)
    body: str | None = Field(None, max_length=4096)
    loc_key: str | None = Field(None, alias="loc-key", max_length=256)
    loc_args: list[str] | None = Field(None, alias="loc-args", max_length=32)
    title_loc_key: str | None = Field(None, alias="title-loc-key", max_length=256)
    title_loc_args: list[str] | None = Field(None, alias="title-loc-args", max_length=32)


class NotificationIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"not": {"required": ["ttl", "expires_at"]}},
    )
    device_token: DeviceToken
    app: AppName | None = None
    service_id: ServiceId | None = None
    action: Action | None = None
    alert: str | AlertIn | None = None
    sound: str | None = Field(None, max_length=256)
    badge: int | None = Field(None, ge=0, le=1_000_000)
    ttl: int | None = Field(None, gt=0)
    expires_at: int | None = Field(None, gt=0)
    priority: Literal[1, 5, 10] | None = None
    push_type: Annotated[str, Field(json_schema_extra={"enum": sorted(PUSH_TYPES)})] | None = None
    collapse_id: str | None = Field(None, max_length=64)
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    extra: dict[str, Any] = Field(default_factory=dict)

    @field_validator("priority", mode="before")
    @classmethod
    def _priority_not_bool(cls, value: object) -> object:
        # A Literal of ints takes true as 1 even in strict mode.
        if isinstance(value, bool):
            raise InvalidInput("priority", PRIORITY_RULE, received=shown(value))
        return value

    def to_spec(self) -> PushSpec:
        if self.ttl is not None and self.expires_at is not None:
            raise InvalidInput("ttl", "give ttl or expires_at, not both")
        alert: str | AlertFields | None
        if isinstance(self.alert, AlertIn):
            alert = AlertFields(**self.alert.model_dump())
        else:
            alert = self.alert
        return PushSpec(
            device_token=self.device_token.lower(),
            app=self.app,
            service_id=self.service_id,
            action=self.action,
            alert=alert,
            sound=self.sound,
            badge=self.badge,
            ttl_s=self.ttl,
            expires_at=self.expires_at,
            priority=self.priority,
            push_type=self.push_type,
            collapse_id=self.collapse_id,
            idempotency_key=self.idempotency_key,
            message_fields={},
            extra=self.extra,
            thread_id=None,
        )


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    # Queued in one enqueue_many call: the store's bound is the API's.
    notifications: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_BATCH)


class GmsPushIn(BaseModel):
    """GMS's customhttp body: the shapes GMS sends; any other is refused in the house wording."""

    deviceId: str = Field(  # GMS's name
        pattern=r"^(?:[a-z0-9][a-z0-9_-]*:)?(?:[0-9a-fA-F]{2})+$",
        description='the device token in hex, or "<app>:<token>"',
    )
    message: dict[str, Any] | Annotated[str, Field(min_length=1)] = Field(
        description="a callback event object, a JSON string of one, or text"
    )
