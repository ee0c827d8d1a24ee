"""Credentials rotated in running relay processes: on SIGHUP and on a Kubernetes-style swap of the
mounted files; invalid new credentials are refused and the ones in use kept."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from eventually import eventually
from relay_harness import (
    API_TOKEN,
    RelayProcess,
    app_tokens,
    relay_document,
    relay_processes,
    write_config,
)
from simulator import ControlClient, SimInfo, control_client, running_simulator

from relay_devkit.apns_sim.certs import SigningKey, create_signing_key
from relay_devkit.apns_sim.server import KeySource
from relay_devkit.dev_mode import simulator_app

# Whole processes: seconds each (`make test-fast` leaves them out).
pytestmark = [pytest.mark.slow, pytest.mark.beside]

TEAM_ID = "TEAM123456"
BEARER = {"Authorization": f"Bearer {API_TOKEN}"}


@dataclass
class Rotation:
    sim: SimInfo
    control: ControlClient
    key_a: SigningKey  # the simulator's own key, in use at start
    key_b: SigningKey  # a second key of the same team the simulator trusts
    session: aiohttp.ClientSession

    async def deliver(self, api: RelayProcess) -> str:
        """Push to a fresh device through `api`; the key id of the connection that delivered it."""
        [device] = await app_tokens(self.control, simulator_app(self.sim), 1)
        body = {"device_token": device, "service_id": "S", "action": "wait-for-agent"}
        async with self.session.post(
            f"{api.url}/v1/notifications", json=body, headers=BEARER
        ) as response:
            assert response.status == 202, await response.text()

        async def received() -> list[dict[str, Any]]:
            return list((await self.control.notifications(token=device))["notifications"])

        [record] = await eventually(received, what=f"the push to {device[:8]}… delivered")
        return str(record["key_id"])

    async def reloads(self, relay: RelayProcess) -> dict[str, float]:
        """apns_relay_credential_reloads_total by outcome, from the process's /metrics."""
        async with self.session.get(f"{relay.url}/metrics") as response:
            text = await response.text()
        counts = {}
        for line in text.splitlines():
            if line.startswith("apns_relay_credential_reloads_total{"):
                labels, value = line.rsplit(" ", 1)
                outcome = labels.split('outcome="')[1].split('"')[0]
                counts[outcome] = float(value)
        return counts


@pytest.fixture
async def rotation(state_dir: Path) -> AsyncIterator[Rotation]:
    key_b = create_signing_key(state_dir, "KEYBBBBBBB", TEAM_ID)
    trusted_b = KeySource(key_b.key_id, TEAM_ID, key_b.key_file)
    async with (
        running_simulator(state_dir / "sim", team_id=TEAM_ID, extra_keys=(trusted_b,)) as sim,
        control_client(sim) as control,
        aiohttp.ClientSession() as session,
    ):
        key_a = SigningKey(sim.key_id, TEAM_ID, sim.key_file)
        yield Rotation(sim, control, key_a, key_b, session)


def events(relay: RelayProcess, name: str) -> list[dict[str, Any]]:
    return events_in(relay.log(), name)


def events_in(log: str, name: str) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in log.splitlines() if line.startswith("{"))
    return [line for line in lines if line.get("event") == name]


def config_for(
    rotation: Rotation, redis_url: str, key: SigningKey, key_file: Path, **delivery: Any
) -> dict[str, Any]:
    token = {"key_file": str(key_file), "key_id": key.key_id, "team_id": TEAM_ID}
    return relay_document(
        redis_url,
        rotation.sim,
        app={"auth": {"token": token}},
        delivery={"credential_poll_seconds": 0, **delivery},
    )


async def test_sighup_rotates_to_a_new_key_and_keeps_it_when_the_next_file_is_invalid(
    redis_url: str, state_dir: Path, rotation: Rotation
) -> None:
    key_file = state_dir / "AuthKey.p8"
    key_file.write_bytes(rotation.key_a.key_file.read_bytes())
    config = write_config(
        state_dir / "relay.yaml", config_for(rotation, redis_url, rotation.key_a, key_file)
    )
    with relay_processes("serve", config=config, log_dir=state_dir) as [relay]:
        assert await rotation.deliver(relay) == rotation.key_a.key_id

        # A new key comes with a new key id: both files change, then the signal.
        key_file.write_bytes(rotation.key_b.key_file.read_bytes())
        write_config(config, config_for(rotation, redis_url, rotation.key_b, key_file))
        relay.process.send_signal(signal.SIGHUP)
        await eventually(lambda: events(relay, "credentials_rotated"), what="rotated")
        assert await rotation.deliver(relay) == rotation.key_b.key_id
        assert await rotation.deliver(relay) == rotation.key_b.key_id

        async def closed() -> int:
            return int((await rotation.control.stats())["connections_closed"])

        # The connection bound to key A was retired and closed; key B came on new ones.
        await eventually(closed, what="key A's connection closed")
        assert (await rotation.reloads(relay))["rotated"] == 1

        # Not a key at all: refused, and key B stays in use.
        key_file.write_text(
            "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
        )
        relay.process.send_signal(signal.SIGHUP)
        [rejected] = await eventually(
            lambda: events(relay, "credentials_rejected"), what="rejected"
        )
        assert await rotation.deliver(relay) == rotation.key_b.key_id
        assert await rotation.reloads(relay) == {"rotated": 1, "unchanged": 0, "rejected": 1}
        assert relay.process.poll() is None
        log = relay.log()
    assert rejected["level"] == "error"
    assert rejected["app"] == simulator_app(rotation.sim).name
    assert "is not a PEM private key" in rejected["problem"]
    assert rejected["kept"] == f"key {rotation.key_b.key_id} of team {TEAM_ID}"
    [rotated] = events_in(log, "credentials_rotated")
    assert rotated["trigger"] == "SIGHUP"
    assert rotated["detail"] == (
        f"key {rotation.key_a.key_id} of team {TEAM_ID} replaced by"
        f" key {rotation.key_b.key_id} of team {TEAM_ID}"
    )
    for key in (rotation.key_a, rotation.key_b):  # no key material in any log line
        assert key.key_file.read_text().splitlines()[1] not in log


def publish(secret: Path, version: str, files: dict[str, bytes]) -> None:
    """Write the files as the kubelet updates a mounted Secret: a new timestamped directory,
    then `..data` swapped to it by one rename; the visible names are symlinks through it."""
    directory = secret / f"..{version}"
    directory.mkdir()
    for name, content in files.items():
        (directory / name).write_bytes(content)
        if not (secret / name).is_symlink():
            (secret / name).symlink_to(Path("..data") / name)
    (secret / "..data_tmp").symlink_to(directory.name)
    os.replace(secret / "..data_tmp", secret / "..data")


async def test_a_swapped_secret_is_rotated_without_a_signal(
    redis_url: str, state_dir: Path, rotation: Rotation
) -> None:
    secret = state_dir / "secret"
    secret.mkdir()
    key_file = secret / "AuthKey.p8"  # the config names the visible path, as a mount shows it

    def files(key: SigningKey) -> dict[str, bytes]:
        document = config_for(rotation, redis_url, key, key_file, credential_poll_seconds=0.2)
        return {
            "relay.yaml": json.dumps(document).encode(),  # JSON is YAML
            "AuthKey.p8": key.key_file.read_bytes(),
        }

    publish(secret, "v1", files(rotation.key_a))
    config = secret / "relay.yaml"
    with relay_processes("api", "worker", config=config, log_dir=state_dir) as [api, worker]:
        assert await rotation.deliver(api) == rotation.key_a.key_id
        publish(secret, "v2", files(rotation.key_b))
        [rotated] = await eventually(
            lambda: events(worker, "credentials_rotated"), what="rotated on the file change"
        )
        assert rotated["trigger"] == "files-changed"
        # The api has nothing to reload; a SIGHUP sent to every pod must not stop it.
        api.process.send_signal(signal.SIGHUP)
        await eventually(lambda: events(api, "sighup_ignored"), what="the api's SIGHUP logged")
        assert api.process.poll() is None
        assert await rotation.deliver(api) == rotation.key_b.key_id
        assert (await rotation.reloads(worker))["rotated"] == 1
        # Read once more after the swap (the config's new digest), and not again.
        assert events(worker, "credentials_unchanged") == []


def failures(relay: RelayProcess) -> list[dict[str, Any]]:
    return events(relay, "credentials_reload_failed")


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_a_fifo_or_huge_key_file_is_refused_and_the_process_keeps_serving(
    redis_url: str, state_dir: Path, rotation: Rotation
) -> None:
    """Issue 27 item 2: a FIFO at the key path once blocked the credential poll in open()
    forever (health and delivery stopped, SIGHUP did not help); a 512 MiB file stalled /healthz
    for seconds and was hashed at every poll. Both are refused before any read, the key in use
    is kept, and the process keeps answering and delivering. Item 5: a reload whose key_file is
    the key's base64 body logs credentials_reload_failed without it."""
    key_file = state_dir / "AuthKey.p8"
    key_file.write_bytes(rotation.key_a.key_file.read_bytes())
    config = write_config(
        state_dir / "relay.yaml",
        config_for(rotation, redis_url, rotation.key_a, key_file, credential_poll_seconds=0.2),
    )
    with relay_processes("serve", config=config, log_dir=state_dir) as [relay]:
        assert await rotation.deliver(relay) == rotation.key_a.key_id
        rss_before = resident_mb(relay.process.pid)

        async def healthz_s() -> float:
            started = time.monotonic()
            async with rotation.session.get(f"{relay.url}/healthz") as response:
                assert response.status == 200
            return time.monotonic() - started

        key_file.unlink()
        os.mkfifo(key_file)
        # The configuration's own check refuses it now (as it would at start-up).
        await eventually(
            lambda: [e for e in failures(relay) if "not a regular file" in e["problems"]],
            what="the FIFO refused by the poll",
        )
        relay.process.send_signal(signal.SIGHUP)
        await eventually(lambda: len(failures(relay)) >= 2, what="refused on SIGHUP")
        assert await healthz_s() < 1.0
        assert await rotation.deliver(relay) == rotation.key_a.key_id

        key_file.unlink()
        with key_file.open("wb") as huge:  # sparse: 512 MiB on no disk
            huge.truncate(512 * 1024 * 1024)
        [refused] = await eventually(
            lambda: [e for e in failures(relay) if "larger" in e["problems"]],
            what="the 512 MiB file refused",
        )
        slowest = max([await healthz_s() for _ in range(20)])
        assert slowest < 1.0, slowest
        assert await rotation.deliver(relay) == rotation.key_a.key_id
        rss_after = resident_mb(relay.process.pid)
        assert rss_after - rss_before < 64, (rss_before, rss_after)

        # A key pasted where its path goes: the reload fails and says so, without the key.
        body = "".join(rotation.key_b.key_file.read_text().splitlines()[1:-1])
        document = config_for(rotation, redis_url, rotation.key_b, key_file)
        document["apps"][0]["auth"]["token"]["key_file"] = body
        write_config(config, document)
        await eventually(
            lambda: [e for e in failures(relay) if "no such file" in e["problems"]],
            what="the reload of the pasted key failed",
        )
        assert await rotation.deliver(relay) == rotation.key_a.key_id
        assert relay.process.poll() is None
        log = relay.log()
    assert "at most 8192" in refused["problems"]
    assert refused["kept"] == "the credentials in use, for every app"
    # Refused from its size alone: the poll neither read nor hashed it, and said so once.
    failed = events_in(log, "credentials_reload_failed")
    too_large = [e for e in failed if "larger" in e["problems"]]
    assert too_large == [refused]
    assert "key_file" in log
    for start in range(0, len(body) - 16, 8):  # no 16 characters of the key anywhere
        assert body[start : start + 16] not in log
