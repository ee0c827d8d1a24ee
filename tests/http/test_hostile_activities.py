"""Live Activity registrations against a hostile holder of the app's credential (issue 27 item 4,
and item 6's one rule for service ids): every install of the app holds that credential, so a
registration is bound to the device GMS pushed the service to, a Live Activity's dead answer
marks only that activity's token, and registrations are limited per client address and
budgeted per app, with lifetimes no registration extends."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import redis.asyncio as aioredis
from eventually import eventually
from relay_harness import RelayHarness, running_relay
from seed_actions import CONFIRM_WITH_CODE

from relay.store.keys import activity_dead_key, activity_key, push_to_start_key

SERVICE = "3SQI3S31693JL9L3R00506T40C000U73"
LIVE_ACTIVITY: dict[str, Any] = {"live_activity": {"service_lifetime_s": 600}}


async def gms_event(relay: RelayHarness, device: str, service_id: str, action: str) -> str:
    status, answer, _ = await relay.gms_push(device, {"_id": service_id, "_action": action})
    assert status == 200, answer
    return str(answer["id"])


async def register(
    relay: RelayHarness, service_id: str, activity: str, device: str, **kw: Any
) -> tuple[int, Any]:
    path = f"/v1/activities/dev/{quote(service_id, safe='')}"
    body = {"activity_token": activity, "device_token": device}
    status, answer, _ = await relay.call("PUT", path, body, **kw)
    return status, answer


def problem_type(answer: Any) -> str:
    return str(answer["type"]).rsplit(":", 1)[-1]


async def test_a_registration_is_accepted_only_from_the_device_gms_pushed_the_service_to(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    async with running_relay(redis_url, state_dir, app=LIVE_ACTIVITY) as relay:
        victim, attacker, victim_activity, attacker_activity = await relay.device_tokens(4)
        key = activity_key("dev", SERVICE)
        # Before GMS pushed the service anywhere, nobody may register it.
        status, answer = await register(relay, SERVICE, attacker_activity, attacker)
        assert (status, problem_type(answer)) == (403, "activity-not-bound"), answer
        assert await redis.exists(key) == 0

        await gms_event(relay, victim, SERVICE, "wait-for-agent")
        # Knowing the service id is not enough: the attacker's own device is not the one.
        status, answer = await register(relay, SERVICE, attacker_activity, attacker)
        assert (status, problem_type(answer), answer["field"]) == (
            403,
            "activity-not-bound",
            "device_token",
        )
        assert await redis.hget(key, "activity_token") is None
        assert (await register(relay, SERVICE, victim_activity, victim))[0] == 200
        # Neither can the attacker take the victim's registration away.
        path = f"/v1/activities/dev/{SERVICE}"
        status, answer, _ = await relay.call("DELETE", path, params={"device_token": attacker})
        assert (status, answer) == (200, {"removed": False})
        assert (await redis.hget(key, "activity_token")) == victim_activity.encode()
        # A device token is no activity token.
        status, answer = await register(relay, SERVICE, victim, victim)
        assert (status, answer["field"]) == (400, "activity_token"), answer

        # The update goes to the victim's own activity, nowhere else.
        await relay.wait_state(
            await gms_event(relay, victim, SERVICE, CONFIRM_WITH_CODE), {"delivered"}
        )
        [update] = await relay.received(victim_activity, 1)
        assert update["payload"]["aps"]["event"] == "update"
        assert (await relay.control.notifications(token=attacker_activity))["notifications"] == []


async def test_a_dead_live_activity_token_never_marks_the_devices_own_token(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    """The attack of issue 27: register a victim's device token as one's own activity token,
    get it called dead by APNs, and the victim's /gms/push was answered 410 for 30 days. Now
    the dead mark is the activity token's alone."""
    async with running_relay(redis_url, state_dir, app=LIVE_ACTIVITY) as relay:
        victim, attacker = await relay.device_tokens(2)
        await gms_event(relay, attacker, SERVICE, "wait-for-agent")
        assert (await register(relay, SERVICE, victim, attacker))[0] == 200
        await relay.control.unregister(victim)  # APNs answers 410 Unregistered for it now
        await gms_event(relay, attacker, SERVICE, CONFIRM_WITH_CODE)
        await eventually(
            lambda: redis.exists(activity_dead_key("dev", victim)),
            what="APNs' dead answer remembered for the activity token",
        )
        assert (await relay.queue.device("dev", victim)).dead is None
        # The victim's own pushes are still accepted (before: 410 device-token-dead).
        status, answer, _ = await relay.gms_push(
            victim, {"_id": "OTHER-SERVICE", "_action": "wait-for-agent"}
        )
        assert (status, answer["pushed"]) == (200, True), answer
        # The next event of the attacker's service drops the dead registration.
        await gms_event(relay, attacker, SERVICE, "connect-inbound")
        assert await redis.hget(activity_key("dev", SERVICE), "activity_token") is None


async def test_registrations_are_limited_per_client_address(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    limited = {"live_activity": {"registrations_per_second": 0.01, "registration_burst": 3}}
    proxied = {"trusted_proxies": ["127.0.0.1/32"]}
    async with running_relay(redis_url, state_dir, app=limited, http=proxied) as relay:
        devices = await relay.device_tokens(5)
        activities = await relay.device_tokens(5)
        for i, device in enumerate(devices):
            await gms_event(relay, device, f"S{i}", "wait-for-agent")
        answers = [await register(relay, f"S{i}", activities[i], devices[i]) for i in range(4)]
        assert [status for status, _ in answers] == [200, 200, 200, 429]
        assert problem_type(answers[3][1]) == "rate-limited"
        assert await redis.hget(activity_key("dev", "S3"), "activity_token") is None
        # Behind a trusted proxy, each client's address counts on its own.
        other = {"X-Forwarded-For": "203.0.113.9, 127.0.0.1"}
        assert (await register(relay, "S3", activities[3], devices[3], headers=other))[0] == 200
        # A forged X-Forwarded-For from an untrusted peer is the peer's own address: still
        # limited (the proxy appends the real peer last).
        forged = {"X-Forwarded-For": "198.51.100.7"}
        status, _ = await register(relay, "S4", activities[4], devices[4], headers=forged)
        assert status == 200  # 198.51.100.7 via the trusted proxy: a client of its own
        status, _ = await register(relay, "S4", activities[4], devices[4], headers=forged)
        assert status == 200
        status, _ = await register(relay, "S4", activities[4], devices[4], headers=forged)
        assert status == 200
        status, answer = await register(relay, "S4", activities[4], devices[4], headers=forged)
        assert (status, problem_type(answer)) == (429, "rate-limited")


async def test_an_app_holds_at_most_its_budget_of_registrations_and_puts_extend_nothing(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    budget = {"live_activity": {"max_registrations": 2, "service_lifetime_s": 600}}
    async with running_relay(redis_url, state_dir, app=budget) as relay:
        devices = await relay.device_tokens(3)
        activities = await relay.device_tokens(3)
        for i, device in enumerate(devices):
            await gms_event(relay, device, f"S{i}", "wait-for-agent")
        statuses = [
            (await register(relay, f"S{i}", activities[i], devices[i]))[0] for i in range(3)
        ]
        assert statuses == [200, 200, 503]
        assert await redis.hget(activity_key("dev", "S2"), "activity_token") is None
        # A registration already counted is renewed within the budget...
        assert (await register(relay, "S0", activities[0], devices[0]))[0] == 200
        # ...but its lifetime runs from GMS's first push: a PUT does not extend it.
        await redis.expire(activity_key("dev", "S0"), 5)
        assert (await register(relay, "S0", activities[0], devices[0]))[0] == 200
        assert 0 < await redis.ttl(activity_key("dev", "S0")) <= 5
        await gms_event(relay, devices[0], "S0", CONFIRM_WITH_CODE)
        assert 0 < await redis.ttl(activity_key("dev", "S0")) <= 5

        pts = [f"/v1/devices/dev/{device}/push-to-start" for device in devices]
        body = {"push_to_start_token": activities[0]}
        statuses = [(await relay.call("PUT", path, body))[0] for path in pts]
        assert statuses == [200, 200, 503]
        assert await redis.exists(push_to_start_key("dev", devices[2])) == 0


async def test_a_service_id_with_braces_is_one_rule_on_gms_push_and_the_activity_routes(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    service = "svc{7}x"
    async with running_relay(redis_url, state_dir, app=LIVE_ACTIVITY) as relay:
        device, activity = await relay.device_tokens(2)
        await gms_event(relay, device, service, "wait-for-agent")
        assert (await register(relay, service, activity, device))[0] == 200
        assert await redis.hget(activity_key("dev", service), "activity_token") == activity.encode()
        path = f"/v1/activities/dev/{quote(service, safe='')}"
        status, answer, _ = await relay.call("DELETE", path, params={"device_token": device})
        assert (status, answer) == (200, {"removed": True})
