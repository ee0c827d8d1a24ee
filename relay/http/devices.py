"""Routes over the queue's state: one device's (read, clear) and the totals over every app."""

from __future__ import annotations

from dataclasses import asdict

import structlog
from aiohttp import web

from relay.http.auth import require_full_access, resolve_app
from relay.http.problems import unknown_app_problem
from relay.http.responses import json_response
from relay.http.state import GRANT, STATE, Route
from relay.logs import mask_token
from relay.model import InvalidInput
from relay.payload import normalize_device_token

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
    return json_response(asdict(device))


async def delete_device(request: web.Request) -> web.Response:
    app, token = _device_key(request)
    purged = await request.app[STATE].queue.clear_device(app, token)
    log.info("device_cleared", app=app, token=mask_token(token), purged=purged)
    return json_response({"purged": purged, "dead_mark_cleared": True})


async def queue_totals(request: web.Request) -> web.Response:
    require_full_access(request[GRANT])
    return json_response(asdict(await request.app[STATE].queue.totals()))


ROUTES: list[Route] = [
    ("GET", "/v1/devices/{app}/{token}", get_device),
    ("DELETE", "/v1/devices/{app}/{token}", delete_device),
    ("GET", "/v1/queue", queue_totals),
]
