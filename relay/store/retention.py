"""History gives way to queued work: while Redis is above its memory watermark the oldest history
bucket of every shard goes, round after round until it is below (or no history is left); and
the buckets past retention that expired or were evicted are forgotten from time to time."""

from __future__ import annotations

import asyncio
import contextlib
import time

import structlog

from relay.store.errors import REDIS_ERRORS
from relay.store.memory import MemoryWatch
from relay.store.queue import RelayQueue
from relay.telemetry import metrics

log = structlog.get_logger("relay.retention")

LOOK_EVERY_S = 1.0
FORGET_EVERY_S = 300.0
# Buckets given up per look at most (each a round trip, then a fresh read of the memory): a
# bounded burst, the rest at the next look.
TRIMS_PER_LOOK = 10


async def trim_while_full(queue: RelayQueue, memory: MemoryWatch) -> int:
    """Give up the oldest history, a bucket per shard at a time, while Redis stays above the
    watermark; how many final records went."""
    trimmed = 0
    for _ in range(TRIMS_PER_LOOK):
        if not memory.above_watermark:
            break
        records = await queue.trim_history(oldest=True)
        if not records:
            break  # no history left: what fills Redis is queued work
        trimmed += records
        metrics.HISTORY_TRIMMED.inc(records)
        await memory.poll()
    if trimmed:
        log.warning(
            "history_trimmed",
            records=trimmed,
            reason="redis memory above the watermark",
            watermark=memory.watermark,
            still_above=memory.above_watermark,
        )
    return trimmed


async def keep_history(queue: RelayQueue, memory: MemoryWatch, stop: asyncio.Event) -> None:
    """trim_while_full every LOOK_EVERY_S, and forget expired buckets every FORGET_EVERY_S,
    until `stop` is set. A Redis that does not answer is skipped (its outage is reported by
    whoever meets it on the way to work)."""
    forgotten_at = time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(*REDIS_ERRORS):
            await trim_while_full(queue, memory)
            if time.monotonic() - forgotten_at >= FORGET_EVERY_S:
                await queue.trim_history(oldest=False)
                forgotten_at = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), LOOK_EVERY_S)
