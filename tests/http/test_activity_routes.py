"""Live Activity registration over HTTP: stored with the service's lifetime, scoped, refused
with problem+json when wrong (and then nothing stored)."""

from __future__ import annotations

from pathlib import Path

import redis.asyncio as aioredis
from relay_harness import RelayHarness, running_relay
from test_api_auth import DEV_TOKEN, OTHER_TOKEN, scoped_call, two_app_relay
from test_api_input import assert_problem, refused

from relay.http.app import openapi_document
from relay.store.activity_store import PUSH_TO_START_TTL_S
from relay.store.keys import activity_key, push_to_start_key

SERVICE = "3SQI3S31693JL9L3R00506T40C000U73"
ACTIVITY_TOKEN = "a1" * 40  # Apple does not promise a length: a longer one must pass too
DEVICE = "d4" * 32
LIVE_ACTIVITY = {"live_activity": {"service_lifetime_s": 600}}


async def gms_pushed(relay: RelayHarness, service_id: str = SERVICE, device: str = DEVICE) -> None:
    """GMS pushes the service to the device: from then on that device may register its
    activity (and no other)."""
    message = {"_id": service_id, "_action": "get-dialog-user-confirmation-provide_code-true"}
    status, answer, _ = await relay.gms_push(device, message)
    assert status == 200, answer


async def test_register_then_forget_an_activity(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    async with running_relay(redis_url, state_dir, app=LIVE_ACTIVITY) as relay:
        await gms_pushed(relay)
        path = f"/v1/activities/dev/{SERVICE}"
        body = {"activity_token": ACTIVITY_TOKEN.upper(), "device_token": DEVICE}
        status, answer, _ = await relay.call("PUT", path, body)
        assert (status, answer) == (200, {"service_id": SERVICE, "expires_in_s": 600})
        key = activity_key("dev", SERVICE)
        assert await redis.hgetall(key) == {
            b"gms_device_token": DEVICE.encode(),
            b"activity_token": ACTIVITY_TOKEN.encode(),
            b"device_token": DEVICE.encode(),
        }
        assert 590 <= await redis.ttl(key) <= 600

        status, answer, _ = await relay.call("DELETE", f"{path}?device_token={DEVICE}")
        assert (status, answer) == (200, {"removed": True})
        assert await redis.hgetall(key) == {b"gms_device_token": DEVICE.encode()}
        status, answer, _ = await relay.call("DELETE", f"{path}?device_token={DEVICE}")
        assert (status, answer) == (200, {"removed": False})

        status, answer, _ = await relay.call(
            "PUT", f"/v1/devices/dev/{DEVICE}/push-to-start", {"push_to_start_token": "B7" * 32}
        )
        assert (status, answer) == (200, {"registered": True})
        pts = push_to_start_key("dev", DEVICE)
        assert await redis.get(pts) == ("b7" * 32).encode()
        assert PUSH_TO_START_TTL_S - 10 <= await redis.ttl(pts) <= PUSH_TO_START_TTL_S
        status, answer, _ = await relay.call("DELETE", f"/v1/devices/dev/{DEVICE}/push-to-start")
        assert (status, answer) == (200, {"removed": True})
        assert await redis.exists(pts) == 0


async def test_bad_registrations_are_refused_and_store_nothing(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    async with running_relay(redis_url, state_dir, app=LIVE_ACTIVITY) as relay:
        path = f"/v1/activities/dev/{SERVICE}"
        cases = [
            (
                {"activity_token": "xyz", "device_token": DEVICE},
                "activity_token",
                "must be 8 to 200 hex digits",
            ),
            (
                {"activity_token": "0123456789abcdeg", "device_token": DEVICE},
                "activity_token",
                'received 16 characters, "g" at 16 not a hex digit',
            ),
            ({"activity_token": ACTIVITY_TOKEN}, "device_token", "is required"),
            (
                {"activity_token": 5, "device_token": DEVICE},
                "activity_token",
                "must be a string; received 5",
            ),
            (
                {"activity_token": ACTIVITY_TOKEN, "device_token": DEVICE, "x": 1},
                "x",
                "is not a field here (allowed: activity_token, device_token)",
            ),
        ]
        for body, field, rule in cases:
            assert_problem(await refused(relay, redis, "PUT", path, body), 400, field, rule)
        assert_problem(
            await refused(relay, redis, "PUT", path, b"{not json"), 400, "body", "not valid JSON"
        )
        assert_problem(
            await refused(
                relay,
                redis,
                "PUT",
                f"/v1/activities/dev/{'s' * 129}",
                {"activity_token": ACTIVITY_TOKEN, "device_token": DEVICE},
            ),
            400,
            "service_id",
            "at most 128",
        )
        assert_problem(
            await refused(
                relay,
                redis,
                "PUT",
                "/v1/devices/dev/zz/push-to-start",
                {"push_to_start_token": DEVICE},
            ),
            400,
            "token",
            "8 to 200 hex digits",
        )
        assert_problem(
            await refused(
                relay,
                redis,
                "PUT",
                f"/v1/activities/nosuch/{SERVICE}",
                {"activity_token": ACTIVITY_TOKEN, "device_token": DEVICE},
            ),
            404,
            "app",
            "nosuch",
        )


async def test_an_app_without_live_activities_refuses_registrations(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        answer = await refused(
            relay,
            redis,
            "PUT",
            f"/v1/activities/dev/{SERVICE}",
            {"activity_token": ACTIVITY_TOKEN, "device_token": DEVICE},
        )
        assert_problem(answer, 404, "app", "no live_activity section")


async def test_a_scoped_credential_registers_only_for_its_app(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    async with (
        running_relay(redis_url, state_dir, app=LIVE_ACTIVITY) as relay,
        two_app_relay(relay, LIVE_ACTIVITY) as url,
    ):
        await gms_pushed(relay)
        body = {"activity_token": ACTIVITY_TOKEN, "device_token": DEVICE}
        path = f"/v1/activities/dev/{SERVICE}"
        answer = await scoped_call(relay.session, url, f"Bearer {OTHER_TOKEN}", "PUT", path, body)
        assert_problem(answer, 403, "app", "may not act for app 'dev'")
        assert await redis.hget(activity_key("dev", SERVICE), "activity_token") is None
        answer = await scoped_call(relay.session, url, f"Bearer {DEV_TOKEN}", "PUT", path, body)
        assert answer[0] == 200, answer


def test_the_routes_are_documented() -> None:
    paths = openapi_document()["paths"]
    assert set(paths["/v1/activities/{app}/{service_id}"]) == {"put", "delete"}
    assert set(paths["/v1/devices/{app}/{token}/push-to-start"]) == {"put", "delete"}
    delete = paths["/v1/activities/{app}/{service_id}"]["delete"]
    assert [(p["name"], p["in"], p["required"]) for p in delete["parameters"]] == [
        ("app", "path", True),
        ("service_id", "path", True),
        ("device_token", "query", True),
    ]
    schemas = openapi_document()["components"]["schemas"]
    assert schemas["ActivityIn"]["required"] == ["activity_token", "device_token"]
