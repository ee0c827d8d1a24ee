"""The worker's route circuits alone (no Redis): a store in memory shared as Redis would be."""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence

from relay.core.circuit import Circuit, CircuitPolicy, RouteState
from relay.core.model import ApnsResponse, Route
from relay.delivery.route_circuits import ROUTE_REFRESH_S, RouteCircuits
from relay.store.routes import StoredCircuit

ROUTE = Route("app", "production", "api.push.apple.com:443")
FAILURE = ApnsResponse(503, "ServiceUnavailable")
SUCCESS = ApnsResponse(200, None)


class MemoryStore:
    """Compare and set on a version, as relay.store.routes.RouteStore does in Redis."""

    def __init__(self) -> None:
        self.stored: dict[Route, StoredCircuit] = {}
        self.reads = 0
        self.writes = 0

    async def read(self, routes: Sequence[Route]) -> dict[Route, StoredCircuit]:
        self.reads += 1
        return {r: self.stored.get(r, StoredCircuit(Circuit(), 0)) for r in routes}

    async def write(
        self, route: Route, read: StoredCircuit, circuit: Circuit
    ) -> StoredCircuit | None:
        self.writes += 1
        current = self.stored.get(route, StoredCircuit(Circuit(), 0))
        if current.version != read.version:
            return None
        self.stored[route] = StoredCircuit(circuit, current.version + 1)
        return self.stored[route]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def circuits(store: MemoryStore, clock: Clock) -> RouteCircuits:
    return RouteCircuits(
        store,
        {"app": ROUTE},
        policy=CircuitPolicy(failure_threshold=3),
        rng=random.Random(1),
        clock=clock,
    )


async def test_failures_of_distinct_devices_open_the_route_for_every_worker() -> None:
    store, clock = MemoryStore(), Clock()
    mine, other = circuits(store, clock), circuits(store, clock)
    for device in ("a", "b"):
        assert await mine.answered("app", device, FAILURE)
    assert not await mine.answered("app", "c", FAILURE)
    assert store.stored[ROUTE].circuit.state is RouteState.OPEN
    assert mine.sending_by_app() == {"app": False}
    await other.refresh()
    assert not other.sending("app")


async def test_a_success_on_a_closed_route_is_not_written() -> None:
    store, clock = MemoryStore(), Clock()
    route = circuits(store, clock)
    assert await route.answered("app", "a", SUCCESS)
    assert store.writes == 0
    assert route.delivered_at_ms("app") == int(clock.now * 1000)


async def test_a_conflicting_write_reads_again_and_decides_anew() -> None:
    store, clock = MemoryStore(), Clock()
    mine, other = circuits(store, clock), circuits(store, clock)
    await other.answered("app", "x", FAILURE)  # the version moved since `mine` read it
    await mine.answered("app", "y", FAILURE)
    assert {key for key, _ in store.stored[ROUTE].circuit.failures} == {
        f"{zlib.crc32(d.encode()):08x}" for d in ("x", "y")
    }


async def test_a_probe_is_taken_once_and_a_success_closes_the_route() -> None:
    store, clock = MemoryStore(), Clock()
    mine, other = circuits(store, clock), circuits(store, clock)
    for device in ("a", "b", "c"):
        await mine.answered("app", device, FAILURE)
    clock.now += 60
    await other.refresh()
    assert mine.probes_due() == ["app"]
    assert await mine.start_probe("app")
    assert not await other.start_probe("app")  # read again: already half-open, leased
    assert await mine.answered("app", "a", ApnsResponse(400, "BadTopic"))
    assert store.stored[ROUTE].circuit.state is RouteState.CLOSED


async def test_refresh_reads_at_most_every_interval() -> None:
    store, clock = MemoryStore(), Clock()
    route = circuits(store, clock)
    await route.refresh()
    await route.refresh()
    assert store.reads == 1
    clock.now += ROUTE_REFRESH_S
    await route.refresh()
    assert store.reads == 2
