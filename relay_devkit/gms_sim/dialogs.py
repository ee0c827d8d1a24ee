"""The seed's six callback dialogs and the answers to their menu targets as data; filling them.

Transcribed from the seed, the GMS API Reference page "Callback Push Notifications for iOS"
(docs.genesys.com), section "Dialogs (REST)". The seed's JSON is printed from a PDF and is not
valid as printed; these repairs keep its structure and every value (the chat event repairs are
listed in chat.py's terms in docs/gms.md):

- get-dialog-user-confirmation-provide_code-true is split across two page blocks: the first closes
  after `_user_action_url` (with a trailing comma), the second starts at `_method` without an
  opening brace. They are one object here, keys in the seed's order.
- get-dialog-user-confirmation-provide_code-false is split across two page blocks inside its first
  menu item (after `"_dialog_id": "1",`); joined.
- Trailing commas are dropped (provide_code-false's first menu item; the message format
  `{"_id": ..., "_action": ...,}`).
- The `confirmation_dialog._text` string wrapped across two lines is joined with one space.
- connect-outbound is split across two page blocks; joined.

The menu targets (`connect`, `snooze`) are not in the seed. `connect` answers with the seed's own
connect-outbound / connect-inbound dialog (the callback's connect mode); `snooze`'s answers
(snoozed, cancelled, given up) are inferred, shaped like the seed's ConfirmationDialog.
`get-dialog-user-confirmation` (the menus' `_resource_url`) shows the open menu again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeAlias

JsonValue: TypeAlias = dict[str, "JsonValue"] | list["JsonValue"] | str | int | float | bool | None
JsonObject: TypeAlias = dict[str, JsonValue]

_MENU_ITEM_NO: JsonObject = {
    "_dialog_id": "2",
    "_label": "No, try again in 5 minutes",
    "_action": "MenuItem",
    "_user_action_url": "$(ExtURLBase)/1/service/$(ServiceID)/snooze",
    "_method": "POST",
    "_id_to_jump_before": "exit://",
}
_MENU_ITEM_CANCEL: JsonObject = {
    "_dialog_id": "3",
    "_label": "Cancel, my problem has been solved",
    "_action": "MenuItem",
    "_user_action_url": "$(ExtURLBase)/1/service/$(ServiceID)/snooze",
    "_method": "POST",
    "_id_to_jump_before": "exit://",
}
_MENU_ITEM_YES: JsonObject = {
    "_dialog_id": "1",
    "_label": "Yes, I'm ready to talk",
    "_action": "MenuItem",
    "_user_action_url": "$(ExtURLBase)/1/service/$(ServiceID)/connect",
    "_method": "POST",
    "_id_to_jump_before": "exit://",
}


def _user_confirmation_menu(yes_item: JsonObject) -> JsonObject:
    """The two user-confirmation dialogs differ only in their first menu item."""
    return {
        "_dialog_id": "0",
        "_label": "Agent is available right now",
        "_user_action_url": "$(ExtURLBase)/1/service/$(ServiceID)/not-used",
        "_method": "POST",
        "_action": "DisplayMenu",
        "_expires": "$(Date)",
        "_resource_url": "$(ExtURLBase)/1/service/$(ServiceID)/get-dialog-user-confirmation",
        "_content": [
            {
                "_group_name": "Are you ready?",
                "_group_content": [yes_item, _MENU_ITEM_NO, _MENU_ITEM_CANCEL],
            }
        ],
    }


_CONNECT_INBOUND: JsonObject = {
    "_dialog_id": "0",
    "_label": "Connecting ...",
    "_action": "DialNumber",
    "_tel_url": "n/a",
    "_access_code": "n/a",
    "_id": "$(ServiceID)",
}
_CONNECT_OUTBOUND: JsonObject = {
    "_dialog_id": "0",
    "_action": "ConfirmationDialog",
    "_text": "You will receive the call shortly",
    "_ok_title": "Ok",
    "_id": "$(ServiceID)",
}

# action -> dialog template, exactly the seed's six.
SEED_DIALOGS: Mapping[str, JsonObject] = {
    "get-dialog-user-confirmation-provide_code-true": _user_confirmation_menu(
        {
            **_MENU_ITEM_YES,
            "confirmation_dialog": {
                "_text": "You will hear tones immediately after call is connected. This is normal.",
                "_dialog_type": "Notification",
                "_dismiss_timeout": 2,
            },
        }
    ),
    "get-dialog-user-confirmation-provide_code-false": _user_confirmation_menu(_MENU_ITEM_YES),
    "get-dialog-start-chat": {
        "_dialog_id": "1",
        "_action": "StartChat",
        "_label": "Start Chat",
        "_start_chat_url": "$(ExtURLBase)/1/service/$(ServiceID)/ixn/chat",
        "_comet_url": "$(CometURL)",
        "_user_header": "$(GMSUser)",
        "_id_to_jump_before": "exit://",
        "_chat_parameters": {"subject": "None"},
        "_id": "$(ServiceID)",
    },
    "connect-inbound": _CONNECT_INBOUND,
    "connect-outbound": _CONNECT_OUTBOUND,
    "wait-for-agent": {
        "_dialog_id": "0",
        "_action": "ConfirmationDialog",
        "_text": "We will notify you when agent is available",
        "_ok_title": "Ok",
        "_id": "$(ServiceID)",
    },
}

CONNECT_MODES = ("outbound", "inbound")

_PLACEHOLDER = re.compile(r"\$\((\w+)\)")


@dataclass(frozen=True, slots=True)
class DialogContext:
    """The values GMS substitutes into a dialog for one service."""

    ext_url_base: str  # e.g. http://127.0.0.1:8080/genesys: the seed's URLs add /1/service/...
    service_id: str
    gms_user: str
    expires_at: datetime

    @property
    def comet_url(self) -> str:
        return f"{self.ext_url_base}/cometd"

    def placeholder_values(self) -> dict[str, str]:
        return {
            "ExtURLBase": self.ext_url_base,
            "ServiceID": self.service_id,
            "CometURL": self.comet_url,
            "GMSUser": self.gms_user,
            "Date": format_timestamp(self.expires_at),
        }


def format_timestamp(moment: datetime) -> str:
    """The seed's UTC time format, YYYY-MM-DDTHH:MM:SSZ."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fill_placeholders(template: JsonValue, values: Mapping[str, str]) -> JsonValue:
    """A copy of `template` with every `$(Name)` in its strings replaced by values[Name]."""
    if isinstance(template, str):

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in values:
                raise KeyError(f"placeholder $({name}) has no value; known: {sorted(values)}")
            return values[name]

        return _PLACEHOLDER.sub(substitute, template)
    if isinstance(template, dict):
        return {key: fill_placeholders(value, values) for key, value in template.items()}
    if isinstance(template, list):
        return [fill_placeholders(item, values) for item in template]
    return template


def _filled(template: JsonObject, context: DialogContext) -> JsonObject:
    filled = fill_placeholders(template, context.placeholder_values())
    assert isinstance(filled, dict)  # filling keeps the template's shape
    return filled


def seed_dialog(action: str, context: DialogContext) -> JsonObject | None:
    """The seed's dialog for a callback action, filled for one service; None if not of the six."""
    template = SEED_DIALOGS.get(action)
    return None if template is None else _filled(template, context)


def notice_dialog(text: str, context: DialogContext) -> JsonObject:
    """A ConfirmationDialog like the seed's wait-for-agent, saying `text` (inferred answers)."""
    return _filled(
        {
            "_dialog_id": "0",
            "_action": "ConfirmationDialog",
            "_text": text,
            "_ok_title": "Ok",
            "_id": "$(ServiceID)",
        },
        context,
    )


def snooze_text(delay_s: float) -> str:
    """The seed's menu promises "try again in 5 minutes": say the delay as the option sets it."""
    if delay_s >= 60 and delay_s % 60 == 0:
        minutes = int(delay_s // 60)
        return f"We will notify you again in {minutes} minute{'s' if minutes != 1 else ''}"
    return f"We will notify you again in {delay_s:g} second{'' if delay_s == 1 else 's'}"


CANCELLED_TEXT = "Your callback has been cancelled"
GAVE_UP_TEXT = "We could not reach you; your callback has been cancelled"
