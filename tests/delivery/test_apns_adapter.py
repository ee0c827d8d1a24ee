"""relay.delivery.apns and its aioapns adapter against the APNs simulator over real TLS + HTTP/2:
one test per aioapns gap, more."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import jwt
import pytest
from aioapns import NotificationRequest
from aioapns.connection import APNsProductionClientProtocol
from eventually import eventually
from h2.connection import H2Connection
from hpack import Encoder, NeverIndexedHeaderTuple
from hyperframe.frame import GoAwayFrame
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from simulator import ControlClient, SimInfo, aioapns_client, control_client, running_simulator

from relay.core.endpoint import Endpoint
from relay.core.model import ApnsResponse, Notification
from relay.credentials.model import TokenCredentials
from relay.delivery.apns import ApnsClient
from relay.delivery.apns_adapter import PlainHpackEncoder, RelayClientProtocol
from relay.telemetry import metrics
from relay_devkit.apns_sim.certs import create_signing_key
from relay_devkit.apns_sim.server import KeySource

TOPIC = "com.example.app"
PAYLOAD = b'{"aps":{"alert":"Agent available"},"message":{"_id":"s1"}}'
SLACK_S = 1.0  # scheduling allowance on a loaded 2-core machine


def notification(token: str, **changes: Any) -> Notification:
    fields: dict[str, Any] = {
        "app": "adapter-test",
        "device_token": token,
        "payload": PAYLOAD,
        "push_type": "alert",
        "priority": 10,
        "expires_at": int(time.time()) + 3600,
        **changes,
    }
    return Notification(**fields)


def new_apns_id() -> str:
    return str(uuid.uuid4())


def open_connections(client: ApnsClient) -> list[RelayClientProtocol]:
    """The client's open connections: aioapns types them as its base protocol, but the adapter's
    pool makes only RelayClientProtocol ones (as relay.apns itself casts them)."""
    return cast(list[RelayClientProtocol], client.pool.connections)


@dataclass
class Harness:
    sim: SimInfo
    control: ControlClient
    token: str  # issued by the simulator, as every token a test sends
    stalled_token: str
    clients: list[ApnsClient] = field(default_factory=list)

    def client(self, **options: Any) -> ApnsClient:
        """A client of a fresh app name (metrics are per app), closed when the test ends."""
        client = ApnsClient(
            f"adapter-{uuid.uuid4().hex[:8]}",
            TOPIC,
            Endpoint(self.sim.host, self.sim.port, str(self.sim.ca)),
            TokenCredentials(self.sim.key_pem, self.sim.key_id, self.sim.team_id),
            **{"request_timeout_s": 5.0, **options},
        )
        self.clients.append(client)
        return client

    async def stats(self) -> dict[str, Any]:
        return await self.control.stats()


@contextlib.asynccontextmanager
async def harness(state_dir: Path, **options: Any) -> AsyncIterator[Harness]:
    async with (
        running_simulator(state_dir, seed=7, **options) as sim,
        control_client(sim) as control,
    ):
        token, stalled_token = await control.issue_tokens(2, TOPIC)
        test_harness = Harness(sim, control, token, stalled_token)
        try:
            yield test_harness
        finally:
            for client in test_harness.clients:
                await client.close()


@dataclass
class CallbackErrors:
    """Exceptions escaping protocol callbacks (connection_lost, data_received, timers)."""

    contexts: list[dict[str, Any]] = field(default_factory=list)
    seen: asyncio.Event = field(default_factory=asyncio.Event)

    def record(self, _loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.contexts.append(context)
        self.seen.set()


@pytest.fixture
async def callback_errors() -> AsyncIterator[CallbackErrors]:
    loop = asyncio.get_running_loop()
    errors = CallbackErrors()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(errors.record)
    yield errors
    loop.set_exception_handler(previous)


async def stats_when(
    control: ControlClient, condition: Callable[[dict[str, Any]], bool], within_s: float = 5.0
) -> dict[str, Any]:
    """The simulator's stats once they satisfy `condition` (polled, with a deadline)."""

    async def satisfied() -> dict[str, Any] | None:
        stats = await control.stats()
        return stats if condition(stats) else None

    return await eventually(
        satisfied, timeout_s=within_s, interval_s=0.01, what="the simulator's stats"
    )


def jwt_signed(app: str) -> float:
    return REGISTRY.get_sample_value("apns_relay_jwt_refreshes_total", {"app": app}) or 0.0


# --- headers ---------------------------------------------------------------------------------


async def test_headers_sent_are_exactly_apples(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        client = h.client()
        alert = notification(h.token, collapse_id="chat-s1", expires_at=1_900_000_000)
        background = notification(
            h.stalled_token, push_type="background", priority=5, expires_at=1_800_000_000
        )
        alert_id, background_id = new_apns_id(), new_apns_id()
        assert await client.send(alert, alert_id) == ApnsResponse(200, None, alert_id)
        assert await client.send(background, background_id) == ApnsResponse(
            200, None, background_id
        )
        logged = (await h.control.notifications())["notifications"]
    assert [entry["headers"] for entry in logged] == [
        {
            "apns-id": alert_id,
            "apns-topic": TOPIC,
            "apns-push-type": "alert",
            "apns-priority": "10",
            "apns-expiration": "1900000000",
            "apns-collapse-id": "chat-s1",
        },
        {
            "apns-id": background_id,
            "apns-topic": TOPIC,
            "apns-push-type": "background",
            "apns-priority": "5",
            "apns-expiration": "1800000000",
        },
    ]
    assert logged[0]["payload"] == {"aps": {"alert": "Agent available"}, "message": {"_id": "s1"}}


# --- gap 1: no request deadline --------------------------------------------------------------


async def test_stalled_stream_times_out_and_stalled_connection_is_replaced(
    tmp_path: Path, callback_errors: CallbackErrors
) -> None:
    async with harness(tmp_path) as h:
        await h.control.put_faults({"stall": {"tokens": [h.stalled_token]}})
        client = h.client(request_timeout_s=0.3)
        started = time.monotonic()
        assert await client.send(notification(h.stalled_token), new_apns_id()) == ApnsResponse(
            0, "Timeout"
        )
        assert 0.3 <= time.monotonic() - started < 0.3 + SLACK_S
        assert (await client.send(notification(h.token), new_apns_id())).status == 200
        assert (await h.stats())["connections_opened"] == 1  # one timeout is no reason to leave

        stalls = [client.send(notification(h.stalled_token), new_apns_id()) for _ in range(3)]
        assert {r.reason for r in await asyncio.gather(*stalls)} == {"Timeout"}
        assert (await client.send(notification(h.token), new_apns_id())).status == 200
        stats = await h.stats()
    assert stats["connections_opened"] == 2  # three unanswered in a row: a fresh connection
    assert stats["stalled"] == 4
    assert stats["accepted"] == 2
    assert callback_errors.contexts == []


# --- gap 2: an error status without a body ---------------------------------------------------


async def test_error_status_without_body_resolves_with_status_and_no_reason(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        await h.control.put_faults(
            {
                "scripted": {
                    h.token: [
                        {"status": 500, "body": False},
                        {"status": 503, "reason": "Shutdown", "body": False},
                    ]
                }
            }
        )
        client = h.client(request_timeout_s=5.0)
        first, second = new_apns_id(), new_apns_id()
        async with asyncio.timeout(SLACK_S):
            assert await client.send(notification(h.token), first) == ApnsResponse(500, None, first)
            assert await client.send(notification(h.token), second) == ApnsResponse(
                503, None, second
            )
            assert (await client.send(notification(h.token), new_apns_id())).status == 200


# --- gap 3: timeouts, then the connection drops ----------------------------------------------


async def test_timeouts_then_drop_finish_every_stream_without_callback_errors(
    tmp_path: Path, callback_errors: CallbackErrors
) -> None:
    async with harness(tmp_path) as h:
        await h.control.put_faults({"stall": {"tokens": [h.stalled_token]}})
        client = h.client(request_timeout_s=0.2)
        # A success first: a new connection carries one stream until one request succeeds.
        assert (await client.send(notification(h.token), new_apns_id())).status == 200
        timed_out = [client.send(notification(h.stalled_token), new_apns_id()) for _ in range(2)]
        assert {r.reason for r in await asyncio.gather(*timed_out)} == {"Timeout"}

        client.request_timeout_s = 30.0
        with pytest.raises(TimeoutError):  # a caller's own wait_for, as aioapns users write
            await asyncio.wait_for(client.send(notification(h.stalled_token), new_apns_id()), 0.1)
        in_flight = [
            asyncio.ensure_future(client.send(notification(h.stalled_token), new_apns_id()))
            for _ in range(2)
        ]
        await stats_when(h.control, lambda stats: stats["stalled"] == 5)
        assert not any(task.done() for task in in_flight)
        await h.control.put_faults({"drop": {"after_streams": 6}})
        started = time.monotonic()
        dropped = await client.send(notification(h.token), new_apns_id())
        results = await asyncio.gather(*in_flight)
        elapsed = time.monotonic() - started
        await h.control.clear_faults()
        after = await client.send(notification(h.token), new_apns_id())
        stats = await h.stats()
    assert dropped == ApnsResponse(0, "ConnectionClosed")
    assert results == [ApnsResponse(0, "ConnectionClosed")] * 2
    assert elapsed < SLACK_S
    assert after.status == 200
    assert stats["drops"] == 1
    assert stats["connections_opened"] == 2
    assert callback_errors.contexts == []


# --- gap 4: busy polling when streams run out ------------------------------------------------


async def test_more_sends_than_streams_all_complete_without_polling(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="aioapns")
    async with harness(tmp_path, max_streams=5) as h:
        await h.control.put_faults({"latency_ms": 5})
        client = h.client(max_connections=2)
        await client.pool.acquire()  # a burst right as a connection opens: the limit is known
        ids = [new_apns_id() for _ in range(200)]
        responses = await asyncio.gather(*(client.send(notification(h.token), i) for i in ids))
        stats = await h.stats()
        # Each stream was dropped from h2's table as it ended (CountedH2Connection): the length
        # of that table is what bounds the count of open streams.
        held = [len(c.conn.streams) for c in open_connections(client)]
    assert [r.status for r in responses] == [200] * 200
    assert [r.apns_id for r in responses] == ids
    assert held == [0, 0]
    assert stats["accepted"] == 200
    assert stats["connections_opened"] == 2  # never a stream over the limit: no protocol error
    assert stats["protocol_errors"] == 0
    assert not [r for r in caplog.records if "busy" in r.getMessage()]


# --- gap 5: one JWT per connection -----------------------------------------------------------


async def test_one_provider_token_for_all_connections_of_an_app(tmp_path: Path) -> None:
    async with harness(tmp_path, max_streams=2) as h:
        await h.control.put_faults({"latency_ms": 20})
        client = h.client(max_connections=4)
        responses = await asyncio.gather(
            *(client.send(notification(h.token), new_apns_id()) for _ in range(40))
        )
        stats = await h.stats()
        assert [r.status for r in responses] == [200] * 40
        assert client.connections == 4
        assert stats["connections_opened"] == 4
        assert jwt_signed(client.app) == 1


async def test_provider_token_is_resigned_after_45_minutes_on_the_same_connection(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        client = h.client()
        assert client.jwt is not None
        offset_s = [-50 * 60.0]  # the first token is signed 50 minutes in the past
        client.jwt.clock = lambda: time.time() + offset_s[0]
        assert (await client.send(notification(h.token), new_apns_id())).status == 200
        first = client.jwt.header
        offset_s[0] += 45 * 60 - 5
        assert (await client.send(notification(h.token), new_apns_id())).status == 200
        assert client.jwt.header == first
        offset_s[0] += 5
        assert (await client.send(notification(h.token), new_apns_id())).status == 200
        second = client.jwt.header
        stats = await h.stats()
    assert second != first
    claims = jwt.decode(second.removeprefix("bearer "), options={"verify_signature": False})
    assert abs(claims["iat"] - (time.time() - 5 * 60)) < 60
    assert jwt_signed(client.app) == 2
    assert stats["accepted"] == 3
    assert stats["connections_opened"] == 1


async def test_expired_provider_token_is_resigned_once_and_the_send_then_succeeds(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        client = h.client()
        assert client.jwt is not None
        real_clock = client.jwt.clock
        client.jwt.clock = lambda: real_clock() - 61 * 60  # a token signed an hour ago
        expired = await client.send(notification(h.token), new_apns_id())
        assert (expired.status, expired.reason) == (403, "ExpiredProviderToken")
        client.jwt.clock = real_clock
        assert client.refresh_jwt() is True
        assert client.refresh_jwt() is False  # every in-flight 403 asks; one signature serves all
        assert (await client.send(notification(h.token), new_apns_id())).status == 200
        stats = await h.stats()
    assert jwt_signed(client.app) == 2
    assert stats["connections_opened"] == 1


# --- gap 6: GOAWAY ---------------------------------------------------------------------------


async def test_goaway_shutdown_then_later_sends_succeed_on_new_connections(
    tmp_path: Path, callback_errors: CallbackErrors
) -> None:
    async with harness(tmp_path) as h:
        await h.control.put_faults({"goaway": {"after_streams": 3, "reason": "Shutdown"}})
        client = h.client()
        responses = [await client.send(notification(h.token), new_apns_id()) for _ in range(10)]
        stats = await h.stats()
    assert [r.status for r in responses] == [200] * 10
    assert stats["accepted"] == 10
    assert stats["goaways"] == 3
    assert stats["connections_opened"] == 4
    assert callback_errors.contexts == []


async def test_graceful_goaway_still_delivers_the_streams_it_took_in(
    tmp_path: Path, callback_errors: CallbackErrors
) -> None:
    async with harness(tmp_path) as h:
        client = h.client()
        assert (await client.send(notification(h.token), new_apns_id())).status == 200
        await h.control.put_faults({"goaway": {"after_streams": 2}, "latency_ms": 300})
        # Both in flight when GOAWAY (after the first answer) names the second as the last:
        # its answer comes after the GOAWAY and must be read, not lost and sent again.
        answers = await asyncio.gather(
            *(client.send(notification(h.token), new_apns_id()) for _ in range(2))
        )
        stats = await h.stats()
    assert [a.status for a in answers] == [200, 200]
    assert (stats["goaways"], stats["accepted"]) == (1, 3)
    assert callback_errors.contexts == []


async def test_goaway_resends_streams_above_last_stream_id_at_once_on_a_new_connection(
    tmp_path: Path, callback_errors: CallbackErrors
) -> None:
    # A fixed stream limit: the resent streams and the next send share one new connection, as
    # the connection count below says (Apple's 1-stream start would open one per stalled send).
    async with harness(tmp_path, dynamic_streams=False) as h:
        await h.control.put_faults({"stall": {"tokens": [h.stalled_token]}})
        client = h.client(request_timeout_s=30.0)
        assert (await client.send(notification(h.token), new_apns_id())).status == 200  # stream 1
        stalled = [
            asyncio.ensure_future(client.send(notification(h.stalled_token), new_apns_id()))
            for _ in range(3)  # streams 3, 5, 7
        ]
        await stats_when(h.control, lambda stats: stats["stalled"] == 3)
        (connection,) = open_connections(client)
        resent = metrics.APNS_UNPROCESSED_RESENDS.labels(app=client.app, reason="GoAway:Shutdown")
        resent_before = resent._value.get()
        # APNs said GOAWAY having read up to stream 3; 5 and 7 crossed it on the wire.
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = 3
        goaway.additional_data = b'{"reason":"Shutdown"}'
        started = time.monotonic()
        connection.data_received(goaway.serialize())
        # 5 and 7 were never processed: they reach APNs again at once, on a new connection
        # (where the stall fault holds them too), within the same send call.
        await stats_when(h.control, lambda stats: stats["stalled"] == 5)
        elapsed = time.monotonic() - started
        assert not any(send.done() for send in stalled)  # 3 may still be answered
        assert connection.retired_because == "GoAway:Shutdown"
        after = await client.send(notification(h.token), new_apns_id())
        stats = await h.stats()
        assert client.pool.connections[0] is not connection
        assert resent._value.get() - resent_before == 2
    assert elapsed < SLACK_S
    assert after.status == 200
    assert stats["connections_opened"] == 2
    # Closed with the client: unanswered sends at or below last_stream_id are at-least-once
    # retries for the worker, as any unanswered send.
    assert await asyncio.gather(*stalled) == [ApnsResponse(0, "ConnectionClosed")] * 3
    assert callback_errors.contexts == []


async def test_send_racing_goaway_before_connection_lost_is_a_status_0_response(
    tmp_path: Path, callback_errors: CallbackErrors
) -> None:
    async with harness(tmp_path) as h:
        await h.control.put_faults({"goaway": {"after_streams": 1}})
        client = h.client()
        connection = await client.pool.acquire()
        deadline = asyncio.get_running_loop().time() + 5.0
        authorization = client.jwt.get_header() if client.jwt else None
        first = await connection.send_raw(
            notification(h.token), new_apns_id(), deadline, authorization, lambda: None
        )
        assert first.status == 200
        # The answer came with GOAWAY right behind it: read, but connection_lost has not run.
        assert connection.retired_because == "GoAway:Shutdown"
        assert not connection.lost.done()
        late = await connection.send_raw(
            notification(h.token), new_apns_id(), deadline, authorization, lambda: None
        )
        # Unprocessed: ApnsClient.send sends such a one again at once on another connection.
        assert late == ApnsResponse(0, "GoAway:Shutdown", unprocessed=True)
        assert (await client.send(notification(h.token), new_apns_id())).status == 200
        # aioapns #55: connection_lost may run the discard more than once.
        client.pool.discard_connection(connection)
        client.pool.discard_connection(connection)
    assert callback_errors.contexts == []


# --- gap 7: idle close -----------------------------------------------------------------------


async def test_idle_connection_is_kept_for_an_hour_then_closed_and_replaced(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        client = h.client()
        assert (await client.send(notification(h.token), new_apns_id())).status == 200
        (connection,) = client.pool.connections
        loop = asyncio.get_running_loop()
        assert connection.inactivity_timer is not None
        assert connection.inactivity_timer.when() - loop.time() > 3500  # aioapns: 10 s
        assert connection.transport is not None
        assert not connection.transport.is_closing()

        connection.INACTIVITY_TIME = 1  # the hour, shortened to watch it act
        connection.inactivity_timer.cancel()
        connection.inactivity_timer = None
        connection.refresh_inactivity_timer()
        await stats_when(h.control, lambda stats: stats["connections_closed"] == 1)
        assert client.connections == 0
        assert (await client.send(notification(h.token), new_apns_id())).status == 200
        stats = await h.stats()
    assert stats["connections_opened"] == 2


# --- flow control, drops, stream ids ---------------------------------------------------------


@pytest.mark.slow
async def test_thousands_of_error_bodies_do_not_exhaust_the_flow_control_window(
    tmp_path: Path,
) -> None:
    async with harness(tmp_path) as h:
        await h.control.put_faults(
            {"error": {"probability": 1.0, "status": 500, "reason": "InternalServerError"}}
        )
        # The deadline counts from send(); a loaded machine takes seconds for the whole run.
        count = 3_200  # 3,200 bodies of 32 bytes: past the 65,535-byte initial window
        # One connection throughout: its streak of 500s is let through on purpose here.
        client = h.client(
            max_connections=1,
            max_in_flight=200,
            request_timeout_s=20.0,
            internal_error_streak=count + 1,
        )
        responses = await asyncio.gather(
            *(client.send(notification(h.token), new_apns_id()) for _ in range(count))
        )
        await h.control.clear_faults()
        after = await client.send(notification(h.token), new_apns_id())
        stats = await h.stats()
    assert {(r.status, r.reason) for r in responses} == {(500, "InternalServerError")}
    assert len(responses) == count
    assert after.status == 200
    assert stats["connections_opened"] == 1


async def test_connection_dropped_mid_flight_answers_connection_closed_then_recovers(
    tmp_path: Path, callback_errors: CallbackErrors
) -> None:
    async with harness(tmp_path) as h:
        client = h.client()
        # A success first: a new connection carries one stream until one request succeeds.
        assert (await client.send(notification(h.token), new_apns_id())).status == 200
        await h.control.put_faults({"latency_ms": 2000})
        in_flight = [
            asyncio.ensure_future(client.send(notification(h.token), new_apns_id()))
            for _ in range(3)
        ]
        await stats_when(h.control, lambda stats: stats["streams"] == 4)
        await h.control.put_faults({"latency_ms": 2000, "drop": {"after_streams": 4}})
        started = time.monotonic()
        dropped = await client.send(notification(h.token), new_apns_id())
        results = await asyncio.gather(*in_flight)
        elapsed = time.monotonic() - started
        await h.control.clear_faults()
        after = await client.send(notification(h.token), new_apns_id())
    assert [dropped, *results] == [ApnsResponse(0, "ConnectionClosed")] * 4
    assert elapsed < SLACK_S
    assert after.status == 200
    assert callback_errors.contexts == []


async def test_exhausted_stream_ids_move_to_a_new_connection(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        client = h.client()
        assert (await client.send(notification(h.token), new_apns_id())).status == 200
        (connection,) = open_connections(client)
        # A connection kept for days at thousands of sends a second runs out of stream ids.
        connection.slots.next_stream_id = H2Connection.HIGHEST_ALLOWED_STREAM_ID
        last = await client.send(notification(h.token), new_apns_id())
        # The next one finds no stream id left: it never reached APNs, so it goes at once on a
        # new connection within the same send.
        moved = await client.send(notification(h.token), new_apns_id())
        stats = await h.stats()
    assert last.status == 200
    assert moved.status == 200
    assert connection.retired_because == "StreamIdsExhausted"
    assert stats["connections_opened"] == 2


# --- gap 4b: a stream limit that moves ---------------------------------------------------------


@pytest.mark.parametrize("bad_every", [0, 10], ids=["all-good", "one-in-ten-rejected"])
async def test_a_connection_starting_at_one_stream_reaches_its_full_limit(
    tmp_path: Path, bad_every: int
) -> None:
    async with harness(tmp_path, max_streams=50) as h:
        await h.control.put_faults({"latency_ms": 200})
        client = h.client(max_connections=1)
        tokens = [
            "ab" * 32 if bad_every and n % bad_every == bad_every - 1 else h.token
            for n in range(150)
        ]
        started = time.monotonic()
        responses = await asyncio.gather(
            *(client.send(notification(token), new_apns_id()) for token in tokens)
        )
        elapsed = time.monotonic() - started
        (connection,) = open_connections(client)
        stats = await h.stats()
    answers = {(t, r.status, r.reason) for t, r in zip(tokens, responses, strict=True)}
    assert answers <= {(h.token, 200, None), ("ab" * 32, 400, "BadDeviceToken")}
    assert stats["connections_opened"] == 1
    assert connection.slots.limit in (1, 50)
    # One stream for the first 200 ms, then up to 50 at once: a few rounds of 200 ms. Stuck at
    # aioapns' two streams (its pool when the limit rises with every stream in use) it is 75.
    assert elapsed < 0.2 * 75 / 3


async def test_streams_are_spread_over_the_connections(tmp_path: Path) -> None:
    async with harness(tmp_path, max_streams=1000) as h:
        client = h.client(max_connections=4)
        # Four connections, each past its first success (one stream until then).
        await asyncio.gather(*(client.send(notification(h.token), new_apns_id()) for _ in range(8)))
        assert client.connections == 4
        await h.control.put_faults({"latency_ms": 1000})
        sends = [
            asyncio.ensure_future(client.send(notification(h.token), new_apns_id()))
            for _ in range(200)
        ]
        await eventually(
            lambda: sum(c.slots.in_use for c in open_connections(client)) >= 200,
            timeout_s=5,
            interval_s=0.01,
            what="all 200 sends gone out",
        )
        in_use = sorted(c.slots.in_use for c in open_connections(client))
        await asyncio.gather(*sends)
    # Least loaded first: 50 each, not 200 on the first connection that has room.
    assert in_use == [50, 50, 50, 50]


# --- aioapns 4.0 alone, against the same simulator: the failures the adapter exists for -----


def aioapns_request(token: str) -> NotificationRequest:
    return NotificationRequest(token, {"aps": {"alert": "Agent available"}})


async def test_aioapns_alone_hangs_on_an_error_without_body(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        await h.control.put_faults({"scripted": {h.token: [{"status": 500, "body": False}]}})
        client = aioapns_client(h.sim)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.send_notification(aioapns_request(h.token)), 0.5)
        client.pool.close()


async def test_aioapns_alone_breaks_connection_lost_after_a_wait_for_timeout(
    tmp_path: Path, callback_errors: CallbackErrors
) -> None:
    async with harness(tmp_path) as h:
        await h.control.put_faults({"stall": {"tokens": [h.stalled_token]}})
        client = aioapns_client(h.sim)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.send_notification(aioapns_request(h.stalled_token)), 0.2)
        client.pool.close()
        await asyncio.wait_for(callback_errors.seen.wait(), 5.0)
    assert isinstance(callback_errors.contexts[0].get("exception"), asyncio.InvalidStateError)


async def test_aioapns_alone_polls_and_logs_when_streams_run_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aioapns")
    async with harness(tmp_path, max_streams=5) as h:
        await h.control.put_faults({"latency_ms": 20})
        client = aioapns_client(h.sim, max_connections=1)
        await client.send_notification(aioapns_request(h.token))  # the stream limit is now known
        await asyncio.gather(
            *(client.send_notification(aioapns_request(h.token)) for _ in range(30))
        )
        client.pool.close()
    busy = [r for r in caplog.records if "completely busy" in r.getMessage()]
    assert len(busy) >= 25  # one line per waiting caller; RelayConnectionPool logs none


async def test_aioapns_alone_discard_twice_raises_and_closes_idle_after_10_s(
    tmp_path: Path,
) -> None:
    assert APNsProductionClientProtocol.INACTIVITY_TIME == 10
    async with harness(tmp_path) as h:
        client = aioapns_client(h.sim)
        await client.send_notification(aioapns_request(h.token))
        (connection,) = client.pool.connections
        client.pool.discard_connection(connection)
        with pytest.raises(ValueError, match="remove"):  # aioapns #55
            client.pool.discard_connection(connection)
        connection.close()


async def test_a_connection_answering_a_streak_of_500s_is_replaced(
    tmp_path: Path, callback_errors: CallbackErrors
) -> None:
    async with harness(tmp_path) as h:
        streak = [{"status": 500, "reason": "InternalServerError"}] * 3
        await h.control.put_faults({"scripted": {h.stalled_token: streak}})
        client = h.client(internal_error_streak=3)
        replaced = metrics.APNS_CONNECTIONS_REPLACED.labels(reason="InternalServerErrorStreak")
        replaced_before = replaced._value.get()
        answers = [
            (await client.send(notification(h.stalled_token), new_apns_id())) for _ in range(3)
        ]
        live: set[RelayClientProtocol | None] = {*open_connections(client), *client.pool.retiring}
        (first,) = live or {None}
        assert first is not None
        assert first.retired_because == "InternalServerErrorStreak"
        after = await client.send(notification(h.stalled_token), new_apns_id())
        stats = await h.stats()
        assert client.pool.connections[0] is not first
    assert [a.status for a in answers] == [500, 500, 500]
    assert after.status == 200
    assert stats["connections_opened"] == 2
    assert replaced._value.get() - replaced_before == 1
    assert callback_errors.contexts == []


async def test_500s_broken_by_other_answers_keep_the_connection(tmp_path: Path) -> None:
    async with harness(tmp_path) as h:
        script = [{"status": 500, "reason": "InternalServerError"}, {"status": 200}] * 3
        await h.control.put_faults({"scripted": {h.stalled_token: script}})
        client = h.client(internal_error_streak=2)
        answers = [
            (await client.send(notification(h.stalled_token), new_apns_id())) for _ in range(6)
        ]
        stats = await h.stats()
    assert [a.status for a in answers] == [500, 200] * 3
    assert stats["connections_opened"] == 1


async def test_replaced_credentials_reach_new_connections_while_sends_in_flight_finish(
    tmp_path: Path,
) -> None:
    """A rotated key: the open connection stays bound to the old key (APNs refuses another key
    there: UnrelatedKeyIdInToken), its stream in flight is answered, then it closes."""
    team = "TEAM123456"
    key_b = create_signing_key(tmp_path, "KEYBBBBBBB", team)
    trusted_b = KeySource(key_b.key_id, team, key_b.key_file)
    async with harness(tmp_path / "sim", team_id=team, extra_keys=(trusted_b,)) as h:
        client = h.client()
        assert (await client.send(notification(h.token), new_apns_id())).status == 200
        await h.control.put_faults({"latency_ms": 500})
        in_flight = asyncio.ensure_future(client.send(notification(h.token), new_apns_id()))
        await eventually(lambda: open_connections(client)[0].streams, what="a stream in flight")
        [old] = open_connections(client)
        client.replace_credentials(TokenCredentials(key_b.key_file.read_text(), key_b.key_id, team))
        assert client.connections == 0
        assert old.retired_because == "CredentialsReplaced"
        after = await client.send(notification(h.token), new_apns_id())
        assert (after.status, (await in_flight).status) == (200, 200)
        await asyncio.wait_for(old.lost, SLACK_S)  # closed once its stream ended
        logged = (await h.control.notifications())["notifications"]
        stats = await h.stats()
    assert [record["key_id"] for record in logged] == [h.sim.key_id, h.sim.key_id, key_b.key_id]
    assert stats["connections_opened"] == 2
    assert jwt_signed(client.app) == 2


# --- the HPACK encoder's reuse of encoded fields -------------------------------------------------

HEADER_NAMES = [":method", ":path", ":authority", "apns-id", "apns-topic", "authorization", "x-a"]
HEADER_VALUES = ["", "/", "POST", "GET", "a", "b", "/3/device/ab", "x" * 200]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.lists(
                st.tuples(
                    st.sampled_from(HEADER_NAMES), st.sampled_from(HEADER_VALUES), st.booleans()
                ),
                max_size=8,
            ),
            st.sampled_from([0, 64, 256, 4096]),  # a table size change between requests
        ),
        max_size=12,
    )
)
def test_the_encoder_writes_exactly_hpacks_bytes(requests: list[Any]) -> None:
    ours, hpacks = PlainHpackEncoder(), Encoder()
    for request in requests:
        if isinstance(request, int):
            ours.header_table_size = hpacks.header_table_size = request
            continue
        headers = [
            NeverIndexedHeaderTuple(n.encode(), v.encode()) if never else (n.encode(), v.encode())
            for n, v, never in request
        ]
        assert ours.encode(headers) == hpacks.encode(headers, huffman=False)


def test_a_table_resized_twice_to_one_size_between_requests_forgets_what_it_evicted() -> None:
    # Found by the test above: hpack's resized flag reads False after a second resize to the
    # same size, and the encoder kept the index of an entry the first resize had evicted.
    ours, hpacks = PlainHpackEncoder(), Encoder()
    apns_id = (b"apns-id", b"x" * 200)
    for encoder in (ours, hpacks):
        encoder.encode([apns_id, (b":path", b""), apns_id])  # the second one found indexed
        encoder.header_table_size = 256  # evicts apns-id
        encoder.header_table_size = 256
    assert ours.encode([apns_id]) == hpacks.encode([apns_id], huffman=False)
