"""Route circuits: every transition of the pure decision; which answers are route failures."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from relay.core import circuit
from relay.core.circuit import Circuit, CircuitPolicy, RouteState
from relay.core.model import ApnsResponse, Delivered, Expired, Failed, Retry
from relay.core.policy import RetryPolicy, classify, is_route_failure

T0 = 1_700_000_000_000
POLICY = CircuitPolicy(
    failure_threshold=3, window_ms=10_000, probe_min_ms=1_000, probe_max_ms=30_000
)


def fail(c: Circuit, device: str, at_ms: int, seed: int = 1) -> Circuit:
    return circuit.record_failure(
        c, device, "503 ServiceUnavailable", now_ms=at_ms, policy=POLICY, rng=random.Random(seed)
    )


def opened(at_ms: int = T0) -> Circuit:
    c = Circuit()
    for i, device in enumerate("abc"):
        c = fail(c, device, at_ms - 2 + i)
    assert c.state is RouteState.OPEN
    return c


@pytest.mark.parametrize(
    ("status", "reason", "route_failure"),
    [
        (200, None, False),
        (0, "Timeout", True),
        (0, "GoAway", True),
        (500, "InternalServerError", True),
        (503, "ServiceUnavailable", True),
        (429, "TooManyRequests", True),
        (429, "TooManyProviderTokenUpdates", False),
        (400, "BadDeviceToken", False),
        (400, "IdleTimeout", False),
        (403, "ExpiredProviderToken", False),
        (410, "Unregistered", False),
        (413, "PayloadTooLarge", False),
    ],
)
def test_which_answers_are_route_failures(status: int, reason: str, route_failure: bool) -> None:
    assert is_route_failure(ApnsResponse(status, reason)) is route_failure


@pytest.mark.parametrize(
    ("events", "state", "failing_devices"),
    [
        # (device, offset ms) failures; "+" is a success
        ([("a", 0), ("b", 1)], RouteState.CLOSED, 2),
        ([("a", 0), ("a", 1), ("a", 2), ("a", 3)], RouteState.CLOSED, 1),  # poison: one device
        ([("a", 0), ("b", 1), ("c", 2)], RouteState.OPEN, 0),
        ([("a", 0), ("b", 1), ("+", 2), ("c", 3)], RouteState.CLOSED, 1),  # success resets
        ([("a", 0), ("b", 1), ("c", 10_000)], RouteState.CLOSED, 2),  # a fell out of the window
        ([("a", 0), ("b", 1), ("a", 9_000), ("c", 10_000)], RouteState.OPEN, 0),  # a moved on
    ],
)
def test_closed_opens_on_distinct_devices_within_the_window(
    events: list[tuple[str, int]], state: RouteState, failing_devices: int
) -> None:
    c = Circuit()
    for device, offset in events:
        if device == "+":
            c = circuit.record_success(c, now_ms=T0 + offset)
        else:
            c = fail(c, device, T0 + offset)
    assert c.state is state
    assert len(c.failures) == failing_devices


def test_opening_schedules_a_jittered_first_probe_and_keeps_the_answer() -> None:
    probes = set()
    for seed in range(50):
        c = Circuit()
        for i, device in enumerate("abc"):
            c = fail(c, device, T0 - 2 + i, seed=seed)
        probes.add(c.next_probe_ms - T0)
        assert c.since_ms == T0
        assert c.last_answer == "503 ServiceUnavailable"
        assert c.probe_interval_ms == POLICY.probe_min_ms
    assert min(probes) >= POLICY.probe_min_ms // 2
    assert max(probes) <= POLICY.probe_min_ms
    assert len(probes) > 10  # jittered, not one fixed instant


def test_one_probe_at_a_time_and_only_when_due() -> None:
    c = opened()
    assert circuit.start_probe(c, now_ms=c.next_probe_ms - 1, policy=POLICY) is None
    probing = circuit.start_probe(c, now_ms=c.next_probe_ms, policy=POLICY)
    assert probing is not None
    assert probing.state is RouteState.HALF_OPEN
    # A second worker asking while the probe is out gets nothing...
    assert circuit.start_probe(probing, now_ms=c.next_probe_ms + 1, policy=POLICY) is None
    # ...unless the prober's lease ran out (it died): then another may probe.
    late = probing.next_probe_ms
    assert late == c.next_probe_ms + POLICY.probe_lease_ms
    again = circuit.start_probe(probing, now_ms=late, policy=POLICY)
    assert again is not None
    assert again.state is RouteState.HALF_OPEN


def test_failed_probes_double_the_interval_up_to_the_cap() -> None:
    c = opened()
    intervals = []
    now = c.next_probe_ms
    for _ in range(8):
        probing = circuit.start_probe(c, now_ms=now, policy=POLICY)
        assert probing is not None
        c = fail(probing, "z", now)
        assert c.state is RouteState.OPEN
        assert c.since_ms == T0  # still the time it opened
        assert POLICY.probe_min_ms // 2 <= c.next_probe_ms - now <= c.probe_interval_ms
        intervals.append(c.probe_interval_ms)
        now = c.next_probe_ms
    assert intervals == [2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000, 30_000]


def test_first_success_closes_from_any_state() -> None:
    c = opened()
    probing = circuit.start_probe(c, now_ms=c.next_probe_ms, policy=POLICY)
    assert probing is not None
    for state in (c, probing):
        closed = circuit.record_success(state, now_ms=T0 + 5_000)
        assert closed.state is RouteState.CLOSED
        assert closed.since_ms == T0 + 5_000
        assert closed.last_success_ms == T0 + 5_000
        assert closed.failures == ()
        assert closed.probe_interval_ms == 0


def test_a_late_failure_on_an_open_route_changes_only_the_answer() -> None:
    c = opened()
    later = circuit.record_failure(
        c, "d", "500 InternalServerError", now_ms=T0 + 10, policy=POLICY, rng=random.Random(2)
    )
    assert later == replace(c, last_answer="500 InternalServerError")


def test_an_abandoned_probe_reopens_without_growing_the_interval() -> None:
    c = opened()
    probing = circuit.start_probe(c, now_ms=c.next_probe_ms, policy=POLICY)
    assert probing is not None
    back = circuit.abandon_probe(probing, now_ms=c.next_probe_ms, rng=random.Random(3))
    assert back.state is RouteState.OPEN
    assert back.probe_interval_ms == c.probe_interval_ms
    assert back.next_probe_ms > c.next_probe_ms
    assert circuit.abandon_probe(c, now_ms=T0, rng=random.Random(3)) == c  # not probing: as is


def test_quiet_successes_are_not_written() -> None:
    quiet = Circuit(last_success_ms=T0)
    assert not circuit.needs_writing(quiet, circuit.record_success(quiet, now_ms=T0 + 1))
    failing = fail(Circuit(), "a", T0)
    assert circuit.needs_writing(failing, circuit.record_success(failing, now_ms=T0 + 1))
    assert circuit.needs_writing(Circuit(), failing)
    assert circuit.needs_writing(opened(), circuit.record_success(opened(), now_ms=T0 + 1))


# The budget: route failures end in expiry, not failure, unless the route delivers others.

RETRY = RetryPolicy(base_ms=500, cap_ms=60_000, max_attempts=8)
FAR_S = T0 // 1000 + 3_600


def decide(
    status: int, reason: str, *, attempt: int, route_delivered: bool, expires_at_s: int = FAR_S
) -> object:
    return classify(
        ApnsResponse(status, reason),
        attempt=attempt,
        expires_at_s=expires_at_s,
        now_ms=T0,
        policy=RETRY,
        rng=random.Random(5),
        route_delivered=route_delivered,
    )


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (503, "ServiceUnavailable"),
        (500, "InternalServerError"),
        (429, "TooManyRequests"),
        (0, "Timeout"),
    ],
)
def test_a_route_failure_past_max_attempts_retries_while_the_route_delivers_nothing(
    status: int, reason: str
) -> None:
    for attempt in (8, 9, 50, 10_000):
        outcome = decide(status, reason, attempt=attempt, route_delivered=False)
        assert isinstance(outcome, Retry)
        assert outcome.delay_ms <= RETRY.cap_ms
    # Poison: the route delivered others since its previous attempt.
    assert decide(status, reason, attempt=8, route_delivered=True) == Failed(reason, status)
    # Its lifetime still bounds it.
    assert (
        decide(status, reason, attempt=50, route_delivered=False, expires_at_s=T0 // 1000)
        == Expired()
    )


@pytest.mark.parametrize("reason", ["ConnectionClosed", "ConnectError", "ConnectTimeout"])
def test_a_lost_connection_never_makes_a_notification_poison(reason: str) -> None:
    # Every stream on a dropped connection fails alike, whatever the route delivered meanwhile
    # (a regression: connections dropped under load failed notifications with their TTL left).
    for route_delivered in (True, False):
        outcome = decide(0, reason, attempt=50, route_delivered=route_delivered)
        assert isinstance(outcome, Retry), outcome
    assert decide(0, reason, attempt=50, route_delivered=True, expires_at_s=T0 // 1000) == Expired()
    # A stream left unanswered on a connection that still works is the notification's own.
    assert decide(0, "Timeout", attempt=8, route_delivered=True) == Failed("Timeout", 0)


def test_other_retries_still_stop_at_max_attempts() -> None:
    assert decide(429, "TooManyProviderTokenUpdates", attempt=8, route_delivered=False) == Failed(
        "TooManyProviderTokenUpdates", 429
    )
    assert decide(400, "IdleTimeout", attempt=8, route_delivered=False) == Failed(
        "IdleTimeout", 400
    )
    assert decide(200, "", attempt=8, route_delivered=False) == Delivered(apns_id=None)
