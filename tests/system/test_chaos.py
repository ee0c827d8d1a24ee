"""Chaos on a Redis Cluster: workers and primaries killed, APNs faults; nothing acknowledged lost.

CI runs a bounded version; `CHAOS_SECONDS=600 pytest tests/system/test_chaos.py -s` runs a long one.
The figures are printed (-s) in the form bench/results/chaos.md records."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import topologies
from eventually import eventually
from redis.asyncio import RedisCluster
from redis.crc import key_slot
from relay_harness import (
    API_TOKEN,
    RelayProcess,
    app_tokens,
    relay_document,
    start_relay_process,
    write_config,
)
from simulator import ControlClient, control_client, running_simulator
from topologies import ValkeyCluster

from relay.config.schema import RedisSettings
from relay.core.model import Notification
from relay.store.connection import ReplicaAcknowledgement, ReplicasBehind, connect
from relay.store.keys import LEASE, NOTE, QUEUE, shard_prefix
from relay.store.queue import RelayQueue
from relay.store.queued import status_from_queued
from relay.store.records import QueueLimits
from relay_devkit.apns_sim.faults import FaultConfig
from relay_devkit.dev_mode import simulator_app

# The topology fixtures this module's tests ask for by name.
valkey_cluster = topologies.valkey_cluster
cluster = topologies.cluster

CHAOS_SECONDS = float(os.environ.get("CHAOS_SECONDS", "40"))
DEVICES = 500
BATCH = 25  # notifications per request, each to a different device
REQUESTS_PER_SECOND = 8  # so 200 notifications/s
WORKER_KILL_EVERY_S = 4.0
LEASE_S = 2
DRAIN_TIMEOUT_S = 90.0
TRANSIENT_ERRORS = {"probability": 0.05, "status": 503, "reason": "ServiceUnavailable"}
FINAL_STATES = {"delivered", "failed", "expired", "superseded"}
pytestmark = [pytest.mark.timeout(CHAOS_SECONDS + DRAIN_TIMEOUT_S + 120), pytest.mark.slow]
# A write acknowledged this long before a primary died may be lost by asynchronous replication.
LOSS_WINDOW_S = 1.0
RESEND_SLACK_S = 3.0  # claim loop tick, restart and CPU contention on 2 cores


def token(device: int) -> str:
    """A device token for the queue-only tests (nothing here is sent to APNs)."""
    return f"{device:064x}"


@dataclass
class ChaosLedger:
    acknowledged: dict[int, str] = field(default_factory=dict)  # n -> notification id
    acknowledged_at: dict[int, float] = field(default_factory=dict)
    refused: int = 0  # answered, not accepted (e.g. 5xx while a primary fails over)
    unanswered: int = 0  # no answer (an api restarting): unknown whether stored
    worker_kills: int = 0
    crashes: Counter[str] = field(default_factory=Counter)  # role -> exits nobody asked for
    primary_kills: list[float] = field(default_factory=list)  # when (monotonic)
    connection_faults: int = 0
    # (from, to) wall-clock spans in which a send in flight may be lost and sent again.
    disruptions: list[tuple[float, float]] = field(default_factory=list)

    def disrupted(self, start: float, end: float | None = None) -> None:
        self.disruptions.append((start, start if end is None else end))

    def explains(self, resent_at: float) -> bool:
        """Whether a re-send at this time follows a disruption (by at most a lease and a tick)."""
        return any(
            start - 1.0 <= resent_at <= end + LEASE_S + RESEND_SLACK_S
            for start, end in self.disruptions
        )


class Fleet:
    """2 api and 3 worker processes; a process that exits unasked is restarted (as k8s would)."""

    def __init__(self, config: Path, log_dir: Path, ledger: ChaosLedger) -> None:
        self.config = config
        self.log_dir = log_dir
        self.ledger = ledger
        self.apis: list[RelayProcess] = []
        self.workers: list[RelayProcess] = []

    async def start(self, apis: int, workers: int) -> None:
        self.apis = [await self._start("api") for _ in range(apis)]
        self.workers = [await self._start("worker") for _ in range(workers)]

    async def _start(self, role: str) -> RelayProcess:
        return await asyncio.to_thread(start_relay_process, role, self.config, self.log_dir)

    async def kill_a_worker(self, rng: random.Random) -> None:
        index = rng.randrange(len(self.workers))
        self.ledger.disrupted(time.time())
        await asyncio.to_thread(self.workers[index].kill, signal.SIGKILL)
        self.ledger.worker_kills += 1
        self.workers[index] = await self._start("worker")

    async def restart_crashed(self) -> None:
        for group in (self.apis, self.workers):
            for index, process in enumerate(group):
                if process.process.poll() is not None:
                    self.ledger.crashes[process.role] += 1
                    self.ledger.disrupted(time.time() - 1.0, time.time())
                    group[index] = await self._start(process.role)

    def stop(self) -> None:
        for process in (*self.apis, *self.workers):
            process.kill(signal.SIGTERM)


async def post_batch(
    session: aiohttp.ClientSession, api: RelayProcess, items: list[dict[str, Any]]
) -> list[dict[str, Any]] | None:
    """The per-item results, or None when the request got no usable answer."""
    try:
        async with session.post(
            f"{api.url}/v1/notifications:batch",
            json={"notifications": items},
            headers={"Authorization": f"Bearer {API_TOKEN}"},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as response:
            if response.status != 200:
                return None
            return list((await response.json())["results"])
    except (aiohttp.ClientError, TimeoutError):
        return None


async def steady_load(
    session: aiohttp.ClientSession,
    fleet: Fleet,
    ledger: ChaosLedger,
    until: float,
    tokens: list[str],
) -> int:
    """Batches round-robin over the devices, one request at a time, so that per device the
    order of `n` is the order of acceptance. Returns how many notifications were offered."""
    loop = asyncio.get_running_loop()
    n = 0
    next_at = loop.time()
    request = 0
    while loop.time() < until:
        items = [
            {
                "device_token": tokens[(n + i) % len(tokens)],
                "service_id": f"S{n + i}",
                "action": "wait-for-agent",
                "extra": {"n": n + i},
            }
            for i in range(BATCH)
        ]
        api = fleet.apis[request % len(fleet.apis)]
        request += 1
        results = await post_batch(session, api, items)
        now = time.monotonic()
        if results is None:
            ledger.unanswered += BATCH
        else:
            for i, result in enumerate(results):
                if result["status"] == 202:
                    ledger.acknowledged[n + i] = result["id"]
                    ledger.acknowledged_at[n + i] = now
                else:
                    ledger.refused += 1
        n += BATCH
        next_at += 1 / REQUESTS_PER_SECOND
        await asyncio.sleep(max(0.0, next_at - loop.time()))  # pacing, not waiting for a state
    return n


async def chaos(
    cluster: ValkeyCluster,
    fleet: Fleet,
    control: ControlClient,
    ledger: ChaosLedger,
    until: float,
    rng: random.Random,
) -> None:
    """Kill a worker every few seconds; at a quarter of the run kill a primary (restarted later);
    in the middle, GOAWAYs then dropped connections from the simulator."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    span = until - start
    victim = None
    faults = {"error": TRANSIENT_ERRORS}
    faulted_since = 0.0
    phases = [
        (0.25, "kill_primary"),
        (0.40, "goaway"),
        (0.50, "restart_primary"),
        (0.55, "drop"),
        (0.70, "calm"),
    ]
    next_kill = start + WORKER_KILL_EVERY_S
    while loop.time() < until:
        await fleet.restart_crashed()
        if loop.time() >= next_kill:
            await fleet.kill_a_worker(rng)
            next_kill = loop.time() + WORKER_KILL_EVERY_S
        while phases and loop.time() >= start + phases[0][0] * span:
            _, action = phases.pop(0)
            if action == "kill_primary":
                victim = rng.choice(cluster.primaries())
                ledger.primary_kills.append(time.monotonic())
                killed_at = time.time()
                await asyncio.to_thread(cluster.kill_primary, victim)
                ledger.disrupted(killed_at, time.time())
            elif action == "restart_primary" and victim is not None:
                await asyncio.to_thread(cluster.restart, victim)
            elif action == "goaway":
                await control.put_faults({**faults, "goaway": {"after_streams": 100}})
                ledger.connection_faults += 1
                faulted_since = time.time()
            elif action == "drop":
                await control.put_faults({**faults, "drop": {"probability": 0.01}})
                ledger.connection_faults += 1
            elif action == "calm":
                await control.put_faults(faults)
                ledger.disrupted(faulted_since, time.time())
        # Not a wait for a state: the chaos schedule's own clock, one tick of its plan.
        await asyncio.sleep(0.2)  # the schedule's tick, not a wait for a state


async def queue_totals(session: aiohttp.ClientSession, fleet: Fleet) -> dict[str, Any] | None:
    try:
        async with session.get(
            f"{fleet.apis[0].url}/v1/queue", headers={"Authorization": f"Bearer {API_TOKEN}"}
        ) as response:
            return dict(await response.json()) if response.status == 200 else None
    except aiohttp.ClientError:
        return None


async def stuck_heads(cluster: ValkeyCluster, shards: int) -> list[dict[str, Any]]:
    """Each leased device's queue and its head's record: what a failed drain left behind."""
    client = connect(RedisSettings(url=cluster.url))
    found: list[dict[str, Any]] = []
    try:
        for shard in range(shards):
            prefix = shard_prefix(shard)
            devices = cast(list[bytes], await client.zrange(prefix + LEASE, 0, -1))
            for device in devices:
                ids = cast(
                    list[bytes], await client.lrange(prefix + QUEUE + device.decode(), 0, -1)
                )
                head = ids[0].decode() if ids else ""
                record = cast(bytes | None, await client.get(prefix + NOTE + head))
                found.append(
                    {
                        "device": device.decode()[-8:],
                        "queued": len(ids),
                        "head_listed_twice": ids.count(ids[0]) if ids else 0,
                        "head_state": (status_from_queued(head, record).state if record else None),
                    }
                )
    finally:
        await client.aclose()
    return found


async def drain(
    session: aiohttp.ClientSession, fleet: Fleet, cluster: ValkeyCluster
) -> dict[str, Any]:

    async def drained() -> dict[str, Any] | None:
        await fleet.restart_crashed()
        totals = await queue_totals(session, fleet)
        return totals if totals and totals["pending"] == 0 and totals["leased"] == 0 else None

    try:
        return await eventually(
            drained, timeout_s=DRAIN_TIMEOUT_S, interval_s=0.2, what="the queue drained"
        )
    except AssertionError as error:
        stuck = await stuck_heads(cluster, QueueLimits().shards)
        raise AssertionError(f"{error}; leased heads: {stuck[:5]}") from None


async def notification_state(
    session: aiohttp.ClientSession, fleet: Fleet, notification_id: str
) -> dict[str, Any] | None:
    async with session.get(
        f"{fleet.apis[0].url}/v1/notifications/{notification_id}",
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    ) as response:
        return dict(await response.json()) if response.status == 200 else None


async def test_chaos_loses_nothing_acknowledged_and_keeps_order(
    cluster: ValkeyCluster, state_dir: Path
) -> None:
    rng = random.Random(int(os.environ.get("CHAOS_SEED", "11")))
    ledger = ChaosLedger()
    async with running_simulator(
        state_dir / "sim", faults=FaultConfig.from_json({"error": TRANSIENT_ERRORS})
    ) as info:
        config = write_config(
            state_dir / "relay.yaml",
            relay_document(
                cluster.url,
                info,
                queue={"lease_seconds": LEASE_S, "supersede": False},
                retry={"base_ms": 20, "cap_ms": 200, "max_attempts": 8},
                logging={"level": "warning"},
            ),
        )
        fleet = Fleet(config, state_dir, ledger)
        started = time.monotonic()
        try:
            await fleet.start(apis=2, workers=3)
            async with aiohttp.ClientSession() as session, control_client(info) as control:
                tokens = await app_tokens(control, simulator_app(info), DEVICES)
                until = asyncio.get_running_loop().time() + CHAOS_SECONDS
                offered, _ = await asyncio.gather(
                    steady_load(session, fleet, ledger, until, tokens),
                    chaos(cluster, fleet, control, ledger, until, rng),
                )
                await control.put_faults({})
                totals = await drain(session, fleet, cluster)
                records = (await control.notifications())["notifications"]
                sends = [
                    (r["token"], int(r["payload"]["n"]), float(r["received_at"])) for r in records
                ]
                delivered_n = {n for _, n, _ in sends}
                missing = [n for n in ledger.acknowledged if n not in delivered_n]
                final_elsewhere: Counter[str] = Counter()
                lost: list[int] = []
                for n in missing:
                    state = await notification_state(session, fleet, ledger.acknowledged[n])
                    if state is not None and state["state"] in FINAL_STATES:
                        assert state["last_reason"] or state["state"] == "expired", state
                        final_elsewhere[state["state"]] += 1
                    else:
                        lost.append(n)
        finally:
            fleet.stop()
        elapsed = time.monotonic() - started
    by_device: dict[str, list[int]] = defaultdict(list)
    duplicates_by_device: Counter[str] = Counter()
    unexplained: list[tuple[int, float]] = []
    for device, n, received_at in sends:
        numbers = by_device[device]
        if numbers and numbers[-1] == n:  # a re-send of the head: it was in flight at a fault
            duplicates_by_device[device] += 1
            if not ledger.explains(received_at):
                unexplained.append((n, received_at))
        else:
            numbers.append(n)
    disruptions = (
        ledger.worker_kills
        + sum(ledger.crashes.values())
        + len(ledger.primary_kills)
        + ledger.connection_faults
    )
    figures = {
        "seconds": CHAOS_SECONDS,
        "elapsed_s": round(elapsed, 1),
        "offered": offered,
        "acknowledged": len(ledger.acknowledged),
        "refused": ledger.refused,
        "unanswered": ledger.unanswered,
        "delivered": len(set(ledger.acknowledged) & delivered_n),
        "final_not_delivered": dict(final_elsewhere),
        "lost": len(lost),
        "duplicates": sum(duplicates_by_device.values()),
        "duplicates_not_after_a_fault": len(unexplained),
        "worker_kills": ledger.worker_kills,
        "unasked_exits": dict(ledger.crashes),
        "primary_kills": len(ledger.primary_kills),
        "connection_fault_phases": ledger.connection_faults,
        "leased_at_end": totals["leased"],
    }
    print(f"\nchaos figures: {figures}")
    assert len(ledger.acknowledged) > offered // 2, figures
    # Per-device order: what was sent, re-sends of the head set aside, went out in order.
    for device, numbers in by_device.items():
        assert numbers == sorted(numbers), f"{device} out of order"
    # Each disruption can catch at most one send per device in flight, and a re-send follows one.
    assert max(duplicates_by_device.values(), default=0) <= disruptions, figures
    assert not unexplained, f"re-sent with no fault before: {unexplained[:10]} {figures}"
    # Losses only from asynchronous replication: acknowledged just before a primary died.
    for n in lost:
        acked = ledger.acknowledged_at[n]
        assert any(0 <= kill - acked <= LOSS_WINDOW_S for kill in ledger.primary_kills), (
            f"n={n} acknowledged, then lost outside any failover window: {figures}"
        )
    assert totals["leased"] == 0


# ---- the replication loss window, and what WAIT costs ----


def note(device: int, n: int) -> Notification:
    return Notification(
        app="dev",
        device_token=token(device),
        payload=b'{"aps":{"alert":"x"}}',
        push_type="alert",
        priority=10,
        expires_at=2_000_000_000,
        service_id=f"S{n}",
    )


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if values else 0.0


async def timed_enqueues(
    queue: RelayQueue, ack: ReplicaAcknowledgement | None, count: int
) -> list[float]:
    """Sequential enqueue latencies (ms), each followed by WAIT when `ack` is given."""
    latencies = []
    for n in range(count):
        started = time.perf_counter()
        accepted = await queue.enqueue(note(n % DEVICES, n))
        if ack is not None:
            await ack.confirm([accepted.id])
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


async def burst_then_kill(
    cluster: ValkeyCluster, client: RedisCluster, ack: ReplicaAcknowledgement | None, size: int
) -> tuple[int, int]:
    """`size` concurrent enqueues to shard 0's devices, the primary SIGKILLed the moment the last
    is acknowledged; returns (acknowledged, lost after the replica took over)."""
    queue = RelayQueue(client, QueueLimits(supersede=False))
    devices = [d for d in range(DEVICES * 4) if queue.shard_of("dev", token(d)) == 0][:size]
    primary = cluster.owner_of_slot(key_slot(shard_prefix(0).encode()))

    async def one(device: int) -> str | None:
        accepted = await queue.enqueue(note(device, device))
        if ack is not None:
            try:
                await ack.confirm([accepted.id])
            except ReplicasBehind:  # not acknowledged: the client is told 503
                return None
        return accepted.id

    acknowledged = [i for i in await asyncio.gather(*(one(d) for d in devices)) if i]
    await asyncio.to_thread(cluster.kill_primary, primary)
    lost = sum([await queue.get(notification_id) is None for notification_id in acknowledged])
    await asyncio.to_thread(cluster.restart, primary)
    return len(acknowledged), lost


async def test_wait_closes_the_replication_loss_window_and_costs_a_round_trip(
    cluster: ValkeyCluster,
) -> None:
    client = connect(RedisSettings(url=cluster.url))
    assert isinstance(client, RedisCluster)
    await client.initialize()  # see test_topologies: redis-py races lazy initialisation
    queue = RelayQueue(client, QueueLimits(supersede=False))
    ack = ReplicaAcknowledgement(client, 1, 1000)
    plain = await timed_enqueues(queue, None, 500)
    waited = await timed_enqueues(queue, ack, 500)
    acked_plain, lost_plain = await burst_then_kill(cluster, client, None, 300)
    await client.aclose()
    client = connect(RedisSettings(url=cluster.url))
    assert isinstance(client, RedisCluster)
    await client.initialize()
    acked_wait, lost_wait = await burst_then_kill(cluster, client, ack, 300)
    await client.aclose()
    figures = {
        "enqueue_p50_ms": round(percentile(plain, 50), 2),
        "enqueue_p99_ms": round(percentile(plain, 99), 2),
        "enqueue_wait_p50_ms": round(percentile(waited, 50), 2),
        "enqueue_wait_p99_ms": round(percentile(waited, 99), 2),
        "burst_without_wait": {"acknowledged": acked_plain, "lost": lost_plain},
        "burst_with_wait": {"acknowledged": acked_wait, "lost": lost_wait},
    }
    print(f"\nack figures: {figures}")
    assert acked_wait > 0, figures
    assert lost_wait == 0, figures
    assert percentile(waited, 50) >= percentile(plain, 50), figures
