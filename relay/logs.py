"""structlog set-up: JSON lines in production, console in development, secrets masked always."""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import orjson
import structlog

# Belt and braces: whatever a log call passes, these never leave the process in full.
_HEX_TOKEN = re.compile(r"\b[0-9a-fA-F]{32,}\b")
_JWT = re.compile(r"\beyJ[\w-]{4,}\.[\w-]{4,}\.[\w-]+")
_CREDENTIALS = re.compile(r"\b(Bearer|Basic|bearer|basic)\s+[\w.~+/=-]+")
_PEM = re.compile(r"-----BEGIN [A-Z ]+-----.*?-----END [A-Z ]+-----", re.S)
_SECRET_KEYS = frozenset({"authorization", "jwt", "key", "password", "secret", "api_token"})
# Identifiers the relay or APNs makes: hex, but not device tokens, and operators search by them.
_OWN_IDS = frozenset({"id", "apns_id", "apns_unique_id", "request_id"})

AIOAPNS_LOG_INTERVAL_S = 10.0


def mask_token(token: str) -> str:
    """A device token as logs may show it: the first 8 hex digits and the length."""
    return f"{token[:8]}…({len(token)})"


def _mask_text(text: str) -> str:
    if len(text) < 16:
        return text
    text = _PEM.sub("[pem]", text)
    text = _JWT.sub("[jwt]", text)
    text = _CREDENTIALS.sub(r"\1 [redacted]", text)
    return _HEX_TOKEN.sub(lambda m: mask_token(m.group(0)), text)


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask device tokens, JWTs, credentials and keys in every value."""
    for key, value in event.items():
        if key.lower() in _SECRET_KEYS:
            event[key] = "[redacted]"
        elif key in _OWN_IDS:
            continue
        elif isinstance(value, str):
            event[key] = _mask_text(value)
        elif not isinstance(value, int | float | bool | type(None)):
            event[key] = _mask_text(str(value))
    return event


class RateLimitFilter(logging.Filter):
    """Pass each distinct message template at most once per interval (aioapns can log per retry);
    the record that passes carries `suppressed`: how many of its kind were dropped before it."""

    def __init__(
        self,
        interval_s: float = AIOAPNS_LOG_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = self.clock()
        template = str(record.msg)
        if now - self._last.get(template, -self.interval_s) < self.interval_s:
            self._suppressed[template] = self._suppressed.get(template, 0) + 1
            return False
        self._last[template] = now
        if suppressed := self._suppressed.pop(template, 0):
            record.suppressed = suppressed
        return True


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode()


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """Route structlog and stdlib logging (aioapns, aiohttp) through one masked renderer."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if use_json
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    aioapns_logger = logging.getLogger("aioapns")
    aioapns_logger.filters[:] = [RateLimitFilter()]
    # aiohttp's access log costs a line per request in the ingest hot path; metrics count requests.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
