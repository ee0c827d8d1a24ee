"""The simulator's rules where Apple is strict, over real TLS + HTTP/2: stream limits, the token
registry, environments, GOAWAY, idle and error policing (aioapns, a raw h2 client and curl)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aioapns import NotificationRequest
from h2.errors import ErrorCodes
from simulator import (
    ControlClient,
    RawH2Client,
    SimInfo,
    aioapns_client,
    control_client,
    running_simulator,
    simulator_process,
)

TOPIC = "com.example.app"
BODY = b'{"aps":{"alert":"hi"}}'
HAS_CURL_HTTP2 = shutil.which("curl") is not None and "HTTP2" in (
    subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout
)


@contextlib.asynccontextmanager
async def strict_sim(
    tmp_path: Path, **options: Any
) -> AsyncIterator[tuple[SimInfo, ControlClient]]:
    async with (
        running_simulator(tmp_path / "sim", max_streams=50, **options) as info,
        control_client(info) as control,
    ):
        yield info, control


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[tuple[SimInfo, ControlClient]]:
    async with strict_sim(tmp_path) as pair:
        yield pair


async def status_and_reason(
    raw: RawH2Client, info: SimInfo, token: str, **headers: str
) -> tuple[int, str | None]:
    response = await raw.request(raw.headers_for(info, token, **headers), BODY)
    return response.status, response.json()["reason"] if response.body else None


# --- stream limits ----------------------------------------------------------------------------


async def test_one_stream_until_a_200_then_the_maximum_and_back_to_one_after_a_rejection(
    sim: tuple[SimInfo, ControlClient],
) -> None:
    info, control = sim
    token = await control.issue_token()
    raw = await RawH2Client.connect(info)
    async with asyncio.timeout(5):
        await raw.settings_received.wait()
    assert raw.conn.remote_settings.max_header_list_size == 8000
    assert raw.limits_seen == [1]
    assert await status_and_reason(raw, info, token) == (200, None)
    assert raw.limits_seen == [1, 50]  # the new limit arrives before the answer
    assert await status_and_reason(raw, info, "ab" * 32) == (400, "BadDeviceToken")
    assert raw.limits_seen == [1, 50, 1]
    assert await status_and_reason(raw, info, token) == (200, None)
    assert raw.limits_seen == [1, 50, 1, 50]
    await raw.close()


async def test_fixed_stream_limit_is_the_maximum_from_the_start(tmp_path: Path) -> None:
    async with strict_sim(tmp_path, dynamic_streams=False) as (info, _control):
        raw = await RawH2Client.connect(info)
        assert await status_and_reason(raw, info, "ab" * 32) == (400, "BadDeviceToken")
        assert raw.limits_seen == [50]
        await raw.close()


async def test_aioapns_gets_a_burst_through_a_connection_that_starts_at_one_stream(
    sim: tuple[SimInfo, ControlClient],
) -> None:
    info, control = sim
    tokens = await control.issue_tokens(30)
    client = aioapns_client(info)
    results = await asyncio.gather(
        *(
            client.send_notification(NotificationRequest(device_token=t, message={"aps": {}}))
            for t in tokens
        )
    )
    assert [r.status for r in results] == ["200"] * 30
    assert (await control.stats())["accepted"] == 30
    client.pool.close()


async def test_a_burst_before_the_client_has_seen_the_limit_is_served(
    sim: tuple[SimInfo, ControlClient],
) -> None:
    """RFC 9113: until the client has acknowledged SETTINGS it may assume no limit (node-apn
    bursts like this on a fresh connection)."""
    info, control = sim
    token = await control.issue_token()
    raw = await RawH2Client.connect(info)
    streams = raw.send_together([(raw.headers_for(info, token), BODY)] * 5)
    assert [(await raw.response(s)).status for s in streams] == [200] * 5
    assert raw.terminated is None
    await raw.close()


async def test_a_stream_over_the_acknowledged_limit_is_refused_alone(
    sim: tuple[SimInfo, ControlClient],
) -> None:
    info, control = sim
    token, stalled = await control.issue_tokens(2)
    await control.put_faults({"stall": {"tokens": [stalled]}})
    raw = await RawH2Client.connect(info)
    async with asyncio.timeout(5):
        await raw.settings_received.wait()
    held = raw.send(raw.headers_for(info, stalled), BODY)  # the one stream allowed, never freed
    await control.wait_for_stalls(1, timeout_s=5)
    raw.ignore_stream_limit()
    over = raw.send(raw.headers_for(info, token), BODY)
    with pytest.raises(ConnectionError):
        await raw.response(over)
    assert raw.resets[over] == ErrorCodes.REFUSED_STREAM  # never processed: safe to retry
    assert raw.terminated is None  # the connection and its held stream live on
    assert held not in raw.resets
    stats = await control.stats()
    assert (stats["refused_streams"], stats["accepted"], stats["protocol_errors"]) == (1, 0, 0)
    await raw.close()


async def test_a_protocol_error_closes_with_goaway_naming_the_last_stream_answered(
    sim: tuple[SimInfo, ControlClient],
) -> None:
    info, control = sim
    raw = await RawH2Client.connect(info)
    assert await status_and_reason(raw, info, await control.issue_token()) == (200, None)
    raw.writer.write(bytes.fromhex("000004080000000000" + "00000000"))  # WINDOW_UPDATE of 0
    async with asyncio.timeout(5):
        await raw.closed
    assert raw.terminated is not None
    assert raw.terminated.error_code == ErrorCodes.PROTOCOL_ERROR
    assert raw.terminated.last_stream_id == 1
    assert not raw.terminated.additional_data  # Apple documents no reason for it
    assert (await control.stats())["protocol_errors"] == 1


# --- the token registry -------------------------------------------------------------------------


async def test_control_api_issues_and_describes_tokens(sim: tuple[SimInfo, ControlClient]) -> None:
    info, control = sim
    token = await control.issue_token(TOPIC, "sandbox")
    assert len(token) == 64
    assert int(token, 16) >= 0
    assert token != await control.issue_token(TOPIC, "sandbox")
    assert await control.describe_token(token.upper()) == {
        "token": token,
        "topic": TOPIC,
        "environment": "sandbox",
        "unregistered_at_ms": None,
    }
    await control.unregister(token, timestamp_ms=1234)
    assert (await control.describe_token(token))["unregistered_at_ms"] == 1234
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{info.control_url}/tokens/{'ab' * 32}") as reply:
            assert reply.status == 404
        for body, field in [
            ({"topic": TOPIC, "environment": "staging"}, "environment"),
            ({"topic": "not a topic", "environment": "sandbox"}, "topic"),
            ({"environment": "sandbox"}, "topic"),
        ]:
            async with session.post(f"{info.control_url}/tokens", json=body) as reply:
                assert reply.status == 400
                assert (await reply.json())["error"].startswith(f"{field}:")


async def test_a_token_is_valid_only_as_issued(sim: tuple[SimInfo, ControlClient]) -> None:
    info, control = sim
    good = await control.issue_token(TOPIC, "production")
    other_app = await control.issue_token("com.other.app", "production")
    sandbox = await control.issue_token(TOPIC, "sandbox")
    client = aioapns_client(info)

    async def answer(token: str) -> tuple[str, str | None]:
        result = await client.send_notification(
            NotificationRequest(device_token=token, message={"aps": {}})
        )
        return result.status, result.description

    assert await answer(good) == ("200", None)
    assert await answer("ab" * 32) == ("400", "BadDeviceToken")  # never issued
    assert await answer(good[:62]) == ("400", "BadDeviceToken")  # truncated
    assert await answer(other_app) == ("400", "DeviceTokenNotForTopic")
    assert await answer(sandbox) == ("400", "BadDeviceToken")  # the other environment
    assert [n["token"] for n in (await control.notifications())["notifications"]] == [good]
    client.pool.close()


async def test_open_tokens_accept_any_well_formed_token_of_the_configured_length(
    tmp_path: Path,
) -> None:
    async with strict_sim(tmp_path, open_tokens=True, token_length=80) as (info, control):
        raw = await RawH2Client.connect(info)
        assert await status_and_reason(raw, info, "ab" * 40) == (200, None)
        assert await status_and_reason(raw, info, "ab" * 32) == (400, "BadDeviceToken")
        assert len(await control.issue_token()) == 80
        await raw.close()


# --- environments -------------------------------------------------------------------------------


async def test_sandbox_answers_200_with_apns_unique_id_and_production_without(
    sim: tuple[SimInfo, ControlClient],
) -> None:
    info, control = sim
    assert info.sandbox_port not in (0, info.port)
    raw = await RawH2Client.connect(info, environment="sandbox")
    sandbox_token = await control.issue_token(TOPIC, "sandbox")
    first = await raw.request(raw.headers_for(info, sandbox_token), BODY)
    second = await raw.request(raw.headers_for(info, sandbox_token), BODY)
    assert first.status == second.status == 200
    assert uuid.UUID(first.headers["apns-unique-id"]).version == 4
    assert first.headers["apns-unique-id"] != second.headers["apns-unique-id"]
    rejected = await raw.request(raw.headers_for(info, "ab" * 32), BODY)
    assert "apns-unique-id" not in rejected.headers
    await raw.close()
    production = await RawH2Client.connect(info)
    answer = await production.request(
        production.headers_for(info, await control.issue_token()), BODY
    )
    assert answer.status == 200
    assert "apns-unique-id" not in answer.headers
    await production.close()


async def test_a_key_for_one_environment_is_refused_by_the_other(tmp_path: Path) -> None:
    async with strict_sim(tmp_path, key_environments=frozenset({"sandbox"})) as (info, control):
        production = await RawH2Client.connect(info)
        token = await control.issue_token(TOPIC, "production")
        assert await status_and_reason(production, info, token) == (
            403,
            "BadEnvironmentKeyIdInToken",
        )
        sandbox = await RawH2Client.connect(info, environment="sandbox")
        token = await control.issue_token(TOPIC, "sandbox")
        assert await status_and_reason(sandbox, info, token) == (200, None)
        await production.close()
        await sandbox.close()


@pytest.mark.skipif(not HAS_CURL_HTTP2, reason="curl is missing or was built without HTTP2")
async def test_curl_against_the_sandbox_sees_apns_unique_id_and_bad_device_token(
    sim: tuple[SimInfo, ControlClient],
) -> None:
    info, control = sim
    token = await control.issue_token(TOPIC, "sandbox")

    async def curl(device_token: str) -> str:
        command = [
            *("curl", "--silent", "--show-error", "--http2", "--include"),
            *("--cacert", str(info.ca), "--header", f"apns-topic: {TOPIC}"),
            *("--header", f"authorization: bearer {info.provider_token()}"),
            *("--data", BODY.decode()),
            f"https://localhost:{info.sandbox_port}/3/device/{device_token}",
        ]
        done = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
        stdout, _ = await asyncio.wait_for(done.communicate(), 20)
        return stdout.decode()

    accepted = await curl(token)
    assert accepted.startswith("HTTP/2 200")
    assert "apns-unique-id: " in accepted
    rejected = await curl(token[:-2])
    assert rejected.startswith("HTTP/2 400")
    assert rejected.endswith('{"reason":"BadDeviceToken"}')


# --- GOAWAY -------------------------------------------------------------------------------------


async def test_goaway_names_the_last_stream_answered_and_drops_the_rest_unlogged(
    sim: tuple[SimInfo, ControlClient],
) -> None:
    info, control = sim
    token = await control.issue_token()
    raw = await RawH2Client.connect(info)
    assert await status_and_reason(raw, info, token) == (200, None)  # lift the limit of one
    await control.put_faults({"goaway": {"after_streams": 2, "reason": "Shutdown"}})
    # Read in one go by the server: stream 3 is answered, GOAWAY follows, stream 5 is beyond it.
    first, second = raw.send_together(
        [(raw.headers_for(info, token), BODY), (raw.headers_for(info, token), BODY)]
    )
    assert (await raw.response(first)).status == 200
    async with asyncio.timeout(5):
        await raw.closed
    assert raw.terminated is not None
    assert raw.terminated.last_stream_id == first
    assert raw.terminated.additional_data is not None
    assert json.loads(raw.terminated.additional_data) == {"reason": "Shutdown"}
    with pytest.raises(ConnectionError):
        await raw.response(second)
    assert len((await control.notifications())["notifications"]) == 2
    stats = await control.stats()
    assert (stats["streams"], stats["goaways"]) == (2, 1)


async def test_graceful_goaway_answers_the_streams_already_admitted(
    sim: tuple[SimInfo, ControlClient],
) -> None:
    info, control = sim
    token = await control.issue_token()
    raw = await RawH2Client.connect(info)
    assert await status_and_reason(raw, info, token) == (200, None)  # lift the limit of one
    await control.put_faults(
        {"goaway": {"after_streams": 2, "reason": "Shutdown"}, "latency_ms": 300}
    )
    second, third = raw.send_together(
        [(raw.headers_for(info, token), BODY), (raw.headers_for(info, token), BODY)]
    )
    answers = [await raw.response(second), await raw.response(third)]
    assert [a.status for a in answers] == [200, 200]
    async with asyncio.timeout(5):
        await raw.closed
    assert raw.terminated is not None
    assert raw.terminated.last_stream_id == third
    assert len((await control.notifications())["notifications"]) == 3


async def test_idle_connection_gets_goaway_idle_timeout(tmp_path: Path) -> None:
    async with strict_sim(tmp_path, idle_timeout_s=0.3) as (info, control):
        raw = await RawH2Client.connect(info)
        assert await status_and_reason(raw, info, await control.issue_token()) == (200, None)
        async with asyncio.timeout(5):
            await raw.closed
        assert raw.terminated is not None
        assert raw.terminated.last_stream_id == 1
        assert raw.terminated.additional_data is not None
        assert json.loads(raw.terminated.additional_data) == {"reason": "IdleTimeout"}
        assert (await control.stats())["idle_goaways"] == 1


async def test_a_run_of_errors_ends_in_goaway(tmp_path: Path) -> None:
    async with strict_sim(tmp_path, goaway_after_errors=3) as (info, control):
        raw = await RawH2Client.connect(info)
        for _ in range(3):
            assert await status_and_reason(raw, info, "ab" * 32) == (400, "BadDeviceToken")
        async with asyncio.timeout(5):
            await raw.closed
        assert raw.terminated is not None
        assert raw.terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        assert raw.terminated.last_stream_id == 5
        assert raw.terminated.additional_data is not None
        assert json.loads(raw.terminated.additional_data) == {"reason": "TooManyRequests"}
        assert (await control.stats())["error_goaways"] == 1


# --- the command --------------------------------------------------------------------------------


def test_command_line_names_both_listeners_and_the_lenient_modes(tmp_path: Path) -> None:
    arguments = ("--tokens", "open", "--stream-limit", "fixed", "--max-streams", "7")
    with simulator_process(tmp_path / "state", *arguments) as process:
        document = json.loads((tmp_path / "state" / "sim.json").read_text())
        assert (document["tokens"], document["stream_limit"]) == ("open", "fixed")
        assert process.info.sandbox_port not in (0, process.info.port)

        async def send() -> tuple[int, list[int]]:
            raw = await RawH2Client.connect(process.info, environment="sandbox")
            response = await raw.request(raw.headers_for(process.info, "cd" * 32), BODY)
            await raw.close()
            return response.status, raw.limits_seen

        assert asyncio.run(send()) == (200, [7])
        assert process.stop() == 0
