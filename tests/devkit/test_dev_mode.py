"""Development mode is asked for (`serve --dev`, RELAY_DEV=1) and then a working relay with nothing
configured; without it, a missing setting is a start-up error."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from eventually import eventually_blocking

from relay.commands.serve import development_requested, missing_settings
from relay.config.schema import Settings
from relay_devkit.dev_mode import DEV_TOPIC
from relay_devkit.embedded import ping

# Whole processes, outages or crashes: seconds each (`make test-fast` leaves them out).
pytestmark = pytest.mark.slow


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


def unconfigured_env() -> dict[str, str]:
    """No config file, no Redis, no credentials from the environment."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RELAY_") and k != "REDIS_URL"}


@pytest.mark.parametrize("role", ["serve", "api", "worker"])
def test_without_development_mode_a_missing_setting_is_a_start_up_error(
    tmp_path: Path, role: str
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "relay.cli",
            role,
            "--port",
            "0",
            "--state-dir",
            str(tmp_path / "d"),
        ],
        cwd=tmp_path,
        env=unconfigured_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    [line] = result.stderr.splitlines()  # one line, no traceback
    assert "redis.url" in line
    assert "apps" in line
    assert ("auth" in line) is (role != "worker")
    assert "serve --dev" in line
    assert not (tmp_path / "d").exists(), "nothing was started"


@pytest.mark.parametrize(
    ("flag", "variable", "wanted"),
    [
        (False, None, False),
        (True, None, True),
        (False, "1", True),
        (False, "true", True),
        (False, "0", False),
        (False, "", False),
    ],
)
def test_development_mode_is_the_flag_or_the_variable(
    flag: bool, variable: str | None, wanted: bool
) -> None:
    env = {} if variable is None else {"RELAY_DEV": variable}
    args = argparse.Namespace(dev=flag)
    assert development_requested(args, env) is wanted


def test_missing_settings_names_each_key() -> None:
    assert missing_settings(Settings(), "serve") == [
        "redis.url (or RELAY_REDIS_URL)",
        "apps (at least one app with its APNs credentials)",
        "auth (api_tokens, basic or scoped; or RELAY_API_TOKENS, RELAY_BASIC_AUTH)",
    ]
    configured = Settings.model_validate(
        {"redis": {"url": "redis://127.0.0.1:1/0"}, "auth": {"api_tokens": ["t"]}}
    )
    assert missing_settings(configured, "api") == [
        "apps (at least one app with its APNs credentials)"
    ]


@pytest.mark.parametrize("auth", ["token", "certificate"])
def test_serve_dev_embeds_valkey_and_the_simulator_and_restarts_a_killed_valkey(
    tmp_path: Path, auth: str
) -> None:
    state_dir = tmp_path / "dev"
    log_file = tmp_path / "serve.log"
    with log_file.open("wb") as log_sink:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "relay.cli", "serve", "--dev", "--port", "0"),
                *("--auth", auth),
                *("--state-dir", str(state_dir)),
            ],
            cwd=tmp_path,
            env=unconfigured_env(),
            stdin=subprocess.DEVNULL,
            stdout=log_sink,
            stderr=subprocess.STDOUT,
        )
    try:
        dev_json = state_dir / "dev.json"

        def written() -> bool:
            assert process.poll() is None, log_file.read_text()
            return dev_json.exists()

        eventually_blocking(written, timeout_s=WAIT_S, interval_s=0.05, what="dev.json")
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
        received = eventually_blocking(
            lambda: call(control)["notifications"],
            timeout_s=WAIT_S,
            interval_s=0.05,
            what="the push at the simulator",
        )
        assert received[0]["payload"]["message"] == {"_id": SERVICE_ID, "_action": "wait-for-agent"}

        # kill -9 of its Valkey: reaped (not left defunct), started again on the same port with
        # the same data, and the relay works again without anyone's help.
        valkey_pid = _event(log_file, "embedded Valkey started")["pid"]
        os.kill(valkey_pid, signal.SIGKILL)
        statuses = []

        def pushed() -> dict[str, Any] | None:
            try:
                return dict(
                    call(
                        f"{dev['relay_url']}/gms/push",
                        {
                            "deviceId": token,
                            "message": {"_id": SERVICE_ID, "_action": "after-crash"},
                        },
                        dev["api_token"],
                    )
                )
            except urllib.error.HTTPError as error:
                statuses.append(error.code)
            assert set(statuses) <= {503}, statuses
            return None

        answer = eventually_blocking(
            pushed, timeout_s=WAIT_S, interval_s=0.1, what="the relay to recover its Valkey"
        )
        assert answer["pushed"] is True
        assert not Path(f"/proc/{valkey_pid}").exists(), "the killed Valkey was not reaped"
        assert _event(log_file, "embedded Valkey exited")["exit_status"] == -signal.SIGKILL
        restarted = _event(log_file, "embedded Valkey restarted")
        assert restarted["url"] == _event(log_file, "embedded Valkey started")["url"]
        assert restarted["pid"] != valkey_pid
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    output = log_file.read_text()
    assert process.returncode == 0, output
    assert "DEVELOPMENT MODE: embedded Valkey started" in output
    assert "DEVELOPMENT MODE: no app configured" in output
    assert f'"auth":"{auth}"' in output
    # With a certificate the TLS connection is the credential: no provider token is ever signed.
    assert ("jwt_signed" in output) == (auth == "token")
    assert (state_dir / "apns-sim" / "dev-app.pem").exists() == (auth == "certificate")
    assert dev["api_token"] in output  # printed for the person who ran `make run`
    # Its Valkey and simulator stop with it.
    valkey_url = re.search(r"redis://127\.0\.0\.1:(\d+)", output)
    assert valkey_url is not None, output
    valkey_port = int(valkey_url.group(1))
    assert not ping("127.0.0.1", valkey_port)
    with pytest.raises(urllib.error.URLError, match="Connection refused"):
        call(control)


def _event(log_file: Path, event: str) -> dict[str, Any]:
    """The first logged event whose name holds `event` (JSON lines: the log is no terminal),
    waited for: the relay may answer a request before its supervisor's log line is written."""

    def logged() -> dict[str, Any] | None:
        for line in log_file.read_text().splitlines():
            if line.startswith("{") and event in (record := json.loads(line))["event"]:
                return dict(record)
        return None

    return eventually_blocking(logged, timeout_s=WAIT_S, interval_s=0.05, what=f"{event!r} logged")
