"""The phone's Live Activities: ActivityKit's rules (pure), and a callback's activity on the
simulated phone's Lock Screen end to end (relay, Valkey, the strict APNs simulator)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from relay_harness import RelayHarness, running_relay
from seed_actions import CONFIRM_WITH_CODE

from relay_devkit.device_sim.activities import ActivityShown, ActivityWatcher, LiveActivities
from relay_devkit.device_sim.app import AppSettings, DeviceApp, TranscriptEntry
from relay_devkit.device_sim.phone import Phone

SERVICE = "3SQI3S31693JL9L3R00506T40C000U73"
START_TOKEN, UPDATE_TOKEN = "aa" * 32, "bb" * 32


def aps(event: str, stamp: int, stage: str, **extra: Any) -> dict[str, Any]:
    return {
        "aps": {
            "timestamp": stamp,
            "event": event,
            "content-state": {"stage": stage, "label": stage.title()},
            **extra,
        }
    }


def test_activitykit_rules() -> None:
    phone = LiveActivities(push_to_start_token=START_TOKEN)
    start = aps("start", 10, "waiting", attributes={"service_id": SERVICE})
    assert phone.receive(START_TOKEN, start, 1.0).change == "started"
    # Updates come on the activity's own token, once the app has it.
    assert phone.receive(UPDATE_TOKEN, aps("update", 11, "x"), 2.0).change == "ignored"
    phone.track(UPDATE_TOKEN, SERVICE)
    updated = phone.receive(UPDATE_TOKEN, aps("update", 11, "agent-available"), 3.0)
    assert (updated.change, updated.stage) == ("updated", "agent-available")
    stale = phone.receive(UPDATE_TOKEN, aps("update", 11, "waiting"), 4.0)
    assert (stale.change, stale.stage) == ("ignored", "agent-available")
    ended = phone.receive(UPDATE_TOKEN, aps("end", 12, "connecting", **{"dismissal-date": 9}), 5)
    assert (ended.change, ended.stage) == ("ended", "connecting")
    assert phone.receive(UPDATE_TOKEN, aps("update", 13, "waiting"), 6.0).change == "ignored"
    assert phone.tick(8.9) == []
    (dismissed,) = phone.tick(9.0)
    assert (dismissed.change, dismissed.service_id) == ("dismissed", SERVICE)
    assert phone.views == {}


def changes(transcript: list[TranscriptEntry]) -> list[tuple[str, str | None]]:
    return [(e.change, e.stage) for e in transcript if isinstance(e, ActivityShown)]


async def callback_event(relay: RelayHarness, device: str, action: str) -> None:
    status, answer, _ = await relay.gms_push(device, {"_id": SERVICE, "_action": action})
    assert status == 200, answer
    await relay.wait_state(answer["id"], {"delivered"})


async def test_the_lock_screen_follows_a_callback_from_waiting_to_dismissed(
    redis_url: str, state_dir: Path, redis: aioredis.Redis
) -> None:
    settings = {"live_activity": {"dismiss_after_s": 1}}
    async with running_relay(redis_url, state_dir, app=settings) as relay:
        device, push_to_start = await relay.device_tokens(2)
        status, _, _ = await relay.call(
            "PUT", f"/v1/devices/dev/{device}/push-to-start", {"push_to_start_token": push_to_start}
        )
        assert status == 200

        async def register_update_token(service_id: str) -> str:
            # What the app does with Activity.pushTokenUpdates: hand the token to the relay.
            token = await relay.device_token()
            body = {"activity_token": token, "device_token": device}
            status, answer, _ = await relay.call("PUT", f"/v1/activities/dev/{service_id}", body)
            assert status == 200, answer
            return token

        watcher = ActivityWatcher(
            relay.session,
            relay.sim.control_url,
            LiveActivities(push_to_start_token=push_to_start),
            on_started=register_update_token,
        )
        app = DeviceApp(AppSettings(server_url="http://127.0.0.1:9"))
        phone = Phone(relay.session, relay.sim.control_url, device, app, activity_watcher=watcher)

        steps = [
            ("wait-for-agent", ("started", "waiting")),
            (CONFIRM_WITH_CODE, ("updated", "agent-available")),
            ("connect-inbound", ("ended", "connecting")),
        ]
        for action, change in steps:
            await callback_event(relay, device, action)

            def shows(t: list[TranscriptEntry], c: tuple[str, str] = change) -> bool:
                return c in changes(t)

            await phone.run_until(shows, timeout_s=20)
        await phone.run_until(lambda t: ("dismissed", "connecting") in changes(t), timeout_s=20)
        assert changes(phone.transcript) == [
            ("started", "waiting"),
            ("updated", "agent-available"),
            ("ended", "connecting"),
            ("dismissed", "connecting"),
        ]
        # The alerts came as before, next to the activity.
        assert app.pushes_received == 3
