"""The Redis store: per-device FIFO queues, due and lease indexes and status records, run by Lua.

Its parts: key names in relay.store.keys, the scripts in relay.store.scripts (+ lua/), the
encoding of records in relay.store.codec and relay.store.queued, the plain data in
relay.store.records. Over 450 lines on purpose: what is left here is one class, the store's API:
each method one pipelined round trip whose docstring states its contract; splitting it would part
enqueue, claim and settle from the shard addressing and fairness they share."""

from __future__ import annotations

import struct
import time
import zlib
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

import structlog
from redis.exceptions import ResponseError

from relay.core.model import ClaimedNotification, DeliveryOutcome, Notification
from relay.core.redaction import mask_token
from relay.store.codec import (
    MalformedRecordError,
    dead_token_from,
    device_of,
    expired_from,
    leased_from,
    malformed_from,
    optional_int,
    order_args,
    outcome_args,
    text,
)
from relay.store.connection import RedisClient
from relay.store.history import (
    HISTORY_BUCKET_S,
    bucket_of,
    history_field,
    retention_gap,
    status_from_history,
    time_ordered_hex,
)
from relay.store.keys import (
    DEAD,
    DUE,
    HEADS,
    HISTORY,
    HISTORY_BUCKETS,
    IDEM,
    LAYOUT,
    LEASE,
    NOTE,
    PARKED,
    QUEUE,
    RECEIPTS,
    STAT_COUNTERS,
    STATS,
    shard_keys,
    shard_of_id,
    shard_prefix,
)
from relay.store.queued import QUEUED_LAYOUT, pack_queued, status_from_queued
from relay.store.records import (
    Accepted,
    ClaimBatch,
    ClaimError,
    DeviceStatus,
    LeasedNotification,
    MalformedRecord,
    NoLongerRetained,
    NotificationStatus,
    QueueLimits,
    QueueTotals,
    Settlement,
    with_received,
)
from relay.store.refusals import (
    DeadToken,
    DeviceQueueFull,
    IdempotencyKeyReused,
    PendingCapReached,
    QueueRefusal,
    StoredKeyUnreadable,
)
from relay.store.scripts import (
    CLAIM,
    CLAIM_PARKED,
    CLEAR_DEVICE,
    ENQUEUE,
    RELEASE,
    SETTLE,
    TRIM_HISTORY,
    ScriptArg,
    ScriptCall,
    run_scripts,
)
from relay.store.wakeups import WakeUps
from relay.telemetry import metrics

log = structlog.get_logger("relay.queue")

MAX_BATCH = 1000  # notifications per enqueue_many call: one bounded pipeline
MAX_CLAIM_ROUNDS = 3  # round trips a claim may take when the first left shards with work
MAX_REAP_PER_SHARD = 100  # run-out leases put back per shard per claim: bounded script time


def spread(limit: int, shards: Sequence[int]) -> list[tuple[int, int]]:
    """`limit` claims shared over `shards` as evenly as can be, the first ones taking the rest."""
    base, extra = divmod(limit, len(shards))
    return [(shard, base + (1 if i < extra else 0)) for i, shard in enumerate(shards)]


def _device(claim: ClaimedNotification) -> str:
    return f"{claim.notification.app}:{claim.notification.device_token}"


def _fresh_id(shard: int) -> str:
    """A new notification id naming its shard (so a status read goes to one shard)."""
    return f"{shard:02d}-{time_ordered_hex()}"


def _now_ms(now_ms: int | None) -> int:
    return int(time.time() * 1000) if now_ms is None else now_ms


class RelayQueue:
    """The relay's queue in one Redis or Redis Cluster; any number of processes may share it."""

    def __init__(self, redis: RedisClient, limits: QueueLimits) -> None:
        self._redis = redis
        self.limits = limits
        self._next_first_shard = 0  # rotates which shards get a claim's remainder (fairness)
        self._wakeups = WakeUps(redis, self._shards_named)
        self._shard_by_prefix = {shard_prefix(s).encode(): s for s in range(limits.shards)}

    # ---- addressing ----

    def shard_of(self, app: str, token: str) -> int:
        return zlib.crc32(f"{app}:{token}".encode()) % self.limits.shards

    # ---- script running ----

    async def run_scripts(
        self, calls: Sequence[ScriptCall], *, script_errors_as_replies: bool = False
    ) -> list[Any]:
        """Each call's reply, in one round trip (relay.store.scripts.run_scripts)."""
        return await run_scripts(
            self._redis, calls, script_errors_as_replies=script_errors_as_replies
        )

    # ---- the record layout ----

    async def layout_refusal(self) -> str | None:
        """None when every shard's queued notifications are in this version's record layout
        (relay.store.queued.QUEUED_LAYOUT), marking the shards not marked yet; else the one-line
        start-up error: a relay of another layout has work queued here, which this one cannot
        read. The fix is to drain it with the version that queued it (records are never
        converted: an upgrade waits for an empty queue, which takes seconds when APNs is up).

        Layout 1 marked nothing: a shard without a mark whose oldest head's record is not a
        STRING holds layout-1 work (a spool replayed before this check may have queued layout-2
        records there already)."""
        pipe = self._redis.pipeline(transaction=False)
        for shard in range(self.limits.shards):
            prefix = shard_prefix(shard)
            pipe.get(prefix + LAYOUT)
            pipe.hget(prefix + STATS, "pending")
            pipe.zrange(prefix + HEADS, 0, 0)
        replies = await pipe.execute()
        unmarked: list[int] = []
        foreign: dict[int, tuple[str, int]] = {}  # shard -> (its layout, pending)
        heads: dict[int, str] = {}  # unmarked shard with work -> a device with a head
        for shard in range(self.limits.shards):
            layout, pending, first = replies[3 * shard : 3 * shard + 3]
            if layout is None:
                unmarked.append(shard)
                if first:
                    heads[shard] = text(first[0])
            elif text(layout) != str(QUEUED_LAYOUT) and int(pending or 0) > 0:
                foreign[shard] = (text(layout), int(pending))
        if heads:
            pipe = self._redis.pipeline(transaction=False)
            for shard, device in heads.items():
                pipe.lindex(shard_prefix(shard) + QUEUE + device, 0)
            ids = dict(zip(heads, await pipe.execute(), strict=True))
            pipe = self._redis.pipeline(transaction=False)
            for shard, head in ids.items():
                pipe.type(shard_prefix(shard) + NOTE + text(head or b""))
            for shard, kind in zip(ids, await pipe.execute(), strict=True):
                if text(kind) == "hash":
                    pending = replies[3 * shard + 1]
                    foreign[shard] = ("1", int(pending or 0))
        if foreign:
            layouts = ", ".join(sorted({layout for layout, _ in foreign.values()}))
            count = sum(pending for _, pending in foreign.values())
            return (
                f"Redis holds {count:,} notifications queued by a relay of queued-record layout"
                f" {layouts}, which this version (layout {QUEUED_LAYOUT}) cannot read: drain them"
                " with that version first (stop this version, let the previous one's worker empty"
                " the queue until GET /v1/queue says pending 0), then start this one"
            )
        if unmarked:
            pipe = self._redis.pipeline(transaction=False)
            for shard in unmarked:
                pipe.set(shard_prefix(shard) + LAYOUT, QUEUED_LAYOUT, nx=True)
            await pipe.execute()
        return None

    # ---- enqueue ----

    def new_id(self, n: Notification) -> str:
        """A fresh id for `n`, naming its shard (so a status read goes to one shard)."""
        return self.id_for(n.app, n.device_token)

    def id_for(self, app: str, token: str) -> str:
        """A fresh id for a notification to (app, lower-case token), made before it is built
        when its payload names it (a delivery receipt)."""
        return _fresh_id(self.shard_of(app, token))

    def _enqueue_calls(
        self, items: Sequence[tuple[Notification, str | None]], now_ms: int
    ) -> tuple[list[ScriptCall], list[tuple[int, int]]]:
        """One enqueue call per shard for `items` (each a notification and the id to store it
        under, None: a fresh one), and where each item's reply is: (call, place in its reply)."""
        shards: dict[int, tuple[list[str], list[ScriptArg], int]] = {}  # keys, args, items
        where: list[tuple[int, int]] = []
        for n, notification_id in items:
            shard = self.shard_of(n.app, n.device_token)
            prefix = shard_prefix(shard)
            if shard not in shards:
                limits = self.limits
                shards[shard] = (
                    shard_keys(prefix),
                    [
                        prefix,
                        now_ms,
                        limits.retention_s,
                        limits.max_per_device,
                        limits.max_pending_per_shard,
                    ],
                    0,
                )
            keys, args, count = shards[shard]
            device = f"{n.app}:{n.device_token}"
            notification_id = notification_id or _fresh_id(shard)
            own = [prefix + QUEUE + device, prefix + NOTE + notification_id, prefix + DEAD + device]
            if n.idempotency_key is not None:
                own.append(f"{prefix}{IDEM}{device}:{n.idempotency_key}")
            where.append((list(shards).index(shard), count))
            shards[shard] = (keys, args, count + 1)
            keys += own
            args += (
                notification_id,
                device,
                (n.service_id or "") if self.limits.supersede else "",
                *order_args(n),
                pack_queued(n, now_ms),
                n.request_digest or "",
                len(own),
            )
        calls = [ScriptCall(ENQUEUE, keys, args) for keys, args, _ in shards.values()]
        return calls, where

    def _enqueue_result(self, n: Notification, reply: list[Any]) -> Accepted | QueueRefusal:
        verdict = text(reply[0])
        if verdict == "duplicate":
            return Accepted(text(reply[1]), duplicate=True)
        if verdict == "reused":
            assert n.idempotency_key is not None
            return IdempotencyKeyReused(n.idempotency_key, text(reply[1]))
        if verdict == "accepted":
            return Accepted(text(reply[1]), duplicate=False, superseded=text(reply[2]) or None)
        if verdict == "dead":
            return DeadToken(n.app, n.device_token, text(reply[1]), optional_int(reply[2]))
        if verdict == "device_full":
            return DeviceQueueFull(
                n.app,
                n.device_token,
                self.limits.max_per_device,
                self.limits.device_full_retry_after_s,
            )
        if verdict == "pending_full":
            return PendingCapReached(self.limits.max_pending, self.limits.pending_cap_retry_after_s)
        error = text(reply[1])
        metrics.MALFORMED_RECORDS.labels(source="redis").inc()
        log.error(
            "enqueue_key_unreadable", app=n.app, token=mask_token(n.device_token), error=error
        )
        return StoredKeyUnreadable(n.app, n.device_token, error)

    async def enqueue(
        self, n: Notification, *, notification_id: str | None = None, now_ms: int | None = None
    ) -> Accepted:
        """Store one notification (one round trip) or raise a QueueRefusal having stored nothing.

        A notification goes to the tail of its device's queue, unless it carries an order (both
        `order_group` and `order`, e.g. a chat session and a GMS transcriptPosition): then it is
        inserted before the first notification of the same device and group that has a higher
        order and was never possibly sent (state queued: not in flight, not retrying, no lease of
        it ran out; invariant 12), so lines GMS posts out of order still go out in position
        order. What was sent already cannot be called back:
        a line arriving after a higher one was sent (or is being sent, or retried) is still pushed,
        after it, never dropped. An ordered notification may thereby overtake unordered ones
        accepted before it, which is the one exception to per-device FIFO. A repeated position is
        caught by the idempotency key, not here.

        Sent again with the same `notification_id` (an attempt whose answer was lost, a spool
        replay), it is accepted once: the script finds the record and stores nothing more."""
        calls, _ = self._enqueue_calls([(n, notification_id)], _now_ms(now_ms))
        ((reply,),) = await self.run_scripts(calls)
        result = self._enqueue_result(n, reply)
        if isinstance(result, QueueRefusal):
            raise result
        return result

    async def enqueue_many(
        self,
        ns: Sequence[Notification],
        *,
        now_ms: int | None = None,
        ids: Sequence[str | None] | None = None,
    ) -> list[Accepted | QueueRefusal]:
        """Up to MAX_BATCH notifications in one pipelined round trip, each atomic on its own;
        `ids`, when given, the id each is stored under (None: a fresh one)."""
        if len(ns) > MAX_BATCH:
            raise ValueError(f"enqueue_many: {len(ns)} notifications, at most {MAX_BATCH} a call")
        if not ns:
            return []
        now = _now_ms(now_ms)
        chosen = [None] * len(ns) if ids is None else ids
        calls, where = self._enqueue_calls(list(zip(ns, chosen, strict=True)), now)
        replies = await self.run_scripts(calls)
        return [
            self._enqueue_result(n, replies[call][place])
            for n, (call, place) in zip(ns, where, strict=True)
        ]

    # ---- claim ----

    def _claim_call(
        self, shard: int, limit: int, now_ms: int, routes: Mapping[str, bool]
    ) -> ScriptCall:
        prefix = shard_prefix(shard)
        args: list[ScriptArg] = [
            prefix,
            now_ms,
            limit,
            self.limits.lease_ms,
            self.limits.retention_s,
            MAX_REAP_PER_SHARD,
        ]
        keys = shard_keys(prefix)
        for app, sending in routes.items():
            keys.append(prefix + PARKED + app)
            args += (app, "send" if sending else "park")
        return ScriptCall(CLAIM, keys, args)

    async def claim(
        self,
        limit: int,
        *,
        now_ms: int | None = None,
        shards: Collection[int] = (),
        routes: Mapping[str, bool] | None = None,
        settling: Settlement | None = None,
    ) -> ClaimBatch:
        """Lease up to `limit` due device heads, shared fairly over the shards (all of them, or
        only `shards`, e.g. the ones a wake-up named).

        `settling`, when given, is written in the same first round trip, ahead of the claims (as
        write_settlement would, so a device whose head it ends can have its next one claimed
        here); a script error it meets is in the batch's `settlement_error` (write it again: its
        scripts ignore what they applied already), any other Redis error is raised as the
        claim's.

        `routes` says for each app whether its route sends (True) or its circuit is open (False):
        an open route's due devices are parked rather than claimed (claim_parked takes its probe),
        and a sending route's parked devices are due again, at the time they had. Apps left out
        are claimed as usual.

        Every shard asked is visited in the first round trip (the ones whose share is 0 only reap
        run-out leases and say whether they have work); shards that had more than their share are
        asked again for the shortfall, at most MAX_CLAIM_ROUNDS round trips in all.

        One bad record or script error hurts only itself (invariant 14): a head the scripts or
        the codec find malformed is failed (MalformedRecord) and reported in `malformed`; an
        error on one device sets it aside, and an error on a whole shard leaves that shard out,
        both reported in `errors` while every other claim is handed out."""
        routes = routes or {}
        now = _now_ms(now_ms)
        first = self._next_first_shard
        self._next_first_shard = (first + 1) % self.limits.shards
        visit = sorted(shards) or range(self.limits.shards)
        order = [visit[(first + i) % len(visit)] for i in range(len(visit))]
        quotas = spread(max(0, limit), order)
        ahead = self._settlement_calls(settling, now) if settling else []
        settlement_error: Exception | None = None
        batch = ClaimBatch([], [])
        unsendable: list[tuple[int, list[Any], str]] = []  # (shard, entry, problem)
        for _ in range(MAX_CLAIM_ROUNDS):
            replies = await self.run_scripts(
                [*ahead, *(self._claim_call(s, quota, now, routes) for s, quota in quotas)],
                script_errors_as_replies=True,
            )
            if ahead:
                errors = [reply for reply in replies[: len(ahead)] if isinstance(reply, Exception)]
                settlement_error = errors[0] if errors else None
                batch.errors.extend(self._set_aside(replies[: len(ahead)]))
                replies, ahead = replies[len(ahead) :], []
            with_more = []
            for (shard, _quota), reply in zip(quotas, replies, strict=True):
                if isinstance(reply, Exception):
                    batch.errors.append(ClaimError(shard, None, str(reply)))
                    continue
                more, leased, finalised, malformed, errors = reply
                for entry in leased:
                    try:
                        batch.claimed.append(leased_from(entry))
                    except MalformedRecordError as error:
                        unsendable.append((shard, entry, str(error)))
                batch.expired.extend(expired_from(entry) for entry in finalised)
                batch.malformed.extend(
                    malformed_from(entry, "a field the scripts compute with") for entry in malformed
                )
                batch.errors.extend(ClaimError(shard, text(d), text(e)) for d, e in errors)
                if more:
                    with_more.append(shard)
            shortfall = limit - len(batch.claimed)
            if shortfall <= 0 or not with_more:
                break
            quotas = [(s, quota) for s, quota in spread(shortfall, with_more) if quota > 0]
        if unsendable:
            batch.malformed.extend(await self._fail_malformed(unsendable, now))
        if settlement_error is not None:
            return replace(batch, settlement_error=settlement_error)
        return batch

    async def _fail_malformed(
        self, unsendable: Sequence[tuple[int, list[Any], str]], now_ms: int
    ) -> list[MalformedRecord]:
        """Fail the claimed heads the codec refused (one more round trip, only when there are
        any): settled as failed MalformedRecord, so the device moves on to its next one."""
        by_shard: dict[int, list[ScriptArg]] = defaultdict(list)
        for shard, entry, _ in unsendable:
            notification_id, claim_no = entry[0], entry[1]
            by_shard[shard] += (notification_id, claim_no, device_of(entry), "failed", "")
            by_shard[shard] += ("MalformedRecord",)
            by_shard[shard] += ("", "", "", "")
        calls = []
        for shard, claims in by_shard.items():
            prefix = shard_prefix(shard)
            args: list[ScriptArg] = [
                prefix,
                now_ms,
                self.limits.retention_s,
                self.limits.dead_token_ttl_s,
                *claims,
            ]
            calls.append(ScriptCall(SETTLE, shard_keys(prefix), args))
        await self.run_scripts(calls)
        return [
            MalformedRecord(text(entry[0]), device_of(entry), problem)
            for _, entry, problem in unsendable
        ]

    async def claim_parked(self, app: str, *, now_ms: int | None = None) -> ClaimBatch:
        """Lease the head of the device parked longest for `app` (at most one notification: a
        probe of its route), in two round trips: where is the oldest, then take it."""
        now = _now_ms(now_ms)
        pipe = self._redis.pipeline(transaction=False)
        for shard in range(self.limits.shards):
            pipe.zrange(shard_prefix(shard) + PARKED + app, 0, 0, withscores=True)
        firsts = await pipe.execute()
        candidates = [(first[0][1], shard) for shard, first in enumerate(firsts) if first]
        if not candidates:
            return ClaimBatch([], [])
        _, shard = min(candidates)
        prefix = shard_prefix(shard)
        keys = [*shard_keys(prefix), prefix + PARKED + app]
        args: list[ScriptArg] = [prefix, now, self.limits.lease_ms, self.limits.retention_s]
        ((leased, finalised, malformed, errors),) = await self.run_scripts(
            [ScriptCall(CLAIM_PARKED, keys, args)]
        )
        batch = ClaimBatch(
            [],
            [expired_from(entry) for entry in finalised],
            [malformed_from(entry, "a field the scripts compute with") for entry in malformed],
            [ClaimError(shard, text(device), text(error)) for device, error in errors],
        )
        unsendable = []
        for entry in leased:
            try:
                batch.claimed.append(leased_from(entry))
            except MalformedRecordError as error:
                unsendable.append((shard, entry, str(error)))
        if unsendable:
            batch.malformed.extend(await self._fail_malformed(unsendable, now))
        return batch

    async def parked(self, app: str) -> int:
        """How many of the app's devices are parked (its route's circuit is open)."""
        pipe = self._redis.pipeline(transaction=False)
        for shard in range(self.limits.shards):
            pipe.zcard(shard_prefix(shard) + PARKED + app)
        return sum(await pipe.execute())

    # ---- settle / release ----

    def _by_shard(
        self, claims: Sequence[ClaimedNotification]
    ) -> dict[int, list[LeasedNotification]]:
        grouped: dict[int, list[LeasedNotification]] = defaultdict(list)
        for claim in claims:
            if not isinstance(claim, LeasedNotification):
                raise TypeError("settle/release take the claims that RelayQueue.claim returned")
            grouped[self.shard_of(claim.notification.app, claim.notification.device_token)].append(
                claim
            )
        return grouped

    def _settle_calls(
        self, results: Sequence[tuple[ClaimedNotification, DeliveryOutcome]], now_ms: int
    ) -> list[ScriptCall]:
        outcomes = {id(claim): outcome_args(claim.id, outcome) for claim, outcome in results}
        calls = []
        for shard, claims in self._by_shard([claim for claim, _ in results]).items():
            prefix = shard_prefix(shard)
            args: list[ScriptArg] = [
                prefix,
                now_ms,
                self.limits.retention_s,
                self.limits.dead_token_ttl_s,
            ]
            for claim in claims:
                args += (claim.id, claim.claim_no, _device(claim), *outcomes[id(claim)])
            calls.append(ScriptCall(SETTLE, shard_keys(prefix), args))
        return calls

    def _release_calls(
        self,
        claims: Sequence[ClaimedNotification],
        delay_ms: int,
        possibly_sent: bool,
        now_ms: int,
    ) -> list[ScriptCall]:
        calls = []
        sent = 1 if possibly_sent else 0
        for shard, leased in self._by_shard(claims).items():
            prefix = shard_prefix(shard)
            args: list[ScriptArg] = [prefix, now_ms, max(0, delay_ms)]
            for claim in leased:
                args += (claim.id, claim.claim_no, _device(claim), sent)
            calls.append(ScriptCall(RELEASE, shard_keys(prefix), args))
        return calls

    def _settlement_calls(self, settlement: Settlement, now_ms: int) -> list[ScriptCall]:
        calls = self._settle_calls(settlement.settled, now_ms) if settlement.settled else []
        released = settlement.released
        for delay_ms, sent in dict.fromkeys((delay, sent) for _, delay, sent in released):
            claims = [c for c, d, s in released if (d, s) == (delay_ms, sent)]
            calls += self._release_calls(claims, delay_ms, sent, now_ms)
        return calls

    def _set_aside(self, replies: Sequence[Any]) -> list[ClaimError]:
        """The devices that the settle scripts among `replies` set aside after an error (a
        release's reply is a count)."""
        errors = []
        for reply in replies:
            if isinstance(reply, list):
                for device, error in reply[1]:
                    app, _, token = text(device).rpartition(":")
                    errors.append(ClaimError(self.shard_of(app, token), text(device), text(error)))
        return errors

    async def settle(
        self,
        results: Sequence[tuple[ClaimedNotification, DeliveryOutcome]],
        *,
        now_ms: int | None = None,
    ) -> list[ClaimError]:
        """Record a batch of outcomes in one pipelined round trip (one script per shard).

        Delivered/Failed/Expired make the head final and the next one due; Retry makes it due again
        after its delay. A result whose lease was lost (another claim since) is ignored. Returns
        the devices set aside: one whose settle met a script error (a key of another type) keeps
        nothing of it, is claimed again in a minute, and costs the other results nothing."""
        if not results:
            return []
        return self._set_aside(await self.run_scripts(self._settle_calls(results, _now_ms(now_ms))))

    async def release(
        self,
        claims: Sequence[ClaimedNotification],
        *,
        delay_ms: int = 0,
        possibly_sent: bool = False,
        now_ms: int | None = None,
    ) -> None:
        """Give claims back: due again after `delay_ms`, attempts unchanged.

        `possibly_sent`: their requests were handed to the APNs connection (a route failure, a
        pause after APNs' answer, a send cut off at shutdown), so they may have reached the phone.
        They then keep their place for good (invariant 12: never superseded, never passed by a
        chat line; state `retrying`). Claims that never went out return to `queued` unless they
        were possibly sent before."""
        if claims:
            calls = self._release_calls(claims, delay_ms, possibly_sent, _now_ms(now_ms))
            await self.run_scripts(calls)

    async def write_settlement(
        self, settlement: Settlement, *, now_ms: int | None = None
    ) -> list[ClaimError]:
        """Its outcomes (as settle) and give-backs (as release) in one pipelined round trip;
        returns the devices set aside, as settle does."""
        if not settlement:
            return []
        calls = self._settlement_calls(settlement, _now_ms(now_ms))
        return self._set_aside(await self.run_scripts(calls))

    # ---- reading ----

    async def get(self, notification_id: str) -> NotificationStatus | None:
        """A notification's status, queued or final (its history record); None when neither
        is found (no_longer_retained says whether it was given up). Raises MalformedRecordError
        for a record it cannot read."""
        shard, bucket = shard_of_id(notification_id), bucket_of(notification_id)
        if shard is None or shard >= self.limits.shards or bucket is None:
            return None
        prefix = shard_prefix(shard)
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(prefix + NOTE + notification_id)
        pipe.hget(f"{prefix}{HISTORY}{bucket}", history_field(notification_id))
        pipe.hget(f"{prefix}{RECEIPTS}{bucket}", history_field(notification_id))
        try:
            record, final, received = await pipe.execute()
        except ResponseError as error:
            # WRONGTYPE: a key this layout did not write (invariant 14; an older layout's HASH).
            if "WRONGTYPE" not in str(error):
                raise
            raise MalformedRecordError(f"{notification_id}: {error}") from error
        try:
            if record is not None:
                return with_received(status_from_queued(notification_id, record), received)
            if final is not None:
                return with_received(status_from_history(notification_id, final), received)
        except (KeyError, ValueError, IndexError, struct.error) as error:
            # A record this relay did not write as it is (invariant 14): said, not a crash.
            raise MalformedRecordError(f"{notification_id}: {error!r}") from error
        return None

    async def no_longer_retained(
        self, notification_id: str, *, now_ms: int | None = None
    ) -> NoLongerRetained | None:
        """For an id get() did not find: why its record is gone (retention, or history given
        up for memory), or None when nothing says it ever existed."""
        shard, bucket = shard_of_id(notification_id), bucket_of(notification_id)
        if shard is None or shard >= self.limits.shards or bucket is None:
            return None
        prefix = shard_prefix(shard)
        pipe = self._redis.pipeline(transaction=False)
        pipe.zrange(prefix + HISTORY_BUCKETS, 0, 0)
        pipe.zscore(prefix + HISTORY_BUCKETS, bucket)
        pipe.exists(f"{prefix}{HISTORY}{bucket}")
        oldest, listed, exists = await pipe.execute()
        why = retention_gap(
            notification_id,
            now_ms=_now_ms(now_ms),
            retention_s=self.limits.retention_s,
            oldest_bucket=int(oldest[0]) if oldest else None,
            bucket_listed=listed is not None,
            bucket_exists=bool(exists),
        )
        return None if why is None else NoLongerRetained(notification_id, why)

    async def device(self, app: str, token: str) -> DeviceStatus:
        prefix = shard_prefix(self.shard_of(app, token))
        device = f"{app}:{token}"
        pipe = self._redis.pipeline(transaction=False)
        pipe.llen(prefix + QUEUE + device)
        pipe.zscore(prefix + LEASE, device)
        pipe.hgetall(prefix + DEAD + device)
        pending, lease, dead = await pipe.execute()
        return DeviceStatus(
            pending=int(pending), in_flight=lease is not None, dead=dead_token_from(dead)
        )

    async def clear_device(self, app: str, token: str, *, now_ms: int | None = None) -> int:
        """Lift the dead mark and purge the queue (purged ones become FAILED "Purged"; the one in
        flight is left to its worker). Returns how many were purged."""
        prefix = shard_prefix(self.shard_of(app, token))
        device = f"{app}:{token}"
        keys = [*shard_keys(prefix), prefix + QUEUE + device, prefix + DEAD + device]
        args: list[ScriptArg] = [prefix, device, _now_ms(now_ms), self.limits.retention_s]
        (purged,) = await self.run_scripts([ScriptCall(CLEAR_DEVICE, keys, args)])
        return int(purged)

    async def trim_history(self, *, oldest: bool, now_ms: int | None = None) -> int:
        """Delete the oldest history bucket of every shard (`oldest`, when Redis memory runs
        short: final records give way to queued work, oldest first), and forget the buckets past
        the retention that expired or were evicted; returns how many final records were
        deleted."""
        pipe = self._redis.pipeline(transaction=False)
        for shard in range(self.limits.shards):
            pipe.zrange(shard_prefix(shard) + HISTORY_BUCKETS, 0, 0)
        firsts = [int(first[0]) for first in await pipe.execute() if first]
        upto = min(firsts) if oldest and firsts else -1
        retained = (_now_ms(now_ms) - self.limits.retention_s * 1000) // (HISTORY_BUCKET_S * 1000)
        calls = []
        for shard in range(self.limits.shards):
            prefix = shard_prefix(shard)
            keys = [*shard_keys(prefix), prefix + HISTORY_BUCKETS]
            calls.append(ScriptCall(TRIM_HISTORY, keys, [prefix, upto, retained]))
        return sum(int(records) for records, _ in await self.run_scripts(calls))

    async def totals(self, *, now_ms: int | None = None) -> QueueTotals:
        """Counts and lifetime counters over all shards, in one pipelined round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for shard in range(self.limits.shards):
            prefix = shard_prefix(shard)
            pipe.hgetall(prefix + STATS)
            pipe.zcard(prefix + HEADS)
            pipe.zcard(prefix + LEASE)
            pipe.zrange(prefix + HEADS, 0, 0, withscores=True)
        replies = await pipe.execute()
        counters = dict.fromkeys((*STAT_COUNTERS, "pending"), 0)
        devices_pending = leased = 0
        oldest: float | None = None
        for i in range(0, len(replies), 4):
            stats, heads, leases, first_head = replies[i : i + 4]
            for name, value in stats.items():
                counters[text(name)] += int(value)
            devices_pending += heads
            leased += leases
            if first_head:
                accepted_at = first_head[0][1]
                oldest = accepted_at if oldest is None else min(oldest, accepted_at)
        age = None if oldest is None else max(0.0, (_now_ms(now_ms) - oldest) / 1000)
        return QueueTotals(
            pending=counters["pending"],
            devices_pending=devices_pending,
            leased=leased,
            oldest_pending_age_s=age,
            **{name: counters[name] for name in STAT_COUNTERS},
        )

    # ---- waiting for work ----

    async def next_due_ms(self) -> int | None:
        """The earliest time work may be claimable: a due head or a lease running out."""
        pipe = self._redis.pipeline(transaction=False)
        for shard in range(self.limits.shards):
            prefix = shard_prefix(shard)
            pipe.zrange(prefix + DUE, 0, 0, withscores=True)
            pipe.zrange(prefix + LEASE, 0, 0, withscores=True)
        scores = [int(first[0][1]) for first in await pipe.execute() if first]
        return min(scores, default=None)

    async def listen_for_work(self) -> None:
        """Subscribe to wake-ups now: a worker calls it before its first claim, so that no
        enqueue between that claim and its first wait_for_work goes unseen."""
        await self._wakeups.listen()

    async def wait_for_work(self, timeout_s: float) -> frozenset[int]:
        """As soon as an enqueue or a settle makes a device due: the shards where that happened
        (every wake-up since the last call included, so one claim serves them all); an empty set
        after `timeout_s` without one. With no time left it still names the shards already
        woken: a worker whose next due time has passed (a push enqueued between its claim and
        its look at due times) then claims the shard named, not all of them.

        The first call subscribes (unless listen_for_work did); enqueues before the subscription
        are not seen, so subscribe, then claim, then wait."""
        return await self._wakeups.wait(timeout_s)

    def _shards_named(self, prefix: bytes) -> range | tuple[int]:
        shard = self._shard_by_prefix.get(prefix)
        # A prefix this queue does not know (another shard count): look everywhere.
        return range(self.limits.shards) if shard is None else (shard,)

    @property
    def client(self) -> RedisClient:
        return self._redis

    async def ping(self) -> bool:
        """Whether Redis answers (readiness)."""
        return bool(await cast(Any, self._redis).ping())

    async def aclose(self) -> None:
        await self._wakeups.aclose()
