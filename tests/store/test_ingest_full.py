"""Ingest against a real Valkey near its maxmemory: above the watermark a push goes to the spool
without a Redis write; a refusal for memory spools at once (no hold); the replay waits while
Redis is above the watermark and moves the spool in, in order, once it is below; history gives
way first."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from eventually import eventually
from test_capacity import settled_used_memory
from test_queue import T0, note

from relay.core.model import Delivered
from relay.ingest.hold import Ingest
from relay.store.memory import MemoryWatch
from relay.store.queue import RelayQueue
from relay.store.records import QueueLimits
from relay.store.retention import trim_while_full
from relay.store.spool import Spool

HOLD_S = 1.5


@pytest.fixture
async def queue(redis: aioredis.Redis) -> AsyncIterator[RelayQueue]:
    relay_queue = RelayQueue(redis, QueueLimits())
    yield relay_queue
    await relay_queue.aclose()


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    opened = Spool.open(tmp_path / "spool", 1 << 24, 10_000)
    yield opened
    await opened.close()


@pytest.fixture
async def limit(redis: aioredis.Redis) -> AsyncIterator[aioredis.Redis]:
    """The session server's maxmemory, lifted again after the test."""
    yield redis
    await redis.config_set("maxmemory", 0)


async def set_fraction(redis: aioredis.Redis, fraction: float) -> None:
    """maxmemory such that Redis now uses about `fraction` of it (once what an earlier test's
    flush left to the lazy-free thread is freed)."""
    used = await settled_used_memory(redis)
    await redis.config_set("maxmemory", int(used / fraction))


async def test_above_the_watermark_a_push_is_spooled_without_a_redis_write(
    queue: RelayQueue, spool: Spool, limit: aioredis.Redis
) -> None:
    memory = MemoryWatch(queue.client, 0.9)
    ingest = Ingest(queue, hold_s=HOLD_S, spool=spool, memory=memory)
    await set_fraction(limit, 0.95)
    await memory.poll()
    assert memory.above_watermark
    accepted = await ingest.accept(note())
    assert accepted.spooled
    assert (await queue.totals()).enqueued == 0

    # The replay leaves Redis alone while it is above the watermark, and moves the spool in
    # once it is below.
    stop = asyncio.Event()
    replay = asyncio.create_task(ingest.replay(stop))
    try:
        await asyncio.sleep(0.3)  # the behaviour under test: a replay that waits, not one that ran
        assert (await queue.totals()).enqueued == 0
        await limit.config_set("maxmemory", 0)
        await memory.poll()

        async def replayed() -> bool:
            return not spool.ledger.pending

        await eventually(replayed, timeout_s=10, what="the spool replayed")
        status = await queue.get(accepted.id)
        assert status is not None
    finally:
        stop.set()
        await replay


async def test_a_refusal_for_memory_spools_at_once_and_marks_the_watermark(
    queue: RelayQueue, spool: Spool, limit: aioredis.Redis
) -> None:
    memory = MemoryWatch(queue.client, 0.9)
    ingest = Ingest(queue, hold_s=HOLD_S, spool=spool, memory=memory)
    await ingest.accept(note(body="warm-up"))  # the enqueue script loaded before the limit
    await set_fraction(limit, 1.25)  # over maxmemory; the watch has not read it yet
    assert not memory.above_watermark
    started = time.monotonic()
    accepted = await ingest.accept(note(body="refused for memory"))
    assert accepted.spooled
    assert time.monotonic() - started < HOLD_S / 2  # not held: a full Redis is not a failover
    assert memory.above_watermark


async def test_without_a_spool_a_full_redis_is_held_then_refused(
    queue: RelayQueue, limit: aioredis.Redis
) -> None:
    ingest = Ingest(queue, hold_s=0.3)
    await ingest.accept(note(body="warm-up"))
    # Well past maxmemory: at 1 % over, what Redis frees meanwhile (client buffers) could let the
    # write in on a loaded machine.
    await set_fraction(limit, 1.25)
    with pytest.raises(Exception, match="maxmemory"):
        await ingest.accept(note(body="refused"))


async def test_history_is_trimmed_while_above_the_watermark_and_not_below(
    queue: RelayQueue, limit: aioredis.Redis
) -> None:
    ids = [(await queue.enqueue(note(f"{i:064x}"), now_ms=T0)).id for i in range(40)]
    claimed = (await queue.claim(40, now_ms=T0)).claimed
    await queue.settle([(claim, Delivered(None)) for claim in claimed], now_ms=T0 + 1)
    memory = MemoryWatch(queue.client, 0.9)
    await memory.poll()
    assert await trim_while_full(queue, memory) == 0  # below: history stays
    assert all([await queue.get(i) is not None for i in ids])

    await set_fraction(limit, 0.95)
    await memory.poll()
    assert await trim_while_full(queue, memory) == len(ids)
    assert all([await queue.get(i) is None for i in ids])
