"""Crashes: a worker killed with SIGKILL mid-run, Valkey killed between accept and delivery.

The promise is at-least-once, not exactly-once: every acknowledged notification is delivered, and
a notification is sent more than once only after a fault made the relay claim it again (a lease
that ran out after the kill, or a retry after a send timed out, as happens on a loaded machine).
So each notification is sent at most as many times as it was claimed, and duplicates are counted."""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from eventually import eventually
from relay_harness import API_TOKEN, app_tokens, relay_document, relay_processes, write_config
from simulator import SimInfo, control_client, running_simulator

from relay.store.queue import RelayQueue
from relay.store.records import QueueLimits
from relay_devkit.apns_sim.faults import FaultConfig
from relay_devkit.dev_mode import simulator_app
from relay_devkit.embedded import EmbeddedServer

# Whole processes, outages or crashes: seconds each (`make test-fast` leaves them out).
pytestmark = [pytest.mark.slow, pytest.mark.beside]


DEVICES = 200
PER_DEVICE = 10
LEASE_S = 2


async def issued_tokens(info: SimInfo) -> list[str]:
    async with control_client(info) as control:
        return await app_tokens(control, simulator_app(info), DEVICES)


async def submit(
    session: aiohttp.ClientSession, api_url: str, count: int, tokens: list[str]
) -> list[str]:
    """`count` notifications spread over the devices, in batches of 1000; their ids, the n-th
    notification's at index n."""
    items = [
        {
            "device_token": tokens[n % len(tokens)],
            "service_id": f"S{n}",
            "action": "wait-for-agent",
            "extra": {"n": n},
        }
        for n in range(count)
    ]
    ids: list[str] = []
    for start in range(0, count, 1000):
        async with session.post(
            f"{api_url}/v1/notifications:batch",
            json={"notifications": items[start : start + 1000]},
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        ) as response:
            body = await response.json()
            assert response.status == 200, body
            assert body["rejected"] == 0, body
            ids.extend(result["id"] for result in body["results"])
    return ids


async def queue_totals(session: aiohttp.ClientSession, api_url: str) -> dict[str, Any]:
    async with session.get(
        f"{api_url}/v1/queue", headers={"Authorization": f"Bearer {API_TOKEN}"}
    ) as response:
        return dict(await response.json())


async def sent_numbers(info: SimInfo) -> list[tuple[str, int]]:
    async with control_client(info) as control:
        records = (await control.notifications())["notifications"]
    return [(r["token"], r["payload"]["n"]) for r in records]


async def claims(redis_url: str, ids: list[str]) -> list[int]:
    """How many times each notification was claimed (its status's claims)."""
    client = aioredis.Redis.from_url(redis_url)
    queue = RelayQueue(client, QueueLimits())
    try:
        statuses = [await queue.get(notification_id) for notification_id in ids]
        assert all(statuses), "a notification's status is missing"
        return [status.claims for status in statuses if status is not None]
    finally:
        await queue.aclose()
        await client.aclose()


def assert_at_least_once(sent: list[tuple[str, int]], claimed: list[int]) -> int:
    """Every notification sent, none more often than it was claimed; the duplicates' count."""
    count = len(claimed)
    sends = Counter(n for _, n in sent)
    assert set(sends) == set(range(count)), f"lost: {sorted(set(range(count)) - set(sends))[:10]}"
    beyond = {n: (sends[n], claimed[n]) for n in sends if sends[n] > claimed[n]}
    assert not beyond, f"sent more often than claimed (sends, claims): {beyond}"
    return sum(sends.values()) - count


async def test_worker_killed_mid_run_loses_nothing(redis_url: str, state_dir: Path) -> None:
    count = DEVICES * PER_DEVICE
    # Latency keeps sends in flight at the moment of the kill.
    async with running_simulator(
        state_dir / "sim", faults=FaultConfig.from_json({"latency_ms": 5})
    ) as info:
        config = write_config(
            state_dir / "relay.yaml",
            relay_document(
                redis_url,
                info,
                queue={"lease_seconds": LEASE_S, "supersede": False},
                logging={"level": "warning"},
            ),
        )
        with relay_processes("api", config=config, log_dir=state_dir) as [api]:
            async with aiohttp.ClientSession() as session:
                ids = await submit(session, api.url, count, await issued_tokens(info))
                assert len(ids) == count
                with relay_processes("worker", config=config, log_dir=state_dir) as [worker]:

                    async def some_sent() -> bool:
                        return len(await sent_numbers(info)) >= count // 4

                    await eventually(some_sent, timeout_s=60, what="a quarter delivered")
                    assert worker.kill(signal.SIGKILL) == -signal.SIGKILL
                    sent_at_kill = len(await sent_numbers(info))
                    assert sent_at_kill < count, "the kill came too late to mean anything"
                with relay_processes("worker", config=config, log_dir=state_dir):

                    async def all_final() -> bool:
                        totals = await queue_totals(session, api.url)
                        return bool(totals["pending"] == 0)

                    await eventually(all_final, timeout_s=60, what="every notification final")
                    totals = await queue_totals(session, api.url)
        sent = await sent_numbers(info)
    duplicates = assert_at_least_once(sent, await claims(redis_url, ids))
    assert totals["delivered"] == count
    by_device: dict[str, list[int]] = {}
    for device, n in sent:
        numbers = by_device.setdefault(device, [])
        if not numbers or numbers[-1] != n:  # a duplicate repeats the send just before it
            numbers.append(n)
    for numbers in by_device.values():
        assert numbers == sorted(numbers)
        assert len(numbers) == PER_DEVICE
    print(f"sent before the kill: {sent_at_kill}; duplicates (each after a fault): {duplicates}")


async def test_valkey_killed_between_accept_and_delivery_loses_nothing(
    state_dir: Path,
) -> None:
    count = 500
    with EmbeddedServer(data_dir=state_dir / "valkey") as valkey:
        async with running_simulator(state_dir / "sim") as info:
            config = write_config(
                state_dir / "relay.yaml",
                relay_document(valkey.url, info, queue={"supersede": False}),
            )
            async with aiohttp.ClientSession() as session:
                with relay_processes("api", config=config, log_dir=state_dir) as [api]:
                    ids = await submit(session, api.url, count, await issued_tokens(info))
                assert len(ids) == count
                valkey.stop(signal.SIGKILL)
                valkey.start()
                with relay_processes("api", "worker", config=config, log_dir=state_dir) as [api, _]:

                    async def all_final() -> bool:
                        return bool((await queue_totals(session, api.url))["pending"] == 0)

                    await eventually(all_final, timeout_s=60, what="every notification final")
                    assert (await queue_totals(session, api.url))["delivered"] == count
            sent = await sent_numbers(info)
            duplicates = assert_at_least_once(sent, await claims(valkey.url, ids))
    print(f"duplicates (each after a fault): {duplicates}")
