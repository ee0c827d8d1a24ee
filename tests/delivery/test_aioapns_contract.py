"""The aioapns internals relay/delivery/apns_adapter.py relies on. The adapter subclasses aioapns
4.0 and reaches into attributes that are not its public API; an aioapns upgrade that renames or
drops one must fail here, naming it, rather than as a delivery fault in production. Each row says
what the adapter does with it (relay/delivery/apns_adapter.py's docstring lists every deviation
and why)."""

from __future__ import annotations

import ast
import asyncio
import importlib.metadata
import inspect
from pathlib import Path

import pytest
from aioapns.connection import (
    APNsBaseClientProtocol,
    APNsBaseConnectionPool,
    APNsProductionClientProtocol,
    AuthorizationHeaderProvider,
)
from h2.connection import H2Connection

from relay.delivery.apns_adapter import RelayConnectionPool

WRITTEN_AGAINST = "4.0"

# Set on every client protocol by aioapns' __init__ (H2Protocol, APNsBaseClientProtocol).
PROTOCOL_INSTANCE_ATTRIBUTES = {
    "conn": "its H2Connection: the adapter swaps in a plain HPACK encoder and a draining state "
    "machine and turns off header validation",
    "loop": "timers per stream (deadlines) and the idle check are scheduled on it",
    "on_connection_lost": "the pool's discard_connection, called when a connection ends",
    "apns_topic": "the apns-topic header of every request",
    "inactivity_timer": "replaced by the adapter's hour-long idle check",
}
# Class attributes and methods the adapter overrides or calls.
PROTOCOL_CLASS_ATTRIBUTES = {
    "INACTIVITY_TIME": "overridden: an hour instead of 10 s",
    "APNS_SERVER": "overridden per pool: the endpoint (the simulator in tests)",
    "APNS_PORT": "overridden per pool: the endpoint's port",
    "data_received": "replaced: every stream ends, flow control is acknowledged",
    "connection_made": "inherited: stores the transport, starts the idle timer",
    "connection_lost": "overridden: every open stream is answered ConnectionClosed",
    "refresh_inactivity_timer": "overridden: the hour-long idle check",
    "flush": "overridden: writes are batched per loop iteration",
    "close": "overridden: the connection is retired first",
    "is_busy": "overridden: busy means no free stream slot",
}
POOL_INSTANCE_ATTRIBUTES = {
    "connections": "the pool's open connections, which acquire() chooses among",
    "loop": "create_connection() opens the TLS connection on it",
    "_lock": "held while a new connection is opened, so that two sends do not open two",
    "max_connections": "the cap acquire() respects",
}
POOL_CLASS_ATTRIBUTES = {
    "create_connection": "replaced: the endpoint's host, port and TLS context",
    "acquire": "replaced: waits on an event instead of polling",
    "discard_connection": "replaced: idempotent, retires rather than drops",
}


def test_the_installed_aioapns_is_the_version_the_adapter_was_written_against() -> None:
    installed = importlib.metadata.version("aioapns")
    assert installed == WRITTEN_AGAINST, (
        f"aioapns {installed} is installed; relay/delivery/apns_adapter.py overrides internals of"
        f" aioapns {WRITTEN_AGAINST}: review every row of tests/delivery/test_aioapns_contract.py"
        " against the new source, then update WRITTEN_AGAINST"
    )


def test_the_client_protocol_constructor_takes_what_the_pool_passes() -> None:
    # RelayConnectionPool.create_connection calls protocol_class(topic, loop, discard_connection).
    names = list(inspect.signature(APNsBaseClientProtocol.__init__).parameters)
    assert names[1:4] == ["apns_topic", "loop", "on_connection_lost"], names


def test_the_pool_constructor_takes_what_the_adapter_passes() -> None:
    parameters = inspect.signature(APNsBaseConnectionPool.__init__).parameters
    assert "topic" in parameters
    assert "max_connections" in parameters


@pytest.mark.parametrize("name", sorted(PROTOCOL_CLASS_ATTRIBUTES))
def test_client_protocol_class_attribute(name: str) -> None:
    assert hasattr(APNsProductionClientProtocol, name), (
        f"aioapns' client protocol has no {name!r} any more; the adapter relies on it: "
        f"{PROTOCOL_CLASS_ATTRIBUTES[name]}"
    )


@pytest.mark.parametrize("name", sorted(POOL_CLASS_ATTRIBUTES))
def test_pool_class_attribute(name: str) -> None:
    assert hasattr(APNsBaseConnectionPool, name), (
        f"aioapns' connection pool has no {name!r} any more; the adapter relies on it: "
        f"{POOL_CLASS_ATTRIBUTES[name]}"
    )
    assert name in vars(RelayConnectionPool)  # the adapter's own version of it


async def test_instance_attributes_aioapns_sets() -> None:
    loop = asyncio.get_running_loop()
    protocol = APNsProductionClientProtocol("com.example", loop, None)
    for name, use in PROTOCOL_INSTANCE_ATTRIBUTES.items():
        assert hasattr(protocol, name), f"aioapns no longer sets protocol.{name}: {use}"
    assert isinstance(protocol.conn, H2Connection)
    for attribute in ("encoder", "state_machine", "config", "streams", "_closed_streams"):
        assert hasattr(protocol.conn, attribute), f"h2's H2Connection has no {attribute!r}"
    # CountedH2Connection overrides this property h2 reads in send_headers.
    assert isinstance(vars(H2Connection).get("open_outbound_streams"), property)
    pool = APNsBaseConnectionPool(topic="com.example", max_connections=2)
    for name, use in POOL_INSTANCE_ATTRIBUTES.items():
        assert hasattr(pool, name), f"aioapns no longer sets pool.{name}: {use}"
    assert isinstance(pool.connections, list)
    assert isinstance(pool._lock, asyncio.Lock)


def test_the_jwt_provider_interface() -> None:
    # SharedJWT subclasses it; aioapns calls get_header() for every request it builds.
    assert callable(AuthorizationHeaderProvider.get_header)


def test_the_adapter_is_the_only_product_module_that_imports_aioapns_or_h2() -> None:
    # A deviation written elsewhere would escape this file's review of aioapns' internals.
    package = Path(__file__).resolve().parents[2] / "relay"
    adapter = package / "delivery" / "apns_adapter.py"
    importers = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots = {node.module.split(".")[0]}
            else:
                continue
            if roots & {"aioapns", "h2", "hpack"}:
                importers.append(str(path.relative_to(package.parent)))
    assert set(importers) == {str(adapter.relative_to(package.parent))}, importers
