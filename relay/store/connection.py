"""Redis clients from settings (standalone, Sentinel, Cluster); WAIT-acknowledged writes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode, ClusterPubSub
from redis.asyncio.sentinel import Sentinel

from relay.config.topology import SentinelSet, Standalone, topology
from relay.store.errors import vanished_as_unreachable
from relay.store.keys import ACK_MARK, shard_of_id, shard_prefix
from relay.store.refusals import QueueRefusal

if TYPE_CHECKING:
    from relay.config.schema import RedisSettings

RedisClient: TypeAlias = "Redis | RedisCluster"

# A failover takes seconds; these keep a dead primary from holding a request much longer.
SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2.0
HEALTH_CHECK_INTERVAL_S = 30
# Per process and node. redis-py's default, 100, fails the 101st concurrent command at once
# (MaxConnectionsError) rather than queueing it; a server accepts 10000 clients.
MAX_CONNECTIONS = 1000
REPLICAS_BEHIND_RETRY_AFTER_S = 1

# ---- clients ----


class _SlotMapFirstPubSub(ClusterPubSub):
    """redis-py routes SUBSCRIBE by the slot map, which only a first regular command loads: a
    subscription made before any (a worker's first act) fails with KeyError. Load it first."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        await self.cluster.initialize()
        return await super().execute_command(*args, **kwargs)


class RelayRedisCluster(RedisCluster):
    """RedisCluster whose pub/sub works as the first thing a process does, and which routes FCALL
    by its keys itself."""

    async def _determine_slot(self, command: str, *args: Any) -> int:
        # FCALL spells its keys as EVALSHA does (name, count, keys...); redis-py would ask a node
        # for them (COMMAND GETKEYS), a round trip per call.
        return await super()._determine_slot("EVALSHA" if command == "FCALL" else command, *args)

    def pubsub(
        self,
        node: ClusterNode | None = None,
        host: str | None = None,
        port: int | None = None,
        **kwargs: Any,
    ) -> ClusterPubSub:
        return _SlotMapFirstPubSub(self, node=node, host=host, port=port, **kwargs)


def connect(settings: RedisSettings) -> Redis | RedisCluster:
    """An asyncio client for the configured topology; no connection is made until first use."""
    found = topology(settings)
    if isinstance(found, Standalone):
        password = settings.password.get_secret_value() if settings.password else None
        extra: dict[str, Any] = {} if password is None else {"password": password}
        return Redis.from_url(
            found.url,
            health_check_interval=HEALTH_CHECK_INTERVAL_S,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            max_connections=MAX_CONNECTIONS,
            **extra,
        )
    if isinstance(found, SentinelSet):
        # The Sentinels themselves usually run without auth; the data nodes' password is not
        # theirs to know.
        sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            list(found.sentinels),
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            sentinel_kwargs={"socket_timeout": SOCKET_TIMEOUT_S, "ssl": found.tls},
        )
        client: Redis = sentinel.master_for(
            found.service_name,
            db=found.db,
            username=found.username,
            password=found.password,
            ssl=found.tls,
            health_check_interval=HEALTH_CHECK_INTERVAL_S,
            max_connections=MAX_CONNECTIONS,
        )
        return client
    return RelayRedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in found.nodes],
        username=found.username,
        password=found.password,
        ssl=found.tls,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        max_connections=MAX_CONNECTIONS,
    )


# ---- acknowledged writes ----


class ReplicasBehind(QueueRefusal):
    """Fewer replicas than asked confirmed the write in time. It is stored on the primary and will
    most likely be delivered, but a failover now could lose it: the client should send it again,
    with the same idempotency key so a copy that survived is not queued twice."""

    reason = "replicas_behind"

    def __init__(self, acknowledged: int, wanted: int, timeout_ms: int) -> None:
        super().__init__(
            f"only {acknowledged} of the {wanted} Redis replicas asked for (redis.ack_replicas)"
            f" confirmed the write within {timeout_ms} ms; send it again with the same"
            " idempotency key",
            REPLICAS_BEHIND_RETRY_AFTER_S,
        )
        self.acknowledged = acknowledged
        self.wanted = wanted


@dataclass(frozen=True, slots=True)
class ReplicaAcknowledgement:
    """WAIT for `replicas` replicas to hold what the queue wrote, on each node concerned."""

    client: RedisClient
    replicas: int
    timeout_ms: int

    async def confirm(self, notification_ids: Iterable[str]) -> int:
        """Block until every write made before this call to the shards of these ids is held by
        `replicas` replicas; returns the fewest that acknowledged on any node concerned.
        Raises ReplicasBehind when that is fewer than asked."""
        markers = self._markers_by_node(notification_ids)
        if not markers:
            return self.replicas
        with vanished_as_unreachable():
            acknowledged = min(await asyncio.gather(*(self._wait(m) for m in markers)))
        if acknowledged < self.replicas:
            raise ReplicasBehind(acknowledged, self.replicas, self.timeout_ms)
        return acknowledged

    def _markers_by_node(self, notification_ids: Iterable[str]) -> list[str]:
        """One marker key per node holding any of the ids' shards (one per shard standalone)."""
        shards = {shard for i in notification_ids if (shard := shard_of_id(i)) is not None}
        markers = [shard_prefix(shard) + ACK_MARK for shard in sorted(shards)]
        if not isinstance(self.client, RedisCluster):
            return markers[:1]
        by_node: dict[str, str] = {}
        for marker in markers:
            node = self.client.get_node_from_key(marker)
            if node is not None:
                by_node.setdefault(node.name, marker)
        return list(by_node.values())

    async def _wait(self, marker: str) -> int:
        # The marker write and WAIT share one connection (a pipeline goes over one connection per
        # node), and replication is ordered: replicas holding the marker hold all before it.
        pipe = self.client.pipeline(transaction=False)
        pipe.set(marker, int(time.time() * 1000))
        if isinstance(self.client, RedisCluster):
            node = self.client.get_node_from_key(marker)
            pipe.execute_command("WAIT", self.replicas, self.timeout_ms, target_nodes=node)
        else:
            pipe.execute_command("WAIT", self.replicas, self.timeout_ms)
        _, acknowledged = await pipe.execute()
        return int(acknowledged)


def replica_acknowledgement(
    client: RedisClient, settings: RedisSettings
) -> ReplicaAcknowledgement | None:
    """The acknowledgement the settings ask for, or None when ack_replicas is 0."""
    if settings.ack_replicas == 0:
        return None
    return ReplicaAcknowledgement(client, settings.ack_replicas, settings.ack_timeout_ms)
