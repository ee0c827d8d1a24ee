"""`GET /v1/apps/{app}/check`: `apns-relay check` for one app, asked of a running api."""

from __future__ import annotations

import dataclasses

import structlog
from aiohttp import web

from relay.core.model import InvalidInput
from relay.credentials.check import Verdict
from relay.delivery.probe import check_apps
from relay.http.auth import require_operator, resolve_app
from relay.http.problems import unknown_app_problem
from relay.http.responses import VerdictOut, json_response
from relay.http.routing import Route
from relay.http.state import GRANT, STATE

log = structlog.get_logger("relay.check")

CHECK_PATH = "/v1/apps/{app}/check"
# As the command's default: the probe's connection and answer together, on a healthy route well
# under a second.
CHECK_TIMEOUT_S = 10.0


async def check_app_route(request: web.Request) -> web.Response:
    """200 with the verdict whatever it is (the check ran; `ok` says whether the app is ready).
    An operator action: it reaches APNs, so no app's or GMS's credential may start it."""
    state = request.app[STATE]
    grant = request[GRANT]
    require_operator(grant)
    try:
        app = resolve_app(state.settings, grant, request.match_info["app"], "app")
    except InvalidInput as error:
        raise unknown_app_problem(error) from None

    async def probe() -> Verdict:
        [verdict] = await check_apps(state.settings, [app], CHECK_TIMEOUT_S)
        return verdict

    checked, cached = await state.checks.verdict(app.name, probe)
    verdict = checked.verdict
    log.info("app_checked", app=app.name, verdict=verdict.verdict, ok=verdict.ok, cached=cached)
    return json_response(
        VerdictOut(
            **dataclasses.asdict(verdict),
            cached=cached,
            age_s=round(state.checks.age_s(checked), 3),
        )
    )


ROUTES = [
    Route(
        "GET",
        CHECK_PATH,
        check_app_route,
        "checkApp",
        "`apns-relay check` for one app (operator tokens only): its credential files, then"
        " one probe push to a random token (APNs' BadDeviceToken means ready); 200 with the"
        " verdict, from memory (cached: true) within 30 s of the last probe",
        {200: VerdictOut},
        errors=(403, 404),
    )
]
