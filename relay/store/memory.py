"""Redis memory as the relay must know it: each primary's use, limit and eviction policy (from
INFO, which managed Redis leaves open where it disables CONFIG), the policies a relay refuses to
run on, and the watch on the high watermark that sends new pushes to the spool before Redis
refuses them (RabbitMQ's memory alarm, here)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from redis.asyncio import Redis, RedisCluster
from redis.asyncio.sentinel import SentinelConnectionPool

from relay.store.connection import RedisClient
from relay.store.errors import REDIS_ERRORS, vanished_as_unreachable
from relay.telemetry import metrics

log = structlog.get_logger("relay.memory")

DEFAULT_WATERMARK = 0.9
POLL_INTERVAL_S = 1.0
# What INFO reports when maxmemory-policy is absent (a server that hides it): not refused.
UNKNOWN_POLICY = "unknown"
# Every allkeys-* policy (lru, lfu, random) may evict a queued notification's keys.
REFUSED_POLICY_PREFIX = "allkeys-"


@dataclass(frozen=True, slots=True)
class RedisMemory:
    """One primary's memory as INFO memory reports it; max_bytes 0 means no limit."""

    node: str
    used_bytes: int
    max_bytes: int
    policy: str

    @property
    def fraction(self) -> float | None:
        """used / max, or None when Redis has no maxmemory (it grows until the host runs out)."""
        return self.used_bytes / self.max_bytes if self.max_bytes > 0 else None


def evicts_queued_work(policy: str) -> bool:
    return policy.startswith(REFUSED_POLICY_PREFIX)


def policy_refusal(memory: RedisMemory) -> str | None:
    """The one-line start-up error for a policy that may evict queued notifications, or None
    (noeviction and volatile-* are accepted: volatile-* evicts only keys with a TTL, which are
    history: final records and idempotency keys)."""
    if not evicts_queued_work(memory.policy):
        return None
    return (
        f"Redis {memory.node} runs maxmemory-policy {memory.policy}: when it reaches maxmemory"
        " it evicts any key, queued notifications included, so pushes already acknowledged to"
        " GMS would be lost without a word. Set maxmemory-policy noeviction (or a volatile-*"
        " policy, which evicts only history) on every primary"
    )


def fullest(memories: Sequence[RedisMemory]) -> RedisMemory | None:
    """The primary nearest its maxmemory (None when none has a limit)."""
    bounded = [m for m in memories if m.max_bytes > 0]
    return max(bounded, key=lambda m: m.used_bytes / m.max_bytes, default=None)


def above_watermark(memories: Sequence[RedisMemory], watermark: float) -> bool:
    """Whether any primary with a maxmemory uses at least `watermark` of it."""
    return any(m.max_bytes > 0 and m.used_bytes >= watermark * m.max_bytes for m in memories)


def memory_of(node: str, info: Mapping[str, Any]) -> RedisMemory:
    """A RedisMemory from the fields of INFO memory (as redis-py parses them)."""
    return RedisMemory(
        node=node,
        used_bytes=int(info.get("used_memory", 0)),
        max_bytes=int(info.get("maxmemory", 0)),
        policy=str(info.get("maxmemory_policy", UNKNOWN_POLICY)),
    )


def _node_of(client: Redis) -> str:
    """How a standalone or Sentinel-managed primary is named: host:port, the socket path, or for
    Sentinel the service's name (the same node label across a failover). Never a password."""
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        return f"sentinel:{pool.service_name}"
    kwargs = pool.connection_kwargs
    if "path" in kwargs:
        return str(kwargs["path"])
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


async def read_memory(client: RedisClient) -> list[RedisMemory]:
    """Every primary's memory: one for standalone and Sentinel, each primary of a Cluster.
    Raises one of REDIS_ERRORS when Redis (or a primary of the Cluster) does not answer."""
    with vanished_as_unreachable():
        if isinstance(client, RedisCluster):
            await client.initialize()
            primaries = client.get_primaries()
            infos = await asyncio.gather(
                *(client.info("memory", target_nodes=node) for node in primaries)
            )
            return sorted(
                (memory_of(node.name, info) for node, info in zip(primaries, infos, strict=True)),
                key=lambda m: m.node,
            )
        return [memory_of(_node_of(client), await client.info("memory"))]


class MemoryWatch:
    """Redis memory read about once a second: `above_watermark` (what ingest consults before
    writing), `latest` (what readiness and the metrics show), and the policy refusal found."""

    def __init__(
        self, client: RedisClient, watermark: float, *, interval_s: float = POLL_INTERVAL_S
    ) -> None:
        self.client = client
        self.watermark = watermark
        self.interval_s = interval_s
        self.latest: list[RedisMemory] = []
        self._above = False
        self._policies: dict[str, str] = {}  # node -> the policy its info series carries
        self._answered = asyncio.Event()

    @property
    def above_watermark(self) -> bool:
        """True while a primary uses at least the watermark of its maxmemory; False while Redis
        is unknown or unreachable (ingest's outage handling covers that)."""
        return self._above

    @property
    def refusal(self) -> str | None:
        """The start-up error of the first primary whose policy may evict queued work."""
        return next((r for m in self.latest if (r := policy_refusal(m)) is not None), None)

    @property
    def has_answered(self) -> bool:
        """Whether a read has succeeded yet."""
        return self._answered.is_set()

    async def answered(self) -> list[RedisMemory]:
        """The memory of the first read that succeeded, once one has."""
        await self._answered.wait()
        return self.latest

    def refused_for_memory(self) -> None:
        """Redis refused a write for memory (OOM): above the watermark, whatever the last read
        said, until the next read says otherwise."""
        self._set_above(True, fullest(self.latest))

    async def poll(self) -> list[RedisMemory] | None:
        """Read every primary's memory once; None (and nothing known) when Redis does not answer."""
        try:
            memories = await read_memory(self.client)
        except REDIS_ERRORS:
            self.latest = []
            self._set_above(False, None)
            return None
        self.latest = memories
        self._publish(memories)
        self._set_above(above_watermark(memories, self.watermark), fullest(memories))
        self._answered.set()
        return memories

    async def run(self, stop: asyncio.Event) -> None:
        """Poll until `stop` is set."""
        while not stop.is_set():
            await self.poll()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_s)

    def _publish(self, memories: Sequence[RedisMemory]) -> None:
        for memory in memories:
            metrics.REDIS_MEMORY_USED.labels(node=memory.node).set(memory.used_bytes)
            metrics.REDIS_MEMORY_MAX.labels(node=memory.node).set(memory.max_bytes)
            before = self._policies.get(memory.node)
            if before != memory.policy:
                if before is not None:
                    metrics.REDIS_MAXMEMORY_POLICY.remove(memory.node, before)
                metrics.REDIS_MAXMEMORY_POLICY.labels(node=memory.node, policy=memory.policy).set(1)
                self._policies[memory.node] = memory.policy

    def _set_above(self, above: bool, fullest_node: RedisMemory | None) -> None:
        metrics.REDIS_MEMORY_WATERMARK.set(1 if above else 0)
        if above == self._above:
            return
        self._above = above
        facts: dict[str, Any] = {"watermark": self.watermark}
        if fullest_node is not None:
            facts.update(
                node=fullest_node.node,
                used_bytes=fullest_node.used_bytes,
                max_bytes=fullest_node.max_bytes,
                fraction=round(fullest_node.fraction or 0.0, 4),
            )
        else:
            facts["reason"] = "redis memory unknown (unreachable)"
        if above:
            log.warning("redis_memory_watermark", state="entered", **facts)
        else:
            log.info("redis_memory_watermark", state="left", **facts)
