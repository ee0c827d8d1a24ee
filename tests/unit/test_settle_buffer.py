"""The settle buffer alone (no Redis): what it writes, in how many round trips, and when; what a
claim carries (tests/delivery/test_worker_outcomes.py: the same with the worker on Valkey)."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from eventually import eventually
from prometheus_client import REGISTRY

from relay.core.model import ClaimedNotification, Delivered, Notification
from relay.delivery.settle_buffer import SettleBuffer
from relay.store.records import ClaimError, Settlement


def claim(number: int) -> ClaimedNotification:
    return ClaimedNotification(f"id-{number}", cast(Notification, None), 0, 0)


class RecordingQueue:
    """Each call is one round trip; `failures` calls raise first (Redis away)."""

    def __init__(self, failures: int = 0, set_aside: list[ClaimError] | None = None) -> None:
        self.calls: list[tuple[list[str], list[tuple[str, int, bool]]]] = []
        self.failures = failures
        self.set_aside = set_aside or []  # what each write's scripts report set aside

    async def write_settlement(self, settlement: Settlement) -> list[ClaimError]:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("Redis went away")
        self.calls.append(
            (
                [c.id for c, _ in settlement.settled],
                [(c.id, delay, sent) for c, delay, sent in settlement.released],
            )
        )
        return self.set_aside


async def until_written(buffer: SettleBuffer, queue: RecordingQueue, calls: int) -> None:
    await eventually(
        lambda: len(queue.calls) >= calls and not buffer, interval_s=0.001, what="written"
    )


async def test_a_settle_no_claim_carries_is_written_once_its_window_is_over() -> None:
    queue = RecordingQueue()
    buffer = SettleBuffer(queue, window_s=0.05)
    runner = asyncio.create_task(buffer.run())
    loop = asyncio.get_running_loop()
    started = loop.time()
    buffer.settle(claim(1), Delivered(None))
    buffer.settle(claim(2), Delivered(None))
    await until_written(buffer, queue, 1)
    assert 0.05 <= loop.time() - started < 1
    assert queue.calls == [(["id-1", "id-2"], [])]  # both in one round trip
    buffer.close()
    await runner


async def test_while_a_claim_is_coming_it_carries_what_ripens() -> None:
    queue = RecordingQueue()
    buffer = SettleBuffer(queue, window_s=0.001)
    runner = asyncio.create_task(buffer.run())
    buffer.carried(True)
    buffer.settle(claim(1), Delivered(None))
    buffer.release(claim(2), 0, possibly_sent=False)
    await asyncio.sleep(0.02)  # the behaviour under test: nothing written meanwhile
    assert queue.calls == []
    taken = buffer.take()
    assert [c.id for c in taken.claims()] == ["id-1", "id-2"]
    assert not buffer
    buffer.close()
    await runner
    assert queue.calls == []


async def test_ripe_settles_are_written_alone_when_the_claim_is_not_coming() -> None:
    queue = RecordingQueue()
    buffer = SettleBuffer(queue, window_s=0.001)
    runner = asyncio.create_task(buffer.run())
    buffer.carried(True)
    buffer.settle(claim(1), Delivered(None))
    await asyncio.sleep(0.02)  # ripe, held for the claim
    assert queue.calls == []
    buffer.carried(False)  # the worker waits for work instead
    await until_written(buffer, queue, 1)
    assert queue.calls == [(["id-1"], [])]
    buffer.close()
    await runner


async def test_what_a_claim_could_not_write_is_kept_ahead_of_later_settles() -> None:
    queue = RecordingQueue()
    buffer = SettleBuffer(queue, window_s=60)
    buffer.settle(claim(1), Delivered(None))
    taken = buffer.take()
    buffer.settle(claim(2), Delivered(None))
    buffer.restore(taken)
    await buffer.flush()
    assert queue.calls == [(["id-1", "id-2"], [])]


async def test_a_full_buffer_is_written_without_waiting() -> None:
    queue = RecordingQueue()
    buffer = SettleBuffer(queue, window_s=60, batch_max=2)
    runner = asyncio.create_task(buffer.run())
    buffer.carried(True)
    buffer.settle(claim(1), Delivered(None))
    buffer.settle(claim(2), Delivered(None))
    await until_written(buffer, queue, 1)
    assert queue.calls == [(["id-1", "id-2"], [])]
    buffer.close()
    await runner


@pytest.mark.parametrize("failures", [1, 2])
async def test_what_redis_refused_is_kept_and_written_later(failures: int) -> None:
    queue = RecordingQueue(failures=failures)
    buffer = SettleBuffer(queue, retry_s=0.001)
    buffer.settle(claim(1), Delivered(None))
    await buffer.flush()
    assert queue.calls == [(["id-1"], [])]
    assert not buffer


async def test_a_device_its_settle_set_aside_is_counted_and_not_written_again() -> None:
    set_aside = ClaimError(3, "com.example.chat:" + "a1" * 32, "WRONGTYPE Operation against a key")
    queue = RecordingQueue(set_aside=[set_aside])
    buffer = SettleBuffer(queue, retry_s=0.001)
    counted = REGISTRY.get_sample_value("apns_relay_claim_errors_total", {"scope": "device"}) or 0
    buffer.settle(claim(1), Delivered(None))
    buffer.settle(claim(2), Delivered(None))
    await buffer.flush()
    assert queue.calls == [(["id-1", "id-2"], [])]  # the others applied: nothing to write again
    assert not buffer
    after = REGISTRY.get_sample_value("apns_relay_claim_errors_total", {"scope": "device"})
    assert after == counted + 1


async def test_close_writes_what_is_buffered_and_ends_the_run() -> None:
    queue = RecordingQueue()
    buffer = SettleBuffer(queue, window_s=60)
    runner = asyncio.create_task(buffer.run())
    buffer.carried(True)
    buffer.settle(claim(1), Delivered(None))
    buffer.close()
    async with asyncio.timeout(2):
        await runner
    assert queue.calls == [(["id-1"], [])]


async def test_what_redis_refused_to_a_claim_is_written_apart_from_the_claims() -> None:
    queue = RecordingQueue(failures=1)
    buffer = SettleBuffer(queue, window_s=60, retry_s=0.001)
    runner = asyncio.create_task(buffer.run())
    buffer.carried(True)
    buffer.settle(claim(1), Delivered(None))
    buffer.refused(buffer.take())  # a claim carried it; its settle script failed
    buffer.settle(claim(2), Delivered(None))
    assert [c.id for c in buffer.take().claims()] == ["id-2"]  # the next claim carries only this
    await until_written(buffer, queue, 1)  # run() wrote it, after one more refusal
    assert queue.calls == [(["id-1"], [])]
    buffer.close()
    await runner
