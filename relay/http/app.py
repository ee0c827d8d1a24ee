"""The relay's aiohttp application: middleware, the routes of every group, and server limits."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

import orjson
from aiohttp import web

from relay.http import (
    activities,
    check,
    devices,
    gms_push,
    health,
    notifications,
    openapi,
    receipts,
)
from relay.http.middleware import authenticated_request_context, expect_continue
from relay.http.responses import OpenApiOut
from relay.http.routing import Route
from relay.http.state import STATE, RelayState


def server_options(application: web.Application) -> dict[str, Any]:
    """aiohttp AppRunner keyword arguments that enforce the application's ApiLimits."""
    limits = application[STATE].limits
    return {
        "keepalive_timeout": limits.idle_timeout_s,
        "lingering_time": limits.linger_s,
        "max_line_size": limits.max_request_line_bytes,
        "max_field_size": limits.max_header_bytes,
        "max_headers": limits.max_headers,
    }


def every_route() -> list[Route]:
    """Every route an api serves, in the order they are matched."""
    return [
        *health.ROUTES,
        *gms_push.ROUTES,
        *notifications.ROUTES,
        *devices.ROUTES,
        *OPENAPI_ROUTES,
        *activities.ROUTES,
        *check.ROUTES,
        *receipts.ROUTES,
    ]


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of every route the api serves (relay.http.openapi writes it)."""
    return openapi.document(every_route())


async def openapi_route(_: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps(openapi_document()), content_type="application/json")


OPENAPI_ROUTES = [
    Route("GET", "/openapi.json", openapi_route, "openapi", "This document", {200: OpenApiOut}),
]


def create_app(state: RelayState, *, ingest: bool = True) -> web.Application:
    """The relay's HTTP application; a worker-only process serves just health and metrics."""
    app = web.Application(
        middlewares=[authenticated_request_context],
        client_max_size=state.settings.http.max_body_bytes,
    )
    app[STATE] = state
    app[receipts.RECEIPT_DESK] = receipts.ReceiptDesk.from_settings(state.settings)
    for route in every_route() if ingest else health.ROUTES:
        path = any_segment(route.path)
        if route.method == "GET":  # with HEAD, as aiohttp's add_get does
            app.router.add_get(path, route.handler, expect_handler=expect_continue)
        else:
            app.router.add_route(route.method, path, route.handler, expect_handler=expect_continue)
    return app


def any_segment(path: str) -> str:
    """The route's path with each parameter matching any one segment: aiohttp's default leaves
    out '{' and '}', so a service id holding one was "no such route" on the activity routes
    though /gms/push accepts it. One rule: every value reaches the route's own check."""
    return re.sub(r"\{(\w+)\}", r"{\1:[^/]+}", path)
