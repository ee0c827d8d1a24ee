"""Redis memory: the eviction policies refused and the high watermark (pure), read from real
Valkey servers (standalone and every primary of a Cluster), watched across the watermark, shown
in metrics and readiness."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
import structlog
import topologies
from eventually import eventually
from production_config import production_document
from prometheus_client import REGISTRY
from topologies import ValkeyCluster

from relay.commands.check import memory_finding
from relay.config.schema import RedisSettings, Settings
from relay.store.connection import connect
from relay.store.memory import (
    MemoryWatch,
    RedisMemory,
    above_watermark,
    fullest,
    memory_of,
    policy_refusal,
    read_memory,
)
from relay_devkit.embedded import EmbeddedServer

valkey_cluster = topologies.valkey_cluster
MiB = 1 << 20

# ---- pure ----

ACCEPTED = ("noeviction", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl")
REFUSED = ("allkeys-lru", "allkeys-lfu", "allkeys-random")


def memory(
    used: int = 0, maximum: int = 0, policy: str = "noeviction", node: str = "n:1"
) -> RedisMemory:
    return RedisMemory(node=node, used_bytes=used, max_bytes=maximum, policy=policy)


@pytest.mark.parametrize("policy", ACCEPTED)
def test_noeviction_and_volatile_policies_are_accepted(policy: str) -> None:
    assert policy_refusal(memory(policy=policy)) is None


@pytest.mark.parametrize("policy", REFUSED)
def test_an_allkeys_policy_is_refused_in_one_line_naming_node_policy_why_and_fix(
    policy: str,
) -> None:
    refusal = policy_refusal(memory(policy=policy, node="10.0.0.7:6379"))
    assert refusal is not None
    assert "\n" not in refusal
    for words in ("10.0.0.7:6379", policy, "acknowledged", "noeviction", "volatile-*"):
        assert words in refusal


@pytest.mark.parametrize(
    ("memories", "above"),
    [
        ([], False),  # unknown: not above
        ([memory(used=10 * MiB, maximum=0)], False),  # no maxmemory: no watermark
        ([memory(used=89, maximum=100)], False),
        ([memory(used=90, maximum=100)], True),  # at the watermark counts
        ([memory(used=120, maximum=100)], True),  # past maxmemory (Redis lets it overshoot)
        ([memory(used=10, maximum=100), memory(used=95, maximum=100, node="n:2")], True),
    ],
)
def test_above_the_watermark_while_any_bounded_primary_uses_that_fraction(
    memories: list[RedisMemory], above: bool
) -> None:
    assert above_watermark(memories, 0.9) is above


def test_the_fullest_primary_is_the_one_nearest_its_maxmemory() -> None:
    big = memory(used=50 * MiB, maximum=100 * MiB, node="a")
    near = memory(used=9 * MiB, maximum=10 * MiB, node="b")
    assert fullest([big, near, memory(used=1 << 40, node="unbounded")]) == near
    assert fullest([memory(used=1)]) is None


def test_info_memory_fields_and_their_absence() -> None:
    info = {"used_memory": 1234, "maxmemory": 5678, "maxmemory_policy": "volatile-lru"}
    assert memory_of("n", info) == RedisMemory("n", 1234, 5678, "volatile-lru")
    # A server that hides the policy is not refused for it.
    assert policy_refusal(memory_of("n", {})) is None


def test_check_fails_an_allkeys_policy_and_warns_of_no_maxmemory() -> None:
    refused = memory_finding(memory(used=MiB, maximum=100 * MiB, policy="allkeys-lru"))
    assert (refused.level, refused.ok) == ("FAIL", False)
    assert "allkeys-lru" in refused.line()
    assert "Fix: " in refused.line()
    unbounded = memory_finding(memory(used=3 * MiB))
    assert (unbounded.level, unbounded.ok) == ("warn", True)
    assert "maxmemory 0 (unbounded)" in unbounded.detail
    assert "host's memory runs out" in unbounded.detail
    bounded = memory_finding(memory(used=25 * MiB, maximum=100 * MiB, policy="volatile-lru"))
    assert bounded.level == "ok"
    assert "maxmemory 100.0 MiB, 25.0 MiB used (25 %)" in bounded.detail
    assert "evicts only history" in bounded.detail


def test_the_watermark_setting_is_a_fraction_of_maxmemory() -> None:
    assert RedisSettings().memory_watermark == 0.9
    assert RedisSettings(memory_watermark=1).memory_watermark == 1
    for wrong in (0, -0.5, 1.01):
        with pytest.raises(ValueError, match="memory_watermark"):
            RedisSettings(memory_watermark=wrong)


# ---- real servers ----


def private_valkey(data_dir: Path, *options: str) -> EmbeddedServer:
    return EmbeddedServer(data_dir=data_dir, extra_args=options).start()


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A server of this test's own: the test changes its maxmemory and policy."""
    server = private_valkey(tmp_path / "valkey", "--maxmemory-policy", "noeviction")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def admin(valkey: EmbeddedServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(valkey.url)
    try:
        yield client
    finally:
        await client.aclose()


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_read_memory_reports_the_server_as_info_does(
    valkey: EmbeddedServer, admin: aioredis.Redis
) -> None:
    await admin.config_set("maxmemory", 64 * MiB)
    await admin.config_set("maxmemory-policy", "volatile-lru")
    client = connect(RedisSettings(url=valkey.url))
    try:
        [found] = await read_memory(client)
    finally:
        await client.aclose()
    assert (found.node, found.max_bytes, found.policy) == (
        f"127.0.0.1:{valkey.port}",
        64 * MiB,
        "volatile-lru",
    )
    assert 0 < found.used_bytes < 64 * MiB


async def test_the_watch_enters_and_leaves_the_watermark_once_each_with_metrics(
    valkey: EmbeddedServer, admin: aioredis.Redis
) -> None:
    node = f"127.0.0.1:{valkey.port}"
    client = connect(RedisSettings(url=valkey.url))
    watch = MemoryWatch(client, 0.9)
    try:
        with structlog.testing.capture_logs() as logs:
            await watch.poll()
            assert watch.above_watermark is False  # maxmemory 0: no watermark
            assert gauge("apns_relay_redis_memory_max_bytes", node=node) == 0
            used = int((await admin.info("memory"))["used_memory"])
            # used is about 95 % of maxmemory: past the 0.9 watermark, short of refusing writes.
            await admin.config_set("maxmemory", int(used / 0.95))
            for _ in range(3):  # repeated reads above it: one transition, one line
                await watch.poll()
                assert watch.above_watermark is True
            assert gauge("apns_relay_redis_memory_watermark") == 1
            [latest] = watch.latest
            assert gauge("apns_relay_redis_memory_used_bytes", node=node) == latest.used_bytes
            assert gauge("apns_relay_redis_memory_max_bytes", node=node) == latest.max_bytes
            await admin.config_set("maxmemory", used * 10)
            await watch.poll()
            await watch.poll()
            assert watch.above_watermark is False
            assert gauge("apns_relay_redis_memory_watermark") == 0
            await admin.config_set("maxmemory-policy", "allkeys-random")
            await watch.poll()
    finally:
        await client.aclose()
    transitions = [entry for entry in logs if entry["event"] == "redis_memory_watermark"]
    assert [(t["state"], t["node"]) for t in transitions] == [("entered", node), ("left", node)]
    entered = transitions[0]
    assert entered["max_bytes"] == int(used / 0.95)
    assert entered["fraction"] >= 0.9
    assert entered["watermark"] == 0.9
    # The policy's info series follows the policy: the old one goes.
    assert gauge("apns_relay_redis_maxmemory_policy_info", node=node, policy="allkeys-random") == 1
    assert gauge("apns_relay_redis_maxmemory_policy_info", node=node, policy="noeviction") is None
    assert watch.refusal is not None
    assert "allkeys-random" in watch.refusal


async def test_an_unreachable_redis_is_not_above_the_watermark(
    valkey: EmbeddedServer, admin: aioredis.Redis
) -> None:
    client = connect(RedisSettings(url=valkey.url))
    watch = MemoryWatch(client, 0.5)
    try:
        used = int((await admin.info("memory"))["used_memory"])
        await admin.config_set("maxmemory", int(used * 1.2))
        assert await watch.poll() is not None
        assert watch.above_watermark is True
        valkey.stop()
        assert await watch.poll() is None
        assert (watch.above_watermark, watch.latest, watch.refusal) == (False, [], None)
        assert gauge("apns_relay_redis_memory_watermark") == 0
    finally:
        await client.aclose()


async def test_the_watch_runs_until_stopped_about_once_a_second(
    valkey: EmbeddedServer, admin: aioredis.Redis
) -> None:
    client = connect(RedisSettings(url=valkey.url))
    watch = MemoryWatch(client, 0.9)
    stop = asyncio.Event()
    task = asyncio.create_task(watch.run(stop))
    try:
        await watch.answered()
        used = int((await admin.info("memory"))["used_memory"])
        await admin.config_set("maxmemory", int(used / 0.95))
        await eventually(lambda: watch.above_watermark, what="the watch to see the watermark")
    finally:
        stop.set()
        await task
        await client.aclose()


async def test_read_memory_reads_every_primary_of_a_cluster(valkey_cluster: ValkeyCluster) -> None:
    client = connect(RedisSettings(url=valkey_cluster.url))
    try:
        found = await read_memory(client)
    finally:
        await client.aclose()
    assert [m.node for m in found] == sorted(
        f"127.0.0.1:{p.port}" for p in valkey_cluster.primaries()
    )
    assert all(m.policy == "noeviction" and m.used_bytes > 0 for m in found)


async def test_readiness_rereads_the_policy_and_names_no_address(
    valkey: EmbeddedServer, admin: aioredis.Redis, tmp_path: Path
) -> None:
    from relay.runtime import run_relay  # the api's whole stack, as in production

    settings = Settings.model_validate(production_document(tmp_path, valkey.url))

    async def readiness(session: aiohttp.ClientSession, url: str) -> tuple[int, list[str]]:
        async with session.get(url + "/readyz") as response:
            return response.status, (await response.json())["reasons"]

    async with run_relay(settings, role="api") as relay, aiohttp.ClientSession() as session:
        assert await readiness(session, relay.url) == (200, [])
        await admin.config_set("maxmemory-policy", "allkeys-lru")
        status, reasons = await readiness(session, relay.url)
        async with session.get(relay.url + "/metrics") as response:
            exposition = await response.text()
        await admin.config_set("maxmemory-policy", "volatile-ttl")
        assert await readiness(session, relay.url) == (200, [])
    assert status == 503
    [reason] = reasons
    assert "allkeys-lru" in reason
    assert "noeviction" in reason
    assert str(valkey.port) not in reason
    assert "127.0.0.1" not in reason
    node = f'node="127.0.0.1:{valkey.port}"'
    assert (
        f'apns_relay_redis_maxmemory_policy_info{{{node},policy="allkeys-lru"}} 1.0' in exposition
    )
    assert f"apns_relay_redis_memory_used_bytes{{{node}}}" in exposition
    # Exported from the start (its value is this test process's: other tests trim).
    assert re.search(r"^apns_relay_history_trimmed_total \d", exposition, re.MULTILINE)
