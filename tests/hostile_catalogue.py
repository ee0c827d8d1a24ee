"""The hostile-input catalogue: bad requests as data, each a raw HTTP/1.x exchange to send as-is.

Every entry must be refused with a 4xx (never a 5xx), store nothing and log no secret; the test
(test_hostile_input.py) sends them all to one relay. Requests are bytes, not aiohttp calls, so
that what a hostile client sends (odd casing, NUL, non-UTF-8, folded or duplicated headers,
broken framing) reaches the relay unnormalised.
"""

from __future__ import annotations

import base64
import gzip
import itertools
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

# Known secrets: the relay's configuration uses them, the logs must never hold them in full.
API_TOKEN = "hostile-api-token-7c1e9a55d2b04f"
SCOPED_TOKEN = "hostile-scoped-token-3b8e61f0aa"
BASIC_USER, BASIC_PASSWORD = "gms", "hostile-basic-secret-91d4"
WRONG_TOKEN = "wrong-token-e5a1c0ffee42"
WRONG_PASSWORD = "not-the-password-a8d3"
# Device tokens of every accepted length; the logs may show them only masked.
TOKEN_64 = "aa11bb22cc33dd44ee55ff6600778899aa11bb22cc33dd44ee55ff6600778899"
TOKEN_8 = "c0ffee12"
TOKEN_16 = "feedface12345678"
TOKEN_200 = "ab" * 100
SERVICE_ID = "3SQI3S31693JL9L3R00506T40C000U73"
IDEMPOTENCY_KEY = "hostile-idem-1"  # seeded with one notification before the catalogue runs

# Which refusals may be aiohttp's own plain-text 400 (its HTTP parser answers before any route).
PARSER = "parser"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


BEARER = f"Bearer {API_TOKEN}".encode()
BASIC = f"Basic {_b64(f'{BASIC_USER}:{BASIC_PASSWORD}')}".encode()
SECRETS = (
    API_TOKEN,
    SCOPED_TOKEN,
    BASIC_PASSWORD,
    _b64(f"{BASIC_USER}:{BASIC_PASSWORD}"),
    WRONG_TOKEN,
    WRONG_PASSWORD,
    _b64(f"{BASIC_USER}:{WRONG_PASSWORD}"),
    TOKEN_64,
    TOKEN_16,
    TOKEN_200,
)


@dataclass(frozen=True)
class Case:
    name: str
    raw: bytes  # one or more requests, exactly as sent
    responses: int = 1  # pipelined requests get one answer each
    plain_ok: bool = False  # aiohttp's parser may answer with its plain-text 400
    chunk_bytes: int = 0  # a slow client: sent this many bytes at a time, with a pause between
    withhold: int = 0  # a stalled client: the last bytes of its body never come
    status: int | None = None  # the one status this refusal must get, where it is a rule


def request(
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    *,
    version: bytes = b"HTTP/1.1",
    close: bool = True,
    length: bool = True,
) -> bytes:
    lines = [method + b" " + target + b" " + version]
    if not any(name.lower() == b"host" for name, _ in headers):
        lines.append(b"Host: relay")
    lines += [name + b": " + value for name, value in headers]
    if length and (body or method in (b"POST", b"PUT", b"PATCH")):
        lines.append(b"Content-Length: %d" % len(body))
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


JSON = [(b"Content-Type", b"application/json")]
POST_ROUTES = (b"/gms/push", b"/v1/notifications", b"/v1/notifications:batch")
PROTECTED = (
    (b"POST", b"/gms/push"),
    (b"POST", b"/v1/notifications"),
    (b"POST", b"/v1/notifications:batch"),
    (b"GET", b"/v1/notifications/07-0123456789abcdef0123456789abcdef"),
    (b"GET", b"/v1/devices/dev/" + TOKEN_64.encode()),
    (b"DELETE", b"/v1/devices/dev/" + TOKEN_64.encode()),
    (b"GET", b"/v1/queue"),
    (b"GET", b"/openapi.json"),
)

# Authorization values that must all get the same 401.
BAD_AUTHORIZATIONS: list[tuple[str, list[tuple[bytes, bytes]]]] = [
    ("none", []),
    ("empty", [(b"Authorization", b"")]),
    ("scheme only", [(b"Authorization", b"Bearer")]),
    ("wrong bearer", [(b"Authorization", f"Bearer {WRONG_TOKEN}".encode())]),
    ("upper-case wrong bearer", [(b"Authorization", f"BEARER {WRONG_TOKEN}".encode())]),
    ("wrong basic", [(b"Authorization", f"Basic {_b64(f'gms:{WRONG_PASSWORD}')}".encode())]),
    ("basic not base64", [(b"Authorization", b"Basic !!!not-base64!!!")]),
    ("basic without colon", [(b"Authorization", f"Basic {_b64('nocolon')}".encode())]),
    ("non-UTF-8 bearer", [(b"Authorization", b"Bearer \xff\xfe" + WRONG_TOKEN.encode())]),
    ("non-UTF-8 basic", [(b"Authorization", b"Basic \xc3\x28\xa0\xa1")]),
    ("latin-1 token", [(b"Authorization", b"Bearer caf\xe9" + WRONG_TOKEN.encode())]),
    ("huge token", [(b"Authorization", b"Bearer " + b"x" * 6000)]),
    ("unknown scheme", [(b"Authorization", f"Token {API_TOKEN}x".encode())]),
    ("digest scheme", [(b"Authorization", b'Digest username="gms", nonce="1"')]),
    ("token in proxy header", [(b"Proxy-Authorization", BEARER)]),
    ("token in query only", [(b"X-Api-Token", API_TOKEN.encode())]),
    (
        "two wrong headers",
        [
            (b"Authorization", f"Bearer {WRONG_TOKEN}".encode()),
            (b"Authorization", f"Bearer {WRONG_TOKEN}2".encode()),
        ],
    ),
    ("right token with suffix", [(b"Authorization", BEARER + b"x")]),
    ("right token truncated", [(b"Authorization", BEARER[:-1])]),
    ("tab separated", [(b"Authorization", b"Bearer\t" + WRONG_TOKEN.encode())]),
]


def auth_cases() -> Iterator[Case]:
    for (method, path), (label, headers) in itertools.product(PROTECTED, BAD_AUTHORIZATIONS):
        body = b'{"deviceId": "' + TOKEN_64.encode() + b'", "message": "hi"}'
        yield Case(
            f"401 {label}: {method.decode()} {path.decode()[:40]}",
            request(method, path, [*headers, *JSON], body if method == b"POST" else b""),
        )


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def gms(message: str | bytes, device: str = TOKEN_64) -> bytes:
    text = message if isinstance(message, bytes) else message.encode()
    return b'{"deviceId": "' + device.encode() + b'", "message": ' + text + b"}"


def api(**fields: str) -> bytes:
    body = {"device_token": f'"{TOKEN_64}"', "service_id": f'"{SERVICE_ID}"', "action": '"x"'}
    body.update(fields)
    return ("{" + ", ".join(f'"{k}": {v}' for k, v in body.items() if v) + "}").encode()


# Bodies no route accepts: each is sent to every POST route.
BAD_JSON: list[tuple[str, bytes]] = [
    ("empty body", b""),
    ("whitespace", b"   \n\t "),
    ("BOM then JSON", b"\xef\xbb\xbf" + api()),
    ("UTF-16 JSON", api().decode().encode("utf-16")),
    ("NaN", b'{"deviceId": NaN, "device_token": NaN}'),
    ("Infinity", b'{"ttl_seconds": Infinity}'),
    ("raw NUL", b'{"deviceId": "\x00"}'),
    ("truncated", b'{"deviceId": "ab'),
    ("trailing garbage", api() + b"garbage"),
    ("two documents", api() + api()),
    ("single quotes", b"{'deviceId': 'aa'}"),
    ("comment", b'/* x */ {"deviceId": 1}'),
    ("trailing comma", b'{"deviceId": "aa",}'),
    ("null", b"null"),
    ("array", b"[]"),
    ("number", b"12345"),
    ("string", b'"hello"'),
    ("true", b"true"),
    ("invalid UTF-8", b'{"deviceId": "\xff\xfe\xfd"}'),
    ("lone surrogate escape", b'{"deviceId": "\\ud800"}'),
    ("deep 33", nested(33)),
    ("deep 200", nested(200)),
    ("deep 600", nested(600)),
    ("deep 5000", nested(5000)),
    ("deep objects", b'{"a":' * 100 + b"1" + b"}" * 100),
    ("huge number", b'{"ttl_seconds": 1' + b"0" * 400 + b"}"),
    ("unbalanced", b"{{{{]]]]"),
    ("control char", b'{"deviceId": "a\x01b"}'),
    ("html", b"<html><body>hi</body></html>"),
    ("form", b"deviceId=aa&message=hi"),
    ("binary", bytes(range(256))),
    ("over the size cap", b'{"x": "' + b"a" * (1024 * 1024 + 10) + b'"}'),
]

# Bodies that are JSON but break a field's rule, per route.
BAD_GMS: list[tuple[str, bytes]] = [
    ("no deviceId", b'{"message": "hi"}'),
    ("no message", b'{"deviceId": "' + TOKEN_64.encode() + b'"}'),
    ("deviceId number", gms('"hi"').replace(f'"{TOKEN_64}"'.encode(), b"12345")),
    ("token 7 hex", gms('"hi"', "abcdef1")),
    ("token 201 hex", gms('"hi"', "a" * 201)),
    ("token odd length", gms('"hi"', "abc")),
    ("token non-hex", gms('"hi"', "zz" * 32)),
    ("token unicode digits", gms('"hi"', "\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18")),
    ("token with space", gms('"hi"', "aabb ccdd eeff 0011")),
    ("token with NUL escape", gms('"hi"', "aabbccdd\\u0000eeff")),
    ("token empty", gms('"hi"', "")),
    ("unknown app prefix", gms('"hi"', f"nope:{TOKEN_64}")),
    ("bad app prefix", gms('"hi"', f"../etc:{TOKEN_64}")),
    ("message empty", gms('""')),
    ("message blank", gms('"   "')),
    ("message number", gms("42")),
    ("message list", gms("[1, 2]")),
    ("message null", gms("null")),
    ("message bool", gms("true")),
    ("message object, nothing to push", gms('{"foo": 1}')),
    ("message JSON string malformed", gms('"{not json"')),
    ("message JSON string 40 deep", gms('"' + '{\\"a\\":' * 40 + "1" + "}" * 40 + '"')),
    ("message JSON string 200 deep", gms('"{\\"a\\":' + "[" * 200 + "]" * 200 + '}"')),
    ("message JSON string 600 deep", gms('"{\\"a\\":' + "[" * 600 + "]" * 600 + '}"')),
    ("bad _id", gms('{"_id": "", "_action": "x"}')),
    ("_id object", gms('{"_id": {"a": 1}, "_action": "x"}')),
    ("_action too long", gms('{"_id": "S1", "_action": "' + "x" * 5000 + '"}')),
    ("huge alert", gms('{"_id": "S1", "_action": "x", "alert": "' + "y" * 6000 + '"}')),
    ("deep message", gms("[" * 40 + "]" * 40)),
    ("dead-looking token upper", gms('"hi"', "G" * 64)),
]

BAD_API: list[tuple[str, bytes]] = [
    ("empty object", b"{}"),
    ("no device_token", api(device_token="")),
    ("device_token number", api(device_token="123")),
    ("device_token 7 hex", api(device_token='"abcdef1"')),
    ("device_token 201 hex", api(device_token='"' + "a" * 201 + '"')),
    ("device_token non-hex", api(device_token='"' + "zz" * 32 + '"')),
    ("device_token list", api(device_token=f'["{TOKEN_64}"]')),
    ("unknown app", api(app='"nope"')),
    ("app with path", api(app='"../dev"')),
    ("app number", api(app="7")),
    ("ttl negative", api(ttl_seconds="-1")),
    ("ttl huge", api(ttl_seconds="99999999999999999999")),
    ("ttl float", api(ttl_seconds="1.5")),
    ("ttl string", api(ttl_seconds='"60"')),
    ("priority 7", api(priority="7")),
    ("priority string", api(priority='"high"')),
    ("unknown field", api(surprise="1")),
    ("alert object junk", api(alert='{"junk": 1}')),
    ("alert huge", api(alert='"' + "z" * 6000 + '"')),
    ("extra too big", api(extra='{"blob": "' + "q" * 5000 + '"}')),
    ("extra deep", api(extra="{" + '"a":{' * 40 + '"b":1' + "}" * 41)),
    ("service_id empty", api(service_id='""')),
    ("service_id object", api(service_id='{"a":1}')),
    ("action number", api(action="5")),
    ("idempotency key reused for another body", api(idempotency_key=f'"{IDEMPOTENCY_KEY}"')),
    ("idempotency key too long", api(idempotency_key='"' + "k" * 5000 + '"')),
    ("idempotency key number", api(idempotency_key="5")),
    ("expired on arrival", api(expires_at="1")),
    ("push_type unknown", api(push_type='"nonsense"')),
    ("collapse id too long", api(collapse_id='"' + "c" * 200 + '"')),
]

BAD_BATCH: list[tuple[str, bytes]] = [
    ("no notifications", b"{}"),
    ("notifications null", b'{"notifications": null}'),
    ("notifications object", b'{"notifications": {}}'),
    ("notifications empty", b'{"notifications": []}'),
    ("over the batch size", b'{"notifications": [' + b",".join([b"{}"] * 1001) + b"]}"),
    ("notifications strings", b'{"notifications": ["a", "b"]}'),
    ("unknown field", b'{"notifications": [], "x": 1}'),
]


def body_cases() -> Iterator[Case]:
    for (label, body), path in itertools.product(BAD_JSON, POST_ROUTES):
        auth = BASIC if path == b"/gms/push" else BEARER
        yield Case(
            f"bad JSON {label}: {path.decode()}",
            request(b"POST", path, [(b"Authorization", auth), *JSON], body),
        )
    for label, body in BAD_GMS:
        yield Case(
            f"gms {label}", request(b"POST", b"/gms/push", [(b"Authorization", BASIC), *JSON], body)
        )
    for label, body in BAD_API:
        yield Case(
            f"api {label}",
            request(b"POST", b"/v1/notifications", [(b"Authorization", BEARER), *JSON], body),
        )
        # The same notification inside a batch is refused per item; the batch of only bad
        # items is answered 200 with every item refused, so it is sent as a bad batch shape.
    for label, body in BAD_BATCH:
        yield Case(
            f"batch {label}",
            request(b"POST", b"/v1/notifications:batch", [(b"Authorization", BEARER), *JSON], body),
        )


def _gzip_bomb() -> bytes:
    return gzip.compress(b"{" + b" " * (16 << 20) + b"}", compresslevel=9)


ENCODINGS: list[tuple[str, list[tuple[bytes, bytes]], bytes, bool]] = [
    ("gzip header, plain body", [(b"Content-Encoding", b"gzip")], api(), False),
    ("gzip truncated", [(b"Content-Encoding", b"gzip")], gzip.compress(api())[:-12], False),
    ("gzip bomb", [(b"Content-Encoding", b"gzip")], _gzip_bomb(), False),
    ("gzip of garbage", [(b"Content-Encoding", b"gzip")], gzip.compress(b"\xff\xfe{"), False),
    ("deflate header, plain body", [(b"Content-Encoding", b"deflate")], api(), True),
    ("deflate bomb", [(b"Content-Encoding", b"deflate")], zlib.compress(b" " * (16 << 20)), False),
    ("unknown encoding", [(b"Content-Encoding", b"x-unknown")], api(), False),
    (
        "stacked gzip",
        [(b"Content-Encoding", b"gzip, gzip")],
        gzip.compress(gzip.compress(api())),
        False,
    ),
    (
        "two encoding headers",
        [(b"Content-Encoding", b"gzip"), (b"Content-Encoding", b"gzip")],
        gzip.compress(gzip.compress(api())),
        False,
    ),
    ("compress", [(b"Content-Encoding", b"compress")], api(), False),
    ("brotli", [(b"Content-Encoding", b"br")], api(), True),
    ("zstd", [(b"Content-Encoding", b"zstd")], api(), True),
    ("non-UTF-8 encoding", [(b"Content-Encoding", b"gz\xffip")], api(), False),
    ("empty gzip", [(b"Content-Encoding", b"gzip")], b"", False),
]

CONTENT_TYPES = [
    b"text/plain",
    b"application/x-www-form-urlencoded",
    b"multipart/form-data; boundary=x",
    b"application/xml",
    b"application/jsonx",
    b"text/json\xff",
    b"application/octet-stream",
]


def encoding_cases() -> Iterator[Case]:
    for (label, headers, body, plain_ok), path in itertools.product(ENCODINGS, POST_ROUTES):
        auth = BASIC if path == b"/gms/push" else BEARER
        yield Case(
            f"encoding {label}: {path.decode()}",
            request(b"POST", path, [(b"Authorization", auth), *JSON, *headers], body),
            plain_ok=plain_ok,
        )
    for content_type, path in itertools.product(CONTENT_TYPES, POST_ROUTES[1:]):
        body = api() if path == b"/v1/notifications" else b'{"notifications": [' + api() + b"]}"
        headers = [(b"Authorization", BEARER), (b"Content-Type", content_type)]
        yield Case(
            f"content type {content_type!r}: {path.decode()}", request(b"POST", path, headers, body)
        )


PATHS: list[tuple[bytes, bytes]] = [
    (b"GET", b"/v1/notifications/../queue"),
    (b"GET", b"/v1/notifications/%2e%2e%2fqueue"),
    (b"GET", b"//v1/queue"),
    (b"GET", b"/v1/queue/"),
    (b"GET", b"/V1/QUEUE"),
    (b"POST", b"/gms/push/"),
    (b"POST", b"/GMS/PUSH"),
    (b"GET", b"/v1/notifications/" + b"a" * 300),
    (b"GET", b"/v1/notifications/%00"),
    (b"GET", b"/v1/notifications/99-0123456789abcdef0123456789abcdef"),
    (b"GET", b"/v1/notifications/07-" + TOKEN_64.encode()),
    (b"GET", b"/v1/notifications/%ff%fe"),
    (b"GET", b"/v1/devices/dev/zz"),
    (b"GET", b"/v1/devices/dev/abc"),
    (b"GET", b"/v1/devices/dev/" + b"a" * 201),
    (b"GET", b"/v1/devices/nope/" + TOKEN_64.encode()),
    (b"GET", b"/v1/devices/..%2fdev/" + TOKEN_64.encode()),
    (b"GET", b"/v1/devices/dev/" + TOKEN_64.encode() + b"/extra"),
    (b"DELETE", b"/v1/devices/dev/nothex"),
    (b"DELETE", b"/v1/devices/nope/" + TOKEN_16.encode()),
    (b"DELETE", b"/v1/devices/dev/%00"),
    (b"GET", b"/v1/devices/dev/%e2%80%ae" + TOKEN_8.encode()),
    (b"GET", b"/nothing-here"),
    (b"GET", b"/v1/"),
    (b"GET", b"/.env"),
    (b"GET", b"/v1/notifications/x?" + b"q=" * 2000),
    (b"POST", b"/v1/notifications?app=dev"),
    (b"GET", b"/\xff\xfe"),
    (b"GET", b"/v1/devices/dev/" + "é".encode() * 8),
]


def path_cases() -> Iterator[Case]:
    for method, path in PATHS:
        headers = [(b"Authorization", BEARER), *JSON]
        yield Case(
            f"path {method.decode()} {path[:60]!r}",
            request(method, path, headers),
            plain_ok=not path.isascii(),  # aiohttp's parser refuses raw non-ASCII in a path
        )
    for method, path in PATHS[:10]:
        yield Case(f"path, no auth {method.decode()} {path[:60]!r}", request(method, path, []))
    yield Case("absolute-form target", request(b"GET", b"http://evil.example/v1/queue", []))
    yield Case(
        "asterisk target", request(b"GET", b"*", [(b"Authorization", BEARER)]), plain_ok=True
    )
    yield Case("request line too long", request(b"GET", b"/" + b"a" * 9000, []), plain_ok=True)
    yield Case("NUL in path", request(b"GET", b"/v1/queue\x00", []), plain_ok=True)
    yield Case("space in path", request(b"GET", b"/v1/que ue", []), plain_ok=True)


METHODS = (b"PUT", b"PATCH", b"TRACE", b"OPTIONS", b"BREW", b"CONNECT")


def method_cases() -> Iterator[Case]:
    for method, (_, path) in itertools.product(METHODS, PROTECTED[:4]):
        plain = method in (b"CONNECT", b"BREW")  # not a method aiohttp's parser knows
        yield Case(
            f"method {method.decode()} {path.decode()[:30]}",
            request(method, path, [(b"Authorization", BEARER)], b"{}"),
            plain_ok=plain,
        )
    for method in (b"POST", b"DELETE", b"PUT"):
        for path in (b"/healthz", b"/readyz", b"/metrics", b"/v1/queue", b"/openapi.json"):
            yield Case(
                f"method {method.decode()} {path.decode()}",
                request(method, path, [(b"Authorization", BEARER)], b"{}"),
            )
    yield Case("lower-case method", request(b"get", b"/v1/queue", []), plain_ok=True)
    yield Case("method with NUL", request(b"GE\x00T", b"/v1/queue", []), plain_ok=True)


def _post(headers: list[tuple[bytes, bytes]], body: bytes = b"", *, length: bool = True) -> bytes:
    return request(
        b"POST", b"/v1/notifications", [(b"Authorization", BEARER), *headers], body, length=length
    )


def header_cases() -> Iterator[Case]:
    """Odd and duplicated headers, non-UTF-8 bytes in every header the relay reads, framing."""
    read_headers = (
        b"Authorization",
        b"Content-Type",
        b"Content-Encoding",
        b"X-Request-Id",
        b"Host",
        b"Expect",
        b"Content-Length",
    )
    for name in read_headers:
        for label, value in (
            ("non-UTF-8", b"\xff\xfe\x80"),
            ("latin-1", b"caf\xe9"),
            ("overlong UTF-8", b"\xc0\xaf"),
        ):
            headers = (
                [(name, value)]
                if name == b"Authorization"
                else [(b"Authorization", BEARER), (name, value)]
            )
            body = b"{}"  # a valid credential still meets an invalid body: nothing stored
            yield Case(
                f"header {name.decode()} {label}",
                request(b"POST", b"/v1/notifications", headers, body, length=False)
                if name == b"Content-Length"
                else request(b"POST", b"/v1/notifications", headers, body),
                plain_ok=name == b"Content-Length",  # a length that is no number: the parser's
            )
    yield Case("X-Request-Id a token", _post([(b"X-Request-Id", TOKEN_64.encode())], b"{}"))
    yield Case("X-Request-Id a bearer", _post([(b"X-Request-Id", BEARER)], b"{}"))
    yield Case("X-Request-Id huge", _post([(b"X-Request-Id", b"r" * 5000)], b"{}"))
    yield Case(
        "X-Request-Id CRLF escape", _post([(b"X-Request-Id", b"a%0d%0aSet-Cookie: x")], b"{}")
    )
    yield Case(
        "two X-Request-Ids",
        _post([(b"X-Request-Id", b"a"), (b"X-Request-Id", TOKEN_16.encode())], b"{}"),
    )
    # Framing the HTTP parser refuses.
    plain = {"plain_ok": True}
    yield Case(
        "two Content-Lengths",
        _post([(b"Content-Length", b"2"), (b"Content-Length", b"3")], b"{}", length=False),
        **plain,
    )
    yield Case(
        "negative Content-Length", _post([(b"Content-Length", b"-1")], length=False), **plain
    )
    yield Case(
        "Content-Length not a number", _post([(b"Content-Length", b"abc")], length=False), **plain
    )
    yield Case(
        "Content-Length over the cap", _post([(b"Content-Length", b"99999999999")], length=False)
    )
    yield Case(
        "Content-Length and chunked",
        _post(
            [(b"Content-Length", b"2"), (b"Transfer-Encoding", b"chunked")],
            b"0\r\n\r\n",
            length=False,
        ),
        **plain,
    )
    yield Case(
        "chunked, bad size",
        _post([(b"Transfer-Encoding", b"chunked")], b"zz\r\n{}\r\n0\r\n\r\n", length=False),
        **plain,
    )
    yield Case(
        "chunked, bad JSON",
        _post([(b"Transfer-Encoding", b"chunked")], b"2\r\n{]\r\n0\r\n\r\n", length=False),
    )
    yield Case(
        "chunked, over the cap",
        _post(
            [(b"Transfer-Encoding", b"chunked")],
            b"".join([b"10000\r\n" + b" " * 0x10000 + b"\r\n"] * 17) + b"0\r\n\r\n",
            length=False,
        ),
    )
    yield Case(
        "unknown transfer coding",
        _post([(b"Transfer-Encoding", b"gzip")], b"{}", length=False),
        **plain,
    )
    yield Case("header NUL", _post([(b"X-Thing", b"a\x00b")], b"{}"), **plain)
    yield Case("header CR", _post([(b"X-Thing", b"a\rb")], b"{}"), **plain)
    yield Case(
        "folded Authorization",
        request(b"GET", b"/v1/queue", [(b"Authorization", f"BEARER\r\n {API_TOKEN}".encode())]),
        **plain,
    )
    yield Case("folded header", _post([(b"X-Thing", b"a\r\n b")], b"{}"), **plain)
    yield Case(
        "header over 8190 bytes",
        request(
            b"GET", b"/v1/queue", [(b"Authorization", f"BEARER {API_TOKEN}".encode() + b"A" * 9000)]
        ),
        **plain,
    )
    yield Case(
        "bad header name",
        request(b"GET", b"/v1/queue", [(f"Authorization Bearer {API_TOKEN}".encode(), b"x")]),
        **plain,
    )
    yield Case(
        "header without colon",
        b"GET /v1/queue HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization BEARER {API_TOKEN}".encode()
        + b"\r\n\r\n",
        **plain,
    )
    yield Case(
        "too many headers",
        request(b"GET", b"/v1/queue", [(b"X-H%d" % i, b"v") for i in range(100)]),
        **plain,
    )
    yield Case(
        "space before colon", request(b"GET", b"/v1/queue", [(b"Authorization ", BEARER)]), **plain
    )
    yield Case(
        "no Host, HTTP/1.1", b"GET /v1/queue HTTP/1.1\r\nConnection: close\r\n\r\n", plain_ok=True
    )
    yield Case(
        "two Hosts",
        request(b"GET", b"/v1/queue", [(b"Host", b"a"), (b"Host", b"b")]),
        plain_ok=True,
    )
    yield Case("Expect 100-continue, bad body", _post([(b"Expect", b"100-continue"), *JSON], b"{]"))
    yield Case("Expect unknown", _post([(b"Expect", b"teapot"), *JSON], b"{]"))


def protocol_cases() -> Iterator[Case]:
    yield Case(
        "HTTP/1.0 bad body",
        request(
            b"POST", b"/v1/notifications", [(b"Authorization", BEARER)], b"{]", version=b"HTTP/1.0"
        ),
    )
    yield Case(
        "HTTP/1.0 no auth", request(b"GET", b"/v1/queue", [], version=b"HTTP/1.0", close=False)
    )
    yield Case(
        "HTTP/1.0 keep-alive unknown route",
        request(
            b"GET", b"/nope", [(b"Connection", b"keep-alive")], version=b"HTTP/1.0", close=False
        ),
    )
    yield Case("HTTP/0.9", b"GET /v1/queue\r\n\r\n", plain_ok=True)
    yield Case("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", plain_ok=True)
    yield Case("HTTP/3.0", b"GET /v1/queue HTTP/3.0\r\nHost: x\r\n\r\n", plain_ok=True)
    yield Case(
        "garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, plain_ok=True
    )
    yield Case(
        "TLS hello",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(32)),
        plain_ok=True,
    )
    first = request(b"GET", b"/v1/queue", [], close=False)
    second = request(
        b"POST", b"/v1/notifications", [(b"Authorization", BEARER), *JSON], b"{]", close=False
    )
    third = request(b"GET", b"/nope", [(b"Authorization", BEARER)])
    yield Case("pipelined three", first + second + third, responses=3)
    yield Case("pipelined bad bodies", second * 4 + third, responses=5)
    yield Case(
        "pipelined auth probes",
        b"".join(
            request(b"GET", b"/v1/queue", headers, close=False)
            for _, headers in BAD_AUTHORIZATIONS[:6]
        )
        + third,
        responses=7,
    )


def scoped_cases() -> Iterator[Case]:
    """A credential scoped to app dev: another app and an unknown one get the same answer."""
    scoped = [(b"Authorization", f"Bearer {SCOPED_TOKEN}".encode()), *JSON]
    for app in (b"other", b"nope"):
        yield Case(
            f"scoped, device of {app.decode()}",
            request(b"GET", b"/v1/devices/" + app + b"/" + TOKEN_64.encode(), scoped),
            status=403,
        )
        yield Case(
            f"scoped, delete device of {app.decode()}",
            request(b"DELETE", b"/v1/devices/" + app + b"/" + TOKEN_64.encode(), scoped),
            status=403,
        )
        yield Case(
            f"scoped, push to {app.decode()}",
            request(b"POST", b"/v1/notifications", scoped, api(app=f'"{app.decode()}"')),
            status=403,
        )
        yield Case(
            f"scoped, GMS push to {app.decode()}",
            request(b"POST", b"/gms/push", scoped, gms('"hi"', f"{app.decode()}:{TOKEN_64}")),
            status=403,
        )
    yield Case("scoped, queue totals", request(b"GET", b"/v1/queue", scoped), status=403)


def slow_cases() -> Iterator[Case]:
    # Stalled bodies run out the relay's 10 s body-read timeout (408); they run beside the rest.
    body = api()
    for path in POST_ROUTES:
        auth = BASIC if path == b"/gms/push" else BEARER
        yield Case(
            f"stalled body: {path.decode()}",
            request(b"POST", path, [(b"Authorization", auth), *JSON], body),
            withhold=len(body) // 2,
            status=408,
        )
    yield Case(
        "stalled chunked body",
        _post([*JSON, (b"Transfer-Encoding", b"chunked")], b"100\r\n{", length=False),
        withhold=1,
        status=408,
    )
    body = api(ttl_seconds='"soon"')
    yield Case("slow client, bad body", _post(JSON, body), chunk_bytes=16)
    yield Case("slow client, no credential", request(b"GET", b"/v1/queue", []), chunk_bytes=4)
    yield Case(
        "slow client, pipelined",
        request(b"GET", b"/v1/queue", [], close=False) * 2 + request(b"GET", b"/x", []),
        responses=3,
        chunk_bytes=32,
    )


def catalogue() -> list[Case]:
    cases = [
        *auth_cases(),
        *body_cases(),
        *encoding_cases(),
        *path_cases(),
        *method_cases(),
        *header_cases(),
        *protocol_cases(),
        *scoped_cases(),
        *slow_cases(),
    ]
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "catalogue names must be distinct"
    assert len({case.raw for case in cases}) == len(cases), "catalogue requests must be distinct"
    return cases
