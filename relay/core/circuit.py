"""A route's circuit: what APNs answers on one (app, environment, endpoint) say about sending there.

Pure: events in, a new Circuit out; the worker keeps the state in Redis (relay.routes) so that
every worker shares it. A route is *closed* while it delivers, *open* once several distinct devices
failed on it in a short window with no success in between (nothing of it is claimed then), and
*half-open* while one probe send, the only one across all workers, finds out whether it works
again. The first success anywhere closes it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from enum import StrEnum

from relay.core.model import ApnsResponse


class RouteState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True, slots=True)
class CircuitPolicy:
    failure_threshold: int = 5  # distinct devices failing with no success in between...
    window_ms: int = 10_000  # ...within this long
    probe_min_ms: int = 1_000  # the first probe interval after the circuit opens
    probe_max_ms: int = 30_000  # the interval doubles after each failed probe, up to this
    # How long a probe may take before another worker may probe: longer than any APNs request
    # deadline, so that only a prober that died leaves the route half-open this long.
    probe_lease_ms: int = 30_000

    def __post_init__(self) -> None:
        for name in ("failure_threshold", "window_ms", "probe_min_ms", "probe_lease_ms"):
            if getattr(self, name) < 1:
                raise ValueError(f"CircuitPolicy.{name}: must be at least 1")
        if self.probe_max_ms < self.probe_min_ms:
            raise ValueError("CircuitPolicy.probe_max_ms: must be at least probe_min_ms")


@dataclass(frozen=True, slots=True)
class Circuit:
    state: RouteState = RouteState.CLOSED
    # (device key, when) of each distinct device that failed since the last success (closed only).
    failures: tuple[tuple[str, int], ...] = ()
    since_ms: int = 0  # when the current state began (for open and half-open: when it opened)
    probe_interval_ms: int = 0
    # Open: when a probe may go. Half-open: when the probe's lease runs out (another may go).
    next_probe_ms: int = 0
    last_success_ms: int = 0
    last_answer: str = ""  # the last route failure's APNs answer, e.g. "503 ServiceUnavailable"

    @property
    def sending(self) -> bool:
        """Whether the route's notifications are claimed as usual."""
        return self.state is RouteState.CLOSED

    def probe_due(self, now_ms: int) -> bool:
        return not self.sending and now_ms >= self.next_probe_ms


def describe(response: ApnsResponse) -> str:
    return f"{response.status} {response.reason or ''}".strip()


def _jittered(interval_ms: int, rng: random.Random) -> int:
    """Between half and all of the interval, so that probes of many routes do not line up."""
    return interval_ms // 2 + rng.randint(0, interval_ms - interval_ms // 2)


def record_failure(
    circuit: Circuit,
    device: str,
    answer: str,
    *,
    now_ms: int,
    policy: CircuitPolicy,
    rng: random.Random,
) -> Circuit:
    """A send to `device` on this route failed with a route failure (is_route_failure)."""
    if circuit.state is RouteState.OPEN:
        return replace(circuit, last_answer=answer)  # a send that started before it opened
    if circuit.state is RouteState.HALF_OPEN:
        interval = min(policy.probe_max_ms, max(policy.probe_min_ms, circuit.probe_interval_ms * 2))
        return replace(
            circuit,
            state=RouteState.OPEN,
            probe_interval_ms=interval,
            next_probe_ms=now_ms + _jittered(interval, rng),
            last_answer=answer,
        )
    recent = tuple(
        (key, at)
        for key, at in circuit.failures
        if key != device and at > now_ms - policy.window_ms
    )
    failures = (*recent, (device, now_ms))
    if len(failures) < policy.failure_threshold:
        return replace(circuit, failures=failures, last_answer=answer)
    return replace(
        circuit,
        state=RouteState.OPEN,
        failures=(),
        since_ms=now_ms,
        probe_interval_ms=policy.probe_min_ms,
        next_probe_ms=now_ms + _jittered(policy.probe_min_ms, rng),
        last_answer=answer,
    )


def record_success(circuit: Circuit, *, now_ms: int) -> Circuit:
    """APNs took a notification on this route (or refused one for a reason of its own, which
    shows it processing requests too): whatever the state, the route works."""
    return Circuit(
        state=RouteState.CLOSED,
        since_ms=circuit.since_ms if circuit.sending else now_ms,
        last_success_ms=max(now_ms, circuit.last_success_ms),
        last_answer=circuit.last_answer,
    )


def start_probe(circuit: Circuit, *, now_ms: int, policy: CircuitPolicy) -> Circuit | None:
    """The route after this worker took the probe; None when no probe may go now."""
    if not circuit.probe_due(now_ms):
        return None
    return replace(
        circuit, state=RouteState.HALF_OPEN, next_probe_ms=now_ms + policy.probe_lease_ms
    )


def abandon_probe(circuit: Circuit, *, now_ms: int, rng: random.Random) -> Circuit:
    """The probe found nothing of the route to send: open again, the interval unchanged."""
    if circuit.state is not RouteState.HALF_OPEN:
        return circuit
    return replace(
        circuit,
        state=RouteState.OPEN,
        next_probe_ms=now_ms + _jittered(circuit.probe_interval_ms, rng),
    )


def needs_writing(before: Circuit, after: Circuit) -> bool:
    """Whether a change is worth a Redis write. A success on a closed route with no failure
    recorded moves only last_success_ms, which matters only once a failure is recorded (poison
    detection): leaving Redis alone then keeps the delivery hot path free of writes."""
    quiet_success = (
        before.sending
        and not before.failures
        and after == replace(before, last_success_ms=after.last_success_ms)
    )
    return before != after and not quiet_success
