"""Operations under hostile conditions (issue 27 item 6): `/readyz`, which needs no credential,
names no Redis address; a full disk logs `spool_write_failed` as an episode, not once per write."""

from __future__ import annotations

import asyncio
import json
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path

import aiohttp
import pytest
from eventually import eventually
from relay_harness import basic_authorization, relay_document, relay_settings, write_config
from simulator import REPO_ROOT, running_simulator

from relay.runtime import run_relay
from relay_devkit.embedded import free_port

# Whole processes: seconds each (`make test-fast` leaves them out).
pytestmark = pytest.mark.slow


async def test_readyz_says_redis_is_unreachable_without_its_address(state_dir: Path) -> None:
    port = free_port()  # nothing listens there
    async with running_simulator(state_dir / "sim") as info:
        settings = relay_settings(f"redis://:pw-0123@127.0.0.1:{port}/0", info)
        async with (
            run_relay(settings, role="api") as relay,
            aiohttp.ClientSession() as session,
            session.get(f"{relay.url}/readyz") as response,
        ):
            status, text = response.status, await response.text()
    assert status == 503
    assert json.loads(text)["reasons"] == ["redis unreachable"]
    assert str(port) not in text
    assert "127.0.0.1" not in text


def full_disk() -> None:
    """In the api's process: any regular file stops growing at one byte (EFBIG, as a full disk's
    ENOSPC: an OSError on write), and the signal that would kill it for trying is ignored."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1, 1))


def start_on_a_full_disk(command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,  # a pipe: the file size limit does not apply to it
        stderr=subprocess.STDOUT,
        preexec_fn=full_disk,
    )


async def test_a_full_disk_logs_spool_write_failed_as_one_episode(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    async with running_simulator(tmp_path / "sim") as info:
        document = relay_document(
            f"redis://127.0.0.1:{free_port()}/0",  # down: every push goes to the spool
            info,
            ingest={"spool_dir": str(spool_dir), "hold_seconds": 0.05},
        )
        config = write_config(tmp_path / "relay.yaml", document)
        port = free_port()
        command = [sys.executable, "-m", "relay.cli", "api", "--config", str(config)]
        api = await asyncio.to_thread(start_on_a_full_disk, [*command, "--port", str(port)])
        lines: list[str] = []
        output = api.stdout
        assert output is not None
        reader = threading.Thread(
            target=lambda: lines.extend(str(line, "utf-8", "replace") for line in output)
        )
        reader.start()
        url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as session:

                async def healthy() -> bool:
                    assert api.poll() is None, "".join(lines)
                    try:
                        async with session.get(url + "/healthz") as response:
                            return response.status == 200
                    except aiohttp.ClientError:
                        return False

                await eventually(healthy, what="the api healthy")
                headers = {"Authorization": basic_authorization()}
                statuses = []
                for n in range(60):
                    body = {"deviceId": f"{n + 1:064x}", "message": "hello"}
                    async with session.post(url + "/gms/push", json=body, headers=headers) as r:
                        statuses.append(r.status)
        finally:
            api.send_signal(signal.SIGTERM)
            api.wait(timeout=30)
            reader.join(timeout=30)
    events = [json.loads(line) for line in lines if line.startswith("{")]
    failures = [e for e in events if e.get("event") == "spool_write_failed"]
    assert min(statuses) >= 500, statuses  # refused: nothing could be made durable
    assert 1 <= len(failures) <= 3, failures  # was one line per write: 60
    assert failures[0]["phase"] == "started"
