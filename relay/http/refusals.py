"""pydantic's errors for a request said in the house wording the relay's own checks use."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from relay.core.model import InvalidInput
from relay.core.quoting import counted, shown

# A body can break many rules at once (10,000 unknown keys): the answer lists this many.
MAX_LISTED_ERRORS = 10

# Phrases a type error is said with: "must be a string", "must be a string or an object".
_TYPE_NOUNS = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
    "list_type": "a list",
    "none_required": "null",
}


def field_path(parts: list[str | int]) -> str:
    """`["alert", "loc-args", 0]` as the API names it: `alert.loc-args[0]`."""
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else part
    return path


# Reading pydantic's errors


def _fields(model: type[BaseModel]) -> dict[str, Any]:
    """A model's fields by every name a request may give them (alias and Python name)."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        fields[name] = info.annotation
        if info.alias:
            fields[info.alias] = info.annotation
    return fields


def _nested_model(annotation: object) -> type[BaseModel] | None:
    """The model a field holds, directly or inside a union, list or Annotated."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) is not None or isinstance(annotation, types.UnionType):
        for argument in typing.get_args(annotation):
            found = _nested_model(argument)
            if found is not None:
                return found
    return None


def _locate(
    model: type[BaseModel], loc: tuple[int | str, ...], names_key: bool
) -> tuple[list[str | int], type[BaseModel] | None]:
    """An error's location as the API's field path, and the model holding its last part.
    pydantic puts a union member's tag in the location ("alert.str", "alert.AlertIn"): a part
    that is not a field of the model at that point is one, and is no part of the path (but the
    last part of an unknown-field error is the unknown key itself: `names_key`)."""
    parts: list[str | int] = []
    current: type[BaseModel] | None = model
    holder: type[BaseModel] | None = model
    for index, part in enumerate(loc):
        holder = current
        if isinstance(part, int) or current is None:
            parts.append(part)
            continue
        fields = _fields(current)
        if part in fields:
            parts.append(part)
            current = _nested_model(fields[part])
        elif names_key and index == len(loc) - 1:
            parts.append(part)
    return parts, holder


def _rule(error: ErrorDetails, holder: type[BaseModel] | None) -> str:
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    if kind in _TYPE_NOUNS:
        return f"must be {_TYPE_NOUNS[kind]}"
    match kind:
        case "missing":
            return "is required"
        case "extra_forbidden":
            return f"is not a field here (allowed: {', '.join(sorted(_api_names(holder)))})"
        case "string_too_short":
            minimum = ctx["min_length"]
            return "must not be empty" if minimum == 1 else f"must be at least {minimum} characters"
        case "string_too_long":
            return f"must be at most {ctx['max_length']} characters"
        case "too_short":
            return f"must have at least {counted(ctx['min_length'], 'item')}"
        case "too_long":
            return f"must have at most {counted(ctx['max_length'], 'item')}"
        case "greater_than":
            return f"must be greater than {ctx['gt']}"
        case "greater_than_equal":
            return f"must be at least {ctx['ge']}"
        case "less_than":
            return f"must be less than {ctx['lt']}"
        case "less_than_equal":
            return f"must be at most {ctx['le']}"
        case "literal_error":
            return f"must be {ctx['expected']}"
        case "string_pattern_mismatch":
            # Every field with a pattern is checked by a house rule first (relay.http.requests);
            # this is the fallback, which names the form without quoting a regular expression.
            return "is not in the form this field takes (see /openapi.json)"
        case "value_error" if isinstance(ctx.get("error"), InvalidInput):
            rule: str = ctx["error"].rule
            return rule
        case _:
            return f"is not valid: {error['msg']}"


def _api_names(model: type[BaseModel] | None) -> set[str]:
    """The names a model's fields have in a request: the alias where there is one."""
    if model is None:
        return set()
    return {info.alias or name for name, info in model.model_fields.items()}


def _received(error: ErrorDetails) -> str | None:
    kind = error["type"]
    if kind in ("missing", "extra_forbidden"):
        return None
    cause = (error.get("ctx") or {}).get("error")
    if kind == "value_error" and isinstance(cause, InvalidInput):
        received: str | None = cause.received
        return received
    return shown(error["input"])


def invalid_inputs(error: ValidationError, model: type[BaseModel]) -> list[InvalidInput]:
    """pydantic's errors for a request to `model`, in the house wording the relay's own checks
    use (at most MAX_LISTED_ERRORS). A union's errors are said once: "must be a string or an
    object" for a value neither branch takes, and only the inner errors when one branch got
    further (an alert object with an unknown key is not also "not a string")."""
    located = []
    for detail in error.errors(include_url=False):
        parts, holder = _locate(model, detail["loc"], detail["type"] == "extra_forbidden")
        located.append((field_path(parts) or "body", detail, holder))
    deeper = {path for path, _, _ in located}
    kept = [
        (path, detail, holder)
        for path, detail, holder in located
        if not (
            detail["type"] in _TYPE_NOUNS
            and any(other.startswith((path + ".", path + "[")) for other in deeper)
        )
    ]
    refusals: list[InvalidInput] = []
    type_nouns: dict[str, list[str]] = {}  # per field said as a type error: the types it takes
    for path, detail, holder in kept:
        noun = _TYPE_NOUNS.get(detail["type"])
        if noun is not None and path in type_nouns:
            refused = next(r for r in refusals if r.field == path)
            if noun not in type_nouns[path]:
                type_nouns[path].append(noun)
                refused.rule = f"must be {' or '.join(type_nouns[path])}"
            continue
        if noun is not None:
            type_nouns[path] = [noun]
        refusals.append(InvalidInput(path, _rule(detail, holder), received=_received(detail)))
    return refusals[:MAX_LISTED_ERRORS]
