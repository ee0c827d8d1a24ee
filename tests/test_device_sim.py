"""The iOS-app simulator builds the seed's URL, runs GMS dialogs and records what the user saw."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp import web

from relay.device_sim.app import (
    AlertShown,
    AppSettings,
    ChatOpened,
    ConfirmationDialog,
    DeviceApp,
    DialNumber,
    DialogShown,
    DisplayMenu,
    GmsFailure,
    MenuChoice,
    MenuDismissed,
    PushNotPosted,
    StartChat,
    UnknownDialog,
    UrlPosted,
    dismiss,
    entries_of,
    item_labelled,
    read_push,
)
from relay.device_sim.phone import Phone
from relay.gms_sim.dialogs import DialogContext, seed_dialog
from relay.gms_sim.server import GmsSimServer, GmsSimulator

SERVER_URL = "http://135.34.145.123:8080"
SERVICE_ID = "3SQI3S31693JL9L3R00506T40C000U73"
TOKEN = "c0ffee" * 10 + "beef"
CONTEXT = DialogContext(
    f"{SERVER_URL}/genesys", SERVICE_ID, "alice", datetime(2014, 5, 2, 16, 57, 38, tzinfo=UTC)
)
AT = 1_700_000_000.0


def _push(message: object, alert: object = "Agent is available") -> dict[str, object]:
    return {"aps": {"alert": alert, "sound": "default"}, "message": message}


def _answer(action: str) -> bytes:
    return json.dumps(seed_dialog(action, CONTEXT)).encode()


# Pure: processAPN.


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


def test_callback_push_posts_the_seeds_url_exactly() -> None:
    app = DeviceApp(AppSettings(SERVER_URL))
    posts = app.receive_push(_push({"_id": SERVICE_ID, "_action": "get-dialog-start-chat"}), AT)
    # The seed's own example URL.
    url = (
        "http://135.34.145.123:8080/genesys/1/service"
        "/3SQI3S31693JL9L3R00506T40C000U73/get-dialog-start-chat"
    )
    assert [(p.url, p.method, p.purpose) for p in posts] == [(url, "POST", "dialog")]
    assert app.transcript == [
        AlertShown(
            AT,
            None,
            "Agent is available",
            SERVICE_ID,
            "get-dialog-start-chat",
            {"_id": SERVICE_ID, "_action": "get-dialog-start-chat"},
        ),
        UrlPosted(AT, url),
    ]


def test_url_path_and_gms_user_come_from_the_settings() -> None:
    app = DeviceApp(AppSettings("https://gms.example", url_path="/g/1/service/", gms_user="bob"))
    [post] = app.receive_push(_push(json.dumps({"_id": "S1", "_action": "any-new-action"})), AT)
    assert post.url == "https://gms.example/g/1/service/S1/any-new-action"
    assert post.headers == {"gms_user": "bob"}


CHAT_LINE = {"_id": SERVICE_ID, "_action": "chat-message", "chatSessionId": "000FRa9NYM9A001K"}


@pytest.mark.parametrize(
    ("message", "fields_shown"),
    [
        (CHAT_LINE, CHAT_LINE),
        ({"data": {"message": {"chatIxnState": "TRANSCRIPT"}}, "channel": "/_genesys"}, {}),
        ("plain text from customhttp.message", {}),
    ],
)
def test_chat_and_text_pushes_are_shown_but_not_posted(
    message: object, fields_shown: dict[str, object]
) -> None:
    app = DeviceApp(AppSettings(SERVER_URL))
    assert app.receive_push(_push(message, {"title": "Kristi", "body": "Hello"}), AT) == []
    [alert] = entries_of(app.transcript, AlertShown)
    assert alert.body == "Hello"
    assert alert.message_fields == fields_shown
    [not_posted] = entries_of(app.transcript, PushNotPosted)
    assert not entries_of(app.transcript, UrlPosted)
    assert not_posted.reason


def test_display_menu_chooses_the_first_item_and_posts_its_url() -> None:
    app = DeviceApp(AppSettings(SERVER_URL))
    action = "get-dialog-user-confirmation-provide_code-true"
    [post] = app.receive_push(_push({"_id": SERVICE_ID, "_action": action}), AT)
    [next_post] = app.receive_answer(post, 200, _answer(action), AT + 1)
    connect_url = f"{SERVER_URL}/genesys/1/service/{SERVICE_ID}/connect"
    assert next_post.url == connect_url
    [shown] = entries_of(app.transcript, DialogShown)
    assert isinstance(shown.dialog, DisplayMenu)
    assert shown.dialog.label == "Agent is available right now"
    assert shown.dialog.expires == "2014-05-02T16:57:38Z"
    assert [group.name for group in shown.dialog.groups] == ["Are you ready?"]
    assert [item.label for item in shown.dialog.groups[0].items] == [
        "Yes, I'm ready to talk",
        "No, try again in 5 minutes",
        "Cancel, my problem has been solved",
    ]
    assert entries_of(app.transcript, MenuChoice) == [
        MenuChoice(
            AT + 1,
            "Are you ready?",
            "Yes, I'm ready to talk",
            connect_url,
            "You will hear tones immediately after call is connected. This is normal.",
        )
    ]
    assert entries_of(app.transcript, UrlPosted)[-1] == UrlPosted(AT + 1, connect_url)


def test_menu_policy_by_label_and_dismissal() -> None:
    action = "get-dialog-user-confirmation-provide_code-false"
    snoozing = DeviceApp(
        AppSettings(SERVER_URL, menu_policy=item_labelled("No, try again in 5 minutes"))
    )
    [post] = snoozing.receive_push(_push({"_id": SERVICE_ID, "_action": action}), AT)
    [snooze] = snoozing.receive_answer(post, 200, _answer(action), AT)
    assert snooze.url.endswith(f"/{SERVICE_ID}/snooze")
    [choice] = entries_of(snoozing.transcript, MenuChoice)
    assert choice.confirmation_text is None  # provide_code-false has no confirmation dialog

    dismissing = DeviceApp(AppSettings(SERVER_URL, menu_policy=dismiss))
    [post] = dismissing.receive_push(_push({"_id": SERVICE_ID, "_action": action}), AT)
    assert dismissing.receive_answer(post, 200, _answer(action), AT) == []
    [dismissed] = entries_of(dismissing.transcript, MenuDismissed)
    assert len(dismissed.labels) == 3


def test_start_chat_is_recorded_and_opened_when_the_policy_says_so() -> None:
    app = DeviceApp(AppSettings(SERVER_URL, start_chat=True))
    [post] = app.receive_push(_push({"_id": SERVICE_ID, "_action": "get-dialog-start-chat"}), AT)
    [start] = app.receive_answer(post, 200, _answer("get-dialog-start-chat"), AT)
    [shown] = entries_of(app.transcript, DialogShown)
    assert shown.dialog == StartChat(
        label="Start Chat",
        start_chat_url=f"{SERVER_URL}/genesys/1/service/{SERVICE_ID}/ixn/chat",
        comet_url=f"{SERVER_URL}/genesys/cometd",
        user_header="alice",
        chat_parameters={"subject": "None"},
        service_id=SERVICE_ID,
    )
    assert (start.url, start.purpose) == (shown.dialog.start_chat_url, "start-chat")
    assert app.receive_answer(start, 200, b'{"chatId": "C1"}', AT) == []
    assert entries_of(app.transcript, ChatOpened) == [ChatOpened(AT, start.url, {"chatId": "C1"})]
    # Without the policy the dialog is only shown.
    quiet = DeviceApp(AppSettings(SERVER_URL))
    [post] = quiet.receive_push(_push({"_id": SERVICE_ID, "_action": "get-dialog-start-chat"}), AT)
    assert quiet.receive_answer(post, 200, _answer("get-dialog-start-chat"), AT) == []


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
    app = DeviceApp(AppSettings(SERVER_URL))
    [post] = app.receive_push(_push({"_id": SERVICE_ID, "_action": action}), AT)
    assert app.receive_answer(post, 200, _answer(action), AT) == []
    assert [entry.dialog for entry in entries_of(app.transcript, DialogShown)] == [expected]


@pytest.mark.parametrize(
    ("status", "body", "detail"),
    [
        (404, b'{"code": 404}', '{"code": 404}'),
        (200, b"<html>", "Expecting value"),
        (200, b'{"_action": "ConfirmationDialog", "_ok_title": "Ok"}', "_text"),
        (200, b'{"_action": "DisplayMenu", "_content": [{"_group_content": []}]}', "_group_name"),
        (200, b"[1, 2]", "JSON object"),
    ],
)
def test_a_failed_or_unreadable_answer_is_recorded_not_executed(
    status: int, body: bytes, detail: str
) -> None:
    app = DeviceApp(AppSettings(SERVER_URL))
    [post] = app.receive_push(_push({"_id": SERVICE_ID, "_action": "wait-for-agent"}), AT)
    assert app.receive_answer(post, status, body, AT) == []
    [failure] = entries_of(app.transcript, GmsFailure)
    assert (failure.url, failure.status) == (post.url, status)
    assert detail in failure.detail
    assert not entries_of(app.transcript, DialogShown)


def test_an_unknown_dialog_action_is_kept_as_is() -> None:
    app = DeviceApp(AppSettings(SERVER_URL))
    [post] = app.receive_push(_push({"_id": SERVICE_ID, "_action": "wait-for-agent"}), AT)
    assert app.receive_answer(post, 200, b'{"_action": "OpenWebPage", "_url": "x"}', AT) == []
    [shown] = entries_of(app.transcript, DialogShown)
    assert shown.dialog == UnknownDialog("OpenWebPage", {"_action": "OpenWebPage", "_url": "x"})


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


def _phone(http: aiohttp.ClientSession, control: StandInControlApi, settings: AppSettings) -> Phone:
    return Phone(http, control.url, TOKEN, DeviceApp(settings))


def _callback(service_id: str, action: str) -> dict[str, object]:
    return _push({"_id": service_id, "_action": action})


async def test_phone_runs_a_callback_against_the_gms_simulator(
    http: aiohttp.ClientSession, control: StandInControlApi, gms: GmsSimServer
) -> None:
    service = gms.simulator.create_service(connect_mode="outbound")
    sid = service.service_id
    control.deliver("ff" * 32, _callback(sid, "connect-inbound"))  # another phone's push
    control.deliver(TOKEN, _callback(sid, "wait-for-agent"))
    confirm = {"_id": sid, "_action": "get-dialog-user-confirmation-provide_code-true"}
    control.deliver(TOKEN, _push(json.dumps(confirm)))
    phone = _phone(http, control, AppSettings(gms.base_url))
    transcript = await phone.wait_for_pushes(2, timeout_s=5)
    base = f"{gms.base_url}/genesys/1/service/{sid}"
    assert [entry.url for entry in entries_of(transcript, UrlPosted)] == [
        f"{base}/wait-for-agent",
        f"{base}/get-dialog-user-confirmation-provide_code-true",
        f"{base}/connect",
    ]
    shown = [entry.dialog for entry in entries_of(transcript, DialogShown)]
    assert [type(dialog) for dialog in shown] == [
        ConfirmationDialog,
        DisplayMenu,
        ConfirmationDialog,
    ]
    assert shown[0] == ConfirmationDialog("We will notify you when agent is available", "Ok", sid)
    assert shown[2] == ConfirmationDialog("You will receive the call shortly", "Ok", sid)
    assert [entry.label for entry in entries_of(transcript, MenuChoice)] == [
        "Yes, I'm ready to talk"
    ]
    assert [r.path for r in gms.simulator.requests] == [
        f"/genesys/1/service/{sid}/wait-for-agent",
        f"/genesys/1/service/{sid}/get-dialog-user-confirmation-provide_code-true",
        f"/genesys/1/service/{sid}/connect",
    ]
    assert phone.last_seq == 3
    assert [record["seq"] for record in phone.pushes] == [2, 3]
    # Already seen pushes are not processed again.
    assert await phone.poll_once() == 0
    assert len(gms.simulator.requests) == 3


async def test_phone_does_not_post_chat_pushes_to_gms(
    http: aiohttp.ClientSession, control: StandInControlApi, gms: GmsSimServer
) -> None:
    service = gms.simulator.create_service()
    sid = service.service_id
    control.deliver(TOKEN, _push({"_id": sid, "_action": "chat-message"}, {"title": "Kristi"}))
    control.deliver(TOKEN, _callback(sid, "get-dialog-start-chat"))
    phone = _phone(http, control, AppSettings(gms.base_url, start_chat=True))
    transcript = await phone.run_until(lambda t: bool(entries_of(t, ChatOpened)), timeout_s=5)
    assert [r.path.rsplit("/", 2)[-2:] for r in gms.simulator.requests] == [
        [sid, "get-dialog-start-chat"],
        ["ixn", "chat"],
    ]
    [chat] = entries_of(transcript, ChatOpened)
    assert chat.answer["chatId"] == service.chat_id
    assert [entry.title for entry in entries_of(transcript, AlertShown)] == ["Kristi", None]


async def test_phone_records_gms_refusals_and_unreachable_gms(
    http: aiohttp.ClientSession, control: StandInControlApi, gms: GmsSimServer
) -> None:
    control.deliver(TOKEN, _callback("N" * 32, "wait-for-agent"))
    phone = _phone(http, control, AppSettings(gms.base_url))
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
    phone = _phone(http, control, AppSettings(SERVER_URL))
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="0 pushes"):
        await phone.wait_for_pushes(1, timeout_s=0.3)
    assert time.monotonic() - started < 2
