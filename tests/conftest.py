"""Shared fixtures: one real Valkey/Redis server per test session, a clean database per test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from relay_devkit.embedded import EmbeddedServer


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer | None]:
    """The session's server: REDIS_URL when given (nothing started), else an embedded one."""
    if os.environ.get("REDIS_URL"):
        yield None
        return
    with EmbeddedServer(data_dir=tmp_path_factory.mktemp("valkey")) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: EmbeddedServer | None) -> str:
    """The server's URL, its data flushed before the test."""
    url = os.environ.get("REDIS_URL") or (redis_server.url if redis_server else "")
    import redis as syncredis

    client = syncredis.Redis.from_url(url)
    try:
        client.flushall()
    finally:
        client.close()
    return url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path
