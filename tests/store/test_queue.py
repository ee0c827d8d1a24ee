"""The Redis store against a real Valkey: every operation's outcome, refusal and invariant."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest
import redis.asyncio as aioredis
from eventually import eventually
from redis.crc import key_slot

from relay.core.model import (
    ClaimedNotification,
    Delivered,
    DeliveryState,
    Expired,
    Failed,
    Notification,
    PauseApp,
    Retry,
)
from relay.store.codec import MalformedRecordError
from relay.store.keys import NOTE, shard_of_id, shard_prefix, shard_tag
from relay.store.queue import RelayQueue, spread
from relay.store.queued import (
    HEADER_FIELDS,
    NOTE_STRINGS,
    QUEUED_LAYOUT,
    pack_record,
    unpack_queued,
)
from relay.store.records import (
    Accepted,
    DeviceStatus,
    ExpiredRecord,
    LeasedNotification,
    QueueLimits,
)
from relay.store.refusals import DeadToken, DeviceQueueFull, PendingCapReached

T0 = 1_700_000_000_000  # the injected clock's start (ms)
APP = "com.example.chat"
TOKEN_A = "a1" * 32
TOKEN_B = "b2" * 32


def note(
    token: str = TOKEN_A,
    *,
    service_id: str | None = None,
    idempotency_key: str | None = None,
    expires_in_s: int = 3600,
    body: str = "agent available",
) -> Notification:
    return Notification(
        app=APP,
        device_token=token,
        payload=json.dumps({"aps": {"alert": body}, "message": {"_id": service_id}}).encode(),
        push_type="alert",
        priority=10,
        expires_at=T0 // 1000 + expires_in_s,
        service_id=service_id,
        idempotency_key=idempotency_key,
    )


def tokens_in_one_shard(queue: RelayQueue, count: int) -> list[str]:
    """Distinct device tokens that all land in shard 0."""
    found: list[str] = []
    i = 0
    while len(found) < count:
        token = f"{i:064x}"
        if queue.shard_of(APP, token) == 0:
            found.append(token)
        i += 1
    return found


async def snapshot(redis: aioredis.Redis) -> dict[bytes, tuple[bytes | None, bool]]:
    """Every key's serialized value and whether it has a TTL: equal snapshots, unchanged data."""
    keys = [key async for key in redis.scan_iter(count=1000)]
    return {key: (await redis.dump(key), await redis.pttl(key) > 0) for key in keys}


@pytest.fixture
async def queue(redis: aioredis.Redis) -> AsyncIterator[RelayQueue]:
    relay_queue = RelayQueue(redis, QueueLimits(lease_ms=10_000))
    yield relay_queue
    await relay_queue.aclose()


async def claim_one(queue: RelayQueue, now_ms: int) -> ClaimedNotification:
    batch = await queue.claim(10, now_ms=now_ms)
    assert len(batch.claimed) == 1, batch
    return batch.claimed[0]


async def state_of(queue: RelayQueue, notification_id: str) -> DeliveryState:
    status = await queue.get(notification_id)
    assert status is not None
    return status.state


# ---- enqueue, get, claim round trip ----


async def test_claim_hands_out_the_notification_exactly_as_enqueued(queue: RelayQueue) -> None:
    sent = replace(
        note(service_id="svc-1", idempotency_key="k1", body="caf\u00e9"),
        collapse_id="chat-1",
        action="chat",
    )
    accepted = await queue.enqueue(sent, now_ms=T0)
    assert accepted == Accepted(accepted.id, duplicate=False)
    assert shard_of_id(accepted.id) == queue.shard_of(APP, TOKEN_A)

    claim = await claim_one(queue, T0 + 5)
    assert claim.id == accepted.id
    assert claim.notification == sent
    assert (claim.attempts, claim.accepted_at_ms) == (0, T0)

    status = await queue.get(accepted.id)
    assert status is not None
    assert status.state is DeliveryState.SENDING
    assert (status.app, status.device_token, status.service_id, status.action) == (
        APP,
        TOKEN_A,
        "svc-1",
        "chat",
    )
    assert (status.collapse_id, status.push_type, status.priority) == ("chat-1", "alert", 10)
    assert (status.accepted_at_ms, status.updated_at_ms, status.expires_at) == (
        T0,
        T0 + 5,
        sent.expires_at,
    )


async def test_get_of_an_unknown_or_malformed_id_is_none(queue: RelayQueue) -> None:
    assert await queue.get("03-" + "0" * 32) is None
    assert await queue.get("not-an-id-of-ours") is None
    assert await queue.get("99-abc") is None  # shard out of range


async def test_delivered_is_final_with_apns_id_and_ttl(
    queue: RelayQueue, redis: aioredis.Redis
) -> None:
    accepted = await queue.enqueue(note(), now_ms=T0)
    claim = await claim_one(queue, T0)
    await queue.settle([(claim, Delivered("apns-1"))], now_ms=T0 + 20)
    status = await queue.get(accepted.id)
    assert status is not None
    assert (status.state, status.apns_id, status.delivered_at_ms, status.attempts) == (
        DeliveryState.DELIVERED,
        "apns-1",
        T0 + 20,
        1,
    )
    # The queued record and its payload are gone; the final record is history, under a TTL.
    assert [key async for key in redis.scan_iter(match="*:[np]:*")] == []
    ttls = [await redis.ttl(key) async for key in redis.scan_iter(match="*:h:*")]
    assert len(ttls) == 1
    assert 0 < ttls[0] <= queue.limits.retention_s
    assert await queue.device(APP, TOKEN_A) == DeviceStatus(pending=0, in_flight=False, dead=None)


# ---- per-device order, one claim per device ----


async def test_only_the_head_is_claimed_and_only_once_at_a_time(queue: RelayQueue) -> None:
    ids = [(await queue.enqueue(note(body=f"n{i}"), now_ms=T0 + i)).id for i in range(3)]
    first = await claim_one(queue, T0 + 10)
    assert first.id == ids[0]
    assert (await queue.claim(10, now_ms=T0 + 11)).claimed == []  # head in flight
    device = await queue.device(APP, TOKEN_A)
    assert (device.pending, device.in_flight) == (3, True)

    await queue.settle([(first, Delivered(None))], now_ms=T0 + 12)
    second = await claim_one(queue, T0 + 13)
    assert second.id == ids[1]
    await queue.settle([(second, Failed("BadTopic", 400))], now_ms=T0 + 14)
    third = await claim_one(queue, T0 + 15)
    assert third.id == ids[2]
    failed = await queue.get(ids[1])
    assert failed is not None
    assert (failed.state, failed.last_status, failed.last_reason) == (
        DeliveryState.FAILED,
        400,
        "BadTopic",
    )


async def test_retry_waits_its_delay_and_counts_the_attempt(queue: RelayQueue) -> None:
    accepted = await queue.enqueue(note(), now_ms=T0)
    claim = await claim_one(queue, T0)
    await queue.settle(
        [(claim, Retry("TooManyRequests", delay_ms=2_000, status=429))], now_ms=T0 + 100
    )
    status = await queue.get(accepted.id)
    assert status is not None
    assert (status.state, status.attempts, status.last_status, status.last_reason) == (
        DeliveryState.RETRYING,
        1,
        429,
        "TooManyRequests",
    )
    assert await queue.next_due_ms() == T0 + 2_100
    assert (await queue.claim(10, now_ms=T0 + 2_099)).claimed == []
    again = await claim_one(queue, T0 + 2_100)
    assert (again.id, again.attempts) == (accepted.id, 1)
    assert (await queue.totals(now_ms=T0)).retried == 1


# ---- never stale ----


async def test_expired_heads_are_finalised_at_claim_and_the_next_live_one_claimed(
    queue: RelayQueue,
) -> None:
    stale = [
        (await queue.enqueue(note(expires_in_s=1, service_id=f"s{i}"), now_ms=T0)).id
        for i in range(2)
    ]
    live = (await queue.enqueue(note(expires_in_s=60), now_ms=T0)).id
    batch = await queue.claim(10, now_ms=T0 + 1_000)  # expires_at == now: already stale
    assert [c.id for c in batch.claimed] == [live]
    assert batch.expired == [ExpiredRecord(i, APP, f"s{n}", None) for n, i in enumerate(stale)]
    for notification_id in stale:
        assert await state_of(queue, notification_id) is DeliveryState.EXPIRED
    totals = await queue.totals(now_ms=T0 + 1_000)
    assert (totals.expired, totals.pending) == (2, 1)


async def test_worker_reported_expiry_pops_the_head(queue: RelayQueue) -> None:
    first = (await queue.enqueue(note(), now_ms=T0)).id
    second = (await queue.enqueue(note(), now_ms=T0)).id
    claim = await claim_one(queue, T0)
    await queue.settle([(claim, Expired())], now_ms=T0 + 1)
    assert await state_of(queue, first) is DeliveryState.EXPIRED
    assert (await claim_one(queue, T0 + 2)).id == second


# ---- at least once: leases ----


async def test_a_run_out_lease_is_claimed_again_and_the_stale_settle_ignored(
    queue: RelayQueue,
) -> None:
    accepted = await queue.enqueue(note(), now_ms=T0)
    lost = await claim_one(queue, T0)
    assert await queue.next_due_ms() == T0 + queue.limits.lease_ms
    assert (await queue.claim(10, now_ms=T0 + queue.limits.lease_ms - 1)).claimed == []
    taken_over = await claim_one(queue, T0 + queue.limits.lease_ms)
    assert taken_over.id == lost.id
    assert taken_over.attempts == 0

    await queue.settle([(lost, Failed("BadTopic", 400))], now_ms=T0 + 10_001)
    assert await state_of(queue, accepted.id) is DeliveryState.SENDING
    await queue.release([lost], now_ms=T0 + 10_002)
    assert await state_of(queue, accepted.id) is DeliveryState.SENDING

    await queue.settle([(taken_over, Delivered("a"))], now_ms=T0 + 10_003)
    assert await state_of(queue, accepted.id) is DeliveryState.DELIVERED
    await queue.settle([(lost, Retry("late", 10))], now_ms=T0 + 10_004)
    status = await queue.get(accepted.id)
    assert status is not None
    assert (status.state, status.apns_id, status.attempts) == (DeliveryState.DELIVERED, "a", 1)
    assert (await queue.totals(now_ms=T0)).retried == 0


async def test_a_claim_ended_unsent_cannot_act_again(queue: RelayQueue) -> None:
    accepted = await queue.enqueue(note(), now_ms=T0)
    retried = await claim_one(queue, T0)
    await queue.settle([(retried, Retry("TooManyRequests", 0, 429))], now_ms=T0 + 1)
    await queue.settle([(retried, Retry("TooManyRequests", 0, 429))], now_ms=T0 + 2)
    await queue.settle([(retried, Delivered("twice"))], now_ms=T0 + 3)
    status = await queue.get(accepted.id)
    assert status is not None
    assert (status.state, status.attempts) == (DeliveryState.RETRYING, 1)

    released = await claim_one(queue, T0 + 4)
    await queue.release([released], now_ms=T0 + 5)
    await queue.settle([(released, Failed("BadTopic", 400))], now_ms=T0 + 6)
    assert await state_of(queue, accepted.id) is DeliveryState.RETRYING
    assert (await queue.totals(now_ms=T0 + 6)).retried == 1


async def test_a_lease_run_out_but_not_claimed_again_still_settles(queue: RelayQueue) -> None:
    accepted = await queue.enqueue(note(), now_ms=T0)
    late = await claim_one(queue, T0)
    # A claim on the shard reaps the run-out lease; nobody has claimed the device again.
    await queue.claim(0, now_ms=T0 + queue.limits.lease_ms)
    # Its holder may have sent it: possibly sent, so retrying, though no attempt was settled.
    status = await queue.get(accepted.id)
    assert status is not None
    assert (status.state, status.attempts) == (DeliveryState.RETRYING, 0)
    await queue.settle([(late, Delivered("late"))], now_ms=T0 + queue.limits.lease_ms + 1)
    assert await state_of(queue, accepted.id) is DeliveryState.DELIVERED
    assert await queue.next_due_ms() is None


async def test_release_gives_the_claim_back_unchanged(queue: RelayQueue) -> None:
    accepted = await queue.enqueue(note(), now_ms=T0)
    claim = await claim_one(queue, T0)
    await queue.release([claim], delay_ms=5_000, now_ms=T0 + 1)
    status = await queue.get(accepted.id)
    assert status is not None
    assert (status.state, status.attempts) == (DeliveryState.QUEUED, 0)
    assert not (await queue.device(APP, TOKEN_A)).in_flight
    assert (await queue.claim(10, now_ms=T0 + 5_000)).claimed == []
    claim = await claim_one(queue, T0 + 5_001)

    await queue.settle([(claim, Retry("InternalServerError", 0, 500))], now_ms=T0 + 5_002)
    claim = await claim_one(queue, T0 + 5_003)
    await queue.release([claim], now_ms=T0 + 5_004)
    status = await queue.get(accepted.id)
    assert status is not None
    assert (status.state, status.attempts) == (DeliveryState.RETRYING, 1)


async def test_settle_refuses_what_it_cannot_record(queue: RelayQueue) -> None:
    await queue.enqueue(note(), now_ms=T0)
    claim = await claim_one(queue, T0)
    with pytest.raises(ValueError, match="PauseApp"):
        await queue.settle([(claim, PauseApp("InvalidProviderToken", 403))], now_ms=T0)
    assert isinstance(claim, LeasedNotification)
    forged = ClaimedNotification(claim.id, claim.notification, 0, T0)
    with pytest.raises(TypeError):
        await queue.settle([(forged, Delivered(None))], now_ms=T0)
    assert (await queue.device(APP, TOKEN_A)).in_flight


# ---- idempotency, supersede ----


async def test_an_idempotency_key_returns_the_same_id_once_stored(queue: RelayQueue) -> None:
    small = RelayQueue(queue._redis, QueueLimits(max_per_device=1))
    first = await small.enqueue(note(idempotency_key="evt-1"), now_ms=T0)
    again = await small.enqueue(note(idempotency_key="evt-1", body="other"), now_ms=T0 + 1)
    assert again == Accepted(first.id, duplicate=True)  # and the full device did not refuse it
    other_device = await small.enqueue(note(TOKEN_B, idempotency_key="evt-1"), now_ms=T0)
    assert not other_device.duplicate
    totals = await small.totals(now_ms=T0)
    assert (totals.enqueued, totals.pending) == (2, 2)


async def test_a_newer_notification_supersedes_a_queued_one_with_its_service_id(
    queue: RelayQueue,
) -> None:
    first = await queue.enqueue(note(service_id="s1", body="old"), now_ms=T0)
    old = first.id
    other = (await queue.enqueue(note(service_id="s2"), now_ms=T0 + 1)).id
    newer = await queue.enqueue(note(service_id="s1", body="new"), now_ms=T0 + 2)
    new = newer.id
    assert (first.superseded, newer.superseded) == (None, old)
    assert await state_of(queue, old) is DeliveryState.SUPERSEDED
    assert (await claim_one(queue, T0 + 3)).id == other
    totals = await queue.totals(now_ms=T0 + 3)
    assert (totals.superseded, totals.pending, totals.oldest_pending_age_s) == (1, 2, 0.002)
    device = await queue.device(APP, TOKEN_A)
    assert device.pending == 2
    assert new != old


async def test_supersede_never_touches_the_notification_in_flight(queue: RelayQueue) -> None:
    sending = (await queue.enqueue(note(service_id="s1"), now_ms=T0)).id
    claim = await claim_one(queue, T0)
    newer = (await queue.enqueue(note(service_id="s1"), now_ms=T0 + 1)).id
    newest = (await queue.enqueue(note(service_id="s1"), now_ms=T0 + 2)).id
    assert await state_of(queue, sending) is DeliveryState.SENDING
    assert await state_of(queue, newer) is DeliveryState.SUPERSEDED
    await queue.settle([(claim, Delivered(None))], now_ms=T0 + 3)
    assert (await claim_one(queue, T0 + 4)).id == newest


async def test_superseding_a_head_given_back_unsent_makes_the_device_due_now(
    queue: RelayQueue,
) -> None:
    released = (await queue.enqueue(note(service_id="s1"), now_ms=T0)).id
    claim = await claim_one(queue, T0)
    await queue.release([claim], delay_ms=60_000, now_ms=T0)
    newer = await queue.enqueue(note(service_id="s1"), now_ms=T0 + 1)
    assert newer.superseded == released
    assert (await claim_one(queue, T0 + 2)).id == newer.id


async def test_nothing_supersedes_a_notification_that_was_possibly_sent(
    queue: RelayQueue,
) -> None:
    """Invariant 12: a retry, a lease that ran out, a release after the request went out."""
    lease_ms = queue.limits.lease_ms
    retried = (await queue.enqueue(note(service_id="s1"), now_ms=T0)).id
    claim = await claim_one(queue, T0)
    await queue.settle([(claim, Retry("ServiceUnavailable", 2 * lease_ms, 503))], now_ms=T0)
    run_out = (await queue.enqueue(note(TOKEN_B, service_id="s1"), now_ms=T0)).id
    assert (await claim_one(queue, T0 + 1)).id == run_out  # and its worker dies
    await queue.claim(0, now_ms=T0 + 1 + lease_ms)  # reaps the run-out lease
    for token in (TOKEN_A, TOKEN_B):
        newer = await queue.enqueue(note(token, service_id="s1"), now_ms=T0 + 2 + lease_ms)
        assert newer.superseded is None
    assert await state_of(queue, retried) is DeliveryState.RETRYING
    assert await state_of(queue, run_out) is DeliveryState.RETRYING

    went_out = (await queue.enqueue(note("c3" * 32, service_id="s2"), now_ms=T0 + 2 + lease_ms)).id
    now = T0 + 3 + lease_ms
    claims = (await queue.claim(10, now_ms=now)).claimed
    sent = next(c for c in claims if c.id == went_out)
    await queue.release([sent], possibly_sent=True, now_ms=now)
    assert await state_of(queue, went_out) is DeliveryState.RETRYING
    newer = await queue.enqueue(note("c3" * 32, service_id="s2"), now_ms=now + 1)
    assert newer.superseded is None


async def test_supersede_frees_room_in_a_full_device_queue(redis: aioredis.Redis) -> None:
    queue = RelayQueue(redis, QueueLimits(max_per_device=2))
    await queue.enqueue(note(service_id="s1"), now_ms=T0)
    await queue.enqueue(note(service_id="s2"), now_ms=T0)
    await queue.enqueue(note(service_id="s1"), now_ms=T0)  # replaces the first: still 2
    with pytest.raises(DeviceQueueFull):
        await queue.enqueue(note(service_id="s3"), now_ms=T0)


async def test_supersede_can_be_switched_off(redis: aioredis.Redis) -> None:
    queue = RelayQueue(redis, QueueLimits(supersede=False))
    first = (await queue.enqueue(note(service_id="s1"), now_ms=T0)).id
    await queue.enqueue(note(service_id="s1"), now_ms=T0)
    assert await state_of(queue, first) is DeliveryState.QUEUED


# ---- refusals store nothing ----


async def test_device_queue_full_refuses_and_stores_nothing(redis: aioredis.Redis) -> None:
    queue = RelayQueue(redis, QueueLimits(max_per_device=2, device_full_retry_after_s=7))
    for i in range(2):
        await queue.enqueue(note(service_id=f"s{i}"), now_ms=T0)
    before = await snapshot(redis)
    with pytest.raises(DeviceQueueFull) as refused:
        await queue.enqueue(note(idempotency_key="k", service_id="s9"), now_ms=T0 + 1)
    assert (refused.value.reason, refused.value.retry_after_s) == ("device_queue_full", 7)
    assert "device_token" in refused.value.message
    assert await snapshot(redis) == before


async def test_the_pending_cap_is_per_shard_and_refuses_storing_nothing(
    redis: aioredis.Redis,
) -> None:
    queue = RelayQueue(redis, QueueLimits(shards=2, max_pending=4))  # 2 per shard
    tokens = tokens_in_one_shard(queue, 3)
    for token in tokens[:2]:
        await queue.enqueue(note(token), now_ms=T0)
    before = await snapshot(redis)
    with pytest.raises(PendingCapReached) as refused:
        await queue.enqueue(note(tokens[2], idempotency_key="k"), now_ms=T0)
    assert refused.value.reason == "pending_cap_reached"
    assert refused.value.retry_after_s == queue.limits.pending_cap_retry_after_s
    assert await snapshot(redis) == before


async def test_a_dead_token_fails_its_queue_and_refuses_later_notifications(
    queue: RelayQueue, redis: aioredis.Redis
) -> None:
    ids = [(await queue.enqueue(note(service_id=f"s{i}"), now_ms=T0)).id for i in range(3)]
    survivor = (await queue.enqueue(note(TOKEN_B), now_ms=T0)).id
    claim = await claim_one_of(queue, TOKEN_A, T0)
    await queue.settle(
        [(claim, Failed("Unregistered", 410, dead_token=True, token_invalid_since_ms=T0 - 5))],
        now_ms=T0 + 1,
    )
    for notification_id in ids:
        status = await queue.get(notification_id)
        assert status is not None
        assert (status.state, status.last_status, status.last_reason) == (
            DeliveryState.FAILED,
            410,
            "Unregistered",
        )
    assert await state_of(queue, survivor) is DeliveryState.QUEUED
    device = await queue.device(APP, TOKEN_A)
    assert (device.pending, device.in_flight) == (0, False)
    assert device.dead is not None
    assert (device.dead.reason, device.dead.status, device.dead.invalid_since_ms) == (
        "Unregistered",
        410,
        T0 - 5,
    )
    assert device.dead.marked_at_ms == T0 + 1
    totals = await queue.totals(now_ms=T0 + 1)
    assert (totals.failed, totals.dead_marked, totals.pending, totals.devices_pending) == (
        3,
        1,
        1,
        1,
    )

    before = await snapshot(redis)
    with pytest.raises(DeadToken) as refused:
        await queue.enqueue(note(idempotency_key="new"), now_ms=T0 + 2)
    assert (refused.value.reason, refused.value.retry_after_s) == ("device_token_dead", None)
    assert (refused.value.apns_reason, refused.value.invalid_since_ms) == ("Unregistered", T0 - 5)
    assert await snapshot(redis) == before


async def claim_one_of(queue: RelayQueue, token: str, now_ms: int) -> ClaimedNotification:
    batch = await queue.claim(10, now_ms=now_ms)
    mine = [c for c in batch.claimed if c.notification.device_token == token]
    others = [c for c in batch.claimed if c.notification.device_token != token]
    await queue.release(others, now_ms=now_ms)
    assert len(mine) == 1
    return mine[0]


async def test_clear_device_lifts_the_mark_and_purges_all_but_the_one_in_flight(
    queue: RelayQueue,
) -> None:
    await queue.enqueue(note(), now_ms=T0)
    claim = await claim_one(queue, T0)
    await queue.settle([(claim, Failed("BadDeviceToken", 400, dead_token=True))], now_ms=T0)
    with pytest.raises(DeadToken):
        await queue.enqueue(note(), now_ms=T0)
    assert await queue.clear_device(APP, TOKEN_A, now_ms=T0) == 0
    assert (await queue.device(APP, TOKEN_A)).dead is None

    ids = [(await queue.enqueue(note(), now_ms=T0 + 1)).id for _ in range(3)]
    in_flight = await claim_one(queue, T0 + 2)
    assert await queue.clear_device(APP, TOKEN_A, now_ms=T0 + 3) == 2
    purged = await queue.get(ids[2])
    assert purged is not None
    assert (purged.state, purged.last_reason) == (DeliveryState.FAILED, "Purged")
    assert (await queue.device(APP, TOKEN_A)).pending == 1
    await queue.settle([(in_flight, Delivered(None))], now_ms=T0 + 4)
    assert (await queue.claim(10, now_ms=T0 + 5)).claimed == []
    totals = await queue.totals(now_ms=T0 + 5)
    assert (totals.pending, totals.devices_pending, totals.delivered, totals.failed) == (0, 0, 1, 3)

    await queue.enqueue(note(), now_ms=T0 + 6)
    assert await queue.clear_device(APP, TOKEN_A, now_ms=T0 + 7) == 1
    assert await queue.next_due_ms() is None


# ---- totals, fairness, batches ----


async def test_totals_report_pending_leases_and_the_oldest_age(queue: RelayQueue) -> None:
    empty = await queue.totals(now_ms=T0)
    assert (empty.pending, empty.oldest_pending_age_s) == (0, None)
    await queue.enqueue(note(TOKEN_A), now_ms=T0)
    await queue.enqueue(note(TOKEN_A), now_ms=T0 + 100)
    await queue.enqueue(note(TOKEN_B), now_ms=T0 + 500)
    totals = await queue.totals(now_ms=T0 + 2_000)
    assert (totals.pending, totals.devices_pending, totals.leased) == (3, 2, 0)
    assert totals.oldest_pending_age_s == 2.0
    assert totals.enqueued == 3

    claim = await claim_one_of(queue, TOKEN_A, T0 + 2_000)
    assert (await queue.totals(now_ms=T0 + 2_000)).leased == 1
    await queue.settle([(claim, Delivered(None))], now_ms=T0 + 2_000)
    totals = await queue.totals(now_ms=T0 + 2_000)
    assert (totals.pending, totals.delivered, totals.leased) == (2, 1, 0)
    assert totals.oldest_pending_age_s == 1.9  # TOKEN_A's second one is its head now


async def test_claim_takes_the_shortfall_from_a_busy_shard_and_never_exceeds_the_limit(
    queue: RelayQueue,
) -> None:
    tokens = tokens_in_one_shard(queue, 6)
    for token in tokens:
        await queue.enqueue(note(token), now_ms=T0)
    batch = await queue.claim(5, now_ms=T0)
    assert len(batch.claimed) == 5
    assert len({c.notification.device_token for c in batch.claimed}) == 5
    assert len((await queue.claim(5, now_ms=T0)).claimed) == 1


def test_spread_shares_a_limit_evenly_over_the_shards() -> None:
    assert spread(5, [3, 4, 5]) == [(3, 2), (4, 2), (5, 1)]
    assert spread(2, [7, 0, 1]) == [(7, 1), (0, 1), (1, 0)]
    assert spread(0, [1]) == [(1, 0)]


async def test_enqueue_many_returns_each_items_own_result(redis: aioredis.Redis) -> None:
    queue = RelayQueue(redis, QueueLimits(max_per_device=1))
    results = await queue.enqueue_many(
        [
            note(TOKEN_A, idempotency_key="1"),
            note(TOKEN_A),
            note(TOKEN_B),
            note(TOKEN_A, idempotency_key="1"),
        ],
        now_ms=T0,
    )
    assert isinstance(results[0], Accepted)
    assert isinstance(results[1], DeviceQueueFull)
    assert isinstance(results[2], Accepted)
    assert results[3] == Accepted(results[0].id, duplicate=True)
    assert (await queue.totals(now_ms=T0)).enqueued == 2
    assert await queue.enqueue_many([], now_ms=T0) == []
    with pytest.raises(ValueError, match="at most 1000"):
        await queue.enqueue_many([note()] * 1001, now_ms=T0)


async def test_scripts_are_loaded_again_after_a_function_flush(
    queue: RelayQueue, redis: aioredis.Redis
) -> None:
    await queue.enqueue(note(), now_ms=T0)
    await redis.function_flush()
    await queue.enqueue_many([note(TOKEN_B), note(TOKEN_B)], now_ms=T0)
    assert (await queue.totals(now_ms=T0)).enqueued == 3


# ---- waking idle workers ----


async def quiet_wake_channel(queue: RelayQueue) -> None:
    """Subscribe, then let wake-ups of earlier tests pass (on a Cluster a PUBLISH reaches the
    other nodes over the cluster bus, so one can still be on its way): 50 ms without any."""
    async with asyncio.timeout(5.0):
        while await queue.wait_for_work(0.05):
            pass


async def test_wait_for_work_wakes_when_a_device_becomes_due(queue: RelayQueue) -> None:
    await quiet_wake_channel(queue)
    waiter = asyncio.create_task(queue.wait_for_work(5.0))
    await queue.enqueue(note(), now_ms=T0)
    async with asyncio.timeout(5.0):
        assert await waiter == {queue.shard_of(APP, TOKEN_A)}
    # A second notification for a device already due wakes nobody.
    await queue.enqueue(note(), now_ms=T0)
    assert await queue.wait_for_work(0.2) == frozenset()


async def test_a_wait_with_no_time_left_still_names_the_shards_already_woken(
    queue: RelayQueue,
) -> None:
    # A worker whose next due time has passed waits 0 s: the wake-up of a push enqueued between
    # its claim and that look must name its shard, or it claims every shard for one push (the
    # benchmark counted 7 claim scripts per push at 160/s).
    await quiet_wake_channel(queue)
    await queue.enqueue(note(), now_ms=T0)
    woken = await eventually(lambda: queue.wait_for_work(0.0), what="the queued wake-up")
    assert woken == {queue.shard_of(APP, TOKEN_A)}


async def test_one_wait_names_every_shard_woken_and_a_claim_can_ask_only_those(
    queue: RelayQueue,
) -> None:
    await quiet_wake_channel(queue)
    await queue.enqueue(note(), now_ms=T0)
    await queue.enqueue(note(TOKEN_B), now_ms=T0)
    shards = {queue.shard_of(APP, TOKEN_A), queue.shard_of(APP, TOKEN_B)}
    woken: frozenset[int] = frozenset()
    async with asyncio.timeout(5.0):
        while woken != shards:  # on a cluster the two may come in separate waits
            woken |= await queue.wait_for_work(5.0)
    other = next(s for s in range(queue.limits.shards) if s not in shards)
    assert (await queue.claim(10, now_ms=T0, shards=[other])).claimed == []
    claimed = (await queue.claim(10, now_ms=T0, shards=woken)).claimed
    assert {c.notification.device_token for c in claimed} == {TOKEN_A, TOKEN_B}


async def test_wait_for_work_wakes_when_a_settle_makes_the_next_head_due(
    queue: RelayQueue,
) -> None:
    await queue.enqueue(note(), now_ms=T0)
    await queue.enqueue(note(), now_ms=T0)
    first = await claim_one(queue, T0)
    await quiet_wake_channel(queue)
    await queue.settle([(first, Delivered(None))], now_ms=T0 + 1)
    assert await queue.wait_for_work(5.0) == {queue.shard_of(APP, TOKEN_A)}
    # The last one leaves nothing due behind it: nobody is woken.
    await queue.settle([(await claim_one(queue, T0 + 2), Delivered(None))], now_ms=T0 + 3)
    assert await queue.wait_for_work(0.2) == frozenset()


# ---- ordered notifications (chat lines by transcript position) ----


def chat_line(
    position: int | None, *, session: str = "chat-1", token: str = TOKEN_A
) -> Notification:
    return replace(
        note(token, body=f"line {position}"),
        action="chat-message",
        order_group=session,
        order=position,
    )


async def sent_in_order(queue: RelayQueue, now_ms: int) -> list[str]:
    """Claim and deliver until nothing is due: the ids in the order they were sent."""
    sent: list[str] = []
    while batch := (await queue.claim(10, now_ms=now_ms)).claimed:
        assert len(batch) == 1, "one device: only its head is ever claimed"
        sent.append(batch[0].id)
        await queue.settle([(batch[0], Delivered(None))], now_ms=now_ms)
    return sent


async def test_positions_enqueued_out_of_order_behind_a_head_in_flight_are_sent_in_order(
    queue: RelayQueue,
) -> None:
    head = (await queue.enqueue(chat_line(2), now_ms=T0)).id
    in_flight = await claim_one(queue, T0)
    ids = {
        position: (await queue.enqueue(chat_line(position), now_ms=T0 + i)).id
        for i, position in enumerate((5, 3, 4), start=1)
    }
    assert await state_of(queue, head) is DeliveryState.SENDING
    await queue.settle([(in_flight, Delivered(None))], now_ms=T0 + 10)
    assert await sent_in_order(queue, T0 + 10) == [ids[3], ids[4], ids[5]]


async def test_an_earlier_position_overtakes_a_queued_head_and_keeps_its_order_fields(
    queue: RelayQueue,
) -> None:
    later = (await queue.enqueue(chat_line(7), now_ms=T0)).id
    earlier_line = chat_line(6)
    earlier = (await queue.enqueue(earlier_line, now_ms=T0 + 1)).id
    claim = await claim_one(queue, T0 + 2)
    assert (claim.id, claim.notification) == (earlier, earlier_line)
    await queue.settle([(claim, Delivered(None))], now_ms=T0 + 2)
    assert await sent_in_order(queue, T0 + 3) == [later]


async def test_a_line_after_a_higher_one_was_sent_is_still_pushed_after_it(
    queue: RelayQueue,
) -> None:
    nine = (await queue.enqueue(chat_line(9), now_ms=T0)).id
    claim = await claim_one(queue, T0)
    eight = (await queue.enqueue(chat_line(8), now_ms=T0 + 1)).id
    await queue.settle([(claim, Retry("ServiceUnavailable", 0, 503))], now_ms=T0 + 2)
    # The retrying head may have reached the phone: it is never overtaken; 8, never sent, is.
    seven = (await queue.enqueue(chat_line(7), now_ms=T0 + 3)).id
    assert await state_of(queue, nine) is DeliveryState.RETRYING
    assert await sent_in_order(queue, T0 + 4) == [nine, seven, eight]
    one = (await queue.enqueue(chat_line(1), now_ms=T0 + 5)).id
    assert await sent_in_order(queue, T0 + 6) == [one]
    totals = await queue.totals(now_ms=T0 + 6)
    assert (totals.delivered, totals.pending) == (4, 0)


async def test_a_line_whose_lease_ran_out_is_never_overtaken(queue: RelayQueue) -> None:
    """Invariant 12: its vanished holder may have sent it, though no attempt was settled."""
    nine = (await queue.enqueue(chat_line(9), now_ms=T0)).id
    await claim_one(queue, T0)  # a worker that dies with it
    now = T0 + queue.limits.lease_ms
    await queue.claim(0, now_ms=now)  # reaps the run-out lease
    eight = (await queue.enqueue(chat_line(8), now_ms=now + 1)).id
    assert await sent_in_order(queue, now + 2) == [nine, eight]


async def test_order_is_kept_per_group_and_unordered_ones_stay_fifo(queue: RelayQueue) -> None:
    other_session = (await queue.enqueue(chat_line(9, session="chat-2"), now_ms=T0)).id
    callback = (await queue.enqueue(note(service_id="s1"), now_ms=T0 + 1)).id
    five = (await queue.enqueue(chat_line(5), now_ms=T0 + 2)).id
    ended = (await queue.enqueue(chat_line(None), now_ms=T0 + 3)).id  # no position: the tail
    three = (await queue.enqueue(chat_line(3), now_ms=T0 + 4)).id
    assert await sent_in_order(queue, T0 + 5) == [other_session, callback, three, five, ended]


async def test_an_enqueue_sent_twice_is_stored_once(queue: RelayQueue) -> None:
    """redis-py re-sends a command whose reply was lost; the second run must not double it."""
    calls, _ = queue._enqueue_calls([(note(), None)], T0)
    first, again = await queue.run_scripts(calls), await queue.run_scripts(calls)
    assert first[0][0][:2] == again[0][0][:2]
    device = await queue.device(APP, TOKEN_A)
    assert device.pending == 1
    assert (await queue.totals(now_ms=T0)).enqueued == 1


async def test_a_head_without_its_payload_is_failed_not_handed_out(
    queue: RelayQueue, redis: aioredis.Redis
) -> None:
    lost = (await queue.enqueue(note(), now_ms=T0)).id
    behind = (await queue.enqueue(note(service_id="s2"), now_ms=T0 + 1)).id
    await corrupt(redis, lost, lambda record: record[: -len(note().payload)])
    assert (await claim_one(queue, T0 + 2)).id == behind
    status = await queue.get(lost)
    assert status is not None
    assert (status.state, status.last_reason) == (DeliveryState.FAILED, "MissingPayload")


@pytest.mark.parametrize("shards", [3, 16, 64])
def test_shard_tags_spread_evenly_over_the_cluster_slots(shards: int) -> None:
    """Any number of shards lands evenly on the 16,384 slots, so on a cluster's primaries."""
    slots = sorted(key_slot(shard_tag(shard).encode()) for shard in range(shards))
    even = 16384 / shards
    gaps = [b - a for a, b in zip(slots, [*slots[1:], slots[0] + 16384], strict=True)]
    assert all(0.5 * even < gap < 1.5 * even for gap in gaps), gaps


# ---- routes: parking an open route's devices, probing, draining ----

OTHER_APP = "com.example.other"


async def test_an_open_routes_devices_are_parked_not_claimed_and_drain_in_order_after(
    queue: RelayQueue,
) -> None:
    first = await queue.enqueue(note(TOKEN_A, body="1"), now_ms=T0)
    second = await queue.enqueue(note(TOKEN_A, body="2"), now_ms=T0 + 1)
    await queue.enqueue(note(TOKEN_B), now_ms=T0 + 2)
    other = await queue.enqueue(replace(note(TOKEN_A), app=OTHER_APP), now_ms=T0 + 3)
    routes = {APP: False, OTHER_APP: True}

    batch = await queue.claim(10, now_ms=T0 + 10, routes=routes)
    assert [c.id for c in batch.claimed] == [other.id]  # the other app is not held up
    assert await queue.parked(APP) == 2
    assert await queue.next_due_ms() is not None  # the other app's lease, nothing of APP due
    assert (await queue.claim(10, now_ms=T0 + 20, routes=routes)).claimed == []
    # A new notification for a parked device waits behind the parked head.
    await queue.enqueue(note(TOKEN_A, body="3"), now_ms=T0 + 30)
    assert (await queue.claim(10, now_ms=T0 + 40, routes=routes)).claimed == []
    totals = await queue.totals(now_ms=T0 + 40)
    assert (totals.pending, totals.devices_pending) == (5, 3)

    # The route sends again: the parked devices are due at the time they had, in device order.
    sending = {APP: True, OTHER_APP: True}
    batch = await queue.claim(10, now_ms=T0 + 50, routes=sending)
    assert await queue.parked(APP) == 0
    heads = {c.notification.device_token: c for c in batch.claimed}
    assert heads[TOKEN_A].id == first.id
    assert set(heads) == {TOKEN_A, TOKEN_B}
    await queue.settle([(heads[TOKEN_A], Delivered("x"))], now_ms=T0 + 60)
    assert (await claim_one(queue, T0 + 70)).id == second.id


async def test_claim_parked_takes_one_probe_the_longest_parked_first(queue: RelayQueue) -> None:
    tokens = [f"{i:064x}" for i in range(6)]
    ids = [(await queue.enqueue(note(t), now_ms=T0 + i)).id for i, t in enumerate(tokens)]
    await queue.claim(10, now_ms=T0 + 10, routes={APP: False})
    assert await queue.parked(APP) == 6
    assert (await queue.claim_parked(OTHER_APP, now_ms=T0 + 20)).claimed == []

    probe = await queue.claim_parked(APP, now_ms=T0 + 20)
    assert [c.id for c in probe.claimed] == [ids[0]]
    assert await queue.parked(APP) == 5
    # The probe failed: given back unsent, it is parked again at the next claim, now the youngest.
    await queue.release(probe.claimed, now_ms=T0 + 30)
    await queue.claim(10, now_ms=T0 + 40, routes={APP: False})
    assert [c.id for c in (await queue.claim_parked(APP, now_ms=T0 + 50)).claimed] == [ids[1]]


async def test_a_parked_head_that_expired_is_finalised_when_probed_or_drained(
    queue: RelayQueue,
) -> None:
    stale = await queue.enqueue(note(TOKEN_A, expires_in_s=1), now_ms=T0)
    live = await queue.enqueue(note(TOKEN_A), now_ms=T0 + 1)
    await queue.claim(10, now_ms=T0 + 10, routes={APP: False})
    probe = await queue.claim_parked(APP, now_ms=T0 + 5_000)
    assert [r.id for r in probe.expired] == [stale.id]
    assert [c.id for c in probe.claimed] == [live.id]
    assert await state_of(queue, stale.id) is DeliveryState.EXPIRED


# ---- one bad record hurts only itself (invariant 14) ----

# Ways a record can reach Redis malformed (an older version's record, a bug, a hand edit): each
# rewrites the stored record (relay.store.queued's layout). The first ones break what the scripts
# read (the header, the string lengths, the device the record belongs to), the rest only what the
# codec checks (relay.core.payload.check_notification, ingest's own rules).
Corruption = Callable[[bytes], bytes]


def changed(**values: int | bytes | None) -> Corruption:
    """The record with header fields (ints) or strings (bytes, None: absent) replaced."""

    def apply(record: bytes) -> bytes:
        numbers, strings, payload = unpack_queued(record)
        header = dict(zip(HEADER_FIELDS, numbers, strict=True))
        for name, value in values.items():
            if name in header:
                assert isinstance(value, int)
                header[name] = value
            else:
                assert name in NOTE_STRINGS
                assert not isinstance(value, int)
                strings[name] = value
        return pack_record(tuple(header.values()), strings, payload)

    return apply


def length_past_the_end(record: bytes) -> bytes:
    """The last string's length (last_reason's, absent) made longer than the record."""
    _, _, payload = unpack_queued(record)
    at = len(record) - len(payload) - 2
    return record[:at] + b"\xff\xf0" + record[at + 2 :]


CORRUPTIONS: dict[str, Corruption] = {
    "layout unknown": changed(layout=9),
    "header cut short": lambda record: record[:20],
    "state code unknown": changed(state=200),
    "claim_no at its limit": changed(claim_no=2**32 - 1),
    "a length past the end": length_past_the_end,
    "app of another device": changed(app=b"other"),
    "device_token missing": changed(device_token=None),
    "device_token of another device": changed(device_token=b"\x01" * 32),
    "priority 7": changed(priority=7),
    "push_type unknown": changed(push_type=200),
    "service_id not text": changed(service_id=b"\xff\xfe"),
    "action climbing out": changed(action=b"../admin"),
    "collapse_id padded": changed(collapse_id=b" x "),
    "order text": changed(order=b"first"),
}


async def corrupt(redis: aioredis.Redis, notification_id: str, corruption: Corruption) -> None:
    note_key = f"{shard_prefix(shard_of_id(notification_id) or 0)}{NOTE}{notification_id}"
    record = await redis.get(note_key)
    assert isinstance(record, bytes)
    await redis.set(note_key, corruption(record))


async def reason_of(queue: RelayQueue, notification_id: str) -> tuple[str, str | None]:
    status = await queue.get(notification_id)
    assert status is not None
    return status.state.value, status.last_reason


@pytest.mark.parametrize("corruption", CORRUPTIONS)
async def test_a_malformed_head_is_failed_at_claim_and_the_rest_go_on(
    redis: aioredis.Redis, queue: RelayQueue, corruption: str
) -> None:
    poisoned = (await queue.enqueue(note(), now_ms=T0)).id
    behind = (await queue.enqueue(note(), now_ms=T0)).id
    other_device = (await queue.enqueue(note(TOKEN_B), now_ms=T0)).id
    await corrupt(redis, poisoned, CORRUPTIONS[corruption])
    claimed: list[str] = []
    malformed = []
    for now in (T0 + 1, T0 + 2):  # a head the codec refused is failed after the claim's reply
        batch = await queue.claim(10, now_ms=now)
        assert batch.errors == []
        claimed += (c.id for c in batch.claimed)
        malformed += batch.malformed
    assert sorted(claimed) == sorted([behind, other_device])
    assert [m.id for m in malformed] == [poisoned]
    assert malformed[0].device == f"{APP}:{TOKEN_A}"
    assert await reason_of(queue, poisoned) == ("failed", "MalformedRecord")
    totals = await queue.totals(now_ms=T0 + 2)
    assert (totals.failed, totals.pending) == (1, 2)


async def test_a_malformed_record_behind_the_head_fails_no_enqueue(
    redis: aioredis.Redis, queue: RelayQueue
) -> None:
    line = replace(note(), order_group="chat", order=5)
    queued = (await queue.enqueue(line, now_ms=T0)).id
    await corrupt(redis, queued, changed(order=b"five"))
    earlier = await queue.enqueue(replace(line, order=3), now_ms=T0 + 1)
    assert not earlier.duplicate


async def test_a_script_error_on_one_device_sets_it_aside_and_the_claim_goes_on(
    redis: aioredis.Redis, queue: RelayQueue
) -> None:
    broken = (await queue.enqueue(note(), now_ms=T0)).id
    fine = (await queue.enqueue(note(TOKEN_B), now_ms=T0)).id
    # A record that makes a command inside the script fail (a wrong type), which no check foresaw.
    key = f"{shard_prefix(queue.shard_of(APP, TOKEN_A))}{NOTE}{broken}"
    record = await redis.get(key)
    assert isinstance(record, bytes)
    await redis.delete(key)
    await redis.hset(key, "not", "a string")
    batch = await queue.claim(10, now_ms=T0)
    assert [c.id for c in batch.claimed] == [fine]
    (error,) = batch.errors
    assert (error.device, "WRONGTYPE" in error.error) == (f"{APP}:{TOKEN_A}", True)
    # Set aside, not lost: due again a minute later, its record as it was.
    early = await queue.claim(10, now_ms=T0 + 59_999)
    assert broken not in {c.id for c in early.claimed}
    assert (await queue.device(APP, TOKEN_A)).pending == 1
    await redis.delete(key)
    await redis.set(key, record)
    assert [c.id for c in (await queue.claim(10, now_ms=T0 + 60_000)).claimed] == [broken]


async def test_a_settle_that_meets_an_error_sets_its_device_aside_and_the_rest_apply(
    redis: aioredis.Redis, queue: RelayQueue
) -> None:
    """A key of one device's re-typed between its claim and its settle: before, the shard's
    whole settle script stopped part-way (the settles ahead of it written but never counted,
    the ones behind it never written) and the worker wrote it again every half second."""
    first, broken_token, last = tokens_in_one_shard(queue, 3)
    tokens = (first, broken_token, last)
    ids = [(await queue.enqueue(note(token), now_ms=T0)).id for token in tokens]
    behind = (await queue.enqueue(note(broken_token), now_ms=T0)).id
    claims = (await queue.claim(10, now_ms=T0)).claimed
    assert sorted(c.id for c in claims) == sorted(ids)
    key = f"{shard_prefix(0)}{NOTE}{ids[1]}"
    record = await redis.get(key)
    assert isinstance(record, bytes)
    await redis.delete(key)
    await redis.hset(key, "not", "a string")
    by_token = {c.notification.device_token: c for c in claims}
    ordered = [by_token[token] for token in tokens]  # one script call, the broken one between
    (error,) = await queue.settle([(c, Delivered(None)) for c in ordered], now_ms=T0 + 1)
    assert (error.shard, error.device, "WRONGTYPE" in error.error) == (
        0,
        f"{APP}:{broken_token}",
        True,
    )
    assert [await reason_of(queue, i) for i in (ids[0], ids[2])] == [("delivered", None)] * 2
    totals = await queue.totals(now_ms=T0 + 1)
    assert (totals.pending, totals.delivered) == (2, 2)  # the broken one and the one behind it
    assert (await queue.device(APP, broken_token)).pending == 2
    # Set aside as a claim sets one aside: claimed again a minute later, nothing of it written.
    assert (await queue.claim(10, now_ms=T0 + 59_999)).claimed == []
    await redis.delete(key)
    await redis.set(key, record)
    (again,) = (await queue.claim(10, now_ms=T0 + 60_001)).claimed
    assert again.id == ids[1]
    assert await queue.settle([(again, Delivered(None))], now_ms=T0 + 60_002) == []
    (next_one,) = (await queue.claim(10, now_ms=T0 + 60_003)).claimed
    assert next_one.id == behind


async def test_a_dead_token_fails_the_devices_queue_past_a_record_of_another_type(
    redis: aioredis.Redis, queue: RelayQueue
) -> None:
    head = (await queue.enqueue(note(), now_ms=T0)).id
    broken = (await queue.enqueue(note(), now_ms=T0)).id
    behind = (await queue.enqueue(note(), now_ms=T0)).id
    (claim,) = (await queue.claim(10, now_ms=T0)).claimed
    key = f"{shard_prefix(queue.shard_of(APP, TOKEN_A))}{NOTE}{broken}"
    await redis.delete(key)
    await redis.hset(key, "not", "a string")
    dead = Failed("Unregistered", 410, dead_token=True)
    assert await queue.settle([(claim, dead)], now_ms=T0 + 1) == []
    assert await reason_of(queue, head) == ("failed", "Unregistered")
    assert await reason_of(queue, behind) == ("failed", "Unregistered")
    assert (await queue.totals(now_ms=T0 + 1)).pending == 0
    assert (await queue.device(APP, TOKEN_A)).pending == 0


async def test_a_script_error_on_one_shard_fails_only_that_shards_claim(
    redis: aioredis.Redis, queue: RelayQueue
) -> None:
    tokens = [f"{i:02x}" * 32 for i in range(40)]
    by_shard = {queue.shard_of(APP, token): token for token in tokens}
    assert len(by_shard) >= 3
    for token in by_shard.values():
        await queue.enqueue(note(token), now_ms=T0)
    broken_shard = min(by_shard)
    await redis.delete(f"{shard_prefix(broken_shard)}lease")
    await redis.set(f"{shard_prefix(broken_shard)}lease", "not a sorted set")
    batch = await queue.claim(100, now_ms=T0)
    assert {c.notification.device_token for c in batch.claimed} == {
        token for shard, token in by_shard.items() if shard != broken_shard
    }
    assert [(e.shard, e.device) for e in batch.errors] == [(broken_shard, None)]


async def test_one_poisoned_record_per_shard_costs_only_itself(
    redis: aioredis.Redis, queue: RelayQueue
) -> None:
    """Issue 27: one record with expires_at null made every claim fail, on every shard."""
    shards = queue.limits.shards
    tokens = [f"{i:04x}" * 16 for i in range(200)]
    valid: set[str] = set()
    poisoned: dict[int, str] = {}
    kinds = list(CORRUPTIONS.values())
    for token in tokens:
        shard = queue.shard_of(APP, token)
        accepted = (await queue.enqueue(note(token), now_ms=T0)).id
        if shard not in poisoned:
            poisoned[shard] = accepted
            await corrupt(redis, accepted, kinds[shard % len(kinds)])
        else:
            valid.add(accepted)
        valid.add((await queue.enqueue(note(token), now_ms=T0 + 1)).id)
    assert len(poisoned) == shards
    delivered: set[str] = set()
    malformed: set[str] = set()
    now = T0 + 2
    while batch := await queue.claim(50, now_ms=now):
        assert batch.errors == []
        malformed |= {m.id for m in batch.malformed}
        if not batch.claimed and not batch.malformed:
            break
        await queue.settle([(c, Delivered(None)) for c in batch.claimed], now_ms=now)
        delivered |= {c.id for c in batch.claimed}
        now += 1
    assert delivered == valid
    assert malformed == set(poisoned.values())
    for notification_id in poisoned.values():
        assert await reason_of(queue, notification_id) == ("failed", "MalformedRecord")
    assert (await queue.totals(now_ms=now)).pending == 0


# ---- the record layout: an upgrade never strands queued work ----


async def test_a_relay_starts_on_an_empty_redis_and_marks_its_layout(
    redis: aioredis.Redis, queue: RelayQueue
) -> None:
    assert await queue.layout_refusal() is None
    layouts = {await redis.get(f"{shard_prefix(s)}layout") for s in range(queue.limits.shards)}
    assert layouts == {str(QUEUED_LAYOUT).encode()}
    await queue.enqueue(note(), now_ms=T0)
    assert await queue.layout_refusal() is None  # its own work queued: still its layout


async def test_work_queued_by_an_older_layout_refuses_the_start_naming_the_fix(
    redis: aioredis.Redis, queue: RelayQueue
) -> None:
    """Layout 1 marked no layout and kept each record in a HASH."""
    old = (await queue.enqueue(note(), now_ms=T0)).id
    await queue.enqueue(note(), now_ms=T0)
    prefix = shard_prefix(queue.shard_of(APP, TOKEN_A))
    await redis.delete(f"{prefix}layout", f"{prefix}{NOTE}{old}")
    await redis.hset(f"{prefix}{NOTE}{old}", mapping={"state": "queued", "app": APP})
    refusal = await queue.layout_refusal()
    assert refusal is not None
    assert "2 notifications queued by a relay of queued-record layout 1" in refusal
    assert "drain them with that version first" in refusal
    assert "\n" not in refusal
    assert await redis.get(f"{prefix}layout") is None  # nothing marked
    # Drained by the previous version: the start goes on, and the shard is marked.
    await redis.delete(f"{prefix}{NOTE}{old}")
    await redis.set(f"{prefix}{NOTE}{old}", b"")
    assert await queue.layout_refusal() is None
    assert await redis.get(f"{prefix}layout") == str(QUEUED_LAYOUT).encode()


async def test_work_queued_before_the_check_in_this_layout_is_this_layouts(
    redis: aioredis.Redis, queue: RelayQueue
) -> None:
    """A spool replayed as the relay starts may queue before the check runs: not refused."""
    await queue.enqueue(note(), now_ms=T0)
    await redis.delete(f"{shard_prefix(queue.shard_of(APP, TOKEN_A))}layout")
    assert await queue.layout_refusal() is None


async def test_an_older_layouts_record_met_anyway_is_set_aside_never_lost(
    redis: aioredis.Redis, queue: RelayQueue
) -> None:
    """A record of layout 1 (a HASH) queued behind the check's back (an old api still running):
    its device is set aside, its status reads as malformed (409), enqueue to it goes on."""
    old = (await queue.enqueue(note(), now_ms=T0)).id
    key = f"{shard_prefix(queue.shard_of(APP, TOKEN_A))}{NOTE}{old}"
    await redis.delete(key)
    await redis.hset(key, mapping={"state": "queued", "app": APP, "device_token": TOKEN_A})
    other = (await queue.enqueue(note(TOKEN_B), now_ms=T0)).id
    batch = await queue.claim(10, now_ms=T0 + 1)
    assert [c.id for c in batch.claimed] == [other]
    assert [e.device for e in batch.errors] == [f"{APP}:{TOKEN_A}"]
    with pytest.raises(MalformedRecordError):
        await queue.get(old)
    assert not (await queue.enqueue(note(service_id="later"), now_ms=T0 + 2)).duplicate
    assert (await queue.device(APP, TOKEN_A)).pending == 2
