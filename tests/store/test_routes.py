"""Route circuits in a real Valkey: a record round-trips, and of two writers that read the same
version only the first one's write lands (one probe, one logged transition across workers)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from relay.core import circuit
from relay.core.circuit import Circuit, CircuitPolicy, RouteState
from relay.core.model import Route
from relay.store.keys import route_key
from relay.store.queue import RelayQueue
from relay.store.records import QueueLimits
from relay.store.routes import RouteStore, StoredCircuit

T0 = 1_700_000_000_000
ROUTE = Route("chat", "production", "api.push.apple.com:443")
OTHER = Route("other", "sandbox", "127.0.0.1:8443")
POLICY = CircuitPolicy(failure_threshold=2)


@pytest.fixture
async def store(redis: aioredis.Redis) -> AsyncIterator[RouteStore]:
    queue = RelayQueue(redis, QueueLimits())
    yield RouteStore(queue)
    await queue.aclose()


async def test_an_unknown_route_reads_closed_at_version_0(store: RouteStore) -> None:
    assert await store.read([ROUTE, OTHER]) == {
        ROUTE: StoredCircuit(Circuit(), 0),
        OTHER: StoredCircuit(Circuit(), 0),
    }


async def test_a_circuit_round_trips_with_its_failures_and_answer(store: RouteStore) -> None:
    rng = random.Random(1)
    c = circuit.record_failure(
        Circuit(), "0a1b2c3d", "0 Timeout", now_ms=T0, policy=POLICY, rng=rng
    )
    written = await store.write(ROUTE, StoredCircuit(Circuit(), 0), c)
    assert written == StoredCircuit(c, 1)
    assert (await store.read([ROUTE]))[ROUTE] == written
    opened = circuit.record_failure(
        c, "ffff0000", "503 ServiceUnavailable", now_ms=T0 + 1, policy=POLICY, rng=rng
    )
    assert opened.state is RouteState.OPEN
    assert await store.write(ROUTE, written, opened) == StoredCircuit(opened, 2)
    assert (await store.read([ROUTE, OTHER])) == {
        ROUTE: StoredCircuit(opened, 2),
        OTHER: StoredCircuit(Circuit(), 0),
    }


async def test_of_two_workers_deciding_on_one_read_only_the_first_write_lands(
    store: RouteStore,
) -> None:
    rng = random.Random(2)
    opened = Circuit()
    for device in ("a", "b"):
        opened = circuit.record_failure(opened, device, "503", now_ms=T0, policy=POLICY, rng=rng)
    read = await store.write(ROUTE, StoredCircuit(Circuit(), 0), opened)
    assert read is not None
    due = opened.next_probe_ms
    first = circuit.start_probe(read.circuit, now_ms=due, policy=POLICY)
    second = circuit.start_probe(read.circuit, now_ms=due, policy=POLICY)
    assert first is not None
    assert second is not None
    assert await store.write(ROUTE, read, first) is not None
    assert await store.write(ROUTE, read, second) is None  # it reads again and finds a probe out
    fresh = (await store.read([ROUTE]))[ROUTE]
    assert circuit.start_probe(fresh.circuit, now_ms=due, policy=POLICY) is None


def test_a_route_key_is_one_slot_of_its_own() -> None:
    key = route_key(ROUTE)
    assert key == "relay:{route:chat}:route:chat:production:api.push.apple.com:443"
    assert key_slot(key.encode()) == key_slot(b"{route:chat}")
