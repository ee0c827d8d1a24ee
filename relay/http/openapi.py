"""The OpenAPI 3.1 document of every route, generated from the routes' request and response
models (relay.http.requests, relay.http.responses) and their table (relay.http.routing.Route)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from relay import __version__
from relay.http.body import MAX_JSON_DEPTH
from relay.http.problems import PROBLEM_JSON
from relay.http.requests import AppName, DeviceToken, NotificationId, ServiceId
from relay.http.responses import ProblemOut
from relay.http.routing import Route
from relay.store.queue import MAX_BATCH

REF = "#/components/schemas/{model}"
# The schema of each path parameter, by its name in a route's path.
PATH_PARAMETERS: dict[str, Any] = {
    "app": AppName,
    "token": DeviceToken,
    "id": NotificationId,
    "service_id": ServiceId,
    "device_token": DeviceToken,  # a query parameter (DELETE of an activity)
}
_SECURITY: list[dict[str, list[str]]] = [{"bearer": []}, {"basic": []}]
_DESCRIPTION = (
    "Relays GMS push events to APNs through a durable per-device queue. Every route but"
    " /healthz, /readyz and /metrics needs `Authorization: Bearer <token>` or Basic. Errors are"
    " application/problem+json naming the `field` and the rule. Limits: the body size"
    " (http.max_body_bytes, 413), JSON nesting (at most"
    f" {MAX_JSON_DEPTH} levels, 400), {MAX_BATCH} notifications a batch, a request rate per"
    " credential (auth.requests_per_second, 429 with Retry-After), a slow body (408)."
)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _schemas(routes: Iterable[Route]) -> dict[str, Any]:
    """Every model's JSON schema: request bodies as validated, answers as serialised."""
    requests = {route.body for route in routes if route.body is not None}
    answers = {model for route in routes for model in route.answers.values() if model is not None}
    answers.add(ProblemOut)
    modes: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        *((model, "validation") for model in sorted(requests, key=lambda m: m.__name__)),
        *((model, "serialization") for model in sorted(answers, key=lambda m: m.__name__)),
    ]
    _, document = models_json_schema(modes, ref_template=REF)
    schemas: dict[str, Any] = document["$defs"]
    return schemas


def _parameters(path: str, query: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    placed = [("path", name) for name in re.findall(r"\{(\w+)\}", path)]
    placed += [("query", name) for name in query]
    return [
        {
            "name": name,
            "in": where,
            "required": True,
            "schema": TypeAdapter(PATH_PARAMETERS[name]).json_schema(),
        }
        for where, name in placed
    ]


def _answer(model: type[BaseModel] | None, description: str) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description}
    if model is not None:
        answer["content"] = {"application/json": {"schema": _ref(model)}}
    return answer


def _operation(route: Route) -> dict[str, Any]:
    """One operation; a secured one can also answer 401 (credential) and 429 (its rate)."""
    operation: dict[str, Any] = {"operationId": route.operation_id, "summary": route.summary}
    errors = set(route.errors)
    if not route.public:
        operation["security"] = _SECURITY
        errors |= {401, 429}
    parameters = _parameters(route.path, route.query)
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(route.body)}},
        }
    responses = {}
    for status, model in route.answers.items():
        responses[str(status)] = _answer(model, route.summary)
        if route.links and status < 300:
            responses[str(status)]["links"] = dict(route.links)
    for status in sorted(errors - set(route.answers)):
        responses[str(status)] = {
            "description": "problem",
            "content": {PROBLEM_JSON: {"schema": _ref(ProblemOut)}},
        }
    operation["responses"] = responses
    return operation


def document(routes: list[Route]) -> dict[str, Any]:
    """The OpenAPI 3.1 description of `routes` (relay.http.app.openapi_document: every route)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": "gms-apns-relay", "version": __version__, "description": _DESCRIPTION},
        "components": {
            "schemas": _schemas(routes),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "basic": {"type": "http", "scheme": "basic"},
            },
        },
        "paths": paths,
    }
