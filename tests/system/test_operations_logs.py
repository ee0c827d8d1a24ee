"""Logs: JSON or console by TTY and setting, request ids, aioapns rate-limited, no secret ever."""

from __future__ import annotations

import base64
import json
import logging
import os
import pty
import re
import secrets
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from eventually import eventually
from hypothesis import example, given
from hypothesis import strategies as st
from relay_harness import (
    API_TOKEN,
    BASIC,
    app_tokens,
    relay_document,
    relay_processes,
    write_config,
)
from simulator import control_client, running_simulator

from relay.core.redaction import mask_secrets, mask_token, redact_text
from relay.telemetry.logs import RateLimitFilter, RepeatedCondition, redact
from relay_devkit.dev_mode import simulator_app
from relay_devkit.embedded import EmbeddedServer

WAIT_S = 20.0
WRONG_BEARER = "wrong-token-5f2c9a7e41"
WRONG_BASIC = ("gms", "not-the-password-83c1")
JWT_SHAPE = re.compile(r"eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]{8,}")
LOG_PROBE = """
import structlog
from relay_devkit.embedded import EmbeddedServer
from relay.telemetry.logs import configure_logging
configure_logging({fmt!r})
structlog.get_logger("probe").info("probe_event", answer=42)
"""


def random_token() -> str:
    """Distinct first 8 digits too, so each masked form names one device."""
    return secrets.token_hex(32)


SECRETS_PROBE = """
import logging
import structlog
from relay.telemetry.logs import configure_logging
configure_logging("json")
structlog.get_logger("probe").info("probe_event", header="Authorization: Bearer sEcReT-own",
                                   device={token!r})
logging.getLogger("aiohttp.server").warning("bad header %s from %s", "BEARER sEcReT-std", {token!r})
"""
# Pieces of every pattern the redaction knows, in both cases, with the characters re.IGNORECASE
# folds differently from str.lower() (long s, dotless i, dotted capital I), joined at random.
REDACTION_PIECES = st.sampled_from(
    [
        *"0123456789abcdefABCDEF-_ :/@'\"\n\r\t\\x…\u017f\u0131\u0130\u0307",
        "\\x",
        "\\r\\n",
        "eyJ",
        "Bearer ",
        "BASIC ",
        "ba\u017fic ",
        "Author\u0131zation: ",
        "authorization",
        "-----BEGIN KEY-----",
        "-----END KEY-----",
        "redis://",
        "c0ffee12",
        "0a1b2c3d4e5f",
        ".",
    ]
)


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("aioapns", logging.WARNING, __file__, 1, message, ("x",), None)


def test_rate_limit_filter_passes_each_template_once_per_interval_and_counts_the_rest() -> None:
    now = [100.0]
    limiter = RateLimitFilter(interval_s=10, clock=lambda: now[0])
    assert limiter.filter(record("End stream: %s"))
    assert not limiter.filter(record("End stream: %s"))
    assert not limiter.filter(record("End stream: %s"))
    assert limiter.filter(record("Connection %s lost"))  # another template has its own budget
    now[0] += 9.9
    assert not limiter.filter(record("End stream: %s"))
    now[0] += 0.1
    passed = record("End stream: %s")
    assert limiter.filter(passed)
    # The filter sets it on the record (LogRecord takes any attribute; it declares none such).
    assert passed.suppressed == 3  # type: ignore[attr-defined]
    assert not hasattr(record("x"), "suppressed")


def probe_output(fmt: str, *, tty: bool) -> str:
    """What configure_logging(fmt) writes for one event, with stderr a terminal or a pipe."""
    command = [sys.executable, "-c", LOG_PROBE.format(fmt=fmt)]
    if not tty:
        return subprocess.run(
            command, capture_output=True, text=True, timeout=30, check=True
        ).stderr
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=terminal)
        os.close(terminal)
        output = b""
        while chunk := _read_terminal(controller):
            output += chunk
        assert process.wait(timeout=30) == 0
    finally:
        os.close(controller)
    return output.decode()


def _read_terminal(controller: int) -> bytes:
    try:
        return os.read(controller, 4096)
    except OSError:  # EIO: the child closed the terminal
        return b""


def test_json_lines_unless_a_terminal_or_asked_for_console() -> None:
    [line] = probe_output("auto", tty=False).splitlines()
    event = json.loads(line)
    assert (event["event"], event["answer"], event["level"]) == ("probe_event", 42, "info")
    assert event["timestamp"].endswith("Z")
    for fmt, tty in (("auto", True), ("console", False)):
        output = probe_output(fmt, tty=tty)
        assert "probe_event" in output, output
        assert "answer" in output, output
        assert not output.lstrip().startswith("{"), f"{fmt}, tty={tty}: {output}"
    json.loads(probe_output("json", tty=True).strip())


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


async def wait_until_final(session: aiohttp.ClientSession, url: str, ids: list[str]) -> None:
    for notification_id in ids:

        async def final(notification_id: str = notification_id) -> bool:
            async with session.get(
                f"{url}/v1/notifications/{notification_id}",
                headers={"Authorization": f"Bearer {API_TOKEN}"},
            ) as response:
                state = (await response.json())["state"]
            return state in {"delivered", "failed", "expired"}

        await eventually(final, timeout_s=WAIT_S, what=f"{notification_id} final")


@pytest.mark.slow
async def test_a_full_run_logs_no_token_jwt_key_or_credential(
    redis_url: str, state_dir: Path
) -> None:
    bad = random_token()  # never issued: APNs answers BadDeviceToken
    bearer = {"Authorization": f"Bearer {API_TOKEN}"}
    gms = {"Authorization": "Basic " + basic(*BASIC)}
    started = int(time.time())
    async with running_simulator(state_dir / "sim") as info, control_client(info) as control:
        issued = await app_tokens(control, simulator_app(info), 6)
        delivered, (unregistered, expired_jwt, paused) = issued[:3], issued[3:]
        await control.unregister(unregistered)
        await control.put_faults(
            {
                "scripted": {
                    expired_jwt: [{"status": 403, "reason": "ExpiredProviderToken"}],
                    paused: [{"status": 403, "reason": "InvalidProviderToken"}],
                }
            }
        )
        document = relay_document(redis_url, info, logging={"level": "debug"})
        config = write_config(state_dir / "relay.yaml", document)
        with relay_processes("serve", config=config, log_dir=state_dir) as [relay]:
            async with aiohttp.ClientSession() as session:

                async def call(
                    method: str, path: str, headers: dict[str, str], body: Any = None
                ) -> tuple[int, Any, Any]:
                    async with session.request(
                        method, relay.url + path, json=body, headers=headers
                    ) as response:
                        return (
                            response.status,
                            await response.json(content_type=None),
                            response.headers,
                        )

                ids = []
                for device in delivered[:2]:
                    message = {"_id": "S1", "_action": "get-dialog-start-chat"}
                    status, body, _ = await call(
                        "POST", "/gms/push", gms, {"deviceId": device, "message": message}
                    )
                    assert status == 200, body
                    ids.append(body["id"])
                for device in (delivered[2], unregistered, bad, expired_jwt, paused):
                    notification = {"device_token": device, "service_id": "S2", "action": "x"}
                    status, body, _ = await call("POST", "/v1/notifications", bearer, notification)
                    assert status == 202, body
                    ids.append(body["id"])
                await wait_until_final(session, relay.url, ids)
                status, body, _ = await call(
                    "POST",
                    "/v1/notifications",
                    bearer,
                    {"device_token": bad, "service_id": "S3", "action": "x"},
                )
                assert status == 410, body
                for wrong in (f"Bearer {WRONG_BEARER}", "Basic " + basic(*WRONG_BASIC)):
                    status, _, _ = await call("GET", "/v1/queue", {"Authorization": wrong})
                    assert status == 401
                status, body, headers = await call(
                    "DELETE", f"/v1/devices/dev/{unregistered}", {**bearer, "X-Request-Id": "r-42"}
                )
                assert status == 200, body
                assert headers["X-Request-Id"] == "r-42"
                status, body, headers = await call("GET", f"/v1/devices/dev/{bad}", bearer)
                assert status == 200, body
                assert uuid.UUID(headers["X-Request-Id"])  # generated: a UUID
            assert relay.kill(signal.SIGTERM) == 0
            log = relay.log()
    finished = int(time.time())

    events = [json.loads(line) for line in log.splitlines()]  # JSON lines: not a terminal
    by_name: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_name.setdefault(event["event"], []).append(event)
    # The run logged what the grep below is meant to search: attempts, signing, the pause.
    attempts = by_name["apns_attempt"]
    assert {a["token"] for a in attempts} == {
        mask_token(t) for t in (*delivered, unregistered, bad, expired_jwt, paused)
    }
    first = next(a for a in attempts if a["token"] == mask_token(delivered[0]))
    assert first["id"] == ids[0]
    assert (first["app"], first["service_id"], first["action"]) == (
        "dev",
        "S1",
        "get-dialog-start-chat",
    )
    assert (first["attempt"], first["status"], first["reason"]) == (1, 200, None)
    assert first["apns_id"]
    # A sandbox app: APNs' Delivery Log key, in full (an id, not a device token).
    assert uuid.UUID(first["apns_unique_id"]).version == 4
    assert first["latency_ms"] >= 0
    # ExpiredProviderToken asks for a new JWT, but not within a minute of the last one.
    assert len(by_name["jwt_signed"]) == 1
    assert by_name["app_paused"][0]["reason"] == "InvalidProviderToken"
    [cleared] = by_name["device_cleared"]
    assert cleared["request_id"] == "r-42"
    assert cleared["token"] == mask_token(unregistered)

    key_lines = [line for line in info.key_pem.splitlines() if line and "-----" not in line]
    jwt_header = jwt.encode({}, info.key_pem, algorithm="ES256", headers={"kid": info.key_id})
    jwt_claims = [
        jwt.encode({"iss": info.team_id, "iat": second}, info.key_pem, algorithm="ES256").split(
            "."
        )[1]
        for second in range(started, finished + 1)
    ]
    never_logged = {
        *delivered,
        unregistered,
        bad,
        expired_jwt,
        paused,
        API_TOKEN,
        BASIC[1],
        basic(*BASIC),
        WRONG_BEARER,
        WRONG_BASIC[1],
        basic(*WRONG_BASIC),
        "".join(key_lines),
        *key_lines,
        jwt_header.split(".")[0],
        *jwt_claims,
    }
    leaked = sorted(secret for secret in never_logged if secret in log)
    assert not leaked, f"logged in full: {leaked}"
    assert not JWT_SHAPE.search(log)


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("b'Authorization: BEARER sEcReT-abc.123'", "sEcReT-abc.123"),
        ("authorization: bearer sEcReT-abc.123", "sEcReT-abc.123"),
        ("b'Authorization: Bearer\\r\\n  sEcReT-folded'", "sEcReT-folded"),
        ("Authorization: Bearer\r\n sEcReT-folded-raw", "sEcReT-folded-raw"),
        ("b'Bearer AAAAsEcReTlong...'", "AAAAsEcReTlong"),
        ("Invalid header token: b'Authorization sEcReT-nocolon'", "sEcReT-nocolon"),
        ("{'Proxy-Authorization': 'Basic Z21zOnNlY3JldA=='}", "Z21zOnNlY3JldA=="),
        ("Authorization: Digest username=x, response=sEcReTdigest", "sEcReTdigest"),
        ("BASIC Z21zOnNlY3JldA==", "Z21zOnNlY3JldA=="),
        ("b'Bearer \\xff\\xfesEcReTafter'", "sEcReTafter"),
        ("token c0ffee12 is dead", "c0ffee12"),
        ("token FEEDFACE12345678", "FEEDFACE12345678"),
        ("/v1/devices/dev/" + "ab" * 100, "ab" * 100),
        ("deviceId dev:" + "0a" * 32, "0a" * 32),
        ("x \\xffaabbccddeeff0011 y", "aabbccddeeff0011"),
        ("eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJ4In0.c2lnbmF0dXJl", "eyJpc3MiOiJ4In0"),
        ("-----BEGIN PRIVATE KEY-----\nMIGsecretkey\n-----END PRIVATE KEY-----", "MIGsecretkey"),
        ("-----begin private key-----\nMIGcut", "MIGcut"),
        ("redis://user:sEcReTpw@host:6379/0", "sEcReTpw"),
    ],
)
def test_redaction_masks_every_form_of_secret_in_any_case(text: str, secret: str) -> None:
    assert secret not in redact_text(text)


@given(st.lists(REDACTION_PIECES, max_size=30).map("".join))
@example("Author\u0130zation: Bearer sEcReT")
@example("ba\u017fic Z21zOnNlY3JldA==")
@example("\\xffaabbccddeeff0011")
def test_redaction_skips_only_texts_in_which_no_pattern_matches(text: str) -> None:
    # redact_text returns a text unchanged after a cheap look when nothing in it can be a secret;
    # that look must never pass over what the full masking would change.
    assert redact_text(text) == mask_secrets(text)


def test_the_processor_masks_every_value_and_drops_secret_named_fields() -> None:
    token = random_token()
    event = {
        "event": f"device {token} gone",
        "id": "07-0123456789abcdef0123456789abcdef",
        "Password": "hunter2",
        "headers": {"Authorization": "Bearer sEcReT"},
        "attempt": 2,
        "reason": None,
    }
    assert redact(None, "info", event) == {
        "event": f"device {mask_token(token)} gone",
        "id": "07-0123456789abcdef0123456789abcdef",
        "Password": "[redacted]",
        "headers": "{'Authorization': '[redacted]'}",
        "attempt": 2,
        "reason": None,
    }


def test_the_relays_lines_and_the_stdlibs_pass_the_same_redaction() -> None:
    token = random_token()
    command = [sys.executable, "-c", SECRETS_PROBE.format(token=token)]
    output = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stderr
    own, stdlib = (json.loads(line) for line in output.splitlines())
    assert own["header"] == "Authorization: [redacted]"
    assert own["device"] == mask_token(token)
    assert stdlib["event"] == f"bad header BEARER [redacted] from {mask_token(token)}"
    assert (own["level"], stdlib["level"]) == ("info", "warning")
    assert own["timestamp"].endswith("Z")
    assert stdlib["timestamp"].endswith("Z")
    assert "sEcReT" not in output
    assert token not in output


@pytest.mark.parametrize(
    "text",
    [
        "07-0123456789abcdef0123456789abcdef",  # a notification id
        "123e4567-e89b-12d3-a456-426614174000",  # a UUID (request ids, apns-id)
        "aabbccdd…(64)",  # already masked: masking again changes nothing
        "no default app is configured",
    ],
)
def test_redaction_leaves_the_relays_own_ids_and_plain_text(text: str) -> None:
    assert redact_text(text) == text


def test_mask_token_shows_at_most_a_quarter() -> None:
    assert mask_token("c0ffee12") == "c0…(8)"
    assert mask_token("ab" * 32) == "abababab…(64)"


class ListLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))


def test_a_repeated_condition_logs_its_start_a_summary_per_interval_and_its_end() -> None:
    now = [0.0]
    log = ListLog()
    outage = RepeatedCondition("redis_unavailable", log, summary_s=10, clock=lambda: now[0])
    outage.cleared()  # nothing to end
    assert log.lines == []
    for _ in range(500):
        outage.occurred("/gms/push", "Connection refused")
        now[0] += 0.05  # 25 s of failures
    outage.occurred("claim", "Connection refused")
    outage.cleared()
    outage.cleared()
    phases = [fields["phase"] for _, fields in log.lines]
    assert phases == ["started", "continuing", "continuing", "ended"]
    assert log.lines[1][1]["since_last_summary"] == {"/gms/push": 200}
    assert log.lines[-1][1]["occurrences"] == 501
    assert log.lines[-1][1]["for_s"] == 25.0
    outage.occurred("claim", "again")  # a new episode starts afresh
    assert log.lines[-1][1]["phase"] == "started"


@pytest.mark.slow
async def test_a_redis_outage_is_logged_as_one_episode_not_a_line_per_request(
    state_dir: Path,
) -> None:
    requests = 300
    body = {"device_token": random_token(), "alert": "x"}
    bearer = {"Authorization": f"Bearer {API_TOKEN}"}
    with EmbeddedServer(data_dir=state_dir / "valkey") as valkey:
        async with running_simulator(state_dir / "sim") as info:
            # A short hold and no spool: every request meets the outage and is answered 503.
            document = relay_document(valkey.url, info, ingest={"hold_seconds": 0.05})
            config = write_config(state_dir / "relay.yaml", document)
            with relay_processes("api", config=config, log_dir=state_dir) as [relay]:
                async with aiohttp.ClientSession() as session:

                    async def push() -> int:
                        async with session.post(
                            f"{relay.url}/v1/notifications", json=body, headers=bearer
                        ) as response:
                            return response.status

                    assert await push() == 202
                    valkey.stop(signal.SIGKILL)
                    statuses = [await push() for _ in range(requests)]
                    valkey.start()

                    async def accepted() -> bool:
                        return await push() == 202

                    await eventually(
                        accepted, timeout_s=WAIT_S, interval_s=0.05, what="Redis seen again"
                    )
                assert relay.kill(signal.SIGTERM) == 0
                log = relay.log()
    assert set(statuses) == {503}
    events = [json.loads(line) for line in log.splitlines()]
    outage = [event for event in events if event["event"] == "redis_unavailable"]
    phases = [event["phase"] for event in outage]
    assert phases[0] == "started", outage
    assert phases[-1] == "ended", outage
    assert set(phases[1:-1]) <= {"continuing"}
    assert len(outage) <= 2 + 3, f"{len(outage)} lines for one outage"
    assert outage[-1]["occurrences"] >= requests
    assert "Traceback" not in log
    print(f"{outage[-1]['occurrences']} requests met the outage; {len(outage)} lines logged")
