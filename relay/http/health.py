"""The public routes: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay.http.responses import HealthOut, ReadinessOut, json_response
from relay.http.routing import Route
from relay.http.state import STATE
from relay.store.errors import REDIS_ERRORS, REDIS_UNAVAILABLE
from relay.store.memory import MemoryWatch, evicts_queued_work
from relay.telemetry import metrics

QUEUE_GAUGES_MAX_AGE_S = 1.0


async def healthz(_: web.Request) -> web.Response:
    return json_response(HealthOut(status="ok"))


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    reasons: list[str] = []
    degraded: list[str] = []
    if state.draining:
        reasons.append("draining")
    try:
        await state.queue.ping()
    except REDIS_ERRORS as error:
        # Said without the error: /readyz needs no credential, and redis-py's text names the
        # address (the log has it, rate-limited).
        REDIS_UNAVAILABLE.occurred("readyz", error)
        # With a spool this process still answers every push with a 200: taking it out of
        # service would turn pushes away from the one thing still accepting them.
        spool = state.spool
        if spool is not None and not spool.full():
            degraded.append("redis unreachable, spooling")
        else:
            reasons.append("redis unreachable")
    else:
        if (refused := await _evicting_policies(state.memory)) is not None:
            reasons.append(refused)
    paused = state.paused_apps()
    if state.settings.apps and len(paused) >= len(state.settings.apps):
        reasons.append("every app is paused: " + ", ".join(f"{a} ({r})" for a, r in paused.items()))
    reasons.extend(r for check in state.extra_ready_checks if (r := check()))
    body = ReadinessOut(
        ready=not reasons, reasons=reasons, degraded=degraded, paused_apps=dict(paused)
    )
    return json_response(body, status=200 if not reasons else 503)


async def _evicting_policies(memory: MemoryWatch | None) -> str | None:
    """Why not ready when a primary's eviction policy may evict queued work, read afresh. The
    policy, not the node: readiness is public and names no address."""
    if memory is None:
        return None
    await memory.poll()
    refused = sorted({m.policy for m in memory.latest if evicts_queued_work(m.policy)})
    if not refused:
        return None
    return (
        f"redis maxmemory-policy {', '.join(refused)} evicts queued notifications at maxmemory:"
        " set noeviction or a volatile-* policy"
    )


async def metrics_endpoint(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.spool is not None:
        metrics.SPOOL_OLDEST_AGE.set(state.spool.oldest_age_s())
    if time.monotonic() - state.gauges_read_at >= QUEUE_GAUGES_MAX_AGE_S:
        try:
            totals = await state.queue.totals()
        except REDIS_ERRORS as error:
            REDIS_UNAVAILABLE.occurred("totals", error)
        else:
            metrics.QUEUE_PENDING.set(totals.pending)
            metrics.QUEUE_DEVICES_PENDING.set(totals.devices_pending)
            metrics.QUEUE_OLDEST_AGE.set(totals.oldest_pending_age_s or 0.0)
            state.gauges_read_at = time.monotonic()
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


ROUTES = [
    Route(
        "GET",
        "/healthz",
        healthz,
        "healthz",
        "The process is serving",
        {200: HealthOut},
        public=True,
    ),
    Route(
        "GET",
        "/readyz",
        readyz,
        "readyz",
        "Redis reachable with a policy that keeps queued work, not draining, an app not paused (503"
        " and why when not)",
        {200: ReadinessOut, 503: ReadinessOut},
        public=True,
    ),
    Route(
        "GET",
        "/metrics",
        metrics_endpoint,
        "metrics",
        "Prometheus metrics (text exposition format)",
        {200: None},
        public=True,
    ),
]
