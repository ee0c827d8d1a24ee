"""The Redis store: per-device FIFO queues, due and lease indexes and status records, run by Lua."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import math
import time
import uuid
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TypeAlias, cast, get_type_hints

import structlog
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisError

from relay.logs import RepeatedCondition
from relay.metrics import REDIS_SCRIPT_CALLS
from relay.model import (
    FINAL_STATES,
    ClaimedNotification,
    Delivered,
    DeliveryOutcome,
    DeliveryState,
    Expired,
    Failed,
    Notification,
    PauseApp,
    Retry,
)
from relay.redis_errors import vanished_as_unreachable

# ---- Key names: the only place they are spelled (the Lua scripts get them in a prelude). ----
# Every key of shard s starts with shard_prefix(s) = "relay:{<tag>}:"; the hash tag puts all of a
# shard's keys in one Cluster slot, so each script touches exactly one slot (see shard_tag).
# A device is "<app>:<token>".
KEY_ROOT = "relay"
WAKE_CHANNEL = "relay:wake"  # enqueue/settle PUBLISH the shard prefix when a device becomes due
DUE = "due"  # ZSET device -> when its head is next due (ms); only unleased devices
LEASE = "lease"  # ZSET device -> lease deadline (ms) of its claimed head
HEADS = "heads"  # ZSET device -> accepted_at_ms of its head (oldest pending age)
STATS = "stats"  # HASH lifetime counters (STAT_COUNTERS) and the live "pending" count
QUEUE = "q:"  # LIST + device: notification ids, oldest first
NOTE = "n:"  # HASH + id: the notification's fields (all but the payload) and its delivery record
# STRING + id: the APNs body, ready to send; deleted once final. Kept apart so that every value of
# the record stays short and Redis stores the record as a compact listpack, not a hashtable.
PAYLOAD = "p:"
DEAD = "dead:"  # HASH + device: reason, status, invalid_since_ms, marked_at_ms
SERVICE = "svc:"  # HASH + device: service_id -> latest id (supersede in O(1))
IDEM = "idem:"  # STRING + device + ":" + idempotency key -> "<id>[ <request digest>]"
# ZSET + app: the app's devices set aside while its route's circuit is open -> the due time each
# had; claim returns them to DUE once the route sends again.
PARKED = "parked:"
# The one key outside the shards: HASH "relay:{route:<app>}:route:<app>:<environment>:<endpoint>",
# a route's circuit (relay.routes), shared by every worker.
ROUTE = "route:"

# Lifetime counters the scripts keep in each shard's stats hash; the final ones are named after
# the state they count.
STAT_COUNTERS = (
    "enqueued",
    "delivered",
    "failed",
    "expired",
    "superseded",
    "retried",
    "dead_marked",
)

MAX_BATCH = 1000  # notifications per enqueue_many call: one bounded pipeline
MAX_CLAIM_ROUNDS = 3  # round trips a claim may take when the first left shards with work
MAX_REAP_PER_SHARD = 100  # run-out leases put back per shard per claim: bounded script time
SUBSCRIBE_TIMEOUT_S = 5.0

# The payload has a key of its own; the request digest lives only beside the idempotency key.
_NOTIFICATION_FIELDS = tuple(
    f.name for f in fields(Notification) if f.name not in ("payload", "request_digest")
)
# What claim reads of a head: the whole Notification, then the delivery record it needs.
CLAIM_FIELDS = (*_NOTIFICATION_FIELDS, "attempts", "accepted_at_ms", "updated_at_ms")

# What an unreachable or failing Redis raises: redis-py's own errors are not OSErrors.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)
# One per process: an outage is logged as it starts, in periodic summaries and as it ends, not
# once per request that met it. Whoever catches REDIS_ERRORS reports it; a script that runs ends it.
REDIS_UNAVAILABLE = RepeatedCondition("redis_unavailable", structlog.get_logger("relay.queue"))
RedisClient: TypeAlias = "Redis | RedisCluster"
ScriptArg: TypeAlias = str | int | bytes


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """How the store is sharded and bounded; every process sharing a Redis must agree on them."""

    shards: int = 16
    max_per_device: int = 100  # per (app, token) queue length
    # The global cap on non-final notifications, enforced per shard as ceil(max_pending / shards)
    # so the check stays inside one shard's script: the real total can reach shards * that.
    max_pending: int = 1_000_000
    retention_s: int = 86_400  # TTL of final notification records and idempotency keys
    lease_ms: int = 30_000  # how long a claim is held before another worker may take it
    dead_token_ttl_s: int = 30 * 86_400
    # A newer notification for the same (device, service_id) supersedes older QUEUED/RETRYING
    # ones (never one in flight).
    supersede: bool = True
    device_full_retry_after_s: int = 30  # Retry-After for DeviceQueueFull
    pending_cap_retry_after_s: int = 60  # Retry-After for PendingCapReached

    def __post_init__(self) -> None:
        for name in (
            "shards",
            "max_per_device",
            "max_pending",
            "retention_s",
            "lease_ms",
            "dead_token_ttl_s",
        ):
            if getattr(self, name) < 1:
                value = getattr(self, name)
                raise ValueError(f"QueueLimits.{name}: must be at least 1, got {value}")

    @property
    def max_pending_per_shard(self) -> int:
        return math.ceil(self.max_pending / self.shards)


class QueueRefusal(Exception):
    """Enqueue refused; nothing was stored. `reason` names the kind of refusal (each subclass has
    its own; the HTTP layer maps it to a status, relay.api.REFUSAL_STATUSES), `retry_after_s` is
    None when waiting does not help. The store knows nothing of HTTP."""

    reason: ClassVar[str]

    def __init__(self, message: str, retry_after_s: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class IdempotencyKeyReused(QueueRefusal):
    """The idempotency key was used before for a different request: the first one stands."""

    reason = "idempotency_key_reused"

    def __init__(self, key: str, notification_id: str) -> None:
        super().__init__(
            f"idempotency_key {key!r} was used for notification {notification_id} with a"
            " different request; send that same request again, or use a new key",
            None,
        )
        self.notification_id = notification_id


class DeadToken(QueueRefusal):
    reason = "device_token_dead"

    def __init__(
        self, app: str, token: str, apns_reason: str, invalid_since_ms: int | None
    ) -> None:
        super().__init__(
            f"device_token: APNs reported {token} dead for app {app} ({apns_reason});"
            " refused until the device registers again",
            None,
        )
        self.apns_reason = apns_reason  # why APNs gave it up, e.g. "Unregistered"
        self.invalid_since_ms = invalid_since_ms


class DeviceQueueFull(QueueRefusal):
    reason = "device_queue_full"

    def __init__(self, app: str, token: str, limit: int, retry_after_s: int) -> None:
        super().__init__(
            f"device_token: {token} of app {app} already has {limit} notifications queued,"
            f" the most allowed per device",
            retry_after_s,
        )


class PendingCapReached(QueueRefusal):
    reason = "pending_cap_reached"

    def __init__(self, limit: int, retry_after_s: int) -> None:
        super().__init__(
            f"the relay holds its maximum of {limit} undelivered notifications; try again later",
            retry_after_s,
        )


@dataclass(frozen=True, slots=True)
class Accepted:
    id: str
    duplicate: bool  # the idempotency key was seen before: the existing id is returned
    superseded: str | None = None  # the older notification this one replaced, if any
    spooled: bool = False  # held in the api's local spool until Redis answers (relay.spool)


@dataclass(frozen=True, slots=True, kw_only=True)
class LeasedNotification(ClaimedNotification):
    """A claim as `claim` hands it out: the claim number proves the lease at settle/release
    (a claim ended once, or overtaken by a later claim, changes nothing)."""

    claim_no: int


@dataclass(frozen=True, slots=True)
class ExpiredRecord:
    """A head that claim found past its expires_at and finalised as EXPIRED (for metrics, logs)."""

    id: str
    app: str
    service_id: str | None
    action: str | None


@dataclass(frozen=True, slots=True)
class ClaimBatch:
    claimed: list[ClaimedNotification]  # LeasedNotification instances
    expired: list[ExpiredRecord]  # heads finalised as EXPIRED during the claim


@dataclass(frozen=True, slots=True)
class NotificationStatus:
    id: str
    app: str
    device_token: str
    service_id: str | None
    action: str | None
    state: DeliveryState
    attempts: int
    accepted_at_ms: int
    updated_at_ms: int
    expires_at: int  # UNIX seconds
    delivered_at_ms: int | None
    last_status: int | None
    last_reason: str | None
    apns_id: str | None
    apns_unique_id: str | None  # sandbox only: the key of Apple's Delivery Log
    collapse_id: str | None
    push_type: str
    priority: int


@dataclass(frozen=True, slots=True)
class DeadTokenRecord:
    reason: str
    status: int | None
    invalid_since_ms: int | None  # APNs' timestamp: when the token went invalid
    marked_at_ms: int


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    pending: int  # non-final notifications, the one in flight included
    in_flight: bool
    dead: DeadTokenRecord | None


@dataclass(frozen=True, slots=True)
class QueueTotals:
    pending: int  # non-final notifications
    devices_pending: int  # devices with at least one
    leased: int  # devices whose head is in flight
    oldest_pending_age_s: float | None
    enqueued: int
    delivered: int
    failed: int
    expired: int
    superseded: int
    retried: int
    dead_marked: int


CLUSTER_SLOTS = 16384
_TAG_CANDIDATES = 1024


def _van_der_corput(n: int) -> float:
    """n's binary digits mirrored behind the point: 0, 1/2, 1/4, 3/4, 1/8, ... Any first k of
    these points are spread evenly over [0, 1)."""
    point, scale = 0.0, 0.5
    while n:
        point += scale * (n & 1)
        n >>= 1
        scale /= 2
    return point


@functools.cache
def shard_tag(shard: int) -> str:
    """The hash tag of a shard's keys, chosen so that shards 0..n-1 land evenly on Redis
    Cluster's slots whatever n is, and so evenly on its primaries; a plain "{3}" lands wherever
    CRC16 happens to put it."""
    target = int(_van_der_corput(shard) * CLUSTER_SLOTS)

    def distance(n: int) -> int:
        offset = abs(key_slot(f"{shard}.{n}".encode()) - target)
        return min(offset, CLUSTER_SLOTS - offset)

    return f"{shard}.{min(range(_TAG_CANDIDATES), key=distance)}"


def shard_prefix(shard: int) -> str:
    return f"{KEY_ROOT}:{{{shard_tag(shard)}}}:"


def shard_of_id(notification_id: str) -> int | None:
    """The shard an id names (ids are "<shard>-<hex>"), or None for an id this queue never made."""
    head, _, rest = notification_id.partition("-")
    return int(head) if head.isascii() and head.isdigit() and rest else None


def spread(limit: int, shards: Sequence[int]) -> list[tuple[int, int]]:
    """`limit` claims shared over `shards` as evenly as can be, the first ones taking the rest."""
    base, extra = divmod(limit, len(shards))
    return [(shard, base + (1 if i < extra else 0)) for i, shard in enumerate(shards)]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _optional_int(value: bytes | str | None) -> int | None:
    return None if value is None else int(value)


def _optional_text(value: bytes | str | None) -> str | None:
    return None if value is None else _text(value)


def _field_decoder(annotation: Any) -> Callable[[bytes | str], Any]:
    if annotation is bytes:
        return lambda value: value if isinstance(value, bytes) else value.encode()
    if annotation is int or annotation == int | None:
        return int  # a None field is not stored, so only present values are decoded
    return _text


_NOTIFICATION_DECODERS = {
    name: _field_decoder(hint)
    for name, hint in get_type_hints(Notification).items()
    if name in _NOTIFICATION_FIELDS
}


def _notification_from(payload: bytes, values: Sequence[bytes | str | None]) -> Notification:
    decoded: dict[str, Any] = {
        name: None if value is None else _NOTIFICATION_DECODERS[name](value)
        for name, value in zip(_NOTIFICATION_FIELDS, values, strict=True)
    }
    return Notification(payload=payload, **decoded)


def _notification_pairs(n: Notification) -> list[ScriptArg]:
    """The field/value pairs of a notification's record; None fields are left out."""
    pairs: list[ScriptArg] = []
    for name in _NOTIFICATION_FIELDS:
        value = getattr(n, name)
        if value is not None:
            pairs += (name, value)
    return pairs


def _order_args(n: Notification) -> tuple[str, ScriptArg]:
    """(group, order) for enqueue.lua; ('', '') when the notification is plain FIFO."""
    if n.order_group is None or n.order is None:
        return "", ""
    return n.order_group, n.order


def _lua_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _lua_prelude() -> str:
    """Names the scripts share with this module, so each is spelled once (here)."""
    constants = {
        "K_QUEUE": QUEUE,
        "K_NOTE": NOTE,
        "K_PAYLOAD": PAYLOAD,
        "K_DEAD": DEAD,
        "K_SERVICE": SERVICE,
        "WAKE_CHANNEL": WAKE_CHANNEL,
    }
    lines = [f"local {name} = {_lua_string(value)}" for name, value in constants.items()]
    states = ", ".join(f"{s.name} = {_lua_string(s.value)}" for s in DeliveryState)
    finals = ", ".join(f"[{_lua_string(s.value)}] = true" for s in sorted(FINAL_STATES))
    claim_fields = ", ".join(_lua_string(name) for name in CLAIM_FIELDS)
    claim_index = ", ".join(f"{name} = {i}" for i, name in enumerate(CLAIM_FIELDS, start=1))
    lines += [
        f"local STATE = {{{states}}}",
        f"local FINAL = {{{finals}}}",
        f"local CLAIM_FIELDS = {{{claim_fields}}}",
        f"local CLAIM_INDEX = {{{claim_index}}}",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: str
    source: str
    sha: str


def load_script(name: str, *, shard_script: bool = True) -> LuaScript:
    """relay/lua/<name>.lua; a shard script (one whose KEYS[1..4] are a shard's) gets the shared
    names and helpers prepended."""
    lua = Path(__file__).with_name("lua")
    parts = (_lua_prelude(), (lua / "shared.lua").read_text()) if shard_script else ()
    source = "".join((*parts, (lua / f"{name}.lua").read_text()))
    return LuaScript(name, source, hashlib.sha1(source.encode()).hexdigest())


ENQUEUE, CLAIM, CLAIM_PARKED, SETTLE, RELEASE, CLEAR_DEVICE = (
    load_script(name)
    for name in ("enqueue", "claim", "claim_parked", "settle", "release", "clear_device")
)


@dataclass(frozen=True, slots=True)
class ScriptCall:
    script: LuaScript
    keys: Sequence[str]
    args: Sequence[ScriptArg]


def _outcome_args(outcome: DeliveryOutcome) -> tuple[ScriptArg, ...]:
    """(kind, status, reason, apns_id, delay_ms, invalid_since_ms, apns_unique_id) for
    settle.lua; '' = none."""
    match outcome:
        case Delivered(apns_id=apns_id, apns_unique_id=unique_id):
            return "delivered", 200, "", apns_id or "", "", "", unique_id or ""
        case Retry(reason=reason, delay_ms=delay_ms, status=status):
            return "retry", status or "", reason, "", max(0, delay_ms), "", ""
        case Failed(reason=reason, status=status, dead_token=dead, token_invalid_since_ms=since):
            kind = "dead" if dead else "failed"
            return kind, status, reason, "", "", "" if since is None else since, ""
        case Expired():
            return "expired", "", "", "", "", "", ""
        case PauseApp():
            raise ValueError(
                "settle: PauseApp is not a final outcome; release the claim with"
                " delay_ms = the probe interval instead"
            )


def _now_ms(now_ms: int | None) -> int:
    return int(time.time() * 1000) if now_ms is None else now_ms


class RelayQueue:
    """The relay's queue in one Redis or Redis Cluster; any number of processes may share it."""

    def __init__(self, redis: RedisClient, limits: QueueLimits) -> None:
        self._redis = redis
        self.limits = limits
        self._next_first_shard = 0  # rotates which shards get a claim's remainder (fairness)
        self._wake: PubSub | None = None
        self._shard_by_prefix = {shard_prefix(s).encode(): s for s in range(limits.shards)}

    # ---- addressing ----

    def shard_of(self, app: str, token: str) -> int:
        return zlib.crc32(f"{app}:{token}".encode()) % self.limits.shards

    def _shard_keys(self, prefix: str) -> list[str]:
        return [prefix + DUE, prefix + LEASE, prefix + HEADS, prefix + STATS]

    # ---- script running ----

    async def _execute(self, calls: Sequence[ScriptCall]) -> list[Any]:
        # Counted as sent: with Valkey's commandstats (EVALSHA calls, not by script) they say
        # which script the store's time goes to (the benchmark's --profile reads both).
        for name, count in Counter(call.script.name for call in calls).items():
            REDIS_SCRIPT_CALLS.labels(script=name).inc(count)
        with vanished_as_unreachable():
            return await self._send(calls)

    async def _send(self, calls: Sequence[ScriptCall]) -> list[Any]:
        if len(calls) == 1:
            call = calls[0]
            try:
                return [
                    await cast(Any, self._redis).evalsha(
                        call.script.sha, len(call.keys), *call.keys, *call.args
                    )
                ]
            except NoScriptError as error:
                return [error]
        pipe = self._redis.pipeline(transaction=False)
        for call in calls:
            # Spelled as a raw command: redis-py's cluster pipeline blocks its evalsha() helper
            # (it cannot load missing scripts itself), yet routes EVALSHA by its keys; run_scripts
            # answers NOSCRIPT.
            pipe.execute_command("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
        return await pipe.execute(raise_on_error=False)

    async def run_scripts(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Each call's reply, in one round trip unless the server lacks a script (restart, flush):
        then the scripts are loaded and only the calls that did not run are sent again."""
        results = await self._execute(calls)
        REDIS_UNAVAILABLE.cleared()
        missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
        if missing:
            for script in {calls[i].script.name: calls[i].script for i in missing}.values():
                await cast(Any, self._redis).script_load(script.source)
            for i, result in zip(
                missing, await self._execute([calls[i] for i in missing]), strict=True
            ):
                results[i] = result
        for result in results:
            if isinstance(result, Exception):
                raise result
        return results

    # ---- enqueue ----

    def new_id(self, n: Notification) -> str:
        """A fresh id for `n`, naming its shard (so a status read goes to one shard)."""
        return f"{self.shard_of(n.app, n.device_token):02d}-{uuid.uuid4().hex}"

    def _enqueue_call(
        self, n: Notification, now_ms: int, notification_id: str | None = None
    ) -> tuple[ScriptCall, str]:
        shard = self.shard_of(n.app, n.device_token)
        prefix = shard_prefix(shard)
        device = f"{n.app}:{n.device_token}"
        notification_id = notification_id or self.new_id(n)
        keys = [
            *self._shard_keys(prefix),
            prefix + QUEUE + device,
            prefix + NOTE + notification_id,
            prefix + DEAD + device,
            prefix + SERVICE + device,
        ]
        if n.idempotency_key is not None:
            keys.append(f"{prefix}{IDEM}{device}:{n.idempotency_key}")
        args: list[ScriptArg] = [
            prefix,
            notification_id,
            device,
            now_ms,
            self.limits.retention_s,
            self.limits.max_per_device,
            self.limits.max_pending_per_shard,
            (n.service_id or "") if self.limits.supersede else "",
            *_order_args(n),
            n.payload,
            n.request_digest or "",
            *_notification_pairs(n),
        ]
        return ScriptCall(ENQUEUE, keys, args), device

    def _enqueue_result(self, n: Notification, reply: list[Any]) -> Accepted | QueueRefusal:
        verdict = _text(reply[0])
        if verdict == "duplicate":
            return Accepted(_text(reply[1]), duplicate=True)
        if verdict == "reused":
            assert n.idempotency_key is not None
            return IdempotencyKeyReused(n.idempotency_key, _text(reply[1]))
        if verdict == "accepted":
            return Accepted(_text(reply[1]), duplicate=False, superseded=_text(reply[2]) or None)
        if verdict == "dead":
            return DeadToken(n.app, n.device_token, _text(reply[1]), _optional_int(reply[2]))
        if verdict == "device_full":
            return DeviceQueueFull(
                n.app,
                n.device_token,
                self.limits.max_per_device,
                self.limits.device_full_retry_after_s,
            )
        return PendingCapReached(self.limits.max_pending, self.limits.pending_cap_retry_after_s)

    async def enqueue(
        self, n: Notification, *, notification_id: str | None = None, now_ms: int | None = None
    ) -> Accepted:
        """Store one notification (one round trip) or raise a QueueRefusal having stored nothing.

        A notification goes to the tail of its device's queue, unless it carries an order (both
        `order_group` and `order`, e.g. a chat session and a GMS transcriptPosition): then it is
        inserted before the first notification of the same device and group that has a higher
        order and was never sent (state queued; not in flight, not retrying), so lines GMS posts
        out of order still go out in position order. What was sent already cannot be called back:
        a line arriving after a higher one was sent (or is being sent, or retried) is still pushed,
        after it, never dropped. An ordered notification may thereby overtake unordered ones
        accepted before it, which is the one exception to per-device FIFO. A repeated position is
        caught by the idempotency key, not here.

        Sent again with the same `notification_id` (an attempt whose answer was lost, a spool
        replay), it is accepted once: the script finds the record and stores nothing more."""
        call, _ = self._enqueue_call(n, _now_ms(now_ms), notification_id)
        (reply,) = await self.run_scripts([call])
        result = self._enqueue_result(n, reply)
        if isinstance(result, QueueRefusal):
            raise result
        return result

    async def enqueue_many(
        self, ns: Sequence[Notification], *, now_ms: int | None = None
    ) -> list[Accepted | QueueRefusal]:
        """Up to MAX_BATCH notifications in one pipelined round trip, each atomic on its own."""
        if len(ns) > MAX_BATCH:
            raise ValueError(f"enqueue_many: {len(ns)} notifications, at most {MAX_BATCH} a call")
        if not ns:
            return []
        now = _now_ms(now_ms)
        replies = await self.run_scripts([self._enqueue_call(n, now)[0] for n in ns])
        return [self._enqueue_result(n, reply) for n, reply in zip(ns, replies, strict=True)]

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
        keys = self._shard_keys(prefix)
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
    ) -> ClaimBatch:
        """Lease up to `limit` due device heads, shared fairly over the shards (all of them, or
        only `shards`, e.g. the ones a wake-up named).

        `routes` says for each app whether its route sends (True) or its circuit is open (False):
        an open route's due devices are parked rather than claimed (claim_parked takes its probe),
        and a sending route's parked devices are due again, at the time they had. Apps left out
        are claimed as usual.

        Every shard asked is visited in the first round trip (the ones whose share is 0 only reap
        run-out leases and say whether they have work); shards that had more than their share are
        asked again for the shortfall, at most MAX_CLAIM_ROUNDS round trips in all."""
        routes = routes or {}
        now = _now_ms(now_ms)
        first = self._next_first_shard
        self._next_first_shard = (first + 1) % self.limits.shards
        visit = sorted(shards) or range(self.limits.shards)
        order = [visit[(first + i) % len(visit)] for i in range(len(visit))]
        quotas = spread(max(0, limit), order)
        claimed: list[ClaimedNotification] = []
        expired: list[ExpiredRecord] = []
        for _ in range(MAX_CLAIM_ROUNDS):
            replies = await self.run_scripts(
                [self._claim_call(s, quota, now, routes) for s, quota in quotas]
            )
            with_more = []
            for (shard, _quota), (more, leased, finalised) in zip(quotas, replies, strict=True):
                claimed += (self._leased_from(entry) for entry in leased)
                expired += (self._expired_from(entry) for entry in finalised)
                if more:
                    with_more.append(shard)
            shortfall = limit - len(claimed)
            if shortfall <= 0 or not with_more:
                break
            quotas = [(s, quota) for s, quota in spread(shortfall, with_more) if quota > 0]
        return ClaimBatch(claimed, expired)

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
        keys = [*self._shard_keys(prefix), prefix + PARKED + app]
        args: list[ScriptArg] = [prefix, now, self.limits.lease_ms, self.limits.retention_s]
        ((leased, finalised),) = await self.run_scripts([ScriptCall(CLAIM_PARKED, keys, args)])
        return ClaimBatch(
            [self._leased_from(entry) for entry in leased],
            [self._expired_from(entry) for entry in finalised],
        )

    async def parked(self, app: str) -> int:
        """How many of the app's devices are parked (its route's circuit is open)."""
        pipe = self._redis.pipeline(transaction=False)
        for shard in range(self.limits.shards):
            pipe.zcard(shard_prefix(shard) + PARKED + app)
        return sum(await pipe.execute())

    @staticmethod
    def _leased_from(entry: list[Any]) -> LeasedNotification:
        notification_id, claim_no, payload, *values = entry
        attempts, accepted_at_ms, updated_at_ms = values[len(_NOTIFICATION_FIELDS) :]
        return LeasedNotification(
            id=_text(notification_id),
            notification=_notification_from(payload, values[: len(_NOTIFICATION_FIELDS)]),
            attempts=int(attempts),
            accepted_at_ms=int(accepted_at_ms),
            waiting_since_ms=int(updated_at_ms),
            claim_no=int(claim_no),
        )

    @staticmethod
    def _expired_from(entry: list[Any]) -> ExpiredRecord:
        notification_id, app, service_id, action = entry
        return ExpiredRecord(
            _text(notification_id), _text(app), _optional_text(service_id), _optional_text(action)
        )

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

    async def settle(
        self,
        results: Sequence[tuple[ClaimedNotification, DeliveryOutcome]],
        *,
        now_ms: int | None = None,
    ) -> None:
        """Record a batch of outcomes in one pipelined round trip (one script per shard).

        Delivered/Failed/Expired make the head final and the next one due; Retry makes it due again
        after its delay. A result whose lease was lost (another claim since) is ignored."""
        if not results:
            return
        outcomes = {id(claim): _outcome_args(outcome) for claim, outcome in results}
        now = _now_ms(now_ms)
        calls = []
        for shard, claims in self._by_shard([claim for claim, _ in results]).items():
            prefix = shard_prefix(shard)
            args: list[ScriptArg] = [
                prefix,
                now,
                self.limits.retention_s,
                self.limits.dead_token_ttl_s,
            ]
            for claim in claims:
                args += (claim.id, claim.claim_no, *outcomes[id(claim)])
            calls.append(ScriptCall(SETTLE, self._shard_keys(prefix), args))
        await self.run_scripts(calls)

    async def release(
        self,
        claims: Sequence[ClaimedNotification],
        *,
        delay_ms: int = 0,
        now_ms: int | None = None,
    ) -> None:
        """Give claims back unsent: due again after `delay_ms`, attempts unchanged."""
        if not claims:
            return
        now = _now_ms(now_ms)
        calls = []
        for shard, leased in self._by_shard(claims).items():
            prefix = shard_prefix(shard)
            args: list[ScriptArg] = [prefix, now, max(0, delay_ms)]
            for claim in leased:
                args += (claim.id, claim.claim_no)
            calls.append(ScriptCall(RELEASE, self._shard_keys(prefix), args))
        await self.run_scripts(calls)

    # ---- reading ----

    async def get(self, notification_id: str) -> NotificationStatus | None:
        shard = shard_of_id(notification_id)
        if shard is None or shard >= self.limits.shards:
            return None
        record = cast(
            dict[bytes | str, bytes | str],
            await cast(Any, self._redis).hgetall(shard_prefix(shard) + NOTE + notification_id),
        )
        if not record:
            return None
        values = {_text(name): value for name, value in record.items()}
        return NotificationStatus(
            id=notification_id,
            app=_text(values["app"]),
            device_token=_text(values["device_token"]),
            service_id=_optional_text(values.get("service_id")),
            action=_optional_text(values.get("action")),
            state=DeliveryState(_text(values["state"])),
            attempts=int(values["attempts"]),
            accepted_at_ms=int(values["accepted_at_ms"]),
            updated_at_ms=int(values["updated_at_ms"]),
            expires_at=int(values["expires_at"]),
            delivered_at_ms=_optional_int(values.get("delivered_at_ms")),
            last_status=_optional_int(values.get("last_status")),
            last_reason=_optional_text(values.get("last_reason")),
            apns_id=_optional_text(values.get("apns_id")),
            apns_unique_id=_optional_text(values.get("apns_unique_id")),
            collapse_id=_optional_text(values.get("collapse_id")),
            push_type=_text(values["push_type"]),
            priority=int(values["priority"]),
        )

    async def device(self, app: str, token: str) -> DeviceStatus:
        prefix = shard_prefix(self.shard_of(app, token))
        device = f"{app}:{token}"
        pipe = self._redis.pipeline(transaction=False)
        pipe.llen(prefix + QUEUE + device)
        pipe.zscore(prefix + LEASE, device)
        pipe.hgetall(prefix + DEAD + device)
        pending, lease, dead = await pipe.execute()
        mark = {_text(name): value for name, value in dead.items()}
        return DeviceStatus(
            pending=int(pending),
            in_flight=lease is not None,
            dead=DeadTokenRecord(
                reason=_text(mark["reason"]),
                status=_optional_int(mark.get("status")),
                invalid_since_ms=_optional_int(mark.get("invalid_since_ms")),
                marked_at_ms=int(mark["marked_at_ms"]),
            )
            if mark
            else None,
        )

    async def clear_device(self, app: str, token: str, *, now_ms: int | None = None) -> int:
        """Lift the dead mark and purge the queue (purged ones become FAILED "Purged"; the one in
        flight is left to its worker). Returns how many were purged."""
        prefix = shard_prefix(self.shard_of(app, token))
        device = f"{app}:{token}"
        keys = [*self._shard_keys(prefix), prefix + QUEUE + device, prefix + DEAD + device]
        args: list[ScriptArg] = [prefix, device, _now_ms(now_ms), self.limits.retention_s]
        (purged,) = await self.run_scripts([ScriptCall(CLEAR_DEVICE, keys, args)])
        return int(purged)

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
                counters[_text(name)] += int(value)
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
        await self._wake_subscription()

    async def _wake_subscription(self) -> PubSub:
        """The wake channel's subscription, confirmed by the server before it is returned, so that
        every enqueue after the first wait_for_work call is seen."""
        if self._wake is None:
            wake = self._redis.pubsub()
            await wake.subscribe(WAKE_CHANNEL)
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                while True:
                    message = await wake.get_message(timeout=SUBSCRIBE_TIMEOUT_S)
                    if message is not None and message["type"] == "subscribe":
                        break
            self._wake = wake
        return self._wake

    async def wait_for_work(self, timeout_s: float) -> frozenset[int]:
        """As soon as an enqueue or a settle makes a device due: the shards where that happened
        (every wake-up already queued included, so one claim serves them all); an empty set
        after `timeout_s` without one.

        The first call subscribes (unless listen_for_work did); enqueues before the subscription
        are not seen, so subscribe, then claim, then wait."""
        wake = await self._wake_subscription()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        shards: set[int] = set()
        while True:
            # Wake-ups already queued are read even when no time is left: a worker whose next
            # due time has passed (a push enqueued between its claim and its look at due times)
            # then claims the shard named, not all of them.
            remaining = max(0.0, deadline - loop.time())
            message = await wake.get_message(ignore_subscribe_messages=True, timeout=remaining)
            while message is not None:
                shard = self._shard_by_prefix.get(message["data"])
                # A prefix this queue does not know (another shard count): look everywhere.
                shards.update(range(self.limits.shards) if shard is None else (shard,))
                message = await wake.get_message(ignore_subscribe_messages=True, timeout=0.0)
            if shards or deadline - loop.time() <= 0:
                return frozenset(shards)

    @property
    def client(self) -> RedisClient:
        return self._redis

    async def ping(self) -> bool:
        """Whether Redis answers (readiness)."""
        return bool(await cast(Any, self._redis).ping())

    async def aclose(self) -> None:
        if self._wake is not None:
            wake, self._wake = self._wake, None
            await wake.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
