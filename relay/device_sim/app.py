"""The iOS app's logic with no I/O: processAPN, the dialog interpreter and the user's transcript.

`DeviceApp` is a sans-IO state machine: it takes a push payload (or the answer to a POST it asked
for) and returns the POSTs to make next, recording in `transcript` what a user would have seen.

Which pushes are fetched from GMS as dialogs (the rule the seed's processAPN implies, made
explicit): a push whose `message` holds a string `_id` and a string `_action` is a callback push,
and the app POSTs `$(ServerURL)$(URLPath)$(_id)/$(_action)`, for any action (the set is open),
except actions starting with `chat_action_prefix` (default "chat-", e.g. the relay's
"chat-message"): those are chat lines, shown as the alert only, because GMS has no dialog for them
and the chat itself runs over Comet. A push with no such message (plain alert text, a Comet chat
event) is likewise shown and not POSTed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias, TypeVar

DEFAULT_URL_PATH = "/genesys/1/service/"
DEFAULT_CHAT_ACTION_PREFIX = "chat-"

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
class MenuItem:
    dialog_id: str
    label: str
    user_action_url: str
    method: str
    confirmation_text: str | None  # the item's confirmation_dialog, shown once it is chosen


@dataclass(frozen=True, slots=True)
class MenuGroup:
    name: str
    items: tuple[MenuItem, ...]


@dataclass(frozen=True, slots=True)
class DisplayMenu:
    label: str
    groups: tuple[MenuGroup, ...]
    expires: str | None
    resource_url: str | None


@dataclass(frozen=True, slots=True)
class StartChat:
    label: str
    start_chat_url: str
    comet_url: str
    user_header: str
    chat_parameters: Mapping[str, JsonValue]
    service_id: str | None


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


def _menu_item(obj: Mapping[str, JsonValue], where: str) -> MenuItem:
    confirmation = obj.get("confirmation_dialog")
    return MenuItem(
        dialog_id=_optional_text(obj, "_dialog_id") or "",
        label=_text(obj, "_label", where),
        user_action_url=_text(obj, "_user_action_url", where),
        method=_optional_text(obj, "_method") or "POST",
        confirmation_text=(
            _optional_text(confirmation, "_text") if isinstance(confirmation, dict) else None
        ),
    )


def _display_menu(obj: Mapping[str, JsonValue]) -> DisplayMenu:
    groups = []
    for g, group in enumerate(_objects(obj, "_content", "")):
        where = f"_content[{g}]."
        items = tuple(
            _menu_item(item, f"{where}_group_content[{i}].")
            for i, item in enumerate(_objects(group, "_group_content", where))
        )
        groups.append(MenuGroup(_text(group, "_group_name", where), items))
    return DisplayMenu(
        label=_optional_text(obj, "_label") or "",
        groups=tuple(groups),
        expires=_optional_text(obj, "_expires"),
        resource_url=_optional_text(obj, "_resource_url"),
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


# How the simulated user answers a menu.

MenuPolicy: TypeAlias = Callable[[DisplayMenu], MenuItem | None]


def first_item(menu: DisplayMenu) -> MenuItem | None:
    return next((item for group in menu.groups for item in group.items), None)


def dismiss(menu: DisplayMenu) -> MenuItem | None:
    return None


def item_labelled(label: str) -> MenuPolicy:
    def choose(menu: DisplayMenu) -> MenuItem | None:
        return next(
            (item for group in menu.groups for item in group.items if item.label == label), None
        )

    return choose


# What the user saw: the transcript. `at` is epoch seconds.


@dataclass(frozen=True, slots=True)
class AlertShown:
    at: float
    title: str | None
    body: str | None
    service_id: str | None
    action: str | None
    # The callback message's other keys (e.g. a chat line's chatSessionId, transcriptPosition).
    message_fields: Mapping[str, JsonValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PushNotPosted:
    """A push the app showed but did not fetch a dialog for, and why."""

    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class UrlPosted:
    at: float
    url: str


@dataclass(frozen=True, slots=True)
class DialogShown:
    at: float
    url: str
    dialog: Dialog


@dataclass(frozen=True, slots=True)
class MenuChoice:
    at: float
    group_name: str
    label: str
    url: str
    confirmation_text: str | None


@dataclass(frozen=True, slots=True)
class MenuDismissed:
    at: float
    labels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ChatOpened:
    at: float
    url: str
    answer: Mapping[str, JsonValue]


@dataclass(frozen=True, slots=True)
class GmsFailure:
    """A POST that did not yield a dialog: a non-200 answer, bad JSON, or no answer at all."""

    at: float
    url: str
    status: int  # 0 when no HTTP answer arrived
    detail: str


TranscriptEntry: TypeAlias = (
    AlertShown
    | PushNotPosted
    | UrlPosted
    | DialogShown
    | MenuChoice
    | MenuDismissed
    | ChatOpened
    | GmsFailure
)


# The POSTs the app asks its shell to make.


@dataclass(frozen=True, slots=True)
class PostRequest:
    url: str
    purpose: Literal["dialog", "start-chat"]
    headers: Mapping[str, str] = field(default_factory=dict)
    method: str = "POST"


@dataclass(frozen=True, slots=True)
class AppSettings:
    server_url: str  # $(ServerURL), e.g. http://127.0.0.1:8080
    url_path: str = DEFAULT_URL_PATH  # $(URLPath)
    gms_user: str = ""  # sent as the gms_user header when set
    menu_policy: MenuPolicy = first_item
    start_chat: bool = False  # POST StartChat's _start_chat_url, as opening the chat view does
    chat_action_prefix: str = DEFAULT_CHAT_ACTION_PREFIX


@dataclass
class DeviceApp:
    """The app's state: its settings and what the user has seen so far."""

    settings: AppSettings
    transcript: list[TranscriptEntry] = field(default_factory=list)
    pushes_received: int = 0

    def _headers(self) -> dict[str, str]:
        return {"gms_user": self.settings.gms_user} if self.settings.gms_user else {}

    def _post(self, url: str, purpose: Literal["dialog", "start-chat"], at: float) -> PostRequest:
        self.transcript.append(UrlPosted(at, url))
        return PostRequest(url, purpose, self._headers())

    def receive_push(self, payload: Mapping[str, object], at: float) -> list[PostRequest]:
        """processAPN: show the alert; for a callback push, ask for its dialog."""
        self.pushes_received += 1
        push = read_push(payload)
        message = push.message
        self.transcript.append(
            AlertShown(
                at,
                push.alert_title,
                push.alert_body,
                message.service_id if message else None,
                message.action if message else None,
                message.fields if message else {},
            )
        )
        if message is None:
            self.transcript.append(PushNotPosted(at, "no _id/_action in the message component"))
            return []
        if message.action.startswith(self.settings.chat_action_prefix):
            self.transcript.append(
                PushNotPosted(at, f"chat push ({message.action}): the alert is the chat line")
            )
            return []
        url = dialog_url(
            self.settings.server_url, self.settings.url_path, message.service_id, message.action
        )
        return [self._post(url, "dialog", at)]

    def receive_answer(
        self, request: PostRequest, status: int, body: bytes, at: float
    ) -> list[PostRequest]:
        """Execute GMS's answer to one of our POSTs; returns the POSTs that follow from it."""
        if status != 200:
            self.transcript.append(
                GmsFailure(at, request.url, status, body[:500].decode("utf-8", "replace"))
            )
            return []
        try:
            answer = json.loads(body)
            if request.purpose == "start-chat":
                if not isinstance(answer, dict):
                    raise DialogError("chat start answer: expected a JSON object")
                self.transcript.append(ChatOpened(at, request.url, answer))
                return []
            dialog = read_dialog(answer)
        except ValueError as error:  # DialogError and JSONDecodeError both
            self.transcript.append(GmsFailure(at, request.url, status, str(error)))
            return []
        self.transcript.append(DialogShown(at, request.url, dialog))
        return self._execute(dialog, at)

    def receive_no_answer(self, request: PostRequest, error: str, at: float) -> None:
        self.transcript.append(GmsFailure(at, request.url, 0, error))

    def _execute(self, dialog: Dialog, at: float) -> list[PostRequest]:
        if isinstance(dialog, DisplayMenu):
            chosen = self.settings.menu_policy(dialog)
            if chosen is None:
                labels = tuple(item.label for group in dialog.groups for item in group.items)
                self.transcript.append(MenuDismissed(at, labels))
                return []
            group_name = next(g.name for g in dialog.groups if chosen in g.items)
            self.transcript.append(
                MenuChoice(
                    at, group_name, chosen.label, chosen.user_action_url, chosen.confirmation_text
                )
            )
            return [self._post(chosen.user_action_url, "dialog", at)]
        if isinstance(dialog, StartChat) and self.settings.start_chat:
            return [self._post(dialog.start_chat_url, "start-chat", at)]
        # ConfirmationDialog, DialNumber and the rest end the exchange: the user taps OK or dials.
        return []


EntryT = TypeVar("EntryT", bound=TranscriptEntry)


def entries_of(transcript: Sequence[TranscriptEntry], kind: type[EntryT]) -> list[EntryT]:
    """The transcript's entries of one kind, in order."""
    return [entry for entry in transcript if isinstance(entry, kind)]
