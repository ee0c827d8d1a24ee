"""When Redis fills up (issue 22): GMS's pushes during an APNs outage whose backlog outgrows
Valkey's maxmemory are all answered 200 within 2 s and all delivered once APNs heals, and a second
wave is accepted after them; an eviction policy that could evict queued work stops the relay.

Real processes (`apns-relay api` and `worker`, the strict APNs simulator) and a Valkey of the
test's own, so its maxmemory and policy touch no other test. The load is test_ingest_outage's
GMS: open loop at 200 pushes a second, one attempt each, a 2 s client timeout, never a retry.
Figures are printed (-s). REDIS_FULL_MAXMEMORY_BYTES=209715200 runs the same scenarios as a
control: with 200 MB nothing fills up, so they check the harness rather than the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
import test_ingest_outage
from eventually import eventually
from relay_harness import app_tokens, relay_document, write_config
from simulator import SimInfo, control_client
from test_ingest_outage import (
    Figures,
    Push,
    Rig,
    assert_nothing_refused_or_lost,
    figures,
    gms_session,
    open_loop,
    rig,
    stop,
)
from test_outages import OUTAGE_503, p99
from test_startup_errors import assert_one_line, start

from relay.store.keys import HISTORY, IDEM
from relay_devkit.dev_mode import simulator_app
from relay_devkit.embedded import EmbeddedServer, free_port

sim = test_ingest_outage.sim

pytestmark = pytest.mark.slow

# An empty Valkey uses about 1.0 MiB. 2.5 MiB leaves ~1.5 MiB for the relay: the outage's
# backlog (OUTAGE_S * RATE = 4,000 notifications) needs 3.8 MB at today's ~950 B a queued
# notification and 2.4 MB at the target's 600 B, both well past it; the two waves' history
# (9,200 final records) 5.4 MB at ~585 B each, 1.8 MB at the target's 200 B.
MAXMEMORY_BYTES = int(os.environ.get("REDIS_FULL_MAXMEMORY_BYTES", str(5 * 512 * 1024)))
DEVICES = 200  # 20 pushes a device a wave: far below the per-device cap (100)
OUTAGE_S = 20.0  # APNs answers 503 to everything this long, under the load
HEALED_S = 3.0  # the load goes on this long after APNs heals
WAVE_S = OUTAGE_S + HEALED_S
# The route's probes back off to 2 s at most (30 s by default), so the drain starts soon after
# APNs heals.
CIRCUIT = {"probe_max_ms": 2_000}
QUEUE_SETTLED_S = 30.0
# The circuit's own lines: the outage the test makes, not a fault that can duplicate a send.
ROUTE_EVENTS = {"route_opened", "route_probing", "route_closed"}


@dataclass
class Wave:
    name: str
    pushes: list[Push]
    result: Figures
    spooled_metric: float  # the api's apns_relay_ingest_held_total{outcome="spooled"}, so far
    faults: Counter[str]  # the worker's warnings and errors, and APNs requests left unanswered
    queue: dict[str, Any]  # GET /v1/queue once the deliveries were counted

    def line(self, memory: dict[str, Any]) -> str:
        elapsed = [p.elapsed_s for p in self.pushes]
        answered = sum(1 for p in self.pushes if p.accepted)
        begun = self.pushes[0].started
        late = [p.started - begun for p in self.pushes if not p.accepted]
        when = f" (sent {min(late):.1f}..{max(late):.1f} s into the wave)" if late else ""
        return (
            f"{self.result.line(self.name)}; answered 200 {answered}{when}, answer p99"
            f" {p99(elapsed):.3f} s max {max(elapsed):.3f} s, spooled per /metrics"
            f" {self.spooled_metric:.0f}, faults {dict(self.faults)}, then pending"
            f" {self.queue.get('pending')} leased {self.queue.get('leased')}, Valkey peak"
            f" used_memory {memory['used_memory_peak']:,} of maxmemory {memory['maxmemory']:,} B"
        )


def valkey(tmp_path: Path, policy: str) -> EmbeddedServer:
    """A Valkey of this test's own; keyspace events report each key it evicts."""
    return EmbeddedServer(
        tmp_path / "valkey",
        extra_args=(
            "--maxmemory",
            str(MAXMEMORY_BYTES),
            "--maxmemory-policy",
            policy,
            "--notify-keyspace-events",
            "Ee",
        ),
    )


@contextlib.asynccontextmanager
async def evictions(url: str) -> AsyncIterator[list[str]]:
    """The names of the keys Valkey evicts while inside, in order."""
    evicted: list[str] = []
    client = aioredis.Redis.from_url(url, decode_responses=True)
    pubsub = client.pubsub()
    await pubsub.subscribe("__keyevent@0__:evicted")

    async def collect() -> None:
        async for message in pubsub.listen():
            if message["type"] == "message":
                evicted.append(message["data"])

    collecting = asyncio.create_task(collect())
    try:
        yield evicted
    finally:
        collecting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collecting
        await client.aclose()  # and its pool, the subscription's connection with it


def is_history(key: str) -> bool:
    """A bucket of final records or an idempotency record: what may be evicted, unlike queued
    work."""
    _, _, rest = key.partition("}:")
    return rest.startswith((HISTORY, IDEM))


async def memory(url: str) -> dict[str, Any]:
    client = aioredis.Redis.from_url(url)
    try:
        info: dict[str, Any] = await client.info("memory")
        info["evicted_keys"] = (await client.info("stats"))["evicted_keys"]
        return info
    finally:
        await client.aclose()


async def worker_faults(setup: Rig) -> Counter[str]:
    """What could make the relay send a notification twice: the worker's warnings and errors
    (a Redis refusal, a crash, a connection lost) and APNs requests with no answer (status 0),
    the circuit's lines about the outage aside."""
    faults: Counter[str] = Counter()
    for line in setup.worker.log().splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("level") in ("warning", "error") and record["event"] not in ROUTE_EVENTS:
                faults[record["event"]] += 1
    async with (
        aiohttp.ClientSession() as session,
        session.get(setup.worker.url + "/metrics") as response,
    ):
        text = await response.text()
    for match in re.finditer(
        r'^apns_relay_apns_responses_total\{.*status="0".*\} (\S+)$', text, re.M
    ):
        faults["apns_no_answer"] += int(float(match[1]))
    return faults


async def queue_settled(setup: Rig) -> dict[str, Any]:
    """Nothing pending, nothing leased, the spool empty: the queue's invariants after a drain."""

    async def settled() -> dict[str, Any] | None:
        status, totals = await setup.get("/v1/queue")
        spooled = await setup.metric("apns_relay_spool_notifications")
        done = status == 200 and totals["pending"] == totals["leased"] == 0 and spooled == 0
        return dict(totals) if done else None

    return await eventually(
        settled, timeout_s=QUEUE_SETTLED_S, interval_s=0.25, what="queue settled"
    )


async def gms_wave(setup: Rig, tokens: list[str], name: str, outage_s: float) -> Wave:
    """WAVE_S of GMS's load, APNs answering 503 to everything for its first `outage_s`; the
    deliveries counted once every accepted push has arrived (or figures' deadline passed)."""
    async with control_client(setup.sim) as control, gms_session() as session:
        await control.reset()  # each wave's deliveries apart: the pushes' ids repeat
        if outage_s:
            await control.put_faults(OUTAGE_503)
        load = asyncio.create_task(open_loop(session, setup.api.url, WAVE_S, tokens))
        if outage_s:
            await asyncio.sleep(outage_s)  # the outage's length: the load goes on meanwhile
            # Spooling or not, the api stays ready: it has a place for every push.
            status, ready = await setup.get("/readyz")
            assert status == 200, ready
            await control.clear_faults()
        pushes = await load
    result = await figures(setup.sim, pushes)
    spooled = await setup.metric(re.escape('apns_relay_ingest_held_total{outcome="spooled"}'))
    _, queue = await setup.get("/v1/queue")
    return Wave(name, pushes, result, spooled, await worker_faults(setup), queue)


def assert_every_200_delivered_once(wave: Wave, setup: Rig) -> None:
    """0 refused, 0 answers over 2 s, every 200 delivered in per-device order; a duplicate only
    where a fault may have left a send's outcome unknown."""
    assert_nothing_refused_or_lost(wave.result, wave.pushes, setup.api)
    assert wave.result.duplicates == 0 or wave.faults, wave.result


async def redis_full_run(tmp_path: Path, sim: SimInfo, policy: str) -> list[str]:
    """Both waves against a Valkey at MAXMEMORY_BYTES with `policy`; the keys it evicted."""
    with valkey(tmp_path, policy) as server:
        async with control_client(sim) as control:
            tokens = await app_tokens(control, simulator_app(sim), DEVICES)
        setup = await asyncio.to_thread(rig, tmp_path, sim, server.url, circuit=CIRCUIT)
        try:
            async with evictions(server.url) as evicted:
                outage = await gms_wave(setup, tokens, f"{policy}, APNs outage", OUTAGE_S)
                print("\n" + outage.line(await memory(server.url)))
                assert_every_200_delivered_once(outage, setup)
                print(f"queue after the outage's drain: {await queue_settled(setup)}")
                # A second wave as large: the first one's history must not block it.
                after = await gms_wave(setup, tokens, f"{policy}, second wave", 0.0)
                used = await memory(server.url)
                print(f"{after.line(used)}; evicted {used['evicted_keys']} keys")
                assert_every_200_delivered_once(after, setup)
                await queue_settled(setup)
                return list(evicted)
        finally:
            stop(setup.api, setup.worker)


@pytest.mark.beside
@pytest.mark.timeout(300)
async def test_noeviction_at_maxmemory_refuses_nothing_loses_nothing_and_takes_more(
    tmp_path: Path, sim: SimInfo
) -> None:
    await redis_full_run(tmp_path, sim, "noeviction")


@pytest.mark.beside
@pytest.mark.timeout(300)
async def test_volatile_lru_evicts_only_history(tmp_path: Path, sim: SimInfo) -> None:
    evicted = await redis_full_run(tmp_path, sim, "volatile-lru")
    kinds = Counter(key.partition("}:")[2].split(":", 1)[0] for key in evicted)
    print(f"evicted by kind: {dict(kinds)}")
    assert all(is_history(key) for key in evicted), [k for k in evicted if not is_history(k)][:5]


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-random"])
async def test_an_allkeys_policy_stops_api_and_worker_and_check_says_so(
    tmp_path: Path, sim: SimInfo, policy: str
) -> None:
    with valkey(tmp_path, policy) as server:
        config = write_config(tmp_path / "relay.yaml", relay_document(server.url, sim))
        for role in ("api", "worker"):
            result = await asyncio.to_thread(start, role, config, "--port", str(free_port()))
            # The line names the policy and the fix (noeviction, or a volatile-* policy).
            assert_one_line(result, 3, policy, "noeviction")
        checked = await asyncio.to_thread(start, "check", config)
    assert checked.returncode != 0, checked.stdout
    assert policy in checked.stdout + checked.stderr, (checked.stdout, checked.stderr)
