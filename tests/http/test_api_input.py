"""API input handling: each bad input gets a problem+json naming field and rule; nothing stored."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from aiohttp import web
from relay_harness import API_TOKEN, RelayHarness, running_relay

from relay.core.payload import PushSpec, build_notification
from relay.http.app import create_app, server_options
from relay.http.body import MAX_JSON_DEPTH, json_depth_exceeds
from relay.http.limits import ApiLimits
from relay.http.problems import Problem
from relay.http.state import RelayState
from relay.runtime import bound_address
from relay.store.keys import DEAD, shard_prefix
from relay.store.queue import MAX_BATCH

TOKEN = "a1" * 32
PROBLEM_JSON = "application/problem+json"
Snapshot = dict[bytes, tuple[bytes | None, bool]]


def token(n: int) -> str:
    return f"{n:064x}"


async def snapshot(redis: aioredis.Redis) -> Snapshot:
    """Every key's serialized value and whether it expires."""
    keys = sorted([key async for key in redis.scan_iter(count=1000)])
    return {key: (await redis.dump(key), await redis.pttl(key) > 0) for key in keys}


def assert_problem(
    answer: tuple[int, Any, Mapping[str, str]], status: int, field: str | None, rule: str
) -> dict[str, Any]:
    code, body, headers = answer
    assert code == status, body
    assert headers["Content-Type"].startswith(PROBLEM_JSON), headers
    assert body["status"] == status
    assert body["type"].startswith("urn:gms-apns-relay:problem:")
    assert body.get("field") == field, body
    assert rule in body["detail"], body
    return dict(body)


async def refused(
    relay: RelayHarness, redis: aioredis.Redis, method: str, path: str, body: Any = None, **kw: Any
) -> tuple[int, Any, Mapping[str, str]]:
    """Make a call that must change nothing in Redis, and return its answer."""
    before = await snapshot(redis)
    answer = await relay.call(method, path, body, **kw)
    assert await snapshot(redis) == before, "a refused request changed Redis"
    return answer


async def queue_not_due(relay: RelayHarness, device_token: str, count: int) -> None:
    """Queue `count` notifications straight into Redis, due an hour from now so the worker
    leaves them queued: a device or shard that stays full."""
    app = relay.settings.apps[0]
    now_s = int(time.time())
    for _ in range(count):
        notification = build_notification(
            PushSpec(device_token=device_token, alert="hold"),
            app.profile(),
            now_s=now_s,
            default_ttl_s=7200,
            max_ttl_s=7200,
        )
        await relay.queue.enqueue(notification, now_ms=(now_s + 3600) * 1000)


async def test_malformed_json(redis_url: str, state_dir: Path, redis: aioredis.Redis) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        for path in ("/v1/notifications", "/v1/notifications:batch", "/gms/push"):
            answer = await refused(relay, redis, "POST", path, b'{"device_token": ', auth="basic")
            assert_problem(answer, 400, "body", "not valid JSON")


async def test_wrong_types(redis_url: str, state_dir: Path, redis: aioredis.Redis) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        for field, value, rule in (
            ("badge", "5", 'must be an integer; received "5"'),
            ("badge", False, "must be an integer; received false"),
            ("priority", True, "must be 1, 5 or 10; received true"),
            ("ttl", [60], "must be an integer; received a list of 1 item"),
            ("alert", 7, "must be a string or an object; received 7"),
            ("extra", "x", 'must be an object; received "x"'),
        ):
            body = {"device_token": TOKEN, field: value}
            answer = await refused(relay, redis, "POST", "/v1/notifications", body)
            problem = assert_problem(answer, 400, field, rule)
            assert problem["detail"] == rule
        answer = await refused(relay, redis, "POST", "/v1/notifications", [TOKEN])
        assert_problem(answer, 400, "body", "must be an object; received a list of 1 item")
        answer = await refused(
            relay, redis, "POST", "/v1/notifications", {"device_token": TOKEN, "colour": "red"}
        )
        assert_problem(answer, 400, "colour", "is not a field here (allowed: action, alert, app,")


async def test_device_token_not_hex(redis_url: str, state_dir: Path, redis: aioredis.Redis) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        for bad in ("zz" * 32, "abc", "a" * 63, "a" * 202):
            answer = await refused(relay, redis, "POST", "/v1/notifications", {"device_token": bad})
            assert_problem(answer, 400, "device_token", "")
        answer = await refused(
            relay, redis, "POST", "/gms/push", {"deviceId": "xyz", "message": "hi"}
        )
        assert_problem(answer, 400, "deviceId", "hex")


async def test_unknown_app(redis_url: str, state_dir: Path, redis: aioredis.Redis) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        body = {"device_token": TOKEN, "app": "nope"}
        answer = await refused(relay, redis, "POST", "/v1/notifications", body)
        assert_problem(
            answer, 400, "app", 'must be a configured app (configured: dev); received "nope"'
        )
        gms = {"deviceId": f"nope:{TOKEN}", "message": "hi"}
        answer = await refused(relay, redis, "POST", "/gms/push", gms)
        assert_problem(
            answer, 400, "app", 'must be a configured app (configured: dev); received "nope"'
        )


async def test_payload_over_4096_bytes_once_built(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        body = {"device_token": TOKEN, "alert": "x" * 3000, "extra": {"pad": "y" * 1100}}
        answer = await refused(relay, redis, "POST", "/v1/notifications", body)
        assert_problem(answer, 413, "payload", "at most 4096")
        # The same size is fine for VoIP, whose limit is 5120.
        await relay.notify(**body, push_type="voip")


async def test_expired_on_arrival(redis_url: str, state_dir: Path, redis: aioredis.Redis) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        body = {"device_token": TOKEN, "expires_at": int(time.time()) - 60}
        answer = await refused(relay, redis, "POST", "/v1/notifications", body)
        assert_problem(answer, 422, "expires_at", "expired on arrival")


async def test_dead_token_is_refused_with_410(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        await relay.control.unregister(TOKEN)
        await relay.wait_state(await relay.notify(device_token=TOKEN, alert="a"), {"failed"})
        answer = await refused(
            relay, redis, "POST", "/v1/notifications", {"device_token": TOKEN, "alert": "b"}
        )
        assert_problem(answer, 410, "device_token", "dead")
        gms = {"deviceId": TOKEN, "message": "c"}
        assert_problem(
            await refused(relay, redis, "POST", "/gms/push", gms, auth="basic"),
            410,
            "device_token",
            "dead",
        )


async def test_body_over_the_size_cap(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    async with running_relay(redis_url, state_dir, http={"max_body_bytes": 2048}) as relay:
        big = orjson.dumps({"device_token": TOKEN, "alert": "x" * 3000})
        answer = await refused(relay, redis, "POST", "/v1/notifications", big)
        assert_problem(answer, 413, "body", "2048 bytes")

        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: caught while reading
            for start in range(0, len(big), 512):
                yield big[start : start + 512]

        before = await snapshot(redis)
        async with relay.session.post(
            relay.url + "/v1/notifications:batch",
            data=chunks(),
            headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"},
        ) as response:
            answer = (response.status, await response.json(content_type=None), response.headers)
        assert_problem(answer, 413, "body", "2048 bytes")
        assert await snapshot(redis) == before


async def test_device_queue_full_is_429_with_retry_after(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    async with running_relay(redis_url, state_dir, queue={"max_per_device": 2}) as relay:
        await queue_not_due(relay, TOKEN, 2)
        answer = await refused(
            relay, redis, "POST", "/v1/notifications", {"device_token": TOKEN, "alert": "c"}
        )
        assert_problem(answer, 429, "device_token", "2 notifications queued")
        assert int(answer[2]["Retry-After"]) >= 1


async def test_global_pending_cap_is_503_with_retry_after(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    sections = {"redis": {"shards": 1}, "queue": {"max_pending": 2}}
    async with running_relay(redis_url, state_dir, **sections) as relay:
        await queue_not_due(relay, token(1), 1)
        await queue_not_due(relay, token(2), 1)
        answer = await refused(
            relay, redis, "POST", "/v1/notifications", {"device_token": token(3), "alert": "c"}
        )
        assert_problem(answer, 503, "device_token", "maximum of 2 undelivered")
        assert int(answer[2]["Retry-After"]) >= 1


def nested(depth: int) -> Any:
    """A notification body whose arrays and objects nest exactly `depth` deep."""
    inner: Any = 1
    for _ in range(depth - 2):  # the body object and `extra` are two levels
        inner = [inner]
    return {"device_token": TOKEN, "alert": "deep", "extra": {"deep": inner}}


def test_json_depth_counts_arrays_and_objects() -> None:
    assert not json_depth_exceeds(nested(MAX_JSON_DEPTH), MAX_JSON_DEPTH)
    assert json_depth_exceeds(nested(MAX_JSON_DEPTH + 1), MAX_JSON_DEPTH)
    assert not json_depth_exceeds("scalar", 0)
    assert json_depth_exceeds({"a": [{}]}, 2)


async def test_json_nested_too_deep(redis_url: str, state_dir: Path, redis: aioredis.Redis) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        for path in ("/v1/notifications", "/gms/push"):
            too_deep = nested(MAX_JSON_DEPTH + 1)
            answer = await refused(relay, redis, "POST", path, too_deep, auth="basic")
            assert_problem(answer, 400, "body", f"at most {MAX_JSON_DEPTH}")
        # Deeper than orjson itself parses: still this limit's answer, not "malformed".
        hostile = b"[" * 5000 + b"]" * 5000
        answer = await refused(relay, redis, "POST", "/v1/notifications", hostile)
        assert_problem(answer, 400, "body", f"at most {MAX_JSON_DEPTH}")
        await relay.notify(**nested(MAX_JSON_DEPTH))


async def test_batch_answers_per_item_and_stores_only_the_valid(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        items = [
            {"device_token": await relay.device_token(), "alert": "ok"},
            {"device_token": "zz"},
            {"device_token": token(2), "app": "nope"},
            {"device_token": token(3), "expires_at": 1},
            {"device_token": token(4), "alert": "x" * 4100},
            {"device_token": token(5), "alert": "ok", "badge": "1"},
        ]
        status, body, _ = await relay.call(
            "POST", "/v1/notifications:batch", {"notifications": items}
        )
        assert status == 200, body
        assert (body["accepted"], body["rejected"]) == (1, 5)
        first, *rest = body["results"]
        assert first["status"] == 202
        expected = [
            (400, "notifications[1].device_token"),
            (400, "notifications[2].app"),
            (422, "notifications[3].expires_at"),
            (413, "notifications[4].payload"),
            (400, "notifications[5].badge"),
        ]
        assert [(r["status"], r["problem"]["field"]) for r in rest] == expected
        assert all(r["problem"]["detail"] for r in rest)
        # Only the valid item's device holds anything.
        queued = {key async for key in redis.scan_iter(match="relay:*:q:*")}
        notes = {key async for key in redis.scan_iter(match="relay:*:n:*")}
        assert len(notes) == 1
        assert len(queued) <= 1
        await relay.wait_state(first["id"], {"delivered"})


async def test_a_batch_item_whose_device_key_is_unreadable_is_refused_alone(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    """A key of one item's device that is not of the relay's type (its dead-token mark a
    string): that item gets its own problem, the others are stored and counted (invariant 14)."""
    async with running_relay(redis_url, state_dir) as relay:
        app = relay.settings.apps[0].name
        tokens = await relay.device_tokens(3)
        shard = relay.queue.shard_of(app, tokens[1])
        await redis.set(f"{shard_prefix(shard)}{DEAD}{app}:{tokens[1]}", "not a hash")
        items = [{"device_token": t, "alert": "ok"} for t in tokens]
        status, body, _ = await relay.call(
            "POST", "/v1/notifications:batch", {"notifications": items}
        )
        assert status == 200, body
        assert (body["accepted"], body["rejected"]) == (2, 1)
        first, refused_item, last = body["results"]
        problem = refused_item["problem"]
        assert (refused_item["status"], problem["type"], problem["field"]) == (
            500,
            "urn:gms-apns-relay:problem:stored-key-unreadable",
            "notifications[1].device_token",
        )
        assert "WRONGTYPE" in problem["detail"]
        for item in (first, last):
            await relay.wait_state(item["id"], {"delivered"})
        assert (await relay.queue.totals()).pending == 0


async def test_batch_over_the_item_limit_stores_nothing(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        items = [{"device_token": token(i + 1)} for i in range(MAX_BATCH + 1)]
        answer = await refused(
            relay, redis, "POST", "/v1/notifications:batch", {"notifications": items}
        )
        assert_problem(answer, 400, "notifications", str(MAX_BATCH))
        empty = await refused(
            relay, redis, "POST", "/v1/notifications:batch", {"notifications": []}
        )
        assert_problem(empty, 400, "notifications", "at least 1")


async def test_device_routes_refuse_bad_token_and_unknown_app(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        device_token = await relay.device_token()
        await relay.wait_state(
            await relay.notify(device_token=device_token, alert="a"), {"delivered"}
        )
        app = relay.settings.apps[0].name
        for method in ("GET", "DELETE"):
            answer = await refused(relay, redis, method, f"/v1/devices/{app}/xyz1")
            assert_problem(answer, 400, "token", 'received 4 characters, "x" at 1 not a hex digit')
            answer = await refused(relay, redis, method, f"/v1/devices/nope/{device_token}")
            assert_problem(answer, 404, "app", "must be a configured app (configured: dev); receiv")
        status, device, _ = await relay.call("GET", f"/v1/devices/{app}/{device_token.upper()}")
        assert (status, device["pending"], device["dead"]) == (200, 0, None)


async def test_unknown_notification_is_404(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        for unknown in ("00-" + "0" * 32, "nonsense", "9" * 500, "99999999999999999999-ab"):
            answer = await refused(relay, redis, "GET", f"/v1/notifications/{unknown}")
            assert_problem(answer, 404, "id", "no such notification")


async def test_unknown_route_and_wrong_method_are_problems(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        assert_problem(await refused(relay, redis, "GET", "/v2/nothing"), 404, "path", "route")
        answer = await refused(relay, redis, "PUT", "/v1/notifications")
        assert_problem(answer, 405, "method", "PUT is not allowed")
        assert "POST" in answer[2]["Allow"]


async def test_draining_refuses_ingest_with_503(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        relay.state.draining = True
        answer = await refused(relay, redis, "POST", "/v1/notifications", {"device_token": TOKEN})
        assert_problem(answer, 503, None, "shutting down")
        assert answer[2]["Retry-After"] == "1"


async def raw_exchange(url: str, request: bytes, timeout_s: float = 5.0) -> tuple[bytes, float]:
    """Send `request` bytes as they are; read one answer, or b"" if the server just closes.
    Returns the answer and the seconds until it ended."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(timeout_s):
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as closed:
                return closed.partial, time.monotonic() - started
            length = int(parse_answer(head)[1].get("content-length", "0"))
            answer = head + await reader.readexactly(length)
    finally:
        writer.close()
    return answer, time.monotonic() - started


def parse_answer(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    return int(status_line.split()[1]), headers, body


@contextlib.asynccontextmanager
async def limited_server(state: RelayState) -> AsyncIterator[str]:
    """The relay's app served with server_options(), as the api process serves it."""
    application = create_app(state)
    runner = web.AppRunner(
        application, access_log=None, handle_signals=False, **server_options(application)
    )
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield bound_address(runner)
    finally:
        await runner.cleanup()


async def test_slow_body_is_408_and_stores_nothing(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        relay.state.limits = ApiLimits(body_read_timeout_s=0.3, linger_s=0.3)
        before = await snapshot(redis)
        request = (
            "POST /v1/notifications HTTP/1.1\r\nHost: relay\r\n"
            f"Authorization: Bearer {API_TOKEN}\r\nContent-Type: application/json\r\n"
            "Content-Length: 100\r\n\r\n"
            f'{{"device_token": "{TOKEN}"'
        ).encode()
        async with limited_server(relay.state) as url:
            host, port = url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            started = time.monotonic()
            writer.write(request)
            async with asyncio.timeout(5):
                answer = await reader.read(65536)
                # The slow client is cut off once it had its answer and a short linger.
                assert await reader.read() == b""
            writer.close()
            closed_after = time.monotonic() - started
        status, headers, body = parse_answer(answer)
        assert status == 408
        assert headers["content-type"].startswith(PROBLEM_JSON)
        assert headers["connection"] == "close"
        problem = orjson.loads(body)
        assert problem["field"] == "body"
        assert "0.3 s" in problem["detail"]
        assert closed_after < 3, "the relay kept the slow client's connection"
        assert await snapshot(redis) == before


async def test_header_limits_and_slow_request_heads(redis_url: str, state_dir: Path) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        relay.state.limits = ApiLimits(idle_timeout_s=0.3, max_header_bytes=1024, max_headers=16)
        async with limited_server(relay.state) as url:
            head = f"GET /v1/queue HTTP/1.1\r\nHost: relay\r\nAuthorization: Bearer {API_TOKEN}\r\n"
            answer, _ = await raw_exchange(url, (head + "\r\n").encode())
            assert parse_answer(answer)[0] == 200

            long_header = head + f"X-Pad: {'p' * 2000}\r\n\r\n"
            answer, _ = await raw_exchange(url, long_header.encode())
            assert parse_answer(answer)[0] in (400, 431)

            many = head + "".join(f"X-H{i}: v\r\n" for i in range(20)) + "\r\n"
            answer, _ = await raw_exchange(url, many.encode())
            assert parse_answer(answer)[0] in (400, 431)

            # A head that never ends: the connection is closed, nothing is answered.
            answer, seconds = await raw_exchange(url, head.encode())
            assert answer == b""
            assert seconds < 3


async def test_request_id_is_echoed_only_when_it_looks_like_one(
    redis_url: str, state_dir: Path
) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        for offered in ("ok-id.1", "x" * 300, "bad id\t"):
            _, _, headers = await relay.call("GET", "/healthz", headers={"X-Request-Id": offered})
            assert (headers["X-Request-Id"] == offered) == (offered == "ok-id.1")


async def test_an_idempotency_key_repeats_only_with_the_same_request(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        device = await relay.device_token()
        first = {"device_token": device, "alert": "first", "idempotency_key": "k1", "ttl": 60}
        status, accepted, _ = await relay.call("POST", "/v1/notifications", first)
        assert (status, accepted["duplicate"]) == (202, False), accepted
        # The same request again (a retry; the token in upper case is the same token).
        again = {**first, "device_token": device.upper()}
        status, repeated, _ = await relay.call("POST", "/v1/notifications", again)
        assert (status, repeated["id"], repeated["duplicate"]) == (202, accepted["id"], True)
        # Delivered first, so Redis holds still while the refusals below are checked against it.
        await relay.wait_state(accepted["id"], {"delivered"})
        # Another alert, priority or ttl under the key is not silently dropped: 409.
        for change in ({"alert": "second"}, {"priority": 5}, {"ttl": 120}):
            answer = await refused(relay, redis, "POST", "/v1/notifications", {**first, **change})
            problem = assert_problem(answer, 409, "idempotency_key", accepted["id"])
            assert problem["type"].endswith(":idempotency-key-reused")
            assert problem["notification_id"] == accepted["id"]
        batch = {"notifications": [first, {**first, "alert": "second"}]}
        status, results, _ = await relay.call("POST", "/v1/notifications:batch", batch)
        assert status == 200, results
        same, different = results["results"]
        assert (same["status"], same["id"], same["duplicate"]) == (202, accepted["id"], True)
        assert different["status"] == 409
        assert different["problem"]["field"] == "notifications[1].idempotency_key"
        assert different["problem"]["notification_id"] == accepted["id"]


async def test_the_depth_limit_holds_for_a_message_sent_as_a_json_string(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        for depth in (MAX_JSON_DEPTH + 1, 200, 600):
            inner = '{"a": ' + "[" * depth + "]" * depth + "}"
            body = {"deviceId": TOKEN, "message": inner}
            answer = await refused(relay, redis, "POST", "/gms/push", body, auth="basic")
            assert_problem(answer, 400, "message", f"at most {MAX_JSON_DEPTH} are allowed")
        fine = '{"_id": "S1", "_action": "x", "a": ' + "[" * 20 + "]" * 20 + "}"
        status, answer, _ = await relay.gms_push(TOKEN, fine)
        assert status == 200, answer


def test_a_problem_quoting_non_utf8_header_bytes_is_still_json() -> None:
    # aiohttp hands a header's non-UTF-8 bytes over as surrogates, which orjson refuses.
    problem = Problem(415, "x", "Content-Encoding 'gz\udcffip'", field="Content-\udcfe")
    # A problem's response is built from bytes; aiohttp types a body as any payload.
    body = orjson.loads(cast(bytes, problem.response().body))
    assert body["detail"] == "Content-Encoding 'gz\\udcffip'"
    assert body["field"] == "Content-\\udcfe"
