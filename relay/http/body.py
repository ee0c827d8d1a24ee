"""Request bodies: size, encoding and media type, read timeout, and JSON nesting depth."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web

from relay.core.quoting import shown
from relay.http.problems import Problem
from relay.http.state import STATE

# Arrays and objects may nest this deep in a request body; a push payload needs a handful of
# levels, and a limit far below orjson's 1024 keeps hostile bodies cheap to refuse.
MAX_JSON_DEPTH = 32
# What a body may be encoded with: aiohttp decodes these (br only with Brotli, which is not
# installed: aiohttp's parser refuses it with a plain 400). One encoding, not a stack of them.
BODY_ENCODINGS = frozenset({"identity", "gzip", "deflate"})
JSON_MEDIA_TYPE = re.compile(r"application/(?:[\w.+-]+\+)?json", re.I)


def json_depth_exceeds(document: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` deep (`[]` is depth 1, a scalar 0)."""
    pending: list[tuple[Any, int]] = [(document, 1)]
    while pending:
        value, depth = pending.pop()
        children: Iterable[Any]
        if isinstance(value, dict):
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _too_deep(field: str) -> Problem:
    return Problem(
        400,
        "json-too-deep",
        f"arrays and objects nest more than {MAX_JSON_DEPTH} levels deep; at most"
        f" {MAX_JSON_DEPTH} are allowed",
        field=field,
    )


def _is_depth_error(error: orjson.JSONDecodeError) -> bool:
    # orjson's own limits on nesting, worded differently by its two parsers.
    return str(error).lower().startswith(("depth limit exceeded", "recursion limit reached"))


def parse_json(raw: bytes | str, field: str = "body") -> Any:
    """`raw` as JSON, nested at most MAX_JSON_DEPTH deep, or a 400 problem saying why not."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        if _is_depth_error(error):
            raise _too_deep(field) from None
        raise Problem(
            400, "malformed-json", f"the {field} is not valid JSON: {error}", field=field
        ) from None
    if json_depth_exceeds(document, MAX_JSON_DEPTH):
        raise _too_deep(field)
    return document


def check_embedded_message(document: Any) -> None:
    """GMS may send `message` as a JSON string of an object: the depth limit holds for what it
    decodes to as well (the rest of its checks are the GMS parser's). The decoded object takes
    the string's place in `document`, so the GMS parser does not decode it again."""
    message = document.get("message") if isinstance(document, dict) else None
    if isinstance(message, str) and message.lstrip().startswith("{"):
        document["message"] = parse_json(message, field="message")


def _check_encoding(request: web.Request) -> None:
    """415 unless the body is plain or in one encoding aiohttp decodes; JSON routes also need a
    JSON media type when one is given (GMS's webhook is read as JSON whatever it says)."""
    encodings = [
        part.strip().lower()
        for header in request.headers.getall("Content-Encoding", [])
        for part in header.split(",")
    ]
    if len(encodings) > 1 or (encodings and encodings[0] not in BODY_ENCODINGS):
        raise Problem(
            415,
            "unsupported-content-encoding",
            f"Content-Encoding {', '.join(encodings)!r} is not supported; send one of"
            f" {', '.join(sorted(BODY_ENCODINGS))}, or none",
            field="Content-Encoding",
            close_connection=True,
        )
    content_type = request.headers.get("Content-Type")
    if (
        request.path.startswith("/v1/")
        and content_type is not None
        and not JSON_MEDIA_TYPE.fullmatch(content_type.split(";")[0].strip())
    ):
        raise Problem(
            415,
            "unsupported-media-type",
            f"must be application/json (or application/*+json); received {shown(content_type)}",
            field="Content-Type",
            close_connection=True,
        )


def _too_large(limit: int) -> Problem:
    return Problem(
        413,
        "body-too-large",
        f"the request body is over the {limit} bytes allowed (http.max_body_bytes)",
        field="body",
        close_connection=True,
    )


async def read_body(request: web.Request) -> bytes:
    """The whole body, refused when over the size cap or slower than the read timeout."""
    state = request.app[STATE]
    limit = state.settings.http.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    _check_encoding(request)
    timeout_s = state.limits.body_read_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(limit) from None
    except web.RequestPayloadError:
        # The body does not decode as its Content-Encoding says (not gzip, truncated, chunks
        # malformed): the client's fault, and the rest of the stream is unusable.
        raise Problem(
            400,
            "malformed-body",
            "the body could not be read as its Content-Encoding and framing say",
            field="body",
            close_connection=True,
        ) from None
    except TimeoutError:
        raise Problem(
            408,
            "body-read-timeout",
            f"the request body did not arrive within {timeout_s:g} s",
            field="body",
            close_connection=True,
        ) from None
