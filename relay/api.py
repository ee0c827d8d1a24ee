"""The HTTP API (aiohttp): GMS webhook and JSON ingest, status, health, metrics, problem+json."""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import hmac
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
import structlog
from aiohttp import HttpVersion11, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, SecretStr, ValidationError

from relay import metrics
from relay.activity_ingest import queue_activity_push
from relay.config import App, ConfigError, Settings
from relay.gms import parse_customhttp, to_notification
from relay.logs import mask_token
from relay.model import DeliveryState, InvalidInput, Notification
from relay.payload import (
    EXPIRED_ON_ARRIVAL_STATUS,
    PAYLOAD_TOO_LARGE_STATUS,
    PushSpec,
    build_notification,
    normalize_device_token,
)
from relay.refusals import invalid_inputs, shown
from relay.schema import (
    MAX_JSON_DEPTH,
    MAX_NOTIFICATION_ID_CHARS,
    PROBLEM_JSON,
    BatchIn,
    NotificationIn,
    openapi_document,
)
from relay.store.connection import ReplicaAcknowledgement, ReplicasBehind
from relay.store.errors import REDIS_ERRORS, REDIS_UNAVAILABLE
from relay.store.ingest import Ingest
from relay.store.queue import RelayQueue
from relay.store.records import Accepted, NotificationStatus
from relay.store.refusals import (
    DeadToken,
    DeviceQueueFull,
    IdempotencyKeyReused,
    PendingCapReached,
    QueueRefusal,
)
from relay.store.routes import RouteStore, route_for
from relay.store.spool import Spool, SpoolFull, SpoolUnavailable

log = structlog.get_logger("relay.api")

# What each kind of refusal from the store means to an HTTP client: the store's refusals are
# typed and carry no status (tests/test_boundary.py checks every kind has one here).
REFUSAL_STATUSES: dict[str, int] = {
    IdempotencyKeyReused.reason: 409,
    DeadToken.reason: 410,
    DeviceQueueFull.reason: 429,
    PendingCapReached.reason: 503,
    ReplicasBehind.reason: 503,
    SpoolFull.reason: 503,
    SpoolUnavailable.reason: 503,
}

PUBLIC_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
QUEUE_GAUGES_MAX_AGE_S = 1.0
# Methods counted by name in metrics; anything else a client invents is counted as "other",
# so a hostile client cannot grow the label set.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# A caller's X-Request-Id is echoed and logged only if it looks like an id: short, and of a
# charset no header or log line can be broken with (the log's redaction still masks a token in it).
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# What a body may be encoded with: aiohttp decodes these (br only with Brotli, which is not
# installed: aiohttp's parser refuses it with a plain 400). One encoding, not a stack of them.
BODY_ENCODINGS = frozenset({"identity", "gzip", "deflate"})
JSON_MEDIA_TYPE = re.compile(r"application/(?:[\w.+-]+\+)?json", re.I)
WWW_AUTHENTICATE = 'Bearer realm="apns-relay", Basic realm="apns-relay"'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


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
        close_connection: bool = False,
        extensions: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.extensions = dict(extensions or {})  # RFC 9457 extension members
        self.status = status
        self.code = code
        # A detail may quote what the client sent, non-UTF-8 header bytes included (aiohttp
        # keeps them as surrogates, which JSON cannot hold): those are shown escaped.
        self.detail = _printable(detail)
        self.field = None if field is None else _printable(field)
        self.retry_after_s = retry_after_s
        self.headers = dict(headers or {})
        # An unread body is left on the wire: closing beats aiohttp lingering to drain it.
        self.close_connection = close_connection

    @classmethod
    def from_invalid(cls, *errors: InvalidInput, field_prefix: str = "") -> Problem:
        """Bad input, from the relay's own checks or pydantic's (relay.refusals): the first
        error is `field` and `detail`, and `errors` lists each as {field, rule, received}."""
        codes = {
            PAYLOAD_TOO_LARGE_STATUS: "payload-too-large",
            EXPIRED_ON_ARRIVAL_STATUS: "expired-on-arrival",
        }
        first = errors[0]
        entries = []
        for error in errors:
            entry = {"field": _printable(field_prefix + error.field), "rule": error.rule}
            if error.received is not None:
                entry["received"] = _printable(error.received)
            entries.append(entry)
        return cls(
            first.status,
            codes.get(first.status, "invalid-input"),
            first.detail,
            field=field_prefix + first.field,
            extensions={"errors": entries},
        )

    @classmethod
    def from_refusal(cls, refusal: QueueRefusal, token_field: str = "device_token") -> Problem:
        field, extensions = token_field, {}
        if isinstance(refusal, IdempotencyKeyReused):
            field = token_field.removesuffix("device_token") + "idempotency_key"
            extensions = {
                "notification_id": refusal.notification_id,
                "status_url": _status_url(refusal.notification_id),
            }
        return cls(
            REFUSAL_STATUSES[refusal.reason],
            refusal.reason.replace("_", "-"),
            refusal.message,
            field=field,
            retry_after_s=refusal.retry_after_s,
            extensions=extensions,
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
        return body | self.extensions

    def response(self) -> web.Response:
        headers = dict(self.headers)
        if self.retry_after_s is not None:
            headers["Retry-After"] = str(self.retry_after_s)
        response = web.Response(
            status=self.status,
            body=orjson.dumps(self.body()),
            content_type=PROBLEM_JSON,
            headers=headers,
        )
        if self.close_connection:
            response.force_close()
        return response


def unknown_app_problem(error: InvalidInput) -> Problem:
    """A per-app route naming an app that is not configured: 404, as for a missing resource."""
    problem = Problem.from_invalid(error)
    problem.status, problem.code = 404, "unknown-app"
    return problem


def problem_from_validation(
    error: ValidationError, model: type[BaseModel], prefix: str = ""
) -> Problem:
    """A request `model` refused: pydantic's errors said as the relay's own checks say them."""
    return Problem.from_invalid(*invalid_inputs(error, model), field_prefix=prefix)


# Request bodies


def json_depth_exceeds(document: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` deep (`[]` is depth 1, a scalar 0)."""
    pending: list[tuple[Any, int]] = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        children: Iterable[Any]
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _too_deep(field: str) -> Problem:
    return Problem(
        400,
        "json-too-deep",
        f"arrays and objects nest more than {MAX_JSON_DEPTH} levels deep; at most"
        f" {MAX_JSON_DEPTH} are allowed",
        field=field,
    )


def _is_depth_error(error: orjson.JSONDecodeError) -> bool:
    # orjson's own limits on nesting, worded differently by its two parsers.
    return str(error).lower().startswith(("depth limit exceeded", "recursion limit reached"))


def parse_json(raw: bytes | str, field: str = "body") -> Any:
    """`raw` as JSON, nested at most MAX_JSON_DEPTH deep, or a 400 problem saying why not."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        if _is_depth_error(error):
            raise _too_deep(field) from None
        raise Problem(
            400, "malformed-json", f"the {field} is not valid JSON: {error}", field=field
        ) from None
    if json_depth_exceeds(document, MAX_JSON_DEPTH):
        raise _too_deep(field)
    return document


def check_embedded_message(document: Any) -> None:
    """GMS may send `message` as a JSON string of an object: the depth limit holds for what it
    decodes to as well (the rest of its checks are the GMS parser's)."""
    message = document.get("message") if isinstance(document, dict) else None
    if isinstance(message, str) and message.lstrip().startswith("{"):
        parse_json(message, field="message")


def _check_encoding(request: web.Request) -> None:
    """415 unless the body is plain or in one encoding aiohttp decodes; JSON routes also need a
    JSON media type when one is given (GMS's webhook is read as JSON whatever it says)."""
    encodings = [
        part.strip().lower()
        for header in request.headers.getall("Content-Encoding", [])
        for part in header.split(",")
    ]
    if len(encodings) > 1 or (encodings and encodings[0] not in BODY_ENCODINGS):
        raise Problem(
            415,
            "unsupported-content-encoding",
            f"Content-Encoding {', '.join(encodings)!r} is not supported; send one of"
            f" {', '.join(sorted(BODY_ENCODINGS))}, or none",
            field="Content-Encoding",
            close_connection=True,
        )
    content_type = request.headers.get("Content-Type")
    if (
        request.path.startswith("/v1/")
        and content_type is not None
        and not JSON_MEDIA_TYPE.fullmatch(content_type.split(";")[0].strip())
    ):
        raise Problem(
            415,
            "unsupported-media-type",
            f"must be application/json (or application/*+json); received {shown(content_type)}",
            field="Content-Type",
            close_connection=True,
        )


async def read_body(request: web.Request) -> bytes:
    """The whole body, refused when over the size cap or slower than the read timeout."""
    state = request.app[STATE]
    limit = state.settings.http.max_body_bytes
    too_large = Problem(
        413,
        "body-too-large",
        f"the request body is over the {limit} bytes allowed (http.max_body_bytes)",
        field="body",
        close_connection=True,
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    _check_encoding(request)
    timeout_s = state.limits.body_read_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    except web.RequestPayloadError:
        # The body does not decode as its Content-Encoding says (not gzip, truncated, chunks
        # malformed): the client's fault, and the rest of the stream is unusable.
        raise Problem(
            400,
            "malformed-body",
            "the body could not be read as its Content-Encoding and framing say",
            field="body",
            close_connection=True,
        ) from None
    except TimeoutError:
        raise Problem(
            408,
            "body-read-timeout",
            f"the request body did not arrive within {timeout_s:g} s",
            field="body",
            close_connection=True,
        ) from None


# Credentials


@dataclass(frozen=True)
class Grant:
    """What one accepted credential may do: act for every app (`apps` None) or those named."""

    name: str  # which credential, for rate limits and logs; never the secret
    apps: frozenset[str] | None = None

    def allows(self, app: str) -> bool:
        return self.apps is None or app in self.apps

    @property
    def sole_app(self) -> str | None:
        """The one app a credential scoped to exactly one app acts for by default."""
        if self.apps is not None and len(self.apps) == 1:
            return next(iter(self.apps))
        return None


@dataclass(frozen=True)
class AcceptedSecret:
    scheme: str  # "bearer" or "basic"
    digest: bytes  # SHA-256 of the secret: equal lengths, so a comparison reveals no length
    grant: Grant


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


def _accept(scheme: str, secret: SecretStr, grant: Grant) -> AcceptedSecret:
    return AcceptedSecret(scheme, _digest(secret.get_secret_value().encode()), grant)


def _basic_user(pair: SecretStr) -> str:
    return pair.get_secret_value().partition(":")[0]


class Credentials:
    """Accepted credentials, compared in constant time."""

    def __init__(self, accepted: Iterable[AcceptedSecret] = ()) -> None:
        self.accepted = tuple(accepted)

    @classmethod
    def from_settings(cls, settings: Settings) -> Credentials:
        """Every configured credential; ConfigError when a scoped one names an unknown app."""
        auth = settings.auth
        accepted = [
            _accept("bearer", t, Grant(f"token#{i}")) for i, t in enumerate(auth.api_tokens)
        ]
        accepted += [_accept("basic", p, Grant(f"basic:{_basic_user(p)}")) for p in auth.basic]
        configured = {app.name for app in settings.apps}
        problems: list[str] = []
        for index, scoped in enumerate(auth.scoped):
            unknown = sorted(set(scoped.apps) - configured)
            if unknown:
                problems.append(
                    f"auth.scoped[{index}].apps: unknown app(s) {', '.join(unknown)}"
                    f" (configured: {', '.join(sorted(configured)) or 'none'})"
                )
            apps = frozenset(scoped.apps)
            if scoped.basic is not None:
                grant = Grant(f"basic:{_basic_user(scoped.basic)}", apps)
                accepted.append(_accept("basic", scoped.basic, grant))
            elif scoped.token is not None:
                accepted.append(_accept("bearer", scoped.token, Grant(f"scoped#{index}", apps)))
        if problems:
            raise ConfigError(problems)
        return cls(accepted)

    def grant_for(self, authorization: str | None) -> Grant | None:
        """The grant of the credential an Authorization header presents, or None."""
        presented = _presented_secret(authorization)
        if presented is None:
            return None
        scheme, secret = presented
        digest = _digest(secret)
        granted: Grant | None = None
        # Every accepted secret is compared, so timing does not tell which one (or none) matched.
        for accepted in self.accepted:
            if hmac.compare_digest(digest, accepted.digest) and accepted.scheme == scheme:
                granted = accepted.grant
        return granted


def _presented_secret(authorization: str | None) -> tuple[str, bytes] | None:
    scheme, _, value = (authorization or "").partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        # aiohttp keeps a header's non-UTF-8 bytes as surrogates: compared as the bytes sent,
        # they match no configured (UTF-8) token, so the caller gets the plain 401.
        return scheme, value.strip().encode("utf-8", "surrogateescape")
    if scheme == "basic":
        try:
            return scheme, base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
    return None


# Request rate


@dataclass
class TokenBucket:
    """`rate` requests a second on average, `capacity` at once; time is given, not read."""

    rate: float
    capacity: float
    tokens: float
    updated_s: float

    def take(self, now_s: float) -> float:
        """Spend one request: 0.0 when allowed, else the seconds until one is allowed."""
        elapsed = max(0.0, now_s - self.updated_s)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.updated_s = now_s
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RequestRates:
    """One token bucket per credential (their number is fixed by the configuration)."""

    def __init__(self, requests_per_second: float | None, burst: int | None) -> None:
        self.rate = requests_per_second
        self.capacity = float(burst or math.ceil(requests_per_second or 1))
        self.buckets: dict[str, TokenBucket] = {}

    def wait_s(self, credential: str, now_s: float) -> float:
        """0.0 when `credential` may make a request now, else how long it must wait."""
        if self.rate is None:
            return 0.0
        bucket = self.buckets.get(credential)
        if bucket is None:
            bucket = self.buckets[credential] = TokenBucket(
                self.rate, self.capacity, self.capacity, now_s
            )
        return bucket.take(now_s)


# The application


@dataclass(frozen=True)
class ApiLimits:
    """Limits on requests beside the configured body size and request rate."""

    body_read_timeout_s: float = 10.0  # slow clients: the whole body must arrive by then
    # A connection must deliver a complete request head this soon after opening or after its
    # last response, else it is closed (aiohttp's keep-alive timer; bounds slow headers too).
    idle_timeout_s: float = 15.0
    # After an early answer (413, 408) aiohttp reads and drops the rest of the body this long,
    # so the client sees the answer rather than a reset; a slow client is then cut off.
    linger_s: float = 2.0
    max_request_line_bytes: int = 8190
    max_header_bytes: int = 8190  # one header line
    max_headers: int = 64


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
    limits: ApiLimits = field(default_factory=ApiLimits)
    replicas: ReplicaAcknowledgement | None = None  # redis.ack_replicas: WAIT before a 2xx
    spool: Spool | None = None  # ingest.spool_dir: where pushes wait out a Redis outage
    rates: RequestRates = field(init=False)
    ingest: Ingest = field(init=False)

    def __post_init__(self) -> None:
        auth = self.settings.auth
        self.rates = RequestRates(auth.requests_per_second, auth.burst)
        self.ingest = Ingest(
            self.queue,
            hold_s=self.settings.ingest.hold_seconds,
            spool=self.spool,
            replicas=self.replicas,
        )


STATE = web.AppKey("relay_state", RelayState)
GRANT = web.RequestKey("relay_grant", Grant)


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
    offered_id = request.headers.get("X-Request-Id", "")
    request_id = offered_id if REQUEST_ID.fullmatch(offered_id) else str(uuid.uuid4())
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.monotonic()
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    try:
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
    metrics.HTTP_REQUESTS.labels(route=route, method=method, status=response.status).inc()
    metrics.HTTP_REQUEST_DURATION.labels(route=route).observe(time.monotonic() - started)
    return response


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route but health and metrics needs a credential, and is held to its rate."""
    if request.path in PUBLIC_ROUTES:
        return await handler(request)
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
    return await handler(request)


def _forbidden_app(grant: Grant, app: str | None, field: str) -> Problem:
    allowed = ", ".join(sorted(grant.apps or ()))
    named = "without naming one" if app is None else f"for app {app!r}"
    return Problem(
        403,
        "app-not-allowed",
        f"this credential may not act {named} (allowed: {allowed})",
        field=field,
    )


def resolve_app(settings: Settings, grant: Grant, name: str | None, field: str) -> App:
    """The app a request names (None: the default) as this credential may see it. A scoped
    credential learns no other app's name: an unknown app and another's app get one answer."""
    if grant.apps is not None and name is not None and name not in grant.apps:
        raise _forbidden_app(grant, name, field)
    app = settings.app(name)
    if not grant.allows(app.name):
        raise _forbidden_app(grant, name, field)
    return app


def _require_full_access(request: web.Request) -> None:
    grant = request[GRANT]
    if grant.apps is not None:
        raise Problem(
            403,
            "app-not-allowed",
            "this route covers every app; a credential scoped to some apps may not use it",
            field="Authorization",
        )


def _refuse_while_draining(state: RelayState) -> None:
    if state.draining:
        raise Problem(
            503, "draining", "this relay is shutting down; retry another replica", retry_after_s=1
        )


def _scoped_spec(grant: Grant, spec: PushSpec) -> PushSpec:
    """The spec with its app settled for this credential: one scoped to a single app pushes
    to it without naming it."""
    if spec.app is None and grant.sole_app is not None:
        return dataclasses.replace(spec, app=grant.sole_app)
    return spec


def request_digest(spec: PushSpec, app: App) -> str:
    """What a client's idempotency key is bound to: the request as normalised (app resolved,
    token lower-case), so a retry matches and a different notification under the key does not."""
    normal = dataclasses.replace(spec, app=app.name, device_token=spec.device_token.lower())
    encoded = orjson.dumps(dataclasses.asdict(normal), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(encoded).hexdigest()[:32]


def _bind_key(notification: Notification, spec: PushSpec, app: App) -> Notification:
    """The notification with its client-chosen idempotency key bound to the request."""
    if notification.idempotency_key is None:
        return notification
    return dataclasses.replace(notification, request_digest=request_digest(spec, app))


async def _enqueue(
    request: web.Request, spec: PushSpec, app_field: str, *, client_key: bool
) -> Accepted | None:
    """Queue one push; None when the app does not want this kind (e.g. chat typing notices).
    `client_key`: an idempotency key is the client's own (not derived by the relay), so reusing
    it for a different request is refused."""
    state = request.app[STATE]
    grant = request[GRANT]
    spec = _scoped_spec(grant, spec)
    app = resolve_app(state.settings, grant, spec.app, app_field)
    now_s = int(time.time())
    notification = to_notification(
        spec,
        app,
        now_s=now_s,
        default_ttl_s=state.settings.queue.default_ttl_seconds,
        max_ttl_s=state.settings.queue.max_ttl_seconds,
    )
    if notification is None:
        return None
    if client_key:
        notification = _bind_key(notification, spec, app)
    try:
        accepted = await state.ingest.accept(notification)
        _count_enqueued(app.name, accepted)
    except QueueRefusal as refusal:
        raise Problem.from_refusal(refusal) from None
    if not client_key and not accepted.duplicate:  # a GMS event: its Live Activity step too
        await queue_activity_push(
            state.ingest, app, spec, now_s=now_s, expires_at=notification.expires_at
        )
    return accepted


def _count_enqueued(app: str, accepted: Accepted) -> None:
    if not accepted.duplicate:
        metrics.NOTIFICATIONS_ENQUEUED.labels(app=app).inc()
    if accepted.superseded:
        metrics.NOTIFICATIONS_SUPERSEDED.labels(app=app).inc()


def _count_event(source: str, outcome: str, reason: str = "") -> None:
    metrics.EVENTS_RECEIVED.labels(source=source, outcome=outcome, reason=reason).inc()


async def _ingest(
    source: str, request: web.Request, spec: PushSpec, app_field: str
) -> Accepted | None:
    try:
        accepted = await _enqueue(request, spec, app_field, client_key=source == "api")
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
    _refuse_while_draining(request.app[STATE])
    raw = await read_body(request)
    try:
        # The depth limit and one wording for malformed JSON on every route.
        check_embedded_message(parse_json(raw))
        spec = parse_customhttp(raw)
    except (Problem, InvalidInput):
        _count_event("gms", "rejected", "invalid-input")
        raise
    accepted = None if spec is None else await _ingest("gms", request, spec, "deviceId")
    if accepted is None:
        if spec is None:
            _count_event("gms", "accepted", "nothing-to-push")
        return _json({"id": None, "pushed": False})
    return _json(
        {
            "id": accepted.id,
            "pushed": True,
            "duplicate": accepted.duplicate,
            "spooled": accepted.spooled,
        }
    )


def _status_url(notification_id: str) -> str:
    return f"/v1/notifications/{notification_id}"


async def create_notification(request: web.Request) -> web.Response:
    _refuse_while_draining(request.app[STATE])
    raw = await read_body(request)
    try:
        body = NotificationIn.model_validate(parse_json(raw))
    except Problem:
        _count_event("api", "rejected", "invalid-input")
        raise
    except ValidationError as error:
        _count_event("api", "rejected", "invalid-input")
        raise problem_from_validation(error, NotificationIn) from None
    accepted = await _ingest("api", request, body.to_spec(), "app")
    assert accepted is not None, "only chat typing notices are dropped, and they come from GMS"
    return _json(
        {
            "id": accepted.id,
            "status_url": _status_url(accepted.id),
            "duplicate": accepted.duplicate,
            "spooled": accepted.spooled,
        },
        status=202,
    )


async def create_batch(request: web.Request) -> web.Response:
    """Up to MAX_BATCH notifications; each is validated and queued on its own, answered per item."""
    state = request.app[STATE]
    grant = request[GRANT]
    _refuse_while_draining(state)
    try:
        batch = BatchIn.model_validate(parse_json(await read_body(request)))
    except ValidationError as error:
        raise problem_from_validation(error, BatchIn) from None
    results: list[dict[str, Any]] = []
    valid: list[tuple[int, Any]] = []
    now_s = int(time.time())
    for index, item in enumerate(batch.notifications):
        prefix = f"notifications[{index}]."
        try:
            spec = _scoped_spec(grant, NotificationIn.model_validate(item).to_spec())
            app = resolve_app(state.settings, grant, spec.app, prefix + "app")
            notification = build_notification(
                spec,
                app,
                now_s=now_s,
                default_ttl_s=state.settings.queue.default_ttl_seconds,
                max_ttl_s=state.settings.queue.max_ttl_seconds,
            )
            valid.append((index, _bind_key(notification, spec, app)))
            results.append({})
        except ValidationError as error:
            results.append(_item_problem(problem_from_validation(error, NotificationIn, prefix)))
        except InvalidInput as error:
            results.append(_item_problem(Problem.from_invalid(error, field_prefix=prefix)))
        except Problem as problem:
            results.append(_item_problem(problem))
    # A device with notifications in the spool takes new ones behind them, one by one.
    spooled = [(i, n) for i, n in valid if state.ingest.holds(n)]
    valid = [(i, n) for i, n in valid if not state.ingest.holds(n)]
    outcomes = await state.queue.enqueue_many([n for _, n in valid])
    for index, notification in spooled:
        try:
            valid.append((index, notification))
            outcomes.append(await state.ingest.accept(notification))
        except QueueRefusal as refusal:
            outcomes.append(refusal)
    if state.replicas is not None:
        stored = [
            o.id for o in outcomes if isinstance(o, Accepted) and not (o.duplicate or o.spooled)
        ]
        try:
            await state.replicas.confirm(stored)
        except QueueRefusal as refusal:
            raise Problem.from_refusal(refusal, "notifications") from None
    for (index, notification), outcome in zip(valid, outcomes, strict=True):
        if isinstance(outcome, QueueRefusal):
            field_name = f"notifications[{index}].device_token"
            results[index] = _item_problem(Problem.from_refusal(outcome, field_name))
        else:
            _count_enqueued(notification.app, outcome)
            results[index] = {
                "status": 202,
                "id": outcome.id,
                "status_url": _status_url(outcome.id),
                "duplicate": outcome.duplicate,
                "spooled": outcome.spooled,
            }
    for result in results:
        if result["status"] == 202:
            _count_event("batch", "duplicate" if result["duplicate"] else "accepted")
        else:
            _count_event("batch", "rejected", result["problem"]["type"].rsplit(":", 1)[-1])
    accepted = sum(1 for r in results if r["status"] == 202)
    return _json({"accepted": accepted, "rejected": len(results) - accepted, "results": results})


def _item_problem(problem: Problem) -> dict[str, Any]:
    body: dict[str, Any] = {"status": problem.status, "problem": problem.body()}
    if problem.retry_after_s is not None:
        body["retry_after_s"] = problem.retry_after_s
    return body


async def get_notification(request: web.Request) -> web.Response:
    notification_id = request.match_info["id"]
    state = request.app[STATE]
    status = state.ingest.spooled_status(notification_id)
    if status is None and len(notification_id) <= MAX_NOTIFICATION_ID_CHARS:
        status = await state.queue.get(notification_id)
    # Another app's notification is answered exactly as a missing one: a scoped credential
    # must not learn that it exists.
    if status is None or not request[GRANT].allows(status.app):
        raise Problem(
            404, "not-found", "no such notification (unknown, or past retention)", field="id"
        )
    return _json({**asdict(status), "waiting_for_route": await _route_wait(request, status)})


async def _route_wait(request: web.Request, status: NotificationStatus) -> dict[str, Any] | None:
    """Why a waiting notification is not being sent: its route's circuit is open (since when,
    APNs' last answer on it); None when it is not waiting or its route sends."""
    state = request.app[STATE]
    if status.state not in (DeliveryState.QUEUED, DeliveryState.RETRYING):
        return None
    try:
        route = route_for(state.settings.app(status.app))
    except InvalidInput:
        return None  # an app no longer configured: nothing sends it
    (stored,) = (await RouteStore(state.queue).read([route])).values()
    if stored.circuit.sending:
        return None
    return {
        "state": stored.circuit.state.value,
        "since_ms": stored.circuit.since_ms,
        "last_answer": stored.circuit.last_answer,
    }


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
    return _json(asdict(device))


async def delete_device(request: web.Request) -> web.Response:
    app, token = _device_key(request)
    purged = await request.app[STATE].queue.clear_device(app, token)
    log.info("device_cleared", app=app, token=mask_token(token), purged=purged)
    return _json({"purged": purged, "dead_mark_cleared": True})


async def queue_totals(request: web.Request) -> web.Response:
    _require_full_access(request)
    return _json(asdict(await request.app[STATE].queue.totals()))


async def healthz(_: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    reasons: list[str] = []
    degraded: list[str] = []
    if state.draining:
        reasons.append("draining")
    try:
        await state.queue.ping()
    except REDIS_ERRORS as error:
        # With a spool this process still answers every push with a 200: taking it out of
        # service would turn pushes away from the one thing still accepting them.
        spool = state.spool
        if spool is not None and not spool.full():
            degraded.append(f"redis unreachable, spooling: {error}")
        else:
            reasons.append(f"redis unreachable: {error}")
    paused = state.paused_apps()
    if state.settings.apps and len(paused) >= len(state.settings.apps):
        reasons.append("every app is paused: " + ", ".join(f"{a} ({r})" for a, r in paused.items()))
    reasons.extend(r for check in state.extra_ready_checks if (r := check()))
    body = {
        "ready": not reasons,
        "reasons": reasons,
        "degraded": degraded,
        "paused_apps": dict(paused),
    }
    return _json(body, status=200 if not reasons else 503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.spool is not None:
        metrics.SPOOL_OLDEST_AGE.set(state.spool.oldest_age_s())
    if time.monotonic() - state.gauges_read_at >= QUEUE_GAUGES_MAX_AGE_S:
        try:
            totals = await state.queue.totals()
        except REDIS_ERRORS as error:
            REDIS_UNAVAILABLE.occurred("totals", error)
        else:
            metrics.QUEUE_PENDING.set(totals.pending)
            metrics.QUEUE_DEVICES_PENDING.set(totals.devices_pending)
            metrics.QUEUE_OLDEST_AGE.set(totals.oldest_pending_age_s or 0.0)
            state.gauges_read_at = time.monotonic()
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(_: web.Request) -> web.Response:
    return _json(openapi_document())


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


def create_app(state: RelayState, *, ingest: bool = True) -> web.Application:
    """The relay's HTTP application; a worker-only process serves just health and metrics."""
    app = web.Application(
        middlewares=[request_context, authenticate],
        client_max_size=state.settings.http.max_body_bytes,
    )
    app[STATE] = state
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/healthz", healthz),
        ("GET", "/readyz", readyz),
        ("GET", "/metrics", metrics_endpoint),
    ]
    if ingest:
        routes += [
            ("POST", "/gms/push", gms_push),
            ("POST", "/v1/notifications", create_notification),
            ("POST", "/v1/notifications:batch", create_batch),
            ("GET", "/v1/notifications/{id}", get_notification),
            ("GET", "/v1/devices/{app}/{token}", get_device),
            ("DELETE", "/v1/devices/{app}/{token}", delete_device),
            ("GET", "/v1/queue", queue_totals),
            ("GET", "/openapi.json", openapi),
        ]
        # Imported here: the Live Activity routes build on this module's auth and problems.
        from relay.activity_routes import ROUTES as ACTIVITY_ROUTES
        from relay.check_route import ROUTES as CHECK_ROUTES

        routes += ACTIVITY_ROUTES + CHECK_ROUTES
    for method, path, handler in routes:
        if method == "GET":  # with HEAD, as aiohttp's add_get does
            app.router.add_get(path, handler, expect_handler=expect_continue)
        else:
            app.router.add_route(method, path, handler, expect_handler=expect_continue)
    return app
