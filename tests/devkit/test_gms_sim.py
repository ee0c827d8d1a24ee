"""The GMS simulator answers the seed's dialogs over HTTP and pushes to a relay like customhttp."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from seed_actions import SEED_ACTIONS

from relay_devkit.gms_sim import command
from relay_devkit.gms_sim.callback import CallbackOptions, CallbackState
from relay_devkit.gms_sim.chat import ChatSession, TranscriptLine
from relay_devkit.gms_sim.dialogs import (
    SEED_DIALOGS,
    DialogContext,
    JsonObject,
    JsonValue,
    fill_placeholders,
    seed_dialog,
)
from relay_devkit.gms_sim.push import CustomHttpPusher, basic_authorization
from relay_devkit.gms_sim.scenarios import (
    ScenarioOptions,
    callback_with_user_confirmation,
    chat_delayed,
    chat_session,
)
from relay_devkit.gms_sim.server import GmsSimServer, GmsSimulator

SERVICE_ID = "3SQI3S31693JL9L3R00506T40C000U73"
EXT = "http://135.34.145.123:8080/genesys"
EXPIRES = datetime(2014, 5, 2, 16, 57, 38, tzinfo=UTC)
CONTEXT = DialogContext(EXT, SERVICE_ID, "alice", EXPIRES)
TOKEN = "a1" * 32
SERVICE_URL = f"{EXT}/1/service/{SERVICE_ID}"

# The seed's dialogs, transcribed independently of relay/gms_sim/dialogs.py and filled for CONTEXT.
_MENU_TAIL: list[JsonValue] = [
    {
        "_dialog_id": "2",
        "_label": "No, try again in 5 minutes",
        "_action": "MenuItem",
        "_user_action_url": f"{SERVICE_URL}/snooze",
        "_method": "POST",
        "_id_to_jump_before": "exit://",
    },
    {
        "_dialog_id": "3",
        "_label": "Cancel, my problem has been solved",
        "_action": "MenuItem",
        "_user_action_url": f"{SERVICE_URL}/snooze",
        "_method": "POST",
        "_id_to_jump_before": "exit://",
    },
]
_YES: JsonObject = {
    "_dialog_id": "1",
    "_label": "Yes, I'm ready to talk",
    "_action": "MenuItem",
    "_user_action_url": f"{SERVICE_URL}/connect",
    "_method": "POST",
    "_id_to_jump_before": "exit://",
}


def _menu(yes: JsonObject) -> JsonObject:
    return {
        "_dialog_id": "0",
        "_label": "Agent is available right now",
        "_user_action_url": f"{SERVICE_URL}/not-used",
        "_method": "POST",
        "_action": "DisplayMenu",
        "_expires": "2014-05-02T16:57:38Z",
        "_resource_url": f"{SERVICE_URL}/get-dialog-user-confirmation",
        "_content": [{"_group_name": "Are you ready?", "_group_content": [yes, *_MENU_TAIL]}],
    }


EXPECTED: dict[str, JsonObject] = {
    "get-dialog-user-confirmation-provide_code-true": _menu(
        {
            **_YES,
            "confirmation_dialog": {
                "_text": "You will hear tones immediately after call is connected. This is normal.",
                "_dialog_type": "Notification",
                "_dismiss_timeout": 2,
            },
        }
    ),
    "get-dialog-user-confirmation-provide_code-false": _menu(_YES),
    "get-dialog-start-chat": {
        "_dialog_id": "1",
        "_action": "StartChat",
        "_label": "Start Chat",
        "_start_chat_url": f"{SERVICE_URL}/ixn/chat",
        "_comet_url": f"{EXT}/cometd",
        "_user_header": "alice",
        "_id_to_jump_before": "exit://",
        "_chat_parameters": {"subject": "None"},
        "_id": SERVICE_ID,
    },
    "connect-inbound": {
        "_dialog_id": "0",
        "_label": "Connecting ...",
        "_action": "DialNumber",
        "_tel_url": "n/a",
        "_access_code": "n/a",
        "_id": SERVICE_ID,
    },
    "connect-outbound": {
        "_dialog_id": "0",
        "_action": "ConfirmationDialog",
        "_text": "You will receive the call shortly",
        "_ok_title": "Ok",
        "_id": SERVICE_ID,
    },
    "wait-for-agent": {
        "_dialog_id": "0",
        "_action": "ConfirmationDialog",
        "_text": "We will notify you when agent is available",
        "_ok_title": "Ok",
        "_id": SERVICE_ID,
    },
}


# Pure: the dialogs as data.


def test_the_six_seed_actions_and_no_others() -> None:
    assert set(SEED_DIALOGS) == set(EXPECTED) == set(SEED_ACTIONS)


@pytest.mark.parametrize("action", sorted(EXPECTED))
def test_seed_dialog_is_the_seeds_json_with_placeholders_filled(action: str) -> None:
    dialog = seed_dialog(action, CONTEXT)
    assert dialog == EXPECTED[action]
    # Key order is part of "faithful": the seed's order, as the sample app's JSON printer shows.
    assert dialog is not None
    assert list(dialog) == list(EXPECTED[action])
    assert "$(" not in json.dumps(dialog)


def test_unknown_action_has_no_seed_dialog() -> None:
    assert seed_dialog("get-dialog-something-else", CONTEXT) is None


def test_a_placeholder_without_a_value_is_an_error_naming_it() -> None:
    with pytest.raises(KeyError, match=r"\$\(Nope\)"):
        fill_placeholders({"a": ["x $(Nope) y"]}, {"ServiceID": SERVICE_ID})


def test_filling_leaves_numbers_and_the_template_alone() -> None:
    template: JsonObject = {"n": 2, "s": "$(ServiceID)/x", "l": [True, None]}
    assert fill_placeholders(template, {"ServiceID": "S"}) == {
        "n": 2,
        "s": "S/x",
        "l": [True, None],
    }
    assert template["s"] == "$(ServiceID)/x"


def test_chat_lines_carry_a_number_of_their_own_beside_the_position() -> None:
    """The seed pairs line number "8" with position "2", "17" with "3", "20" with "4" under one
    startedAt: read as seconds into the chat, the simulator writes the seed's three lines."""
    started = datetime(2014, 5, 2, 16, 27, 38, tzinfo=UTC)
    chat = ChatSession("3SQIS3S1693JL9L3R00506T40C000UL4", started, "000FRa9NYM9A001K")
    chat.add(TranscriptLine("Notice.Joined", "Stan", "has joined the session", "CLIENT"), started)
    events = [
        chat.add(line, started + timedelta(seconds=at))
        for at, line in [
            (8, TranscriptLine("Message.Text", "Stan", "Hello.", "CLIENT")),
            (
                17,
                TranscriptLine(
                    "Notice.Joined", "Kristi Sippola", "has joined the session", "AGENT"
                ),
            ),
            (20, TranscriptLine("Notice.TypingStarted", "Kristi Sippola", "is typing", "AGENT")),
        ]
    ]
    for event in events:
        data = event["data"]
        assert isinstance(data, dict)
        assert re.fullmatch(r"[0-9a-f]{32}", str(data.pop("id")))
    message = {
        "startedAt": "2014-05-02T16:27:38Z",
        "chatIxnState": "TRANSCRIPT",
        "chatSessionId": "000FRa9NYM9A001K",
        "chatServiceMessage": "Chat service is available",
    }
    tag = "service.chat.refresh.3SQIS3S1693JL9L3R00506T40C000UL4"
    # The seed's three events (trailing commas dropped), their ids aside.
    assert events == [
        {
            "data": {
                "message": {**message, "transcriptToShow": [line], "transcriptPosition": position},
                "tag": tag,
            },
            "channel": "/_genesys",
        }
        for line, position in [
            (["Message.Text", "Stan", "Hello.", "8", "CLIENT"], "2"),
            (["Notice.Joined", "Kristi Sippola", "has joined the session", "17", "AGENT"], "3"),
            (["Notice.TypingStarted", "Kristi Sippola", "is typing", "20", "AGENT"], "4"),
        ]
    ]
    refreshed = chat.refresh(3)
    assert refreshed["transcriptPosition"] == "4"
    # The seed's shapes: transcriptToShow is a list of line arrays, data.message an object.
    lines = cast(list[list[str]], refreshed["transcriptToShow"])
    assert [line[3] for line in lines] == ["17", "20"]
    ended = chat.disconnect()["data"]
    assert isinstance(ended, dict)
    assert cast(dict[str, Any], ended["message"])["chatIxnState"] == "DISCONNECTED"
    with pytest.raises(ValueError, match="disconnected"):
        chat.add(TranscriptLine("Message.Text", "Stan", "late", "CLIENT"), started)


# Over HTTP on loopback.


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


@pytest.fixture
async def gms() -> AsyncIterator[GmsSimServer]:
    async with GmsSimServer(GmsSimulator()) as server:
        yield server


async def _post_json(http: aiohttp.ClientSession, url: str) -> tuple[int, JsonObject]:
    async with http.post(url) as response:
        return response.status, await response.json()


async def test_each_action_answers_the_seed_dialog_for_the_service(
    gms: GmsSimServer, http: aiohttp.ClientSession
) -> None:
    # A callback asking the user to confirm: its menus are open for _user_confirm_timeout.
    service = await gms.simulator.create_callback(
        CallbackOptions(wait_for_agent=False), gms_user="alice"
    )
    ext = f"{gms.base_url}/genesys"
    for action in SEED_DIALOGS:
        status, dialog = await _post_json(
            http, f"{gms.base_url}/genesys/1/service/{service.service_id}/{action}"
        )
        assert status == 200, action
        expected = json.loads(
            json.dumps(EXPECTED[action]).replace(EXT, ext).replace(SERVICE_ID, service.service_id)
        )
        # $(Date) is the confirmation deadline: the request time plus GMS's 30 s default.
        if "_expires" in dialog:
            expires = datetime.strptime(str(dialog.pop("_expires")), "%Y-%m-%dT%H:%M:%SZ")
            delta = expires.replace(tzinfo=UTC) - datetime.now(UTC)
            assert timedelta(seconds=25) < delta <= timedelta(seconds=30)
            expected.pop("_expires")
        assert dialog == expected, action


async def test_ext_url_base_when_configured_is_used_verbatim(http: aiohttp.ClientSession) -> None:
    simulator = GmsSimulator(ext_url_base="https://gms.example.com/genesys")
    async with GmsSimServer(simulator) as server:
        service = simulator.create_chat_service()
        _, dialog = await _post_json(
            http, f"{server.base_url}/genesys/1/service/{service.service_id}/get-dialog-start-chat"
        )
    assert dialog["_comet_url"] == "https://gms.example.com/genesys/cometd"
    assert dialog["_start_chat_url"] == (
        f"https://gms.example.com/genesys/1/service/{service.service_id}/ixn/chat"
    )


async def _create(http: aiohttp.ClientSession, base: str, **fields: str) -> str:
    async with http.post(f"{base}/genesys/1/service/callback/samples", data=fields) as response:
        assert response.status == 200
        service_id = str((await response.json())["_id"])
    assert re.fullmatch(r"[A-Z0-9]{32}", service_id)
    return service_id


def _items(menu: JsonObject) -> list[JsonObject]:
    content = menu["_content"]
    assert isinstance(content, list)
    assert isinstance(content[0], dict)
    items = content[0]["_group_content"]
    assert isinstance(items, list)
    return [item for item in items if isinstance(item, dict)]


@pytest.mark.parametrize(
    ("direction", "dialog_id", "answer", "state"),
    [
        (
            "USERTERMINATED",
            "1",
            ("ConfirmationDialog", "You will receive the call shortly"),
            CallbackState.CONNECTED,
        ),
        ("USERORIGINATED", "1", ("DialNumber", None), CallbackState.CONNECTED),
        (
            "USERTERMINATED",
            "2",
            ("ConfirmationDialog", "We will notify you again in 5 minutes"),
            CallbackState.SNOOZED,
        ),
        (
            "USERTERMINATED",
            "3",
            ("ConfirmationDialog", "Your callback has been cancelled"),
            CallbackState.CANCELLED,
        ),
    ],
)
async def test_menu_items_lead_through_the_callback_state_machine(
    gms: GmsSimServer,
    http: aiohttp.ClientSession,
    direction: str,
    dialog_id: str,
    answer: tuple[str, str | None],
    state: CallbackState,
) -> None:
    service_id = await _create(
        http, gms.base_url, _call_direction=direction, _wait_for_agent="false"
    )
    base = f"{gms.base_url}/genesys/1/service/{service_id}"
    # The callback's own menu (_provide_code false by default) is what _resource_url shows.
    _, menu = await _post_json(http, f"{base}/get-dialog-user-confirmation-provide_code-false")
    _, again = await _post_json(http, str(menu["_resource_url"]))
    assert again == menu  # the menu's _resource_url shows the open menu, same deadline
    [item] = [item for item in _items(menu) if item["_dialog_id"] == dialog_id]
    async with http.post(str(item["_user_action_url"]), data={"_dialog_id": dialog_id}) as response:
        assert response.status == 200
        shown = await response.json()
    assert (shown["_action"], shown.get("_text")) == answer
    assert shown["_id"] == service_id
    callback = gms.simulator.services[service_id].callback
    assert callback is not None
    assert callback.state is state
    # The question is answered: the menu and its items are no longer open.
    status, gone = await _post_json(http, f"{base}/get-dialog-user-confirmation-provide_code-true")
    assert status == 410
    assert "no confirmation is open" in str(gone["message"])


async def test_callback_options_are_validated_naming_the_field(
    gms: GmsSimServer, http: aiohttp.ClientSession
) -> None:
    async with http.post(
        f"{gms.base_url}/genesys/1/service/callback/samples", data={"_user_confirm_timeout": "soon"}
    ) as response:
        assert response.status == 400
        assert "_user_confirm_timeout" in (await response.json())["message"]


async def test_chat_start_refresh_send_and_disconnect(
    gms: GmsSimServer, http: aiohttp.ClientSession
) -> None:
    service = gms.simulator.create_chat_service(gms_user="alice")
    base = f"{gms.base_url}/genesys/1/service/{service.service_id}"
    _, start = await _post_json(http, f"{base}/get-dialog-start-chat")
    async with http.post(
        str(start["_start_chat_url"]), headers={"gms_user": "mallory"}
    ) as response:
        assert response.status == 403  # not the service's _user_header
    async with http.post(f"{base}/ixn/chat/refresh") as response:
        assert response.status == 409  # no chat yet
    async with http.post(
        str(start["_start_chat_url"]),
        headers={"gms_user": "alice"},
        data={"subject": "None", "nickname": "Stan"},
    ) as response:
        assert response.status == 200
        chat = await response.json()
    assert chat["_comet_url"] == start["_comet_url"]
    assert chat["tag"] == f"service.chat.refresh.{service.service_id}"
    assert chat["transcriptPosition"] == "1"
    assert [line[:3] for line in chat["transcriptToShow"]] == [
        ["Notice.Joined", "Stan", "has joined the session"]
    ]
    assert service.chat is not None
    assert service.chat.subject == "None"
    async with http.post(f"{base}/ixn/chat/send", data={"message": "Hello."}) as response:
        assert response.status == 200
    async with http.post(f"{base}/ixn/chat/send", data={}) as response:
        assert response.status == 400
    async with http.post(f"{base}/ixn/chat/refresh", data={"transcriptPosition": "2"}) as response:
        refreshed = await response.json()
    assert refreshed["transcriptPosition"] == "2"
    assert [line[2] for line in refreshed["transcriptToShow"]] == ["Hello."]
    async with http.post(f"{base}/ixn/chat/refresh", data={"transcriptPosition": "x"}) as response:
        assert response.status == 400
    async with http.post(f"{base}/ixn/chat/disconnect") as response:
        assert (await response.json())["chatIxnState"] == "DISCONNECTED"
    # No Comet client was listening: every event went out as a (recorded, not sent) push.
    assert [p.error for p in gms.simulator.pushes] == ["no pusher or device"] * 3


async def test_unknown_service_unknown_action_and_wrong_method_are_refused(
    gms: GmsSimServer, http: aiohttp.ClientSession
) -> None:
    service = gms.simulator.create_chat_service()
    base = f"{gms.base_url}/genesys/1/service"
    status, body = await _post_json(http, f"{base}/{'X' * 32}/wait-for-agent")
    assert status == 404
    assert "X" * 32 in str(body["message"])
    status, body = await _post_json(http, f"{base}/{service.service_id}/not-used")
    assert status == 404
    assert "not-used" in str(body["message"])
    async with http.get(f"{base}/{service.service_id}/wait-for-agent") as response:
        assert response.status == 405
    async with http.post(
        f"{base}/callback/samples", data={"_call_direction": "SIDEWAYS"}
    ) as response:
        assert response.status == 400
        assert "_call_direction" in (await response.json())["message"]


async def test_requests_are_logged_with_their_answers(
    gms: GmsSimServer, http: aiohttp.ClientSession
) -> None:
    service = gms.simulator.create_chat_service()
    url = f"{gms.base_url}/genesys/1/service/{service.service_id}/wait-for-agent"
    async with http.post(url, data=b"hello", headers={"gms_user": "bob"}):
        pass
    await _post_json(http, f"{gms.base_url}/genesys/1/service/{'Z' * 32}/wait-for-agent")
    logged = list(gms.simulator.requests)
    assert [(r.method, r.path, r.status) for r in logged] == [
        ("POST", f"/genesys/1/service/{service.service_id}/wait-for-agent", 200),
        ("POST", f"/genesys/1/service/{'Z' * 32}/wait-for-agent", 404),
    ]
    assert logged[0].body == b"hello"
    assert logged[0].headers["gms_user"] == "bob"
    assert gms.simulator.requests_to("/wait-for-agent") == logged


def test_url_path_must_fit_the_seeds_dialog_urls() -> None:
    with pytest.raises(ValueError, match="url_path"):
        GmsSimulator(url_path="/gms/api/")


# Scenarios against a stand-in relay endpoint.


@dataclass
class StandInRelay:
    """Answers POST /gms/push like the relay's webhook; records exactly what arrived."""

    status: int = 200
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    async def push(self, request: web.Request) -> web.Response:
        self.received.append((dict(request.headers), await request.read()))
        if self.status != 200:
            return web.json_response({"title": "refused"}, status=self.status)
        return web.json_response({"id": f"n{len(self.received)}"})

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture
async def relay() -> AsyncIterator[StandInRelay]:
    stand_in = StandInRelay()
    app = web.Application()
    app.router.add_post("/gms/push", stand_in.push)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    stand_in.url = f"http://{host}:{port}"
    try:
        yield stand_in
    finally:
        await runner.cleanup()


def _gms(http: aiohttp.ClientSession, relay: StandInRelay, **options: Any) -> GmsSimulator:
    pusher = CustomHttpPusher(http, relay.url, basic_authorization("gms", "s3cret"))
    return GmsSimulator(pusher=pusher, **options)


async def test_callback_scenario_posts_customhttp_bodies_with_basic_auth(
    http: aiohttp.ClientSession, relay: StandInRelay
) -> None:
    simulator = _gms(http, relay)
    run = await callback_with_user_confirmation(simulator, ScenarioOptions(f"demo:{TOKEN}"))
    assert relay.bodies() == [
        {"deviceId": f"demo:{TOKEN}", "message": {"_id": run.service_id, "_action": action}}
        for action in ("wait-for-agent", "get-dialog-user-confirmation-provide_code-false")
    ]
    basic = "Basic " + base64.b64encode(b"gms:s3cret").decode()
    for headers, _ in relay.received:
        assert headers["Authorization"] == basic
        assert headers["Content-Type"] == "application/json"
    assert run.failures == []
    callback = simulator.services[run.service_id].callback
    assert callback is not None
    assert callback.state is CallbackState.CONFIRMING
    await simulator.close()


async def test_callback_can_send_message_as_a_json_string_and_connect_at_once(
    http: aiohttp.ClientSession, relay: StandInRelay
) -> None:
    simulator = _gms(http, relay, message_as_string=True)
    options = CallbackOptions(
        wait_for_agent=False, wait_for_user_confirm=False, connect_mode="inbound"
    )
    service = await simulator.create_callback(options, device_id=TOKEN)
    messages = [body["message"] for body in relay.bodies()]
    assert [json.loads(str(message)) for message in messages] == [
        {"_id": service.service_id, "_action": "connect-inbound"}
    ]


async def test_chat_delayed_pushes_start_chat(
    http: aiohttp.ClientSession, relay: StandInRelay
) -> None:
    run = await chat_delayed(_gms(http, relay), ScenarioOptions(TOKEN))
    assert relay.bodies() == [
        {"deviceId": TOKEN, "message": {"_id": run.service_id, "_action": "get-dialog-start-chat"}}
    ]


async def test_chat_session_without_comet_pushes_the_events_in_order(
    http: aiohttp.ClientSession, relay: StandInRelay
) -> None:
    run = await chat_session(_gms(http, relay), ScenarioOptions(TOKEN))
    events = [body["message"] for body in relay.bodies()]
    assert all(isinstance(event, dict) and event["channel"] == "/_genesys" for event in events)
    messages = [event["data"]["message"] for event in events]
    assert [m["transcriptPosition"] for m in messages] == ["1", "2", "3", "4", "5", "5"]
    kinds = [
        (m["chatIxnState"], [(line[0], line[4]) for line in m["transcriptToShow"]])
        for m in messages
    ]
    assert kinds == [
        ("TRANSCRIPT", [("Notice.Joined", "CLIENT")]),
        ("TRANSCRIPT", [("Notice.Joined", "AGENT")]),
        ("TRANSCRIPT", [("Notice.TypingStarted", "AGENT")]),
        ("TRANSCRIPT", [("Message.Text", "AGENT")]),
        ("TRANSCRIPT", [("Notice.Left", "AGENT")]),
        ("DISCONNECTED", []),
    ]
    assert {event["data"]["tag"] for event in events} == {f"service.chat.refresh.{run.service_id}"}
    assert len({m["chatSessionId"] for m in messages}) == 1


async def test_a_refused_push_is_recorded_as_failed_not_resent(
    http: aiohttp.ClientSession, relay: StandInRelay
) -> None:
    relay.status = 401
    run = await chat_delayed(_gms(http, relay), ScenarioOptions(TOKEN))
    assert [failure.error is not None and "401" in failure.error for failure in run.failures] == [
        True
    ]
    assert len(relay.received) == 1  # GMS does not resend


async def _start_command(*arguments: str) -> asyncio.subprocess.Process:
    """`apns-relay gms-sim` as its own process: it owns its event loop and signal handlers."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay.cli",
        "gms-sim",
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_command_serves_and_runs_a_scenario_once(relay: StandInRelay) -> None:
    process = await _start_command(
        "--port=0",
        f"--relay-url={relay.url}",
        "--basic-auth=gms:s3cret",
        "--scenario=chat-delayed",
        f"--device-id={TOKEN}",
        "--once",
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=20)
    assert process.returncode == 0, err.decode()
    records = [json.loads(line) for line in out.decode().splitlines()]
    assert records[0]["gms_sim"].startswith("http://127.0.0.1:")
    assert records[1]["scenario"] == "chat-delayed"
    assert records[1]["pushes"][0]["message"] == relay.bodies()[0]["message"]
    assert relay.received[0][0]["Authorization"] == basic_authorization("gms", "s3cret")


async def test_command_serves_dialogs_until_sigterm(http: aiohttp.ClientSession) -> None:
    process = await _start_command("--port=0")
    assert process.stdout is not None
    ready = json.loads(await asyncio.wait_for(process.stdout.readline(), timeout=20))
    async with http.post(f"{ready['gms_sim']}/genesys/1/service/callback/samples") as response:
        assert response.status == 200
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), timeout=10) == 0


def test_command_refuses_a_scenario_without_a_relay(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    command.configure(parser)
    assert command.run(parser.parse_args(["--scenario=chat-delayed"])) == 2
    assert "--relay-url" in capsys.readouterr().err
