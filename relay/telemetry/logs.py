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
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

# One redaction for every line every logger writes (structlog's and the stdlib's: aiohttp, asyncio,
# aioapns, formatted tracebacks): whatever a log call, a parser error or a repr passes, these never
# leave the process in full. Case-insensitive throughout: "BEARER x" is as secret as "Bearer x".
_ESCAPED_BREAK = r"\\r\\n|\\n|\r?\n"  # a line break, raw or as a bytes repr shows it
_PEM = re.compile(r"-----BEGIN [A-Z ]*-----.*?(?:-----END [A-Z ]*-----|\Z)", re.S | re.I)
_JWT = re.compile(r"\beyJ[\w-]{2,}\.[\w-]{2,}\.[\w-]*", re.I)
# An Authorization or Proxy-Authorization value, whatever its scheme, up to the end of its line
# (a folded continuation line included) or the quote that closes a repr.
_AUTHORIZATION = re.compile(
    r"\b((?:proxy-)?authorization)([\"']?(?:\s*[:=]\s*|\s+)[\"']?)"
    rf"(?:(?:{_ESCAPED_BREAK})[ \t]+|\\(?![rn])|[^\r\n'\"\\])*",
    re.I,
)
# A scheme and its credential, also when a folded header puts the credential on the next line.
_CREDENTIALS = re.compile(
    rf"\b(bearer|basic)(?:\s|{_ESCAPED_BREAK})+(?!\[redacted\])(?:\\x[0-9a-f]{{2}}|[^\s'\"\\,;])+",
    re.I,
)
# user:password in a URL (redis://user:secret@host).
_URL_USERINFO = re.compile(r"(://)[^/\s@:'\"]*:[^/\s@'\"]*@")
# user:password@ with no scheme before it (a Sentinel or Cluster address: ":secret@host:26379").
_BARE_USERINFO = re.compile(r"(?<![\w/.:@-])[\w.~%!$&*+=-]*:[^/\s@'\"]+@(?=[\w\[])")
# A device token of any accepted length (8-200 hex digits) standing alone; a run joined by '-' is
# one of the relay's own ids (notification ids "07-<hex>", UUIDs), and a run followed by '…' is
# already masked.
_HEX_TOKEN = re.compile(r"(?:(?<![\w-])|(?<=\\x[0-9a-f]{2}))[0-9a-f]{8,200}(?![\w…-])", re.I)
# A key or certificate's base64 body without its PEM lines (a key pasted where a path goes): a run
# of 32 or more base64 characters holding both cases, then its further lines. Hex (device tokens,
# ids) is never both cases; a path or a sentence breaks the run with '.', '-', '_' or a space.
_BASE64_MIN = 32
_BASE64 = re.compile(
    rf"[A-Za-z0-9+/]{{{_BASE64_MIN},}}={{0,2}}(?:(?:{_ESCAPED_BREAK})[ \t]*[A-Za-z0-9+/]+={{0,2}})*"
)
# re.I also matches U+017F (long s) for s, U+0131 (dotless i) and U+0130 (I with a dot) for i,
# which str.lower() keeps as they are or spells as "i" + U+0307 (a combining dot): folded as re.I
# folds them, so _may_hold_secret finds the literal starts wherever the patterns would.
_RE_ONLY_FOLDS = ("\u017f", "\u0131", "\u0307")
_FOLD_LIKE_RE = str.maketrans({"\u017f": "s", "\u0131": "i", "\u0307": None})
_SECRET_KEYS = frozenset(
    {"authorization", "proxy-authorization", "jwt", "key", "password", "secret", "api_token"}
)
_PLAIN_TYPES = (int, float, bool, type(None))

AIOAPNS_LOG_INTERVAL_S = 10.0


def mask_token(token: str) -> str:
    """A device token as logs may show it: a quarter of it (at most 8 digits) and the length."""
    return f"{token[: min(8, len(token) // 4)]}…({len(token)})"


def _may_hold_secret(text: str) -> bool:
    """False only if no pattern of mask_secrets can match anywhere in `text`: it holds no device
    token and not the literal start of any other pattern. One search and a few substring tests
    instead of six substitutions (a case-insensitive regex of the starts costs 6 times as much);
    most values of a line (event names, ids, UUIDs, masked tokens) hold nothing."""
    if _HEX_TOKEN.search(text) is not None:
        return True
    if len(text) >= _BASE64_MIN and any(_both_cases(m.group(0)) for m in _BASE64.finditer(text)):
        return True
    lowered = text.lower()
    if not lowered.isascii() and any(char in lowered for char in _RE_ONLY_FOLDS):
        lowered = lowered.translate(_FOLD_LIKE_RE)
    return (
        "://" in lowered
        or "@" in lowered
        or "bearer" in lowered
        or "basic" in lowered
        or "authorization" in lowered
        or "eyj" in lowered
        or "-----begin " in lowered
    )


def redact_text(text: str) -> str:
    """`text` with every credential, key, JWT and device token in it masked (the same as
    mask_secrets, returned at once when nothing in it can be a secret)."""
    return mask_secrets(text) if _may_hold_secret(text) else text


def mask_secrets(text: str) -> str:
    """Every substitution, in order: PEM blocks first (a key holds hex), then credentials, JWTs
    and userinfo, device tokens last (a credential may hold hex)."""
    text = _PEM.sub("[pem]", text)
    text = _BASE64.sub(_masked_base64, text)
    text = _AUTHORIZATION.sub(r"\1\2[redacted]", text)
    text = _CREDENTIALS.sub(r"\1 [redacted]", text)
    text = _JWT.sub("[jwt]", text)
    text = _URL_USERINFO.sub(r"\1[redacted]@", text)
    text = _BARE_USERINFO.sub("[redacted]@", text)
    return _HEX_TOKEN.sub(lambda m: mask_token(m.group(0)), text)


def _both_cases(run: str) -> bool:
    return not run.islower() and not run.isupper()


def _masked_base64(match: re.Match[str]) -> str:
    return "[base64]" if _both_cases(match.group(0)) else match.group(0)


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor for every record (structlog's and the stdlib's), after every step that
    copies caller data into it: secret-named fields dropped, every other non-number value through
    redact_text."""
    for key, value in event.items():
        if key.lower() in _SECRET_KEYS:
            event[key] = "[redacted]"
        elif isinstance(value, str):
            if _may_hold_secret(value):
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
