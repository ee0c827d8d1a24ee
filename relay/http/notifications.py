"""`/v1/notifications`: queue one or a batch, and read one's delivery state."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from relay.core.model import DeliveryState, InvalidInput
from relay.core.payload import build_notification
from relay.http.auth import resolve_app, scoped_spec
from relay.http.body import parse_json, read_body
from relay.http.enqueue import (
    bind_key,
    count_enqueued,
    count_event,
    ingest_push,
    receipt_id,
    refuse_while_draining,
)
from relay.http.problems import Problem, problem_from_validation, status_url
from relay.http.requests import MAX_NOTIFICATION_ID_CHARS, BatchIn, NotificationIn
from relay.http.responses import (
    AcceptedOut,
    BatchItemAcceptedOut,
    BatchItemRefusedOut,
    BatchOut,
    NotificationStatusOut,
    ProblemOut,
    RouteWaitOut,
    json_response,
)
from relay.http.routing import INGEST_ERRORS, Route
from relay.http.state import GRANT, STATE
from relay.store.codec import MalformedRecordError
from relay.store.queue import MAX_BATCH
from relay.store.records import Accepted, NotificationStatus
from relay.store.refusals import QueueRefusal
from relay.store.routes import RouteStore, route_for


async def create_notification(request: web.Request) -> web.Response:
    refuse_while_draining(request.app[STATE])
    raw = await read_body(request)
    try:
        body = NotificationIn.model_validate(parse_json(raw))
    except Problem:
        count_event("api", "rejected", "invalid-input")
        raise
    except ValidationError as error:
        count_event("api", "rejected", "invalid-input")
        raise problem_from_validation(error, NotificationIn) from None
    accepted = await ingest_push("api", request, body.to_spec(), "app")
    assert accepted is not None, "only chat typing notices are dropped, and they come from GMS"
    return json_response(
        AcceptedOut(
            id=accepted.id,
            status_url=status_url(accepted.id),
            duplicate=accepted.duplicate,
            spooled=accepted.spooled,
        ),
        status=202,
    )


async def create_batch(request: web.Request) -> web.Response:
    """Up to MAX_BATCH notifications; each is validated and queued on its own, answered per item."""
    state = request.app[STATE]
    grant = request[GRANT]
    refuse_while_draining(state)
    try:
        batch = BatchIn.model_validate(parse_json(await read_body(request)))
    except ValidationError as error:
        raise problem_from_validation(error, BatchIn) from None
    results: list[BatchItemAcceptedOut | BatchItemRefusedOut | None] = []
    valid: list[tuple[int, Any]] = []
    ids: dict[int, str | None] = {}  # by index: the id a receipt names (receipt_id)
    now_s = int(time.time())
    for index, item in enumerate(batch.notifications):
        prefix = f"notifications[{index}]."
        try:
            spec = scoped_spec(grant, NotificationIn.model_validate(item).to_spec())
            app = resolve_app(state.settings, grant, spec.app, prefix + "app")
            ids[index] = receipt_id(state, app, spec)
            notification = build_notification(
                spec,
                app.profile(),
                now_s=now_s,
                default_ttl_s=state.settings.queue.default_ttl_seconds,
                max_ttl_s=state.settings.queue.max_ttl_seconds,
                notification_id=ids[index],
            )
            valid.append((index, bind_key(notification, spec, app)))
            results.append(None)  # answered once queued
        except ValidationError as error:
            results.append(_item_problem(problem_from_validation(error, NotificationIn, prefix)))
        except InvalidInput as error:
            results.append(_item_problem(Problem.from_invalid(error, field_prefix=prefix)))
        except Problem as problem:
            results.append(_item_problem(problem))
    # A device with notifications in the spool takes new ones behind them, one by one.
    spooled = [(i, n) for i, n in valid if state.ingest.holds(n)]
    valid = [(i, n) for i, n in valid if not state.ingest.holds(n)]
    outcomes = await state.queue.enqueue_many([n for _, n in valid], ids=[ids[i] for i, _ in valid])
    for index, notification in spooled:
        try:
            valid.append((index, notification))
            outcomes.append(await state.ingest.accept(notification, ids[index]))
        except QueueRefusal as refusal:
            outcomes.append(refusal)
    if state.replicas is not None:
        stored = [
            o.id for o in outcomes if isinstance(o, Accepted) and not (o.duplicate or o.spooled)
        ]
        try:
            await state.replicas.confirm(stored)
        except QueueRefusal as refusal:
            raise Problem.from_refusal(refusal, "notifications") from None
    for (index, notification), outcome in zip(valid, outcomes, strict=True):
        if isinstance(outcome, QueueRefusal):
            field_name = f"notifications[{index}].device_token"
            results[index] = _item_problem(Problem.from_refusal(outcome, field_name))
        else:
            count_enqueued(notification.app, outcome)
            results[index] = BatchItemAcceptedOut(
                status=202,
                id=outcome.id,
                status_url=status_url(outcome.id),
                duplicate=outcome.duplicate,
                spooled=outcome.spooled,
            )
    answered = [result for result in results if result is not None]
    for result in answered:
        if isinstance(result, BatchItemAcceptedOut):
            count_event("batch", "duplicate" if result.duplicate else "accepted")
        else:
            count_event("batch", "rejected", result.problem.type.rsplit(":", 1)[-1])
    accepted = sum(1 for r in answered if isinstance(r, BatchItemAcceptedOut))
    return json_response(
        BatchOut(accepted=accepted, rejected=len(answered) - accepted, results=answered)
    )


def _item_problem(problem: Problem) -> BatchItemRefusedOut:
    item = BatchItemRefusedOut(status=problem.status, problem=ProblemOut(**problem.body()))
    if problem.retry_after_s is not None:
        item.retry_after_s = problem.retry_after_s
    return item


async def get_notification(request: web.Request) -> web.Response:
    notification_id = request.match_info["id"]
    state = request.app[STATE]
    status = state.ingest.spooled_status(notification_id)
    if status is None and len(notification_id) <= MAX_NOTIFICATION_ID_CHARS:
        try:
            status = await state.queue.get(notification_id)
        except MalformedRecordError:
            raise Problem(
                409,
                "record-malformed",
                "this notification's stored record breaks the relay's rules: it is failed as"
                " MalformedRecord when its turn comes, never sent",
                field="id",
            ) from None
        if status is None and (gone := await state.queue.no_longer_retained(notification_id)):
            # Says nothing of whose it was: the record that would tell is gone.
            raise Problem(
                410,
                "no-longer-retained",
                f"this notification's record is gone: {gone.why}",
                field="id",
            )
    # Another app's notification is answered exactly as a missing one: a scoped credential
    # must not learn that it exists.
    if status is None or not request[GRANT].allows(status.app):
        raise Problem(
            404, "not-found", "no such notification (unknown, or past retention)", field="id"
        )
    return json_response(
        NotificationStatusOut.model_validate(
            {**asdict(status), "waiting_for_route": await _route_wait(request, status)}
        )
    )


async def _route_wait(request: web.Request, status: NotificationStatus) -> RouteWaitOut | None:
    """Why a waiting notification is not being sent: its route's circuit is open (since when,
    APNs' last answer on it); None when it is not waiting or its route sends."""
    state = request.app[STATE]
    if status.state not in (DeliveryState.QUEUED, DeliveryState.RETRYING):
        return None
    try:
        route = route_for(state.settings.app(status.app))
    except InvalidInput:
        return None  # an app no longer configured: nothing sends it
    (stored,) = (await RouteStore(state.queue).read([route])).values()
    if stored.circuit.sending:
        return None
    circuit = stored.circuit
    return RouteWaitOut.model_validate(
        {
            "state": circuit.state.value,
            "since_ms": circuit.since_ms,
            "last_answer": circuit.last_answer,
        }
    )


ROUTES = [
    Route(
        "POST",
        "/v1/notifications",
        create_notification,
        "createNotification",
        "Queue one notification",
        {202: AcceptedOut},
        body=NotificationIn,
        # 409: its idempotency key came with a different request before.
        errors=(*INGEST_ERRORS, 409),
        links={
            "GetNotification": {
                "operationId": "getNotification",
                "parameters": {"id": "$response.body#/id"},
            }
        },
    ),
    Route(
        "POST",
        "/v1/notifications:batch",
        create_batch,
        "createBatch",
        f"Queue up to {MAX_BATCH} notifications, answered per item in request order",
        {200: BatchOut},
        body=BatchIn,
        errors=(400, 408, 413, 415, 417, 503),
    ),
    Route(
        "GET",
        "/v1/notifications/{id}",
        get_notification,
        "getNotification",
        "One notification's state (404 also for another app's; 410 once its record is gone)",
        {200: NotificationStatusOut},
        errors=(404, 409, 410),
    ),
]
