"""Delivery receipts end to end: the real relay and Valkey, the strict APNs simulator, and the
simulated phone whose Notification Service Extension posts each shown alert's receipt."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import REGISTRY
from relay_harness import WAIT_S, RelayHarness, running_relay
from test_operations_metrics import RECEIPT_APP_SERIES

from relay.core.payload import PushSpec, build_notification
from relay.core.receipts import receipt_mac
from relay_devkit.device_sim.app import AppSettings, DeviceApp
from relay_devkit.device_sim.extension import ReceiptExtension, receipt_to_post
from relay_devkit.device_sim.phone import Phone

SECRET = "receipt-secret-".ljust(40, "x")
RECEIPTS = {"receipts": {"secret": SECRET}}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def counted_by_action(metric_name: str, **labels: str) -> dict[str, float]:
    """A counter's samples whose labels include `labels`, by their action label."""
    found: dict[str, float] = {}
    for metric in REGISTRY.collect():
        if metric.name != metric_name:
            continue
        for s in metric.samples:
            if s.name.endswith("_total") and labels.items() <= s.labels.items():
                found[s.labels["action"]] = found.get(s.labels["action"], 0.0) + s.value
    return found


def receipts_counted(app: str, outcome: str) -> float:
    """apns_relay_receipts_total for `app` and `outcome`, summed over actions."""
    return sum(counted_by_action("apns_relay_receipts", app=app, outcome=outcome).values())


async def post_receipt(
    relay: RelayHarness, body: Any, *, url: str | None = None
) -> tuple[int, Any, Any]:
    if url is None:
        return await relay.call("POST", "/v1/receipts", body, auth=None)
    async with relay.session.post(url + "/v1/receipts", json=body) as response:
        return response.status, await response.read(), response.headers


async def receipt_keys(relay: RelayHarness) -> dict[Any, Any]:
    """Every receipt bucket and its fields, as Valkey holds them."""
    client = relay.queue.client
    keys = [key async for key in client.scan_iter(match="relay:*:r:*")]
    return {key: await client.hgetall(key) for key in sorted(keys)}


async def test_receipts_of_shown_pushes_are_recorded_and_counted_under_loss(
    redis_url: str, state_dir: Path
) -> None:
    async with running_relay(redis_url, state_dir, app=RECEIPTS) as relay:
        app = relay.settings.apps[0].name
        recorded_before = receipts_counted(app, "recorded")
        histogram = "apns_relay_receipt_latency_seconds"
        count_before = sample(f"{histogram}_count", app=app)
        sum_before = sample(f"{histogram}_sum", app=app)
        delivered_before = counted_by_action("apns_relay_notifications_delivered", app=app)
        recorded_by_action_before = counted_by_action(
            "apns_relay_receipts", app=app, outcome="recorded"
        )
        tokens = await relay.device_tokens(2)
        phones = [
            Phone(
                relay.session,
                relay.sim.control_url,
                token,
                DeviceApp(AppSettings(server_url="http://127.0.0.1:9")),  # the user ignores all
                poll_interval_s=0.02,
                extension=ReceiptExtension(
                    relay.session, relay.url + "/v1/receipts", loss=0.3, rng=random.Random(7)
                ),
            )
            for token in tokens
        ]
        per_phone = 10
        ids = [
            await relay.notify(device_token=token, service_id=f"S{token[:6]}-{n}", alert=f"#{n}")
            for token in tokens
            for n in range(per_phone)
        ]
        # A silent push is no alert: no extension runs, so it carries no receipt.
        silent = await relay.notify(device_token=tokens[0], push_type="background")
        for phone in phones:
            await phone.wait_for_pushes(per_phone + (phone is phones[0]), WAIT_S)
        extensions = [phone.extension for phone in phones if phone.extension is not None]
        for extension in extensions:
            await extension.drain()
        sent = [s for extension in extensions for s in extension.sent]
        confirmed = {s.notification_id for s in sent if s.status == 204}
        lost = {s.notification_id for s in sent if s.status is None}
        assert {s.notification_id for s in sent} == set(ids)  # one per alert, none for silent
        assert confirmed
        assert lost
        assert confirmed.isdisjoint(lost)

        latencies = []
        for notification_id in ids:
            status = await relay.wait_state(notification_id, {"delivered"})
            if notification_id in confirmed:
                received = status["received_at_ms"]
                # Not after delivered_at_ms: the phone may confirm before the worker has
                # recorded APNs' 200.
                assert received >= status["accepted_at_ms"]
                assert status["device_latency_ms"] == received - status["accepted_at_ms"]
                latencies.append(status["device_latency_ms"])
            else:
                assert (status["received_at_ms"], status["device_latency_ms"]) == (None, None)
        assert (await relay.wait_state(silent, {"delivered"}))["received_at_ms"] is None

        # The confirmed ratio an operator sees: receipts recorded / pushes APNs accepted.
        recorded = receipts_counted(app, "recorded") - recorded_before
        delivered_by_action = counted_by_action("apns_relay_notifications_delivered", app=app)
        delivered = sum(delivered_by_action.values()) - sum(delivered_before.values())
        assert (recorded, delivered) == (len(confirmed), len(ids) + 1)
        # Per app and action, as the dashboard divides them: every receipt's action is one the
        # delivered count has too.
        recorded_by_action = counted_by_action("apns_relay_receipts", app=app, outcome="recorded")
        for action, count in recorded_by_action.items():
            if count > recorded_by_action_before.get(action, 0.0):
                assert delivered_by_action.get(action, 0.0) > delivered_before.get(action, 0.0)
        assert sample(f"{histogram}_count", app=app) - count_before == len(confirmed)
        observed = sample(f"{histogram}_sum", app=app) - sum_before
        assert abs(observed - sum(latencies) / 1000) < 1e-6
        # A live /metrics exports what the dashboard and the alert query for this app.
        answer, text, _ = await relay.call("GET", "/metrics", auth=None)
        assert answer == 200
        for name in RECEIPT_APP_SERIES:
            lines = [line for line in text.splitlines() if line.startswith(name + "{")]
            assert any(f'app="{app}"' in line for line in lines), name


async def test_a_forged_replayed_or_malformed_receipt_changes_nothing(
    redis_url: str, state_dir: Path
) -> None:
    async with running_relay(
        redis_url, state_dir, app=RECEIPTS, http={"receipts_port": 0}
    ) as relay:
        app = relay.settings.apps[0].name
        token = await relay.device_token()
        first = await relay.notify(device_token=token, service_id="S1", alert="first")
        [record] = await relay.received(token)
        receipt = receipt_to_post(record["payload"])
        assert receipt == {"id": first, "mac": receipt_mac(SECRET.encode(), first)}
        # Only the receipt route on its own listener; it is answered there.
        assert relay.receipts_url is not None
        status, _, _ = await post_receipt(relay, receipt, url=relay.receipts_url)
        assert status == 204
        async with relay.session.get(relay.receipts_url + "/v1/queue") as response:
            assert response.status == 404
        received = (await relay.wait_state(first, {"delivered"}))["received_at_ms"]
        stored = await receipt_keys(relay)
        assert len(stored) == 1

        counted = {
            o: receipts_counted(app, o) + receipts_counted("unknown", o)
            for o in ("replayed", "forged", "malformed")
        }
        # A queued one's receipt, its MAC made with another secret: forged.
        second = await relay.notify(device_token=token, service_id="S2", alert="second")
        forged_mac = receipt_mac(b"not-the-relay's-secret".ljust(32), second)
        refusals: list[tuple[Any, int, str]] = [
            ({"id": second, "mac": forged_mac}, 403, "mac"),
            ({"id": second, "mac": receipt["mac"]}, 403, "mac"),  # another push's MAC
            ({"id": second}, 422, "mac"),
            ({"id": second.upper(), "mac": forged_mac}, 422, "id"),
            ({"id": second, "mac": forged_mac, "app": app}, 422, "app"),
            (b"{not json", 400, "body"),
        ]
        for body, expected, field_name in refusals:
            status, problem, headers = await post_receipt(relay, body)
            assert (status, problem["field"]) == (expected, field_name), problem
            assert headers["Content-Type"].startswith("application/problem+json")
        # Replayed: accepted (idempotent), the first one still wins.
        for _ in range(3):
            assert (await post_receipt(relay, receipt))[0] == 204
        assert (await relay.wait_state(first, {"delivered"}))["received_at_ms"] == received
        assert (await relay.wait_state(second, {"delivered"}))["received_at_ms"] is None
        assert await receipt_keys(relay) == stored
        after = {
            o: receipts_counted(app, o) + receipts_counted("unknown", o)
            for o in ("replayed", "forged", "malformed")
        }
        assert {o: after[o] - counted[o] for o in after} == {
            "replayed": 3,
            "forged": 2,
            "malformed": 4,
        }


async def test_the_rate_limit_holds_under_a_bounded_flood(redis_url: str, state_dir: Path) -> None:
    rate = 2.0  # receipts a second from one address, after a burst of 10
    http = {"receipts_per_second_per_address": rate, "receipts_per_second": 1000}
    async with running_relay(redis_url, state_dir, app=RECEIPTS, http=http) as relay:
        token = await relay.device_token()
        notification_id = await relay.notify(device_token=token, service_id="S", alert="a")
        receipt = {"id": notification_id, "mac": receipt_mac(SECRET.encode(), notification_id)}
        limited_before = receipts_counted("unknown", "rate_limited")
        flood = 80
        started = time.monotonic()
        answers = await asyncio.gather(*(post_receipt(relay, receipt) for _ in range(flood)))
        elapsed = time.monotonic() - started
        statuses = [status for status, _, _ in answers]
        taken = statuses.count(204)
        assert set(statuses) == {204, 429}
        assert 10 <= taken <= 10 + elapsed * rate + 1
        retry_after = {
            int(headers["Retry-After"]) for status, _, headers in answers if status == 429
        }
        assert retry_after
        assert min(retry_after) >= 1
        limited = receipts_counted("unknown", "rate_limited") - limited_before
        assert limited == statuses.count(429)
        # The flood changed nothing the first receipt had recorded; other routes were not held.
        assert (await relay.wait_state(notification_id, {"delivered"}))["received_at_ms"]
        assert (await relay.call("GET", "/v1/queue"))[0] == 200


async def test_a_push_without_receipts_is_byte_for_byte_unchanged(
    redis_url: str, state_dir: Path
) -> None:
    async with running_relay(redis_url, state_dir) as relay:
        config = relay.settings.apps[0]
        assert config.receipts is None
        token = await relay.device_token()
        body = {"device_token": token, "service_id": "S1", "action": "wait-for-agent"}
        notification_id = await relay.notify(**body)
        [record] = await relay.received(token)
        state = await relay.wait_state(notification_id, {"delivered"})
        spec = PushSpec(device_token=token, service_id="S1", action="wait-for-agent")
        expected = build_notification(
            spec,
            config.profile(),
            now_s=state["accepted_at_ms"] // 1000,
            default_ttl_s=relay.settings.queue.default_ttl_seconds,
            max_ttl_s=relay.settings.queue.max_ttl_seconds,
        ).payload
        assert orjson.dumps(record["payload"]) == expected
        assert b"mutable-content" not in expected
        assert b"receipt" not in expected
        assert (state["received_at_ms"], state["device_latency_ms"]) == (None, None)
        # No secret verifies any receipt: a receipt is forged.
        forged = {"id": notification_id, "mac": receipt_mac(b"x" * 32, notification_id)}
        assert (await post_receipt(relay, forged))[0] == 403
