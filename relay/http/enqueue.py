"""Taking one push in: its app settled for the credential, queued (or spooled), and counted."""

from __future__ import annotations

import dataclasses
import hashlib
import time

import orjson
from aiohttp import web

from relay.config.schema import App
from relay.core.gms import to_notification
from relay.core.model import InvalidInput, Notification
from relay.core.payload import PushSpec
from relay.http.auth import resolve_app, scoped_spec
from relay.http.problems import Problem
from relay.http.state import GRANT, STATE, RelayState
from relay.ingest.activities import queue_activity_push
from relay.store.records import Accepted
from relay.store.refusals import QueueRefusal
from relay.telemetry import metrics


def refuse_while_draining(state: RelayState) -> None:
    if state.draining:
        raise Problem(
            503, "draining", "this relay is shutting down; retry another replica", retry_after_s=1
        )


def request_digest(spec: PushSpec, app: App) -> str:
    """What a client's idempotency key is bound to: the request as normalised (app resolved,
    token lower-case), so a retry matches and a different notification under the key does not."""
    normal = dataclasses.replace(spec, app=app.name, device_token=spec.device_token.lower())
    encoded = orjson.dumps(dataclasses.asdict(normal), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(encoded).hexdigest()[:32]


def receipt_id(state: RelayState, app: App, spec: PushSpec) -> str | None:
    """The id a push of an app with receipts on is queued under, made before its payload is
    built (the receipt names it); None for other apps (the queue makes it)."""
    if app.receipts is None:
        return None
    return state.queue.id_for(app.name, spec.device_token.lower())


def bind_key(notification: Notification, spec: PushSpec, app: App) -> Notification:
    """The notification with its client-chosen idempotency key bound to the request."""
    if notification.idempotency_key is None:
        return notification
    return dataclasses.replace(notification, request_digest=request_digest(spec, app))


async def _enqueue(
    request: web.Request, spec: PushSpec, app_field: str, *, client_key: bool
) -> Accepted | None:
    """Queue one push; None when the app does not want this kind (e.g. chat typing notices).
    `client_key`: an idempotency key is the client's own (not derived by the relay), so reusing
    it for a different request is refused."""
    state = request.app[STATE]
    grant = request[GRANT]
    spec = scoped_spec(grant, spec)
    app = resolve_app(state.settings, grant, spec.app, app_field)
    now_s = int(time.time())
    notification_id = receipt_id(state, app, spec)
    notification = to_notification(
        spec,
        app.profile(),
        now_s=now_s,
        default_ttl_s=state.settings.queue.default_ttl_seconds,
        max_ttl_s=state.settings.queue.max_ttl_seconds,
        notification_id=notification_id,
    )
    if notification is None:
        return None
    if client_key:
        notification = bind_key(notification, spec, app)
    try:
        accepted = await state.ingest.accept(notification, notification_id)
        count_enqueued(app.name, accepted)
    except QueueRefusal as refusal:
        raise Problem.from_refusal(refusal) from None
    if not client_key and not accepted.duplicate:  # a GMS event: its Live Activity step too
        await queue_activity_push(
            state.ingest, app, spec, now_s=now_s, expires_at=notification.expires_at
        )
    return accepted


def count_enqueued(app: str, accepted: Accepted) -> None:
    if not accepted.duplicate:
        metrics.series(metrics.NOTIFICATIONS_ENQUEUED, app).inc()
    if accepted.superseded:
        metrics.series(metrics.NOTIFICATIONS_SUPERSEDED, app).inc()


def count_event(source: str, outcome: str, reason: str = "") -> None:
    metrics.series(metrics.EVENTS_RECEIVED, source, outcome, reason).inc()


async def ingest_push(
    source: str, request: web.Request, spec: PushSpec, app_field: str
) -> Accepted | None:
    """One push from `source` ("gms" or "api") queued, and counted whatever happens."""
    try:
        accepted = await _enqueue(request, spec, app_field, client_key=source == "api")
    except Problem as problem:
        count_event(source, "rejected", problem.code)
        raise
    except InvalidInput as error:
        count_event(source, "rejected", f"invalid-{error.field.split('.')[0]}")
        raise
    if accepted is None:
        count_event(source, "accepted", "nothing-to-push")
    else:
        count_event(source, "duplicate" if accepted.duplicate else "accepted")
    return accepted
