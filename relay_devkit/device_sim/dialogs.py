"""What the iOS app reads: an APNs push's `aps` alert and `message`, and GMS's dialog JSON.

The dialogs and their directives are the seed's ("Dialogs (REST)"): DisplayMenu with `_expires`,
`_resource_url`, `_method` and menu items carrying `_user_action_url`, `_method`,
`_id_to_jump_before` and an optional `confirmation_dialog` (`_text`, `_dialog_type`,
`_dismiss_timeout`); StartChat with `_start_chat_url`, `_comet_url`, `_user_header`,
`_chat_parameters`, `_id_to_jump_before`; DialNumber; ConfirmationDialog.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import TypeAlias

JsonValue: TypeAlias = dict[str, "JsonValue"] | list["JsonValue"] | str | int | float | bool | None


class DialogError(ValueError):
    """GMS answered with JSON the app cannot execute: names the field and what was expected."""


# What arrives in a push.


@dataclass(frozen=True, slots=True)
class CallbackMessage:
    """The seed's message component: which GMS service and which action to fetch."""

    service_id: str
    action: str
    fields: Mapping[str, JsonValue]  # the whole message object, extra keys included


@dataclass(frozen=True, slots=True)
class IncomingPush:
    alert_title: str | None
    alert_body: str | None
    message: CallbackMessage | None
    raw_message: JsonValue  # as found in the payload: object, JSON string, text or absent (None)


def _alert_text(alert: object) -> tuple[str | None, str | None]:
    if isinstance(alert, str):
        return None, alert
    if isinstance(alert, Mapping):
        title, body = alert.get("title"), alert.get("body")
        return (
            title if isinstance(title, str) else None,
            body if isinstance(body, str) else None,
        )
    return None, None


def _decoded_message(raw: object) -> object:
    """The message as an object when it is one, or a JSON-encoded string of one."""
    if isinstance(raw, str):
        try:
            return json.loads(raw)
        except ValueError:
            return raw  # plain text
    return raw


def read_push(payload: Mapping[str, object]) -> IncomingPush:
    """What the app reads from an APNs payload: the `aps` alert and the `message` component."""
    aps = payload.get("aps")
    title, body = _alert_text(aps.get("alert") if isinstance(aps, Mapping) else None)
    raw = payload.get("message")
    decoded = _decoded_message(raw)
    message = None
    if isinstance(decoded, dict):
        service_id, action = decoded.get("_id"), decoded.get("_action")
        if isinstance(service_id, str) and isinstance(action, str) and service_id and action:
            message = CallbackMessage(service_id, action, decoded)
    raw_message: JsonValue = raw if isinstance(raw, str | dict) else None
    return IncomingPush(title, body, message, raw_message)


def dialog_url(server_url: str, url_path: str, service_id: str, action: str) -> str:
    """The seed's `$(ServerURL)$(URLPath)$(_id)/$(_action)`, concatenated exactly."""
    return f"{server_url}{url_path}{service_id}/{action}"


# The dialogs GMS answers with.


@dataclass(frozen=True, slots=True)
class ItemConfirmation:
    """A menu item's `confirmation_dialog`, shown once the item is chosen."""

    text: str
    dialog_type: str  # the seed's "Notification" dismisses itself; other types wait for OK
    dismiss_timeout_s: float | None


@dataclass(frozen=True, slots=True)
class MenuItem:
    dialog_id: str
    label: str
    user_action_url: str
    method: str
    jump_before: str | None  # _id_to_jump_before: "exit://" closes the flow after this item
    confirmation: ItemConfirmation | None


@dataclass(frozen=True, slots=True)
class MenuGroup:
    name: str
    items: tuple[MenuItem, ...]


@dataclass(frozen=True, slots=True)
class DisplayMenu:
    label: str
    groups: tuple[MenuGroup, ...]
    expires_at: float | None  # _expires as epoch seconds; a choice after it is refused
    expires_problem: str | None  # why an _expires given could not be read (the menu still shows)
    resource_url: str | None  # where the menu itself is fetched again
    method: str  # the menu's own _method, used to fetch _resource_url

    def item(self, label: str) -> tuple[str, MenuItem] | None:
        """(group name, item) of the item labelled `label`."""
        for group in self.groups:
            for item in group.items:
                if item.label == label:
                    return group.name, item
        return None

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(item.label for group in self.groups for item in group.items)


@dataclass(frozen=True, slots=True)
class StartChat:
    label: str
    start_chat_url: str
    comet_url: str
    user_header: str
    chat_parameters: Mapping[str, JsonValue]
    service_id: str | None
    jump_before: str | None


@dataclass(frozen=True, slots=True)
class DialNumber:
    label: str
    tel_url: str
    access_code: str
    service_id: str | None


@dataclass(frozen=True, slots=True)
class ConfirmationDialog:
    text: str
    ok_title: str
    service_id: str | None


@dataclass(frozen=True, slots=True)
class UnknownDialog:
    """An `_action` this app does not know: shown as nothing, kept for the transcript."""

    action: str
    raw: Mapping[str, JsonValue]


Dialog: TypeAlias = DisplayMenu | StartChat | DialNumber | ConfirmationDialog | UnknownDialog


def _text(obj: Mapping[str, JsonValue], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise DialogError(f"{where}{key}: expected a string, got {value!r}")
    return value


def _optional_text(obj: Mapping[str, JsonValue], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) else None


def _objects(obj: Mapping[str, JsonValue], key: str, where: str) -> list[dict[str, JsonValue]]:
    value = obj.get(key)
    if not isinstance(value, list) or not all(isinstance(entry, dict) for entry in value):
        raise DialogError(f"{where}{key}: expected a list of objects, got {value!r}")
    return [entry for entry in value if isinstance(entry, dict)]


def _item_confirmation(obj: JsonValue, where: str) -> ItemConfirmation | None:
    if not isinstance(obj, dict):
        return None
    timeout = obj.get("_dismiss_timeout")
    if timeout is not None and (not isinstance(timeout, int | float) or isinstance(timeout, bool)):
        raise DialogError(f"{where}confirmation_dialog._dismiss_timeout: expected seconds")
    return ItemConfirmation(
        text=_text(obj, "_text", f"{where}confirmation_dialog."),
        dialog_type=_optional_text(obj, "_dialog_type") or "",
        dismiss_timeout_s=None if timeout is None else float(timeout),
    )


def _menu_item(obj: Mapping[str, JsonValue], where: str) -> MenuItem:
    return MenuItem(
        dialog_id=_optional_text(obj, "_dialog_id") or "",
        label=_text(obj, "_label", where),
        user_action_url=_text(obj, "_user_action_url", where),
        method=_optional_text(obj, "_method") or "POST",
        jump_before=_optional_text(obj, "_id_to_jump_before"),
        confirmation=_item_confirmation(obj.get("confirmation_dialog"), where),
    )


# `EEE MMM dd HH:mm:ss zzz yyyy` (java.util.Date.toString) names its zone by abbreviation; these
# are the ones read (US abbreviations where one is ambiguous). Others leave the time unread.
_ZONE_ABBREVIATIONS = {
    "UTC": 0, "GMT": 0, "Z": 0, "WET": 0, "BST": 1, "CET": 1, "WEST": 1, "CEST": 2, "EET": 2,
    "EEST": 3, "MSK": 3, "IST": 5.5, "JST": 9, "AEST": 10, "AEDT": 11, "NZST": 12, "NZDT": 13,
    "AKST": -9, "AKDT": -8, "HST": -10, "PST": -8, "PDT": -7, "MST": -7, "MDT": -6,
    "CST": -6, "CDT": -5, "EST": -5, "EDT": -4,
}  # fmt: skip
_JAVA_DATE_TO_STRING = "%a %b %d %H:%M:%S %Y"  # with the zone taken out
DATE_FORMATS = (
    "ISO-8601 with a zone (the seed's YYYY-MM-DDTHH:MM:SSZ, java.time.Instant's, offsets)",
    "EEE MMM dd HH:mm:ss zzz yyyy (java.util.Date.toString)",
    "RFC 1123 (EEE, dd MMM yyyy HH:mm:ss GMT)",
    "epoch milliseconds (java.util.Date.getTime)",
)


def parse_timestamp(text: str, where: str) -> float:
    """A GMS time ($(Date), $(Timestamp)) as epoch seconds. The seed gives $(Timestamp)'s format
    (YYYY-MM-DDTHH:MM:SSZ) but none for $(Date); GMS is a Java service, so the formats one
    plausibly emits are read too (DATE_FORMATS). DialogError says why a text is none of them."""
    stripped = text.strip()
    for read in (_iso_8601, _java_date_to_string, _rfc_1123, _epoch_ms):
        try:
            moment = read(stripped)
        except (ValueError, TypeError, IndexError, OverflowError):
            continue
        if moment is not None:
            return moment
    raise DialogError(f"{where}: {text!r} is not a time in any of: {'; '.join(DATE_FORMATS)}")


def _iso_8601(text: str) -> float | None:
    moment = datetime.fromisoformat(text)
    return None if moment.tzinfo is None else moment.timestamp()  # no zone: which moment?


def _java_date_to_string(text: str) -> float | None:
    parts = text.split()
    if len(parts) != 6 or parts[4].upper() not in _ZONE_ABBREVIATIONS:
        return None
    offset = timedelta(hours=_ZONE_ABBREVIATIONS[parts[4].upper()])
    local = datetime.strptime(" ".join(parts[:4] + parts[5:]), _JAVA_DATE_TO_STRING)
    return local.replace(tzinfo=timezone(offset)).timestamp()


def _rfc_1123(text: str) -> float | None:
    moment = parsedate_to_datetime(text)
    return None if moment.tzinfo is None else moment.timestamp()


def _epoch_ms(text: str) -> float | None:
    return int(text) / 1000 if text.isascii() and text.isdigit() and len(text) == 13 else None


def _display_menu(obj: Mapping[str, JsonValue]) -> DisplayMenu:
    groups = []
    for g, group in enumerate(_objects(obj, "_content", "")):
        where = f"_content[{g}]."
        items = tuple(
            _menu_item(item, f"{where}_group_content[{i}].")
            for i, item in enumerate(_objects(group, "_group_content", where))
        )
        groups.append(MenuGroup(_text(group, "_group_name", where), items))
    expires = _optional_text(obj, "_expires")
    expires_at, expires_problem = None, None
    if expires is not None:
        try:
            expires_at = parse_timestamp(expires, "_expires")
        except DialogError as error:  # the menu is still worth showing: only its deadline is lost
            expires_problem = str(error)
    return DisplayMenu(
        label=_optional_text(obj, "_label") or "",
        groups=tuple(groups),
        expires_at=expires_at,
        expires_problem=expires_problem,
        resource_url=_optional_text(obj, "_resource_url"),
        method=_optional_text(obj, "_method") or "POST",
    )


def _start_chat(obj: Mapping[str, JsonValue]) -> StartChat:
    parameters = obj.get("_chat_parameters")
    return StartChat(
        label=_optional_text(obj, "_label") or "",
        start_chat_url=_text(obj, "_start_chat_url", ""),
        comet_url=_text(obj, "_comet_url", ""),
        user_header=_optional_text(obj, "_user_header") or "",
        chat_parameters=parameters if isinstance(parameters, dict) else {},
        service_id=_optional_text(obj, "_id"),
        jump_before=_optional_text(obj, "_id_to_jump_before"),
    )


def _dial_number(obj: Mapping[str, JsonValue]) -> DialNumber:
    return DialNumber(
        label=_optional_text(obj, "_label") or "",
        tel_url=_text(obj, "_tel_url", ""),
        access_code=_optional_text(obj, "_access_code") or "",
        service_id=_optional_text(obj, "_id"),
    )


def _confirmation_dialog(obj: Mapping[str, JsonValue]) -> ConfirmationDialog:
    return ConfirmationDialog(
        text=_text(obj, "_text", ""),
        ok_title=_optional_text(obj, "_ok_title") or "Ok",
        service_id=_optional_text(obj, "_id"),
    )


_DIALOG_READERS: Mapping[str, Callable[[Mapping[str, JsonValue]], Dialog]] = {
    "DisplayMenu": _display_menu,
    "StartChat": _start_chat,
    "DialNumber": _dial_number,
    "ConfirmationDialog": _confirmation_dialog,
}


def read_dialog(answer: JsonValue) -> Dialog:
    """Interpret GMS's answer by its `_action`, as the sample app does."""
    if not isinstance(answer, dict):
        raise DialogError(f"dialog: expected a JSON object, got {type(answer).__name__}")
    action = _text(answer, "_action", "")
    reader = _DIALOG_READERS.get(action)
    return UnknownDialog(action, answer) if reader is None else reader(answer)


# Chat: the seed's Comet event `message` object; the ixn/chat and ixn/chat/refresh answers
# (inferred) have the same shape.


@dataclass(frozen=True, slots=True)
class ChatLineSeen:
    position: int
    kind: str
    nick: str
    text: str
    number: str  # the seed's 4th element, kept apart from the position
    party: str


@dataclass(frozen=True, slots=True)
class ChatUpdate:
    chat_session_id: str
    state: str  # TRANSCRIPT or DISCONNECTED
    position: int  # transcriptPosition: the position of the last line shown
    lines: tuple[ChatLineSeen, ...]
    comet_url: str | None  # in the ixn/chat answer only
    tag: str | None


def is_chat_message(obj: JsonValue) -> bool:
    return isinstance(obj, dict) and "transcriptToShow" in obj


def read_chat_message(obj: Mapping[str, JsonValue], tag: str | None = None) -> ChatUpdate:
    """A chat `message` object: its lines, numbered so that the last is at transcriptPosition."""
    raw_position = obj.get("transcriptPosition")
    if not isinstance(raw_position, str | int) or not str(raw_position).isdigit():
        raise DialogError(f"transcriptPosition: expected a position, got {raw_position!r}")
    position = int(raw_position)
    raw_lines = obj.get("transcriptToShow")
    if not isinstance(raw_lines, list):
        raise DialogError("transcriptToShow: expected a list of lines")
    lines = []
    first = position - len(raw_lines) + 1
    for index, line in enumerate(raw_lines):
        if not (
            isinstance(line, list) and len(line) == 5 and all(isinstance(x, str) for x in line)
        ):
            raise DialogError(f"transcriptToShow[{index}]: expected [type, nick, text, n, party]")
        kind, nick, text, number, party = (str(x) for x in line)
        lines.append(ChatLineSeen(first + index, kind, nick, text, number, party))
    comet_url = obj.get("_comet_url")
    own_tag = obj.get("tag")
    return ChatUpdate(
        chat_session_id=str(obj.get("chatSessionId", "")),
        state=str(obj.get("chatIxnState", "")),
        position=position,
        lines=tuple(lines),
        comet_url=comet_url if isinstance(comet_url, str) else None,
        tag=tag if tag is not None else own_tag if isinstance(own_tag, str) else None,
    )


def read_chat_event(event: Mapping[str, object]) -> ChatUpdate | None:
    """A Comet message on /_genesys as the seed shows it; None when it is not a chat event."""
    data = event.get("data")
    if not isinstance(data, dict):
        return None
    message, tag = data.get("message"), data.get("tag")
    if not is_chat_message(message) or not isinstance(tag, str):
        return None
    assert isinstance(message, dict)  # is_chat_message checked it
    return read_chat_message(message, tag)
