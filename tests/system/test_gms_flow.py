"""The whole GMS flow, GMS simulator → relay → APNs simulator → phone → GMS, and the demo."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from relay_harness import RelayHarness, basic_authorization, running_relay
from simulator import REPO_ROOT

from relay_devkit.demo import (
    DEMO_APP,
    DEMO_CIRCUIT,
    DEMO_SCENARIOS,
    SEED_CHAT_EVENTS,
    DemoReport,
    FlowEnds,
    Marks,
    RecordingApp,
    callback_confirm,
    check_seed_dialog,
    flow_ends,
    normalised_event,
)
from relay_devkit.device_sim.app import AlertShown, AppSettings, entries_of
from relay_devkit.device_sim.phone import Phone
from relay_devkit.gms_sim.chat import AGENT_NICK, ChatSession, TranscriptLine
from relay_devkit.gms_sim.server import GmsSimServer, GmsSimulator

DEMO_TIMEOUT_S = 90


@contextlib.asynccontextmanager
async def gms_flow(
    redis_url: str, state_dir: Path, **sections: Any
) -> AsyncIterator[tuple[RelayHarness, FlowEnds]]:
    """A relay (api + worker, real HTTP, TLS and HTTP/2), the GMS simulator and one phone."""
    async with (
        running_relay(redis_url, state_dir, **sections) as relay,
        GmsSimServer(GmsSimulator()) as gms_server,
    ):
        ends = await flow_ends(
            relay.session,
            relay_url=relay.url,
            authorization=basic_authorization(),
            control_url=relay.sim.control_url,
            relay_app=relay.settings.apps[0],
            gms=gms_server,
        )
        try:
            yield relay, ends
        finally:
            await ends.phone.close()


def chat_alerts(ends: FlowEnds) -> list[tuple[str | None, str | None]]:
    """(title, body) of the chat pushes the phone got (their message is the seed's {"_id",
    "_action"}: the alert is what tells them apart)."""
    return [
        (alert.title, alert.body)
        for alert in entries_of(ends.phone.transcript, AlertShown)
        if alert.action == ends.relay_app.chat.action
    ]


@pytest.mark.parametrize("encoding", ["object", "string"])
@pytest.mark.slow
async def test_callback_confirm_end_to_end(redis_url: str, state_dir: Path, encoding: str) -> None:
    async with gms_flow(redis_url, state_dir, app={"message_encoding": encoding}) as (_, ends):
        report = DemoReport()
        await callback_confirm(ends, report)
        assert report.failures == []
        assert len(report.checks) >= 10
        [service] = ends.simulator.services.values()
        alerts = entries_of(ends.phone.transcript, AlertShown)
        assert {a.service_id for a in alerts} == {service.service_id}
        assert [(a.presentation, a.title) for a in alerts] == [
            ("alert dialog", "You are in the queue"),
            ("notification", "An agent is available"),
        ]


@pytest.mark.parametrize(
    "scenario",
    [
        "callback-snooze",
        "callback-cancel",
        "callback-timeout",
        "callback-inbound",
        "chat",
        "callback-live-activity",
    ],
)
@pytest.mark.slow
async def test_demo_scenario_end_to_end(redis_url: str, state_dir: Path, scenario: str) -> None:
    app = {**DEMO_APP, "live_activity": {"dismiss_after_s": 2}}
    async with gms_flow(redis_url, state_dir, app=app, circuit=dict(DEMO_CIRCUIT)) as (
        relay,
        ends,
    ):
        report = DemoReport()
        await DEMO_SCENARIOS[scenario](ends, report)
        assert report.failures == []
        assert len(report.checks) >= 4
        if scenario == "chat":
            # Only the agent's line was pushed: the customer's own lines and typing never are.
            assert chat_alerts(ends) == [(AGENT_NICK, "How can I help you?")]
            totals = await relay.queue.totals()
            assert (totals.delivered, totals.pending) == (2, 0)  # + get-dialog-start-chat


async def test_positions_posted_out_of_order_are_pushed_in_order_and_late_ones_still_pushed(
    redis_url: str, state_dir: Path
) -> None:
    async with gms_flow(redis_url, state_dir) as (relay, ends):
        service = ends.simulator.create_chat_service()
        chat = ChatSession(service.service_id, datetime.now(UTC), "000ORDERTEST0001")
        events = {
            position: chat.add(
                TranscriptLine("Message.Text", AGENT_NICK, f"line {position}", "AGENT"),
                datetime.now(UTC),
            )
            for position in range(1, 6)
        }
        pusher = ends.simulator.pusher
        assert pusher is not None

        async def post(position: int) -> Any:
            return (await pusher.push(ends.device_id, events[position])).answer

        # The head (position 2) is held in flight by the stalled APNs until the faults go.
        await relay.control.put_faults({"stall": {"tokens": [ends.phone.token]}})
        await post(2)
        await relay.control.wait_for_stalls(1)
        answers = {position: await post(position) for position in (5, 3, 4)}
        repeat = await post(4)
        assert (repeat["id"], repeat["duplicate"]) == (answers[4]["id"], True)
        await relay.control.clear_faults()
        await ends.phone.wait_for_pushes(4, timeout_s=15)
        # A line after a higher one was delivered: pushed, later, never dropped.
        await post(1)
        await ends.phone.wait_for_pushes(5, timeout_s=10)
        assert await ends.phone.poll_once() == 0
        assert [body for _, body in chat_alerts(ends)] == [
            "line 2",
            "line 3",
            "line 4",
            "line 5",
            "line 1",
        ]


async def test_a_step_that_differs_from_the_seed_fails_the_check() -> None:
    """The demo's checks compare with the seed's text, so a GMS that strays is caught."""
    async with aiohttp.ClientSession() as session:
        gms = GmsSimServer(GmsSimulator())
        app = RecordingApp(AppSettings(gms.base_url))
        # No relay here: this check reads the seed and GMS's answer, never the relay's App.
        ends = FlowEnds(gms, Phone(session, "http://127.0.0.1:9", "ab" * 32, app), app, None, "x")  # type: ignore[arg-type]
        sid = "S" * 32
        url = ends.seed_url(sid, "wait-for-agent")
        strayed = {
            "_dialog_id": "0",
            "_action": "ConfirmationDialog",
            "_text": "We will notify you when an agent is available",  # the seed has no "an"
            "_ok_title": "Ok",
            "_id": sid,
        }
        app.answers.append((url, 200, json.dumps(strayed).encode()))
        report = DemoReport()
        check_seed_dialog(ends, report, Marks(0, 0, 0, 0), sid, "wait-for-agent", url)
        app.answers.append(
            (
                url,
                200,
                json.dumps(
                    {**strayed, "_text": "We will notify you when agent is available"}
                ).encode(),
            )
        )
        check_seed_dialog(ends, report, Marks(0, 1, 0, 0), sid, "wait-for-agent", url)
        assert [check.ok for check in report.checks] == [False, True]
    seed = SEED_CHAT_EVENTS["Message Receipt"]
    assert normalised_event(seed) == normalised_event(json.loads(json.dumps(seed)))
    swapped = json.loads(json.dumps(seed))
    swapped["data"]["message"]["transcriptPosition"] = "8"  # the 4th element is not the position
    assert normalised_event(swapped) != normalised_event(seed)


@pytest.mark.parametrize("auth", ["token", "certificate"])
@pytest.mark.slow
def test_demo_command_runs_every_scenario_and_exits_0(auth: str) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "relay.cli", "demo", "--auth", auth],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        check=False,
    )
    out = finished.stdout
    assert finished.returncode == 0, out + finished.stderr
    for heading in DEMO_SCENARIOS:
        assert f"== {heading}: GMS " in out
    for hop in (
        "GMS → relay",
        "relay → APNs",
        "APNs → phone",
        "phone → GMS",
        "GMS → phone",
        "Comet → phone",
    ):
        assert f"  {hop} " in out
    assert 'user          chose "Yes, I\'m ready to talk"' in out
    assert "ConfirmationDialog 'You will receive the call shortly'" in out
    assert (
        "notification: 'Kristi Sippola' / 'How can I help you?' (_action ixn/chat/refresh)" in out
    )
    assert "refused \"Yes, I'm ready to talk\": chosen after the menu's _expires" in out
    assert ": 410 " in out
    assert "FAIL" not in out
    assert "Traceback" not in finished.stderr
    # Every seed element ran: connect-inbound's dial, Notice.Left, the _resource_url re-fetch, and
    # a late confirmation expiring at the relay.
    assert "DialNumber _tel_url 'n/a' _access_code 'n/a': nothing to dial" in out
    assert "Comet → phone line 7 Notice.Left Kristi Sippola: 'has left the session'" in out
    assert "/get-dialog-user-confirmation\n" in out
    assert "then it expired at the relay" in out
    # Each check says what it holds the flow to, and the summary counts each kind.
    summary = out.rstrip().splitlines()[-3:]
    assert [line.split("]")[0].strip() for line in summary] == ["[seed", "[inferred", "[relay"]
    counted = sum(int(line.split()[1]) for line in summary)
    assert f"{counted} of {counted} checks passed" in out
    assert out.count("      ok   [") == counted
    assert f"({auth} auth)" in out
