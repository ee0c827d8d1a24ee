"""The worker's view of its apps' route circuits: read from Redis, changed by compare and set.

The decisions are relay.delivery.circuit's (pure); this unit keeps the state one worker holds
about them (each app's circuit as last read or written, when it was read, the last success seen
here) and writes every change through a RouteStore, so that all workers share one circuit per
route.
"""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import structlog

from relay.core import circuit
from relay.core.circuit import Circuit, CircuitPolicy
from relay.core.model import ApnsResponse, Route
from relay.core.policy import is_route_failure
from relay.store.errors import REDIS_ERRORS
from relay.store.routes import StoredCircuit
from relay.telemetry import metrics

log = structlog.get_logger("relay.worker")

# How stale a worker's view of the route circuits may get: a route another worker opened is parked
# here at most this late (the sends meanwhile fail and do not count), and probes are this punctual.
ROUTE_REFRESH_S = 0.5
ROUTE_WRITE_TRIES = 5  # compare-and-set rounds before a route update gives way to the next event


class CircuitStore(Protocol):
    """Where circuits are shared (relay.store.routes.RouteStore)."""

    async def read(self, routes: Sequence[Route]) -> dict[Route, StoredCircuit]: ...

    async def write(
        self, route: Route, read: StoredCircuit, circuit: Circuit
    ) -> StoredCircuit | None: ...


class RouteCircuits:
    """Each app's route circuit, as this worker last read or wrote it."""

    def __init__(
        self,
        store: CircuitStore,
        routes: Mapping[str, Route],
        *,
        policy: CircuitPolicy,
        rng: random.Random,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.routes = dict(routes)
        self.policy = policy
        self.rng = rng
        self.clock = clock
        self.views = {app: StoredCircuit(Circuit(), 0) for app in routes}
        self._read_at = float("-inf")
        self._locks = {app: asyncio.Lock() for app in routes}
        # The last 200 seen here per app: a quiet success on a closed route is not written to
        # Redis, but still proves the route delivers (poison detection).
        self._delivered_at_ms = dict.fromkeys(routes, 0)
        for app, route in routes.items():
            metrics.ROUTE_STATE.labels(app=app, environment=route.environment).set(0)
            for state in circuit.RouteState:  # at 0 from the start: rate() needs a first sample
                metrics.ROUTE_TRANSITIONS.labels(
                    app=app, environment=route.environment, to=state.value
                )

    def sending(self, app: str) -> bool:
        return self.views[app].circuit.sending

    def sending_by_app(self) -> dict[str, bool]:
        return {app: view.circuit.sending for app, view in self.views.items()}

    @property
    def all_sending(self) -> bool:
        return all(view.circuit.sending for view in self.views.values())

    def probes_due(self) -> list[str]:
        now_ms = int(self.clock() * 1000)
        return [app for app, view in self.views.items() if view.circuit.probe_due(now_ms)]

    def delivered_at_ms(self, app: str) -> int:
        """The last success on the app's route seen here or by any worker (as last read)."""
        return max(self._delivered_at_ms[app], self.views[app].circuit.last_success_ms)

    async def answered(self, app: str, device_token: str, response: ApnsResponse) -> bool:
        """Tell the route's circuit what APNs answered; whether the route still sends."""
        now_ms = int(self.clock() * 1000)
        if response.status == 200:
            self._delivered_at_ms[app] = max(self._delivered_at_ms[app], now_ms)
            await self.update(app, lambda c: circuit.record_success(c, now_ms=now_ms))
        elif is_route_failure(response):
            device = f"{zlib.crc32(device_token.encode()):08x}"
            answer = circuit.describe(response)
            await self.update(
                app,
                lambda c: circuit.record_failure(
                    c, device, answer, now_ms=now_ms, policy=self.policy, rng=self.rng
                ),
            )
        elif response.status != 0 and not self.sending(app):
            # Any other answer (a 400 for this device, say) still shows APNs processing the
            # route's requests: a probe that gets one closes the circuit as a 200 would.
            await self.update(app, lambda c: circuit.record_success(c, now_ms=now_ms))
        return self.sending(app)

    async def start_probe(self, app: str) -> bool:
        """Take the route's probe (one across all workers); whether this worker has it."""
        now_ms = int(self.clock() * 1000)
        return await self.update(
            app, lambda c: circuit.start_probe(c, now_ms=now_ms, policy=self.policy)
        )

    async def abandon_probe(self, app: str) -> None:
        """Nothing parked to probe with: the route stays open, probed again later."""
        now_ms = int(self.clock() * 1000)
        await self.update(app, lambda c: circuit.abandon_probe(c, now_ms=now_ms, rng=self.rng))

    async def update(self, app: str, change: Callable[[Circuit], Circuit | None]) -> bool:
        """Apply `change` to the app's route circuit in Redis (compare and set, read again on a
        conflict); whether this worker made it. A change `change` refuses (None) is not made."""
        route = self.routes[app]
        async with self._locks[app]:
            for _ in range(ROUTE_WRITE_TRIES):
                view = self.views[app]
                after = change(view.circuit)
                if after is None:
                    return False
                if not circuit.needs_writing(view.circuit, after):
                    self.views[app] = StoredCircuit(after, view.version)
                    return True
                try:
                    written = await self.store.write(route, view, after)
                    if written is not None:
                        self.views[app] = written
                        self._changed(app, view.circuit, after)
                        return True
                    self.views[app] = (await self.store.read([route]))[route]
                except REDIS_ERRORS as exc:
                    # The answer still settles the notification; the circuit hears the next one.
                    log.warning("redis_unavailable", operation="route", error=str(exc))
                    return False
            log.warning("route_write_contended", app=app, tries=ROUTE_WRITE_TRIES)
            return False

    async def refresh(self) -> None:
        """Read every route's circuit again, at most every ROUTE_REFRESH_S."""
        now = self.clock()
        if now - self._read_at < ROUTE_REFRESH_S:
            return
        by_route = {route: app for app, route in self.routes.items()}
        read = await self.store.read(list(by_route))
        self._read_at = now
        for route, stored in read.items():
            app = by_route[route]
            if stored.version >= self.views[app].version:
                self.views[app] = stored
            metrics.ROUTE_STATE.labels(app=app, environment=route.environment).set(
                metrics.ROUTE_STATE_VALUES[self.views[app].circuit.state]
            )

    def _changed(self, app: str, before: Circuit, after: Circuit) -> None:
        """One log line and one count per state change, across all workers: the one whose
        write made it reports it."""
        if before.state is after.state:
            return
        route = self.routes[app]
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
