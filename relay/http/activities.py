"""HTTP routes registering Live Activity tokens: a service's activity, a device's push-to-start."""

from __future__ import annotations

from typing import TypeVar

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from relay.config import App, LiveActivitySettings
from relay.http.auth import resolve_app
from relay.http.body import parse_json, read_body
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
from relay.logs import mask_token
from relay.model import InvalidInput
from relay.payload import normalize_device_token, validate_service_id
from relay.store.activity_store import ActivityStore

log = structlog.get_logger()
Model = TypeVar("Model", bound=BaseModel)

ACTIVITY_PATH = "/v1/activities/{app}/{service_id}"
PUSH_TO_START_PATH = "/v1/devices/{app}/{token}/push-to-start"
# A registration can also be refused for its body's size and media type.
REGISTER_ERRORS = (400, 403, 404, 413, 415)


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


async def _body(request: web.Request, model: type[Model]) -> Model:
    try:
        return model.model_validate(parse_json(await read_body(request)))
    except ValidationError as error:
        raise problem_from_validation(error, model) from None


async def put_activity(request: web.Request) -> web.Response:
    app, settings = _app(request)
    service_id = validate_service_id(request.match_info["service_id"])
    body = await _body(request, ActivityIn)
    activity_token = normalize_device_token(body.activity_token, "activity_token")
    device_token = normalize_device_token(body.device_token)
    await _store(request).register(
        app.name, service_id, activity_token, device_token, settings.service_lifetime_s
    )
    log.info(
        "activity_registered",
        app=app.name,
        service_id=service_id,
        token=mask_token(activity_token),
    )
    return json_response(
        ActivityRegisteredOut(service_id=service_id, expires_in_s=settings.service_lifetime_s)
    )


async def delete_activity(request: web.Request) -> web.Response:
    app, _ = _app(request)
    service_id = validate_service_id(request.match_info["service_id"])
    removed = await _store(request).unregister(app.name, service_id)
    log.info("activity_unregistered", app=app.name, service_id=service_id, removed=removed)
    return json_response(RemovedOut(removed=removed))


async def put_push_to_start(request: web.Request) -> web.Response:
    app, _ = _app(request)
    device_token = normalize_device_token(request.match_info["token"], "token")
    body = await _body(request, PushToStartIn)
    token = normalize_device_token(body.push_to_start_token, "push_to_start_token")
    await _store(request).set_push_to_start(app.name, device_token, token)
    log.info("push_to_start_registered", app=app.name, token=mask_token(device_token))
    return json_response(PushToStartRegisteredOut(registered=True))


async def delete_push_to_start(request: web.Request) -> web.Response:
    app, _ = _app(request)
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
        "Forget a service's Live Activity token (the app ended the activity)",
        {200: RemovedOut},
        errors=(400, 403, 404),
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
