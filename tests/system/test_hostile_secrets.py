"""Secrets fed to every configuration error (issue 27 item 5): a key_file set to the key itself
(its base64 body, on one line or many, or the whole PEM), a Redis URL, a Sentinel address and a
Sentinel URL with a password. No start-up error of `api`, `worker`, `serve` or `check` (stdout,
stderr, with --debug's traceback too) may hold any of them: every path goes through the logs'
redaction (relay.core.redaction.redact_text)."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from simulator import REPO_ROOT

# Whole processes: a second each (`make test-fast` leaves them out).
pytestmark = pytest.mark.slow

PASSWORD = "Sup3rSecretPassw0rd"
# Unescaped in a URL, as an operator pastes it: each part must be masked, not only the last.
SLASHED_PARTS = ("Sl4shedPart", "Pa55w0rd@Rest")
SLASHED = "/".join(SLASHED_PARTS)
KEY_PEM = (
    ec.generate_private_key(ec.SECP256R1())
    .private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    .decode()
)
KEY_LINES = KEY_PEM.splitlines()[1:-1]
KEY_BODY = "".join(KEY_LINES)
ROLES: tuple[tuple[str, ...], ...] = (("api",), ("worker",), ("serve",), ("check",))


def app(key_file: str) -> dict[str, Any]:
    token = {"key_file": key_file, "key_id": "ABCDE12345", "team_id": "TEAM123456"}
    return {
        "name": "gms-ios",
        "topic": "com.example.gms",
        "environment": "sandbox",
        "auth": {"token": token},
    }


def configurations() -> dict[str, dict[str, Any]]:
    """Each with two errors carrying a secret: pydantic reports every section's problems."""
    auth = {"api_tokens": ["tok-0123456789"]}
    return {
        "base64-body-and-redis-url": {
            "auth": auth,
            "redis": {"url": f"redis://:{PASSWORD}@127.0.0.1:notaport/0"},
            "apps": [app(KEY_BODY)],
        },
        "body-in-lines-and-sentinel-address": {
            "auth": auth,
            "redis": {"sentinels": [f":{PASSWORD}@h1:badport"], "service_name": "m"},
            "apps": [app("\n".join(KEY_LINES))],
        },
        "pem-and-sentinel-url": {
            "auth": auth,
            "redis": {"url": f"redis+sentinel://user:{PASSWORD}@h1:26379"},
            "apps": [app(KEY_PEM)],
        },
        "pem-and-sentinel-url-with-a-slashed-password": {
            "auth": auth,
            "redis": {"url": f"redis+sentinel://user:{SLASHED}@h1:26379"},
            "apps": [app(KEY_PEM)],
        },
        "sentinel-address-beside-a-url": {
            "auth": auth,
            "redis": {
                "url": f"redis://:{PASSWORD}@h1:6379",
                "sentinels": [f"u:{PASSWORD}@h1:26379"],
                "service_name": "m",
            },
            "apps": [app(KEY_BODY)],
        },
    }


def leaks(output: str) -> list[str]:
    """The secrets (or any 16 characters of the key) found in `output`."""
    found = [secret for secret in (PASSWORD, *SLASHED_PARTS) if secret in output]
    pieces = [KEY_BODY[i : i + 16] for i in range(0, len(KEY_BODY) - 16, 8)]
    pieces += [line[:16] for line in KEY_LINES]
    return found + [piece for piece in pieces if piece in output]


def run(role: tuple[str, ...], config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *role, "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )


def test_no_start_up_error_of_any_command_holds_a_secret(tmp_path: Path) -> None:
    runs: list[tuple[str, tuple[str, ...], Path]] = []
    for name, document in configurations().items():
        config = tmp_path / f"{name}.yaml"
        config.write_text(yaml.safe_dump(document))
        runs += [(name, role, config) for role in ROLES]
    runs.append((name, ("api", "--debug"), config))  # its traceback too
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda r: run(r[1], r[2]), runs))
    problems = []
    for (name, role, _), result in zip(runs, results, strict=True):
        output = result.stdout + result.stderr
        # Refused for both errors, each named: the secrets did reach the messages.
        named = "key_file" in result.stderr and "redis" in result.stderr
        if result.returncode != 2 or not named:
            problems.append(f"{name} {role}: exit {result.returncode}, stderr {result.stderr!r}")
        if found := leaks(output):
            problems.append(f"{name} {role}: {found} in {output!r}")
    assert not problems, "\n".join(problems)
