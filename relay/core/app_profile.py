"""An app as building its pushes sees it: plain data, no credentials, nothing read from disk
(config.App.profile() makes one; pure tests make their own)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from relay.core.alerts import DEFAULT_ALERTS, GENERIC_ALERT, AlertTemplate

# The `_action` of a chat push when an app names none (config: apps[].chat.action).
DEFAULT_CHAT_ACTION = "ixn/chat/refresh"


@dataclass(frozen=True, slots=True)
class AppProfile:
    name: str
    push_type: str  # the app's default push type
    priority: int  # the app's default priority
    sound: str | None  # alert pushes' sound; None: silent
    message_encoding: Literal["object", "string"]  # the message beside aps: an object, or JSON text
    alerts: Mapping[str, AlertTemplate]  # the app's own alerts by action
    chat_typing: Literal["none", "background"]  # typing notices: dropped, or background pushes
    chat_action: str  # the `_action` chat pushes carry
    # How long a push lives (seconds) when its request gives no ttl: by `_action` for callback
    # pushes, by chat event (message, joined, left, typing, ended) for chat pushes; an action or
    # event not named here lives queue.default_ttl_seconds.
    ttl_by_action: Mapping[str, int] = field(default_factory=dict)
    chat_ttl_by_event: Mapping[str, int] = field(default_factory=dict)
    # The chat fields a chat push's `message` carries beside the seed's _id/_action.
    chat_message_fields: tuple[str, ...] = ()
    # Signs the delivery receipt alert pushes carry (apps[].receipts); None: no receipt.
    receipt_secret: bytes | None = None

    def lifetime_s(self, action: str | None, chat_event: str | None) -> int | None:
        """This app's lifetime for a push of `action` (or of a chat event); None: the default."""
        if chat_event is not None:
            return self.chat_ttl_by_event.get(chat_event)
        return None if action is None else self.ttl_by_action.get(action)

    def alert_template(self, action: str | None) -> AlertTemplate:
        """This app's alert for an action: its own, else the shipped default, else generic."""
        if action is not None:
            if action in self.alerts:
                return self.alerts[action]
            if action in DEFAULT_ALERTS:
                return DEFAULT_ALERTS[action]
        return GENERIC_ALERT
