"""What each route answers: a pydantic model of every JSON response, problem+json included.

The OpenAPI document's response schemas are generated from these (relay.http.openapi), and
tests/http/test_api_responses.py checks real answers of every route against the served document.
A field with a default is sent only when the handler sets it (`json_response` leaves unset
fields out), so the document marks it optional.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Literal, get_type_hints

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, create_model

from relay.store.records import NotificationStatus

SPOOLED = "held in this api's local spool until Redis answers, then queued in order"


class Answer(BaseModel):
    """A response body: exactly these fields (the document says additionalProperties false)."""

    model_config = ConfigDict(extra="forbid")


def json_response(answer: Answer, status: int = 200) -> web.Response:
    body = orjson.dumps(answer.model_dump(mode="json", by_alias=True, exclude_unset=True))
    return web.Response(body=body, status=status, content_type="application/json")


# Problems (RFC 9457)


class ProblemErrorOut(Answer):
    field: str
    rule: str
    received: str | None = Field(
        None, description="what was received, bounded; never a device token in full"
    )


class ProblemOut(Answer):
    """RFC 9457 problem details; `field` names the input concerned."""

    type: str = Field(description="urn:gms-apns-relay:problem:<code>")
    title: str
    status: int
    detail: str
    field: str | None = None
    errors: list[ProblemErrorOut] | None = Field(
        default=None,
        description="bad input: each rule broken (at most 10), the first as `field` and `detail`",
    )
    notification_id: str | None = Field(
        None, description="idempotency key reused: the notification the key was first used for"
    )
    status_url: str | None = Field(
        default=None, description="idempotency key reused: its status URL"
    )


# Pushes taken in


class AcceptedOut(Answer):
    id: str
    status_url: str
    duplicate: bool = Field(description="the idempotency key was seen before: its id is returned")
    spooled: bool = Field(description=SPOOLED)


class GmsPushOut(Answer):
    """`pushed` false (and no other field) when the event asks for no push."""

    id: str | None
    pushed: bool
    duplicate: bool = False
    spooled: bool = Field(default=False, description=SPOOLED)


class BatchItemAcceptedOut(Answer):
    status: Literal[202]
    id: str
    status_url: str
    duplicate: bool
    spooled: bool = Field(description=SPOOLED)


class BatchItemRefusedOut(Answer):
    status: int = Field(ge=400, le=599)
    problem: ProblemOut
    retry_after_s: int | None = None


class BatchOut(Answer):
    accepted: int
    rejected: int
    results: list[BatchItemAcceptedOut | BatchItemRefusedOut] = Field(
        description="one per notification, in request order"
    )


# Delivery state


class RouteWaitOut(Answer):
    """Set while the notification waits because its route's circuit is open (APNs failing for
    the app): since when (ms) and APNs' last answer there."""

    state: Literal["open", "half-open"]
    since_ms: int
    last_answer: str


# A notification's status as the API answers it: NotificationStatus's fields (the one list, in its
# order), each described here where a bare name would not say enough, and why it is not being
# sent if its route is failing.
_STATUS_DESCRIPTIONS = {
    "device_token": "null once final: a final record keeps no device token",
    "claims": "times handed to a worker; above attempts when one stopped mid-send",
    "expires_at": "UNIX seconds",
    "apns_unique_id": "sandbox only: APNs' key of the push in its Delivery Log",
    "received_at_ms": "when the phone's delivery receipt arrived (apps[].receipts); null: none yet",
    "device_latency_ms": "received_at_ms - accepted_at_ms: acceptance to shown on the phone",
}
_STATUS_HINTS = get_type_hints(NotificationStatus)
_STATUS_FIELDS: dict[str, Any] = {
    name: (_STATUS_HINTS[name], Field(description=_STATUS_DESCRIPTIONS.get(name)))
    for name in (field.name for field in fields(NotificationStatus))
}
NotificationStatusOut = create_model(
    "NotificationStatusOut",
    __base__=Answer,
    **_STATUS_FIELDS,
    waiting_for_route=(RouteWaitOut | None, ...),
)


class DeadTokenOut(Answer):
    reason: str
    status: int | None
    invalid_since_ms: int | None = Field(description="APNs' timestamp: when the token went invalid")
    marked_at_ms: int


class DeviceOut(Answer):
    pending: int = Field(description="non-final notifications, the one in flight included")
    in_flight: bool
    dead: DeadTokenOut | None


class DeviceClearedOut(Answer):
    purged: int
    dead_mark_cleared: bool


class QueueTotalsOut(Answer):
    pending: int = Field(description="non-final notifications")
    devices_pending: int = Field(description="devices with at least one")
    leased: int = Field(description="devices whose head is in flight")
    oldest_pending_age_s: float | None
    enqueued: int
    delivered: int
    failed: int
    expired: int
    superseded: int
    retried: int
    dead_marked: int


# Live Activities


class ActivityRegisteredOut(Answer):
    service_id: str
    expires_in_s: int


class PushToStartRegisteredOut(Answer):
    registered: bool


class RemovedOut(Answer):
    removed: bool


# Operations


class VerdictOut(Answer):
    app: str
    ok: bool
    verdict: str = Field(description="ready, invalid-provider-token, ...")
    detail: str
    fix: str = Field(description="what to do; empty when nothing is")
    endpoint: str = Field(description="the APNs host:port probed")
    status: int | None = Field(description="APNs' HTTP status (0: none)")
    reason: str | None = Field(description="APNs' reason")
    expires_at: str | None = Field(description="a certificate's not_after")
    cached: bool = Field(
        description="true: the verdict of a probe made age_s ago, answered from memory"
    )
    age_s: float = Field(description="seconds since the probe behind this verdict")


class HealthOut(Answer):
    status: Literal["ok"]


class ReadinessOut(Answer):
    ready: bool
    reasons: list[str] = Field(description="why not ready; empty when ready")
    degraded: list[str] = Field(description="serving, but short of something (Redis, spooling)")
    paused_apps: dict[str, str] = Field(description="app → why its deliveries are paused")


class OpenApiOut(BaseModel):
    """The OpenAPI 3.1 document itself."""

    model_config = ConfigDict(extra="allow")
    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]
