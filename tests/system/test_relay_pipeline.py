"""The relay end to end: GMS webhook and JSON API -> Valkey -> aioapns -> the APNs simulator."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from eventually import eventually
from relay_harness import running_relay
from seed_actions import SEED_ACTIONS

SERVICE_ID = "3SQI3S31693JL9L3R00506T40C000U73"


def message_of(record: dict[str, Any]) -> Any:
    message = record["payload"]["message"]
    return json.loads(message) if isinstance(message, str) else message


@pytest.mark.parametrize("encoding", ["object", "string"])
@pytest.mark.slow
async def test_each_seed_action_reaches_apns_with_headers_and_payload(
    redis_url: str, state_dir: Path, encoding: str
) -> None:
    async with running_relay(redis_url, state_dir, app={"message_encoding": encoding}) as relay:
        devices = await relay.device_tokens(len(SEED_ACTIONS))
        for device, action in zip(devices, SEED_ACTIONS, strict=True):
            status, body, _ = await relay.gms_push(device, {"_id": SERVICE_ID, "_action": action})
            assert status == 200, body
            assert body["pushed"] is True
            [record] = await relay.received(device)
            headers = record["headers"]
            assert record["topic"] == relay.settings.apps[0].topic
            assert headers["apns-push-type"] == "alert"
            assert headers["apns-priority"] == "10"
            assert headers["apns-collapse-id"] == SERVICE_ID
            assert int(headers["apns-expiration"]) > 0
            assert message_of(record) == {"_id": SERVICE_ID, "_action": action}
            assert isinstance(record["payload"]["message"], str) == (encoding == "string")
            aps = record["payload"]["aps"]
            assert aps["alert"]["body"]
            assert aps["thread-id"] == SERVICE_ID
            state = await relay.wait_state(body["id"], {"delivered"})
            assert state["apns_id"] == headers["apns-id"]
            # The app is a sandbox one: APNs gave the push its Delivery Log key.
            assert uuid.UUID(state["apns_unique_id"]).version == 4
            assert state["last_status"] == 200
            # apns-expiration is the action's lifetime from acceptance: GMS's 30 s
            # _user_confirm_timeout for a confirmation, queue.default_ttl_seconds otherwise.
            lifetime = 30 if action.startswith("get-dialog-user-confirmation") else 3_600
            assert int(headers["apns-expiration"]) == state["expires_at"]
            lived = state["expires_at"] - state["accepted_at_ms"] // 1000
            assert lifetime - 1 <= lived <= lifetime + 1


@pytest.mark.slow
async def test_per_device_order_holds_under_concurrency(redis_url: str, state_dir: Path) -> None:
    devices, per_device = 50, 20
    async with running_relay(redis_url, state_dir, queue={"supersede": False}) as relay:

        async def feed(device: str) -> None:
            for seq in range(per_device):
                await relay.notify(
                    device_token=device,
                    service_id=f"S{device[:8]}",
                    action="wait-for-agent",
                    extra={"seq": seq},
                )

        await asyncio.gather(*(feed(d) for d in await relay.device_tokens(devices)))
        records = await relay.received(count=devices * per_device, timeout_s=60)
        by_device: dict[str, list[int]] = {}
        for record in records:
            by_device.setdefault(record["token"], []).append(record["payload"]["seq"])
        assert len(by_device) == devices
        for seqs in by_device.values():
            assert seqs == list(range(per_device))


@pytest.mark.slow
async def test_transient_answers_are_retried_until_delivered(
    redis_url: str, state_dir: Path
) -> None:
    answers: list[list[dict[str, int | str | bool]]] = [
        [{"status": 429, "reason": "TooManyRequests"}],
        [{"status": 500, "reason": "InternalServerError"}],
        [{"status": 503, "reason": "ServiceUnavailable"}],
        [{"status": 503, "body": False}],
        [{"status": 503, "reason": "Shutdown"}, {"status": 500}],
        [{"status": 403, "reason": "ExpiredProviderToken"}],
        [{"status": 400, "reason": "IdleTimeout"}],
    ]
    # Seven devices failing at once would open the route's circuit (and attempts made while it
    # is open do not count); here each device's answers are its own, so the threshold is raised.
    circuit = {"failure_threshold": 50}
    async with running_relay(redis_url, state_dir, circuit=circuit) as relay:
        devices = await relay.device_tokens(len(answers))
        scripts = dict(zip(devices, answers, strict=True))
        await relay.control.put_faults({"scripted": scripts})
        ids = {
            device: await relay.notify(device_token=device, service_id="S1", action="x")
            for device in scripts
        }
        for device, notification_id in ids.items():
            state = await relay.wait_state(notification_id, {"delivered", "failed"})
            assert state["state"] == "delivered", state
            assert state["attempts"] == len(scripts[device]) + 1
            assert len(await relay.received(device)) == 1


@pytest.mark.slow
async def test_stall_goaway_and_dropped_connections_end_delivered(
    redis_url: str, state_dir: Path
) -> None:
    # Every connection drops after 3 streams; a notification may meet one dropped connection
    # after another, which never makes it a poison one (policy: a lost connection fails every
    # stream on it alike), so the default 5 attempts do not end it.
    async with running_relay(redis_url, state_dir) as relay:
        stalled = await relay.device_token()
        await relay.control.put_faults({"stall": {"tokens": [stalled]}})
        first = await relay.notify(device_token=stalled, service_id="S1", action="wait-for-agent")
        await relay.control.wait_for_stalls(1)
        for faults in ({"goaway": {"after_streams": 3}}, {"drop": {"after_streams": 3}}):
            await relay.control.put_faults(faults)
            others = [
                await relay.notify(device_token=device, service_id="S", action="x")
                for device in await relay.device_tokens(10)
            ]
            for notification_id in others:
                state = await relay.wait_state(notification_id, {"delivered", "failed"})
                assert state["state"] == "delivered", state
        await relay.control.clear_faults()
        state = await relay.wait_state(first, {"delivered", "failed"})
        assert state["state"] == "delivered"
        # Its stalled stream ended with its connection; the attempts it counts depend on how
        # (a lost connection that opens the route's circuit is released uncounted), so the
        # proof that it was sent again is the phone's (a fault allows a duplicate).
        assert await relay.received(stalled)
        stats = await relay.control.stats()
        assert stats["goaways"] >= 1
        assert stats["drops"] >= 1


@pytest.mark.slow
async def test_permanent_answers_fail_at_once_and_mark_the_token(
    redis_url: str, state_dir: Path
) -> None:
    bad = "ab" * 32  # never issued: APNs answers BadDeviceToken
    async with running_relay(redis_url, state_dir) as relay:
        unregistered = await relay.device_token()
        await relay.control.unregister(unregistered, timestamp_ms=1_700_000_000_000)
        for device, reason in ((unregistered, "Unregistered"), (bad, "BadDeviceToken")):
            notification_id = await relay.notify(device_token=device, service_id="S", action="x")
            state = await relay.wait_state(notification_id, {"delivered", "failed"})
            assert (state["state"], state["attempts"], state["last_reason"]) == (
                "failed",
                1,
                reason,
            )
            status, device_status, _ = await relay.call("GET", f"/v1/devices/dev/{device}")
            assert status == 200
            assert device_status["dead"]["reason"] == reason
            status, problem, _ = await relay.gms_push(device, {"_id": "S", "_action": "x"})
            assert status == 410, problem
            assert problem["field"] == "device_token"
        dead = await relay.call("GET", f"/v1/devices/dev/{unregistered}")
        assert dead[1]["dead"]["invalid_since_ms"] == 1_700_000_000_000
        status, _, _ = await relay.call("DELETE", f"/v1/devices/dev/{unregistered}")
        assert status == 200
        assert (await relay.call("GET", f"/v1/devices/dev/{unregistered}"))[1]["dead"] is None


@pytest.mark.slow
async def test_nothing_is_sent_after_it_expires(redis_url: str, state_dir: Path) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        device = await relay.device_token()
        await relay.control.put_faults({"stall": {"tokens": [device]}})
        head = await relay.notify(device_token=device, service_id="A", action="wait-for-agent")
        short = await relay.notify(device_token=device, service_id="B", action="x", ttl=1)
        # Two stalled attempts of the head (1 s deadline each): `short` is past its expiry.
        await relay.control.wait_for_stalls(2)
        await relay.control.clear_faults()
        assert (await relay.wait_state(head, {"delivered"}))["attempts"] >= 3
        state = await relay.wait_state(short, {"expired", "delivered"})
        assert state["state"] == "expired"
        sent = [r["payload"]["message"]["_id"] for r in await relay.received(device)]
        assert sent == ["A"]


@pytest.mark.slow
async def test_credential_error_pauses_the_app_keeps_the_queue_and_resumes(
    redis_url: str, state_dir: Path
) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        device, other = await relay.device_tokens(2)
        await relay.control.put_faults(
            {"scripted": {device: [{"status": 403, "reason": "InvalidProviderToken"}]}}
        )
        first = await relay.notify(device_token=device, service_id="A", action="x")
        await eventually(
            lambda: relay.worker.paused_apps, timeout_s=10, interval_s=0.01, what="the app paused"
        )
        status, ready, _ = await relay.call("GET", "/readyz", auth=None)
        assert status == 503
        assert ready["paused_apps"] == {"dev": "InvalidProviderToken"}
        second = await relay.notify(device_token=other, service_id="B", action="x")
        for notification_id in (first, second):
            assert (await relay.wait_state(notification_id, {"delivered"}))["state"] == "delivered"
        assert relay.worker.paused_apps == {}
        status, ready, _ = await relay.call("GET", "/readyz", auth=None)
        assert status == 200, ready
