"""The iOS app's logic with no I/O: processAPN, the confirmation the user answers, the dialog
interpreter with its directives, the chat view, and the transcript of what the user saw.

`DeviceApp` takes inputs (a push, GMS's answer to a request it asked for, a Comet message, the
app going to the background or foreground, the user typing a chat line) and returns effects for
its shell to carry out (HTTP requests, opening or closing the Comet session).

From the seed: "The "aps" component specifies the confirmation dialog to display to the user";
then "The _id and _action parameters are extracted and used to construct a URL for a POST to GMS"
for every push (the set of actions is open); the dialog directives listed in dialogs.py.
Inferred, as iOS apps behave and the seed does not say:
- In the foreground a push is shown as an alert dialog by the app, in the background as a
  notification; accepting (tapping) it POSTs, declining (dismissing) or ignoring it does not. A
  tapped notification brings the app to the foreground.
- A chat push in the foreground, while the app's Comet session for that chat is open, shows
  nothing: the line already came over Comet. The app tells a chat push by the seed's `_id` and
  `_action` alone: the POST they make goes under the open chat's `_start_chat_url` (the relay's
  default chat `_action`, ixn/chat/refresh, makes .../service/<id>/ixn/chat/refresh).
- A menu item's Notification-type `confirmation_dialog` is shown first and dismisses itself after
  `_dismiss_timeout` seconds; then the item's request is made. A menu choice made after the menu's
  `_expires` is refused by the app. `_id_to_jump_before: "exit://"` closes the flow (back to the
  app's start screen) once the item's answer is shown, or once the chat it started has ended.
- The chosen item's `_dialog_id` is sent as a form field (GMS needs it: the seed's "No" and
  "Cancel" items POST the same URL); the refresh POST sends `transcriptPosition`, the first
  position the app has not seen; chat lines go to `<_start_chat_url>/send`, leaving to
  `<_start_chat_url>/disconnect`; StartChat's `_user_header` goes in the `gms_user` header (of
  the chat's requests and of its Comet session's) and its `_chat_parameters` as form fields.
"""

from __future__ import annotations

import json
import logging
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias, TypeVar
from urllib.parse import urlsplit

from relay_devkit.device_sim.activities import ActivityShown
from relay_devkit.device_sim.dialogs import (
    ChatUpdate,
    DialNumber,
    Dialog,
    DialogError,
    DisplayMenu,
    JsonValue,
    StartChat,
    dialog_url,
    is_chat_message,
    read_chat_event,
    read_chat_message,
    read_dialog,
    read_push,
)

_log = logging.getLogger(__name__)
DEFAULT_URL_PATH = "/genesys/1/service/"
EXIT_FLOW = "exit://"
NOTIFICATION_DIALOG = "Notification"

# ---- the user: what they do when asked, scripted per scenario ----

Reaction: TypeAlias = Literal["accept", "decline", "ignore"]


@dataclass(frozen=True, slots=True)
class PushAnswer:
    """How the user meets a push: accept (tap) it, decline (dismiss) it, or ignore it; `after_s`
    is how long they take."""

    reaction: Reaction = "accept"
    after_s: float = 0.0


@dataclass(frozen=True, slots=True)
class MenuAnswer:
    """The item the user taps (by label) `after_s` seconds after the menu appears; no label:
    they leave the menu, and with `reopen` come back to it (the app fetches `_resource_url`)."""

    label: str | None
    after_s: float = 0.0
    reopen: bool = False


@dataclass
class ScriptedUser:
    """Answers in order; when the script runs out the user ignores pushes and leaves menus."""

    push_answers: deque[PushAnswer] = field(default_factory=deque)
    menu_answers: deque[MenuAnswer] = field(default_factory=deque)

    def will(self, *answers: PushAnswer | MenuAnswer) -> None:
        for answer in answers:
            if isinstance(answer, PushAnswer):
                self.push_answers.append(answer)
            else:
                self.menu_answers.append(answer)

    def on_push(self) -> PushAnswer:
        return self.push_answers.popleft() if self.push_answers else PushAnswer("ignore")

    def on_menu(self) -> MenuAnswer:
        return self.menu_answers.popleft() if self.menu_answers else MenuAnswer(None)


# ---- what the user saw: the transcript. `at` is epoch seconds ----


@dataclass(frozen=True, slots=True)
class AlertShown:
    at: float
    presentation: str  # "alert dialog" (foreground), "notification" (background), or why none
    title: str | None
    body: str | None
    service_id: str | None
    action: str | None
    message_fields: Mapping[str, JsonValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UserReacted:
    at: float
    reaction: Reaction
    to: str  # what was in front of the user


@dataclass(frozen=True, slots=True)
class PushNotPosted:
    """A push the app showed but did not POST for, and why."""

    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class AppState:
    at: float
    foreground: bool


@dataclass(frozen=True, slots=True)
class UrlPosted:
    at: float
    url: str
    method: str = "POST"


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
    method: str


@dataclass(frozen=True, slots=True)
class MenuChoiceRefused:
    """The user chose after the menu's `_expires`: the app refuses, nothing is sent."""

    at: float
    label: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class MenuDismissed:
    at: float
    labels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ConfirmationShown:
    """A chosen item's `confirmation_dialog`, and when it went away."""

    at: float
    text: str
    dialog_type: str
    dismissed_at: float


@dataclass(frozen=True, slots=True)
class FlowClosed:
    at: float
    via: str  # the directive that closed it: "exit://"


@dataclass(frozen=True, slots=True)
class DialRecorded:
    """DialNumber: the call the phone would place (the simulator records it, never dials).
    `number` is what goes to the dialer: `_tel_url` when it is a tel: URL or a phone number, then
    `_access_code` as DTMF after a pause (","); None when `_tel_url` is neither (the seed's example
    value "n/a"), so nothing would be dialled."""

    at: float
    tel_url: str
    access_code: str
    number: str | None


@dataclass(frozen=True, slots=True)
class ChatOpened:
    at: float
    url: str
    chat_session_id: str
    comet_url: str


@dataclass(frozen=True, slots=True)
class ChatLineShown:
    at: float
    position: int
    kind: str
    nick: str
    text: str
    number: str
    via: Literal["comet", "answer"]


@dataclass(frozen=True, slots=True)
class ChatEnded:
    at: float


@dataclass(frozen=True, slots=True)
class GmsFailure:
    """A request that did not yield something to show: a non-200 answer, bad JSON, no answer."""

    at: float
    url: str
    status: int  # 0 when no HTTP answer arrived
    detail: str


TranscriptEntry: TypeAlias = (
    AlertShown
    | UserReacted
    | PushNotPosted
    | AppState
    | UrlPosted
    | DialogShown
    | MenuChoice
    | MenuChoiceRefused
    | MenuDismissed
    | ConfirmationShown
    | FlowClosed
    | DialRecorded
    | ChatOpened
    | ChatLineShown
    | ChatEnded
    | GmsFailure
    | ActivityShown
)

# ---- what the app asks its shell to do ----


@dataclass(frozen=True, slots=True)
class HttpRequest:
    url: str
    method: str = "POST"
    headers: Mapping[str, str] = field(default_factory=dict)
    form: Mapping[str, str] = field(default_factory=dict)
    not_before: float | None = None  # the user's own pace: the shell waits until then
    exit_after: bool = False  # _id_to_jump_before "exit://": the flow closes after the answer
    # Sending a line or leaving: the answer only acknowledges; what follows comes over Comet
    # (the seed: "Comet push notifications for the text message exchange").
    acknowledged_only: bool = False


@dataclass(frozen=True, slots=True)
class OpenComet:
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)  # on every Comet request


@dataclass(frozen=True, slots=True)
class CloseComet:
    pass


Effect: TypeAlias = HttpRequest | OpenComet | CloseComet


@dataclass(frozen=True, slots=True)
class AppSettings:
    server_url: str  # $(ServerURL), e.g. http://127.0.0.1:8080
    url_path: str = DEFAULT_URL_PATH  # $(URLPath)
    gms_user: str = ""  # sent as the gms_user header when set
    nickname: str = "Stan"  # the seed's customer


@dataclass
class ChatView:
    service_id: str
    start_chat_url: str
    comet_url: str
    chat_session_id: str
    exit_when_ended: bool
    headers: Mapping[str, str] = field(default_factory=dict)  # the chat's, gms_user included
    last_position: int = 0
    ended: bool = False


@dataclass
class DeviceApp:
    """The app's state: settings, the user holding the phone, and what the user has seen."""

    settings: AppSettings
    user: ScriptedUser = field(default_factory=ScriptedUser)
    foreground: bool = True
    transcript: list[TranscriptEntry] = field(default_factory=list)
    pushes_received: int = 0
    chat: ChatView | None = None
    comet_open: bool = False
    _pending_chat_exit: bool = False  # the StartChat being opened had _id_to_jump_before exit://

    def _headers(self) -> dict[str, str]:
        return {"gms_user": self.settings.gms_user} if self.settings.gms_user else {}

    def _request(
        self,
        at: float,
        url: str,
        *,
        method: str = "POST",
        headers: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        not_before: float | None = None,
        exit_after: bool = False,
        acknowledged_only: bool = False,
    ) -> HttpRequest:
        request = HttpRequest(
            url,
            method,
            self._headers() if headers is None else headers,
            form or {},
            not_before,
            exit_after,
            acknowledged_only,
        )
        self.transcript.append(UrlPosted(not_before or at, url, method))
        return request

    # ---- app state ----

    def to_background(self, at: float) -> list[Effect]:
        """iOS suspends the app: its Comet long-poll ends with it."""
        self.foreground = False
        self.transcript.append(AppState(at, False))
        return self._close_comet()

    def to_foreground(self, at: float) -> list[Effect]:
        self.foreground = True
        self.transcript.append(AppState(at, True))
        return self._open_comet()

    def _open_comet(self) -> list[Effect]:
        chat = self.chat
        if chat is None or chat.ended or self.comet_open or not self.foreground:
            return []
        self.comet_open = True
        return [OpenComet(chat.comet_url, chat.headers)]

    def _close_comet(self) -> list[Effect]:
        if not self.comet_open:
            return []
        self.comet_open = False
        return [CloseComet()]

    # ---- pushes ----

    def receive_push(self, payload: Mapping[str, object], at: float) -> list[Effect]:
        """processAPN, after the user has met the confirmation the `aps` alert describes."""
        self.pushes_received += 1
        push = read_push(payload)
        message = push.message
        fields = dict(message.fields) if message else {}
        service_id, action = (message.service_id, message.action) if message else (None, None)
        chat = self.chat
        if push.alert_title is None and push.alert_body is None:
            presentation = "none: a silent push"
        elif (
            self.foreground
            and self.comet_open
            and chat is not None
            and message is not None
            and self._is_chat_resource(message.service_id, message.action, chat)
        ):
            presentation = "none: the app is in the foreground and the line came over Comet"
        else:
            presentation = "alert dialog" if self.foreground else "notification"
        self.transcript.append(
            AlertShown(
                at, presentation, push.alert_title, push.alert_body, service_id, action, fields
            )
        )
        if presentation.startswith("none"):
            self.transcript.append(PushNotPosted(at, presentation.removeprefix("none: ")))
            return []
        answer = self.user.on_push()
        reacted_at = at + answer.after_s
        self.transcript.append(UserReacted(reacted_at, answer.reaction, presentation))
        if answer.reaction != "accept":
            self.transcript.append(
                PushNotPosted(reacted_at, f"the user chose to {answer.reaction}")
            )
            return []
        if message is None:
            self.transcript.append(PushNotPosted(reacted_at, "no _id/_action in the message"))
            return []
        if not self.foreground:  # tapping a notification opens the app
            self.foreground = True
            self.transcript.append(AppState(reacted_at, True))
        url = dialog_url(
            self.settings.server_url, self.settings.url_path, message.service_id, message.action
        )
        form = {}
        if chat is not None and chat.service_id == message.service_id:
            form["transcriptPosition"] = str(chat.last_position + 1)
        return [self._request(at, url, form=form, not_before=reacted_at)]

    def _is_chat_resource(self, service_id: str, action: str, chat: ChatView) -> bool:
        """Whether a push's POST ($(ServerURL)$(URLPath)$(_id)/$(_action)) would go to the open
        chat's own resource, under its `_start_chat_url`: from the seed's `_id`/`_action` alone
        the app knows such a push reports a chat line, which Comet has already brought."""
        url = dialog_url(self.settings.server_url, self.settings.url_path, service_id, action)
        chat_path = urlsplit(chat.start_chat_url).path.rstrip("/")
        path = urlsplit(url).path
        return path == chat_path or path.startswith(chat_path + "/")

    # ---- answers ----

    def receive_answer(
        self, request: HttpRequest, status: int, body: bytes, at: float
    ) -> list[Effect]:
        """Execute what GMS answered; returns the effects that follow from it."""
        if status != 200:
            detail = body[:500].decode("utf-8", "replace")
            self.transcript.append(GmsFailure(at, request.url, status, detail))
            return []
        if request.acknowledged_only:
            return []
        try:
            answer: JsonValue = json.loads(body)
            if is_chat_message(answer):
                assert isinstance(answer, dict)  # is_chat_message checked it
                return self._chat_answer(request, read_chat_message(answer), at)
            dialog = read_dialog(answer)
        except ValueError as error:  # DialogError and JSONDecodeError both
            self.transcript.append(GmsFailure(at, request.url, status, str(error)))
            return []
        self.transcript.append(DialogShown(at, request.url, dialog))
        effects = self._execute(dialog, at)
        if request.exit_after:
            self.transcript.append(FlowClosed(at, EXIT_FLOW))
        return effects

    def receive_no_answer(self, request: HttpRequest, error: str, at: float) -> None:
        self.transcript.append(GmsFailure(at, request.url, 0, error))

    def _execute(self, dialog: Dialog, at: float) -> list[Effect]:
        if isinstance(dialog, DisplayMenu):
            return self._menu(dialog, at)
        if isinstance(dialog, StartChat):
            form = {key: str(value) for key, value in dialog.chat_parameters.items()}
            form["nickname"] = self.settings.nickname
            headers = {"gms_user": dialog.user_header} if dialog.user_header else self._headers()
            self._pending_chat_exit = dialog.jump_before == EXIT_FLOW
            return [self._request(at, dialog.start_chat_url, headers=headers, form=form)]
        if isinstance(dialog, DialNumber):
            self.transcript.append(
                DialRecorded(
                    at,
                    dialog.tel_url,
                    dialog.access_code,
                    dial_string(dialog.tel_url, dialog.access_code),
                )
            )
        # ConfirmationDialog (the user taps its OK), unknown: done.
        return []

    def _menu(self, menu: DisplayMenu, at: float) -> list[Effect]:
        if menu.expires_problem is not None:
            # Shown all the same: a menu without a deadline is better than none (the seed gives
            # $(Date) no format, so a GMS may well send one this app does not read).
            _log.warning("menu shown without a deadline: %s", menu.expires_problem)
        answer = self.user.on_menu()
        chosen_at = at + answer.after_s
        if answer.label is None:
            self.transcript.append(MenuDismissed(chosen_at, menu.labels))
            if answer.reopen and menu.resource_url is not None:
                # Coming back to a menu: the app fetches it again from its _resource_url.
                return [
                    self._request(
                        at,
                        menu.resource_url,
                        method=menu.method,
                        not_before=chosen_at,
                    )
                ]
            return []
        found = menu.item(answer.label)
        if found is None:
            raise DialogError(f"menu: no item labelled {answer.label!r}; has {menu.labels}")
        group_name, item = found
        if menu.expires_at is not None and chosen_at > menu.expires_at:
            self.transcript.append(MenuChoiceRefused(chosen_at, item.label, menu.expires_at))
            return []
        self.transcript.append(
            MenuChoice(chosen_at, group_name, item.label, item.user_action_url, item.method)
        )
        request_at = chosen_at
        confirmation = item.confirmation
        if confirmation is not None:
            lasts = (
                confirmation.dismiss_timeout_s or 0.0
                if confirmation.dialog_type == NOTIFICATION_DIALOG
                else 0.0  # other types: the user taps OK at once
            )
            request_at = chosen_at + lasts
            self.transcript.append(
                ConfirmationShown(
                    chosen_at, confirmation.text, confirmation.dialog_type, request_at
                )
            )
        return [
            self._request(
                at,
                item.user_action_url,
                method=item.method,
                form={"_dialog_id": item.dialog_id},
                not_before=request_at,
                exit_after=item.jump_before == EXIT_FLOW,
            )
        ]

    # ---- chat ----

    def _chat_answer(self, request: HttpRequest, update: ChatUpdate, at: float) -> list[Effect]:
        if update.comet_url is not None:  # the ixn/chat answer: the chat is open
            service_id = request.url.rstrip("/").split("/")[-3]  # .../<id>/ixn/chat
            self.chat = ChatView(
                service_id,
                request.url,
                update.comet_url,
                update.chat_session_id,
                exit_when_ended=self._pending_chat_exit,
                headers=request.headers,
            )
            self.transcript.append(
                ChatOpened(at, request.url, update.chat_session_id, update.comet_url)
            )
        return [*self._show_chat(update, "answer", at), *self._open_comet()]

    def receive_comet_message(self, message: Mapping[str, object], at: float) -> list[Effect]:
        """A message delivered on the Comet session: chat events for this chat are shown."""
        update = read_chat_event(message)
        chat = self.chat
        if update is None or chat is None or update.chat_session_id != chat.chat_session_id:
            return []
        return self._show_chat(update, "comet", at)

    def _show_chat(
        self, update: ChatUpdate, via: Literal["comet", "answer"], at: float
    ) -> list[Effect]:
        chat = self.chat
        if chat is None or update.chat_session_id != chat.chat_session_id:
            return []
        for line in update.lines:
            if line.position > chat.last_position:  # a line seen twice is shown once
                chat.last_position = line.position
                self.transcript.append(
                    ChatLineShown(
                        at, line.position, line.kind, line.nick, line.text, line.number, via
                    )
                )
        if update.state != "DISCONNECTED" or chat.ended:
            return []
        chat.ended = True
        self.transcript.append(ChatEnded(at))
        if chat.exit_when_ended:
            self.transcript.append(FlowClosed(at, EXIT_FLOW))
        return self._close_comet()

    def say(self, text: str, at: float) -> list[Effect]:
        """The user types a chat line."""
        chat = self._open_chat()
        form = {"message": text, "nickname": self.settings.nickname}
        url = f"{chat.start_chat_url}/send"
        return [self._request(at, url, form=form, acknowledged_only=True)]

    def leave_chat(self, at: float) -> list[Effect]:
        chat = self._open_chat()
        url = f"{chat.start_chat_url}/disconnect"
        return [self._request(at, url, acknowledged_only=True)]

    def _open_chat(self) -> ChatView:
        if self.chat is None or self.chat.ended:
            raise DialogError("chat: no chat is open")
        return self.chat


_PHONE_NUMBER = re.compile(r"\+?[0-9*#][0-9*#()./ -]*")


def dial_string(tel_url: str, access_code: str) -> str | None:
    """What the phone would dial for DialNumber (inferred: the seed shows only "n/a" for both):
    the tel: URL's number, or `_tel_url` itself when it is a number, then `,` (a pause) and the
    access code as DTMF when there is one; None when there is no number to dial."""
    number = tel_url.removeprefix("tel:").strip()
    if not _PHONE_NUMBER.fullmatch(number):
        return None
    digits = "".join(c for c in number if c.isdigit() or c in "+*#")
    code = access_code.strip()
    return f"{digits},{code}" if code and _PHONE_NUMBER.fullmatch(code) else digits


EntryT = TypeVar("EntryT", bound=TranscriptEntry)


def entries_of(transcript: Sequence[TranscriptEntry], kind: type[EntryT]) -> list[EntryT]:
    """The transcript's entries of one kind, in order."""
    return [entry for entry in transcript if isinstance(entry, kind)]
