"""`/v1/notifications`: queue one or a batch, and read one's delivery state."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from relay.http.auth import resolve_app, scoped_spec
from relay.http.body import parse_json, read_body
from relay.http.enqueue import (
    bind_key,
    count_enqueued,
    count_event,
    ingest_push,
    refuse_while_draining,
)
from relay.http.problems import Problem, problem_from_validation, status_url
from relay.http.requests import MAX_NOTIFICATION_ID_CHARS, BatchIn, NotificationIn
from relay.http.responses import json_response
from relay.http.state import GRANT, STATE, Route
from relay.model import DeliveryState, InvalidInput
from relay.payload import build_notification
from relay.queue import Accepted, NotificationStatus, QueueRefusal
from relay.routes import RouteStore, route_for


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
        {
            "id": accepted.id,
            "status_url": status_url(accepted.id),
            "duplicate": accepted.duplicate,
            "spooled": accepted.spooled,
        },
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
    results: list[dict[str, Any]] = []
    valid: list[tuple[int, Any]] = []
    now_s = int(time.time())
    for index, item in enumerate(batch.notifications):
        prefix = f"notifications[{index}]."
        try:
            spec = scoped_spec(grant, NotificationIn.model_validate(item).to_spec())
            app = resolve_app(state.settings, grant, spec.app, prefix + "app")
            notification = build_notification(
                spec,
                app,
                now_s=now_s,
                default_ttl_s=state.settings.queue.default_ttl_seconds,
                max_ttl_s=state.settings.queue.max_ttl_seconds,
            )
            valid.append((index, bind_key(notification, spec, app)))
            results.append({})
        except ValidationError as error:
            results.append(_item_problem(problem_from_validation(error, NotificationIn, prefix)))
        except InvalidInput as error:
            results.append(_item_problem(Problem.from_invalid(error, field_prefix=prefix)))
        except Problem as problem:
            results.append(_item_problem(problem))
    # A device with notifications in the spool takes new ones behind them, one by one.
    spooled = [(i, n) for i, n in valid if state.ingest.holds(n)]
    valid = [(i, n) for i, n in valid if not state.ingest.holds(n)]
    outcomes = await state.queue.enqueue_many([n for _, n in valid])
    for index, notification in spooled:
        try:
            valid.append((index, notification))
            outcomes.append(await state.ingest.accept(notification))
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
            results[index] = {
                "status": 202,
                "id": outcome.id,
                "status_url": status_url(outcome.id),
                "duplicate": outcome.duplicate,
                "spooled": outcome.spooled,
            }
    for result in results:
        if result["status"] == 202:
            count_event("batch", "duplicate" if result["duplicate"] else "accepted")
        else:
            count_event("batch", "rejected", result["problem"]["type"].rsplit(":", 1)[-1])
    accepted = sum(1 for r in results if r["status"] == 202)
    return json_response(
        {"accepted": accepted, "rejected": len(results) - accepted, "results": results}
    )


def _item_problem(problem: Problem) -> dict[str, Any]:
    body: dict[str, Any] = {"status": problem.status, "problem": problem.body()}
    if problem.retry_after_s is not None:
        body["retry_after_s"] = problem.retry_after_s
    return body


async def get_notification(request: web.Request) -> web.Response:
    notification_id = request.match_info["id"]
    state = request.app[STATE]
    status = state.ingest.spooled_status(notification_id)
    if status is None and len(notification_id) <= MAX_NOTIFICATION_ID_CHARS:
        status = await state.queue.get(notification_id)
    # Another app's notification is answered exactly as a missing one: a scoped credential
    # must not learn that it exists.
    if status is None or not request[GRANT].allows(status.app):
        raise Problem(
            404, "not-found", "no such notification (unknown, or past retention)", field="id"
        )
    return json_response(
        {**asdict(status), "waiting_for_route": await _route_wait(request, status)}
    )


async def _route_wait(request: web.Request, status: NotificationStatus) -> dict[str, Any] | None:
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
    return {
        "state": stored.circuit.state.value,
        "since_ms": stored.circuit.since_ms,
        "last_answer": stored.circuit.last_answer,
    }


ROUTES: list[Route] = [
    ("POST", "/v1/notifications", create_notification),
    ("POST", "/v1/notifications:batch", create_batch),
    ("GET", "/v1/notifications/{id}", get_notification),
]
