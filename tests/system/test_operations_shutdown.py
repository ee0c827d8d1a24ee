"""SIGTERM on real processes: not ready, ingest 503, in-flight sends finish, the rest released."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from eventually import eventually
from relay_harness import API_TOKEN, app_tokens, relay_document, relay_processes, write_config
from simulator import ControlClient, control_client, running_simulator

from relay.config.schema import Settings
from relay.runtime import make_queue
from relay_devkit.dev_mode import simulator_app

# Whole processes, outages or crashes: seconds each (`make test-fast` leaves them out).
pytestmark = [pytest.mark.slow, pytest.mark.beside]


async def streams_reach(control: ControlClient, count: int) -> bool:
    """Whether the simulator has seen at least `count` streams (requests) opened."""
    return int((await control.stats())["streams"]) >= count


GRACE_S = 10.0  # `apns-relay serve --grace` default
LATENCY_MS = 1500  # long enough that every send is in flight when the signal lands
WAIT_S = 20.0
BEARER = {"Authorization": f"Bearer {API_TOKEN}"}


async def post_notification(
    session: aiohttp.ClientSession, url: str, device: str
) -> tuple[int, Any, Any]:
    body = {"device_token": device, "service_id": "S", "action": "wait-for-agent"}
    async with session.post(f"{url}/v1/notifications", json=body, headers=BEARER) as response:
        return response.status, await response.json(content_type=None), response.headers


async def test_sigterm_drains_sends_in_flight_releases_the_unfinished_and_exits_0(
    redis_url: str, state_dir: Path
) -> None:
    async with running_simulator(state_dir / "sim") as info, control_client(info) as control:
        *devices, stuck = await app_tokens(control, simulator_app(info), 11)
        # `stuck` is never answered: still in flight when the grace period ends.
        await control.put_faults({"latency_ms": LATENCY_MS, "stall": {"tokens": [stuck]}})
        document = relay_document(
            redis_url, info, delivery={"request_timeout_seconds": 60}, queue={"lease_seconds": 300}
        )
        config = write_config(state_dir / "relay.yaml", document)
        with relay_processes("serve", config=config, log_dir=state_dir) as [relay]:
            async with aiohttp.ClientSession() as session:
                ids = {}
                for device in (*devices, stuck):
                    status, body, _ = await post_notification(session, relay.url, device)
                    assert status == 202, body
                    ids[device] = body["id"]
                await eventually(
                    lambda: streams_reach(control, len(ids)),
                    timeout_s=WAIT_S,
                    interval_s=0.01,
                    what="the sends at the simulator",
                )
                signalled = time.monotonic()
                relay.process.send_signal(signal.SIGTERM)

                async def not_ready() -> dict[str, Any] | None:
                    async with session.get(f"{relay.url}/readyz") as response:
                        answer: dict[str, Any] = await response.json()
                        return answer if response.status == 503 else None

                readiness = await eventually(
                    not_ready, timeout_s=2, interval_s=0.01, what="not ready after SIGTERM"
                )
                assert "draining" in readiness["reasons"]
                status, problem, headers = await post_notification(session, relay.url, "ab" * 32)
                assert status == 503, problem
                assert headers["Content-Type"].startswith("application/problem+json")
                assert headers["Retry-After"] == "1"
                assert problem["type"].endswith(":draining")
                async with session.get(f"{relay.url}/healthz") as response:
                    assert response.status == 200  # still serving while it drains
            exit_code = await asyncio.to_thread(relay.process.wait, GRACE_S + 10)
            stopped_after = time.monotonic() - signalled
            log = relay.log()
        sent = (await control.notifications())["notifications"]
    assert exit_code == 0, log
    assert GRACE_S - 0.5 < stopped_after < GRACE_S + 3, stopped_after
    # In flight at the signal: answered during the grace period and recorded as delivered.
    assert sorted(record["token"] for record in sent) == sorted(devices)
    queue = make_queue(Settings.model_validate(document))
    try:
        for device in devices:
            status_record = await queue.get(ids[device])
            assert status_record is not None
            assert status_record.state == "delivered"
        # Unanswered at the end of the grace: released at once, not left to its 300 s lease. It
        # was on the wire, so it may have reached the phone: retrying, never superseded (12).
        released = await queue.get(ids[stuck])
        assert released is not None
        assert (released.state, released.attempts) == ("retrying", 0)
        totals = await queue.totals()
        assert (totals.leased, totals.pending) == (0, 1)
    finally:
        await queue.aclose()
    events = [json.loads(line)["event"] for line in log.splitlines()]
    assert events.index("shutting_down") < events.index("draining")
    assert events.index("grace_period_over") < events.index("stopped")


async def test_sigterm_stops_idle_api_and_worker_processes_at_once(
    redis_url: str, state_dir: Path
) -> None:
    async with running_simulator(state_dir / "sim") as info:
        config = write_config(state_dir / "relay.yaml", relay_document(redis_url, info))
        with relay_processes("api", "worker", config=config, log_dir=state_dir) as processes:
            for process in processes:
                started = time.monotonic()
                assert process.kill(signal.SIGTERM) == 0, process.log()
                assert time.monotonic() - started < 3, process.role


async def test_sigterm_gives_back_claims_still_waiting_for_a_stream_at_once(
    redis_url: str, state_dir: Path
) -> None:
    """Two streams allowed: two sends on the wire finish, the eight waiting go straight back."""
    async with (
        # Two streams from the start: this is about claims waiting for a stream, not about how
        # a new connection's limit grows (test_apns_adapter covers that).
        running_simulator(state_dir / "sim", max_streams=2, dynamic_streams=False) as info,
        control_client(info) as control,
    ):
        devices = await app_tokens(control, simulator_app(info), 10)
        await control.put_faults({"latency_ms": LATENCY_MS})
        document = relay_document(
            redis_url,
            info,
            app={"max_connections": 1},
            delivery={"request_timeout_seconds": 60},
            queue={"lease_seconds": 300},
        )
        config = write_config(state_dir / "relay.yaml", document)
        with relay_processes("serve", config=config, log_dir=state_dir) as [relay]:
            async with aiohttp.ClientSession() as session:
                ids = [
                    (await post_notification(session, relay.url, device))[1]["id"]
                    for device in devices
                ]
                await eventually(
                    lambda: streams_reach(control, 2),
                    timeout_s=WAIT_S,
                    interval_s=0.01,
                    what="two sends at the simulator",
                )
            signalled = time.monotonic()
            relay.process.send_signal(signal.SIGTERM)
            exit_code = await asyncio.to_thread(relay.process.wait, GRACE_S + 10)
            stopped_after = time.monotonic() - signalled
            log = relay.log()
    assert exit_code == 0, log
    assert stopped_after < GRACE_S / 2, stopped_after  # only the two on the wire were awaited
    queue = make_queue(Settings.model_validate(document))
    try:
        states = [await queue.get(notification_id) for notification_id in ids]
        delivered = [s for s in states if s is not None and s.state == "delivered"]
        released = [s for s in states if s is not None and (s.state, s.attempts) == ("queued", 0)]
        outcomes = [s and (s.state.value, s.attempts, s.last_reason) for s in states]
        assert (len(delivered), len(released)) == (2, 8), outcomes
        assert (await queue.totals()).leased == 0
    finally:
        await queue.aclose()
