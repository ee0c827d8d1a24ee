"""Fault-injection settings for the APNs simulator: plain data, parsed from and rendered to JSON.

The JSON form (every key optional; PUT /faults replaces the whole configuration):

    {
      "scripted": {"<token>": [{"status": 500, "reason": "InternalServerError", "body": true}]},
      "error": {"probability": 0.1, "status": 503, "reason": "ServiceUnavailable", "body": true},
      "latency_ms": 20  or  {"min": 5, "max": 50},
      "stall": {"probability": 0.0, "tokens": ["<token>"]},
      "goaway": {"after_streams": 100, "reason": "Shutdown"},
      "drop": {"after_streams": 100, "probability": 0.0},
      "rate_limit": {"per_second": 5}
    }

`scripted` answers are consumed in order, one per valid request to that token; a scripted 200
lets the request through normally. `"body": false` answers with the status alone (no DATA frame).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

JsonObject = dict[str, Any]


class FaultConfigError(ValueError):
    """A fault configuration that cannot be used, said as the field and what is allowed."""


@dataclass(frozen=True, slots=True)
class ScriptedAnswer:
    status: int
    reason: str | None = None
    body: bool = True  # False: the status alone, no JSON body


@dataclass(frozen=True, slots=True)
class RandomError:
    probability: float
    status: int
    reason: str | None
    body: bool = True


@dataclass(frozen=True, slots=True)
class Latency:
    min_ms: float
    max_ms: float


_NO_SCRIPTS: Mapping[str, tuple[ScriptedAnswer, ...]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class FaultConfig:
    scripted: Mapping[str, tuple[ScriptedAnswer, ...]] = field(default_factory=lambda: _NO_SCRIPTS)
    error: RandomError | None = None
    latency: Latency | None = None
    stall_probability: float = 0.0
    stall_tokens: frozenset[str] = frozenset()
    goaway_after_streams: int | None = None
    goaway_reason: str = "Shutdown"
    drop_after_streams: int | None = None
    drop_probability: float = 0.0
    rate_limit_per_second: int | None = None

    @classmethod
    def from_json(cls, document: object) -> FaultConfig:
        fields = _object(document, "faults")
        _only(fields, "faults", _TOP_LEVEL_KEYS)
        stall = _object(fields.get("stall", {}), "stall")
        _only(stall, "stall", {"probability", "tokens"})
        goaway = _object(fields.get("goaway", {}), "goaway")
        _only(goaway, "goaway", {"after_streams", "reason"})
        drop = _object(fields.get("drop", {}), "drop")
        _only(drop, "drop", {"after_streams", "probability"})
        rate_limit = _object(fields.get("rate_limit", {}), "rate_limit")
        _only(rate_limit, "rate_limit", {"per_second"})
        return cls(
            scripted=_scripts(fields.get("scripted", {})),
            error=_random_error(fields.get("error")),
            latency=_latency(fields.get("latency_ms")),
            stall_probability=_probability(stall.get("probability", 0.0), "stall.probability"),
            stall_tokens=frozenset(
                _token(t, "stall.tokens[]") for t in _list(stall.get("tokens", []), "stall.tokens")
            ),
            goaway_after_streams=_count(goaway.get("after_streams"), "goaway.after_streams"),
            goaway_reason=_text(goaway.get("reason", "Shutdown"), "goaway.reason"),
            drop_after_streams=_count(drop.get("after_streams"), "drop.after_streams"),
            drop_probability=_probability(drop.get("probability", 0.0), "drop.probability"),
            rate_limit_per_second=_count(rate_limit.get("per_second"), "rate_limit.per_second"),
        )

    def to_json(self) -> JsonObject:
        return {
            "scripted": {
                token: [{"status": a.status, "reason": a.reason, "body": a.body} for a in answers]
                for token, answers in self.scripted.items()
            },
            "error": None
            if self.error is None
            else {
                "probability": self.error.probability,
                "status": self.error.status,
                "reason": self.error.reason,
                "body": self.error.body,
            },
            "latency_ms": None
            if self.latency is None
            else {"min": self.latency.min_ms, "max": self.latency.max_ms},
            "stall": {"probability": self.stall_probability, "tokens": sorted(self.stall_tokens)},
            "goaway": {"after_streams": self.goaway_after_streams, "reason": self.goaway_reason},
            "drop": {
                "after_streams": self.drop_after_streams,
                "probability": self.drop_probability,
            },
            "rate_limit": {"per_second": self.rate_limit_per_second},
        }

    def shares_device_state(self, token: str) -> bool:
        """True when answering `token` needs state shared by all server processes."""
        return self.rate_limit_per_second is not None or token in self.scripted


NO_FAULTS = FaultConfig()

_TOP_LEVEL_KEYS = {"scripted", "error", "latency_ms", "stall", "goaway", "drop", "rate_limit"}


def _object(value: object, name: str) -> Mapping[str, object]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise FaultConfigError(f"{name}: must be a JSON object, got {type(value).__name__}")
    return value


def _only(value: Mapping[str, object], name: str, allowed: set[str]) -> None:
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise FaultConfigError(f"{name}: unknown keys {unknown}; allowed: {sorted(allowed)}")


def _list(value: object, name: str) -> list[object]:
    if not isinstance(value, list):
        raise FaultConfigError(f"{name}: must be a JSON array, got {type(value).__name__}")
    return value


def _text(value: object, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise FaultConfigError(f"{name}: must be a non-empty string, got {value!r}")
    return value


def _token(value: object, name: str) -> str:
    return _text(value, name).lower()


def _status(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 599:
        raise FaultConfigError(f"{name}: must be an HTTP status 200..599, got {value!r}")
    return value


def _reason(value: object, name: str) -> str | None:
    return None if value is None else _text(value, name)


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise FaultConfigError(f"{name}: must be true or false, got {value!r}")
    return value


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise FaultConfigError(f"{name}: must be a number >= 0, got {value!r}")
    return float(value)


def _probability(value: object, name: str) -> float:
    number = _number(value, name)
    if number > 1:
        raise FaultConfigError(f"{name}: must be a probability in [0, 1], got {value!r}")
    return number


def _count(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FaultConfigError(f"{name}: must be an integer >= 1 or null, got {value!r}")
    return value


def _scripts(value: object) -> Mapping[str, tuple[ScriptedAnswer, ...]]:
    scripts: dict[str, tuple[ScriptedAnswer, ...]] = {}
    for token, answers in _object(value, "scripted").items():
        name = f"scripted[{token}]"
        scripts[_token(token, "scripted token")] = tuple(
            _scripted_answer(answer, f"{name}[{i}]")
            for i, answer in enumerate(_list(answers, name))
        )
    return MappingProxyType(scripts)


def _scripted_answer(value: object, name: str) -> ScriptedAnswer:
    fields = _object(value, name)
    _only(fields, name, {"status", "reason", "body"})
    return ScriptedAnswer(
        status=_status(fields.get("status"), f"{name}.status"),
        reason=_reason(fields.get("reason"), f"{name}.reason"),
        body=_flag(fields.get("body", True), f"{name}.body"),
    )


def _random_error(value: object) -> RandomError | None:
    if value is None:
        return None
    fields = _object(value, "error")
    _only(fields, "error", {"probability", "status", "reason", "body"})
    return RandomError(
        probability=_probability(fields.get("probability"), "error.probability"),
        status=_status(fields.get("status"), "error.status"),
        reason=_reason(fields.get("reason"), "error.reason"),
        body=_flag(fields.get("body", True), "error.body"),
    )


def _latency(value: object) -> Latency | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        _only(value, "latency_ms", {"min", "max"})
        low = _number(value.get("min"), "latency_ms.min")
        high = _number(value.get("max", low), "latency_ms.max")
        if high < low:
            raise FaultConfigError(f"latency_ms: max {high} is below min {low}")
        return Latency(low, high)
    fixed = _number(value, "latency_ms")
    return Latency(fixed, fixed)
