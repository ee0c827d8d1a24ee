"""The iOS-app simulator: the seed's URL, the user's confirmation, the dialog directives, chat."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import aiohttp
import pytest
from aiohttp import web
from seed_actions import CONFIRM, CONFIRM_WITH_CODE
from simulator import control_client, running_simulator

from relay_devkit.device_sim.app import (
    AlertShown,
    AppSettings,
    AppState,
    ChatEnded,
    ChatLineShown,
    ChatOpened,
    CloseComet,
    ConfirmationShown,
    DeviceApp,
    DialogShown,
    DialRecorded,
    Effect,
    FlowClosed,
    GmsFailure,
    HttpRequest,
    MenuAnswer,
    MenuChoice,
    MenuChoiceRefused,
    MenuDismissed,
    OpenComet,
    PushAnswer,
    PushNotPosted,
    Reaction,
    ScriptedUser,
    UrlPosted,
    UserReacted,
    entries_of,
)
from relay_devkit.device_sim.dialogs import (
    ConfirmationDialog,
    DialNumber,
    DisplayMenu,
    StartChat,
    UnknownDialog,
    read_push,
)
from relay_devkit.device_sim.phone import Phone, register_device
from relay_devkit.gms_sim.callback import CallbackOptions, CallbackState
from relay_devkit.gms_sim.chat import AGENT_NICK, ChatSession, TranscriptLine
from relay_devkit.gms_sim.dialogs import DialogContext, JsonObject, JsonValue, seed_dialog
from relay_devkit.gms_sim.server import GmsSimServer, GmsSimulator

SERVER_URL = "http://135.34.145.123:8080"
SERVICE_ID = "3SQI3S31693JL9L3R00506T40C000U73"
TOKEN = "c0ffee" * 10 + "beef"
AT = 1_700_000_000.0
EXPIRES = datetime.fromtimestamp(AT + 30, UTC)  # the menus' $(Date): 30 s after AT
CONTEXT = DialogContext(f"{SERVER_URL}/genesys", SERVICE_ID, "alice", EXPIRES)
TRUE_MENU, FALSE_MENU = CONFIRM_WITH_CODE, CONFIRM
YES = "Yes, I'm ready to talk"
BASE = f"{SERVER_URL}/genesys/1/service/{SERVICE_ID}"


def _push(message: object, alert: object = "Agent is available") -> dict[str, object]:
    return {"aps": {"alert": alert, "sound": "default"}, "message": message}


def _callback(service_id: str, action: str) -> dict[str, object]:
    return _push({"_id": service_id, "_action": action})


def _answer(action: str) -> bytes:
    return json.dumps(seed_dialog(action, CONTEXT)).encode()


def _app(*answers: PushAnswer | MenuAnswer, foreground: bool = True, **settings: str) -> DeviceApp:
    user = ScriptedUser()
    user.will(*answers)
    return DeviceApp(
        AppSettings(settings.pop("server_url", SERVER_URL), **settings), user, foreground
    )


def _request(effects: Sequence[Effect]) -> HttpRequest:
    [request] = effects
    assert isinstance(request, HttpRequest)
    return request


# Pure: processAPN and the user's confirmation.


def test_read_push_takes_the_message_as_an_object_or_a_json_string() -> None:
    message = {"_id": SERVICE_ID, "_action": "wait-for-agent"}
    as_object = read_push(_push(message, {"title": "Callback", "body": "Hold on"}))
    as_string = read_push(_push(json.dumps(message)))
    assert as_object.message is not None
    assert as_string.message is not None
    assert (as_object.message.service_id, as_object.message.action) == (
        SERVICE_ID,
        "wait-for-agent",
    )
    assert as_string.message == as_object.message
    assert (as_object.alert_title, as_object.alert_body) == ("Callback", "Hold on")
    assert (as_string.alert_title, as_string.alert_body) == (None, "Agent is available")


@pytest.mark.parametrize(
    "message",
    ["Your agent is ready", {"_id": SERVICE_ID}, {"_id": "", "_action": "x"}, None, ["_id"]],
)
def test_a_push_without_id_and_action_is_not_a_callback(message: object) -> None:
    assert read_push(_push(message)).message is None


def test_an_accepted_alert_posts_the_seeds_url_exactly() -> None:
    app = _app(PushAnswer("accept"))
    request = _request(app.receive_push(_callback(SERVICE_ID, "get-dialog-start-chat"), AT))
    # The seed's own example URL.
    url = (
        "http://135.34.145.123:8080/genesys/1/service"
        "/3SQI3S31693JL9L3R00506T40C000U73/get-dialog-start-chat"
    )
    assert (request.url, request.method) == (url, "POST")
    message = {"_id": SERVICE_ID, "_action": "get-dialog-start-chat"}
    assert app.transcript == [
        AlertShown(
            AT, "alert dialog", None, "Agent is available", SERVICE_ID, message["_action"], message
        ),
        UserReacted(AT, "accept", "alert dialog"),
        UrlPosted(AT, url),
    ]


def test_a_tapped_notification_opens_the_app_then_posts() -> None:
    app = _app(PushAnswer("accept", after_s=3), foreground=False)
    request = _request(app.receive_push(_callback(SERVICE_ID, "wait-for-agent"), AT))
    assert request.not_before == AT + 3  # the user's own pace
    assert [type(e) for e in app.transcript] == [AlertShown, UserReacted, AppState, UrlPosted]
    assert entries_of(app.transcript, AlertShown)[0].presentation == "notification"
    assert entries_of(app.transcript, AppState) == [AppState(AT + 3, True)]
    assert app.foreground


@pytest.mark.parametrize("reaction", ["decline", "ignore"])
@pytest.mark.parametrize("foreground", [True, False])
def test_a_declined_or_ignored_push_posts_nothing(reaction: Reaction, foreground: bool) -> None:
    app = _app(PushAnswer(reaction), foreground=foreground)
    assert app.receive_push(_callback(SERVICE_ID, "wait-for-agent"), AT) == []
    assert [r.reaction for r in entries_of(app.transcript, UserReacted)] == [reaction]
    assert not entries_of(app.transcript, UrlPosted)
    assert app.foreground is foreground


def test_a_user_without_a_script_ignores_pushes() -> None:
    app = DeviceApp(AppSettings(SERVER_URL))
    assert app.receive_push(_callback(SERVICE_ID, "wait-for-agent"), AT) == []
    assert [r.reaction for r in entries_of(app.transcript, UserReacted)] == ["ignore"]


def test_url_path_and_gms_user_come_from_the_settings() -> None:
    app = _app(
        PushAnswer(), server_url="https://gms.example", url_path="/g/1/service/", gms_user="bob"
    )
    push = _push(json.dumps({"_id": "S1", "_action": "any-new/action"}))
    request = _request(app.receive_push(push, AT))
    assert request.url == "https://gms.example/g/1/service/S1/any-new/action"
    assert request.headers == {"gms_user": "bob"}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (_push("plain text from customhttp.message"), "no _id/_action"),
        (_push({"data": {"message": {}}, "channel": "/_genesys"}), "no _id/_action"),
        ({"aps": {"content-available": 1}, "message": {"_id": "S", "_action": "a"}}, "silent"),
    ],
)
def test_pushes_with_nothing_to_post(payload: dict[str, object], reason: str) -> None:
    app = _app(PushAnswer("accept"))
    assert app.receive_push(payload, AT) == []
    [not_posted] = entries_of(app.transcript, PushNotPosted)
    assert reason in not_posted.reason


# Pure: the dialogs and their directives.


def _menu_app(
    action: str, *answers: PushAnswer | MenuAnswer, body: bytes | None = None
) -> tuple[DeviceApp, list[Effect]]:
    app = _app(PushAnswer(), *answers)
    request = _request(app.receive_push(_callback(SERVICE_ID, action), AT))
    return app, list(app.receive_answer(request, 200, body or _answer(action), AT))


def test_yes_shows_its_notification_confirmation_then_posts_with_its_method() -> None:
    app, effects = _menu_app(TRUE_MENU, MenuAnswer(YES, after_s=1))
    request = _request(effects)
    [shown] = entries_of(app.transcript, DialogShown)
    assert isinstance(shown.dialog, DisplayMenu)
    assert shown.dialog.expires_at == AT + 30
    assert shown.dialog.resource_url == f"{BASE}/get-dialog-user-confirmation"
    assert shown.dialog.labels == (
        YES,
        "No, try again in 5 minutes",
        "Cancel, my problem has been solved",
    )
    assert entries_of(app.transcript, MenuChoice) == [
        MenuChoice(AT + 1, "Are you ready?", YES, f"{BASE}/connect", "POST")
    ]
    # The seed's confirmation_dialog: a Notification that dismisses itself after 2 s; then the POST.
    assert entries_of(app.transcript, ConfirmationShown) == [
        ConfirmationShown(
            AT + 1,
            "You will hear tones immediately after call is connected. This is normal.",
            "Notification",
            AT + 3,
        )
    ]
    assert request == HttpRequest(
        f"{BASE}/connect", "POST", {}, {"_dialog_id": "1"}, AT + 3, exit_after=True
    )
    # The answer is shown, then _id_to_jump_before "exit://" closes the flow.
    assert app.receive_answer(request, 200, _answer("connect-outbound"), AT + 3) == []
    assert isinstance(app.transcript[-2], DialogShown)
    assert app.transcript[-1] == FlowClosed(AT + 3, "exit://")


def _changed_menu(**item: JsonValue) -> bytes:
    menu = seed_dialog(FALSE_MENU, CONTEXT)
    assert menu is not None
    # The seed menu's shape, fixed by the seed: _content holds the group objects, each group's
    # _group_content its item objects.
    group = cast(list[JsonObject], menu["_content"])[0]
    first = cast(list[JsonObject], group["_group_content"])[0]
    first.update(item)
    return json.dumps(menu).encode()


def test_method_is_used_as_given_and_other_confirmations_do_not_wait() -> None:
    body = _changed_menu(
        _method="PUT",
        _id_to_jump_before="menu://main",
        confirmation_dialog={"_text": "Sure?", "_dialog_type": "Alert"},
    )
    app, effects = _menu_app(FALSE_MENU, MenuAnswer(YES), body=body)
    request = _request(effects)
    assert (request.method, request.not_before, request.exit_after) == ("PUT", AT, False)
    assert entries_of(app.transcript, UrlPosted)[-1] == UrlPosted(AT, f"{BASE}/connect", "PUT")
    assert entries_of(app.transcript, ConfirmationShown)[0].dismissed_at == AT


def test_a_choice_after_expires_is_refused_and_nothing_is_sent() -> None:
    app, effects = _menu_app(FALSE_MENU, MenuAnswer(YES, after_s=31))
    assert effects == []
    assert entries_of(app.transcript, MenuChoiceRefused) == [
        MenuChoiceRefused(AT + 31, YES, AT + 30)
    ]
    assert not entries_of(app.transcript, MenuChoice)
    # At the deadline itself the choice still counts.
    _, effects = _menu_app(FALSE_MENU, MenuAnswer(YES, after_s=30))
    assert _request(effects).url == f"{BASE}/connect"


@pytest.mark.parametrize(
    "date",
    [
        "2023-11-14T22:13:50Z",  # the seed's $(Timestamp) format
        "2023-11-14T22:13:50.000Z",  # java.time.Instant.toString
        "2023-11-14T23:13:50+01:00",
        "Tue Nov 14 22:13:50 UTC 2023",  # java.util.Date.toString: EEE MMM dd HH:mm:ss zzz yyyy
        "Tue Nov 14 14:13:50 PST 2023",
        "Tue, 14 Nov 2023 22:13:50 GMT",  # RFC 1123
        "1700000030000",  # java.util.Date.getTime
    ],
)
def test_expires_is_read_in_the_formats_a_java_service_emits(date: str) -> None:
    """The seed gives $(Date) no format; each of these is AT + 30."""
    app, _ = _menu_app(FALSE_MENU, MenuAnswer(None), body=_menu_expiring(date))
    [shown] = entries_of(app.transcript, DialogShown)
    assert isinstance(shown.dialog, DisplayMenu)
    assert shown.dialog.expires_at == AT + 30


def _menu_expiring(date: str) -> bytes:
    menu = seed_dialog(FALSE_MENU, CONTEXT)
    assert menu is not None
    menu["_expires"] = date
    return json.dumps(menu).encode()


@pytest.mark.parametrize("date", ["soon", "2023-11-14T22:13:50", "Tue Nov 14 22:13:50 XYZ 2023"])
def test_an_unreadable_expires_shows_the_menu_without_a_deadline_and_logs_why(
    date: str, caplog: pytest.LogCaptureFixture
) -> None:
    app, effects = _menu_app(FALSE_MENU, MenuAnswer(YES, after_s=3_600), body=_menu_expiring(date))
    [shown] = entries_of(app.transcript, DialogShown)
    assert isinstance(shown.dialog, DisplayMenu)
    assert shown.dialog.expires_at is None
    assert _request(effects).url == f"{BASE}/connect"  # no deadline: the late choice counts
    assert not entries_of(app.transcript, GmsFailure)
    [record] = [r for r in caplog.records if r.name == "relay_devkit.device_sim.app"]
    assert "menu shown without a deadline" in record.getMessage()
    assert repr(date) in record.getMessage()
    assert "EEE MMM dd HH:mm:ss zzz yyyy" in record.getMessage()  # what is read


def test_leaving_a_menu_and_coming_back_fetches_its_resource_url() -> None:
    app, effects = _menu_app(FALSE_MENU, MenuAnswer(None, after_s=5, reopen=True))
    request = _request(effects)
    assert (request.url, request.method, request.not_before) == (
        f"{BASE}/get-dialog-user-confirmation",
        "POST",
        AT + 5,
    )
    [left] = entries_of(app.transcript, MenuDismissed)
    assert len(left.labels) == 3
    _, effects = _menu_app(FALSE_MENU, MenuAnswer(None))
    assert effects == []


def test_a_menu_without_the_users_label_is_an_error() -> None:
    with pytest.raises(ValueError, match="no item labelled"):
        _menu_app(FALSE_MENU, MenuAnswer("Maybe later"))


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("connect-inbound", DialNumber("Connecting ...", "n/a", "n/a", SERVICE_ID)),
        (
            "connect-outbound",
            ConfirmationDialog("You will receive the call shortly", "Ok", SERVICE_ID),
        ),
        (
            "wait-for-agent",
            ConfirmationDialog("We will notify you when agent is available", "Ok", SERVICE_ID),
        ),
    ],
)
def test_terminal_dialogs_are_shown_and_end_the_exchange(action: str, expected: object) -> None:
    app, effects = _menu_app(action)
    assert effects == []
    assert [entry.dialog for entry in entries_of(app.transcript, DialogShown)] == [expected]


@pytest.mark.parametrize(
    ("tel_url", "access_code", "number"),
    [
        ("n/a", "n/a", None),  # the seed's example values: nothing to dial
        ("tel:+1-800-555-0100", "4321#", "+18005550100,4321#"),
        ("+44 20 7946 0000", "", "+442079460000"),
        ("tel:5550100", "n/a", "5550100"),
    ],
)
def test_dial_number_records_the_dial_the_phone_would_make(
    tel_url: str, access_code: str, number: str | None
) -> None:
    dialog = {
        "_dialog_id": "0",
        "_label": "Connecting ...",
        "_action": "DialNumber",
        "_tel_url": tel_url,
        "_access_code": access_code,
        "_id": SERVICE_ID,
    }
    app, effects = _menu_app("connect-inbound", body=json.dumps(dialog).encode())
    assert effects == []
    assert entries_of(app.transcript, DialRecorded) == [
        DialRecorded(AT, tel_url, access_code, number)
    ]


@pytest.mark.parametrize(
    ("status", "body", "detail"),
    [
        (404, b'{"code": 404}', '{"code": 404}'),
        (200, b"<html>", "Expecting value"),
        (200, b'{"_action": "ConfirmationDialog", "_ok_title": "Ok"}', "_text"),
        (200, b'{"_action": "DisplayMenu", "_content": [{"_group_content": []}]}', "_group_name"),
        (200, b'{"transcriptToShow": [], "transcriptPosition": "x"}', "transcriptPosition"),
        (200, b"[1, 2]", "JSON object"),
    ],
)
def test_a_failed_or_unreadable_answer_is_recorded_not_executed(
    status: int, body: bytes, detail: str
) -> None:
    app = _app(PushAnswer())
    request = _request(app.receive_push(_callback(SERVICE_ID, "wait-for-agent"), AT))
    assert app.receive_answer(request, status, body, AT) == []
    [failure] = entries_of(app.transcript, GmsFailure)
    assert (failure.url, failure.status) == (request.url, status)
    assert detail in failure.detail
    assert not entries_of(app.transcript, DialogShown)


def test_an_unknown_dialog_action_is_kept_as_is() -> None:
    app, effects = _menu_app("wait-for-agent", body=b'{"_action": "OpenWebPage", "_url": "x"}')
    assert effects == []
    [shown] = entries_of(app.transcript, DialogShown)
    assert shown.dialog == UnknownDialog("OpenWebPage", {"_action": "OpenWebPage", "_url": "x"})


# Pure: the chat.


def test_start_chat_then_comet_then_a_tapped_chat_push_catches_up() -> None:
    app, effects = _menu_app("get-dialog-start-chat")
    start = _request(effects)
    [shown] = entries_of(app.transcript, DialogShown)
    assert shown.dialog == StartChat(
        label="Start Chat",
        start_chat_url=f"{BASE}/ixn/chat",
        comet_url=f"{SERVER_URL}/genesys/cometd",
        user_header="alice",
        chat_parameters={"subject": "None"},
        service_id=SERVICE_ID,
        jump_before="exit://",
    )
    # _user_header in the gms_user header, _chat_parameters as the form.
    assert (start.url, start.headers, start.form) == (
        f"{BASE}/ixn/chat",
        {"gms_user": "alice"},
        {"subject": "None", "nickname": "Stan"},
    )
    started = datetime(2014, 5, 2, 16, 27, 38, tzinfo=UTC)
    chat = ChatSession(SERVICE_ID, started, "000FRa9NYM9A001K")
    chat.add(TranscriptLine("Notice.Joined", "Stan", "has joined the session", "CLIENT"), started)
    answer = {**chat.refresh(1), "_comet_url": f"{SERVER_URL}/genesys/cometd", "tag": chat.tag}
    effects = app.receive_answer(start, 200, json.dumps(answer).encode(), AT)
    # The Comet session carries the chat's gms_user header too: GMS routes the chat's events by it.
    assert effects == [OpenComet(f"{SERVER_URL}/genesys/cometd", {"gms_user": "alice"})]
    assert entries_of(app.transcript, ChatOpened) == [
        ChatOpened(AT, f"{BASE}/ixn/chat", "000FRa9NYM9A001K", f"{SERVER_URL}/genesys/cometd")
    ]
    # Lines over Comet, each shown once.
    event = chat.add(TranscriptLine("Message.Text", AGENT_NICK, "Hi", "AGENT"), started)
    assert app.receive_comet_message(event, AT + 1) == []
    assert app.receive_comet_message(event, AT + 2) == []
    other = ChatSession("X" * 32, started).add(
        TranscriptLine("Message.Text", "Z", "no", "AGENT"), started
    )
    assert app.receive_comet_message(other, AT + 2) == []
    lines = entries_of(app.transcript, ChatLineShown)
    assert [(x.position, x.text, x.number, x.via) for x in lines] == [
        (1, "has joined the session", "0", "answer"),
        (2, "Hi", "0", "comet"),
    ]
    # A chat push in the foreground with Comet open: the line is there already. The app knows it
    # from the seed's {"_id", "_action"} alone: its POST would go under the chat's _start_chat_url.
    chat_push = _push({"_id": SERVICE_ID, "_action": "ixn/chat/refresh"})
    assert app.receive_push(chat_push, AT + 3) == []
    assert "came over Comet" in entries_of(app.transcript, PushNotPosted)[-1].reason
    # A push for another action of the same service is shown as any other.
    app.user.will(PushAnswer("decline"))
    assert app.receive_push(_callback(SERVICE_ID, "connect-outbound"), AT + 3) == []
    assert entries_of(app.transcript, AlertShown)[-1].presentation == "alert dialog"
    # Background: Comet goes; a tapped chat push POSTs its _action from the first unseen position.
    assert app.to_background(AT + 4) == [CloseComet()]
    chat.add(TranscriptLine("Message.Text", AGENT_NICK, "Still there?", "AGENT"), started)
    app.user.will(PushAnswer("accept"))
    refresh = _request(app.receive_push(chat_push, AT + 5))
    assert (refresh.url, refresh.form) == (f"{BASE}/ixn/chat/refresh", {"transcriptPosition": "3"})
    effects = app.receive_answer(refresh, 200, json.dumps(chat.refresh(3)).encode(), AT + 6)
    assert effects == [OpenComet(f"{SERVER_URL}/genesys/cometd", {"gms_user": "alice"})]
    assert entries_of(app.transcript, ChatLineShown)[-1].text == "Still there?"
    # Leaving: DISCONNECTED ends the chat; StartChat's exit:// closes the flow.
    leave = _request(app.leave_chat(AT + 7))
    assert leave.url == f"{BASE}/ixn/chat/disconnect"
    assert app.receive_comet_message(chat.disconnect(), AT + 8) == [CloseComet()]
    assert app.transcript[-2:] == [ChatEnded(AT + 8), FlowClosed(AT + 8, "exit://")]
    with pytest.raises(ValueError, match="no chat is open"):
        app.say("anyone?", AT + 9)


# I/O: the phone against the GMS simulator over loopback HTTP, with a stand-in control API.


@dataclass
class StandInControlApi:
    """The APNs simulator's documented GET /notifications?token=&since=, fed by the test."""

    notifications: list[dict[str, object]] = field(default_factory=list)
    url: str = ""

    def deliver(self, token: str, payload: Mapping[str, object]) -> None:
        self.notifications.append(
            {
                "seq": len(self.notifications) + 1,
                "token": token,
                "topic": "com.example.gms",
                "headers": {"apns-push-type": "alert"},
                "payload": dict(payload),
                "received_at": time.time(),
            }
        )

    async def list_notifications(self, request: web.Request) -> web.Response:
        token = request.query.get("token")
        since = int(request.query.get("since", "0"))
        chosen = [
            n
            for n in self.notifications
            if int(str(n["seq"])) > since and (token is None or n["token"] == token)
        ]
        return web.json_response({"notifications": chosen, "last_seq": len(self.notifications)})


@pytest.fixture
async def control() -> AsyncIterator[StandInControlApi]:
    stand_in = StandInControlApi()
    app = web.Application()
    app.router.add_get("/notifications", stand_in.list_notifications)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    stand_in.url = f"http://{host}:{port}"
    try:
        yield stand_in
    finally:
        await runner.cleanup()


@pytest.fixture
async def gms() -> AsyncIterator[GmsSimServer]:
    async with GmsSimServer(GmsSimulator()) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _phone(http: aiohttp.ClientSession, control: StandInControlApi, app: DeviceApp) -> Phone:
    return Phone(http, control.url, TOKEN, app)


async def test_a_phone_registers_with_the_simulator_for_its_app(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    async with running_simulator(tmp_path) as info:
        tokens = {
            await register_device(http, info.control_url, "com.example.gms", "sandbox")
            for _ in range(3)
        }
        async with control_client(info) as control:
            bindings = [await control.describe_token(token) for token in tokens]
    assert len(tokens) == 3
    assert all(len(token) == 64 and int(token, 16) >= 0 for token in tokens)
    assert all(
        (b["topic"], b["environment"]) == ("com.example.gms", "sandbox") for b in bindings
    ), bindings


async def test_phone_runs_a_callback_against_the_gms_simulator(
    http: aiohttp.ClientSession, control: StandInControlApi, gms: GmsSimServer
) -> None:
    service = await gms.simulator.create_callback(CallbackOptions(wait_for_agent=False))
    sid = service.service_id
    control.deliver("ff" * 32, _callback(sid, "connect-inbound"))  # another phone's push
    control.deliver(TOKEN, _push(json.dumps({"_id": sid, "_action": FALSE_MENU})))
    app = _app(PushAnswer(), MenuAnswer(YES), server_url=gms.base_url)
    phone = _phone(http, control, app)
    transcript = await phone.run_until(lambda t: bool(entries_of(t, FlowClosed)), timeout_s=10)
    base = f"{gms.base_url}/genesys/1/service/{sid}"
    assert [entry.url for entry in entries_of(transcript, UrlPosted)] == [
        f"{base}/{FALSE_MENU}",
        f"{base}/connect",
    ]
    shown = [entry.dialog for entry in entries_of(transcript, DialogShown)]
    assert [type(dialog) for dialog in shown] == [DisplayMenu, ConfirmationDialog]
    assert shown[1] == ConfirmationDialog("You will receive the call shortly", "Ok", sid)
    assert service.callback is not None
    assert service.callback.state is CallbackState.CONNECTED
    assert [r.body for r in gms.simulator.requests_to("/connect")] == [b"_dialog_id=1"]
    assert phone.last_seq == 2
    assert [record["seq"] for record in phone.pushes] == [2]
    # Already seen pushes are not processed again.
    assert await phone.poll_once() == 0
    assert len(gms.simulator.requests) == 2


async def test_phone_chats_over_comet_and_catches_up_after_the_background(
    http: aiohttp.ClientSession, control: StandInControlApi, gms: GmsSimServer
) -> None:
    simulator = gms.simulator
    service = simulator.create_chat_service(gms_user="alice")
    sid = service.service_id
    control.deliver(TOKEN, _callback(sid, "get-dialog-start-chat"))
    phone = _phone(http, control, _app(PushAnswer(), server_url=gms.base_url))
    try:
        await phone.run_until(lambda t: phone.comet_connected, timeout_s=10)
        assert [sorted(c.subscriptions) for c in simulator.comet.clients.values()] == [
            ["/_genesys"]
        ]
        await phone.say("Hello.")
        await simulator.chat_line(
            sid, TranscriptLine("Message.Text", AGENT_NICK, "Hi Stan", "AGENT")
        )
        await phone.run_until(lambda t: len(entries_of(t, ChatLineShown)) >= 3, timeout_s=10)
        await phone.to_background()
        assert simulator.comet.clients == {}
        await simulator.chat_line(sid, TranscriptLine("Message.Text", AGENT_NICK, "Bye", "AGENT"))
        # What the relay would push for it; the user taps it.
        phone.app.user.will(PushAnswer("accept"))
        control.deliver(
            TOKEN,
            _push({"_id": sid, "_action": "ixn/chat/refresh"}, "Bye"),
        )
        await phone.run_until(
            lambda t: phone.comet_connected and len(entries_of(t, ChatLineShown)) >= 4, timeout_s=10
        )
        lines = [(x.position, x.text, x.via) for x in entries_of(phone.transcript, ChatLineShown)]
        assert lines == [
            (1, "has joined the session", "answer"),
            (2, "Hello.", "comet"),
            (3, "Hi Stan", "comet"),
            (4, "Bye", "answer"),
        ]
        assert [r.body for r in simulator.requests_to("/ixn/chat/refresh")] == [
            b"transcriptPosition=4"
        ]
        await phone.leave_chat()
        await phone.run_until(lambda t: bool(entries_of(t, FlowClosed)), timeout_s=10)
        assert not phone.comet_connected
    finally:
        await phone.close()


async def test_phone_records_gms_refusals_and_unreachable_gms(
    http: aiohttp.ClientSession, control: StandInControlApi, gms: GmsSimServer
) -> None:
    control.deliver(TOKEN, _callback("N" * 32, "wait-for-agent"))
    phone = _phone(http, control, _app(PushAnswer(), PushAnswer(), server_url=gms.base_url))
    [failure] = entries_of(await phone.wait_for_pushes(1, timeout_s=5), GmsFailure)
    assert failure.status == 404

    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    control.deliver(TOKEN, _callback("N" * 32, "wait-for-agent"))
    phone.app.settings = AppSettings(f"http://127.0.0.1:{closed_port}")
    failures = entries_of(await phone.wait_for_pushes(2, timeout_s=5), GmsFailure)
    assert failures[-1].status == 0
    assert "Connect" in failures[-1].detail


async def test_phone_gives_up_at_its_deadline(
    http: aiohttp.ClientSession, control: StandInControlApi
) -> None:
    phone = _phone(http, control, _app())
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="0 pushes"):
        await phone.wait_for_pushes(1, timeout_s=0.3)
    assert time.monotonic() - started < 2
