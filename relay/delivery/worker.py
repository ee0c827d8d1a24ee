"""The delivery loop: claim due notifications, send each via its app's client, settle in batches.

The loop keeps the in-flight state (sends, pauses, probes, draining at shutdown); the route
circuits (relay.delivery.route_circuits), the settle buffer (relay.delivery.settle_buffer) and the
claim faults (relay.delivery.delivery_report) keep their own; the decisions are pure elsewhere
(relay.core.policy, relay.core.circuit)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

from relay.core.activities import without_device_dead_mark
from relay.core.circuit import CircuitPolicy
from relay.core.model import (
    ApnsResponse,
    ClaimedNotification,
    DeliveryOutcome,
    Expired,
    Failed,
    Notification,
    PauseApp,
    Retry,
    apns_id_for,
)
from relay.core.policy import TRANSPORT_FAILURE_STATUS, RetryPolicy, classify, is_route_failure
from relay.delivery.delivery_report import (
    CLAIMS_FAILING_READY_S,
    ClaimFaults,
    count_expired,
    count_outcome,
    log_attempt,
)
from relay.delivery.route_circuits import ROUTE_REFRESH_S, RouteCircuits
from relay.delivery.sender import Sender
from relay.delivery.settle_buffer import SETTLE_WINDOW_S, SettleBuffer
from relay.store.activity_store import ActivityStore
from relay.store.errors import REDIS_ERRORS, REDIS_UNAVAILABLE
from relay.store.queue import RelayQueue
from relay.store.records import ClaimBatch
from relay.store.routes import RouteStore
from relay.telemetry import metrics

log = structlog.get_logger("relay.worker")
__all__ = ["CLAIMS_FAILING_READY_S", "DeliveryWorker"]

IDLE_WAIT_MAX_S = (
    1.0  # an idle worker still claims once a second: that is when expired leases return
)
REDIS_RETRY_S = 0.5
PAUSED_RECHECK_S = 1.0
FINAL_FLUSH_S = 2.0  # beyond the grace period: one Redis round trip, or several while it is down
# How long a read of the shards' next due time is trusted while that time is still ahead: reading
# it (two ZRANGEs per shard) before every wait cost a round trip per notification at low rates.
# This worker's own retries and releases lower it at once; anything else (another worker's retry,
# a lease of a worker that died) is seen at the next read, within this long.
DUE_REREAD_S = 1.0
# After a wake-up, how long the worker waits for more before it claims, so that pushes arriving
# within this window share one claim (at hundreds a second each would otherwise pay its own).
# Skipped when the last claim was full (a backlog: no waiting), bounded under the latency targets.
CLAIM_WINDOW_S = 0.001


@dataclass
class AppGate:
    """Whether an app may send: closed on credential errors, re-opened by a successful probe."""

    paused_until: float = 0.0
    reason: str | None = None
    probing: bool = False

    @property
    def paused(self) -> bool:
        return self.reason is not None


@dataclass
class DeliveryWorker:
    queue: RelayQueue
    clients: Mapping[str, Sender]
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    batch_size: int = 256
    pause_probe_s: float = 30.0
    circuit_policy: CircuitPolicy = field(default_factory=CircuitPolicy)
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.time
    # Per app, the actions its metrics name as themselves (config.App.known_actions).
    known_actions: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Bounded waits that let pushes arriving close together share a round trip (0: none).
    claim_window_s: float = CLAIM_WINDOW_S
    settle_window_s: float = SETTLE_WINDOW_S

    def __post_init__(self) -> None:
        # Each app's route circuit as last read or written here; refreshed every ROUTE_REFRESH_S.
        self.circuits = RouteCircuits(
            RouteStore(self.queue),
            {app: client.route for app, client in self.clients.items()},
            policy=self.circuit_policy,
            rng=self.rng,
            clock=self.clock,
        )
        # The earliest due time of any shard as last read (inf: nothing due), and when it was read.
        self._next_due_s = float("inf")
        self._due_read_at = float("-inf")
        self._probes: dict[str, asyncio.Task[None]] = {}
        self.capacity = sum(client.max_in_flight for client in self.clients.values()) or 1
        self.gates = {app: AppGate() for app in self.clients}
        self.sending: dict[asyncio.Task[None], ClaimedNotification] = {}
        self.on_wire: set[asyncio.Task[None]] = set()  # sends that may have reached APNs
        self.settles = SettleBuffer(self.queue, window_s=self.settle_window_s)
        self.claim_faults = ClaimFaults(self.clock)
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        # Done at stop(): one future every wait shares, rather than a task per wait.
        self._stopped: asyncio.Future[None] | None = None
        for app in self.clients:
            metrics.APP_PAUSED.labels(app=app).set(0)

    # The loop

    async def run(self, grace_s: float = 10.0) -> None:
        """Deliver until stop() is called, then let sends in flight finish within grace_s.

        Sends still unanswered at the end of the grace period are cancelled and their claims
        released at once (due again now, attempts unchanged) rather than left to their leases.
        """
        self._stopped = asyncio.get_running_loop().create_future()
        if self._stopping.is_set():
            self._stopped.set_result(None)
        settler = asyncio.create_task(self.settles.run(), name="settler")
        try:
            with contextlib.suppress(*REDIS_ERRORS, TimeoutError):
                await self.queue.listen_for_work()  # else the first wait subscribes
            # The shards a wake-up named: the next claim asks only those. Empty: every shard,
            # which is also what a wait that timed out (a retry or a run-out lease due) gets.
            woken: frozenset[int] = frozenset()
            while not self._stopping.is_set():
                free = self.capacity - len(self.sending)
                # While it can claim, the loop's claims carry the settles (settle_buffer).
                self.settles.carried(free > 0)
                if free <= 0:
                    self._slot_freed.clear()
                    await self._wait_any(self._slot_freed.wait())
                    continue
                wanted = min(free, self.batch_size)
                settling = self.settles.take()
                try:
                    await self.circuits.refresh()
                    self._start_probes()
                    sending = self.circuits.sending_by_app()
                    batch = await self.queue.claim(
                        wanted, shards=woken, routes=sending, settling=settling
                    )
                except REDIS_ERRORS as exc:
                    self.settles.restore(settling)
                    REDIS_UNAVAILABLE.occurred("claim", exc)
                    await self._wait_any(asyncio.sleep(REDIS_RETRY_S))
                    continue
                if batch.settlement_error is not None:
                    REDIS_UNAVAILABLE.occurred("settle", batch.settlement_error)
                    self.settles.refused(settling)
                count_expired(batch)
                self.claim_faults.record(batch, every_shard=not woken)
                for claim in batch.claimed:
                    self._launch(claim, probe=False)
                # A claim that got all it asked for may have left more anywhere: ask everywhere.
                # One that got less has emptied what it asked; the other shards had no wake-up
                # since the last claim of every shard, so they can wait for one, or for their
                # next due time (a retry, a run-out lease), after which every shard is asked.
                narrow, woken = bool(woken), frozenset()
                if len(batch.claimed) < wanted and (narrow or not batch.claimed):
                    woken = await self._wait_for_work()
                    if woken and self.claim_window_s > 0:
                        woken = await self._gather_wakeups(woken)
            self.settles.carried(False)
            await self._drain(grace_s)
        finally:
            await self._stop_settler(settler)

    def stop(self) -> None:
        self._stopping.set()
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def _wait_any(self, awaitable: object) -> None:
        """Wait for `awaitable` or for stop(), whichever comes first. A wait that fails (Redis
        went away while it listened) only ends the wait: the next claim says what is wrong."""
        waiter = asyncio.ensure_future(awaitable)  # type: ignore[call-overload]
        assert self._stopped is not None  # run() made it
        await asyncio.wait({waiter, self._stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not waiter.done():
            waiter.cancel()
            # Wait for its end without raising it: a cancelled wait can still end in the
            # error it met meanwhile (Redis closing the connection at a failover or a stop).
            await asyncio.wait({waiter})
        if not waiter.cancelled() and (error := waiter.exception()) is not None:
            log.warning("wait_failed", error=repr(error))
            await self._wait_any(asyncio.sleep(REDIS_RETRY_S))

    async def _wait_for_work(self) -> frozenset[int]:
        """The shards a wake-up names; empty when the wait ended otherwise (due time, stop).
        No claim is coming meanwhile: the settles that ripen are written alone."""
        self.settles.carried(False)
        waiting = asyncio.ensure_future(self.queue.wait_for_work(await self._idle_wait_s()))
        await self._wait_any(waiting)
        self.settles.carried(True)
        if waiting.cancelled() or waiting.exception() is not None:
            return frozenset()
        return waiting.result()

    async def _gather_wakeups(self, woken: frozenset[int]) -> frozenset[int]:
        """The claim window: wake-ups arriving within it join this claim."""
        await asyncio.sleep(self.claim_window_s)  # bounded: stop() waits no longer
        try:
            return woken | await self.queue.wait_for_work(0.0)
        except REDIS_ERRORS:
            return woken

    async def _idle_wait_s(self) -> float:
        # An open route's probe is due at a time no Redis index holds: wake for it too.
        longest = IDLE_WAIT_MAX_S
        if not self.circuits.all_sending:
            longest = ROUTE_REFRESH_S
        now = self.clock()
        if self._next_due_s <= now or now - self._due_read_at >= DUE_REREAD_S:
            try:
                next_due_ms = await self.queue.next_due_ms()
            except REDIS_ERRORS:
                return REDIS_RETRY_S
            self._due_read_at = now
            self._next_due_s = float("inf") if next_due_ms is None else next_due_ms / 1000
        return min(longest, max(0.0, self._next_due_s - now))

    def _due_at(self, due_s: float) -> None:
        """Something this worker wrote is due at `due_s`: wait no longer than that."""
        self._next_due_s = min(self._next_due_s, due_s)

    def _launch(self, claim: ClaimedNotification, *, probe: bool) -> None:
        task = asyncio.create_task(self._deliver(claim, probe=probe))
        self.sending[task] = claim
        task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        claim = self.sending.pop(task, None)
        self.on_wire.discard(task)
        self._slot_freed.set()
        if claim is not None and not task.cancelled() and (error := task.exception()):
            # A relay bug: failing the one notification keeps its device from being stuck
            # behind it, claimed and crashing again at every lease.
            log.error("delivery_crashed", id=claim.id, app=claim.notification.app, exc_info=error)
            self._settle(claim, Failed("RelayError", 0))

    async def _drain(self, grace_s: float) -> None:
        # Claims that never reached the wire (waiting for a stream or a connection) go back to
        # the queue at once; sends on the wire get the grace period to be answered.
        for probe in list(self._probes.values()):
            probe.cancel()
        released = await self._take_back([t for t in self.sending if t not in self.on_wire])
        if not self.sending:
            return
        log.info("draining", in_flight=len(self.sending), released=released, grace_s=grace_s)
        _, late = await asyncio.wait(set(self.sending), timeout=grace_s)
        if late:
            log.warning("grace_period_over", released=await self._take_back(list(late)))

    async def _take_back(self, tasks: list[asyncio.Task[None]]) -> int:
        """Cancel these sends and give their claims back to the queue, due now, attempts as
        they were. Done here, not in the task: a task cancelled before it ever ran runs none
        of its code."""
        if not tasks:
            return 0
        claims = [(self.sending[task], task in self.on_wire) for task in tasks]
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        cancelled = [claim for task, claim in zip(tasks, claims, strict=True) if task.cancelled()]
        for claim, on_wire in cancelled:
            self._release(claim, 0.0, possibly_sent=on_wire)
        return len(cancelled)

    # One notification

    async def _deliver(self, claim: ClaimedNotification, *, probe: bool) -> None:
        notification = claim.notification
        client = self.clients.get(notification.app)
        if client is None:
            self._settle(claim, Failed("UnknownApp", 0))
            return
        gate = self.gates[notification.app]
        now = self.clock()
        if notification.expires_at <= now:
            self._settle(claim, Expired())
            return
        if not probe and not self.circuits.sending(notification.app):
            # Its route opened since the claim: unsent and uncounted, parked by the next claim.
            self._release(claim, 0.0)
            return
        if gate.paused:
            if now < gate.paused_until or gate.probing:
                self._release(claim, max(PAUSED_RECHECK_S, gate.paused_until - now))
                return
            gate.probing = True  # this one is the probe: does the app work again?
        started = time.monotonic()
        task = asyncio.current_task()
        assert task is not None
        try:
            response = await client.send(
                notification, apns_id_for(claim.id), on_wire=lambda: self.on_wire.add(task)
            )
        except asyncio.CancelledError:
            gate.probing = False  # _take_back gives the claim back
            raise
        latency = time.monotonic() - started
        route_sending = await self.circuits.answered(
            notification.app, notification.device_token, response
        )
        now_ms = int(self.clock() * 1000)
        outcome = classify(
            response,
            attempt=claim.attempts + 1,
            expires_at_s=notification.expires_at,
            now_ms=now_ms,
            policy=self.retry,
            rng=self.rng,
            route_delivered=self.circuits.delivered_at_ms(notification.app)
            > claim.waiting_since_ms,
        )
        gate.probing = False
        if isinstance(outcome, Retry) and is_route_failure(response) and not route_sending:
            # The route fails, not this notification: the attempt does not count, and the
            # device waits parked until a probe finds the route working.
            self._release(claim, 0.0, possibly_sent=self._maybe_delivered(task, response))
        elif isinstance(outcome, PauseApp):
            self._pause(notification.app, outcome)
            self._release(
                claim, self.pause_probe_s, possibly_sent=self._maybe_delivered(task, response)
            )
        else:
            if gate.paused:
                self._resume(notification.app)
            if isinstance(outcome, Retry) and outcome.refresh_jwt:
                client.refresh_jwt()
            outcome, activity_token_dead = without_device_dead_mark(notification.push_type, outcome)
            if activity_token_dead:
                await self._mark_activity_token_dead(notification)
            self._settle(claim, outcome)
        log_attempt(claim, response, outcome, latency)

    async def _mark_activity_token_dead(self, notification: Notification) -> None:
        """Remembered for the next GMS event, which drops the registration; a Redis fault only
        costs one more push to the dead token."""
        try:
            await ActivityStore(self.queue).mark_token_dead(
                notification.app, notification.device_token, self.queue.limits.dead_token_ttl_s
            )
        except REDIS_ERRORS as exc:
            REDIS_UNAVAILABLE.occurred("activity_token_dead", exc)

    def _maybe_delivered(self, task: asyncio.Task[None], response: ApnsResponse) -> bool:
        """Whether a send given back may have reached the phone (invariant 12: it then keeps its
        place): its request went out on a connection and no answer came. An APNs answer (403,
        429, 5xx) says it was not delivered; an unprocessed stream (above GOAWAY's
        last_stream_id) was never handled."""
        unanswered = response.status == TRANSPORT_FAILURE_STATUS and not response.unprocessed
        return task in self.on_wire and unanswered

    # Route probes: the circuits are relay.delivery.route_circuits'; a probe is a send.

    def _start_probes(self) -> None:
        for app in self.circuits.probes_due():
            if app not in self._probes:
                probe = asyncio.create_task(self._probe(app), name=f"probe:{app}")
                self._probes[app] = probe
                probe.add_done_callback(functools.partial(self._probe_ended, app))

    def _probe_ended(self, app: str, _: asyncio.Task[None]) -> None:
        del self._probes[app]

    async def _probe(self, app: str) -> None:
        """Take the route's probe (one across all workers) and send its longest-parked
        notification; nothing parked: the route stays open, probed again later."""
        if not await self.circuits.start_probe(app):
            return
        try:
            batch = await self.queue.claim_parked(app)
        except REDIS_ERRORS as exc:
            log.warning("redis_unavailable", operation="probe", error=str(exc))
            batch = ClaimBatch([], [])
        count_expired(batch)
        self.claim_faults.record(batch, every_shard=False)
        if batch.claimed:
            self._launch(batch.claimed[0], probe=True)
            return
        await self.circuits.abandon_probe(app)

    def _pause(self, app: str, outcome: PauseApp) -> None:
        gate = self.gates[app]
        if not gate.paused:
            log.error("app_paused", app=app, status=outcome.status, reason=outcome.reason)
        gate.reason = outcome.reason
        gate.paused_until = self.clock() + self.pause_probe_s
        metrics.APP_PAUSED.labels(app=app).set(1)

    def _resume(self, app: str) -> None:
        gate = self.gates[app]
        log.info("app_resumed", app=app, was=gate.reason)
        gate.reason = None
        gate.paused_until = 0.0
        metrics.APP_PAUSED.labels(app=app).set(0)

    @property
    def paused_apps(self) -> dict[str, str]:
        return {app: gate.reason for app, gate in self.gates.items() if gate.reason}

    # Settling: outcomes are written to Redis in batches (relay.delivery.settle_buffer).

    def _settle(self, claim: ClaimedNotification, outcome: DeliveryOutcome) -> None:
        if isinstance(outcome, Retry):
            self._due_at(self.clock() + outcome.delay_ms / 1000)
        self.settles.settle(claim, outcome)
        count_outcome(claim, outcome, self.known_actions, self.clock())

    def _release(
        self, claim: ClaimedNotification, delay_s: float, *, possibly_sent: bool = False
    ) -> None:
        self._due_at(self.clock() + delay_s)
        self.settles.release(claim, int(delay_s * 1000), possibly_sent=possibly_sent)

    async def _stop_settler(self, settler: asyncio.Task[None]) -> None:
        """Let the settler write what is buffered, but never hang shutdown on Redis.

        The settler is not cancelled while it may be mid-write: redis-py can turn a cancellation
        into a connection error, which the retry loop would then swallow.
        """
        self.settles.close()
        await asyncio.wait({settler}, timeout=FINAL_FLUSH_S)
        if not settler.done():
            settler.cancel()
            log.error(
                "unsettled_at_exit",
                settled=len(self.settles.settled),
                released=len(self.settles.released),
                note="their leases run out and they are claimed again",
            )

    def delivery_failing(self) -> str | None:
        """Readiness: why delivery is failing (relay.delivery.delivery_report.ClaimFaults)."""
        return self.claim_faults.failing()
