"""`apns-relay check`: the verdict table (pure), then every verdict produced for real, against the
strict APNs simulator over TLS + HTTP/2, by configurations an operator could get wrong."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from simulator import REPO_ROOT, SimInfo, control_client, running_simulator

from relay.config.schema import Settings
from relay.core.model import ApnsResponse
from relay.credentials.check import (
    AppUnderCheck,
    CertificateFacts,
    TokenKeyFacts,
    answer_verdict,
    credential_verdict,
    exit_status,
)
from relay.delivery.probe import check_apps
from relay_devkit.embedded import EmbeddedServer, free_port

TOPIC = "com.example.checked"
NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
KEY = TokenKeyFacts("AuthKey.p8", "EC", "secp256r1")


def run_check(config: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """`apns-relay check` on `config`, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", "check", "--config", str(config), *options],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )


def under_check(credential: TokenKeyFacts | CertificateFacts = KEY) -> AppUnderCheck:
    return AppUnderCheck("gms-ios", TOPIC, "production", "api.push.apple.com:443", credential)


def certificate(days_left: float) -> CertificateFacts:
    return CertificateFacts(NOW + datetime.timedelta(days=days_left))


# --- the verdict table -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason", "verdict", "ok"),
    [
        (400, "BadDeviceToken", "ready", True),
        (200, None, "ready", True),
        (403, "InvalidProviderToken", "invalid-provider-token", False),
        (403, "BadEnvironmentKeyIdInToken", "key-wrong-environment", False),
        (403, "ExpiredProviderToken", "clock-skew", False),
        (400, "TopicDisallowed", "topic-disallowed", False),
        (403, "BadCertificate", "certificate-refused", False),
        (403, "BadCertificateEnvironment", "certificate-wrong-environment", False),
        (403, "Forbidden", "credential-refused", False),
        (403, None, "credential-refused", False),
        (0, "CertificateRefused:SSLV3_ALERT_CERTIFICATE_EXPIRED", "certificate-refused", False),
        (0, "ConnectError", "unreachable", False),
        (0, "Timeout", "unreachable", False),
        (429, "TooManyRequests", "apns-unavailable", False),
        (503, "ServiceUnavailable", "apns-unavailable", False),
        (400, "DeviceTokenNotForTopic", "unexpected-answer", False),
        (400, "MissingTopic", "unexpected-answer", False),
    ],
)
def test_each_answer_has_a_verdict_and_a_fix(
    status: int, reason: str | None, verdict: str, ok: bool
) -> None:
    judged = answer_verdict(under_check(), ApnsResponse(status, reason), NOW)
    assert (judged.verdict, judged.ok) == (verdict, ok)
    assert bool(judged.fix) is not ok, "a failure says how to fix it; a pass asks for nothing"
    assert judged.line().startswith("ok   gms-ios: " if ok else "FAIL gms-ios: ")


@pytest.mark.parametrize(
    ("credential", "verdict"),
    [
        (KEY, None),
        (TokenKeyFacts("AuthKey.p8", None, problem="Could not deserialize"), "key-unreadable"),
        (TokenKeyFacts("AuthKey.p8", "RSA"), "key-not-es256"),
        (TokenKeyFacts("AuthKey.p8", "EC", "secp384r1"), "key-not-es256"),
        (certificate(200), None),
        (certificate(0.5), None),  # not expired yet: APNs decides
        (certificate(0), "certificate-expired"),
        (certificate(-3), "certificate-expired"),
        (CertificateFacts(None, "push.p12: cannot open"), "certificate-unreadable"),
    ],
)
def test_credential_files_that_cannot_work_are_refused_before_sending(
    credential: TokenKeyFacts | CertificateFacts, verdict: str | None
) -> None:
    judged = credential_verdict(under_check(credential), NOW)
    assert (judged and judged.verdict) == verdict
    assert judged is None or (not judged.ok and judged.fix)


@pytest.mark.parametrize(("days_left", "verdict"), [(31, "ready"), (30, "certificate-expiring")])
def test_a_certificate_within_30_days_of_expiry_passes_with_a_warning(
    days_left: int, verdict: str
) -> None:
    judged = answer_verdict(
        under_check(certificate(days_left)), ApnsResponse(400, "BadDeviceToken"), NOW
    )
    assert judged.ok
    assert judged.verdict == verdict
    assert judged.expires_at == (NOW + datetime.timedelta(days=days_left)).isoformat()


def test_one_failed_app_fails_the_whole_check() -> None:
    ready = answer_verdict(under_check(), ApnsResponse(400, "BadDeviceToken"), NOW)
    refused = answer_verdict(under_check(), ApnsResponse(403, "InvalidProviderToken"), NOW)
    assert exit_status([ready, ready]) == 0
    assert exit_status([ready, refused]) == 1


# --- against the simulator ---------------------------------------------------------------------


def token_app(
    info: SimInfo, name: str, environment: str = "sandbox", **auth: str
) -> dict[str, Any]:
    """An app sending with the simulator's own key unless `auth` replaces part of it."""
    token = {
        "key_file": str(info.key_file),
        "key_id": info.key_id,
        "team_id": info.team_id,
        **auth,
    }
    return {
        "name": name,
        "topic": TOPIC,
        "environment": environment,
        "auth": {"token": token},
        "endpoint": {
            "host": "127.0.0.1",
            "port": info.port_of(environment),
            "ca_file": str(info.ca),
        },
    }


def certificate_app(
    info: SimInfo, name: str, cert_file: Path, environment: str, listener: str
) -> dict[str, Any]:
    return {
        "name": name,
        "topic": TOPIC,
        "environment": environment,
        "auth": {"certificate": {"cert_file": str(cert_file)}},
        "endpoint": {"host": "127.0.0.1", "port": info.port_of(listener), "ca_file": str(info.ca)},
    }


def write_key(path: Path, curve: ec.EllipticCurve) -> Path:
    path.write_bytes(
        ec.generate_private_key(curve).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def write_rsa_key(path: Path) -> Path:
    path.write_bytes(
        rsa.generate_private_key(65537, 2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


async def verdicts_of(apps: list[dict[str, Any]]) -> dict[str, tuple[str, int | None, str | None]]:
    settings = Settings.model_validate({"apps": apps})
    return {
        v.app: (v.verdict, v.status, v.reason)
        for v in await check_apps(settings, settings.apps, timeout_s=20.0)
    }


async def test_token_key_verdicts_against_the_simulator(state_dir: Path) -> None:
    """The simulator's own key passes (a random token is BadDeviceToken); a key Apple does not
    know, a key for the other environment and a topic the team does not own are each named."""
    async with running_simulator(
        state_dir / "sim", key_environments=frozenset({"sandbox"}), topics=frozenset({TOPIC})
    ) as info:
        stranger = write_key(state_dir / "AuthKey_STRANGER1.p8", ec.SECP256R1())
        not_a_key = state_dir / "AuthKey_COPIED.p8"
        not_a_key.write_text("-----BEGIN PRIVATE KEY-----\ncut off in the copy\n")
        verdicts = await verdicts_of(
            [
                token_app(info, "ready"),
                token_app(info, "foreign-key", key_file=str(stranger)),
                token_app(info, "other-team", team_id="ZZZZZZZZZZ"),
                token_app(info, "production-only", environment="production"),
                {**token_app(info, "other-topic"), "topic": "com.example.unowned"},
                token_app(
                    info, "p384", key_file=str(write_key(state_dir / "p384.p8", ec.SECP384R1()))
                ),
                token_app(info, "rsa", key_file=str(write_rsa_key(state_dir / "rsa.p8"))),
                token_app(info, "not-a-key", key_file=str(not_a_key)),
                {
                    **token_app(info, "nobody-listens"),
                    "endpoint": {"host": "127.0.0.1", "port": free_port(), "ca_file": str(info.ca)},
                },
            ]
        )
    assert verdicts == {
        "ready": ("ready", 400, "BadDeviceToken"),
        "foreign-key": ("invalid-provider-token", 403, "InvalidProviderToken"),
        "other-team": ("invalid-provider-token", 403, "InvalidProviderToken"),
        "production-only": ("key-wrong-environment", 403, "BadEnvironmentKeyIdInToken"),
        "other-topic": ("topic-disallowed", 400, "TopicDisallowed"),
        "p384": ("key-not-es256", None, None),
        "rsa": ("key-not-es256", None, None),
        "not-a-key": ("key-unreadable", None, None),
        "nobody-listens": ("unreachable", 0, "ConnectError"),
    }


async def test_certificate_verdicts_against_the_simulator(state_dir: Path) -> None:
    """A valid certificate passes; a revoked one, one for the other environment and an expired one
    are each named (the expired one without sending: APNs would refuse it in the handshake)."""
    async with running_simulator(state_dir / "sim") as info, control_client(info) as control:

        async def issued(name: str, **options: Any) -> tuple[Path, dict[str, Any]]:
            document = await control.issue_certificate(TOPIC, **options)
            path = state_dir / f"{name}.pem"
            path.write_text(document["pem"])
            return path, document

        good, _ = await issued("good", environment="sandbox")
        revoked, revoked_document = await issued("revoked", environment="sandbox")
        await control.revoke_certificate(revoked_document["serial"])
        production, _ = await issued("production", environment="production")
        expired, _ = await issued("expired", environment="sandbox", expired=True)
        verdicts = await verdicts_of(
            [
                certificate_app(info, "good", good, "sandbox", "sandbox"),
                certificate_app(info, "revoked", revoked, "sandbox", "sandbox"),
                # configured for production, as the certificate says, but aimed at sandbox
                certificate_app(info, "wrong-listener", production, "production", "sandbox"),
                certificate_app(info, "expired", expired, "sandbox", "sandbox"),
            ]
        )
    assert verdicts == {
        "good": ("ready", 400, "BadDeviceToken"),
        "revoked": ("certificate-refused", 403, "BadCertificate"),
        "wrong-listener": ("certificate-wrong-environment", 403, "BadCertificateEnvironment"),
        "expired": ("certificate-expired", None, None),
    }


async def test_the_command_prints_one_line_per_app_and_json_and_exits_non_zero(
    state_dir: Path,
) -> None:
    async with running_simulator(state_dir / "sim") as info:
        config = state_dir / "relay.yaml"
        apps = [token_app(info, "ready"), token_app(info, "other-team", team_id="ZZZZZZZZZZ")]
        config.write_text(yaml.safe_dump({"apps": apps}))

        text, as_json, one = await asyncio.gather(
            asyncio.to_thread(run_check, config),
            asyncio.to_thread(run_check, config, "--json"),
            asyncio.to_thread(run_check, config, "--app", "ready"),
        )
    assert text.returncode == 1, text.stderr
    lines = text.stdout.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("ok   ready: ready — APNs accepted the credential")
    assert lines[1].startswith("FAIL other-team: invalid-provider-token — ")
    assert "Fix: key_id must be the .p8 key's id" in lines[1]
    # No redis.url, no spool_dir here: said, without failing the check.
    assert lines[2].startswith("warn redis: redis.url is unset")
    assert lines[3].startswith("warn spool: ingest.spool_dir is unset")
    assert as_json.returncode == 1
    document = json.loads(as_json.stdout)
    assert document["ok"] is False
    assert [(a["app"], a["ok"], a["status"], a["reason"]) for a in document["apps"]] == [
        ("ready", True, 400, "BadDeviceToken"),
        ("other-team", False, 403, "InvalidProviderToken"),
    ]
    assert (one.returncode, len(one.stdout.splitlines())) == (0, 3), one.stderr


async def test_the_command_reports_each_redis_policy_and_limit_and_an_unset_spool(
    state_dir: Path,
) -> None:
    """An allkeys-* policy fails the check (apps ready or not); no maxmemory and no spool_dir
    are said plainly without failing it; the JSON document carries the same findings."""
    with (
        EmbeddedServer(
            state_dir / "evicting", extra_args=("--maxmemory-policy", "allkeys-lru")
        ) as evicting,
        EmbeddedServer(state_dir / "unbounded", extra_args=("--maxmemory", "0")) as unbounded,
    ):
        async with running_simulator(state_dir / "sim") as info:
            apps = [token_app(info, "ready")]
            on_evicting = state_dir / "evicting.yaml"
            on_evicting.write_text(
                yaml.safe_dump(
                    {
                        "apps": apps,
                        "redis": {"url": evicting.url},
                        "ingest": {"spool_dir": str(state_dir / "spool")},
                    }
                )
            )
            on_unbounded = state_dir / "unbounded.yaml"
            on_unbounded.write_text(yaml.safe_dump({"apps": apps, "redis": {"url": unbounded.url}}))

            refused, refused_json, accepted = await asyncio.gather(
                asyncio.to_thread(run_check, on_evicting),
                asyncio.to_thread(run_check, on_evicting, "--json"),
                asyncio.to_thread(run_check, on_unbounded),
            )
    assert refused.returncode == 1, refused.stderr
    ready, redis_line, spool_line = refused.stdout.splitlines()
    assert ready.startswith("ok   ready: ready")
    assert redis_line.startswith(
        f"FAIL redis 127.0.0.1:{evicting.port}: maxmemory-policy allkeys-lru"
    )
    assert "Fix: CONFIG SET maxmemory-policy noeviction" in redis_line
    assert spool_line.startswith("ok   spool: ingest.spool_dir ")
    document = json.loads(refused_json.stdout)
    assert document["ok"] is False
    assert [(f["subject"], f["level"]) for f in document["findings"]] == [
        (f"redis 127.0.0.1:{evicting.port}", "FAIL"),
        ("spool", "ok"),
    ]
    assert accepted.returncode == 0, accepted.stdout
    _, redis_line, spool_line = accepted.stdout.splitlines()
    assert redis_line.startswith(
        f"warn redis 127.0.0.1:{unbounded.port}: maxmemory-policy noeviction"
    )
    assert "maxmemory 0 (unbounded)" in redis_line
    assert "until the host's memory runs out" in redis_line
    assert spool_line.startswith("warn spool: ingest.spool_dir is unset")
    assert "refused with 503" in spool_line


def test_the_command_names_a_bad_configuration_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "relay.yaml"
    config.write_text(yaml.safe_dump({"apps": [{"name": "x", "topic": "com.example.x"}]}))
    result = subprocess.run(
        [sys.executable, "-m", "relay.cli", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert result.returncode == 2
    assert "apps[0].environment" in result.stderr
    assert "Traceback" not in result.stderr


async def test_the_api_route_is_an_operator_action_answered_once_per_app_in_flight_and_cached(
    state_dir: Path, redis_url: str
) -> None:
    """GET /v1/apps/{app}/check on a running api: only an operator token may call it (not a
    full-access API token, not GMS's Basic pair, not an app's scoped token shipped in the app);
    the operator gets the verdicts the command gives; a burst of calls makes one probe (one APNs
    connection) per app, later calls are answered from memory and say so, and probes are not in
    the delivery metrics."""
    from relay.runtime import run_relay  # the api's whole stack, as in production

    full, scoped, operator = "full-token-0123456789", "scoped-token-0123456789", "op-0123456789"
    basic = "gms:gms-password-0123"
    async with (
        running_simulator(state_dir / "sim") as info,
        control_client(info) as control,
    ):
        settings = Settings.model_validate(
            {
                "redis": {"url": redis_url},
                "auth": {
                    "api_tokens": [full],
                    "basic": [basic],
                    "operator_tokens": [operator],
                    "scoped": [{"token": scoped, "apps": ["ready"]}],
                },
                "apps": [
                    token_app(info, "ready"),
                    token_app(info, "other-team", team_id="ZZZZZZZZZZ"),
                ],
            }
        )
        async with (
            run_relay(settings, role="api") as relay,
            aiohttp.ClientSession() as session,
        ):

            async def check(app: str, authorization: str) -> tuple[int, dict[str, Any]]:
                url = f"{relay.url}/v1/apps/{app}/check"
                async with session.get(url, headers={"Authorization": authorization}) as answer:
                    return answer.status, await answer.json(content_type=None)

            basic_header = "Basic " + base64.b64encode(basic.encode()).decode()
            refused = await asyncio.gather(
                check("ready", f"Bearer {scoped}"),
                check("ready", f"Bearer {full}"),
                check("ready", basic_header),
                check("absent", f"Bearer {scoped}"),
            )
            assert (await control.stats())["connections_opened"] == 0  # nothing probed
            burst = await asyncio.gather(*(check("ready", f"Bearer {operator}") for _ in range(40)))
            later = await check("ready", f"Bearer {operator}")
            refused_app, unknown, anonymous = await asyncio.gather(
                check("other-team", f"Bearer {operator}"),
                check("absent", f"Bearer {operator}"),
                check("ready", "Bearer not-a-token-0123456789"),
            )
            stats = await control.stats()
            async with session.get(f"{relay.url}/metrics") as response:
                metrics_text = await response.text()
    for status, body in refused:
        assert (status, body["type"].rsplit(":", 1)[-1]) == (403, "operator-only"), body
        assert "key_file" not in json.dumps(body)
        assert str(info.key_file) not in json.dumps(body)
    assert {status for status, _ in burst} == {200}
    assert {(b["ok"], b["verdict"], b["reason"]) for _, b in burst} == {
        (True, "ready", "BadDeviceToken")
    }
    # The burst shared one probe: one connection for "ready", one for "other-team".
    assert stats["connections_opened"] == 2, stats
    assert not any(body["cached"] for _, body in burst[:1])
    assert later[0] == 200
    assert later[1]["cached"] is True
    assert 0 <= later[1]["age_s"] < 30
    assert later[1]["verdict"] == "ready"
    assert refused_app[0] == 200
    assert (refused_app[1]["ok"], refused_app[1]["verdict"]) == (False, "invalid-provider-token")
    assert refused_app[1]["cached"] is False
    assert "key_id" in refused_app[1]["fix"]
    assert (unknown[0], unknown[1]["type"].rsplit(":", 1)[-1]) == (404, "unknown-app")
    assert anonymous[0] == 401
    # Probes are no deliveries: no APNs answer, connection or JWT counted for either app (the
    # registry is the test process's: other tests' apps have other names).
    counted = [
        line
        for line in metrics_text.splitlines()
        if line.startswith(
            (
                "apns_relay_apns_responses_total{",
                "apns_relay_apns_connections{",
                "apns_relay_jwt_refreshes_total{",
            )
        )
        and ('app="ready"' in line or 'app="other-team"' in line)
    ]
    assert counted == [], counted
