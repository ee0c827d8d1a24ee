"""Metrics of a real relay process: each outcome counted exactly; the dashboard's all exported."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from eventually import eventually
from prometheus_client.parser import text_string_to_metric_families
from relay_harness import (
    API_TOKEN,
    app_tokens,
    basic_authorization,
    relay_document,
    relay_processes,
)
from relay_harness import write_config as write_relay_config
from seed_actions import WAIT_FOR_AGENT
from simulator import control_client, running_simulator
from test_deploy_files import PROMETHEUS_SERIES, every_query, promql_metric_names

from relay import __version__
from relay_devkit.dev_mode import simulator_app

APP = "dev"
# Exported only for apps sending with a client certificate (test_certificate_auth checks it).
CERTIFICATE_APP_SERIES = {"apns_relay_credential_expiry_timestamp_seconds"}
# Exported for apps with delivery receipts on (a live /metrics is checked in test_receipts_flow).
RECEIPT_APP_SERIES = {"apns_relay_receipts_total", "apns_relay_receipt_latency_seconds_bucket"}
WAIT_S = 20.0
BEARER = {"Authorization": f"Bearer {API_TOKEN}"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_exposition(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One series' value; a missing series is a failure, not a zero."""
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name}{labels} is not exported"
    return samples[key]


def series(samples: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every series of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return {key: v for (n, key), v in samples.items() if n == name and wanted <= key}


class Relay:
    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session

    async def post(self, path: str, body: Any, headers: dict[str, str]) -> tuple[int, Any]:
        async with self.session.post(self.url + path, json=body, headers=headers) as response:
            return response.status, await response.json(content_type=None)

    async def notify(self, **body: Any) -> str:
        status, answer = await self.post("/v1/notifications", body, BEARER)
        assert status == 202, answer
        return str(answer["id"])

    async def notification(self, notification_id: str) -> dict[str, Any]:
        async with self.session.get(
            f"{self.url}/v1/notifications/{notification_id}", headers=BEARER
        ) as response:
            assert response.status == 200
            return dict(await response.json())

    async def wait_state(self, notification_id: str, states: Collection[str]) -> dict[str, Any]:

        async def reached() -> dict[str, Any] | None:
            record = await self.notification(notification_id)
            return record if record["state"] in states else None

        return await eventually(reached, timeout_s=WAIT_S, what=f"{notification_id} in {states}")

    async def scrape(self) -> Samples:
        async with self.session.get(self.url + "/metrics") as response:
            assert response.status == 200
            return parse_exposition(await response.text())


@pytest.mark.slow
async def test_a_delivery_a_retry_a_failure_and_an_expiry_are_each_counted_exactly(
    redis_url: str, state_dir: Path
) -> None:
    failing = "ab" * 32  # never issued: APNs answers BadDeviceToken
    async with running_simulator(state_dir / "sim") as info, control_client(info) as control:
        delivered, retried, slow = await app_tokens(control, simulator_app(info), 3)
        await control.put_faults(
            {
                "scripted": {retried: [{"status": 503, "reason": "ServiceUnavailable"}]},
                "stall": {"tokens": [slow]},
            }
        )
        config = write_relay_config(state_dir / "relay.yaml", relay_document(redis_url, info))
        with (
            relay_processes("serve", config=config, log_dir=state_dir) as [process],
        ):
            async with aiohttp.ClientSession() as session:
                relay = Relay(process.url, session)
                status, answer = await relay.post(
                    "/gms/push",
                    {"deviceId": delivered, "message": {"_id": "S0", "_action": WAIT_FOR_AGENT}},
                    {"Authorization": basic_authorization()},
                )
                assert status == 200, answer
                ids = {
                    retried: await relay.notify(device_token=retried, service_id="S", action="x"),
                    failing: await relay.notify(device_token=failing, service_id="S", action="x"),
                }
                # `slow`'s head stalls until `late` (queued behind it) is past its expiry.
                head = await relay.notify(device_token=slow, service_id="A", action="x")
                late = await relay.notify(device_token=slow, service_id="B", action="x", ttl=1)
                # Two for one service behind the stalled head: the newer supersedes the older.
                replaced = await relay.notify(device_token=slow, service_id="C", action="x")
                newer = await relay.notify(device_token=slow, service_id="C", action="y")
                await relay.wait_state(answer["id"], {"delivered"})
                await relay.wait_state(ids[retried], {"delivered"})
                assert (await relay.wait_state(ids[failing], {"failed"}))["attempts"] == 1
                await control.wait_for_stalls(1)
                expires_at = (await relay.notification(late))["expires_at"]
                # The behaviour under test: `late`'s lifetime runs out while it waits.
                await asyncio.sleep(max(0.0, expires_at + 0.05 - time.time()))  # lifetime ends
                await control.clear_faults()
                await relay.wait_state(head, {"delivered"})
                assert (await relay.wait_state(late, {"expired"}))["attempts"] == 0
                await relay.wait_state(newer, {"delivered"})
                assert (await relay.notification(replaced))["state"] == "superseded"
                status, refused = await relay.post(
                    "/v1/notifications",
                    {"device_token": failing, "service_id": "S", "action": "x"},
                    BEARER,
                )
                assert status == 410, refused
                for credentials in ("Bearer wrong-token", "Basic Z21zOndyb25n"):
                    status, _ = await relay.post(
                        "/v1/notifications", {}, {"Authorization": credentials}
                    )
                    assert status == 401
                stalls = (await control.stats())["stalled"]
                samples = await relay.scrape()
    # Delivery outcomes: one each, retries by reason, dead token marked.
    assert value(samples, "apns_relay_notifications_enqueued_total", app=APP) == 7
    # By action: a seed action is named; "x" and "y" are no action the app names.
    by_action = series(samples, "apns_relay_notifications_delivered_total", app=APP)
    assert {dict(labels)["action"]: n for labels, n in by_action.items() if n} == {
        WAIT_FOR_AGENT: 1,
        "other": 3,
    }
    assert series(samples, "apns_relay_notifications_failed_total") == {
        frozenset({("app", APP), ("reason", "BadDeviceToken")}): 1
    }
    assert value(samples, "apns_relay_notifications_expired_total", app=APP) == 1
    assert value(samples, "apns_relay_notifications_superseded_total", app=APP) == 1
    assert series(samples, "apns_relay_notifications_retried_total") == {
        frozenset({("app", APP), ("reason", "ServiceUnavailable")}): 1,
        frozenset({("app", APP), ("reason", "Timeout")}): stalls,
    }
    assert series(samples, "apns_relay_dead_tokens_marked_total") == {
        frozenset({("app", APP), ("reason", "BadDeviceToken")}): 1
    }
    # APNs answers: every request counted once, by status and reason, and timed.
    responses = {
        (dict(labels)["status"], dict(labels)["reason"]): count
        for labels, count in series(samples, "apns_relay_apns_responses_total", app=APP).items()
    }
    assert responses == {
        ("200", ""): 4,
        ("503", "ServiceUnavailable"): 1,
        ("400", "BadDeviceToken"): 1,
        ("0", "Timeout"): stalls,
    }
    requests = 6 + stalls
    assert value(samples, "apns_relay_apns_request_duration_seconds_count", app=APP) == requests
    assert value(samples, "apns_relay_delivery_latency_seconds_count", app=APP) == 4
    # Ingest: by source and outcome; a refusal by its reason.
    events = {
        tuple(dict(labels)[k] for k in ("source", "outcome", "reason")): count
        for labels, count in series(samples, "apns_relay_events_received_total").items()
    }
    assert events == {
        ("gms", "accepted", ""): 1,
        ("api", "accepted", ""): 6,
        ("api", "rejected", refused["type"].rsplit(":", 1)[-1]): 1,
    }
    # HTTP: by route template (never an id), method and status; durations per route.
    posts = {
        (dict(labels)["route"], dict(labels)["status"]): count
        for labels, count in series(
            samples, "apns_relay_http_requests_total", method="POST"
        ).items()
    }
    assert posts == {
        ("/gms/push", "200"): 1,
        ("/v1/notifications", "202"): 6,
        ("/v1/notifications", "410"): 1,
        ("/v1/notifications", "401"): 2,
    }
    status_reads = series(samples, "apns_relay_http_requests_total", method="GET")
    routes_read = {dict(labels)["route"] for labels in status_reads}
    assert routes_read == {"/healthz", "/v1/notifications/{id}"}  # the harness polls /healthz
    assert (
        value(samples, "apns_relay_http_request_duration_seconds_count", route="/v1/notifications")
        == 9
    )
    # State: queue gauges read from Redis, all final; nothing in flight, app sending, one JWT.
    assert value(samples, "apns_relay_queue_pending_notifications") == 0
    assert value(samples, "apns_relay_queue_devices_pending") == 0
    assert value(samples, "apns_relay_queue_oldest_pending_age_seconds") == 0
    assert value(samples, "apns_relay_apns_in_flight_requests", app=APP) == 0
    assert value(samples, "apns_relay_app_paused", app=APP) == 0
    # One device timing out and one 503 are not a failing route.
    assert series(samples, "apns_relay_route_state", app=APP) == {
        frozenset({("app", APP), ("environment", "sandbox")}): 0
    }
    assert sum(series(samples, "apns_relay_route_transitions_total", app=APP).values()) == 0
    assert value(samples, "apns_relay_apns_connections", app=APP) >= 1
    assert value(samples, "apns_relay_jwt_refreshes_total", app=APP) == 1
    [build] = series(samples, "apns_relay_build_info")
    assert dict(build)["version"] == __version__
    # Nothing keyed by a device token or a notification id.
    for name, labels in samples:
        for label, label_value in labels:
            assert not any(t in label_value for t in (delivered, retried, failing, slow)), name
            assert label_value not in {head, late, *ids.values()}, (name, label)
    # The dashboard and the alert rules query only what this live relay exports (its app sends
    # with a token key; what only certificate apps export is checked in test_certificate_auth).
    exported = {name for name, _ in samples} | PROMETHEUS_SERIES | CERTIFICATE_APP_SERIES
    exported |= RECEIPT_APP_SERIES
    for where, expr in every_query():
        missing = promql_metric_names(expr) - exported
        assert not missing, f"{where} queries {sorted(missing)}, absent from a live /metrics"
