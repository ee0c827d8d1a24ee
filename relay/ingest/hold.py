"""Storing one accepted push: into Redis, held while Redis is away, else into the local spool;
and the replay that moves the spool into Redis, with the same enqueue and the same id."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError
from redis.exceptions import TimeoutError as RedisTimeoutError

from relay.core.model import DeliveryState, Notification
from relay.core.redaction import mask_token
from relay.ingest.group_commit import GroupCommit
from relay.store.connection import ReplicaAcknowledgement, ReplicasBehind
from relay.store.errors import REDIS_ERRORS, REDIS_UNAVAILABLE
from relay.store.memory import MemoryWatch
from relay.store.queue import MAX_BATCH, RelayQueue
from relay.store.records import Accepted, NotificationStatus
from relay.store.refusals import QueueRefusal
from relay.store.spool import Spool, SpoolUnavailable
from relay.store.spool_log import Device, SpooledNotification
from relay.telemetry import metrics

log = structlog.get_logger("relay.ingest")

HOLD_FIRST_DELAY_S = 0.02
HOLD_MAX_DELAY_S = 0.2
REPLAY_ATTEMPT_TIMEOUT_S = 2.0
# Devices replayed at once (each device's own notifications still one after the other): the
# replay must outpace new pushes for spooled devices, which join the spool behind theirs.
REPLAY_AT_ONCE = 64
REPLAY_MAX_DELAY_S = 0.5
REPLAY_IDLE_WAKE_S = 1.0  # a device waiting out a refusal is looked at again this often
# What a later attempt may get past: Redis unreachable or slow, or its replicas behind.
NOT_YET: tuple[type[Exception], ...] = (*REDIS_ERRORS, TimeoutError, ReplicasBehind)
# A group's error that says nothing of its members and leaves nothing half done that a retry
# under the same ids would not mend (Redis away or slow) is each member's own. Any other may have
# cut the group's call part-way (Redis filling up between two shards' scripts, which it refuses
# whole, or a shard's own key the script cannot read; a member's unreadable key is only that
# member's refusal): each member finds its own.
GROUP_WIDE: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    TimeoutError,
    OSError,
)
GROUP_MAX = MAX_BATCH  # concurrent requests' enqueues in one enqueue_many call


class GroupCut(enum.Enum):
    """A group's outcome for a member whose own is unknown: its group's call failed part-way."""

    PART_WAY = "part-way"


GroupOutcome = Accepted | QueueRefusal | Exception | GroupCut


def hold_delay_s(attempt: int, remaining_s: float, jitter: float) -> float | None:
    """How long to wait after failed attempt number `attempt` (0-based) before the next one,
    with `remaining_s` left of the hold and `jitter` drawn from [0, 1); None when no further
    attempt fits. Exponential with half of it jittered, so that the requests held by one outage
    do not all return to Redis at the same instant."""
    ceiling = min(HOLD_MAX_DELAY_S, HOLD_FIRST_DELAY_S * 2**attempt)
    delay = ceiling * (0.5 + jitter / 2)
    return delay if delay < remaining_s else None


@dataclass
class _Lane:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class DeviceLanes:
    """One FIFO lock per device with a request in progress: a device's pushes are stored one
    after the other in arrival order, whether into Redis or the spool."""

    def __init__(self) -> None:
        self._lanes: dict[Device, _Lane] = {}

    @contextlib.asynccontextmanager
    async def lane(self, device: Device) -> AsyncIterator[None]:
        lane = self._lanes.setdefault(device, _Lane())
        lane.users += 1
        try:
            async with lane.lock:  # asyncio.Lock wakes its waiters in arrival order
                yield
        finally:
            lane.users -= 1
            if not lane.users:
                del self._lanes[device]


class Ingest:
    """The one way a notification is stored, for a request and for the replay alike."""

    def __init__(
        self,
        queue: RelayQueue,
        *,
        hold_s: float,
        spool: Spool | None = None,
        replicas: ReplicaAcknowledgement | None = None,
        memory: MemoryWatch | None = None,
    ) -> None:
        self.queue = queue
        self.hold_s = hold_s
        self.spool = spool
        self.replicas = replicas
        self.memory = memory
        self.lanes = DeviceLanes()
        self._random = random.Random()
        self._groups = GroupCommit(self._store_group, GROUP_MAX)

    async def accept(self, n: Notification, notification_id: str | None = None) -> Accepted:
        """Stored in Redis, or fsync'd in the spool: when Redis stayed unreachable for the whole
        hold, refused it for memory, is above its memory watermark (the last of its memory goes
        to draining, as RabbitMQ's memory alarm keeps it), or the device is spooled already.
        Raises QueueRefusal (stored nowhere), or a Redis error when there is no spool.
        `notification_id`: the id its payload was built for (RelayQueue.id_for), else a new one."""
        deadline = time.monotonic() + self.hold_s
        notification_id = notification_id or self.queue.new_id(n)
        device = (n.app, n.device_token)
        async with self.lanes.lane(device):
            if self.spool is not None and (seen := self.spool.ledger.idempotent_match(n)):
                return Accepted(seen, duplicate=True, spooled=True)
            if self.spool is None or not (self.spool.ledger.holds(device) or self._redis_full()):
                try:
                    return await self._store_held(n, notification_id, deadline)
                except NOT_YET:
                    if self.spool is None:
                        metrics.INGEST_HELD.labels(outcome="refused").inc()
                        raise
            # Its place in the spool is taken inside the lane; the fsync is waited for outside
            # it, so a device's next pushes share that fsync instead of queueing for their own.
            written = self._spool(n, notification_id)
        try:
            await written
        except OSError as error:  # the disk failed (spool_write_failed is logged): not stored
            metrics.SPOOL_REFUSED.labels(reason="spool_write_failed").inc()
            raise SpoolUnavailable(str(error)) from None
        metrics.INGEST_HELD.labels(outcome="spooled").inc()
        return Accepted(notification_id, duplicate=False, spooled=True)

    async def _store(
        self, n: Notification, notification_id: str, now_ms: int | None = None
    ) -> Accepted:
        """The enqueue, and the replicas' acknowledgement when asked for (redis.ack_replicas):
        the same for a request and for the replay, under the same id, so that storing again
        what is stored already (an answer lost, a replay repeated) changes nothing."""
        accepted = await self.queue.enqueue(n, notification_id=notification_id, now_ms=now_ms)
        if self.replicas is not None and not accepted.duplicate:
            await self.replicas.confirm([accepted.id])
        return accepted

    async def _store_group(self, group: Sequence[tuple[Notification, str]]) -> list[GroupOutcome]:
        """_store for concurrent requests' notifications at once: one enqueue_many, one replica
        acknowledgement; each member's own outcome (a refusal, or an error to hold it for)."""
        try:
            outcomes: list[GroupOutcome] = list(
                await self.queue.enqueue_many(
                    [n for n, _ in group], ids=[notification_id for _, notification_id in group]
                )
            )
        except Exception as error:  # each member is answered with it, or finds its own
            if len(group) == 1 or isinstance(error, GROUP_WIDE):
                return [error] * len(group)
            metrics.INGEST_GROUPS_CUT.inc()
            log.warning("ingest_group_cut", pushes=len(group), error=repr(error))
            return [GroupCut.PART_WAY] * len(group)
        if self.replicas is not None:
            stored = [o.id for o in outcomes if isinstance(o, Accepted) and not o.duplicate]
            if stored:
                try:
                    await self.replicas.confirm(stored)
                except NOT_YET as error:
                    outcomes = [
                        error if isinstance(o, Accepted) and not o.duplicate else o
                        for o in outcomes
                    ]
        return outcomes

    async def _store_first(self, n: Notification, notification_id: str) -> Accepted:
        """The first attempt of _store: with the enqueues of the requests that arrive meanwhile
        (relay.ingest.group_commit), alone when none do."""
        outcome = await self._groups.submit((n, notification_id))
        if isinstance(outcome, Accepted):
            return outcome
        if outcome is GroupCut.PART_WAY:
            return await self._stored_or_store(n, notification_id)
        raise outcome

    async def _stored_or_store(self, n: Notification, notification_id: str) -> Accepted:
        """After a group cut part-way: accepted when the group's call stored it (found under its
        id; storing it again would be refused at maxmemory, and could store it twice once its
        final record is evicted), else _store alone, which finds its own refusal or error."""
        if await self.queue.get(notification_id) is None:
            return await self._store(n, notification_id)
        # What it superseded, if anything, is not known now: only that count misses it.
        if self.replicas is not None:
            await self.replicas.confirm([notification_id])
        return Accepted(notification_id, duplicate=False)

    async def _store_held(self, n: Notification, notification_id: str, deadline: float) -> Accepted:
        """_store, retried while Redis is unreachable (or its replicas behind) until `deadline`;
        then the last error."""
        attempt = 0
        while True:
            try:
                async with asyncio.timeout_at(_loop_time_at(deadline)):
                    if attempt == 0:
                        accepted = await self._store_first(n, notification_id)
                    else:
                        accepted = await self._store(n, notification_id)
            except NOT_YET as error:
                if isinstance(error, OutOfMemoryError) and self.spool is not None:
                    # Full, not away: waiting does not help the way a failover's end does.
                    if self.memory is not None:
                        self.memory.refused_for_memory()
                    raise
                delay = hold_delay_s(attempt, deadline - time.monotonic(), self._random.random())
                if delay is None:
                    raise
                if attempt == 0:  # one episode per outage in the log, not a line per push
                    REDIS_UNAVAILABLE.occurred("ingest_hold", error)
                attempt += 1
                await asyncio.sleep(delay)
                continue
            if attempt:
                metrics.INGEST_HELD.labels(outcome="stored").inc()
            return accepted

    def _spool(self, n: Notification, notification_id: str) -> Awaitable[None]:
        """Take the notification into the spool (raises SpoolFull); await the result for the
        fsync."""
        assert self.spool is not None
        was_empty = not self.spool.ledger.pending
        written = self.spool.append(
            SpooledNotification(notification_id, n, int(time.time() * 1000))
        )
        if was_empty:
            log.warning(
                "spooling_started",
                reason="redis memory above the watermark"
                if self._redis_full()
                else "redis unreachable for the whole hold",
                hold_s=self.hold_s,
                directory=str(self.spool.directory),
            )
        return written

    def _redis_full(self) -> bool:
        return self.memory is not None and self.memory.above_watermark

    def holds(self, n: Notification) -> bool:
        """Whether the spool holds notifications for n's device (new ones go behind them)."""
        return self.spool is not None and self.spool.ledger.holds((n.app, n.device_token))

    def spooled_status(self, notification_id: str) -> NotificationStatus | None:
        """A spooled notification's status (state `spooled`): what it will be in Redis."""
        if self.spool is None or notification_id not in self.spool.ledger.pending:
            return None
        spooled = self.spool.ledger.pending[notification_id]
        return NotificationStatus.unsent(
            spooled.id, spooled.notification, DeliveryState.SPOOLED, spooled.spooled_at_ms
        )

    # ---- replay ----

    async def replay(self, stop: asyncio.Event) -> None:
        """Move the spool into Redis, oldest first, until `stop` is set. Each notification is
        the same enqueue with the same id as at ingest, so a replay repeated after a crash, or
        after an attempt whose answer was lost, stores it once."""
        spool = self.spool
        assert spool is not None
        blocked_until: dict[Device, float] = {}
        failures = 0
        while not stop.is_set():
            spool.changed.clear()  # before looking: an add from now on wakes the wait below
            heads = spool.ledger.heads_to_replay(blocked_until, time.monotonic(), REPLAY_AT_ONCE)
            if not heads or self._redis_full():  # a full Redis is replayed into as it drains
                await _first_of(stop, spool.changed, REPLAY_IDLE_WAKE_S)
                continue
            outcomes = await asyncio.gather(
                *(self._replay_one(spooled, blocked_until) for spooled in heads),
                return_exceptions=True,
            )
            errors = [o for o in outcomes if isinstance(o, Exception)]
            for error in errors:
                if not isinstance(error, NOT_YET):
                    # Not to be retried blindly, nor to end the replay: said, then retried.
                    log.error("spool_replay_failed", error=repr(error), exc_info=error)
            if errors:
                failures += 1
                if failures == 1:
                    log.warning("spool_replay_waiting", error=str(errors[0]) or "timeout")
                ceiling = min(REPLAY_MAX_DELAY_S, HOLD_FIRST_DELAY_S * 2**failures)
                await _first_of(stop, None, ceiling * (0.5 + self._random.random() / 2))
                continue
            failures = 0
            if not spool.ledger.pending:
                log.info("spool_drained", directory=str(spool.directory))

    async def _replay_one(
        self, spooled: SpooledNotification, blocked_until: dict[Device, float]
    ) -> None:
        # No device lane: while the device's spooled notifications are not all marked, a new
        # push for it only appends behind them, and the mark comes after the store; so a push
        # that finds the device clear goes to Redis after everything replayed, and a push never
        # waits for the replay's Redis call.
        assert self.spool is not None
        n = spooled.notification
        try:
            async with asyncio.timeout(REPLAY_ATTEMPT_TIMEOUT_S):
                accepted = await self._store(n, spooled.id, spooled.spooled_at_ms)
        except ReplicasBehind:
            raise  # not yet: the spool keeps it until the write is as safe as a direct one
        except QueueRefusal as refusal:
            if refusal.retry_after_s is not None:
                # A full device queue or pending cap: waiting helps; the device waits behind its
                # head, the rest of the spool goes on.
                blocked_until[spooled.device] = time.monotonic() + refusal.retry_after_s
                log.warning("spool_replay_deferred", id=spooled.id, reason=refusal.reason)
                return
            # Refused for good (a dead token): it was answered 200, it cannot be sent.
            metrics.SPOOL_REFUSED.labels(reason=refusal.reason).inc()
            log.warning(
                "spool_replay_refused",
                id=spooled.id,
                app=n.app,
                token=mask_token(n.device_token),
                reason=refusal.reason,
            )
            self.spool.mark_replayed(spooled.id)
            return
        blocked_until.pop(spooled.device, None)
        self.spool.mark_replayed(spooled.id)
        metrics.SPOOL_REPLAYED.inc()
        if not accepted.duplicate:
            metrics.NOTIFICATIONS_ENQUEUED.labels(app=n.app).inc()

    async def drain(self, timeout_s: float) -> bool:
        """Wait (at shutdown) up to `timeout_s` for the replay to empty the spool."""
        deadline = time.monotonic() + timeout_s
        while self.spool is not None and self.spool.ledger.pending:
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True


def _loop_time_at(deadline: float) -> float:
    """The event loop's clock at the time.monotonic() instant `deadline`."""
    return asyncio.get_running_loop().time() + (deadline - time.monotonic())


async def _first_of(stop: asyncio.Event, other: asyncio.Event | None, timeout_s: float) -> None:
    """Return when `stop` or `other` is set, or after `timeout_s`."""
    waits = [asyncio.ensure_future(stop.wait())]
    if other is not None:
        waits.append(asyncio.ensure_future(other.wait()))
    try:
        await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
