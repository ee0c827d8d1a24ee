"""Route circuits in Redis: one record per (app, environment, endpoint), shared by all workers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from relay.config.schema import App
from relay.core.circuit import Circuit, RouteState
from relay.core.endpoint import route_to
from relay.core.model import Route
from relay.store.codec import text
from relay.store.keys import route_key
from relay.store.queue import RelayQueue
from relay.store.scripts import LIBRARY, ScriptArg, ScriptCall

ROUTE_WRITE = LIBRARY.script("route_write")


def route_for(app: App) -> Route:
    """The route a configured app sends on (what its ApnsClient reports as `route`)."""
    return route_to(app.name, app.environment, app.apns_endpoint())


@dataclass(frozen=True, slots=True)
class StoredCircuit:
    circuit: Circuit
    version: int  # 0: no record yet (a closed route that never failed)


def _encode(circuit: Circuit) -> list[ScriptArg]:
    pairs: list[ScriptArg] = []
    for field in fields(Circuit):
        value = getattr(circuit, field.name)
        if field.name == "failures":
            value = ",".join(f"{device}@{at}" for device, at in value)
        pairs += (field.name, str(value))
    return pairs


def _decode(record: Mapping[Any, Any]) -> StoredCircuit:
    if not record:
        return StoredCircuit(Circuit(), 0)
    values = {text(k): text(v) for k, v in record.items()}
    failures = tuple(
        (device, int(at))
        for device, _, at in (
            item.rpartition("@") for item in values["failures"].split(",") if item
        )
    )
    circuit = Circuit(
        state=RouteState(values["state"]),
        failures=failures,
        since_ms=int(values["since_ms"]),
        probe_interval_ms=int(values["probe_interval_ms"]),
        next_probe_ms=int(values["next_probe_ms"]),
        last_success_ms=int(values["last_success_ms"]),
        last_answer=values["last_answer"],
    )
    return StoredCircuit(circuit, int(values["version"]))


class RouteStore:
    """Reads and compare-and-set writes of route circuits (relay.core.circuit decides)."""

    def __init__(self, queue: RelayQueue) -> None:
        self._queue = queue

    async def read(self, routes: Sequence[Route]) -> dict[Route, StoredCircuit]:
        """Every route's circuit in one round trip."""
        pipe = self._queue.client.pipeline(transaction=False)
        for route in routes:
            pipe.hgetall(route_key(route))
        records = await pipe.execute()
        return {route: _decode(record) for route, record in zip(routes, records, strict=True)}

    async def write(
        self, route: Route, read: StoredCircuit, circuit: Circuit
    ) -> StoredCircuit | None:
        """Store `circuit` if the route is still as `read` found it; None if another worker
        changed it first (read again and decide anew)."""
        call = ScriptCall(ROUTE_WRITE, [route_key(route)], [read.version, *_encode(circuit)])
        (version,) = await self._queue.run_scripts([call])
        return StoredCircuit(circuit, int(version)) if version else None
