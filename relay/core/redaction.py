"""The one redaction of secrets and device tokens: what logs write and what refusals quote."""

from __future__ import annotations

import re

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
# user:password in a URL (redis://user:secret@host), up to the last '@' before a space or a quote:
# a password may hold '/' or '@' unescaped (a Sentinel URL's is not parsed as a URL), and masking a
# host beside it costs less than showing part of it.
_URL_USERINFO = re.compile(r"(://)[^/\s@:'\"]*:[^\s'\"]*@")
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
# folds them, so may_hold_secret finds the literal starts wherever the patterns would.
_RE_ONLY_FOLDS = ("\u017f", "\u0131", "\u0307")
_FOLD_LIKE_RE = str.maketrans({"\u017f": "s", "\u0131": "i", "\u0307": None})


def mask_token(token: str) -> str:
    """A device token as logs may show it: a quarter of it (at most 8 digits) and the length."""
    return f"{token[: min(8, len(token) // 4)]}…({len(token)})"


# Values found to hold nothing, remembered: most of a log line's values (its event, level, app,
# action, outcome) repeat on every line, and the check costs ~1 µs a value. Emptied when full, so
# it keeps the values seen since, and never grows past this many.
_HOLD_NOTHING_MAX = 4096
_holds_nothing: dict[str, None] = {}


def may_hold_secret(text: str) -> bool:
    """False only if no pattern of mask_secrets can match anywhere in `text`: it holds no device
    token and not the literal start of any other pattern. One search and a few substring tests
    instead of six substitutions (a case-insensitive regex of the starts costs 6 times as much);
    most values of a line (event names, ids, UUIDs, masked tokens) hold nothing."""
    if text in _holds_nothing:
        return False
    if _may_hold_secret(text):
        return True
    if len(_holds_nothing) >= _HOLD_NOTHING_MAX:
        _holds_nothing.clear()
    _holds_nothing[text] = None
    return False


def _may_hold_secret(text: str) -> bool:
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
    return mask_secrets(text) if may_hold_secret(text) else text


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
