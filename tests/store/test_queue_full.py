"""The store at Redis's maxmemory (noeviction): what adds work is refused having written nothing;
everything that drains (claim, settle, release, purge, trimming history) still runs, so delivery
frees the memory that lets work in again instead of deadlocking."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from redis.exceptions import OutOfMemoryError
from test_capacity import settled_used_memory
from test_queue import T0, note, snapshot

from relay.core.model import Delivered, Retry
from relay.store.queue import RelayQueue
from relay.store.records import QueueLimits

DEVICES = 50
FILL = 1_000  # ~1 MB of queued notifications
LATER = T0 + 200_000  # every notification enqueued is due by then (and still live)


@pytest.fixture
async def full_queue(redis: aioredis.Redis) -> AsyncIterator[RelayQueue]:
    """A queue of FILL notifications whose Redis is then past its maxmemory (noeviction). The
    limit is lifted again afterwards (the server is the session's)."""
    queue = RelayQueue(redis, QueueLimits(lease_ms=10_000))
    # Every script loaded first, as in a relay that has run a while: their cache is not data.
    await queue.enqueue(note(), now_ms=T0)
    claims = (await queue.claim(1, now_ms=T0)).claimed
    await queue.release(claims, now_ms=T0)
    await queue.trim_history(oldest=True)
    baseline = await settled_used_memory(redis)
    for i in range(FILL):
        await queue.enqueue(note(f"{i % DEVICES:064x}", body="x" * 200), now_ms=T0 + i)
    filled = int((await redis.info("memory"))["used_memory"])
    # Past it by half of what the queue holds: decisively full, and what delivery frees
    # (the payloads, most of each record) brings it well under.
    await redis.config_set("maxmemory", (baseline + filled) // 2)
    try:
        yield queue
    finally:
        await redis.config_set("maxmemory", 0)
        await queue.aclose()


# A relay version new to the server finds its library missing, and Redis refuses FUNCTION LOAD at
# maxmemory: its calls then run as EVAL scripts, under the same rules.
NEW_VERSION = pytest.mark.parametrize("new_version", [False, True], ids=["loaded", "new-version"])


async def arrive_as_new_version(redis: aioredis.Redis, new_version: bool) -> float:
    """The library gone when `new_version`; the refusals counted so far."""
    if new_version:
        await redis.function_flush()
    return refusals()


def refusals() -> float:
    return REGISTRY.get_sample_value("apns_relay_redis_library_refused_total") or 0.0


@NEW_VERSION
async def test_an_enqueue_at_maxmemory_is_refused_having_written_nothing(
    full_queue: RelayQueue, redis: aioredis.Redis, new_version: bool
) -> None:
    await arrive_as_new_version(redis, new_version)
    before = await snapshot(redis)
    with pytest.raises(OutOfMemoryError):
        await full_queue.enqueue(note("f" * 64, service_id="svc"), now_ms=T0)
    assert await snapshot(redis) == before


@NEW_VERSION
async def test_delivery_drains_at_maxmemory_and_frees_room_for_new_work(
    full_queue: RelayQueue, redis: aioredis.Redis, new_version: bool
) -> None:
    refused = await arrive_as_new_version(redis, new_version)
    pending = (await full_queue.totals()).pending
    # Every draining script runs although Redis is full: a retry, a release, settling.
    batch = await full_queue.claim(DEVICES, now_ms=LATER + 1)
    assert len(batch.claimed) == DEVICES
    await full_queue.settle(
        [(batch.claimed[0], Retry("ServiceUnavailable", 0, status=503))], now_ms=LATER + 2
    )
    await full_queue.release(batch.claimed[1:2], now_ms=LATER + 2)
    await full_queue.settle(
        [(claim, Delivered(None)) for claim in batch.claimed[2:]], now_ms=LATER + 2
    )
    delivered = DEVICES - 2
    while True:
        batch = await full_queue.claim(DEVICES, now_ms=LATER + 3)
        if not batch.claimed:
            break
        await full_queue.settle(
            [(claim, Delivered(None)) for claim in batch.claimed], now_ms=LATER + 3
        )
        delivered += len(batch.claimed)
    assert delivered == pending
    assert (refusals() > refused) == new_version
    totals = await full_queue.totals()
    assert (totals.pending, totals.leased, totals.delivered) == (0, 0, pending)
    # What delivery freed lets new work in; history gives way when asked.
    await full_queue.enqueue(note("e" * 64), now_ms=LATER + 4)
    assert await full_queue.trim_history(oldest=True) == pending
    assert (await full_queue.totals()).pending == 1
