"""HTTP routes registering Live Activity tokens: a service's activity, a device's push-to-start."""

from __future__ import annotations

import math
import time
from typing import TypeVar

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from relay.config.schema import App, LiveActivitySettings
from relay.core.fields import normalize_device_token, validate_service_id
from relay.core.model import InvalidInput
from relay.core.redaction import mask_token
from relay.http.auth import resolve_app
from relay.http.body import parse_json, read_body
from relay.http.limits import client_address
from relay.http.problems import Problem, problem_from_validation, unknown_app_problem
from relay.http.requests import DeviceToken
from relay.http.responses import (
    ActivityRegisteredOut,
    PushToStartRegisteredOut,
    RemovedOut,
    json_response,
)
from relay.http.routing import Route
from relay.http.state import GRANT, STATE
from relay.store.activity_store import (
    ACTIVITIES,
    PUSH_TO_START_TOKENS,
    PUSH_TO_START_TTL_S,
    ActivityStore,
)

log = structlog.get_logger()
Model = TypeVar("Model", bound=BaseModel)

ACTIVITY_PATH = "/v1/activities/{app}/{service_id}"
PUSH_TO_START_PATH = "/v1/devices/{app}/{token}/push-to-start"
# A registration can also be refused for its body's size and media type, and the app's
# budget.
REGISTER_ERRORS = (400, 403, 404, 413, 415, 503)
# A spent budget frees up as registrations expire: a client tries again after this long.
REGISTRATION_BUDGET_RETRY_S = 60


class ActivityIn(BaseModel):
    """The Live Activity the app started (or was started) for a GMS service."""

    model_config = ConfigDict(extra="forbid", strict=True)
    activity_token: DeviceToken  # Activity.pushTokenUpdates
    device_token: DeviceToken  # the app's own APNs token (alerts)


class PushToStartIn(BaseModel):
    """The device's push-to-start token (Activity<...>.pushToStartTokenUpdates, iOS 17.2+)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    push_to_start_token: DeviceToken


def _app(request: web.Request) -> tuple[App, LiveActivitySettings]:
    state = request.app[STATE]
    try:
        app = resolve_app(state.settings, request[GRANT], request.match_info["app"], "app")
    except InvalidInput as error:
        raise unknown_app_problem(error) from None
    if app.live_activity is None:
        raise Problem(
            404,
            "live-activities-off",
            f"app {app.name} has no live_activity section in the relay's configuration",
            field="app",
        )
    return app, app.live_activity


def _store(request: web.Request) -> ActivityStore:
    return ActivityStore(request.app[STATE].queue)


def _within_rate(request: web.Request, app: App, settings: LiveActivitySettings) -> None:
    """Each client address may register at registrations_per_second (a burst of
    registration_burst): 429 + Retry-After past it."""
    state = request.app[STATE]
    address = client_address(
        request.remote,
        request.headers.get("X-Forwarded-For"),
        state.settings.http.trusted_proxies,
    )
    wait_s = state.registration_rates.wait_s(
        f"{app.name} {address}",
        settings.registrations_per_second,
        settings.registration_burst,
        time.monotonic(),
    )
    if wait_s > 0:
        raise Problem(
            429,
            "rate-limited",
            f"registrations from one address are limited to {settings.registrations_per_second:g}"
            f" a second (a burst of {settings.registration_burst})",
            retry_after_s=max(1, math.ceil(wait_s)),
        )


async def _within_budget(
    store: ActivityStore, app: App, settings: LiveActivitySettings, kind: str, member: str
) -> None:
    """Refuse a new registration when the app holds max_registrations of its kind (503 +
    Retry-After: the oldest expire)."""
    lifetime_s = settings.service_lifetime_s if kind == ACTIVITIES else PUSH_TO_START_TTL_S
    now_ms = int(time.time() * 1000)
    if not await store.within_budget(
        app.name, kind, member, lifetime_s, settings.max_registrations, now_ms
    ):
        raise Problem(
            503,
            "registration-budget-spent",
            f"app {app.name} holds live_activity.max_registrations"
            f" ({settings.max_registrations}) {kind} registrations; the oldest expire first",
            field="app",
            retry_after_s=REGISTRATION_BUDGET_RETRY_S,
        )


async def _body(request: web.Request, model: type[Model]) -> Model:
    try:
        return model.model_validate(parse_json(await read_body(request)))
    except ValidationError as error:
        raise problem_from_validation(error, model) from None


async def put_activity(request: web.Request) -> web.Response:
    app, settings = _app(request)
    _within_rate(request, app, settings)
    service_id = validate_service_id(request.match_info["service_id"])
    body = await _body(request, ActivityIn)
    activity_token = normalize_device_token(body.activity_token, "activity_token")
    device_token = normalize_device_token(body.device_token)
    if activity_token == device_token:
        raise Problem(
            400,
            "invalid-input",
            "must be the activity's own push token (Activity.pushTokenUpdates), not the"
            " device's APNs token",
            field="activity_token",
        )
    store = _store(request)
    # Checked before the budget counts it (a refused registration stores nothing), and again
    # by the registration itself, atomically.
    if not await store.bound_to(app.name, service_id, device_token):
        raise _not_bound(service_id)
    await _within_budget(store, app, settings, ACTIVITIES, service_id)
    registered = await store.register(
        app.name, service_id, activity_token, device_token, settings.service_lifetime_s
    )
    if not registered:
        raise _not_bound(service_id)
    log.info(
        "activity_registered",
        app=app.name,
        service_id=service_id,
        token=mask_token(activity_token),
    )
    return json_response(
        ActivityRegisteredOut(service_id=service_id, expires_in_s=settings.service_lifetime_s)
    )


def _not_bound(service_id: str) -> Problem:
    return Problem(
        403,
        "activity-not-bound",
        f"GMS has pushed no service {service_id} to this device_token: a Live Activity is"
        " registered only by the device GMS pushed the service to, once its push arrived",
        field="device_token",
    )


async def delete_activity(request: web.Request) -> web.Response:
    app, settings = _app(request)
    _within_rate(request, app, settings)
    service_id = validate_service_id(request.match_info["service_id"])
    device_token = normalize_device_token(request.query.get("device_token", ""), "device_token")
    removed = await _store(request).unregister(app.name, service_id, device_token)
    log.info("activity_unregistered", app=app.name, service_id=service_id, removed=removed)
    return json_response(RemovedOut(removed=removed))


async def put_push_to_start(request: web.Request) -> web.Response:
    app, settings = _app(request)
    _within_rate(request, app, settings)
    device_token = normalize_device_token(request.match_info["token"], "token")
    body = await _body(request, PushToStartIn)
    token = normalize_device_token(body.push_to_start_token, "push_to_start_token")
    store = _store(request)
    await _within_budget(store, app, settings, PUSH_TO_START_TOKENS, device_token)
    await store.set_push_to_start(app.name, device_token, token)
    log.info("push_to_start_registered", app=app.name, token=mask_token(device_token))
    return json_response(PushToStartRegisteredOut(registered=True))


async def delete_push_to_start(request: web.Request) -> web.Response:
    app, settings = _app(request)
    _within_rate(request, app, settings)
    device_token = normalize_device_token(request.match_info["token"], "token")
    removed = await _store(request).drop_push_to_start(app.name, device_token)
    log.info("push_to_start_unregistered", app=app.name, token=mask_token(device_token))
    return json_response(RemovedOut(removed=removed))


ROUTES = [
    Route(
        "PUT",
        ACTIVITY_PATH,
        put_activity,
        "putActivity",
        "Register the Live Activity of a GMS service: its update token, for the "
        "service's lifetime (apps[].live_activity.service_lifetime_s)",
        {200: ActivityRegisteredOut},
        body=ActivityIn,
        errors=REGISTER_ERRORS,
    ),
    Route(
        "DELETE",
        ACTIVITY_PATH,
        delete_activity,
        "deleteActivity",
        "Forget a service's Live Activity token (the app ended the activity); the query's"
        " device_token must be the device GMS pushed the service to",
        {200: RemovedOut},
        errors=(400, 403, 404),
        query=("device_token",),
    ),
    Route(
        "PUT",
        PUSH_TO_START_PATH,
        put_push_to_start,
        "putPushToStart",
        "Register a device's push-to-start token (iOS 17.2+), so the relay can start "
        "the callback's Live Activity itself",
        {200: PushToStartRegisteredOut},
        body=PushToStartIn,
        errors=REGISTER_ERRORS,
    ),
    Route(
        "DELETE",
        PUSH_TO_START_PATH,
        delete_push_to_start,
        "deletePushToStart",
        "Forget a device's push-to-start token (the user turned Live Activities off)",
        {200: RemovedOut},
        errors=(400, 403, 404),
    ),
]
