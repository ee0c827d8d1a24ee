"""At ingest of a GMS callback push: queue the Live Activity push it asks for, on the activity's
own queue (the activity token is that queue's device token), beside the regular alert."""

from __future__ import annotations

import structlog

from relay.config.schema import App
from relay.core.activities import (
    ActivityEvent,
    ActivityPush,
    activity_notification,
    plan_activity_push,
)
from relay.core.model import InvalidInput
from relay.core.payload import PushSpec
from relay.core.redaction import mask_token
from relay.ingest.hold import Ingest
from relay.store.activity_store import ActivityStore
from relay.store.errors import REDIS_ERRORS
from relay.store.refusals import DeadToken, QueueRefusal
from relay.telemetry import metrics

log = structlog.get_logger()
# What may go wrong after the alert is queued: a refusal, a content-state over Apple's limit,
# the timestamp compare-and-set losing every round, Redis.
ACTIVITY_FAILURES: tuple[type[Exception], ...] = (
    QueueRefusal,
    InvalidInput,
    RuntimeError,
    *REDIS_ERRORS,
)


async def queue_activity_push(
    ingest: Ingest, app: App, spec: PushSpec, *, now_s: int, expires_at: int
) -> None:
    """Queue the Live Activity push `spec` (a GMS callback event whose alert is already queued)
    asks for, if any. The alert is what GMS's 200 promises, so a failure here does not undo it:
    it is counted and logged, and the next event brings the activity up to date."""
    settings = app.live_activity
    if settings is None or spec.service_id is None or spec.action is None or spec.chat:
        return
    store = ActivityStore(ingest.queue)
    service_id = spec.service_id
    event = "none"
    try:
        record = await store.bind_and_read(
            app.name, service_id, spec.device_token, settings.service_lifetime_s
        )
        push = plan_activity_push(
            settings,
            service_id=service_id,
            action=spec.action,
            fields=spec.message_fields,
            tokens=record.tokens,
        )
        if push is None:
            return
        event = push.event.value
        if await store.token_dead(app.name, push.token):
            await _forget_dead(store, app, spec, push)
            return
        stamp = await store.take_stamp(
            app.name, service_id, now_s, record.last, settings.service_lifetime_s
        )
        if stamp is None:
            _count(app, event, "stale")
            log.info(
                "live_activity_stale", app=app.name, service_id=service_id, activity_event=event
            )
            return
        notification = activity_notification(
            app.name,
            settings,
            push,
            service_id=service_id,
            timestamp_s=stamp,
            now_s=now_s,
            expires_at=expires_at,
        )
        try:
            await ingest.accept(notification)
        except DeadToken:  # a token dead as a device's token too
            await _forget_dead(store, app, spec, push)
            return
        _count(app, event, "queued")
    except ACTIVITY_FAILURES as error:
        _count(app, event, "failed")
        log.warning(
            "live_activity_push_failed",
            app=app.name,
            service_id=service_id,
            activity_event=event,
            reason=_reason(error),
        )


async def _forget_dead(store: ActivityStore, app: App, spec: PushSpec, push: ActivityPush) -> None:
    """APNs called the push's token dead: forget it, as the app must hand over a new one."""
    assert spec.service_id is not None
    if push.event is ActivityEvent.START:
        await store.drop_push_to_start(app.name, spec.device_token)
    else:
        await store.drop_activity_token(app.name, spec.service_id, push.token)
    _count(app, push.event.value, "dead-token")
    log.warning(
        "live_activity_token_dead",
        app=app.name,
        service_id=spec.service_id,
        activity_event=push.event.value,
        token=mask_token(push.token),
    )


def _count(app: App, event: str, outcome: str) -> None:
    metrics.LIVE_ACTIVITY_PUSHES.labels(app=app.name, event=event, outcome=outcome).inc()


def _reason(error: Exception) -> str:
    # Not str(error): a refusal's message names the token in full.
    if isinstance(error, QueueRefusal):
        return error.reason
    if isinstance(error, InvalidInput):
        return f"{error.field}: {error.rule}"
    return type(error).__name__
