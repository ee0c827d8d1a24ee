"""Final records as history: compact, read back whole, given up oldest first, and told apart from
ids that never existed; the same enqueue run again after its notification went final stores
nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
import redis.asyncio as aioredis
from test_queue import APP, T0, TOKEN_A, TOKEN_B, claim_one, note

from relay.core.model import Delivered, DeliveryState, Failed, Retry, apns_id_for
from relay.store.history import (
    HISTORY_BUCKET_S,
    bucket_of,
    id_time_ms,
    retention_gap,
    time_ordered_hex,
)
from relay.store.keys import HISTORY, shard_of_id, shard_prefix
from relay.store.queue import RelayQueue
from relay.store.records import NoLongerRetained, NotificationStatus, QueueLimits


@pytest.fixture
async def queue(redis: aioredis.Redis) -> AsyncIterator[RelayQueue]:
    relay_queue = RelayQueue(redis, QueueLimits(lease_ms=10_000))
    yield relay_queue
    await relay_queue.aclose()


async def final_status(queue: RelayQueue, notification_id: str) -> NotificationStatus:
    status = await queue.get(notification_id)
    assert status is not None
    return status


async def given_up(queue: RelayQueue, notification_id: str) -> NoLongerRetained:
    assert await queue.get(notification_id) is None
    gone = await queue.no_longer_retained(notification_id)
    assert gone is not None
    return gone


async def test_a_delivered_record_reads_back_whole_but_the_device_token(
    queue: RelayQueue, redis: aioredis.Redis
) -> None:
    sent = replace(note(service_id="svc-1"), collapse_id="chat-1", action="get-dialog-start-chat")
    accepted = await queue.enqueue(sent, now_ms=T0)
    claim = await claim_one(queue, T0 + 5)
    await queue.settle([(claim, Delivered(apns_id_for(claim.id)))], now_ms=T0 + 25)
    status = await final_status(queue, accepted.id)
    assert status == NotificationStatus(
        id=accepted.id,
        app=APP,
        device_token=None,
        service_id="svc-1",
        action="get-dialog-start-chat",
        state=DeliveryState.DELIVERED,
        attempts=1,
        claims=1,
        accepted_at_ms=T0,
        updated_at_ms=T0 + 25,
        expires_at=sent.expires_at,
        delivered_at_ms=T0 + 25,
        last_status=200,
        last_reason=None,
        apns_id=apns_id_for(accepted.id),  # derived again, not stored
        apns_unique_id=None,
        collapse_id="chat-1",
        push_type="alert",
        priority=10,
    )
    (bucket,) = [key async for key in redis.scan_iter(match="*:h:*")]
    (record,) = (await redis.hgetall(bucket)).values()
    assert len(record) < 100  # the layout's whole point: well under the 200-byte budget
    assert TOKEN_A.encode() not in record
    assert apns_id_for(accepted.id).encode() not in record


async def test_a_failed_record_keeps_the_last_answer_and_a_foreign_apns_id(
    queue: RelayQueue,
) -> None:
    accepted = await queue.enqueue(note(), now_ms=T0)
    claim = await claim_one(queue, T0)
    await queue.settle([(claim, Retry("ServiceUnavailable", 100, status=503))], now_ms=T0 + 1)
    claim = await claim_one(queue, T0 + 200)
    await queue.settle([(claim, Failed("BadTopic", 400))], now_ms=T0 + 300)
    status = await final_status(queue, accepted.id)
    assert (status.state, status.attempts, status.last_status, status.last_reason) == (
        DeliveryState.FAILED,
        2,
        400,
        "BadTopic",
    )
    assert (status.apns_id, status.delivered_at_ms, status.updated_at_ms) == (None, None, T0 + 300)

    other = await queue.enqueue(note(TOKEN_B), now_ms=T0)
    claim = await claim_one(queue, T0)
    await queue.settle([(claim, Delivered("apns-from-elsewhere", "unique-1"))], now_ms=T0 + 9)
    status = await final_status(queue, other.id)
    assert (status.apns_id, status.apns_unique_id) == ("apns-from-elsewhere", "unique-1")


async def test_expired_and_superseded_records_are_history_too(queue: RelayQueue) -> None:
    stale = await queue.enqueue(note(expires_in_s=1), now_ms=T0)
    older = await queue.enqueue(note(TOKEN_B, service_id="svc"), now_ms=T0)
    await queue.enqueue(note(TOKEN_B, service_id="svc"), now_ms=T0 + 1)
    await queue.claim(10, now_ms=T0 + 5_000)
    assert (await final_status(queue, stale.id)).state is DeliveryState.EXPIRED
    assert (await final_status(queue, older.id)).state is DeliveryState.SUPERSEDED


async def test_the_same_enqueue_after_its_notification_went_final_stores_nothing(
    queue: RelayQueue, redis: aioredis.Redis
) -> None:
    n = note()
    accepted = await queue.enqueue(n, now_ms=T0)
    claim = await claim_one(queue, T0)
    await queue.settle([(claim, Delivered(None))], now_ms=T0 + 1)
    again = await queue.enqueue(n, notification_id=accepted.id, now_ms=T0 + 2)
    assert again.id == accepted.id
    assert (await queue.claim(10, now_ms=T0 + 3)).claimed == []
    assert [key async for key in redis.scan_iter(match="*:[nqp]:*")] == []


async def test_trimming_gives_up_the_oldest_bucket_of_every_shard_first(
    queue: RelayQueue, redis: aioredis.Redis
) -> None:
    """Ids made in two buckets (the id carries the time), all final: one trim takes the older
    bucket in every shard, and its ids then read as no longer retained; the newer stay."""
    now_ms = id_time_ms("00-" + time_ordered_hex())
    assert now_ms is not None
    old_ids: list[str] = []
    new_ids: list[str] = []
    for i in range(20):
        n = note(f"{i:064x}")
        shard = queue.shard_of(APP, n.device_token)
        for made_ms, ids in ((now_ms - HISTORY_BUCKET_S * 1000, old_ids), (now_ms, new_ids)):
            made = f"{made_ms:012x}" + time_ordered_hex()[12:]
            accepted = await queue.enqueue(n, notification_id=f"{shard:02d}-{made}", now_ms=T0)
            ids.append(accepted.id)
            claim = await claim_one(queue, T0)
            await queue.settle([(claim, Delivered(None))], now_ms=T0 + 1)

    assert await queue.trim_history(oldest=True) == len(old_ids)
    for notification_id in old_ids:
        assert "memory" in (await given_up(queue, notification_id)).why
    for notification_id in new_ids:
        assert (await final_status(queue, notification_id)).state is DeliveryState.DELIVERED

    # A bucket evicted under Redis (a volatile-* policy) reads the same way, also after the
    # index forgot what is past retention (oldest=False), which deletes nothing.
    evicted = new_ids[0]
    evicted_shard = shard_of_id(evicted)
    assert evicted_shard is not None
    await redis.delete(f"{shard_prefix(evicted_shard)}{HISTORY}{bucket_of(evicted)}")
    await given_up(queue, evicted)
    assert await queue.trim_history(oldest=False) == 0
    await given_up(queue, evicted)
    others = [i for i in new_ids if shard_of_id(i) != evicted_shard]
    assert others
    assert all([await queue.get(i) is not None for i in others])


def test_an_id_is_no_longer_retained_past_retention_or_behind_the_oldest_bucket() -> None:
    made_ms = 1_800_000_000_000
    notification_id = f"03-{made_ms:012x}" + time_ordered_hex()[12:]
    bucket = bucket_of(notification_id)
    assert bucket is not None
    gap = {
        "now_ms": made_ms + 1000,
        "retention_s": 60,
        "oldest_bucket": bucket,
        "bucket_listed": True,
        "bucket_exists": True,
    }
    assert retention_gap(notification_id, **gap) is None  # type: ignore[arg-type]
    assert "retention" in str(
        retention_gap(notification_id, **{**gap, "now_ms": made_ms + 61_000})  # type: ignore[arg-type]
    )
    for changed in ({"oldest_bucket": bucket + 1}, {"bucket_exists": False}):
        assert "memory" in str(retention_gap(notification_id, **{**gap, **changed}))  # type: ignore[arg-type]
    # Not one of this queue's ids (a UUIDv4, no time in it): nothing says it existed.
    assert retention_gap("03-" + "4" * 32, **gap) is None  # type: ignore[arg-type]
