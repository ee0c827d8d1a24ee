"""Credential files read safely (issue 27 item 2): a FIFO, a directory or a file larger than a
credential can be is refused before any read, so neither open() nor a read can block or eat
memory; `check` and the configuration say what was found."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from relay.config.loading import load_settings
from relay.config.schema import ConfigError, Settings
from relay.config.secret_files import (
    CERTIFICATE_FILE_MAX_BYTES,
    KEY_FILE_MAX_BYTES,
    CredentialFileRefused,
    read_bounded,
)
from relay.delivery.probe import check_apps

# Each refusal must come at once; a blocking open() would hold the thread past this.
PROMPT_S = 5.0


def key_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


async def read_promptly(path: Path, limit: int) -> bytes:
    return await asyncio.wait_for(asyncio.to_thread(read_bounded, path, limit), PROMPT_S)


async def test_a_regular_file_within_the_limit_is_read_whole(tmp_path: Path) -> None:
    key = tmp_path / "AuthKey.p8"
    key.write_bytes(key_pem())
    assert await read_promptly(key, KEY_FILE_MAX_BYTES) == key.read_bytes()
    exactly = tmp_path / "exactly"
    exactly.write_bytes(b"k" * KEY_FILE_MAX_BYTES)
    assert len(await read_promptly(exactly, KEY_FILE_MAX_BYTES)) == KEY_FILE_MAX_BYTES


async def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "AuthKey.p8"
    os.mkfifo(fifo)
    with pytest.raises(CredentialFileRefused, match="not a regular file \\(a FIFO\\)"):
        await read_promptly(fifo, KEY_FILE_MAX_BYTES)


async def test_a_directory_and_a_device_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CredentialFileRefused, match="a directory"):
        await read_promptly(tmp_path, KEY_FILE_MAX_BYTES)
    with pytest.raises(CredentialFileRefused, match="a device"):
        await read_promptly(Path("/dev/zero"), KEY_FILE_MAX_BYTES)


async def test_a_file_larger_than_a_credential_is_refused_unread(tmp_path: Path) -> None:
    huge = tmp_path / "huge.p12"
    with huge.open("wb") as file:  # sparse: 2 GiB on no disk, and never read
        file.truncate(2 * 1024**3)
    with pytest.raises(CredentialFileRefused, match=f"at most {CERTIFICATE_FILE_MAX_BYTES}"):
        await read_promptly(huge, CERTIFICATE_FILE_MAX_BYTES)
    key = tmp_path / "big.p8"
    key.write_bytes(b"k" * (KEY_FILE_MAX_BYTES + 1))
    with pytest.raises(CredentialFileRefused, match="larger than a credential file can be"):
        await read_promptly(key, KEY_FILE_MAX_BYTES)


def settings_with_key(key_file: Path) -> Settings:
    token = {"key_file": str(key_file), "key_id": "ABCDE12345", "team_id": "TEAM123456"}
    app = {"name": "gms-ios", "topic": "com.example.gms", "environment": "sandbox"}
    return Settings.model_validate({"apps": [{**app, "auth": {"token": token}}]})


def test_the_configuration_refuses_a_fifo_or_an_oversized_key(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.p8"
    os.mkfifo(fifo)
    big = tmp_path / "big.p8"
    big.write_bytes(b"k" * (KEY_FILE_MAX_BYTES + 1))
    for path, problem in ((fifo, "not a regular file"), (big, "larger than an APNs key file")):
        config = tmp_path / f"{path.stem}.yaml"
        config.write_text(
            "apps: [{name: a, topic: com.example.a, environment: sandbox, auth: {token: "
            f"{{key_file: {path}, key_id: ABCDE12345, team_id: TEAM123456}}}}}}]\n"
        )
        with pytest.raises(ConfigError) as refused:
            load_settings(config, {})
        assert problem in refused.value.problems[0], refused.value.problems


async def test_check_of_a_key_swapped_for_a_fifo_answers_at_once(tmp_path: Path) -> None:
    """An api's check against a FIFO once hung in open() on the event loop (and /gms/push with
    it): now the verdict comes at once, from the files alone, and nothing is sent."""
    key_file = tmp_path / "AuthKey.p8"
    key_file.write_bytes(key_pem())
    settings = settings_with_key(key_file)
    key_file.unlink()
    os.mkfifo(key_file)
    [verdict] = await asyncio.wait_for(check_apps(settings, settings.apps, 5.0), PROMPT_S)
    assert (verdict.ok, verdict.verdict, verdict.status) == (False, "key-unreadable", None)
    assert "not a regular file (a FIFO)" in verdict.detail


async def test_a_config_file_that_is_a_fifo_or_not_text_is_a_configuration_error(
    tmp_path: Path,
) -> None:
    """The rotation re-reads the config file in a serving process: a FIFO there must not block
    that reload forever, and bytes that are not UTF-8 are a problem line, not a traceback."""
    fifo = tmp_path / "relay.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as refused:
        await asyncio.wait_for(asyncio.to_thread(load_settings, fifo, {}), PROMPT_S)
    assert "not a regular file (a FIFO)" in refused.value.problems[0]
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"logging: {level: \xe9}\n")
    with pytest.raises(ConfigError) as refused:
        load_settings(latin, {})
    assert "not UTF-8 text" in refused.value.problems[0]
