"""Loading the settings: the YAML file (bounded), RELAY_* environment overrides over it, then the
schema's validation, every problem worded on one line (relay.config.wording)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from relay.config.schema import (
    CONTEXT_BASE_DIR,
    CONTEXT_ENV,
    CircuitSettings,
    ConfigError,
    DeliverySettings,
    HttpSettings,
    IngestSettings,
    LoggingSettings,
    QueueSettings,
    RedisSettings,
    RetrySettings,
    Settings,
)
from relay.config.secret_files import CONFIG_FILE_MAX_BYTES, read_bounded
from relay.config.wording import describe

CONFIG_PATH_ENV = "RELAY_CONFIG"
ENV_PREFIX = "RELAY_"
API_TOKENS_ENV = "RELAY_API_TOKENS"
BASIC_AUTH_ENV = "RELAY_BASIC_AUTH"
REDIS_URL_FALLBACK_ENV = "REDIS_URL"

# Sections whose scalars can be overridden as RELAY_<SECTION>_<KEY>; auth is overridden only as a
# whole, by the two comma lists.
_ENV_SECTIONS: Mapping[str, type[BaseModel]] = {
    "redis": RedisSettings,
    "http": HttpSettings,
    "queue": QueueSettings,
    "ingest": IngestSettings,
    "retry": RetrySettings,
    "delivery": DeliverySettings,
    "circuit": CircuitSettings,
    "logging": LoggingSettings,
}
_NOT_SECTION_KEYS = frozenset({CONFIG_PATH_ENV, API_TOKENS_ENV, BASIC_AUTH_ENV})


def env_override_names() -> dict[str, tuple[str, str]]:
    """Every RELAY_<SECTION>_<KEY> variable -> (section, key)."""
    return {
        f"{ENV_PREFIX}{section.upper()}_{key.upper()}": (section, key)
        for section, model in _ENV_SECTIONS.items()
        for key in model.model_fields
    }


def load_settings(path: str | Path | None = None, env: Mapping[str, str] = os.environ) -> Settings:
    """Settings from `path` (else $RELAY_CONFIG, else built-in defaults) and the environment."""
    file = config_file(path, env)
    raw: dict[str, Any] = {} if file is None else _read_yaml(file)
    file_label = "built-in defaults" if file is None else f"file {file}"
    env_sources = _apply_env(raw, env)
    base_dir = None if file is None else file.resolve().parent
    try:
        return Settings.model_validate(raw, context={CONTEXT_BASE_DIR: base_dir, CONTEXT_ENV: env})
    except ValidationError as error:
        raise ConfigError(
            [describe(detail, env_sources, file_label) for detail in error.errors()]
        ) from None


def config_file(path: str | Path | None, env: Mapping[str, str] = os.environ) -> Path | None:
    """The file load_settings reads: `path`, else $RELAY_CONFIG, else none."""
    if path is None and env.get(CONFIG_PATH_ENV):
        path = env[CONFIG_PATH_ENV]
    return None if path is None else Path(path)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:  # bounded, and never blocking on a FIFO: a reload reads it again in a serving process
        text = read_bounded(path, CONFIG_FILE_MAX_BYTES).decode("utf-8")
    except OSError as error:
        raise ConfigError([f"{path}: cannot read: {error.strerror or error}"]) from None
    except UnicodeDecodeError as error:
        raise ConfigError([f"{path}: not UTF-8 text ({error.reason})"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        # PyYAML's own text spans lines with a caret drawing; where and what is enough.
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError([f"{path}: not valid YAML{where}: {what}"]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: must hold a mapping of sections (got {type(data).__name__})"])
    return data


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """Overlay the environment on the file's data; returns the dotted key -> variable it came
    from, so errors can name the variable rather than the file."""
    sources: dict[tuple[str, ...], str] = {}
    overrides = env_override_names()
    unknown: list[str] = []
    for variable, value in sorted(env.items()):
        if variable in overrides:
            section, key = overrides[variable]
            _section_of(raw, section)[key] = value
            sources[(section, key)] = variable
        elif variable not in _NOT_SECTION_KEYS and (addressed := _env_section(variable)):
            known = ", ".join(name for name, (s, _) in overrides.items() if s == addressed)
            unknown.append(f"env {variable}: unknown setting (known: {known})")
    if unknown:
        raise ConfigError(unknown)
    for variable, key in ((API_TOKENS_ENV, "api_tokens"), (BASIC_AUTH_ENV, "basic")):
        if variable in env:
            _section_of(raw, "auth")[key] = [
                item.strip() for item in env[variable].split(",") if item.strip()
            ]
            sources[("auth", key)] = variable
    redis_section = _section_of(raw, "redis")
    explicit = any(redis_section.get(key) for key in ("url", "sentinels", "cluster_nodes"))
    if not explicit and env.get(REDIS_URL_FALLBACK_ENV):
        redis_section["url"] = env[REDIS_URL_FALLBACK_ENV]
        sources[("redis", "url")] = REDIS_URL_FALLBACK_ENV
    return sources


def _env_section(variable: str) -> str | None:
    """The section a RELAY_<SECTION>_... variable addresses, if any: a typo there is an error."""
    return next(
        (s for s in _ENV_SECTIONS if variable.startswith(f"{ENV_PREFIX}{s.upper()}_")), None
    )


def _section_of(raw: dict[str, Any], section: str) -> dict[str, Any]:
    value = raw.setdefault(section, {})
    if value is None:
        value = raw[section] = {}
    if not isinstance(value, dict):
        raise ConfigError([f"{section}: must be a mapping (got {type(value).__name__})"])
    return value
