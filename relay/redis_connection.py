"""Redis clients from settings (standalone, Sentinel, Cluster); WAIT-acknowledged writes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode, ClusterPubSub
from redis.asyncio.sentinel import Sentinel

from relay.queue import QueueRefusal, shard_of_id, shard_prefix

if TYPE_CHECKING:
    from relay.config import RedisSettings

RedisClient: TypeAlias = "Redis | RedisCluster"

STANDALONE_SCHEMES = frozenset({"redis", "rediss", "unix"})
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}  # scheme -> TLS
CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_REDIS_PORT = 6379
# A failover takes seconds; these keep a dead primary from holding a request much longer.
SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 2.0
HEALTH_CHECK_INTERVAL_S = 30
# Per process and node. redis-py's default, 100, fails the 101st concurrent command at once
# (MaxConnectionsError) rather than queueing it; a server accepts 10000 clients.
MAX_CONNECTIONS = 1000
# Per shard: the key written just before WAIT. WAIT counts replicas that acknowledged this
# connection's last write; the marker makes that write one that follows the notification's.
ACK_MARK = "ack"
REPLICAS_BEHIND_RETRY_AFTER_S = 1

Address: TypeAlias = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Standalone:
    url: str


@dataclass(frozen=True, slots=True)
class SentinelSet:
    sentinels: tuple[Address, ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


@dataclass(frozen=True, slots=True)
class ClusterSeeds:
    nodes: tuple[Address, ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False


Topology: TypeAlias = Standalone | SentinelSet | ClusterSeeds


# ---- parsing (pure) ----


def parse_address(text: str, *, default_port: int | None) -> Address:
    """The (host, port) of "host:port" or "[v6]:port"; the port may be left out if defaulted."""
    host, colon, port = text.strip().rpartition(":")
    if not colon or "]" in port:
        host, port = text.strip(), ""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError(f"address {text!r}: must be host:port")
    if not port:
        if default_port is None:
            raise ValueError(f"address {text!r}: must be host:port (the port is missing)")
        return host, default_port
    if not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"address {text!r}: the port must be a number from 1 to 65535")
    return host, int(port)


def _join(addresses: Sequence[str]) -> str:
    return ",".join(address.strip() for address in addresses)


def sentinel_url(sentinels: Sequence[str], service_name: str, db: int = 0) -> str:
    return f"redis+sentinel://{_join(sentinels)}/{service_name}/{db}"


def cluster_url(nodes: Sequence[str]) -> str:
    return f"redis+cluster://{_join(nodes)}"


def _credentials(netloc: str) -> tuple[str | None, str | None, str]:
    """(username, password, host list) of a URL's authority; "" user means none (":pw@")."""
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return None, None, netloc
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None, unquote(password) if colon else None, hosts)


def parse_redis_url(url: str) -> Topology:
    """The topology a URL names. Errors describe the part at fault, never the URL (a password)."""
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme in STANDALONE_SCHEMES:
        return Standalone(url)
    if scheme not in SENTINEL_SCHEMES and scheme not in CLUSTER_SCHEMES:
        allowed = sorted({*STANDALONE_SCHEMES, *SENTINEL_SCHEMES, *CLUSTER_SCHEMES})
        raise ValueError(f"the URL scheme must be one of {', '.join(allowed)} (got {scheme!r})")
    parts = urlsplit(url)
    username, password, hosts = _credentials(parts.netloc)
    if scheme in CLUSTER_SCHEMES:
        if parts.path.strip("/"):
            raise ValueError("a redis+cluster:// URL has no path: a Cluster has only database 0")
        nodes = tuple(
            parse_address(a, default_port=DEFAULT_REDIS_PORT) for a in hosts.split(",") if a
        )
        if not nodes:
            raise ValueError("a redis+cluster:// URL needs at least one host:port seed node")
        return ClusterSeeds(nodes, username, password, CLUSTER_SCHEMES[scheme])
    sentinels = tuple(
        parse_address(a, default_port=DEFAULT_SENTINEL_PORT) for a in hosts.split(",") if a
    )
    if not sentinels:
        raise ValueError("a redis+sentinel:// URL needs at least one host:port Sentinel")
    service_name, _, db = parts.path.strip("/").partition("/")
    if not service_name:
        raise ValueError("a redis+sentinel:// URL needs the service name: .../<service_name>[/db]")
    if db and not db.isdigit():
        raise ValueError(f"the database after the service name must be a number (got {db!r})")
    return SentinelSet(
        sentinels, service_name, int(db or 0), username, password, SENTINEL_SCHEMES[scheme]
    )


def topology(settings: RedisSettings) -> Topology:
    """The settings' topology; `password` applies when the URL carries none."""
    if settings.url is None:
        raise ValueError("redis.url: not set (development mode fills in the embedded server)")
    found = parse_redis_url(settings.url)
    if settings.password is None or isinstance(found, Standalone) or found.password is not None:
        return found
    return _with_password(found, settings.password.get_secret_value())


def _with_password(found: SentinelSet | ClusterSeeds, password: str) -> Topology:
    if isinstance(found, SentinelSet):
        return SentinelSet(
            found.sentinels, found.service_name, found.db, found.username, password, found.tls
        )
    return ClusterSeeds(found.nodes, found.username, password, found.tls)


# ---- clients ----


class _SlotMapFirstPubSub(ClusterPubSub):
    """redis-py routes SUBSCRIBE by the slot map, which only a first regular command loads: a
    subscription made before any (a worker's first act) fails with KeyError. Load it first."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        await self.cluster.initialize()
        return await super().execute_command(*args, **kwargs)


class RelayRedisCluster(RedisCluster):
    """RedisCluster whose pub/sub works as the first thing a process does."""

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


def closed_transport(error: RuntimeError) -> bool:
    """Whether a RuntimeError is redis-py writing to a connection whose peer just vanished
    under uvloop ("unable to perform operation on <TCPTransport closed=True ...>; the handler
    is closed"): uvloop raises RuntimeError where asyncio's own loop raises nothing and the next
    read fails with a ConnectionError. It means the same, Redis unreachable, and nothing more."""
    text = str(error)
    return "unable to perform operation" in text and "closed=True" in text


# ---- acknowledged writes ----


class ReplicasBehind(QueueRefusal):
    """Fewer replicas than asked confirmed the write in time. It is stored on the primary and will
    most likely be delivered, but a failover now could lose it: the client should send it again,
    with the same idempotency key so a copy that survived is not queued twice."""

    def __init__(self, acknowledged: int, wanted: int, timeout_ms: int) -> None:
        super().__init__(
            503,
            "replicas_behind",
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
