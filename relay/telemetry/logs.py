"""structlog set-up: JSON lines in production, console in development, secrets masked always."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from relay.core.redaction import mask_secrets, may_hold_secret, redact_text

_SECRET_KEYS = frozenset(
    {"authorization", "proxy-authorization", "jwt", "key", "password", "secret", "api_token"}
)
_PLAIN_TYPES = (int, float, bool, type(None))

AIOAPNS_LOG_INTERVAL_S = 10.0


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor for every record (structlog's and the stdlib's), after every step that
    copies caller data into it: secret-named fields dropped, every other non-number value through
    redact_text."""
    for key, value in event.items():
        if key.lower() in _SECRET_KEYS:
            event[key] = "[redacted]"
        elif isinstance(value, str):
            if may_hold_secret(value):
                event[key] = mask_secrets(value)
        elif not isinstance(value, _PLAIN_TYPES):
            event[key] = redact_text(str(value))
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


class ClientFaultFilter(logging.Filter):
    """aiohttp logs a request its HTTP parser refused (a bad header line, one too long, a body
    that does not decode) at ERROR with a traceback, once per request. That is a client's mistake,
    answered with a plain 400: one info line without a traceback says so. The body-decoding error
    aiohttp logs again after the relay has answered (and logged) it is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, web.RequestPayloadError):
            return False
        if not isinstance(error, HttpProcessingError) or not 400 <= (error.code or 0) < 500:
            return True
        if logging.getLogger().getEffectiveLevel() > logging.INFO:
            return False
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args = "http_request_refused", ()
        record.exc_info, record.exc_text = None, None
        record.status = error.code
        record.reason = f"{type(error).__name__}: {error.message.splitlines()[0][:120]}"
        return True


class RepeatedCondition:
    """A condition that can hold for a while (Redis unreachable) logged as an episode, not once per
    occurrence: a warning when it starts, a summary with counts at most every `summary_s` while it
    lasts, and a line when it ends. Time is given by `clock`, so it is tested without waiting."""

    def __init__(
        self,
        event: str,
        logger: Any,
        summary_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.event = event
        self.log = logger
        self.summary_s = summary_s
        self.clock = clock
        self.started_at: float | None = None
        self.summarised_at = 0.0
        self.total = 0
        self.since_summary: dict[str, int] = {}

    @property
    def active(self) -> bool:
        return self.started_at is not None

    def occurred(self, where: str, error: object) -> None:
        """One more occurrence, at `where` (a route, an operation)."""
        now = self.clock()
        self.total += 1
        self.since_summary[where] = self.since_summary.get(where, 0) + 1
        if self.started_at is None:
            self.started_at = self.summarised_at = now
            self.since_summary = {}
            self.log.warning(self.event, phase="started", where=where, error=str(error))
        elif now - self.summarised_at >= self.summary_s:
            self.log.warning(
                self.event,
                phase="continuing",
                for_s=round(now - self.started_at, 1),
                occurrences=self.total,
                since_last_summary=self.since_summary,
                error=str(error),
            )
            self.summarised_at = now
            self.since_summary = {}

    def cleared(self) -> None:
        """The condition no longer holds (cheap when it did not: called on every success)."""
        if self.started_at is None:
            return
        self.log.warning(
            self.event,
            phase="ended",
            for_s=round(self.clock() - self.started_at, 1),
            occurrences=self.total,
        )
        self.started_at = None
        self.total = 0
        self.since_summary = {}


def _render_json_bytes(_: Any, __: str, event: MutableMapping[str, Any]) -> bytes:
    """The relay's own lines: bytes straight from orjson to the bytes logger, never decoded."""
    return orjson.dumps(event)


def _render_json_text(_: Any, __: str, event: MutableMapping[str, Any]) -> str:
    """The stdlib's lines: a logging.Formatter must return text."""
    return orjson.dumps(event).decode()


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    """Route structlog and stdlib logging (aioapns, aiohttp) through one masked renderer.

    The relay's own lines (every hot-path line: `apns_attempt`, `request_refused`) go from
    structlog straight to stderr, JSON bytes in one orjson call, without a stdlib LogRecord,
    handler or formatter; the stdlib's lines (aiohttp, asyncio, aioapns) go through the root
    handler. Both chains end in the same `redact` and the same rendering, so every line of every
    logger passes the one redaction step."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.format_exc_info,
    ]
    # The timestamp is the relay's own clock: stamped after the redaction, which need not read it.
    masked: list[Any] = [redact, structlog.processors.TimeStamper(fmt="iso", utc=True)]
    own_renderer: Any
    foreign_renderer: Any
    logger_factory: Any
    if use_json:
        own_renderer, foreign_renderer = _render_json_bytes, _render_json_text
        logger_factory = structlog.BytesLoggerFactory(sys.stderr.buffer)
    else:
        own_renderer = foreign_renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        logger_factory = structlog.WriteLoggerFactory(sys.stderr)
    structlog.configure(
        processors=[*shared, *masked, own_renderer],
        logger_factory=logger_factory,
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *masked,
                foreign_renderer,
            ],
            foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    aioapns_logger = logging.getLogger("aioapns")
    aioapns_logger.filters[:] = [RateLimitFilter()]
    logging.getLogger("aiohttp.server").filters[:] = [ClientFaultFilter()]
    # aiohttp's access log costs a line per request in the ingest hot path; metrics count requests.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
