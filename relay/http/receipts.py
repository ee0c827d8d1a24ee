"""`POST /v1/receipts`: a phone's delivery receipt, checked, rate-limited and recorded; no
credential (the receipt's MAC is its proof), optionally on a listener of its own."""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import OutOfMemoryError

from relay.config.schema import Settings
from relay.core.receipts import (
    ID_PATTERN,
    MAC_PATTERN,
    MalformedReceipt,
    ReceiptOutcome,
    ReceiptSecrets,
    check_form,
    signing_app,
)
from relay.http.body import parse_json, read_body
from relay.http.limits import client_address
from relay.http.middleware import expect_continue, request_context
from relay.http.problems import Problem
from relay.http.routing import Route
from relay.http.state import STATE, RelayState
from relay.store.receipts import Recorded, record_receipt
from relay.telemetry import metrics

log = structlog.get_logger("relay.receipts")

UNKNOWN = "unknown"  # app and action of a receipt no secret verifies
# Addresses whose rate is tracked at once: the least recently seen is forgotten first, so a
# flood from many addresses costs bounded memory (the total rate still holds it).
MAX_TRACKED_ADDRESSES = 10_000


class ReceiptIn(BaseModel):
    """A delivery receipt, as the push carried it (`receipt` beside `aps`)."""

    model_config = ConfigDict(extra="forbid")
    id: Annotated[str, Field(pattern=ID_PATTERN, description="the notification id")]
    mac: Annotated[str, Field(pattern=MAC_PATTERN, description="the receipt's MAC, as given")]


@dataclass
class _Bucket:
    tokens: float
    updated_s: float


@dataclass
class ReceiptRates:
    """A token bucket per client address and one for every address together; time is given."""

    per_address: float  # receipts a second, on average, from one address
    total: float  # receipts a second from every address together
    burst_per_address: float = 10.0
    _addresses: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict)
    _all: _Bucket | None = None

    def wait_s(self, address: str, now_s: float) -> float:
        """0.0 when a receipt from `address` may be taken now (spending from both buckets),
        else how long until one may."""
        bucket = self._addresses.pop(address, None)
        if bucket is None:
            bucket = _Bucket(self.burst_per_address, now_s)
        self._addresses[address] = bucket
        if len(self._addresses) > MAX_TRACKED_ADDRESSES:
            self._addresses.popitem(last=False)
        if self._all is None:
            self._all = _Bucket(self.total, now_s)
        own = _refill(bucket, self.per_address, self.burst_per_address, now_s)
        shared = _refill(self._all, self.total, self.total, now_s)
        if own > 0 or shared > 0:
            return max(own, shared)
        bucket.tokens -= 1.0
        self._all.tokens -= 1.0
        return 0.0


def _refill(bucket: _Bucket, rate: float, capacity: float, now_s: float) -> float:
    """Top `bucket` up to `now_s`; 0.0 when it holds a request, else the wait for one."""
    bucket.tokens = min(capacity, bucket.tokens + max(0.0, now_s - bucket.updated_s) * rate)
    bucket.updated_s = now_s
    return 0.0 if bucket.tokens >= 1.0 else (1.0 - bucket.tokens) / rate


@dataclass
class ReceiptDesk:
    """What the route needs beside the relay's state: each app's secrets, its known actions
    (metric labels), and the rates."""

    secrets: Mapping[str, ReceiptSecrets]
    actions: Mapping[str, frozenset[str]]
    rates: ReceiptRates

    @classmethod
    def from_settings(cls, settings: Settings) -> ReceiptDesk:
        http = settings.http
        actions = {app.name: app.known_actions for app in settings.apps}
        rates = ReceiptRates(http.receipts_per_second_per_address, http.receipts_per_second)
        return cls(settings.receipt_secrets(), actions, rates)

    def action_label(self, app: str, action: str | None) -> str:
        return metrics.action_label(self.actions.get(app, frozenset()), action)


RECEIPT_DESK = web.AppKey("relay_receipt_desk", ReceiptDesk)


def _count(outcome: ReceiptOutcome, app: str = UNKNOWN, action: str = UNKNOWN) -> None:
    metrics.RECEIPTS.labels(app=app, action=action, outcome=outcome.value).inc()


def _malformed(problem: MalformedReceipt) -> Problem:
    _count(ReceiptOutcome.MALFORMED)
    return Problem(422, "invalid-receipt", f"{problem.field}: {problem.rule}", field=problem.field)


async def post_receipt(request: web.Request) -> web.Response:
    """Record a receipt: 204 when recorded or recorded before (the first one wins); a problem
    naming the field otherwise, having changed nothing."""
    state, desk = request.app[STATE], request.app[RECEIPT_DESK]
    address = client_address(
        request.remote, request.headers.get("X-Forwarded-For"), state.settings.http.trusted_proxies
    )
    wait_s = desk.rates.wait_s(address, time.monotonic())
    if wait_s > 0:
        _count(ReceiptOutcome.RATE_LIMITED)
        raise Problem(
            429,
            "rate-limited",
            "too many receipts from this address or from all of them "
            "(http.receipts_per_second_per_address, http.receipts_per_second)",
            retry_after_s=max(1, math.ceil(wait_s)),
        )
    try:
        body = parse_json(await read_body(request))
    except Problem:
        _count(ReceiptOutcome.MALFORMED)
        raise
    form = check_form(body)
    if isinstance(form, MalformedReceipt):
        raise _malformed(form)
    notification_id, mac = form
    app = signing_app(desk.secrets, notification_id, mac)
    if app is None:
        _count(ReceiptOutcome.FORGED)
        raise Problem(
            403,
            "forged-receipt",
            "mac: must be the MAC of the receipt the relay put in this notification's push",
            field="mac",
        )
    try:
        recorded = await record_receipt(state.queue, notification_id)
    except OutOfMemoryError:
        raise Problem(
            503, "queue-full", "Redis is full; the receipt was not recorded", retry_after_s=60
        ) from None
    if recorded is Recorded.NOT_RETAINED:
        _count(ReceiptOutcome.STALE, app)
        raise Problem(
            410,
            "no-longer-retained",
            "id: past its retention (queue.retention_seconds); nothing to attach a receipt to",
            field="id",
        )
    status = await state.queue.get(notification_id)
    action = desk.action_label(app, status.action) if status is not None else UNKNOWN
    if recorded is Recorded.AGAIN:
        _count(ReceiptOutcome.REPLAYED, app, action)
    else:
        _count(ReceiptOutcome.RECORDED, app, action)
        if status is not None and status.device_latency_ms is not None:
            latency_s = max(0, status.device_latency_ms) / 1000
            metrics.RECEIPT_LATENCY.labels(app=app).observe(latency_s)
        log.info("receipt_recorded", id=notification_id, app=app, action=action)
    return web.Response(status=204)


ROUTES = [
    Route(
        "POST",
        "/v1/receipts",
        post_receipt,
        "postReceipt",
        "A phone's delivery receipt for an alert it showed (no credential: the MAC is the proof)",
        {204: None},
        body=ReceiptIn,
        errors=(400, 403, 408, 410, 413, 415, 422, 429, 503),
        public=True,
    ),
]


def prime_receipt_series(secrets: Mapping[str, ReceiptSecrets]) -> None:
    """Each receipt app's series at 0 from the start: the confirmed-ratio alert needs them."""
    for app in secrets:
        metrics.RECEIPTS.labels(app=app, action=metrics.OTHER_ACTION, outcome="recorded")
        metrics.RECEIPT_LATENCY.labels(app=app)


def create_receipts_app(state: RelayState) -> web.Application:
    """The listener of http.receipts_port: POST /v1/receipts and nothing else."""
    app = web.Application(
        middlewares=[request_context], client_max_size=state.settings.http.max_body_bytes
    )
    app[STATE] = state
    app[RECEIPT_DESK] = ReceiptDesk.from_settings(state.settings)
    for route in ROUTES:
        app.router.add_route(
            route.method, route.path, route.handler, expect_handler=expect_continue
        )
    return app
