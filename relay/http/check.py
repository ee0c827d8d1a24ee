"""`GET /v1/apps/{app}/check`: `apns-relay check` for one app, asked of a running api."""

from __future__ import annotations

import dataclasses

import orjson
import structlog
from aiohttp import web

from relay.check_command import check_apps
from relay.http.auth import resolve_app
from relay.http.problems import unknown_app_problem
from relay.http.state import GRANT, STATE, Route
from relay.model import InvalidInput

log = structlog.get_logger("relay.check")

CHECK_PATH = "/v1/apps/{app}/check"
# As the command's default: the probe's connection and answer together, on a healthy route well
# under a second.
CHECK_TIMEOUT_S = 10.0


async def check_app_route(request: web.Request) -> web.Response:
    """200 with the verdict whatever it is (the check ran; `ok` says whether the app is ready)."""
    state = request.app[STATE]
    try:
        app = resolve_app(state.settings, request[GRANT], request.match_info["app"], "app")
    except InvalidInput as error:
        raise unknown_app_problem(error) from None
    [verdict] = await check_apps(state.settings, [app], CHECK_TIMEOUT_S)
    log.info("app_checked", app=app.name, verdict=verdict.verdict, ok=verdict.ok)
    return web.Response(
        body=orjson.dumps(dataclasses.asdict(verdict)), content_type="application/json"
    )


ROUTES: list[Route] = [("GET", CHECK_PATH, check_app_route)]
