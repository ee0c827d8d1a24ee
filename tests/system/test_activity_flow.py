"""A GMS callback drives its Live Activity end to end: real relay, real Valkey, the strict APNs
simulator. The alert still goes out; the activity gets start/update/end on its own queue."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from eventually import eventually
from relay_harness import RelayHarness, running_relay
from seed_actions import CONFIRM_WITH_CODE

from relay.config.schema import DEFAULT_LIVE_ACTIVITY_STEPS
from relay.store.activity_store import ActivityStore
from relay.store.keys import activity_dead_key, activity_key, push_to_start_key

SERVICE = "3SQI3S31693JL9L3R00506T40C000U73"
LIVE_ACTIVITY = {"live_activity": {"stale_after_s": 900, "dismiss_after_s": 60}}


async def callback_event(relay: RelayHarness, device: str, action: str, **fields: Any) -> None:
    status, answer, _ = await relay.gms_push(device, {"_id": SERVICE, "_action": action, **fields})
    assert status == 200, answer
    assert answer["pushed"] is True, answer
    # One step at a time, as a customer lives it: a newer alert for the service would otherwise
    # supersede a queued older one (the relay's rule for alerts, not for Live Activities).
    await relay.wait_state(answer["id"], {"delivered"})


def aps(record: dict[str, Any]) -> dict[str, Any]:
    return dict(record["payload"]["aps"])


async def test_a_registered_activity_follows_the_callback_to_its_end(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    async with running_relay(redis_url, state_dir, app=LIVE_ACTIVITY) as relay:
        device, activity = await relay.device_tokens(2)
        # The app registers its activity once GMS's first push for the service reached it (the
        # relay accepts it only from the device GMS pushed the service to); that push's step
        # goes out too, as the activity's first update.
        await callback_event(relay, device, "wait-for-agent", estimated_wait_s=240)
        status, _, _ = await relay.call(
            "PUT",
            f"/v1/activities/dev/{SERVICE}",
            {"activity_token": activity, "device_token": device},
        )
        assert status == 200
        started = int(time.time())
        await callback_event(relay, device, "wait-for-agent", estimated_wait_s=240)
        await callback_event(relay, device, CONFIRM_WITH_CODE)
        await callback_event(relay, device, "connect-inbound")

        alerts = await relay.received(device, 4)
        assert [r["payload"]["message"]["_action"] for r in alerts] == [
            "wait-for-agent",
            "wait-for-agent",
            CONFIRM_WITH_CODE,
            "connect-inbound",
        ]
        assert all(r["headers"]["apns-push-type"] == "alert" for r in alerts)

        pushes = await relay.received(activity, 3)
        topic = relay.settings.apps[0].topic + ".push-type.liveactivity"
        assert [r["topic"] for r in pushes] == [topic] * 3
        assert [r["headers"]["apns-push-type"] for r in pushes] == ["liveactivity"] * 3
        assert [r["headers"]["apns-priority"] for r in pushes] == ["5", "10", "10"]
        events = [aps(r) for r in pushes]
        assert [e["event"] for e in events] == ["update", "update", "end"]
        assert [e["content-state"]["stage"] for e in events] == [
            "waiting",
            "agent-available",
            "connecting",
        ]
        assert events[0]["content-state"] == {
            "estimated_wait_s": 240,
            "stage": "waiting",
            "service_id": SERVICE,
            "label": DEFAULT_LIVE_ACTIVITY_STEPS["wait-for-agent"].label,
        }
        stamps = [e["timestamp"] for e in events]
        assert stamps == sorted(set(stamps)), "timestamps must strictly increase"
        assert started <= stamps[0]
        assert events[0]["stale-date"] - stamps[0] in range(899, 901)
        assert events[2]["dismissal-date"] - stamps[2] in range(57, 61)


async def test_wait_for_agent_starts_the_activity_by_push_to_start(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    async with running_relay(redis_url, state_dir, app=LIVE_ACTIVITY) as relay:
        device, push_to_start = await relay.device_tokens(2)
        status, _, _ = await relay.call(
            "PUT", f"/v1/devices/dev/{device}/push-to-start", {"push_to_start_token": push_to_start}
        )
        assert status == 200
        # Not a start action: with no activity registered, nothing is pushed to it.
        await callback_event(relay, device, CONFIRM_WITH_CODE)
        await callback_event(relay, device, "wait-for-agent")
        (start,) = await relay.received(push_to_start, 1)
        body = aps(start)
        assert body["event"] == "start"
        assert body["attributes-type"] == "CallbackAttributes"
        assert body["attributes"] == {"service_id": SERVICE}
        assert body["content-state"]["stage"] == "waiting"
        assert body["alert"]["title"]
        assert len(await relay.received(device, 2)) == 2  # both alerts went out as before


async def test_an_activity_token_apns_calls_dead_is_dropped(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    async with running_relay(redis_url, state_dir, app=LIVE_ACTIVITY) as relay:
        device = await relay.device_token()
        activity = "ee" * 32  # never issued by the (strict) simulator: BadDeviceToken
        await callback_event(relay, device, CONFIRM_WITH_CODE)
        status, _, _ = await relay.call(
            "PUT",
            f"/v1/activities/dev/{SERVICE}",
            {"activity_token": activity, "device_token": device},
        )
        assert status == 200
        await callback_event(relay, device, "wait-for-agent")
        await eventually(
            lambda: redis.exists(activity_dead_key("dev", activity)),
            what="the activity token marked dead",
        )
        # Marked for Live Activity pushes only: no device dead mark on that token.
        assert (await relay.queue.device("dev", activity)).dead is None
        # The next event finds the token dead: the registration goes, the alert still goes out.
        await callback_event(relay, device, CONFIRM_WITH_CODE)
        assert await redis.hget(activity_key("dev", SERVICE), "activity_token") is None
        assert len(await relay.received(device, 3)) == 3


async def test_stamps_strictly_increase_across_concurrent_events_and_old_ones_are_dropped(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    async with running_relay(redis_url, state_dir, app=LIVE_ACTIVITY) as relay:
        store = ActivityStore(relay.queue)

        async def take(event_s: int) -> int | None:
            record = await store.bind_and_read("dev", SERVICE, "00" * 32, 600)
            return await store.take_stamp("dev", SERVICE, event_s, record.last, 600)

        stamps = await asyncio.gather(*(take(1_000) for _ in range(20)))
        assert sorted(s for s in stamps if s is not None) == list(range(1_000, 1_020))
        assert await take(999) is None  # older than the last one sent: dropped
        assert await take(2_000) == 2_000
        assert 590 <= await redis.ttl(activity_key("dev", SERVICE)) <= 600
        assert await redis.exists(push_to_start_key("dev", "00" * 32)) == 0
