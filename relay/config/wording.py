"""The wording of a configuration problem: where (the dotted key, the file or variable it came
from), the rule broken, and what was given unless it is a secret."""

from __future__ import annotations

from collections.abc import Mapping
from types import NoneType, UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from relay.config.schema import Settings


def _dotted(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


# Values never echoed in errors: credentials, and a Redis URL that may carry a password.
_SECRET_LOCATIONS = (("auth",), ("redis", "url"), ("redis", "password"))


def describe(
    detail: ErrorDetails, env_sources: Mapping[tuple[str, ...], str], file_label: str
) -> str:
    location = tuple(detail["loc"])
    variable = next((var for key, var in env_sources.items() if location[: len(key)] == key), None)
    source = f"env {variable}" if variable else file_label
    secret = "password" in location or any(
        location[: len(prefix)] == prefix for prefix in _SECRET_LOCATIONS
    )
    return f"{_dotted(location) or '(top level)'}: {_rule(detail, secret)} [{source}]"


def _rule(detail: ErrorDetails, secret: bool) -> str:
    """Pydantic's error said as the rule and, unless the value is a secret, what was given."""
    kind = detail["type"]
    context = detail.get("ctx", {})
    got = "" if secret else f" (got {detail['input']!r})"
    match kind:
        case "missing":
            return "field required"
        case "extra_forbidden":
            allowed = _allowed_keys(tuple(detail["loc"][:-1]))
            return f"unknown key (allowed: {', '.join(allowed)})" if allowed else "unknown key"
        case "int_parsing" | "int_type" | "int_from_float":
            return f"must be an integer{got}"
        case "float_parsing" | "float_type":
            return f"must be a number{got}"
        case "bool_parsing" | "bool_type":
            return f"must be true or false{got}"
        case "greater_than":
            return f"must be > {context['gt']}{got}"
        case "greater_than_equal":
            return f"must be >= {context['ge']}{got}"
        case "less_than_equal":
            return f"must be <= {context['le']}{got}"
        case "string_pattern_mismatch":
            return f"must match {context['pattern']}{got}"
        case "literal_error":
            return f"must be one of {context['expected']}{got}"
        case "value_error":
            return str(context.get("error", detail["msg"]))
        case _:
            return f"{detail['msg'].lower()}{got}"


def _allowed_keys(location: tuple[int | str, ...]) -> list[str]:
    """The keys the model at `location` accepts, found by walking Settings' annotations."""
    annotation: Any = Settings
    for part in location:
        annotation = _strip_optional(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return []
            annotation = field.annotation
        elif get_origin(annotation) in (list, dict):
            annotation = get_args(annotation)[-1]
        else:
            return []
    annotation = _strip_optional(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return list(annotation.model_fields)
    return []


def _strip_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, UnionType):
        members = [arg for arg in get_args(annotation) if arg is not NoneType]
        if len(members) == 1:
            return members[0]
    return annotation
