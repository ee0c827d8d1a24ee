"""The delivery loop: claim due notifications, send each via its app's client, settle in batches.

Over ~400 lines: one loop whose parts (claiming, sending, route circuits and their probes, pauses,
batched settling, draining at shutdown) share the worker's in-flight state; the decisions
themselves are pure elsewhere (relay.core.policy, relay.core.circuit)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import structlog

from relay.core import circuit
from relay.core.activities import without_device_dead_mark
from relay.core.circuit import Circuit, CircuitPolicy
from relay.core.model import (
    ApnsResponse,
    ClaimedNotification,
    Delivered,
    DeliveryOutcome,
    Expired,
    Failed,
    Notification,
    PauseApp,
    Retry,
    apns_id_for,
)
from relay.core.policy import TRANSPORT_FAILURE_STATUS, RetryPolicy, classify, is_route_failure
from relay.core.redaction import mask_token
from relay.delivery.sender import Sender
from relay.store.activity_store import ActivityStore
from relay.store.errors import REDIS_ERRORS, REDIS_UNAVAILABLE
from relay.store.queue import RelayQueue
from relay.store.records import ClaimBatch
from relay.store.routes import RouteStore, StoredCircuit
from relay.telemetry import metrics
from relay.telemetry.logs import RepeatedCondition

log = structlog.get_logger("relay.worker")
# Claims meeting script errors: an episode in the logs (started, summaries, ended), not a line
# per claim.
CLAIMS_FAILING = RepeatedCondition("claims_failing", log)
CLAIMS_FAILING_READY_S = 10.0

IDLE_WAIT_MAX_S = (
    1.0  # an idle worker still claims once a second: that is when expired leases return
)
REDIS_RETRY_S = 0.5
PAUSED_RECHECK_S = 1.0
FINAL_FLUSH_S = 2.0  # beyond the grace period: one Redis round trip, or several while it is down
# How stale a worker's view of the route circuits may get: a route another worker opened is parked
# here at most this late (the sends meanwhile fail and do not count), and probes are this punctual.
ROUTE_REFRESH_S = 0.5
ROUTE_WRITE_TRIES = 5
# How long a read of the shards' next due time is trusted while that time is still ahead: reading
# it (two ZRANGEs per shard) before every wait cost a round trip per notification at low rates.
# This worker's own retries and releases lower it at once; anything else (another worker's retry,
# a lease of a worker that died) is seen at the next read, within this long.
DUE_REREAD_S = 1.0  # compare-and-set rounds before a route update gives way to the next event


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

    def __post_init__(self) -> None:
        self.route_store = RouteStore(self.queue)
        # Each app's route circuit as last read or written here; refreshed every ROUTE_REFRESH_S.
        self.routes = {app: StoredCircuit(Circuit(), 0) for app in self.clients}
        self._routes_read_at = float("-inf")
        # The earliest due time of any shard as last read (inf: nothing due), and when it was read.
        self._next_due_s = float("inf")
        self._due_read_at = float("-inf")
        self._route_locks = {app: asyncio.Lock() for app in self.clients}
        self._probes: dict[str, asyncio.Task[None]] = {}
        # The last 200 seen here per app: a quiet success on a closed route is not written to
        # Redis, but still proves the route delivers (poison detection).
        self._delivered_at_ms = dict.fromkeys(self.clients, 0)
        self.capacity = sum(client.max_in_flight for client in self.clients.values()) or 1
        self.gates = {app: AppGate() for app in self.clients}
        self.sending: dict[asyncio.Task[None], ClaimedNotification] = {}
        self.on_wire: set[asyncio.Task[None]] = set()  # sends that may have reached APNs
        self.settle_buffer: list[tuple[ClaimedNotification, DeliveryOutcome]] = []
        # (claim, due again after ms, whether its request went out: possibly sent)
        self.release_buffer: list[tuple[ClaimedNotification, int, bool]] = []
        self._buffer_ready = asyncio.Event()
        # Shards whose claims error: since when, and the first error (readiness).
        self._failing_shards: dict[int, tuple[float, str]] = {}
        self._slot_freed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._sends_ended = asyncio.Event()
        for app, client in self.clients.items():
            metrics.APP_PAUSED.labels(app=app).set(0)
            metrics.ROUTE_STATE.labels(app=app, environment=client.route.environment).set(0)
            for state in circuit.RouteState:  # at 0 from the start: rate() needs a first sample
                metrics.ROUTE_TRANSITIONS.labels(
                    app=app, environment=client.route.environment, to=state.value
                )

    # The loop

    async def run(self, grace_s: float = 10.0) -> None:
        """Deliver until stop() is called, then let sends in flight finish within grace_s.

        Sends still unanswered at the end of the grace period are cancelled and their claims
        released at once (due again now, attempts unchanged) rather than left to their leases.
        """
        settler = asyncio.create_task(self._settle_until_sends_end(), name="settler")
        try:
            with contextlib.suppress(*REDIS_ERRORS, TimeoutError):
                await self.queue.listen_for_work()  # else the first wait subscribes
            # The shards a wake-up named: the next claim asks only those. Empty: every shard,
            # which is also what a wait that timed out (a retry or a run-out lease due) gets.
            woken: frozenset[int] = frozenset()
            while not self._stopping.is_set():
                free = self.capacity - len(self.sending)
                if free <= 0:
                    self._slot_freed.clear()
                    await self._wait_any(self._slot_freed.wait())
                    continue
                wanted = min(free, self.batch_size)
                try:
                    await self._refresh_routes()
                    self._start_probes()
                    sending = {app: view.circuit.sending for app, view in self.routes.items()}
                    batch = await self.queue.claim(wanted, shards=woken, routes=sending)
                except REDIS_ERRORS as exc:
                    REDIS_UNAVAILABLE.occurred("claim", exc)
                    await self._wait_any(asyncio.sleep(REDIS_RETRY_S))
                    continue
                self._count_expired(batch)
                self._count_claim_faults(batch, every_shard=not woken)
                for claim in batch.claimed:
                    self._launch(claim, probe=False)
                # A claim that got all it asked for may have left more anywhere: ask everywhere.
                # One that got less has emptied what it asked; the other shards had no wake-up
                # since the last claim of every shard, so they can wait for one, or for their
                # next due time (a retry, a run-out lease), after which every shard is asked.
                narrow, woken = bool(woken), frozenset()
                if len(batch.claimed) < wanted and (narrow or not batch.claimed):
                    woken = await self._wait_for_work()
            await self._drain(grace_s)
        finally:
            await self._stop_settler(settler)

    def stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def _wait_any(self, awaitable: object) -> None:
        """Wait for `awaitable` or for stop(), whichever comes first. A wait that fails (Redis
        went away while it listened) only ends the wait: the next claim says what is wrong."""
        waiter = asyncio.ensure_future(awaitable)  # type: ignore[call-overload]
        stopper = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for pending in (waiter, stopper):
            if not pending.done():
                pending.cancel()
                # Wait for its end without raising it: a cancelled wait can still end in the
                # error it met meanwhile (Redis closing the connection at a failover or a stop).
                await asyncio.wait({pending})
        if not waiter.cancelled() and (error := waiter.exception()) is not None:
            log.warning("wait_failed", error=repr(error))
            await self._wait_any(asyncio.sleep(REDIS_RETRY_S))

    async def _wait_for_work(self) -> frozenset[int]:
        """The shards a wake-up names; empty when the wait ended otherwise (due time, stop)."""
        waiting = asyncio.ensure_future(self.queue.wait_for_work(await self._idle_wait_s()))
        await self._wait_any(waiting)
        if waiting.cancelled() or waiting.exception() is not None:
            return frozenset()
        return waiting.result()

    async def _idle_wait_s(self) -> float:
        # An open route's probe is due at a time no Redis index holds: wake for it too.
        longest = IDLE_WAIT_MAX_S
        if not all(view.circuit.sending for view in self.routes.values()):
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
        if not probe and not self.routes[notification.app].circuit.sending:
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
        route_sending = await self._route_answered(claim, response)
        now_ms = int(self.clock() * 1000)
        outcome = classify(
            response,
            attempt=claim.attempts + 1,
            expires_at_s=notification.expires_at,
            now_ms=now_ms,
            policy=self.retry,
            rng=self.rng,
            route_delivered=self._route_delivered_at_ms(notification.app) > claim.waiting_since_ms,
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
        self._log_attempt(claim, response, outcome, latency)

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

    # Routes: circuits shared in Redis, decided by relay.circuit.

    async def _route_answered(self, claim: ClaimedNotification, response: ApnsResponse) -> bool:
        """Tell the route's circuit what APNs answered; whether the route still sends."""
        app = claim.notification.app
        now_ms = int(self.clock() * 1000)
        if response.status == 200:
            self._delivered_at_ms[app] = max(self._delivered_at_ms[app], now_ms)
            await self._update_route(app, lambda c: circuit.record_success(c, now_ms=now_ms))
        elif is_route_failure(response):
            device = f"{zlib.crc32(claim.notification.device_token.encode()):08x}"
            answer = circuit.describe(response)
            await self._update_route(
                app,
                lambda c: circuit.record_failure(
                    c, device, answer, now_ms=now_ms, policy=self.circuit_policy, rng=self.rng
                ),
            )
        elif response.status != 0 and not self.routes[app].circuit.sending:
            # Any other answer (a 400 for this device, say) still shows APNs processing the
            # route's requests: a probe that gets one closes the circuit as a 200 would.
            await self._update_route(app, lambda c: circuit.record_success(c, now_ms=now_ms))
        return self.routes[app].circuit.sending

    def _route_delivered_at_ms(self, app: str) -> int:
        """The last success on the app's route seen here or by any worker (as last read)."""
        return max(self._delivered_at_ms[app], self.routes[app].circuit.last_success_ms)

    async def _update_route(self, app: str, change: Callable[[Circuit], Circuit | None]) -> bool:
        """Apply `change` to the app's route circuit in Redis (compare and set, read again on a
        conflict); whether this worker made it. A change `change` refuses (None) is not made."""
        route = self.clients[app].route
        async with self._route_locks[app]:
            for _ in range(ROUTE_WRITE_TRIES):
                view = self.routes[app]
                after = change(view.circuit)
                if after is None:
                    return False
                if not circuit.needs_writing(view.circuit, after):
                    self.routes[app] = StoredCircuit(after, view.version)
                    return True
                try:
                    written = await self.route_store.write(route, view, after)
                    if written is not None:
                        self.routes[app] = written
                        self._route_changed(app, view.circuit, after)
                        return True
                    self.routes[app] = (await self.route_store.read([route]))[route]
                except REDIS_ERRORS as exc:
                    # The answer still settles the notification; the circuit hears the next one.
                    log.warning("redis_unavailable", operation="route", error=str(exc))
                    return False
            log.warning("route_write_contended", app=app, tries=ROUTE_WRITE_TRIES)
            return False

    async def _refresh_routes(self) -> None:
        now = self.clock()
        if now - self._routes_read_at < ROUTE_REFRESH_S:
            return
        by_route = {client.route: app for app, client in self.clients.items()}
        read = await self.route_store.read(list(by_route))
        self._routes_read_at = now
        for route, stored in read.items():
            app = by_route[route]
            if stored.version >= self.routes[app].version:
                self.routes[app] = stored
            metrics.ROUTE_STATE.labels(app=app, environment=route.environment).set(
                metrics.ROUTE_STATE_VALUES[self.routes[app].circuit.state]
            )

    def _route_changed(self, app: str, before: Circuit, after: Circuit) -> None:
        """One log line and one count per state change, across all workers: the one whose
        write made it reports it."""
        if before.state is after.state:
            return
        route = self.clients[app].route
        metrics.ROUTE_TRANSITIONS.labels(
            app=app, environment=route.environment, to=after.state.value
        ).inc()
        metrics.ROUTE_STATE.labels(app=app, environment=route.environment).set(
            metrics.ROUTE_STATE_VALUES[after.state]
        )
        now_ms = int(self.clock() * 1000)
        fields = {
            "app": app,
            "environment": route.environment,
            "endpoint": route.endpoint,
            "was": before.state.value,
            "state": after.state.value,
            "last_answer": after.last_answer,
        }
        if after.sending:
            log.info(
                "route_closed", open_for_s=round((now_ms - before.since_ms) / 1000, 1), **fields
            )
        elif after.state is circuit.RouteState.HALF_OPEN:
            log.info("route_probing", **fields)
        else:
            log.warning(
                "route_opened",
                next_probe_in_s=round((after.next_probe_ms - now_ms) / 1000, 1),
                **fields,
            )

    def _start_probes(self) -> None:
        now_ms = int(self.clock() * 1000)
        for app, view in self.routes.items():
            if view.circuit.probe_due(now_ms) and app not in self._probes:
                probe = asyncio.create_task(self._probe(app), name=f"probe:{app}")
                self._probes[app] = probe
                probe.add_done_callback(functools.partial(self._probe_ended, app))

    def _probe_ended(self, app: str, _: asyncio.Task[None]) -> None:
        del self._probes[app]

    async def _probe(self, app: str) -> None:
        """Take the route's probe (one across all workers) and send its longest-parked
        notification; nothing parked: the route stays open, probed again later."""
        now_ms = int(self.clock() * 1000)
        taken = await self._update_route(
            app, lambda c: circuit.start_probe(c, now_ms=now_ms, policy=self.circuit_policy)
        )
        if not taken:
            return
        try:
            batch = await self.queue.claim_parked(app)
        except REDIS_ERRORS as exc:
            log.warning("redis_unavailable", operation="probe", error=str(exc))
            batch = ClaimBatch([], [])
        self._count_expired(batch)
        self._count_claim_faults(batch, every_shard=False)
        if batch.claimed:
            self._launch(batch.claimed[0], probe=True)
            return
        now_ms = int(self.clock() * 1000)
        await self._update_route(
            app, lambda c: circuit.abandon_probe(c, now_ms=now_ms, rng=self.rng)
        )

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

    # Settling: outcomes are written to Redis in batches, one round trip per batch.

    def _settle(self, claim: ClaimedNotification, outcome: DeliveryOutcome) -> None:
        if isinstance(outcome, Retry):
            self._due_at(self.clock() + outcome.delay_ms / 1000)
        self.settle_buffer.append((claim, outcome))
        self._buffer_ready.set()
        self._count(claim, outcome)

    def _release(
        self, claim: ClaimedNotification, delay_s: float, *, possibly_sent: bool = False
    ) -> None:
        self._due_at(self.clock() + delay_s)
        self.release_buffer.append((claim, int(delay_s * 1000), possibly_sent))
        self._buffer_ready.set()

    async def _settle_until_sends_end(self) -> None:
        while True:
            await self._buffer_ready.wait()
            self._buffer_ready.clear()
            await self._flush()
            if self._sends_ended.is_set() and not (self.settle_buffer or self.release_buffer):
                return

    async def _stop_settler(self, settler: asyncio.Task[None]) -> None:
        """Let the settler write what is buffered, but never hang shutdown on Redis.

        The settler is not cancelled while it may be mid-write: redis-py can turn a cancellation
        into a connection error, which the retry loop would then swallow.
        """
        self._sends_ended.set()
        self._buffer_ready.set()
        await asyncio.wait({settler}, timeout=FINAL_FLUSH_S)
        if not settler.done():
            settler.cancel()
            log.error(
                "unsettled_at_exit",
                settled=len(self.settle_buffer),
                released=len(self.release_buffer),
                note="their leases run out and they are claimed again",
            )

    async def _flush(self) -> None:
        while self.settle_buffer or self.release_buffer:
            settled, self.settle_buffer = self.settle_buffer, []
            released, self.release_buffer = self.release_buffer, []
            try:
                if settled:
                    await self.queue.settle(settled)
                for delay_ms, sent in {(delay, sent) for _, delay, sent in released}:
                    await self.queue.release(
                        [c for c, d, s in released if (d, s) == (delay_ms, sent)],
                        delay_ms=delay_ms,
                        possibly_sent=sent,
                    )
            except REDIS_ERRORS as exc:
                # Keep them: a lease that runs out meanwhile only costs a duplicate send.
                REDIS_UNAVAILABLE.occurred("settle", exc)
                self.settle_buffer[:0] = settled
                self.release_buffer[:0] = released
                await asyncio.sleep(REDIS_RETRY_S)

    # Observability

    def _count(self, claim: ClaimedNotification, outcome: DeliveryOutcome) -> None:
        app = claim.notification.app
        if isinstance(outcome, Delivered):
            action = metrics.action_label(
                self.known_actions.get(app, frozenset()), claim.notification.action
            )
            metrics.NOTIFICATIONS_DELIVERED.labels(app=app, action=action).inc()
            metrics.DELIVERY_LATENCY.labels(app=app).observe(
                max(0.0, self.clock() - claim.accepted_at_ms / 1000)
            )
        elif isinstance(outcome, Retry):
            metrics.NOTIFICATIONS_RETRIED.labels(app=app, reason=outcome.reason).inc()
        elif isinstance(outcome, Failed):
            metrics.NOTIFICATIONS_FAILED.labels(app=app, reason=outcome.reason).inc()
            if outcome.dead_token:
                metrics.DEAD_TOKENS_MARKED.labels(app=app, reason=outcome.reason).inc()
        elif isinstance(outcome, Expired):
            metrics.NOTIFICATIONS_EXPIRED.labels(app=app).inc()

    def _count_expired(self, batch: ClaimBatch) -> None:
        for record in batch.expired:
            metrics.NOTIFICATIONS_EXPIRED.labels(app=record.app).inc()
            log.info("notification_expired", id=record.id, app=record.app, at="claim")

    def _count_claim_faults(self, batch: ClaimBatch, *, every_shard: bool) -> None:
        """Invariant 14: what one bad record or script error cost is counted and said, once
        each. A shard whose claim errored is failing until a claim of every shard finds it well
        (a claim of some shards says nothing of the others)."""
        for malformed in batch.malformed:
            metrics.MALFORMED_RECORDS.labels(source="redis").inc()
            app, _, token = malformed.device.rpartition(":")
            log.error(
                "malformed_record_failed",
                id=malformed.id,
                app=app,
                token=mask_token(token),
                problem=malformed.problem,
            )
        now = self.clock()
        failed_now = set()
        for error in batch.errors:
            metrics.CLAIM_ERRORS.labels(scope="shard" if error.device is None else "device").inc()
            CLAIMS_FAILING.occurred(f"shard {error.shard}", error.error)
            if error.device is None:
                failed_now.add(error.shard)
                self._failing_shards.setdefault(error.shard, (now, error.error))
        if every_shard:
            for shard in set(self._failing_shards) - failed_now:
                del self._failing_shards[shard]
            if not batch.errors:
                CLAIMS_FAILING.cleared()

    def delivery_failing(self) -> str | None:
        """Readiness: why delivery is failing, when a shard's claims have errored for
        CLAIMS_FAILING_READY_S (a device set aside alone does not stop delivery: it is counted,
        logged and alerted on, not a readiness failure)."""
        if not self._failing_shards:
            return None
        since, error = min(self._failing_shards.values())
        failing_s = self.clock() - since
        if failing_s < CLAIMS_FAILING_READY_S:
            return None
        shards = ", ".join(str(shard) for shard in sorted(self._failing_shards))
        return f"claims failing for {failing_s:.0f} s on shard {shards}: {error}"

    def _log_attempt(
        self,
        claim: ClaimedNotification,
        response: ApnsResponse,
        outcome: DeliveryOutcome,
        latency: float,
    ) -> None:
        notification = claim.notification
        log.info(
            "apns_attempt",
            id=claim.id,
            app=notification.app,
            token=mask_token(notification.device_token),
            service_id=notification.service_id,
            action=notification.action,
            attempt=claim.attempts + 1,
            status=response.status,
            reason=response.reason,
            apns_id=response.apns_id,
            apns_unique_id=response.apns_unique_id,
            latency_ms=round(latency * 1000, 2),
            outcome=type(outcome).__name__.lower(),
        )
