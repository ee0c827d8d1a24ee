"""A process that cannot start says why in one line on stderr and exits 2 (its configuration) or
3 (its port, its Redis: its credentials, an eviction policy that may evict queued work), for
every role; the traceback only with --debug."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import yaml
from production_config import production_document
from relay_harness import start_relay_process

from relay_devkit.embedded import EmbeddedServer, free_port

ROLES = ("serve", "api", "worker")
REPO_ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, content: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path


def start(role: str, config: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", role, "--config", str(config), *options],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def each_role(config: Path, *options: str) -> dict[str, subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(len(ROLES)) as pool:
        results = pool.map(lambda role: start(role, config, *options), ROLES)
        return dict(zip(ROLES, results, strict=True))


def assert_one_line(result: subprocess.CompletedProcess[str], status: int, *words: str) -> None:
    lines = result.stderr.splitlines()
    assert result.returncode == status, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("apns-relay: "), result.stderr
    for word in words:
        assert word in lines[0], result.stderr


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_a_port_in_use_is_one_line_and_exit_3(
    tmp_path: Path, redis_url: str, taken_port: int
) -> None:
    config = write(tmp_path / "relay.yaml", production_document(tmp_path, redis_url))
    for role, result in each_role(config, "--port", str(taken_port)).items():
        assert_one_line(result, 3, f"cannot listen on 127.0.0.1:{taken_port}", "in use")
        assert "Traceback" not in result.stdout, role


def test_debug_adds_the_traceback(tmp_path: Path, redis_url: str, taken_port: int) -> None:
    config = write(tmp_path / "relay.yaml", production_document(tmp_path, redis_url))
    result = start("api", config, "--port", str(taken_port), "--debug")
    assert result.returncode == 3
    assert "Traceback" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("apns-relay: cannot listen on")


def test_an_unreadable_or_invalid_config_is_one_line_and_exit_2(
    tmp_path: Path, redis_url: str
) -> None:
    missing = tmp_path / "absent.yaml"
    for result in each_role(missing).values():
        assert_one_line(result, 2, str(missing), "cannot read", "No such file")
    broken = tmp_path / "broken.yaml"
    broken.write_text("apps: [\n")
    for result in each_role(broken).values():
        assert_one_line(result, 2, str(broken), "not valid YAML")
    invalid = production_document(tmp_path, redis_url)
    invalid["apps"][0]["environment"] = "staging"
    invalid["queue"] = {"max_per_device": 0}
    for result in each_role(write(tmp_path / "invalid.yaml", invalid)).values():
        assert_one_line(result, 2, "apps[0].environment", "queue.max_per_device")


def test_a_redis_that_refuses_the_relay_is_one_line_and_exit_3(
    tmp_path: Path, redis_url: str
) -> None:
    parts = urlsplit(redis_url)
    refused = urlunsplit(
        parts._replace(netloc=f"nobody:wrong-secret@{parts.hostname}:{parts.port}")
    )
    config = write(tmp_path / "relay.yaml", production_document(tmp_path, refused))
    for result in each_role(config, "--port", "0").values():
        assert_one_line(result, 3, "Redis refused the relay")
        assert "wrong-secret" not in result.stderr


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-random"])
def test_a_redis_that_may_evict_queued_work_is_one_line_and_exit_3(
    tmp_path: Path, policy: str
) -> None:
    with EmbeddedServer(tmp_path / "valkey", extra_args=("--maxmemory-policy", policy)) as valkey:
        config = write(tmp_path / "relay.yaml", production_document(tmp_path, valkey.url))
        for result in each_role(config, "--port", "0").values():
            assert_one_line(
                result, 3, f"127.0.0.1:{valkey.port}", policy, "acknowledged", "noeviction"
            )


def test_a_volatile_policy_is_accepted_and_an_unset_spool_is_said_at_start(
    tmp_path: Path,
) -> None:
    options = ("--maxmemory-policy", "volatile-lru", "--maxmemory", "64mb")
    with EmbeddedServer(tmp_path / "valkey", extra_args=options) as valkey:
        config = write(tmp_path / "relay.yaml", production_document(tmp_path, valkey.url))
        api = start_relay_process("api", config, tmp_path)
        assert api.kill(signal.SIGTERM) == 0, api.log()
        spooled = production_document(tmp_path, valkey.url)
        spooled["ingest"] = {"spool_dir": str(tmp_path / "spool")}
        with_spool = start_relay_process("api", write(tmp_path / "spooled.yaml", spooled), tmp_path)
        assert with_spool.kill(signal.SIGTERM) == 0, with_spool.log()
    # No spool: GMS pushes are refused once a Redis outage or a full Redis outlasts the hold.
    [warning] = [line for line in api.log().splitlines() if "spool_unset" in line]
    assert "ingest.spool_dir is unset" in warning
    assert "refused with 503" in warning
    assert "spool_unset" not in with_spool.log()


def test_a_redis_unreachable_at_start_is_refused_when_it_first_answers(tmp_path: Path) -> None:
    """The api (holding, spooling) and the worker (waiting) start without Redis, as always; when
    it answers with an allkeys-* policy, they stop: the refusal logged, one line, exit 3."""
    port = free_port()
    document = production_document(tmp_path, f"redis://127.0.0.1:{port}/0")
    config = write(tmp_path / "relay.yaml", document)
    relays = [start_relay_process(role, config, tmp_path) for role in ("api", "worker")]
    try:
        options = ("--maxmemory-policy", "allkeys-random")
        with EmbeddedServer(tmp_path / "valkey", port=port, extra_args=options):
            statuses = [relay.process.wait(timeout=30) for relay in relays]
    finally:
        for relay in relays:
            relay.kill()
    for relay, status in zip(relays, statuses, strict=True):
        log = relay.log()
        assert status == 3, log
        assert "redis_policy_refused" in log
        last = log.splitlines()[-1]
        assert last.startswith(f"apns-relay: Redis 127.0.0.1:{port} runs maxmemory-policy"), log
        assert "allkeys-random" in last
