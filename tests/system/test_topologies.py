"""Redis Cluster and Sentinel: URL forms, the queue and pipeline suites on a cluster, failover."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import test_relay_pipeline
import topologies
from eventually import eventually
from pydantic import SecretStr
from redis.asyncio import RedisCluster
from redis.crc import key_slot
from relay_harness import RelayHarness, running_relay
from test_deploy_files import relay_container, rendered, validate_schema

# The queue's, the route store's and the pipeline's own tests, collected again here with `redis`
# and `redis_url` below pointing at the cluster: every script and path runs on it, so a CROSSSLOT
# error (a script touching two slots) would fail them.
from test_queue import *  # noqa: F403
from test_relay_pipeline import *  # noqa: F403
from test_routes import *  # noqa: F403
from topologies import SentinelTopology, ValkeyCluster, client_of

from relay.config.loading import load_settings
from relay.config.schema import ConfigError, RedisSettings
from relay.config.topology import ClusterSeeds, SentinelSet, Standalone, parse_redis_url, topology
from relay.core.model import Notification
from relay.store.connection import (
    ReplicaAcknowledgement,
    ReplicasBehind,
    connect,
    replica_acknowledgement,
)
from relay.store.keys import shard_prefix
from relay.store.queue import RelayQueue
from relay.store.records import QueueLimits
from relay.store.scripts import LIBRARY

# The topology fixtures this module's tests ask for by name.
valkey_cluster = topologies.valkey_cluster
cluster = topologies.cluster
sentinel_set_session = topologies.sentinel_set_session
sentinel_set = topologies.sentinel_set

DEVICES = 500
FAILOVER_RETRY_S = 10.0


# ---- URL forms and settings (pure) ----


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://db:6379/2", Standalone("redis://db:6379/2")),
        ("rediss://:pw@db:6380/0", Standalone("rediss://:pw@db:6380/0")),
        ("unix:///run/valkey.sock", Standalone("unix:///run/valkey.sock")),
        (
            "redis+sentinel://s1:26379,s2:26380,s3/relay/3",
            SentinelSet((("s1", 26379), ("s2", 26380), ("s3", 26379)), "relay", 3),
        ),
        (
            "rediss+sentinel://app:p%40ss@[::1]:5000/relay",
            SentinelSet((("::1", 5000),), "relay", 0, "app", "p@ss", tls=True),
        ),
        (
            "redis+cluster://:pw@n1:7000,n2:7001,n3",
            ClusterSeeds((("n1", 7000), ("n2", 7001), ("n3", 6379)), None, "pw"),
        ),
    ],
)
def test_a_url_names_its_topology(url: str, expected: object) -> None:
    assert parse_redis_url(url) == expected


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://:s3cret@db:1", "the URL scheme must be one of"),
        ("redis+sentinel://:s3cret@s1:1", "needs the service name"),
        ("redis+sentinel://:s3cret@s1:1/relay/x", "must be a number"),
        ("redis+sentinel://:s3cret@/relay", "at least one host:port Sentinel"),
        ("redis+cluster://:s3cret@n1:1/2", "has no path"),
        ("redis+cluster://:s3cret@n1:99999", "port must be a number from 1 to 65535"),
    ],
)
def test_a_bad_url_is_refused_naming_the_part_not_the_password(url: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env={"RELAY_REDIS_URL": url})
    [line] = caught.value.problems
    assert problem in line
    assert "s3cret" not in line


def test_explicit_sentinels_and_cluster_nodes_fold_into_the_url_from_env() -> None:
    sentinel = load_settings(
        env={"RELAY_REDIS_SENTINELS": "s1:26379, s2:26379", "RELAY_REDIS_SERVICE_NAME": "relay"}
    ).redis
    assert sentinel.url == "redis+sentinel://s1:26379,s2:26379/relay/0"
    assert sentinel.sentinels == ["s1:26379", "s2:26379"]
    seeds = load_settings(env={"RELAY_REDIS_CLUSTER_NODES": "n1:7000,n2:7000"}).redis
    assert topology(seeds) == ClusterSeeds((("n1", 7000), ("n2", 7000)))
    # REDIS_URL is only a fallback: it does not override an explicit topology.
    both = {"RELAY_REDIS_CLUSTER_NODES": "n1:7000", "REDIS_URL": "redis://other:1/0"}
    assert load_settings(env=both).redis.url == "redis+cluster://n1:7000"


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"sentinels": ["s1:1"]}, "needs both sentinels and service_name"),
        ({"service_name": "relay"}, "needs both sentinels and service_name"),
        ({"sentinels": ["s1:1"], "service_name": "r", "cluster_nodes": ["n:1"]}, "not both"),
        ({"url": "redis://db:1/0", "cluster_nodes": ["n:1"]}, "not both"),
        ({"cluster_nodes": ["n1"]}, "the port is missing"),
        ({"ack_replicas": -1}, "greater than or equal to 0"),
    ],
)
def test_contradictory_redis_settings_are_refused(section: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        RedisSettings.model_validate(section)


def test_ack_replicas_zero_means_no_acknowledgement() -> None:
    client = connect(RedisSettings(url="redis://127.0.0.1:1/0"))
    assert replica_acknowledgement(client, RedisSettings(url="redis://db:1/0")) is None
    ack = replica_acknowledgement(client, RedisSettings(url="redis://db:1/0", ack_replicas=2))
    assert ack == ReplicaAcknowledgement(client, 2, 250)


def test_the_password_setting_applies_only_when_the_url_has_none() -> None:
    seeds = RedisSettings(cluster_nodes=["n1:7000"], password=SecretStr("pw"))
    assert topology(seeds) == ClusterSeeds((("n1", 7000),), password="pw")
    own = RedisSettings(url="redis+sentinel://:mine@s1:1/relay", password=SecretStr("pw"))
    found = topology(own)
    assert isinstance(found, SentinelSet)
    assert found.password == "mine"


def test_the_cluster_overlay_is_valid_and_points_both_roles_at_seed_nodes() -> None:
    manifests = rendered("k8s/overlays/cluster")
    for manifest in manifests:
        validate_schema(manifest)
    for role in ("api", "worker"):
        env = {
            item["name"]: item.get("value", "user:from-a-secret")
            for item in relay_container(manifests, role)["env"]
        }
        assert "RELAY_REDIS_URL" not in env
        del env["RELAY_CONFIG"]  # the production relay.yaml names no Redis
        redis_settings = load_settings(env=env).redis
        seeds = topology(redis_settings)
        assert isinstance(seeds, ClusterSeeds)
        assert len(seeds.nodes) == 3
        assert seeds.password
        assert redis_settings.ack_replicas == 1
        if role == "api":
            assert {"RELAY_API_TOKENS", "RELAY_BASIC_AUTH"} <= set(env)


# ---- the suites on the cluster ----


@pytest.fixture
def redis_url(cluster: ValkeyCluster) -> str:
    return cluster.url


@pytest.fixture
async def redis(cluster: ValkeyCluster) -> AsyncIterator[RedisCluster]:
    client = connect(RedisSettings(url=cluster.url))
    assert isinstance(client, RedisCluster)
    # The slot map first: redis-py's cluster pub/sub cannot route without it, and many first
    # commands at once race its lazy loading (reported; the service should initialize too).
    await client.initialize()
    try:
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def warm_relay(*args: Any, **kwargs: Any) -> AsyncIterator[RelayHarness]:
    """running_relay whose cluster client has loaded the slot map before the test's first burst:
    redis-py 8.1 breaks connections when many first commands race its lazy initialisation."""
    async with running_relay(*args, **kwargs) as relay:
        await relay.queue.ping()
        yield relay


@pytest.fixture(autouse=True)
def _pipeline_tests_warm_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(test_relay_pipeline, "running_relay", warm_relay)


def note_for(device: int, n: int = 0) -> Notification:
    return Notification(
        app="dev",
        device_token=f"{device:064x}",
        payload=b'{"aps":{"alert":"x"}}',
        push_type="alert",
        priority=10,
        expires_at=2_000_000_000,
        service_id=f"S{device}-{n}",
    )


async def test_shards_spread_over_every_primary(
    cluster: ValkeyCluster, redis: RedisCluster
) -> None:
    queue = RelayQueue(redis, QueueLimits())
    for start in range(0, DEVICES, 250):
        results = await queue.enqueue_many([note_for(d) for d in range(start, start + 250)])
        assert all(not isinstance(r, Exception) for r in results)
    primaries = cluster.primaries()
    owner = {
        shard: cluster.owner_of_slot(key_slot(shard_prefix(shard).encode())).port
        for shard in range(queue.limits.shards)
    }
    keys = {}
    for primary in primaries:
        with client_of(primary) as client:
            keys[primary.port] = int(client.dbsize())
    shards_per_primary = Counter(owner.values())
    total = sum(keys.values())
    print(f"\nshard -> primary port: {owner}")
    print(f"shards per primary: {dict(shards_per_primary)}; keys per primary: {keys}")
    assert set(shards_per_primary) == {p.port for p in primaries}
    # shard_tag spreads 16 shards over the default 3-way slot split as 6/5/5.
    assert sorted(shards_per_primary.values()) == [5, 5, 6]
    assert min(keys.values()) > 0.25 * total, keys
    await queue.aclose()


async def test_each_primary_gets_the_library_and_fcall_is_routed_by_its_keys(
    cluster: ValkeyCluster, redis: RedisCluster
) -> None:
    """A primary without the scripts' library (flushed, or new to the cluster) is given it on
    the first call that finds it missing, and redis-py routes FCALL by its keys itself rather
    than asking a node for them (COMMAND GETKEYS: a round trip per call)."""
    primaries = cluster.primaries()
    for primary in primaries:
        with client_of(primary) as client:
            client.function_flush()
            client.config_resetstat()
    queue = RelayQueue(redis, QueueLimits())
    results = await queue.enqueue_many([note_for(d) for d in range(DEVICES)])
    assert all(not isinstance(r, Exception) for r in results)
    assert (await queue.claim(DEVICES)).claimed
    for primary in primaries:
        with client_of(primary) as client:
            libraries = [
                dict(zip(lib[::2], lib[1::2], strict=True)) for lib in client.function_list()
            ]
            assert [lib[b"library_name"] for lib in libraries] == [LIBRARY.name.encode()]
            stats = client.info("commandstats")
            assert stats["cmdstat_fcall"]["calls"] > 0, primary.port
            assert not any("getkeys" in name for name in stats), (primary.port, list(stats))
    await queue.aclose()


async def test_ack_replicas_waits_on_the_primary_that_owns_the_shard(
    cluster: ValkeyCluster, redis: RedisCluster
) -> None:
    queue = RelayQueue(redis, QueueLimits())
    accepted = await queue.enqueue(note_for(1))
    assert await ReplicaAcknowledgement(redis, 1, 1000).confirm([accepted.id]) == 1
    with pytest.raises(ReplicasBehind) as caught:
        await ReplicaAcknowledgement(redis, 2, 50).confirm([accepted.id])
    assert (caught.value.reason, caught.value.retry_after_s) == ("replicas_behind", 1)
    assert caught.value.acknowledged == 1
    # A replica that has not taken the write cannot acknowledge it.
    shard = queue.shard_of("dev", f"{1:064x}")
    primary = cluster.owner_of_slot(key_slot(shard_prefix(shard).encode()))
    view = {v.port: v for v in cluster.view()}
    replica = next(
        cluster.node_on(v.port) for v in view.values() if v.primary_id == view[primary.port].node_id
    )
    assert replica.process is not None
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        later = await queue.enqueue(note_for(1, 2))
        with pytest.raises(ReplicasBehind):
            await ReplicaAcknowledgement(redis, 1, 200).confirm([later.id])
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    assert await ReplicaAcknowledgement(redis, 1, 2000).confirm([later.id]) == 1
    await queue.aclose()


async def notify_as_a_client(relay: RelayHarness, device: str) -> str:
    """POST one notification, sending it again while the relay answers 503 (as while Redis fails
    over: "nothing was stored, retry shortly"), for at most FAILOVER_RETRY_S."""
    body = {"device_token": device, "service_id": f"S{device[:8]}", "action": "wait-for-agent"}

    async def accepted() -> str | None:
        status, answer, headers = await relay.call("POST", "/v1/notifications", body)
        if status == 202:
            return str(answer["id"])
        assert status == 503, answer
        assert headers["Retry-After"], answer
        return None

    # Polled every 0.1 s: a client's back-off, shorter than Retry-After to keep CI fast.
    return await eventually(
        accepted, timeout_s=FAILOVER_RETRY_S, interval_s=0.1, what="accepted after the failover"
    )


async def push_and_deliver(relay: RelayHarness, count: int) -> None:
    ids = [await notify_as_a_client(relay, d) for d in await relay.device_tokens(count)]
    await asyncio.gather(*(relay.wait_state(i, {"delivered"}) for i in ids))


@pytest.mark.slow
async def test_the_relay_delivers_through_a_cluster_primary_failover(
    cluster: ValkeyCluster, state_dir: Path
) -> None:
    async with warm_relay(cluster.url, state_dir, queue={"supersede": False}) as relay:
        await push_and_deliver(relay, 30)
        victim = cluster.owner_of_slot(key_slot(shard_prefix(0).encode()))
        cluster.kill_primary(victim)
        await push_and_deliver(relay, 30)
    cluster.restart(victim)


# ---- Sentinel ----


@pytest.mark.slow
async def test_the_relay_delivers_through_a_sentinel_failover(
    sentinel_set: SentinelTopology, state_dir: Path
) -> None:
    async with warm_relay(sentinel_set.url, state_dir, queue={"supersede": False}) as relay:
        await push_and_deliver(relay, 20)
        client = connect(RedisSettings(url=sentinel_set.url))
        ids = [await notify_as_a_client(relay, d) for d in await relay.device_tokens(5)]
        assert await ReplicaAcknowledgement(client, 1, 1000).confirm(ids) == 1
        await client.aclose()
        old = sentinel_set.kill_primary()
        await push_and_deliver(relay, 20)
    sentinel_set.restart(old)
