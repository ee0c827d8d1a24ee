"""The HTTP API (aiohttp): GMS webhook and JSON ingest, status, health, metrics, problem+json."""

from __future__ import annotations

import base64
import binascii
import hmac
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from relay import metrics
from relay.config import Settings
from relay.gms import parse_customhttp, to_notification
from relay.logs import mask_token
from relay.model import InvalidInput
from relay.payload import PushSpec, build_notification
from relay.queue import Accepted, QueueRefusal, RelayQueue
from relay.schema import BatchIn, NotificationIn, openapi_document

log = structlog.get_logger("relay.api")

PROBLEM_JSON = "application/problem+json"
PUBLIC_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
QUEUE_GAUGES_MAX_AGE_S = 1.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Problem(Exception):
    """An RFC 9457 problem: the status, the field concerned and the rule it broke."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        field: str | None = None,
        retry_after_s: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.field = field
        self.retry_after_s = retry_after_s
        self.headers = dict(headers or {})

    @classmethod
    def from_invalid(cls, error: InvalidInput) -> Problem:
        code = "payload-too-large" if error.status == 413 else "invalid-input"
        return cls(error.status, code, error.rule, field=error.field)

    @classmethod
    def from_refusal(cls, refusal: QueueRefusal) -> Problem:
        return cls(
            refusal.status,
            refusal.reason.replace("_", "-"),
            refusal.message,
            field="device_token",
            retry_after_s=refusal.retry_after_s,
        )

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"urn:gms-apns-relay:problem:{self.code}",
            "title": self.code.replace("-", " ").capitalize(),
            "status": self.status,
            "detail": self.detail,
        }
        if self.field is not None:
            body["field"] = self.field
        return body

    def response(self) -> web.Response:
        headers = dict(self.headers)
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(self.retry_after_s)
        return web.Response(
            status=self.status,
            body=orjson.dumps(self.body()),
            content_type=PROBLEM_JSON,
            headers=headers,
        )


def problem_from_validation(error: ValidationError, prefix: str = "") -> Problem:
    first = error.errors(include_url=False)[0]
    location = ".".join(str(part) for part in first["loc"] if not str(part).startswith("function"))
    # pydantic names the union branch it tried ("alert.str"); the API field is what matters.
    location = location.replace(".str", "").replace(".AlertIn", "")
    return Problem(400, "invalid-input", first["msg"], field=f"{prefix}{location}" or "body")


def parse_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise Problem(
            400, "malformed-json", f"the body is not valid JSON: {error}", field="body"
        ) from None


# Credentials


@dataclass(frozen=True)
class Credentials:
    """Accepted credentials, compared in constant time."""

    bearer_tokens: tuple[bytes, ...] = ()
    basic_pairs: tuple[bytes, ...] = ()  # "user:password"

    @classmethod
    def from_settings(cls, settings: Settings) -> Credentials:
        return cls(
            tuple(t.get_secret_value().encode() for t in settings.auth.api_tokens),
            tuple(p.get_secret_value().encode() for p in settings.auth.basic),
        )

    def allows(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer":
            return _any_equal(value.strip().encode(), self.bearer_tokens)
        if scheme == "basic":
            try:
                pair = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            return _any_equal(pair, self.basic_pairs)
        return False


def _any_equal(candidate: bytes, accepted: tuple[bytes, ...]) -> bool:
    # Compare with every accepted value so timing does not tell which one (or none) matched.
    matched = False
    for value in accepted:
        matched |= hmac.compare_digest(candidate, value)
    return matched


# The application


@dataclass
class RelayState:
    """What the handlers share: settings, the queue, and the process's own condition."""

    settings: Settings
    queue: RelayQueue
    credentials: Credentials
    draining: bool = False
    paused_apps: Callable[[], Mapping[str, str]] = dict
    gauges_read_at: float = 0.0
    extra_ready_checks: list[Callable[[], str | None]] = field(default_factory=list)


STATE = web.AppKey("relay_state", RelayState)


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, metrics and problem+json for every error, whatever raised it."""
    request_id = request.headers.get("X-Request-Id") or uuid.uuid4().hex
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.monotonic()
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    try:
        response = await handler(request)
    except Problem as problem:
        response = problem.response()
    except InvalidInput as error:
        response = Problem.from_invalid(error).response()
    except web.HTTPRequestEntityTooLarge as error:
        response = Problem(
            413, "body-too-large", error.text or "request body too large", field="body"
        ).response()
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code = error.reason.lower().replace(" ", "-")
        response = Problem(error.status, code, error.reason).response()
    except Exception:
        log.exception("unhandled_error", route=route)
        response = Problem(500, "internal-error", "internal error; see the relay's log").response()
    finally:
        structlog.contextvars.unbind_contextvars("request_id")
    response.headers["X-Request-Id"] = request_id
    metrics.HTTP_REQUESTS.labels(route=route, method=request.method, status=response.status).inc()
    metrics.HTTP_REQUEST_DURATION.labels(route=route).observe(time.monotonic() - started)
    return response


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path in PUBLIC_ROUTES:
        return await handler(request)
    state = request.app[STATE]
    if not state.credentials.allows(request.headers.get("Authorization")):
        raise Problem(
            401,
            "unauthorized",
            "missing or wrong credentials: send Authorization: Bearer <token> or Basic",
            field="Authorization",
            headers={"WWW-Authenticate": 'Bearer realm="apns-relay", Basic realm="apns-relay"'},
        )
    return await handler(request)


def _refuse_while_draining(state: RelayState) -> None:
    if state.draining:
        raise Problem(
            503, "draining", "this relay is shutting down; retry another replica", retry_after_s=1
        )


async def _enqueue(state: RelayState, spec: PushSpec) -> Accepted | None:
    """Queue one push; None when the app does not want this kind (e.g. chat typing notices)."""
    app = state.settings.app(spec.app)
    notification = to_notification(
        spec,
        app,
        now_s=int(time.time()),
        default_ttl_s=state.settings.queue.default_ttl_seconds,
        max_ttl_s=state.settings.queue.max_ttl_seconds,
    )
    if notification is None:
        return None
    try:
        accepted = await state.queue.enqueue(notification)
    except QueueRefusal as refusal:
        raise Problem.from_refusal(refusal) from None
    if not accepted.duplicate:
        metrics.NOTIFICATIONS_ENQUEUED.labels(app=app.name).inc()
    return accepted


def _count_event(source: str, outcome: str, reason: str = "") -> None:
    metrics.EVENTS_RECEIVED.labels(source=source, outcome=outcome, reason=reason).inc()


async def _ingest(source: str, state: RelayState, spec: PushSpec) -> Accepted | None:
    try:
        accepted = await _enqueue(state, spec)
    except Problem as problem:
        _count_event(source, "rejected", problem.code)
        raise
    except InvalidInput as error:
        _count_event(source, "rejected", f"invalid-{error.field.split('.')[0]}")
        raise
    if accepted is None:
        _count_event(source, "accepted", "nothing-to-push")
    else:
        _count_event(source, "duplicate" if accepted.duplicate else "accepted")
    return accepted


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def gms_push(request: web.Request) -> web.Response:
    """GMS customhttp: {"deviceId", "message"}; 200 once durably queued (GMS needs exactly 200)."""
    state = request.app[STATE]
    _refuse_while_draining(state)
    raw = await request.read()
    try:
        spec = parse_customhttp(raw)
    except InvalidInput:
        _count_event("gms", "rejected", "invalid-input")
        raise
    accepted = await _ingest("gms", state, spec) if spec is not None else None
    if accepted is None:
        if spec is None:
            _count_event("gms", "accepted", "nothing-to-push")
        return _json({"id": None, "pushed": False})
    return _json({"id": accepted.id, "pushed": True, "duplicate": accepted.duplicate})


def _status_url(notification_id: str) -> str:
    return f"/v1/notifications/{notification_id}"


async def create_notification(request: web.Request) -> web.Response:
    state = request.app[STATE]
    _refuse_while_draining(state)
    try:
        body = NotificationIn.model_validate_json(await request.read())
    except ValidationError as error:
        _count_event("api", "rejected", "invalid-input")
        if error.errors()[0]["type"] == "json_invalid":
            raise Problem(
                400, "malformed-json", "the body is not valid JSON", field="body"
            ) from None
        raise problem_from_validation(error) from None
    accepted = await _ingest("api", state, body.to_spec())
    assert accepted is not None, "only chat typing notices are dropped, and they come from GMS"
    return _json(
        {
            "id": accepted.id,
            "status_url": _status_url(accepted.id),
            "duplicate": accepted.duplicate,
        },
        status=202,
    )


async def create_batch(request: web.Request) -> web.Response:
    """Up to 1000 notifications; each is validated and queued on its own and answered per item."""
    state = request.app[STATE]
    _refuse_while_draining(state)
    try:
        batch = BatchIn.model_validate(parse_json(await request.read()))
    except ValidationError as error:
        raise problem_from_validation(error) from None
    results: list[dict[str, Any]] = []
    valid: list[tuple[int, Any]] = []
    now_s = int(time.time())
    for index, item in enumerate(batch.notifications):
        prefix = f"notifications[{index}]."
        try:
            spec = NotificationIn.model_validate(item).to_spec()
            app = state.settings.app(spec.app)
            valid.append(
                (
                    index,
                    build_notification(
                        spec,
                        app,
                        now_s=now_s,
                        default_ttl_s=state.settings.queue.default_ttl_seconds,
                        max_ttl_s=state.settings.queue.max_ttl_seconds,
                    ),
                )
            )
            results.append({})
        except ValidationError as error:
            results.append(_item_problem(problem_from_validation(error, prefix)))
        except InvalidInput as error:
            problem = Problem.from_invalid(error)
            problem.field = prefix + error.field
            results.append(_item_problem(problem))
    outcomes = await state.queue.enqueue_many([n for _, n in valid])
    for (index, notification), outcome in zip(valid, outcomes, strict=True):
        if isinstance(outcome, QueueRefusal):
            problem = Problem.from_refusal(outcome)
            problem.field = f"notifications[{index}].device_token"
            results[index] = _item_problem(problem)
        else:
            if not outcome.duplicate:
                metrics.NOTIFICATIONS_ENQUEUED.labels(app=notification.app).inc()
            results[index] = {
                "status": 202,
                "id": outcome.id,
                "status_url": _status_url(outcome.id),
                "duplicate": outcome.duplicate,
            }
    for result in results:
        if result["status"] == 202:
            _count_event("batch", "duplicate" if result["duplicate"] else "accepted")
        else:
            _count_event("batch", "rejected", result["problem"]["type"].rsplit(":", 1)[-1])
    accepted = sum(1 for r in results if r["status"] == 202)
    return _json({"accepted": accepted, "rejected": len(results) - accepted, "results": results})


def _item_problem(problem: Problem) -> dict[str, Any]:
    return {"status": problem.status, "problem": problem.body()}


async def get_notification(request: web.Request) -> web.Response:
    status = await request.app[STATE].queue.get(request.match_info["id"])
    if status is None:
        raise Problem(
            404, "not-found", "no such notification (unknown, or past retention)", field="id"
        )
    return _json(asdict(status))


def _device_key(request: web.Request) -> tuple[str, str]:
    state = request.app[STATE]
    app = state.settings.app(request.match_info["app"]).name
    token = request.match_info["token"]
    if not token or len(token) > 200 or any(c not in "0123456789abcdefABCDEF" for c in token):
        raise Problem(
            400, "invalid-input", "must be hexadecimal (at most 200 digits)", field="token"
        )
    return app, token.lower()


async def get_device(request: web.Request) -> web.Response:
    app, token = _device_key(request)
    device = await request.app[STATE].queue.device(app, token)
    return _json(asdict(device))


async def delete_device(request: web.Request) -> web.Response:
    app, token = _device_key(request)
    purged = await request.app[STATE].queue.clear_device(app, token)
    log.info("device_cleared", app=app, token=mask_token(token), purged=purged)
    return _json({"purged": purged, "dead_mark_cleared": True})


async def queue_totals(request: web.Request) -> web.Response:
    return _json(asdict(await request.app[STATE].queue.totals()))


async def healthz(_: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    reasons: list[str] = []
    if state.draining:
        reasons.append("draining")
    try:
        await state.queue.ping()
    except (OSError, ConnectionError) as error:
        reasons.append(f"redis unreachable: {error}")
    paused = state.paused_apps()
    if state.settings.apps and len(paused) >= len(state.settings.apps):
        reasons.append("every app is paused: " + ", ".join(f"{a} ({r})" for a, r in paused.items()))
    reasons.extend(r for check in state.extra_ready_checks if (r := check()))
    body = {"ready": not reasons, "reasons": reasons, "paused_apps": dict(paused)}
    return _json(body, status=200 if not reasons else 503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if time.monotonic() - state.gauges_read_at >= QUEUE_GAUGES_MAX_AGE_S:
        try:
            totals = await state.queue.totals()
        except (OSError, ConnectionError) as error:
            log.warning("redis_unavailable", operation="totals", error=str(error))
        else:
            metrics.QUEUE_PENDING.set(totals.pending)
            metrics.QUEUE_DEVICES_PENDING.set(totals.devices_pending)
            metrics.QUEUE_OLDEST_AGE.set(totals.oldest_pending_age_s or 0.0)
            state.gauges_read_at = time.monotonic()
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(_: web.Request) -> web.Response:
    return _json(openapi_document())


def create_app(state: RelayState, *, ingest: bool = True) -> web.Application:
    """The relay's HTTP application; a worker-only process serves just health and metrics."""
    app = web.Application(
        middlewares=[request_context, authenticate],
        client_max_size=state.settings.http.max_body_bytes,
    )
    app[STATE] = state
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    if ingest:
        app.router.add_post("/gms/push", gms_push)
        app.router.add_post("/v1/notifications", create_notification)
        app.router.add_post("/v1/notifications:batch", create_batch)
        app.router.add_get("/v1/notifications/{id}", get_notification)
        app.router.add_get("/v1/devices/{app}/{token}", get_device)
        app.router.add_delete("/v1/devices/{app}/{token}", delete_device)
        app.router.add_get("/v1/queue", queue_totals)
        app.router.add_get("/openapi.json", openapi)
    return app
