"""The worker against a fake Sender: claim -> send -> settle for every outcome of the policy
table (relay.core.policy), on a real Valkey; no TLS, no APNs client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import redis.asyncio as aioredis
from eventually import eventually

from relay.core.model import ApnsResponse, DeliveryState, Notification, Route, apns_id_for
from relay.core.policy import RetryPolicy
from relay.delivery.sender import Sender
from relay.delivery.worker import CLAIMS_FAILING_READY_S, DUE_REREAD_S, DeliveryWorker
from relay.store.keys import shard_prefix
from relay.store.queue import RelayQueue
from relay.store.records import NotificationStatus, QueueLimits
from relay.store.refusals import DeadToken

TOKEN = "cd" * 32
APP = "app"
ROUTE = Route(APP, "sandbox", "127.0.0.1:9")


@dataclass
class ScriptedSender:
    """Answers each send with the next scripted response (the last one repeats)."""

    answers: list[ApnsResponse]
    route: Route = ROUTE
    max_in_flight: int = 8
    sent: list[str] = field(default_factory=list)
    refreshed: int = 0

    async def send(
        self, notification: Notification, apns_id: str, on_wire: Callable[[], None] = lambda: None
    ) -> ApnsResponse:
        on_wire()
        self.sent.append(apns_id)
        return self.answers[min(len(self.sent), len(self.answers)) - 1]

    def refresh_jwt(self) -> bool:
        self.refreshed += 1
        return True

    async def close(self) -> None:
        return None


def ok() -> ApnsResponse:
    return ApnsResponse(200, apns_id="00000000-0000-0000-0000-000000000001")


@dataclass(frozen=True)
class Row:
    answers: list[ApnsResponse]
    state: DeliveryState | None  # the final state; None: not final (the app paused)
    sends: int
    last_reason: str | None = None
    dead_token: bool = False
    refreshed: int = 0
    paused: bool = False


ROWS = {
    "200 delivered": Row([ok()], DeliveryState.DELIVERED, 1),
    "400 BadDeviceToken: failed, token dead": Row(
        [ApnsResponse(400, "BadDeviceToken")], DeliveryState.FAILED, 1, "BadDeviceToken", True
    ),
    "400 other: failed, token kept": Row(
        [ApnsResponse(400, "PayloadTooLarge")], DeliveryState.FAILED, 1, "PayloadTooLarge"
    ),
    "400 IdleTimeout: resent at once": Row(
        [ApnsResponse(400, "IdleTimeout"), ok()], DeliveryState.DELIVERED, 2
    ),
    "400 IdleTimeout every time: failed at max_attempts": Row(
        [ApnsResponse(400, "IdleTimeout")], DeliveryState.FAILED, 3, "IdleTimeout"
    ),
    "403 ExpiredProviderToken: fresh token, resent": Row(
        [ApnsResponse(403, "ExpiredProviderToken"), ok()], DeliveryState.DELIVERED, 2, refreshed=1
    ),
    "403 InvalidProviderToken: the app pauses": Row(
        [ApnsResponse(403, "InvalidProviderToken")], None, 1, paused=True
    ),
    "410 Unregistered: failed, token dead": Row(
        [ApnsResponse(410, "Unregistered", timestamp_ms=1)],
        DeliveryState.FAILED,
        1,
        "Unregistered",
        True,
    ),
    "429 TooManyRequests: retried": Row(
        [ApnsResponse(429, "TooManyRequests"), ok()], DeliveryState.DELIVERED, 2
    ),
    "500 InternalServerError: retried": Row(
        [ApnsResponse(500, "InternalServerError"), ok()], DeliveryState.DELIVERED, 2
    ),
    "503 ServiceUnavailable: retried": Row(
        [ApnsResponse(503, "ServiceUnavailable"), ok()], DeliveryState.DELIVERED, 2
    ),
    "transport failure: retried": Row([ApnsResponse(0), ok()], DeliveryState.DELIVERED, 2),
    "certificate refused in the handshake: the app pauses": Row(
        [ApnsResponse(0, "CertificateRefused:certificate_expired")], None, 1, paused=True
    ),
}


def notification(expires_in_s: int = 60) -> Notification:
    return Notification(
        app=APP,
        device_token=TOKEN,
        payload=b"{}",
        push_type="alert",
        priority=10,
        expires_at=int(time.time()) + expires_in_s,
    )


def counting(queue: RelayQueue, method: str) -> list[int]:
    """Count the calls of this one queue's `method` (not the class's): the count is [0]."""
    calls = [0]
    original = getattr(queue, method)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return await original(*args, **kwargs)

    setattr(queue, method, counted)
    return calls


async def settled(
    queue: RelayQueue, notification_id: str, done: Callable[[NotificationStatus], bool]
) -> NotificationStatus:
    async def finished() -> NotificationStatus | None:
        status = await queue.get(notification_id)
        assert status is not None
        return status if done(status) else None

    return await eventually(finished, what=f"{notification_id} settled")


@pytest.mark.parametrize("name", ROWS)
async def test_the_worker_settles_each_policy_outcome(name: str, redis: aioredis.Redis) -> None:
    row = ROWS[name]
    queue = RelayQueue(redis, QueueLimits())
    sender = ScriptedSender(row.answers)
    clients: dict[str, Sender] = {APP: sender}
    worker = DeliveryWorker(
        queue,
        clients,
        retry=RetryPolicy(base_ms=10, cap_ms=50, max_attempts=3),
        pause_probe_s=60,
    )
    accepted = await queue.enqueue(notification())
    running = asyncio.create_task(worker.run(grace_s=1))
    try:
        if row.paused:
            await eventually(lambda: APP in worker.paused_apps, what="the app paused")
            status = await queue.get(accepted.id)
            assert status is not None
            assert status.state not in (DeliveryState.DELIVERED, DeliveryState.FAILED)
        else:
            status = await settled(queue, accepted.id, lambda s: s.state is row.state)
            assert status.last_reason == row.last_reason
    finally:
        worker.stop()
        await running
    assert len(sender.sent) == row.sends
    assert len(set(sender.sent)) == 1  # every attempt of one notification carries its apns-id
    assert sender.refreshed == row.refreshed
    if row.dead_token:
        with pytest.raises(DeadToken):
            await queue.enqueue(notification())
    else:
        await queue.enqueue(notification())  # the token stays usable


async def test_an_answer_too_late_for_the_lifetime_expires_the_notification(
    redis: aioredis.Redis,
) -> None:
    """A retry that could not happen before expires_at settles as EXPIRED: nothing is sent stale."""
    queue = RelayQueue(redis, QueueLimits())
    sender = ScriptedSender([ApnsResponse(429, "TooManyRequests")])
    worker = DeliveryWorker(
        queue, {APP: sender}, retry=RetryPolicy(base_ms=10, cap_ms=120_000, max_attempts=5)
    )
    accepted = await queue.enqueue(notification(expires_in_s=2))
    running = asyncio.create_task(worker.run(grace_s=1))
    try:
        status = await settled(queue, accepted.id, lambda s: s.state is DeliveryState.EXPIRED)
    finally:
        worker.stop()
        await running
    assert status.state is DeliveryState.EXPIRED
    assert len(sender.sent) == 1


async def test_a_trickle_of_pushes_costs_no_due_time_read_per_push(
    redis: aioredis.Redis,
) -> None:
    # Reading every shard's next due time before each wait cost a round trip (32 ZRANGEs) per
    # notification at low rates (101 reads for 100 pushes); a read is trusted for DUE_REREAD_S
    # while the time it gave is still ahead.
    queue = RelayQueue(redis, QueueLimits(shards=16))
    reads = counting(queue, "next_due_ms")
    sender = ScriptedSender([ok()])
    worker = DeliveryWorker(queue, {APP: sender})
    running = asyncio.create_task(worker.run(grace_s=1))
    try:
        started = time.monotonic()
        for n in range(100):  # 100 devices, one push each, about 200 a second
            await queue.enqueue(replace(notification(), device_token=f"{n:064x}"))
            await asyncio.sleep(0.005)  # pacing the trickle (the behaviour under test)
        await eventually(lambda: len(sender.sent) == 100, what="all 100 sent")
        elapsed = time.monotonic() - started
    finally:
        worker.stop()
        await running
    # About one read per DUE_REREAD_S, and one more after each wait that found its time passed.
    assert reads[0] <= 3 + 2 * elapsed / DUE_REREAD_S, (reads[0], elapsed)


async def test_a_shard_whose_claims_fail_is_reported_by_readiness_while_the_rest_deliver(
    redis: aioredis.Redis,
) -> None:
    """Issue 27: a claim script failing on every shard left /readyz ready and the log saying
    only redis_unavailable. Now a failing shard costs only its own devices, and says so."""
    queue = RelayQueue(redis, QueueLimits(shards=4))
    tokens = {queue.shard_of(APP, f"{n:064x}"): f"{n:064x}" for n in range(40)}
    assert len(tokens) == 4
    ids = {
        shard: (await queue.enqueue(replace(notification(), device_token=token))).id
        for shard, token in tokens.items()
    }
    broken_lease = shard_prefix(0) + "lease"
    await redis.set(broken_lease, "not a sorted set")  # every claim script on shard 0 errors
    sender = ScriptedSender([ok()])
    skew = [0.0]
    worker = DeliveryWorker(queue, {APP: sender}, clock=lambda: time.time() + skew[0])
    running = asyncio.create_task(worker.run(grace_s=1))
    try:
        await eventually(lambda: len(sender.sent) == 3, what="the three sound shards delivered")
        assert worker.delivery_failing() is None  # not for long enough yet
        skew[0] = CLAIMS_FAILING_READY_S + 1
        reason = await eventually(worker.delivery_failing, what="readiness says claims fail")
        assert "shard 0" in reason
        assert "WRONGTYPE" in reason
        await redis.delete(broken_lease)
        await settled(queue, ids[0], lambda s: s.state is DeliveryState.DELIVERED)
        await eventually(lambda: worker.delivery_failing() is None, what="readiness again")
    finally:
        worker.stop()
        await running


async def test_settles_carried_by_the_next_claims_keep_each_device_in_order_and_lose_none(
    redis: aioredis.Redis,
) -> None:
    # A settle window that never ends: every settle reaches Redis only in the round trip of a
    # claim that follows it. A settle a claim took and dropped leaves its notification SENDING
    # and its device stuck behind it; one written after the claim it should precede, or twice,
    # shows in the order or the count of sends.
    queue = RelayQueue(redis, QueueLimits(shards=16))
    written_alone = counting(queue, "write_settlement")
    ordered = [(await queue.enqueue(notification())).id for _ in range(5)]
    sender = ScriptedSender([ok()])
    worker = DeliveryWorker(queue, {APP: sender}, settle_window_s=3600)
    running = asyncio.create_task(worker.run(grace_s=1))
    try:
        others = []
        for n in range(40):  # other devices' pushes, a steady trickle: claims to carry settles
            pushed = await queue.enqueue(replace(notification(), device_token=f"{n:064x}"))
            others.append(pushed.id)
            await asyncio.sleep(0.005)  # pacing the trickle (the behaviour under test)
        for notification_id in ordered:
            await settled(queue, notification_id, lambda s: s.state is DeliveryState.DELIVERED)
        assert written_alone[0] == 0  # every settle so far went with a claim
    finally:
        worker.stop()
        await running
    by_apns_id = {apns_id_for(i): i for i in ordered + others}
    sent = [by_apns_id[apns_id] for apns_id in sender.sent]
    assert [i for i in sent if i in ordered] == ordered  # the device's order, each sent once
    assert sorted(sent) == sorted(ordered + others)
    # What waited at the stop was written then, in one round trip.
    assert written_alone[0] <= 1
    states = {(await queue.get(i) or status_missing(i)).state for i in ordered + others}
    assert states == {DeliveryState.DELIVERED}


def status_missing(notification_id: str) -> NotificationStatus:
    raise AssertionError(f"{notification_id}: no status")
