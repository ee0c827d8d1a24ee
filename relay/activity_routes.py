"""HTTP routes registering Live Activity tokens: a service's activity, a device's push-to-start."""

from __future__ import annotations

from typing import Any, TypeVar

import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, ValidationError

from relay.api import (
    GRANT,
    STATE,
    Handler,
    Problem,
    parse_json,
    problem_from_validation,
    read_body,
    resolve_app,
    unknown_app_problem,
)
from relay.config import App, LiveActivitySettings
from relay.logs import mask_token
from relay.model import InvalidInput
from relay.payload import (
    MAX_SERVICE_ID_CHARS,
    MAX_TOKEN_HEX,
    MIN_TOKEN_HEX,
    normalize_device_token,
    validate_service_id,
)
from relay.schema import APP_NAME, DEVICE_TOKEN, DeviceToken
from relay.store.activity_store import ActivityStore

log = structlog.get_logger()
Model = TypeVar("Model", bound=BaseModel)

ACTIVITY_PATH = "/v1/activities/{app}/{service_id}"
PUSH_TO_START_PATH = "/v1/devices/{app}/{token}/push-to-start"


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
    return web.json_response(
        {"service_id": service_id, "expires_in_s": settings.service_lifetime_s}
    )


async def delete_activity(request: web.Request) -> web.Response:
    app, _ = _app(request)
    service_id = validate_service_id(request.match_info["service_id"])
    removed = await _store(request).unregister(app.name, service_id)
    log.info("activity_unregistered", app=app.name, service_id=service_id, removed=removed)
    return web.json_response({"removed": removed})


async def put_push_to_start(request: web.Request) -> web.Response:
    app, _ = _app(request)
    device_token = normalize_device_token(request.match_info["token"], "token")
    body = await _body(request, PushToStartIn)
    token = normalize_device_token(body.push_to_start_token, "push_to_start_token")
    await _store(request).set_push_to_start(app.name, device_token, token)
    log.info("push_to_start_registered", app=app.name, token=mask_token(device_token))
    return web.json_response({"registered": True})


async def delete_push_to_start(request: web.Request) -> web.Response:
    app, _ = _app(request)
    device_token = normalize_device_token(request.match_info["token"], "token")
    removed = await _store(request).drop_push_to_start(app.name, device_token)
    log.info("push_to_start_unregistered", app=app.name, token=mask_token(device_token))
    return web.json_response({"removed": removed})


ROUTES: list[tuple[str, str, Handler]] = [
    ("PUT", ACTIVITY_PATH, put_activity),
    ("DELETE", ACTIVITY_PATH, delete_activity),
    ("PUT", PUSH_TO_START_PATH, put_push_to_start),
    ("DELETE", PUSH_TO_START_PATH, delete_push_to_start),
]


def openapi_paths(
    operation: Any, path_parameter: Any, schemas: dict[str, Any], ref: str
) -> dict[str, Any]:
    """The routes above in OpenAPI 3.1, built with the JSON API's own helpers."""
    for model in (ActivityIn, PushToStartIn):
        schemas[model.__name__] = model.model_json_schema(ref_template=ref)
    app = path_parameter("app", {"type": "string", "pattern": APP_NAME, "maxLength": 64})
    service = path_parameter(
        "service_id", {"type": "string", "minLength": 1, "maxLength": MAX_SERVICE_ID_CHARS}
    )
    token = path_parameter(
        "token",
        {
            "type": "string",
            "pattern": DEVICE_TOKEN,
            "minLength": MIN_TOKEN_HEX,
            "maxLength": MAX_TOKEN_HEX,
        },
    )
    errors = (400, 403, 404, 413, 415)
    registered = {
        "type": "object",
        "required": ["service_id", "expires_in_s"],
        "properties": {"service_id": {"type": "string"}, "expires_in_s": {"type": "integer"}},
    }
    removed = {
        "type": "object",
        "required": ["removed"],
        "properties": {"removed": {"type": "boolean"}},
    }
    return {
        ACTIVITY_PATH: {
            "put": operation(
                "putActivity",
                "Register the Live Activity of a GMS service: its update token, for the "
                "service's lifetime (apps[].live_activity.service_lifetime_s)",
                200,
                registered,
                body={"$ref": ref.format(model="ActivityIn")},
                parameters=[app, service],
                errors=errors,
            ),
            "delete": operation(
                "deleteActivity",
                "Forget a service's Live Activity token (the app ended the activity)",
                200,
                removed,
                parameters=[app, service],
                errors=(400, 403, 404),
            ),
        },
        PUSH_TO_START_PATH: {
            "put": operation(
                "putPushToStart",
                "Register a device's push-to-start token (iOS 17.2+), so the relay can start "
                "the callback's Live Activity itself",
                200,
                {
                    "type": "object",
                    "required": ["registered"],
                    "properties": {"registered": {"type": "boolean"}},
                },
                body={"$ref": ref.format(model="PushToStartIn")},
                parameters=[app, token],
                errors=errors,
            ),
            "delete": operation(
                "deletePushToStart",
                "Forget a device's push-to-start token (the user turned Live Activities off)",
                200,
                removed,
                parameters=[app, token],
                errors=(400, 403, 404),
            ),
        },
    }
