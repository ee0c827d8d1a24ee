"""App profiles for pure tests of payload building: an app as the relay's defaults configure it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from relay.config.schema import App, ChatSettings
from relay.core.app_profile import AppProfile


def app_profile(name: str = "demo", **changes: Any) -> AppProfile:
    """An app configured with nothing but its name (the settings' defaults), then `changes`."""
    defaults = App.model_fields
    plain = AppProfile(
        name=name,
        push_type=defaults["push_type"].default,
        priority=defaults["priority"].default,
        sound=defaults["sound"].default,
        message_encoding=defaults["message_encoding"].default,
        alerts={},
        chat_typing=ChatSettings().typing,
        chat_action=ChatSettings().action,
        ttl_by_action=defaults["ttl_by_action"].default,
        chat_ttl_by_event={},
        chat_message_fields=tuple(ChatSettings().message_fields),
    )
    return replace(plain, **changes)
