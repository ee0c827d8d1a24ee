"""Every request's passage: request id, metrics, problem+json for any error, credentials, Expect."""

from __future__ import annotations

import math
import re
import time
import uuid

import structlog
from aiohttp import HttpVersion11, web

from relay.core.model import InvalidInput
from relay.core.quoting import shown
from relay.http.auth import WWW_AUTHENTICATE
from relay.http.problems import Problem
from relay.http.routing import Handler
from relay.http.state import GRANT, STATE
from relay.store.errors import REDIS_ERRORS, REDIS_UNAVAILABLE
from relay.telemetry import metrics

log = structlog.get_logger("relay.api")

# /v1/receipts: phones post delivery receipts, proven by their MAC (relay.http.receipts).
PUBLIC_ROUTES = frozenset({"/healthz", "/readyz", "/metrics", "/v1/receipts"})
# Methods counted by name in metrics; anything else a client invents is counted as "other",
# so a hostile client cannot grow the label set.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# A caller's X-Request-Id is echoed and logged only if it looks like an id: short, and of a
# charset no header or log line can be broken with (the log's redaction still masks a token in it).
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _http_error_problem(request: web.Request, error: web.HTTPException) -> Problem:
    if isinstance(error, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(error.allowed_methods))
        return Problem(
            405,
            "method-not-allowed",
            f"{request.method} is not allowed on this path; allowed: {allowed}",
            field="method",
            headers={"Allow": error.headers["Allow"]},
        )
    if isinstance(error, web.HTTPNotFound):
        return Problem(404, "not-found", "no such route", field="path")
    return Problem(error.status, error.reason.lower().replace(" ", "-"), error.reason)


def _client_error(request: web.Request, route: str, problem: Problem) -> web.Response:
    """A refusal's response, logged as one line without a traceback: a client's mistake is not
    the server's error. The detail is left out (it may quote what the client sent)."""
    if problem.status < 500:
        method = request.method if request.method in KNOWN_METHODS else "other"
        log.info(
            "request_refused",
            route=route,
            method=method,
            status=problem.status,
            problem=problem.code,
            field=problem.field,
        )
    return problem.response()


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, metrics and problem+json for every error, whatever raised it."""
    return await _in_context(request, handler, authenticating=False)


@web.middleware
async def authenticated_request_context(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    """request_context, and authenticate() before the handler: one middleware, not two (each
    one aiohttp wraps anew on every request)."""
    return await _in_context(request, handler, authenticating=True)


async def _in_context(
    request: web.Request, handler: Handler, *, authenticating: bool
) -> web.StreamResponse:
    offered_id = request.headers.get("X-Request-Id", "")
    request_id = offered_id if REQUEST_ID.fullmatch(offered_id) else str(uuid.uuid4())
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.monotonic()
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    try:
        if authenticating:
            authenticate(request)
        response = await handler(request)
    except Problem as problem:
        response = _client_error(request, route, problem)
    except InvalidInput as error:
        response = _client_error(request, route, Problem.from_invalid(error))
    except web.HTTPException as error:
        if error.status < 400:
            raise
        response = _client_error(request, route, _http_error_problem(request, error))
    except REDIS_ERRORS as error:
        # Not stored (the script did not run, or its answer was lost: an idempotency key makes
        # the retry safe), so the caller must retry; GMS retries what is not a 200.
        REDIS_UNAVAILABLE.occurred(route, error)
        response = Problem(
            503,
            "queue-unavailable",
            "the queue (Redis) cannot be reached; nothing was stored, retry shortly",
            retry_after_s=1,
        ).response()
    except Exception:
        log.exception("unhandled_error", route=route)
        response = Problem(500, "internal-error", "internal error; see the relay's log").response()
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    response.headers["X-Request-Id"] = request_id
    method = request.method if request.method in KNOWN_METHODS else "other"
    metrics.series(metrics.HTTP_REQUESTS, route, method, response.status).inc()
    metrics.series(metrics.HTTP_REQUEST_DURATION, route).observe(time.monotonic() - started)
    return response


def authenticate(request: web.Request) -> None:
    """Every route but health and metrics needs a credential, and is held to its rate."""
    if request.path in PUBLIC_ROUTES:
        return
    state = request.app[STATE]
    grant = state.credentials.grant_for(request.headers.get("Authorization"))
    if grant is None:
        raise Problem(
            401,
            "unauthorized",
            "missing or wrong credentials: send Authorization: Bearer <token> or Basic",
            field="Authorization",
            headers={"WWW-Authenticate": WWW_AUTHENTICATE},
        )
    wait_s = state.rates.wait_s(grant.name, time.monotonic())
    if wait_s > 0:
        raise Problem(
            429,
            "rate-limited",
            f"this credential is over its {state.settings.auth.requests_per_second:g} requests"
            " per second (auth.requests_per_second)",
            field="Authorization",
            retry_after_s=max(1, math.ceil(wait_s)),
        )
    request[GRANT] = grant


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """aiohttp's handling of `Expect`, but an unknown expectation is answered as a problem (its
    own answer is plain text)."""
    if request.version != HttpVersion11:
        return None
    if request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim answer is not part of the response's size
        return None
    return Problem(
        417,
        "expectation-failed",
        f"must be 100-continue, the only expectation supported; received"
        f" {shown(request.headers.get('Expect', ''))}",
        field="Expect",
    ).response()
