"""The embedded server is a real Valkey/Redis with AOF: acknowledged writes survive a kill -9."""

from __future__ import annotations

import signal
from pathlib import Path

import redis as syncredis

from relay_devkit.embedded import EmbeddedServer, find_server_binary, ping


def test_finds_a_server_binary_and_says_where() -> None:
    binary = find_server_binary()
    assert Path(binary.path).is_file()
    assert binary.origin


def test_aof_keeps_acknowledged_writes_across_a_kill(tmp_path: Path) -> None:
    with EmbeddedServer(data_dir=tmp_path / "data") as server:
        client = syncredis.Redis.from_url(server.url)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
        client.rpush("q", "a", "b")
        client.close()
        port = server.port
        # The AOF is written before the reply leaves, so a process crash loses nothing.
        server.stop(signal.SIGKILL)
        assert not ping("127.0.0.1", port)
        server.start()
        assert server.port == port
        client = syncredis.Redis.from_url(server.url)
        assert client.lrange("q", 0, -1) == [b"a", b"b"]
        client.close()
