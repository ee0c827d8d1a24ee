"""Routes over the queue's state: one device's (read, clear) and the totals over every app."""

from __future__ import annotations

from dataclasses import asdict

import structlog
from aiohttp import web

from relay.core.fields import normalize_device_token
from relay.core.model import InvalidInput
from relay.core.redaction import mask_token
from relay.http.auth import require_full_access, resolve_app
from relay.http.problems import unknown_app_problem
from relay.http.responses import DeviceClearedOut, DeviceOut, QueueTotalsOut, json_response
from relay.http.routing import Route
from relay.http.state import GRANT, STATE

log = structlog.get_logger("relay.api")


def _device_key(request: web.Request) -> tuple[str, str]:
    state = request.app[STATE]
    try:
        app = resolve_app(state.settings, request[GRANT], request.match_info["app"], "app").name
    except InvalidInput as error:
        raise unknown_app_problem(error) from None
    return app, normalize_device_token(request.match_info["token"], "token")


async def get_device(request: web.Request) -> web.Response:
    app, token = _device_key(request)
    device = await request.app[STATE].queue.device(app, token)
    return json_response(DeviceOut.model_validate(asdict(device)))


async def delete_device(request: web.Request) -> web.Response:
    app, token = _device_key(request)
    purged = await request.app[STATE].queue.clear_device(app, token)
    log.info("device_cleared", app=app, token=mask_token(token), purged=purged)
    return json_response(DeviceClearedOut(purged=purged, dead_mark_cleared=True))


async def queue_totals(request: web.Request) -> web.Response:
    require_full_access(request[GRANT])
    return json_response(QueueTotalsOut(**asdict(await request.app[STATE].queue.totals())))


DEVICE_PATH = "/v1/devices/{app}/{token}"
ROUTES = [
    Route(
        "GET",
        DEVICE_PATH,
        get_device,
        "getDevice",
        "A device's pending count and dead-token record",
        {200: DeviceOut},
        errors=(400, 403, 404),
    ),
    Route(
        "DELETE",
        DEVICE_PATH,
        delete_device,
        "deleteDevice",
        "Clear the dead-token mark and purge the device's queue",
        {200: DeviceClearedOut},
        errors=(400, 403, 404),
    ),
    Route(
        "GET",
        "/v1/queue",
        queue_totals,
        "getQueueTotals",
        "Queue totals: pending, devices, oldest age, lifetime counters (every app)",
        {200: QueueTotalsOut},
        errors=(403,),
    ),
]
