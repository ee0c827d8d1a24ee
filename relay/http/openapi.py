"""The OpenAPI 3.1 document of every route; request schemas come from the request models."""

from __future__ import annotations

from functools import cache
from typing import Any

from aiohttp import web

from relay import __version__
from relay.http.activities import openapi_paths as activity_openapi_paths
from relay.http.body import MAX_JSON_DEPTH
from relay.http.problems import PROBLEM_JSON
from relay.http.requests import (
    APP_NAME,
    DEVICE_TOKEN,
    MAX_BATCH,
    MAX_NOTIFICATION_ID_CHARS,
    BatchIn,
    NotificationIn,
)
from relay.http.responses import json_response
from relay.http.state import Route
from relay.payload import MAX_TOKEN_HEX, MIN_TOKEN_HEX

_PROBLEM = {
    "type": "object",
    "description": "RFC 9457 problem details; `field` names the input concerned",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "field": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "bad input: each rule broken (at most 10), the first as"
            " `field` and `detail`; `received` is bounded and never a device token in full",
            "items": {
                "type": "object",
                "required": ["field", "rule"],
                "properties": {
                    "field": {"type": "string"},
                    "rule": {"type": "string"},
                    "received": {"type": "string"},
                },
            },
        },
    },
}
_ACCEPTED = {
    "type": "object",
    "required": ["id", "status_url", "duplicate"],
    "properties": {
        "id": {"type": "string"},
        "status_url": {"type": "string"},
        "duplicate": {"type": "boolean"},
        "spooled": {
            "type": "boolean",
            "description": "held in this api's local spool until Redis answers (relay.spool)",
        },
    },
}
_BATCH_RESULT = {
    "type": "object",
    "description": "202 with the Accepted fields, or the item's problem (status 400-503)",
    "required": ["status"],
    "properties": {
        "status": {"type": "integer"},
        "id": {"type": "string"},
        "status_url": {"type": "string"},
        "duplicate": {"type": "boolean"},
        "spooled": {
            "type": "boolean",
            "description": "held in this api's local spool until Redis answers (relay.spool)",
        },
        "problem": {"$ref": "#/components/schemas/Problem"},
        "retry_after_s": {"type": "integer"},
    },
}
_NOTIFICATION_STATUS = {
    "type": "object",
    "required": ["id", "app", "device_token", "state", "attempts", "expires_at"],
    "properties": {
        "id": {"type": "string"},
        "app": {"type": "string"},
        "device_token": {"type": "string"},
        "state": {
            "enum": [
                "spooled",
                "queued",
                "sending",
                "retrying",
                "delivered",
                "failed",
                "expired",
                "superseded",
            ]
        },
        "attempts": {"type": "integer"},
        "expires_at": {"type": "integer"},
        "last_status": {"type": ["integer", "null"]},
        "last_reason": {"type": ["string", "null"]},
        "waiting_for_route": {
            "description": "set while the notification waits because its route's circuit is"
            " open (APNs failing for the app): since when (ms) and APNs' last answer there",
            "type": ["object", "null"],
            "properties": {
                "state": {"enum": ["open", "half-open"]},
                "since_ms": {"type": "integer"},
                "last_answer": {"type": "string"},
            },
        },
        "apns_id": {"type": ["string", "null"]},
        "apns_unique_id": {
            "type": ["string", "null"],
            "description": "sandbox only: APNs' key of the push in its Delivery Log",
        },
    },
}
_DEVICE = {
    "type": "object",
    "required": ["pending", "in_flight", "dead"],
    "properties": {
        "pending": {"type": "integer"},
        "in_flight": {"type": "boolean"},
        "dead": {"type": ["object", "null"]},
    },
}
_GMS_PUSH = {
    "type": "object",
    "required": ["deviceId", "message"],
    "properties": {
        "deviceId": {
            "type": "string",
            "pattern": r"^(?:[a-z0-9][a-z0-9_-]*:)?(?:[0-9a-fA-F]{2})+$",
            "description": 'the device token in hex, or "<app>:<token>"',
        },
        "message": {
            "description": "a callback event object, a JSON string of one, or text",
            "anyOf": [{"type": "object"}, {"type": "string", "minLength": 1}],
        },
    },
}
_GMS_PUSHED = {
    "type": "object",
    "required": ["id", "pushed"],
    "properties": {
        "id": {"type": ["string", "null"]},
        "pushed": {"type": "boolean"},
        "duplicate": {"type": "boolean"},
        "spooled": {
            "type": "boolean",
            "description": "held in this api's local spool until Redis answers (relay.spool)",
        },
    },
}
_ANY_OBJECT: dict[str, Any] = {"type": "object"}
# What an ingest route can refuse: bad input, another app's credential, a slow or oversized
# body, a dead token, an unsupported Content-Encoding (or, on /v1/, Content-Type), an Expect
# other than 100-continue, expired on arrival, a full device queue or rate, a pending cap or drain.
_INGEST_ERRORS = (400, 403, 408, 410, 413, 415, 417, 422, 429, 503)
_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"basic": []}]
_DESCRIPTION = (
    "Relays GMS push events to APNs through a durable per-device queue. Every route but"
    " /healthz, /readyz and /metrics needs `Authorization: Bearer <token>` or Basic. Errors are"
    " application/problem+json naming the `field` and the rule. Limits: the body size"
    " (http.max_body_bytes, 413), JSON nesting (at most"
    f" {MAX_JSON_DEPTH} levels, 400), {MAX_BATCH} notifications a batch, a request rate per"
    " credential (auth.requests_per_second, 429 with Retry-After), a slow body (408)."
)


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _problems(statuses: tuple[int, ...]) -> dict[str, Any]:
    return {
        str(status): {
            "description": "problem",
            "content": {
                PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}},
            },
        }
        for status in statuses
    }


def _operation(
    operation_id: str,
    summary: str,
    status: int,
    schema: dict[str, Any] | None,
    *,
    errors: tuple[int, ...] = (),
    body: dict[str, Any] | None = None,
    parameters: list[dict[str, Any]] | None = None,
    links: dict[str, Any] | None = None,
    public: bool = False,
) -> dict[str, Any]:
    """One operation; a secured one can also answer 401 (credential) and 429 (its rate)."""
    success: dict[str, Any] = {"description": summary}
    if schema is not None:
        success["content"] = _json_content(schema)
    if links:
        success["links"] = links
    operation: dict[str, Any] = {"operationId": operation_id, "summary": summary}
    if not public:
        operation["security"] = _SECURITY
        errors = tuple(sorted({*errors, 401, 429}))
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json_content(body)}
    operation["responses"] = {str(status): success, **_problems(errors)}
    return operation


def _path_parameter(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


_VERDICT: dict[str, Any] = {
    "type": "object",
    "required": ["app", "ok", "verdict", "detail", "fix", "endpoint"],
    "properties": {
        "app": {"type": "string"},
        "ok": {"type": "boolean"},
        "verdict": {"type": "string", "description": "ready, invalid-provider-token, ..."},
        "detail": {"type": "string"},
        "fix": {"type": "string", "description": "what to do; empty when nothing is"},
        "endpoint": {"type": "string", "description": "the APNs host:port probed"},
        "status": {"type": ["integer", "null"], "description": "APNs' HTTP status (0: none)"},
        "reason": {"type": ["string", "null"], "description": "APNs' reason"},
        "expires_at": {"type": ["string", "null"], "description": "a certificate's not_after"},
    },
}


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of every route; request schemas come from the models above."""
    ref = "#/components/schemas/{model}"
    schemas: dict[str, Any] = {"Problem": _PROBLEM, "Accepted": _ACCEPTED}
    for model in (NotificationIn, BatchIn):
        schema = model.model_json_schema(ref_template=ref)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    device_parameters = [
        _path_parameter("app", {"type": "string", "pattern": APP_NAME, "maxLength": 64}),
        _path_parameter(
            "token",
            {
                "type": "string",
                "pattern": DEVICE_TOKEN,
                "minLength": MIN_TOKEN_HEX,
                "maxLength": MAX_TOKEN_HEX,
            },
        ),
    ]
    id_parameter = _path_parameter(
        "id", {"type": "string", "minLength": 1, "maxLength": MAX_NOTIFICATION_ID_CHARS}
    )
    notification = {"$ref": ref.format(model="NotificationIn")}
    batch_answer = {
        "type": "object",
        "required": ["accepted", "rejected", "results"],
        "properties": {
            "accepted": {"type": "integer"},
            "rejected": {"type": "integer"},
            "results": {"type": "array", "items": _BATCH_RESULT},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "gms-apns-relay", "version": __version__, "description": _DESCRIPTION},
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            },
        },
        "paths": {
            "/gms/push": {
                "post": _operation(
                    "gmsPush",
                    "GMS customhttp push: {deviceId, message}; 200 once queued",
                    200,
                    _GMS_PUSHED,
                    body=_GMS_PUSH,
                    errors=_INGEST_ERRORS,
                )
            },
            "/v1/notifications": {
                "post": _operation(
                    "createNotification",
                    "Queue one notification",
                    202,
                    {"$ref": ref.format(model="Accepted")},
                    body=notification,
                    # 409: its idempotency key came with a different request before.
                    errors=(*_INGEST_ERRORS, 409),
                    links={
                        "GetNotification": {
                            "operationId": "getNotification",
                            "parameters": {"id": "$response.body#/id"},
                        }
                    },
                )
            },
            "/v1/notifications:batch": {
                "post": _operation(
                    "createBatch",
                    f"Queue up to {MAX_BATCH} notifications, answered per item in request order",
                    200,
                    batch_answer,
                    body={"$ref": ref.format(model="BatchIn")},
                    errors=(400, 408, 413, 415, 417, 503),
                )
            },
            "/v1/notifications/{id}": {
                "get": _operation(
                    "getNotification",
                    "One notification's delivery state (404 also for another app's)",
                    200,
                    _NOTIFICATION_STATUS,
                    parameters=[id_parameter],
                    errors=(404,),
                )
            },
            "/v1/devices/{app}/{token}": {
                "get": _operation(
                    "getDevice",
                    "A device's pending count and dead-token record",
                    200,
                    _DEVICE,
                    parameters=device_parameters,
                    errors=(400, 403, 404),
                ),
                "delete": _operation(
                    "deleteDevice",
                    "Clear the dead-token mark and purge the device's queue",
                    200,
                    {
                        "type": "object",
                        "required": ["purged", "dead_mark_cleared"],
                        "properties": {
                            "purged": {"type": "integer"},
                            "dead_mark_cleared": {"type": "boolean"},
                        },
                    },
                    parameters=device_parameters,
                    errors=(400, 403, 404),
                ),
            },
            "/v1/apps/{app}/check": {
                "get": _operation(
                    "checkApp",
                    "`apns-relay check` for one app: its credential files, then one probe push to"
                    " a random token (APNs' BadDeviceToken means ready); 200 with the verdict",
                    200,
                    _VERDICT,
                    parameters=device_parameters[:1],
                    errors=(403, 404),
                )
            },
            "/v1/queue": {
                "get": _operation(
                    "getQueueTotals",
                    "Queue totals: pending, devices, oldest age, lifetime counters (every app)",
                    200,
                    _ANY_OBJECT,
                    errors=(403,),
                )
            },
            "/healthz": {
                "get": _operation(
                    "healthz", "The process is serving", 200, _ANY_OBJECT, public=True
                )
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Redis reachable, not draining, an app not paused",
                    "responses": {
                        "200": {"description": "ready", "content": _json_content(_ANY_OBJECT)},
                        "503": {"description": "not ready", "content": _json_content(_ANY_OBJECT)},
                    },
                }
            },
            "/metrics": {
                "get": _operation(
                    "metrics", "Prometheus metrics (text exposition format)", 200, None, public=True
                )
            },
            "/openapi.json": {"get": _operation("openapi", "This document", 200, _ANY_OBJECT)},
            **activity_openapi_paths(_operation, _path_parameter, schemas, ref),
        },
    }


async def openapi(_: web.Request) -> web.Response:
    return json_response(openapi_document())


ROUTES: list[Route] = [("GET", "/openapi.json", openapi)]
