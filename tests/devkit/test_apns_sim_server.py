"""The simulator over real TLS + HTTP/2: aioapns 4.0, a raw h2 client and curl as its clients."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypedDict, Unpack, cast

import aiohttp
import pytest
from aioapns import NotificationRequest, PushType
from aioapns.connection import APNsBaseClientProtocol, APNsKeyConnectionPool
from aioapns.exceptions import MaxAttemptsExceeded
from simulator import (
    ControlClient,
    RawH2Client,
    SimInfo,
    aioapns_client,
    control_client,
    running_simulator,
    simulator_process,
)

from relay_devkit.apns_sim.certs import create_signing_key
from relay_devkit.apns_sim.server import KeySource

MESSAGE = {"aps": {"alert": "Agent available"}, "message": {"_id": "s1", "_action": "chat"}}
OTHER_KEY_ID, OTHER_TEAM_ID = "OTHERKEY01", "OTHERTEAM1"
SAME_TEAM_KEY_ID = "SAMETEAM01"


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[SimInfo]:
    """A simulator trusting, besides its own key, one of another team and one more of its own."""
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    other = create_signing_key(keys_dir, OTHER_KEY_ID, OTHER_TEAM_ID)
    async with running_simulator(
        tmp_path / "sim",
        team_id="TEAMSIM001",
        topics=frozenset({"com.example.app", "com.example.app.voip"}),
        extra_keys=(
            KeySource(OTHER_KEY_ID, OTHER_TEAM_ID, other.key_file),
            KeySource(SAME_TEAM_KEY_ID, "TEAMSIM001", other.key_file),
        ),
        max_streams=321,
        seed=1,
    ) as info:
        yield info


@pytest.fixture
async def control(sim: SimInfo) -> AsyncIterator[ControlClient]:
    async with control_client(sim) as client:
        yield client


@pytest.fixture
async def token(control: ControlClient) -> str:
    """A token the simulator issued for com.example.app in production."""
    return await control.issue_token()


@pytest.fixture
async def other_token(control: ControlClient) -> str:
    return await control.issue_token()


@pytest.fixture
async def raw(sim: SimInfo) -> AsyncIterator[RawH2Client]:
    client = await RawH2Client.connect(sim)
    yield client
    await client.close()


class NoteOptions(TypedDict, total=False):
    """The optional fields of aioapns's NotificationRequest a test may set."""

    notification_id: str
    time_to_live: int
    priority: int
    collapse_key: str
    push_type: PushType
    apns_topic: str


class NoteFields(NoteOptions):
    """A whole request's fields."""

    device_token: str
    message: dict[str, Any]  # the payload's JSON object, as aioapns takes it


class NoteChanges(NoteOptions, total=False):
    """What a test changes in a valid request."""

    device_token: str
    message: dict[str, Any]


def note(
    token: str, message: dict[str, Any] = MESSAGE, **options: Unpack[NoteOptions]
) -> NotificationRequest:
    return NotificationRequest(device_token=token, message=message, **options)


async def test_aioapns_delivers_and_the_log_shows_it(
    sim: SimInfo, control: ControlClient, token: str, other_token: str
) -> None:
    client = aioapns_client(sim)
    result = await client.send_notification(
        note(token, priority=5, collapse_key="s1", time_to_live=60)
    )
    assert (result.status, result.description) == ("200", None)
    other = await client.send_notification(note(other_token))
    assert other.is_successful

    log = await control.notifications()
    assert [n["token"] for n in log["notifications"]] == [token, other_token]
    first = log["notifications"][0]
    assert first["payload"] == MESSAGE
    assert first["topic"] == "com.example.app"
    assert first["headers"]["apns-id"] == result.notification_id
    assert first["headers"]["apns-priority"] == "5"
    assert first["headers"]["apns-collapse-id"] == "s1"
    assert "authorization" not in first["headers"]
    assert first["key_id"] == sim.key_id  # the key its connection is bound to
    assert abs(first["received_at"] - time.time()) < 30
    assert log["last_seq"] == 2
    assert first["seq"] < log["notifications"][1]["seq"]

    assert [
        n["seq"] for n in (await control.notifications(since=first["seq"]))["notifications"]
    ] == [2]
    assert [
        n["token"]
        for n in (await control.notifications(token=other_token.upper()))["notifications"]
    ] == [other_token]
    client.pool.close()


@pytest.mark.parametrize(
    ("request_kwargs", "status", "reason"),
    [
        ({"device_token": "not-hex"}, "400", "BadDeviceToken"),
        ({"notification_id": "not-a-uuid"}, "400", "BadMessageId"),
        ({"apns_topic": "com.example app"}, "400", "BadTopic"),
        ({"apns_topic": "com.other.app"}, "400", "TopicDisallowed"),
        ({"priority": 7}, "400", "BadPriority"),
        ({"push_type": PushType.BACKGROUND, "priority": 10}, "400", "BadPriority"),
        ({"collapse_key": "x" * 65}, "400", "BadCollapseId"),
        ({"message": {"aps": {}, "pad": "x" * 4096}}, "413", "PayloadTooLarge"),
    ],
)
async def test_aioapns_sees_apples_reasons(
    sim: SimInfo, request_kwargs: NoteChanges, status: str, reason: str, token: str
) -> None:
    fields: NoteFields = {"device_token": token, "message": MESSAGE, **request_kwargs}
    client = aioapns_client(sim)
    result = await client.send_notification(NotificationRequest(**fields))
    assert (result.status, result.description) == (status, reason)
    client.pool.close()


async def test_voip_may_be_larger(sim: SimInfo, token: str) -> None:
    client = aioapns_client(sim, topic="com.example.app.voip")
    big = {"aps": {}, "pad": "x" * 4500}
    assert (
        await client.send_notification(note(token, push_type=PushType.VOIP, message=big))
    ).is_successful
    client.pool.close()


async def test_aioapns_with_an_unknown_key_gets_invalid_provider_token(
    sim: SimInfo, token: str
) -> None:
    client = aioapns_client(sim)
    # aioapns_client signs with the simulator's key, so its pool is a key pool.
    cast(APNsKeyConnectionPool, client.pool).key_id = "UNKNOWN999"
    result = await client.send_notification(note(token))
    assert (result.status, result.description) == ("403", "InvalidProviderToken")
    client.pool.close()


async def test_unregistered_token_answers_410_with_its_timestamp(
    sim: SimInfo, control: ControlClient, token: str
) -> None:
    await control.unregister(token, timestamp_ms=1_700_000_000_123)
    client = aioapns_client(sim)
    result = await client.send_notification(note(token))
    assert (result.status, result.description, result.timestamp) == (
        "410",
        "Unregistered",
        1_700_000_000_123,
    )
    assert (await control.notifications())["notifications"] == []
    client.pool.close()


def raw_cases(
    sim: SimInfo, raw: RawH2Client, token: str
) -> list[tuple[list[tuple[str, str]], bytes, int, str]]:
    headers = raw.headers_for
    return [
        (headers(sim, token, **{":method": "GET"}), b"", 405, "MethodNotAllowed"),
        (headers(sim, token, **{":path": "/3/notdevice/x"}), b"{}", 404, "BadPath"),
        (headers(sim, "", **{":path": "/3/device/"}), b"{}", 400, "MissingDeviceToken"),
        ([h for h in headers(sim, token) if h[0] != "apns-topic"], b"{}", 400, "MissingTopic"),
        (headers(sim, token, apns_push_type="pager"), b"{}", 400, "InvalidPushType"),
        (headers(sim, token, apns_expiration="tomorrow"), b"{}", 400, "BadExpirationDate"),
        (headers(sim, token), b"", 400, "PayloadEmpty"),
        (headers(sim, token), b"[1]", 400, "PayloadEmpty"),
        ([*headers(sim, token), ("apns-topic", "com.example.app")], b"{}", 400, "DuplicateHeaders"),
        (
            [h for h in headers(sim, token) if h[0] != "authorization"],
            b"{}",
            403,
            "MissingProviderToken",
        ),
    ]


async def test_raw_h2_requests_aioapns_cannot_send(
    sim: SimInfo, raw: RawH2Client, token: str
) -> None:
    for headers, body, status, reason in raw_cases(sim, raw, token):
        response = await raw.request(headers, body)
        assert (response.status, response.json()["reason"]) == (status, reason), headers
        assert response.headers["content-type"] == "application/json"
        assert response.headers["apns-id"]


async def test_every_response_echoes_the_apns_id(
    sim: SimInfo, raw: RawH2Client, token: str
) -> None:
    apns_id = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
    ok = await raw.request(raw.headers_for(sim, token, apns_id=apns_id), b"{}")
    assert (ok.status, ok.headers["apns-id"], ok.body) == (200, apns_id, b"")
    bad = await raw.request(raw.headers_for(sim, "xyz", apns_id=apns_id), b"{}")
    assert (bad.status, bad.headers["apns-id"]) == (400, apns_id)


async def test_expired_provider_token(sim: SimInfo, raw: RawH2Client, token: str) -> None:
    old = sim.provider_token(issued_at=int(time.time()) - 3700)
    response = await raw.request(raw.headers_for(sim, token, authorization=f"bearer {old}"), b"{}")
    assert (response.status, response.json()["reason"]) == (403, "ExpiredProviderToken")


async def test_token_rules_that_bind_to_the_connection(
    sim: SimInfo, raw: RawH2Client, token: str
) -> None:
    now = int(time.time())
    first = sim.provider_token(issued_at=now - 600)
    other_pem = (sim.key_file.parent.parent / "keys" / f"AuthKey_{OTHER_KEY_ID}.p8").read_text()
    other_team = sim.provider_token(key_id=OTHER_KEY_ID, team_id=OTHER_TEAM_ID, key_pem=other_pem)
    same_team_other_key = sim.provider_token(key_id=SAME_TEAM_KEY_ID, key_pem=other_pem)
    refreshed_too_soon = sim.provider_token(issued_at=now)

    async def send(provider_token: str) -> tuple[int, str | None]:
        response = await raw.request(
            raw.headers_for(sim, token, authorization=f"bearer {provider_token}"), b"{}"
        )
        return response.status, response.json()["reason"] if response.body else None

    assert await send(first) == (200, None)
    assert await send(other_team) == (403, "InvalidProviderToken")
    assert await send(same_team_other_key) == (403, "UnrelatedKeyIdInToken")
    assert await send(refreshed_too_soon) == (429, "TooManyProviderTokenUpdates")
    assert await send(first) == (200, None)
    fresh_connection = await RawH2Client.connect(sim)
    response = await fresh_connection.request(
        fresh_connection.headers_for(sim, token, authorization=f"bearer {other_team}"), b"{}"
    )
    assert response.status == 200  # the other team is fine on a connection of its own
    await fresh_connection.close()


@pytest.mark.parametrize("alpn", [None, ["h2"]], ids=["prior-knowledge", "alpn-h2"])
async def test_h2_with_and_without_alpn_and_the_stream_limit(
    sim: SimInfo, alpn: list[str] | None, token: str
) -> None:
    client = await RawH2Client.connect(sim, alpn=alpn)
    negotiated = client.writer.get_extra_info("ssl_object").selected_alpn_protocol()
    assert negotiated == (alpn[0] if alpn else None)
    response = await client.request(client.headers_for(sim, token), b"{}")
    assert response.status == 200
    async with asyncio.timeout(5):
        await client.settings_received.wait()
    assert client.remote_max_streams == 321
    await client.close()


@pytest.mark.skipif(
    shutil.which("curl") is None
    or "HTTP2" not in subprocess.run(["curl", "--version"], capture_output=True, text=True).stdout,
    reason="curl is missing or was built without HTTP2 support",
)
async def test_curl_as_apple_documents_it(sim: SimInfo, control: ControlClient, token: str) -> None:
    command = [
        "curl",
        "--silent",
        "--show-error",
        "--http2",
        "--cacert",
        str(sim.ca),
        "--header",
        "apns-topic: com.example.app",
        "--header",
        "apns-push-type: alert",
        "--header",
        f"authorization: bearer {sim.provider_token()}",
        "--data",
        json.dumps(MESSAGE),
        "--write-out",
        "%{http_code} %{http_version}",
        f"https://localhost:{sim.port}/3/device/{token}",
    ]
    done = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    stdout, _ = await asyncio.wait_for(done.communicate(), 20)
    assert stdout.decode() == "200 2"
    assert (await control.notifications())["notifications"][0]["payload"] == MESSAGE


# --- faults, seen from the client -----------------------------------------------------------


async def test_scripted_answers_then_normal_service(
    sim: SimInfo, control: ControlClient, token: str
) -> None:
    await control.put_faults(
        {
            "scripted": {
                token: [
                    {"status": 500, "reason": "InternalServerError"},
                    {"status": 503, "reason": "ServiceUnavailable"},
                ]
            }
        }
    )
    client = aioapns_client(sim)
    answers = [(await client.send_notification(note(token))).description for _ in range(3)]
    assert answers == ["InternalServerError", "ServiceUnavailable", None]
    client.pool.close()


async def test_random_error_with_certainty(
    sim: SimInfo, control: ControlClient, token: str
) -> None:
    await control.put_faults(
        {"error": {"probability": 1.0, "status": 503, "reason": "ServiceUnavailable"}}
    )
    client = aioapns_client(sim)
    result = await client.send_notification(note(token))
    assert (result.status, result.description) == ("503", "ServiceUnavailable")
    client.pool.close()


async def test_rate_limit_answers_429(sim: SimInfo, control: ControlClient, token: str) -> None:
    await control.put_faults({"rate_limit": {"per_second": 3}})
    client = aioapns_client(sim)
    results = await asyncio.gather(*(client.send_notification(note(token)) for _ in range(10)))
    rejected = [r for r in results if r.status == "429"]
    assert {r.description for r in rejected} == {"TooManyRequests"}
    assert 1 <= len([r for r in results if r.is_successful]) <= 6  # 3 a second, maybe 2 seconds
    assert len(rejected) >= 4
    client.pool.close()


async def test_latency_is_measured_by_the_client(
    sim: SimInfo, control: ControlClient, token: str
) -> None:
    client = aioapns_client(sim)
    await client.send_notification(note(token))  # connect first: measure only the answer
    await control.put_faults({"latency_ms": 300})
    started = time.monotonic()
    result = await client.send_notification(note(token))
    elapsed = time.monotonic() - started
    assert result.is_successful
    assert 0.3 <= elapsed < 2.0
    client.pool.close()


async def test_stall_is_no_answer_within_a_deadline(
    sim: SimInfo, control: ControlClient, raw: RawH2Client, token: str, other_token: str
) -> None:
    await control.put_faults({"stall": {"tokens": [token]}})
    # A first success lifts the connection's limit of one stream.
    assert (await raw.request(raw.headers_for(sim, other_token), b"{}")).status == 200
    stalled = raw.send(raw.headers_for(sim, token), b"{}")
    answered = await raw.request(raw.headers_for(sim, other_token), b"{}")
    assert answered.status == 200  # the connection still serves other streams
    with pytest.raises(TimeoutError):
        await raw.response(stalled, within_s=0.5)
    assert (await control.stats())["stalled"] == 1


async def test_error_without_body_is_a_bare_status(
    sim: SimInfo, control: ControlClient, raw: RawH2Client, token: str
) -> None:
    await control.put_faults(
        {"scripted": {token: [{"status": 500, "reason": "InternalServerError", "body": False}]}}
    )
    response = await raw.request(raw.headers_for(sim, token), b"{}")
    assert (response.status, response.body) == (500, b"")
    assert "content-type" not in response.headers


async def test_goaway_after_n_streams_closes_the_connection(
    sim: SimInfo, control: ControlClient, raw: RawH2Client, token: str
) -> None:
    await control.put_faults({"goaway": {"after_streams": 2, "reason": "Shutdown"}})
    assert (await raw.request(raw.headers_for(sim, token), b"{}")).status == 200
    assert (await raw.request(raw.headers_for(sim, token), b"{}")).status == 200
    async with asyncio.timeout(5):
        await raw.closed
    assert raw.terminated is not None
    assert raw.terminated.additional_data is not None
    assert json.loads(raw.terminated.additional_data) == {"reason": "Shutdown"}
    assert raw.terminated.last_stream_id == 3


async def test_aioapns_sees_goaway_as_a_closed_connection_and_reconnects(
    sim: SimInfo, control: ControlClient, token: str
) -> None:
    await control.put_faults({"goaway": {"after_streams": 1}})
    client = aioapns_client(sim)
    discarded = asyncio.Event()
    discard = client.pool.discard_connection

    def discard_and_tell(connection: APNsBaseClientProtocol) -> None:
        discard(connection)
        discarded.set()

    # aioapns's "connection closed" hook, wrapped on this one pool to see it called.
    client.pool.discard_connection = discard_and_tell  # type: ignore[method-assign]
    assert (await client.send_notification(note(token))).is_successful
    async with asyncio.timeout(5):
        await discarded.wait()
    assert (await client.send_notification(note(token))).is_successful
    stats = await control.stats()
    assert (stats["goaways"], stats["connections_opened"]) == (2, 2)
    client.pool.close()


async def test_drop_after_n_streams_is_a_connection_error(
    sim: SimInfo, control: ControlClient, raw: RawH2Client, token: str
) -> None:
    await control.put_faults({"drop": {"after_streams": 1}})
    assert (await raw.request(raw.headers_for(sim, token), b"{}")).status == 200
    with pytest.raises(ConnectionError):
        await raw.request(raw.headers_for(sim, token), b"{}")
    assert raw.terminated is None  # no GOAWAY: the TCP connection was just cut
    await control.put_faults({"drop": {"probability": 1.0}})
    client = aioapns_client(sim, max_connection_attempts=2)
    with pytest.raises(MaxAttemptsExceeded):  # aioapns's word for "every connection broke"
        await asyncio.wait_for(client.send_notification(note(token)), 10)
    assert (await control.stats())["drops"] == 3
    client.pool.close()


# --- control API ----------------------------------------------------------------------------


async def test_faults_can_be_read_replaced_and_cleared(
    sim: SimInfo, control: ControlClient
) -> None:
    assert (await control.get_faults())["error"] is None
    put = await control.put_faults({"latency_ms": {"min": 1, "max": 2}})
    assert put["latency_ms"] == {"min": 1.0, "max": 2.0}
    assert (await control.get_faults()) == put
    await control.clear_faults()
    assert (await control.get_faults())["latency_ms"] is None
    async with aiohttp.ClientSession() as session:
        async with session.put(f"{sim.control_url}/faults", json={"drop": {"after": 1}}) as reply:
            assert reply.status == 400
            assert "drop" in (await reply.json())["error"]
        async with session.get(f"{sim.control_url}/notifications?since=x") as reply:
            assert reply.status == 400


async def test_stats_and_reset(
    sim: SimInfo, control: ControlClient, token: str, other_token: str
) -> None:
    client = aioapns_client(sim)
    await client.send_notification(note(token))
    await client.send_notification(note("zz"))
    stats = await control.stats()
    assert stats["responses"] == {"200": {"": 1}, "400": {"BadDeviceToken": 1}}
    assert (stats["streams"], stats["connections_opened"], stats["accepted"]) == (2, 1, 1)
    await control.put_faults({"latency_ms": 5})
    await control.unregister(other_token)
    await control.reset()
    stats = await control.stats()
    assert stats["responses"] == {}
    assert (await control.notifications())["notifications"] == []
    assert (await control.get_faults())["latency_ms"] is None
    assert (await client.send_notification(note(other_token))).is_successful
    client.pool.close()


# --- the command ----------------------------------------------------------------------------


def test_command_writes_its_state_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with simulator_process(state_dir, "--key-id", "ABCDE12345", "--team-id", "TEAM123456") as sim:
        info = sim.info
        assert (info.key_id, info.team_id) == ("ABCDE12345", "TEAM123456")
        assert info.key_file == state_dir.resolve() / "AuthKey_ABCDE12345.p8"
        assert info.key_file.read_text().startswith("-----BEGIN PRIVATE KEY-----")
        assert info.ca.read_text().startswith("-----BEGIN CERTIFICATE-----")
        assert info.ca.is_absolute()
        assert sim.stop() == 0
        assert "control API" in sim.log_file.read_text()


async def test_two_workers_share_one_port_and_one_log(tmp_path: Path) -> None:
    with simulator_process(tmp_path / "state", "--workers", "2") as sim:
        clients = [aioapns_client(sim.info) for _ in range(16)]
        async with control_client(sim.info) as control:
            # Issued by the owning process, known to both workers before the answer comes.
            tokens = await control.issue_tokens(len(clients))
            results = await asyncio.gather(
                *(c.send_notification(note(t)) for c, t in zip(clients, tokens, strict=True))
            )
            assert all(r.is_successful for r in results)
            logged = (await control.notifications())["notifications"]
            assert sorted(n["token"] for n in logged) == sorted(tokens)
            assert {n["key_id"] for n in logged} == {sim.info.key_id}  # reported by each worker
            stats = await control.stats()
            # 16 connections hashed onto 2 sockets: all on one has odds of 1 in 32768.
            assert len(stats["workers"]) == 2
            assert all(streams > 0 for streams in stats["workers"].values())
            assert stats["streams"] == len(clients)
            await control.put_faults(
                {"scripted": {tokens[0]: [{"status": 500, "reason": "InternalServerError"}]}}
            )
            fresh = [aioapns_client(sim.info) for _ in range(4)]
            answers = await asyncio.gather(*(c.send_notification(note(tokens[0])) for c in fresh))
            # The script is shared: exactly one of four sends, whichever worker took it, gets 500.
            assert sorted(a.status for a in answers) == ["200", "200", "200", "500"]
            for client in clients + fresh:
                client.pool.close()
        assert sim.stop() == 0


def test_server_certificate_names_extra_hosts(tmp_path: Path) -> None:
    """A container network reaches the simulator by service name: --tls-name puts it on the cert."""
    from cryptography import x509

    from relay_devkit.apns_sim.certs import create_server_identity

    identity = create_server_identity(tmp_path, ["apns-sim"])
    cert = x509.load_pem_x509_certificate(identity.cert_file.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost", "apns-sim"]
