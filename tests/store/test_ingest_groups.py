"""Concurrent requests' enqueues through Ingest against a real Valkey: stored in fewer script calls
than notifications, each request answered with its own outcome, and one request's refusal or bad
record answering only that request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY
from test_queue import APP, T0, TOKEN_A, TOKEN_B, claim_one_of, note, tokens_in_one_shard

from relay.core.model import Failed, Notification
from relay.ingest.hold import Ingest
from relay.store.codec import text
from relay.store.connection import ReplicaAcknowledgement, ReplicasBehind
from relay.store.keys import DEAD, QUEUE, STATS, shard_prefix
from relay.store.queue import RelayQueue
from relay.store.records import Accepted, QueueLimits
from relay.store.refusals import DeadToken, DeviceQueueFull, StoredKeyUnreadable


@pytest.fixture
async def queue(redis: aioredis.Redis) -> AsyncIterator[RelayQueue]:
    relay_queue = RelayQueue(redis, QueueLimits(max_per_device=2))
    yield relay_queue
    await relay_queue.aclose()


def enqueue_calls() -> float:
    value = REGISTRY.get_sample_value("apns_relay_redis_script_calls_total", {"script": "enqueue"})
    return value or 0.0


def held(outcome: str) -> float:
    value = REGISTRY.get_sample_value("apns_relay_ingest_held_total", {"outcome": outcome})
    return value or 0.0


def pushes(count: int) -> list[Notification]:
    return [note(f"{i:064x}", body=f"push {i}") for i in range(count)]


async def accept_all(
    ingest: Ingest, notifications: list[Notification], ids: list[str]
) -> list[Accepted | BaseException]:
    """Every accept started at once, as concurrent requests are."""
    return await asyncio.gather(
        *(ingest.accept(n, i) for n, i in zip(notifications, ids, strict=True)),
        return_exceptions=True,
    )


async def test_concurrent_accepts_share_script_calls_and_each_gets_its_own_answer(
    queue: RelayQueue,
) -> None:
    ingest = Ingest(queue, hold_s=1.0)
    await ingest.accept(note(body="warm-up: the script loaded"))
    notifications = pushes(200)
    ids = [queue.new_id(n) for n in notifications]
    before = enqueue_calls()
    answers = await accept_all(ingest, notifications, ids)
    calls = enqueue_calls() - before
    # The first alone, the other 199 in one group of one call per shard.
    assert calls <= 1 + queue.limits.shards
    assert answers == [Accepted(i, duplicate=False) for i in ids]
    for n, notification_id in zip(notifications, ids, strict=True):
        status = await queue.get(notification_id)
        assert status is not None
        assert status.device_token == n.device_token
    assert (await queue.totals()).pending == 201


async def test_a_devices_concurrent_pushes_are_queued_in_arrival_order(
    redis: aioredis.Redis,
) -> None:
    queue = RelayQueue(redis, QueueLimits())
    ingest = Ingest(queue, hold_s=1.0)
    others = pushes(16)
    mine = [note(TOKEN_A, body=f"mine {i}") for i in range(8)]
    group = [n for k in range(8) for n in (mine[k], others[2 * k], others[2 * k + 1])]
    ids = [queue.new_id(n) for n in group]
    answers = await accept_all(ingest, group, ids)
    assert answers == [Accepted(i, duplicate=False) for i in ids]
    device = f"{APP}:{TOKEN_A}"
    queued = await redis.lrange(shard_prefix(queue.shard_of(APP, TOKEN_A)) + QUEUE + device, 0, -1)
    assert [text(q) for q in queued] == [i for n, i in zip(group, ids, strict=True) if n in mine]


async def test_one_at_a_time_each_accept_is_one_call_as_before(queue: RelayQueue) -> None:
    ingest = Ingest(queue, hold_s=1.0)
    before = enqueue_calls()
    for n in pushes(5):
        await ingest.accept(n)
    assert enqueue_calls() - before == 5


async def test_a_refusal_in_a_group_answers_only_its_own_request(queue: RelayQueue) -> None:
    dead, full = TOKEN_A, TOKEN_B
    await queue.enqueue(note(dead), now_ms=T0)
    claim = await claim_one_of(queue, dead, T0)
    await queue.settle(
        [(claim, Failed("Unregistered", 410, dead_token=True, token_invalid_since_ms=T0))],
        now_ms=T0 + 1,
    )
    for _ in range(2):  # the per-device cap
        await queue.enqueue(note(full), now_ms=T0)
    kept = await queue.enqueue(note("c3" * 32, idempotency_key="k"), now_ms=T0)

    ingest = Ingest(queue, hold_s=1.0)
    good = pushes(6)
    group = [
        good[0],  # alone: the others arrive while it is written
        good[1],
        note(dead, body="to a dead token"),
        good[2],
        note(full, body="to a full device"),
        good[3],
        note("c3" * 32, idempotency_key="k", body="a retry"),
        good[4],
        good[5],
    ]
    ids = [queue.new_id(n) for n in group]
    before = enqueue_calls()
    answers = await accept_all(ingest, group, ids)
    assert enqueue_calls() - before < len(group)
    assert isinstance(answers[2], DeadToken)
    assert isinstance(answers[4], DeviceQueueFull)
    assert answers[6] == Accepted(kept.id, duplicate=True)
    stored = [0, 1, 3, 5, 7, 8]
    assert [answers[i] for i in stored] == [Accepted(ids[i], duplicate=False) for i in stored]
    for i in stored:
        assert await queue.get(ids[i]) is not None
    for i in (2, 4):
        assert await queue.get(ids[i]) is None


async def test_a_bad_record_in_a_group_fails_only_its_own_request(
    queue: RelayQueue, redis: aioredis.Redis
) -> None:
    """A device whose dead-token key is not a hash (a key this relay did not write) is refused
    alone, by the group's one call: the others are stored and counted by it, the group is not
    cut."""
    tokens = tokens_in_one_shard(queue, 6)
    bad = tokens[3]
    await redis.set(shard_prefix(0) + DEAD + f"{APP}:{bad}", "not a hash")
    ingest = Ingest(queue, hold_s=0.3)
    group = [note(token, body=f"to {token[-4:]}") for token in tokens]
    ids = [queue.new_id(n) for n in group]
    cut = REGISTRY.get_sample_value("apns_relay_ingest_groups_cut_total") or 0.0
    answers = await accept_all(ingest, group, ids)
    assert isinstance(answers[3], StoredKeyUnreadable)
    assert "WRONGTYPE" in str(answers[3])
    assert (REGISTRY.get_sample_value("apns_relay_ingest_groups_cut_total") or 0.0) == cut
    for i in (0, 1, 2, 4, 5):
        assert answers[i] == Accepted(ids[i], duplicate=False)
        assert await queue.get(ids[i]) is not None
    assert await queue.get(ids[3]) is None
    assert (await queue.totals()).pending == 5


async def test_a_group_cut_part_way_finds_each_members_own_outcome(
    queue: RelayQueue, redis: aioredis.Redis
) -> None:
    """A group over two shards whose second shard's script fails whole (its stats key is not a
    hash): the first shard's members were stored by the group's call and are found there, not
    stored again; the second's are tried alone and answered with their own error."""
    good = tokens_in_one_shard(queue, 3)
    bad_shard = next(s for s in range(1, queue.limits.shards))
    bad = [t for t in (f"{i:064x}" for i in range(4000)) if queue.shard_of(APP, t) == bad_shard]
    await redis.delete(shard_prefix(bad_shard) + STATS)
    await redis.set(shard_prefix(bad_shard) + STATS, "not a hash")
    ingest = Ingest(queue, hold_s=0.3)
    group = [note(token) for token in [*good, bad[0]]]
    ids = [queue.new_id(n) for n in group]
    cut = REGISTRY.get_sample_value("apns_relay_ingest_groups_cut_total") or 0.0
    stored_after_a_hold = held("stored")
    answers = await accept_all(ingest, group, ids)
    assert REGISTRY.get_sample_value("apns_relay_ingest_groups_cut_total") == cut + 1
    assert held("stored") == stored_after_a_hold  # the stored ones found at once, not held
    assert answers[:3] == [Accepted(i, duplicate=False) for i in ids[:3]]
    assert "WRONGTYPE" in str(answers[3])
    assert await queue.get(ids[3]) is None
    await redis.delete(shard_prefix(bad_shard) + STATS)
    assert (await queue.totals()).pending == 3


async def test_a_group_waits_once_for_its_replicas(
    queue: RelayQueue, redis: aioredis.Redis
) -> None:
    """(WAIT for 0 replicas answers at once: the count of WAITs is what is under test.)"""
    ingest = Ingest(queue, hold_s=1.0, replicas=ReplicaAcknowledgement(redis, 0, 100))
    group = pushes(5)
    ids = [queue.new_id(n) for n in group]
    waits_before = await wait_calls(redis)
    answers = await accept_all(ingest, group, ids)
    assert answers == [Accepted(i, duplicate=False) for i in ids]
    assert await wait_calls(redis) - waits_before == 2  # the first alone, then the other four


async def test_replicas_behind_answer_each_stored_member_and_no_duplicate(
    queue: RelayQueue, redis: aioredis.Redis
) -> None:
    """With a replica asked for and none there, no member that stored something is told it is
    accepted; a duplicate, which stored nothing, is answered as one."""
    kept = await queue.enqueue(note(TOKEN_A, idempotency_key="k"), now_ms=T0)
    ingest = Ingest(queue, hold_s=0.3, replicas=ReplicaAcknowledgement(redis, 1, 10))
    group = [*pushes(4), note(TOKEN_A, idempotency_key="k")]
    ids = [queue.new_id(n) for n in group]
    answers = await accept_all(ingest, group, ids)
    assert answers[4] == Accepted(kept.id, duplicate=True)
    # Each held, retried alone, and refused: by the replicas, or by its hold's end cutting
    # short the WAIT of its last attempt.
    assert all(isinstance(a, ReplicasBehind | TimeoutError) for a in answers[:4]), answers


async def wait_calls(redis: aioredis.Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_wait", {}).get("calls", 0))
