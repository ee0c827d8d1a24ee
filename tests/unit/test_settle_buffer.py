"""The settle buffer alone (no Redis): what it writes, in how many round trips, and when."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import cast

import pytest
from eventually import eventually

from relay.core.model import ClaimedNotification, Delivered, DeliveryOutcome, Notification
from relay.delivery.settle_buffer import SettleBuffer


def claim(number: int) -> ClaimedNotification:
    return ClaimedNotification(f"id-{number}", cast(Notification, None), 0, 0)


class RecordingQueue:
    """Each call is one round trip; `failures` calls raise first (Redis away)."""

    def __init__(self, failures: int = 0) -> None:
        self.calls: list[tuple[str, list[str], int, bool]] = []
        self.failures = failures

    def _maybe_fail(self) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("Redis went away")

    async def settle(self, results: Sequence[tuple[ClaimedNotification, DeliveryOutcome]]) -> None:
        self._maybe_fail()
        self.calls.append(("settle", [c.id for c, _ in results], 0, False))

    async def release(
        self, claims: Sequence[ClaimedNotification], *, delay_ms: int, possibly_sent: bool
    ) -> None:
        self._maybe_fail()
        self.calls.append(("release", [c.id for c in claims], delay_ms, possibly_sent))


async def until_written(buffer: SettleBuffer, queue: RecordingQueue, calls: int) -> None:
    await eventually(
        lambda: len(queue.calls) >= calls and not buffer, interval_s=0.001, what="written"
    )


async def test_a_settle_with_nothing_in_flight_is_written_at_once() -> None:
    queue = RecordingQueue()
    buffer = SettleBuffer(queue, window_s=60)
    runner = asyncio.create_task(buffer.run())
    buffer.settle(claim(1), Delivered(None))
    await until_written(buffer, queue, 1)
    assert queue.calls == [("settle", ["id-1"], 0, False)]
    buffer.close()
    await runner


async def test_settles_during_sends_share_one_round_trip_when_the_sends_drain() -> None:
    queue = RecordingQueue()
    buffer = SettleBuffer(queue, window_s=60)
    runner = asyncio.create_task(buffer.run())
    buffer.sends_in_flight(3)
    for number in range(3):
        buffer.settle(claim(number), Delivered(None))
        await asyncio.sleep(0.001)  # the behaviour under test: nothing written meanwhile
    assert queue.calls == []  # the window holds them while sends are in flight
    buffer.sends_in_flight(0)
    await until_written(buffer, queue, 1)
    assert queue.calls == [("settle", ["id-0", "id-1", "id-2"], 0, False)]
    buffer.close()
    await runner


async def test_the_window_bounds_the_wait() -> None:
    queue = RecordingQueue()
    buffer = SettleBuffer(queue, window_s=0.01)
    runner = asyncio.create_task(buffer.run())
    buffer.sends_in_flight(1)  # never drains
    started = asyncio.get_running_loop().time()
    buffer.settle(claim(1), Delivered(None))
    await until_written(buffer, queue, 1)
    assert asyncio.get_running_loop().time() - started < 1
    buffer.close()
    await runner


async def test_a_full_buffer_is_written_without_waiting() -> None:
    queue = RecordingQueue()
    buffer = SettleBuffer(queue, window_s=60, batch_max=2)
    runner = asyncio.create_task(buffer.run())
    buffer.sends_in_flight(5)
    buffer.settle(claim(1), Delivered(None))
    buffer.settle(claim(2), Delivered(None))
    await until_written(buffer, queue, 1)
    assert queue.calls == [("settle", ["id-1", "id-2"], 0, False)]
    buffer.close()
    await runner


async def test_releases_are_written_by_delay_and_possibly_sent() -> None:
    queue = RecordingQueue()
    buffer = SettleBuffer(queue, window_s=60)
    buffer.release(claim(1), 0, possibly_sent=True)
    buffer.release(claim(2), 1000, possibly_sent=False)
    buffer.release(claim(3), 0, possibly_sent=True)
    await buffer.flush()
    assert sorted(queue.calls) == [
        ("release", ["id-1", "id-3"], 0, True),
        ("release", ["id-2"], 1000, False),
    ]


@pytest.mark.parametrize("failures", [1, 2])
async def test_what_redis_refused_is_kept_and_written_later(failures: int) -> None:
    queue = RecordingQueue(failures=failures)
    buffer = SettleBuffer(queue, retry_s=0.001)
    buffer.settle(claim(1), Delivered(None))
    await buffer.flush()
    assert queue.calls == [("settle", ["id-1"], 0, False)]
    assert not buffer


async def test_close_writes_what_is_buffered_and_ends_the_run() -> None:
    queue = RecordingQueue()
    buffer = SettleBuffer(queue, window_s=60)
    runner = asyncio.create_task(buffer.run())
    buffer.sends_in_flight(1)
    buffer.settle(claim(1), Delivered(None))
    buffer.close()
    async with asyncio.timeout(2):
        await runner
    assert queue.calls == [("settle", ["id-1"], 0, False)]
