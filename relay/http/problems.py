"""Problem answers (RFC 9457 application/problem+json), and the status each typed refusal gets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from relay.core.model import ExpiredOnArrival, InvalidInput, PayloadTooLarge
from relay.http.refusals import invalid_inputs
from relay.store.connection import ReplicasBehind
from relay.store.refusals import (
    DeadToken,
    DeviceQueueFull,
    IdempotencyKeyReused,
    PendingCapReached,
    QueueRefusal,
    StoredKeyUnreadable,
)
from relay.store.spool import SpoolFull, SpoolUnavailable

PROBLEM_JSON = "application/problem+json"

# What each kind of refusal from the store means to an HTTP client: the store's refusals are
# typed and carry no status (tests/deploy/test_boundary.py checks every kind has one here).
REFUSAL_STATUSES: dict[str, int] = {
    IdempotencyKeyReused.reason: 409,
    DeadToken.reason: 410,
    DeviceQueueFull.reason: 429,
    PendingCapReached.reason: 503,
    ReplicasBehind.reason: 503,
    SpoolFull.reason: 503,
    SpoolUnavailable.reason: 503,
    StoredKeyUnreadable.reason: 500,
}
# Bad input is a 400 invalid-input; a kind of it that is well-formed but cannot be served has a
# status and problem type of its own (tests/deploy/test_boundary.py checks every kind has one here).
INVALID_INPUT_ANSWERS: dict[type[InvalidInput], tuple[int, str]] = {
    InvalidInput: (400, "invalid-input"),
    PayloadTooLarge: (413, "payload-too-large"),
    ExpiredOnArrival: (422, "expired-on-arrival"),
}


def printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def status_url(notification_id: str) -> str:
    return f"/v1/notifications/{notification_id}"


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
        self.detail = printable(detail)
        self.field = None if field is None else printable(field)
        self.retry_after_s = retry_after_s
        self.headers = dict(headers or {})
        # An unread body is left on the wire: closing beats aiohttp lingering to drain it.
        self.close_connection = close_connection

    @classmethod
    def from_invalid(cls, *errors: InvalidInput, field_prefix: str = "") -> Problem:
        """Bad input, from the relay's own checks or pydantic's (relay.http.refusals): the first
        error is `field` and `detail`, and `errors` lists each as {field, rule, received}."""
        first = errors[0]
        status, code = next(
            INVALID_INPUT_ANSWERS[kind]
            for kind in type(first).__mro__
            if kind in INVALID_INPUT_ANSWERS
        )
        entries = []
        for error in errors:
            entry = {"field": printable(field_prefix + error.field), "rule": error.rule}
            if error.received is not None:
                entry["received"] = printable(error.received)
            entries.append(entry)
        return cls(
            status,
            code,
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
                "status_url": status_url(refusal.notification_id),
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
