"""Certificate authentication end to end over real TLS: the simulator as Apple's CA and gatekeeper,
the relay sending with PEM and .p12 push certificates, and what each refusal does to the relay."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import shutil
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from eventually import eventually, eventually_blocking
from prometheus_client import REGISTRY
from relay_harness import RelayHarness, relay_document, write_config
from simulator import (
    ControlClient,
    RawH2Client,
    SimInfo,
    control_client,
    running_simulator,
    simulator_process,
)

from relay.config.loading import load_settings
from relay.config.schema import Settings
from relay.core.model import Notification
from relay.credentials.model import CertificateCredentials
from relay.credentials.rotator import CredentialRotator
from relay.delivery.clients import make_client
from relay.runtime import run_relay
from relay_devkit.apns_sim.push_certificates import CA_FILE, PushCertificateAuthority
from relay_devkit.embedded import free_port

TOPIC = "com.example.certified"
WAIT_S = 20.0


def token(n: int) -> str:
    """A well-formed device token. These tests are about certificates, not tokens: their
    simulators accept any well-formed token (open_tokens); the token registry is tested in
    test_apns_sim_strict and the rest of the suite runs against it."""
    return f"{n:064x}"


async def issue(
    control: ControlClient, out: Path, topic: str = TOPIC, **options: Any
) -> dict[str, Any]:
    """A certificate from the simulator's CA, written to `out` (.p12 needs password=...)."""
    issued = await control.issue_certificate(topic, **options)
    content = base64.b64decode(issued["p12"]) if out.suffix == ".p12" else issued["pem"].encode()
    await asyncio.to_thread(out.write_bytes, content)
    return issued


def certificate_app(
    info: SimInfo,
    name: str,
    certificate: dict[str, Any],
    listener: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """An app sending with `certificate` to the simulator's listener of its environment (or of
    `listener`: another environment's)."""
    environment = fields.pop("environment", "sandbox")
    port = info.port_of(listener or environment)
    return {
        "name": name,
        "topic": TOPIC,
        "environment": environment,
        "auth": {"certificate": {k: str(v) for k, v in certificate.items()}},
        "endpoint": {"host": "127.0.0.1", "port": port, "ca_file": str(info.ca)},
        **fields,
    }


@contextlib.asynccontextmanager
async def relay_with_apps(
    redis_url: str, info: SimInfo, apps: list[dict[str, Any]]
) -> AsyncIterator[RelayHarness]:
    document = relay_document(redis_url, info)
    document["apps"] = apps
    settings = Settings.model_validate(document)
    async with (
        run_relay(settings, grace_s=2.0) as relay,
        aiohttp.ClientSession() as session,
        control_client(info) as control,
    ):
        assert relay.worker is not None
        yield RelayHarness(
            relay.url, settings, relay.queue, relay.worker, relay.state, session, info, control
        )


def responses(app: str, status: int, reason: str) -> float:
    value = REGISTRY.get_sample_value(
        "apns_relay_apns_responses_total", {"app": app, "status": str(status), "reason": reason}
    )
    return value or 0.0


async def test_delivery_with_pem_and_p12_and_a_universal_certificate_for_voip(
    redis_url: str, state_dir: Path
) -> None:
    async with (
        running_simulator(state_dir / "sim", open_tokens=True) as info,
        control_client(info) as control,
    ):
        single = await issue(control, state_dir / "single.pem")
        cert, key = single["pem"].split("-----BEGIN PRIVATE KEY")
        (state_dir / "cert.pem").write_text(cert)
        (state_dir / "key.pem").write_text("-----BEGIN PRIVATE KEY" + key)
        universal = await issue(
            control, state_dir / "universal.p12", voip=True, environment="both", password="gms"
        )
        p12 = {"p12_file": state_dir / "universal.p12", "password": "gms"}
        apps = [
            certificate_app(info, "pem", {"cert_file": state_dir / "cert.pem",
                                          "key_file": state_dir / "key.pem"}),
            certificate_app(info, "combined", {"cert_file": state_dir / "single.pem"}),
            certificate_app(info, "alerts", p12),
            certificate_app(info, "calls", p12, topic=f"{TOPIC}.voip", push_type="voip"),
        ]  # fmt: skip
        async with relay_with_apps(redis_url, info, apps) as relay:
            for n, app in enumerate(("pem", "combined", "alerts", "calls")):
                await relay.notify(app=app, device_token=token(n), service_id=app, action="x")
            received = {r["payload"]["message"]["_id"]: r for r in await relay.received(count=4)}
        assert set(received) == {"pem", "combined", "alerts", "calls"}
        assert received["calls"]["topic"] == f"{TOPIC}.voip"
        assert received["calls"]["headers"]["apns-push-type"] == "voip"
        assert received["alerts"]["topic"] == TOPIC
        for record in received.values():
            assert "authorization" not in record["headers"]  # no JWT: the certificate is the auth
        # The series the credential-expiry alerts and dashboard panel query, live.
        expiry = {
            app: REGISTRY.get_sample_value(
                "apns_relay_credential_expiry_timestamp_seconds", {"app": app}
            )
            for app in ("pem", "alerts")
        }
        assert expiry["pem"] == pytest.approx(_timestamp(single["not_after"]))
        assert expiry["alerts"] == pytest.approx(_timestamp(universal["not_after"]))


def _timestamp(iso: str) -> float:
    return datetime.datetime.fromisoformat(iso).timestamp()


def foreign_certificate(directory: Path) -> Path:
    """A well-formed push certificate from a CA the simulator does not know."""
    path = directory / "foreign.pem"
    path.write_bytes(PushCertificateAuthority.create().issue(TOPIC).pem())
    return path


@pytest.mark.parametrize(
    ("fault", "listener", "reason"),
    [
        ("expired", "sandbox", "BadCertificate"),
        ("revoked", "sandbox", "BadCertificate"),
        ("environment", "production", "BadCertificateEnvironment"),
    ],
)
@pytest.mark.slow
async def test_a_refused_certificate_pauses_the_app_keeps_the_queue_and_a_valid_one_resumes_it(
    redis_url: str, state_dir: Path, fault: str, listener: str, reason: str
) -> None:
    app = f"refused-{fault}"
    async with (
        running_simulator(state_dir / "sim", open_tokens=True) as info,
        control_client(info) as control,
    ):
        bad = state_dir / "bad.pem"
        if fault == "expired":
            await issue(control, bad, expired=True)
        elif fault == "revoked":
            issued = await issue(control, bad)
            await control.revoke_certificate(issued["serial"])
        else:  # a sandbox certificate, a sandbox app, but the endpoint is production
            await issue(control, bad, environment="sandbox")
        devices = [token(1), token(2)]
        async with relay_with_apps(
            redis_url, info, [certificate_app(info, app, {"cert_file": bad}, listener=listener)]
        ) as relay:
            ids = [
                await relay.notify(device_token=device, service_id=f"S{n}", action="x")
                for n, device in enumerate(devices)
            ]
            await eventually(lambda: relay.worker.paused_apps, what="the app paused")
            assert relay.worker.paused_apps == {app: reason}
            assert REGISTRY.get_sample_value("apns_relay_app_paused", {"app": app}) == 1
            # It probes (pause_probe_seconds is 1 here): a second refusal, nothing given up.
            await eventually(lambda: responses(app, _status(reason), reason) >= 2, what="a probe")
            for notification_id in ids:
                state = (await relay.call("GET", f"/v1/notifications/{notification_id}"))[1]
                assert state["state"] == "queued", state
        assert (await control.notifications())["notifications"] == []
        # Configured with a valid certificate, the app sends what was kept, in order.
        good = state_dir / "good.pem"
        await issue(control, good, environment=listener)
        valid_app = certificate_app(info, app, {"cert_file": good}, environment=listener)
        async with relay_with_apps(redis_url, info, [valid_app]) as relay:
            for notification_id in ids:
                assert (await relay.wait_state(notification_id, {"delivered"}))["state"] == (
                    "delivered"
                )
            assert relay.worker.paused_apps == {}
            sent = [r["token"] for r in await relay.received(count=2)]
        # Two devices, one push each: no order between devices is promised (they go out on two
        # connections at once).
        assert sorted(sent) == devices


def _status(reason: str) -> int:
    return 0 if reason.startswith("CertificateRefused:") else 403


# --- the simulator's rules, seen by a raw HTTP/2 client ---------------------------------------


async def certified_client(info: SimInfo, pem_file: Path) -> RawH2Client:
    context = info.ssl_context(["h2"])
    context.load_cert_chain(pem_file)
    reader, writer = await asyncio.open_connection(
        info.host, info.port_of("sandbox"), ssl=context, server_hostname="localhost"
    )
    return RawH2Client(reader, writer)


def certified_headers(device: str, **extra: str) -> list[tuple[str, str]]:
    headers = {
        ":method": "POST",
        ":scheme": "https",
        ":path": f"/3/device/{device}",
        ":authority": "localhost",
        "apns-push-type": "alert",
        **{k.replace("_", "-"): v for k, v in extra.items()},
    }
    return list(headers.items())


PAYLOAD = json.dumps({"aps": {"alert": "hi"}}).encode()


async def reason_of(client: RawH2Client, **headers: str) -> tuple[int, str | None]:
    response = await client.request(certified_headers(token(9), **headers), PAYLOAD)
    return response.status, (response.json()["reason"] if response.body else None)


async def test_the_simulator_applies_apples_certificate_rules(
    state_dir: Path,
) -> None:
    async with (
        running_simulator(state_dir / "sim", open_tokens=True) as info,
        control_client(info) as control,
    ):
        await issue(control, state_dir / "single.pem")
        await issue(control, state_dir / "universal.pem", voip=True, environment="both")
        single = await certified_client(info, state_dir / "single.pem")
        universal = await certified_client(info, state_dir / "universal.pem")
        token_client = await RawH2Client.connect(info, ["h2"])  # no certificate: token auth
        try:
            assert await reason_of(single, apns_topic=TOPIC) == (200, None)
            assert await reason_of(single) == (200, None)  # the certificate's one topic
            assert await reason_of(single, apns_topic=f"{TOPIC}.voip") == (400, "TopicDisallowed")
            # A JWT on a certificate connection is ignored, even a forged one.
            assert await reason_of(single, authorization="bearer not.a.jwt") == (200, None)
            assert await reason_of(universal) == (400, "MissingTopic")
            assert await reason_of(
                universal, apns_topic=f"{TOPIC}.voip", apns_push_type="voip"
            ) == (200, None)
            assert await reason_of(universal, apns_topic="com.other.app") == (
                400,
                "TopicDisallowed",
            )
            # The same listener still takes provider tokens from clients without a certificate.
            response = await token_client.request(
                token_client.headers_for(info, token(10), apns_topic=TOPIC), PAYLOAD
            )
            assert response.status == 200
            assert (await reason_of(token_client, apns_topic=TOPIC)) == (
                403,
                "MissingProviderToken",
            )
            # Revoked: every later request on the open connection is refused.
            issued = await issue(control, state_dir / "revoked.pem")
            revoked = await certified_client(info, state_dir / "revoked.pem")
            try:
                assert await reason_of(revoked) == (200, None)
                await control.revoke_certificate(issued["serial"])
                assert await reason_of(revoked) == (403, "BadCertificate")
            finally:
                await revoked.close()
        finally:
            for client in (single, universal, token_client):
                await client.close()
        logged = (await control.notifications())["notifications"]
        assert [r["topic"] for r in logged] == [
            TOPIC,
            TOPIC,
            TOPIC,
            f"{TOPIC}.voip",
            TOPIC,
            TOPIC,
        ]
        assert all("authorization" not in r["headers"] for r in logged[:4])


async def test_a_foreign_certificate_fails_the_tls_handshake_an_expired_one_its_requests(
    state_dir: Path,
) -> None:
    async with (
        running_simulator(state_dir / "sim", open_tokens=True) as info,
        control_client(info) as control,
    ):
        try:
            # TLS 1.3: our side of the handshake completes; the server then closes.
            foreign = await certified_client(info, foreign_certificate(state_dir))
        except (ssl.SSLError, ConnectionError):
            pass  # TLS 1.2: the handshake itself fails
        else:
            await asyncio.wait_for(foreign.closed, WAIT_S)
            assert not foreign.settings_received.is_set()
            await foreign.close()
        await issue(control, state_dir / "expired.pem", expired=True)
        expired = await certified_client(info, state_dir / "expired.pem")
        try:
            assert await reason_of(expired, apns_topic=TOPIC) == (403, "BadCertificate")
        finally:
            await expired.close()
        stats = await control.stats()
        assert stats["streams"] == 1
        assert stats["responses"] == {"403": {"BadCertificate": 1}}


@contextlib.contextmanager
def openssl_server(sim_dir: Path) -> Iterator[int]:
    """`openssl s_server` with the simulator's server certificate, requiring a client
    certificate from its push CA: a TLS stack that sends Apple's handshake alerts."""
    port = free_port()
    server = subprocess.Popen(
        ["openssl", "s_server", "-quiet", "-verify_return_error",
         "-accept", f"127.0.0.1:{port}",
         "-cert", str(sim_dir / "server.pem"), "-key", str(sim_dir / "server-key.pem"),
         "-CAfile", str(sim_dir / CA_FILE), "-Verify", "1", "-alpn", "h2"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def listening() -> bool:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return True
            assert server.poll() is None, "openssl s_server exited"
            return False

        eventually_blocking(
            listening, timeout_s=WAIT_S, interval_s=0.05, what="openssl s_server listening"
        )
        yield port
    finally:
        server.kill()
        server.wait()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("expired", "CertificateRefused:SSLV3_ALERT_CERTIFICATE_EXPIRED"),
        ("foreign", "CertificateRefused:TLSV1_ALERT_UNKNOWN_CA"),
    ],
)
async def test_a_tls_alert_refusing_the_certificate_pauses_the_app(
    redis_url: str, state_dir: Path, fault: str, reason: str
) -> None:
    app = f"alerted-{fault}"
    async with (
        running_simulator(state_dir / "sim", open_tokens=True) as info,
        control_client(info) as control,
    ):
        bad = state_dir / "bad.pem"
        if fault == "expired":
            await issue(control, bad, expired=True)
        else:
            bad = foreign_certificate(state_dir)
        with openssl_server(state_dir / "sim") as port:
            refused_app = certificate_app(info, app, {"cert_file": bad})
            refused_app["endpoint"]["port"] = port
            async with relay_with_apps(redis_url, info, [refused_app]) as relay:
                notification_id = await relay.notify(device_token=token(3), service_id="S")
                await eventually(lambda: relay.worker.paused_apps, what="the app paused")
                assert relay.worker.paused_apps == {app: reason}
                state = (await relay.call("GET", f"/v1/notifications/{notification_id}"))[1]
                assert state["state"] == "queued", state


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_issue_cert_command_and_curl_with_the_certificate(state_dir: Path) -> None:
    sim_dir = state_dir / "sim"
    async with (
        running_simulator(sim_dir, open_tokens=True) as info,
        control_client(info) as control,
    ):
        out = state_dir / "app.p12"
        command = [sys.executable, "-m", "relay.cli", "apns-sim", "issue-cert"]
        done = await asyncio.to_thread(
            subprocess.run,
            [*command, "--topic", TOPIC, "--voip", "--out", str(out), "--password", "pw",
             "--state-dir", str(sim_dir)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert f"topics {TOPIC}, {TOPIC}.voip, {TOPIC}.complication, sandbox" in done.stdout
        assert out.stat().st_mode & 0o077 == 0
        refused = await asyncio.to_thread(
            subprocess.run,
            [*command, "--topic", TOPIC, "--out", str(state_dir / "x.p12"), "--state-dir",
             str(sim_dir)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert refused.returncode == 2
        assert "--password" in refused.stderr
        pem = state_dir / "app.pem"
        converted = await asyncio.to_thread(
            subprocess.run,
            ["openssl", "pkcs12", "-in", str(out), "-passin", "pass:pw", "-nodes",
             "-out", str(pem)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert converted.returncode == 0, converted.stderr
        curl = await asyncio.to_thread(
            subprocess.run,
            ["curl", "-sS", "--http2", "--cacert", str(info.ca), "--cert", str(pem),
             "-H", f"apns-topic: {TOPIC}", "-d", PAYLOAD.decode(), "-o", "/dev/null",
             "-w", "%{http_code}", f"https://localhost:{info.port_of('sandbox')}/3/device/{token(5)}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert curl.stdout == "200", curl.stderr
        assert (await control.notifications())["notifications"][0]["token"] == token(5)


@pytest.mark.slow
async def test_with_worker_processes_every_worker_checks_certificates_and_revocations(
    state_dir: Path,
) -> None:
    with simulator_process(state_dir / "sim", "--workers", "2", "--tokens", "open") as sim:
        info = sim.info
        async with control_client(info) as control:
            issued = await issue(control, state_dir / "app.pem")
            clients: list[RawH2Client] = []
            try:
                # The kernel spreads connections over the workers: open them until both serve.
                while len((await control.stats())["workers"]) < 2:
                    assert len(clients) < 64, "one worker took every connection"
                    clients.append(await certified_client(info, state_dir / "app.pem"))
                    assert await reason_of(clients[-1]) == (200, None)
                await control.revoke_certificate(issued["serial"])
                for client in clients:
                    assert await reason_of(client) == (403, "BadCertificate")
            finally:
                for client in clients:
                    await client.close()


async def test_a_renewed_certificate_is_rotated_in_for_new_connections_and_its_expiry_exported(
    tmp_path: Path,
) -> None:
    async with (
        running_simulator(tmp_path / "sim", open_tokens=True) as info,
        control_client(info) as control,
    ):
        pem = tmp_path / "push.pem"
        first = await issue(control, pem)
        config = write_config(
            tmp_path / "relay.yaml",
            {"apps": [certificate_app(info, "renewed", {"cert_file": pem})]},
        )
        settings = load_settings(config, env={})
        client = make_client(settings.apps[0], settings)
        rotator = CredentialRotator(config, settings, {"renewed": client}, env={})
        probe = Notification("renewed", token(1), PAYLOAD, "alert", 10, int(time.time()) + 60)
        try:
            assert (await client.send(probe, str(uuid.uuid4()))).status == 200
            assert not rotator.changed()
            assert rotator.reload("SIGHUP")["renewed"].outcome == "unchanged"
            await issue(control, pem)  # renewed in place
            await control.revoke_certificate(first["serial"])
            assert rotator.changed()
            assert rotator.reload("SIGHUP")["renewed"].outcome == "rotated"
            # The revoked one would be refused (403 BadCertificate): the new connection has the
            # renewed one.
            assert (await client.send(probe, str(uuid.uuid4()))).status == 200
        finally:
            await client.close()
    assert isinstance(client.credentials, CertificateCredentials)
    renewed = client.credentials.certificate.info
    assert renewed.serial != int(first["serial"])
    expiry = REGISTRY.get_sample_value(
        "apns_relay_credential_expiry_timestamp_seconds", {"app": "renewed"}
    )
    assert expiry == renewed.not_after.timestamp()
