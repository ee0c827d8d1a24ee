"""The whole GMS flow, GMS simulator → relay → APNs simulator → phone → GMS, and the demo."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from relay_harness import RelayHarness, basic_authorization, running_relay
from simulator import REPO_ROOT

from relay.demo import (
    GMS_USER,
    DemoReport,
    FlowEnds,
    callback_user_confirmation,
    chat_alerts,
    chat_delayed,
    chat_session,
    flow_ends,
)
from relay.device_sim.app import AlertShown, MenuChoice, PushNotPosted, UrlPosted, entries_of
from relay.gms_sim.dialogs import SEED_DIALOGS, JsonValue, fill_placeholders
from relay.gms_sim.scenarios import (
    AGENT_NICK,
    CLIENT_NICK,
    TranscriptLine,
    chat_event,
)
from relay.gms_sim.server import CallbackService, GmsSimServer, GmsSimulator

DEMO_TIMEOUT_S = 60
TRUE_MENU = "get-dialog-user-confirmation-provide_code-true"
FALSE_MENU = "get-dialog-user-confirmation-provide_code-false"


@contextlib.asynccontextmanager
async def gms_flow(
    redis_url: str, state_dir: Path, gms: GmsSimulator | None = None, **sections: Any
) -> AsyncIterator[tuple[RelayHarness, FlowEnds]]:
    """A relay (api + worker, real HTTP, TLS and HTTP/2), the GMS simulator and one phone."""
    async with (
        running_relay(redis_url, state_dir, **sections) as relay,
        GmsSimServer(gms or GmsSimulator()) as gms_server,
    ):
        yield (
            relay,
            flow_ends(
                relay.session,
                relay_url=relay.url,
                authorization=basic_authorization(),
                control_url=relay.sim.control_url,
                relay_app=relay.settings.apps[0],
                gms=gms_server,
                token=await relay.device_token(),
            ),
        )


def only_service(ends: FlowEnds) -> CallbackService:
    [service] = ends.gms.simulator.services.values()
    return service


def seed_url(ends: FlowEnds, service_id: str, action: str) -> str:
    """The seed's $(ServerURL)$(URLPath)$(_id)/$(_action), spelled out here on purpose."""
    return f"{ends.gms.base_url}/genesys/1/service/{service_id}/{action}"


def answers_by_url(ends: FlowEnds) -> dict[str, JsonValue]:
    return {url: json.loads(body) for url, _, body in ends.app.answers}


def seed_json(ends: FlowEnds, action: str, service_id: str, date: str = "") -> JsonValue:
    values = {
        "ExtURLBase": f"{ends.gms.base_url}/genesys",
        "ServiceID": service_id,
        "CometURL": f"{ends.gms.base_url}/genesys/cometd",
        "GMSUser": GMS_USER,
        "Date": date,
    }
    return fill_placeholders(SEED_DIALOGS[action], values)


@pytest.mark.parametrize("encoding", ["object", "string"])
async def test_callback_with_user_confirmation_end_to_end(
    redis_url: str, state_dir: Path, encoding: str
) -> None:
    async with gms_flow(redis_url, state_dir, app={"message_encoding": encoding}) as (_, ends):
        report = DemoReport()
        await callback_user_confirmation(ends, report)
        assert report.failures == []
        sid = only_service(ends).service_id
        transcript = ends.phone.transcript
        alerts = entries_of(transcript, AlertShown)
        assert {a.service_id for a in alerts} == {sid}
        assert [(a.action, a.title, a.body) for a in alerts] == [
            (
                "wait-for-agent",
                "You are in the queue",
                "We will notify you when an agent is available.",
            ),
            (TRUE_MENU, "An agent is available", "Tap to confirm you are ready to talk."),
            (FALSE_MENU, "An agent is available", "Tap to confirm you are ready to talk."),
            ("connect-outbound", "We are calling you", "You will receive the call shortly."),
        ]
        true_menu = seed_url(ends, sid, TRUE_MENU)
        false_menu = seed_url(ends, sid, FALSE_MENU)
        assert [post.url for post in entries_of(transcript, UrlPosted)] == [
            seed_url(ends, sid, "wait-for-agent"),
            true_menu,
            seed_url(ends, sid, "connect"),
            false_menu,
            seed_url(ends, sid, "snooze"),
            seed_url(ends, sid, "connect-outbound"),
        ]
        assert [(c.label, c.confirmation_text) for c in entries_of(transcript, MenuChoice)] == [
            (
                "Yes, I'm ready to talk",
                "You will hear tones immediately after call is connected. This is normal.",
            ),
            ("No, try again in 5 minutes", None),
        ]
        answers = answers_by_url(ends)
        for menu_url, action in (
            (true_menu, TRUE_MENU),
            (false_menu, FALSE_MENU),
        ):
            menu = answers[menu_url]
            assert isinstance(menu, dict)
            expires = datetime.strptime(str(menu["_expires"]), "%Y-%m-%dT%H:%M:%SZ")
            assert expires.replace(tzinfo=UTC) > datetime.now(UTC)
            assert menu == seed_json(ends, action, sid, str(menu["_expires"]))
        for action in ("wait-for-agent", "connect-outbound"):
            assert answers[seed_url(ends, sid, action)] == seed_json(ends, action, sid)
        # The menu's Yes leads to the seed's connect-outbound dialog.
        assert answers[seed_url(ends, sid, "connect")] == seed_json(ends, "connect-outbound", sid)


async def test_chat_delayed_end_to_end(redis_url: str, state_dir: Path) -> None:
    async with gms_flow(redis_url, state_dir) as (_, ends):
        report = DemoReport()
        await chat_delayed(ends, report)
        assert report.failures == []
        sid = only_service(ends).service_id
        [alert] = entries_of(ends.phone.transcript, AlertShown)
        assert (alert.title, alert.body, alert.action) == (
            "Your chat is ready",
            "Tap to start chatting with an agent.",
            "get-dialog-start-chat",
        )
        start_chat = seed_url(ends, sid, "get-dialog-start-chat")
        assert [post.url for post in entries_of(ends.phone.transcript, UrlPosted)] == [
            start_chat,
            seed_url(ends, sid, "ixn/chat"),
        ]
        dialog = answers_by_url(ends)[start_chat]
        assert dialog == seed_json(ends, "get-dialog-start-chat", sid)
        assert isinstance(dialog, dict)
        assert (dialog["_user_header"], dialog["_chat_parameters"]) == (
            GMS_USER,
            {"subject": "None"},
        )


async def test_chat_session_alerts_in_order_once_and_none_for_the_client(
    redis_url: str, state_dir: Path
) -> None:
    async with gms_flow(redis_url, state_dir) as (relay, ends):
        report = DemoReport()
        await chat_session(ends, report)
        assert report.failures == []
        transcript = ends.phone.transcript
        assert chat_alerts(transcript) == [
            (2, None, f"{AGENT_NICK} has joined the session"),
            (3, AGENT_NICK, "Hello, how can I help you?"),
            (7, None, f"{AGENT_NICK} has left the session"),
            (8, None, "Chat ended"),
        ]
        assert CLIENT_NICK not in repr(entries_of(transcript, AlertShown))
        assert len(entries_of(transcript, PushNotPosted)) == 4
        assert not entries_of(transcript, UrlPosted)
        assert len(await relay.received(ends.phone.token)) == 4
        totals = await relay.queue.totals()
        assert (totals.enqueued, totals.delivered, totals.pending) == (4, 4, 0)


async def wait_for_stalls(relay: RelayHarness, count: int, timeout_s: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (await relay.control.stats()).get("stalled", 0) < count:
        assert asyncio.get_running_loop().time() < deadline, f"fewer than {count} stalls"
        await asyncio.sleep(0.02)


async def test_positions_posted_out_of_order_are_pushed_in_order_and_late_ones_still_pushed(
    redis_url: str, state_dir: Path
) -> None:
    async with gms_flow(redis_url, state_dir) as (relay, ends):
        service = ends.gms.simulator.create_service("chat")
        started = datetime.now(UTC)

        async def post(position: int) -> Any:
            line = TranscriptLine("Message.Text", AGENT_NICK, f"line {position}", "AGENT")
            event = chat_event(service.service_id, "000ORDERTEST0001", position, line, started)
            return (await ends.pusher.push(ends.device_id, event)).answer

        # The head (position 2) is held in flight by the stalled APNs until the faults go.
        await relay.control.put_faults({"stall": {"tokens": [ends.phone.token]}})
        await post(2)
        await wait_for_stalls(relay, 1)
        answers = {position: await post(position) for position in (5, 3, 4)}
        repeat = await post(4)
        assert (repeat["id"], repeat["duplicate"]) == (answers[4]["id"], True)
        await relay.control.clear_faults()
        await ends.phone.wait_for_pushes(4, timeout_s=15)
        # A line after a higher one was delivered: pushed, later, never dropped.
        await post(1)
        await ends.phone.wait_for_pushes(5, timeout_s=10)
        assert await ends.phone.poll_once() == 0
        assert [(position, body) for position, _, body in chat_alerts(ends.phone.transcript)] == [
            (2, "line 2"),
            (3, "line 3"),
            (4, "line 4"),
            (5, "line 5"),
            (1, "line 1"),
        ]


async def test_a_step_that_differs_from_the_seed_fails_the_run(
    redis_url: str, state_dir: Path
) -> None:
    # GMS answering with a menu that expired before it was shown is not the seed's flow.
    stale_gms = GmsSimulator(confirm_timeout=timedelta(minutes=-5))
    async with gms_flow(redis_url, state_dir, gms=stale_gms) as (_, ends):
        report = DemoReport()
        await callback_user_confirmation(ends, report)
    assert {check.name for check in report.failures} == {
        "menu _expires is a YYYY-MM-DDTHH:MM:SSZ time still ahead"
    }
    assert len(report.failures) == 2  # both menus


def test_demo_command_runs_every_scenario_and_exits_0() -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "relay.cli", "demo"],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
    )
    out = finished.stdout
    assert finished.returncode == 0, out + finished.stderr
    for heading in ("callback-user-confirmation", "chat-delayed", "chat-session"):
        assert f"== {heading}: GMS service " in out
    for hop in ("GMS → relay", "relay → APNs", "APNs → phone", "phone → GMS", "GMS → phone"):
        assert f"  {hop} " in out
    assert 'user          chose "Yes, I\'m ready to talk"' in out
    assert "ConfirmationDialog 'You will receive the call shortly'" in out
    assert "alert 'Kristi Sippola' / 'Hello, how can I help you?'" in out
    assert "FAIL" not in out
    assert out.rstrip().endswith("every step happened as the seed says")
