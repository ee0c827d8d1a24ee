"""The JSON API's contract: request models, and the OpenAPI 3.1 document generated from them."""

from __future__ import annotations

from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from relay import __version__
from relay.model import InvalidInput
from relay.payload import AlertFields, PushSpec

MAX_BATCH = 1000
HEX = r"^[0-9a-fA-F]+$"


class AlertIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    title: str | None = Field(None, max_length=1024)
    subtitle: str | None = Field(None, max_length=1024)
    body: str | None = Field(None, max_length=4096)
    loc_key: str | None = Field(None, alias="loc-key", max_length=256)
    loc_args: list[str] | None = Field(None, alias="loc-args", max_length=32)
    title_loc_key: str | None = Field(None, alias="title-loc-key", max_length=256)
    title_loc_args: list[str] | None = Field(None, alias="title-loc-args", max_length=32)


class NotificationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device_token: str = Field(pattern=HEX, min_length=8, max_length=200)
    app: str | None = Field(None, max_length=64)
    service_id: str | None = Field(None, min_length=1, max_length=128)
    action: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", max_length=128)
    alert: str | AlertIn | None = None
    sound: str | None = Field(None, max_length=256)
    badge: int | None = Field(None, ge=0, le=1_000_000)
    ttl: int | None = Field(None, gt=0)
    expires_at: int | None = Field(None, gt=0)
    priority: Literal[1, 5, 10] | None = None
    push_type: str | None = None
    collapse_id: str | None = Field(None, max_length=64)
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    extra: dict[str, Any] = Field(default_factory=dict)

    def to_spec(self) -> PushSpec:
        if self.ttl is not None and self.expires_at is not None:
            raise InvalidInput("ttl", "give ttl or expires_at, not both")
        alert: str | AlertFields | None
        if isinstance(self.alert, AlertIn):
            alert = AlertFields(**self.alert.model_dump())
        else:
            alert = self.alert
        return PushSpec(
            device_token=self.device_token.lower(),
            app=self.app,
            service_id=self.service_id,
            action=self.action,
            alert=alert,
            sound=self.sound,
            badge=self.badge,
            ttl_s=self.ttl,
            expires_at=self.expires_at,
            priority=self.priority,
            push_type=self.push_type,
            collapse_id=self.collapse_id,
            idempotency_key=self.idempotency_key,
            message_fields={},
            extra=self.extra,
            thread_id=None,
        )


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    notifications: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_BATCH)


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
    },
}
_ACCEPTED = {
    "type": "object",
    "required": ["id", "status_url", "duplicate"],
    "properties": {
        "id": {"type": "string"},
        "status_url": {"type": "string"},
        "duplicate": {"type": "boolean"},
    },
}
_STATES = ["queued", "sending", "retrying", "delivered", "failed", "expired", "superseded"]


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _problems(*statuses: int) -> dict[str, Any]:
    return {
        str(status): {
            "description": "problem",
            "content": {
                "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
            },
        }
        for status in statuses
    }


def _ok(description: str, schema: dict[str, Any], status: int = 200) -> dict[str, Any]:
    return {str(status): {"description": description, "content": _json_content(schema)}}


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of every route; request schemas come from the models above."""
    ref = "#/components/schemas/{model}"
    schemas: dict[str, Any] = {"Problem": _PROBLEM, "Accepted": _ACCEPTED}
    for model in (NotificationIn, BatchIn):
        schema = model.model_json_schema(ref_template=ref)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    secured: list[dict[str, list[str]]] = [{"bearer": []}, {"basic": []}]
    device_params = [
        {"name": "app", "in": "path", "required": True, "schema": {"type": "string"}},
        {
            "name": "token",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": HEX, "maxLength": 200},
        },
    ]
    ingest_errors = _problems(400, 401, 410, 413, 429, 503)
    return {
        "openapi": "3.1.0",
        "info": {"title": "gms-apns-relay", "version": __version__},
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            },
        },
        "paths": {
            "/gms/push": {
                "post": {
                    "summary": "GMS customhttp push: {deviceId, message}",
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        "content": _json_content(
                            {
                                "type": "object",
                                "required": ["deviceId", "message"],
                                "properties": {
                                    "deviceId": {"type": "string"},
                                    "message": {},
                                },
                            }
                        ),
                    },
                    "responses": {
                        **_ok(
                            "queued (or nothing to push)",
                            {
                                "type": "object",
                                "properties": {
                                    "id": {"type": ["string", "null"]},
                                    "pushed": {"type": "boolean"},
                                    "duplicate": {"type": "boolean"},
                                },
                            },
                        ),
                        **ingest_errors,
                    },
                }
            },
            "/v1/notifications": {
                "post": {
                    "summary": "Queue one notification",
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        "content": _json_content({"$ref": ref.format(model="NotificationIn")}),
                    },
                    "responses": {
                        **_ok("queued", {"$ref": ref.format(model="Accepted")}, 202),
                        **ingest_errors,
                    },
                }
            },
            "/v1/notifications:batch": {
                "post": {
                    "summary": f"Queue up to {MAX_BATCH} notifications, answered per item",
                    "security": secured,
                    "requestBody": {
                        "required": True,
                        "content": _json_content({"$ref": ref.format(model="BatchIn")}),
                    },
                    "responses": {
                        **_ok(
                            "per-item results, in request order",
                            {
                                "type": "object",
                                "required": ["accepted", "rejected", "results"],
                                "properties": {
                                    "accepted": {"type": "integer"},
                                    "rejected": {"type": "integer"},
                                    "results": {"type": "array", "items": {"type": "object"}},
                                },
                            },
                        ),
                        **_problems(400, 401, 413, 503),
                    },
                }
            },
            "/v1/notifications/{id}": {
                "get": {
                    "summary": "One notification's delivery state",
                    "security": secured,
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
                    ],
                    "responses": {
                        **_ok(
                            "the notification",
                            {
                                "type": "object",
                                "required": ["id", "state", "attempts"],
                                "properties": {
                                    "id": {"type": "string"},
                                    "state": {"enum": _STATES},
                                    "attempts": {"type": "integer"},
                                },
                            },
                        ),
                        **_problems(401, 404),
                    },
                }
            },
            "/v1/devices/{app}/{token}": {
                "get": {
                    "summary": "A device's pending count and dead-token record",
                    "security": secured,
                    "parameters": device_params,
                    "responses": {**_ok("the device", {"type": "object"}), **_problems(400, 401)},
                },
                "delete": {
                    "summary": "Clear the dead-token mark and purge the device's queue",
                    "security": secured,
                    "parameters": device_params,
                    "responses": {**_ok("cleared", {"type": "object"}), **_problems(400, 401)},
                },
            },
            "/v1/queue": {
                "get": {
                    "summary": "Queue totals: pending, devices, oldest age, lifetime counters",
                    "security": secured,
                    "responses": {**_ok("totals", {"type": "object"}), **_problems(401)},
                }
            },
            "/healthz": {
                "get": {
                    "summary": "The process is serving",
                    "responses": _ok("up", {"type": "object"}),
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Redis reachable, not draining, an app not paused",
                    "responses": {
                        **_ok("ready", {"type": "object"}),
                        "503": {
                            "description": "not ready",
                            "content": _json_content({"type": "object"}),
                        },
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text exposition format"}},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "security": secured,
                    "responses": {**_ok("OpenAPI 3.1", {"type": "object"}), **_problems(401)},
                }
            },
        },
    }
