"""`POST /gms/push`: GMS's customhttp webhook."""

from __future__ import annotations

from aiohttp import web

from relay.core.gms import customhttp_spec
from relay.core.model import InvalidInput
from relay.http.body import check_embedded_message, parse_json, read_body
from relay.http.enqueue import count_event, ingest_push, refuse_while_draining
from relay.http.problems import Problem
from relay.http.requests import GmsPushIn
from relay.http.responses import GmsPushOut, json_response
from relay.http.routing import INGEST_ERRORS, Route
from relay.http.state import STATE


async def gms_push(request: web.Request) -> web.Response:
    """GMS customhttp: {"deviceId", "message"}; 200 once durably queued (GMS needs exactly 200)."""
    refuse_while_draining(request.app[STATE])
    raw = await read_body(request)
    try:
        # The depth limit and one wording for malformed JSON on every route.
        document = parse_json(raw)
        check_embedded_message(document)
        spec = customhttp_spec(document)
    except (Problem, InvalidInput):
        count_event("gms", "rejected", "invalid-input")
        raise
    accepted = None if spec is None else await ingest_push("gms", request, spec, "deviceId")
    if accepted is None:
        if spec is None:
            count_event("gms", "accepted", "nothing-to-push")
        return json_response(GmsPushOut(id=None, pushed=False))
    return json_response(
        GmsPushOut(
            id=accepted.id, pushed=True, duplicate=accepted.duplicate, spooled=accepted.spooled
        )
    )


ROUTES = [
    Route(
        "POST",
        "/gms/push",
        gms_push,
        "gmsPush",
        "GMS customhttp push: {deviceId, message}; 200 once queued",
        {200: GmsPushOut},
        body=GmsPushIn,
        errors=INGEST_ERRORS,
    )
]
