"""The README's run command: `apns-relay serve` with nothing configured is a working relay."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from relay.embedded import ping
from relay.service import DEV_TOPIC

WAIT_S = 60.0
SERVICE_ID = "3SQI3S31693JL9L3R00506T40C000U73"


def call(url: str, body: Any = None, token: str | None = None) -> Any:
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"}
        | ({"Authorization": f"Bearer {token}"} if token else {}),
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def test_serve_with_nothing_configured_embeds_valkey_and_the_simulator(tmp_path: Path) -> None:
    state_dir = tmp_path / "dev"
    # Nothing configured: no config file, no Redis, no credentials from the environment.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_") and k != "REDIS_URL"}
    process = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "serve", "--port", "0", "--state-dir", str(state_dir)],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        dev_json = state_dir / "dev.json"
        deadline = time.monotonic() + WAIT_S
        while not dev_json.exists():
            assert process.poll() is None, process.communicate()[0].decode()
            assert time.monotonic() < deadline, "dev.json never appeared"
            time.sleep(0.05)
        dev = json.loads(dev_json.read_text())
        assert dev["app"] == "dev"
        assert dev["api_token"]
        control_url = f"http://127.0.0.1:{dev['apns_sim']['control_port']}"
        # A phone's token, as the simulator issues it for the dev app (README, Quickstart).
        issued = call(f"{control_url}/tokens", {"topic": DEV_TOPIC, "environment": "sandbox"})
        token = issued["token"]
        answer = call(
            f"{dev['relay_url']}/gms/push",
            {"deviceId": token, "message": {"_id": SERVICE_ID, "_action": "wait-for-agent"}},
            dev["api_token"],
        )
        assert answer["pushed"] is True
        control = f"{control_url}/notifications?token={token}"
        while not (received := call(control)["notifications"]):
            assert time.monotonic() < deadline, "the push never reached the simulator"
            time.sleep(0.05)
        assert received[0]["payload"]["message"] == {"_id": SERVICE_ID, "_action": "wait-for-agent"}
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
    assert process.returncode == 0, output
    assert "DEVELOPMENT MODE: embedded Valkey started" in output
    assert "DEVELOPMENT MODE: no app configured" in output
    assert dev["api_token"] in output  # printed for the person who ran `make run`
    # Its Valkey and simulator stop with it.
    valkey_url = re.search(r"redis://127\.0\.0\.1:(\d+)", output)
    assert valkey_url is not None, output
    valkey_port = int(valkey_url.group(1))
    assert not ping("127.0.0.1", valkey_port)
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        call(control)
