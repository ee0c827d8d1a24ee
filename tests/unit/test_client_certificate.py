"""Push certificates without a network: Apple's format, loading PEM and .p12, the config check,
the simulator's certificate rules and the relay's policy for a refused certificate."""

from __future__ import annotations

import datetime
import random
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from relay.config.schema import ConfigError
from relay.core.model import ApnsResponse, PauseApp, Retry
from relay.core.policy import RetryPolicy, classify
from relay.credentials.client_certificate import (
    CertificateError,
    decode_topics,
    load_pem,
    load_pkcs12,
    read_push_certificate,
)
from relay.credentials.files import load_settings, read_certificate
from relay.delivery.apns import connect_failure
from relay_devkit.apns_sim.answers import MISSING_TOPIC, TOPIC_DISALLOWED, Answer
from relay_devkit.apns_sim.apple import PushCertificateGrant
from relay_devkit.apns_sim.certificate_rules import (
    BAD_CERTIFICATE,
    BAD_CERTIFICATE_ENVIRONMENT,
    certificate_verdict,
)
from relay_devkit.apns_sim.certs import create_server_identity
from relay_devkit.apns_sim.push_certificates import PushCertificateAuthority, encode_topics

TOPIC = "com.example.cert"
NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def authority() -> PushCertificateAuthority:
    return PushCertificateAuthority.create()


def info(
    topics: tuple[str, ...] = (TOPIC,),
    environments: frozenset[str] = frozenset({"sandbox"}),
    serial: int = 7,
) -> PushCertificateGrant:
    return PushCertificateGrant(
        serial=serial,
        topics=topics,
        environments=environments,
        not_before=NOW - datetime.timedelta(days=1),
        not_after=NOW + datetime.timedelta(days=1),
    )


UNIVERSAL = (TOPIC, f"{TOPIC}.voip", f"{TOPIC}.complication")
BOTH = frozenset({"sandbox", "production"})
T = NOW.timestamp()
LATER = (NOW + datetime.timedelta(days=2)).timestamp()
EARLIER = (NOW - datetime.timedelta(days=2)).timestamp()


@pytest.mark.parametrize(
    ("certificate", "topic", "environment", "revoked", "now", "expected"),
    [
        # the topic a request goes to
        (info(), TOPIC, "sandbox", (), T, TOPIC),
        (info(), None, "sandbox", (), T, TOPIC),
        (info(), "", "sandbox", (), T, TOPIC),
        (info(UNIVERSAL, BOTH), f"{TOPIC}.voip", "production", (), T, f"{TOPIC}.voip"),
        (info(UNIVERSAL, BOTH), TOPIC, "sandbox", (), T, TOPIC),
        # topics
        (info(UNIVERSAL, BOTH), None, "sandbox", (), T, MISSING_TOPIC),
        (info(), f"{TOPIC}.voip", "sandbox", (), T, TOPIC_DISALLOWED),
        (info(UNIVERSAL), "com.other.app", "sandbox", (), T, TOPIC_DISALLOWED),
        # environments
        (info(), TOPIC, "production", (), T, BAD_CERTIFICATE_ENVIRONMENT),
        (info(environments=frozenset({"production"})), TOPIC, "sandbox", (), T,
         BAD_CERTIFICATE_ENVIRONMENT),
        (info(environments=frozenset()), TOPIC, "sandbox", (), T,
         BAD_CERTIFICATE_ENVIRONMENT),
        # the certificate itself, first: revoked, expired since the connection opened
        (info(serial=7), TOPIC, "sandbox", {7}, T, BAD_CERTIFICATE),
        (info(serial=7), TOPIC, "sandbox", {8}, T, TOPIC),
        (info(), TOPIC, "sandbox", (), LATER, BAD_CERTIFICATE),
        (info(), TOPIC, "sandbox", (), EARLIER, BAD_CERTIFICATE),
        (info(serial=7), "com.other.app", "production", {7}, T, BAD_CERTIFICATE),
        (info(), "com.other.app", "production", (), T, BAD_CERTIFICATE_ENVIRONMENT),
    ],
)  # fmt: skip
def test_certificate_rules(
    certificate: PushCertificateGrant,
    topic: str | None,
    environment: str,
    revoked: Any,
    now: float,
    expected: Answer | str,
) -> None:
    assert certificate_verdict(certificate, topic, environment, revoked, now) == expected


def test_topics_extension_round_trip_and_rejects_garbage() -> None:
    pairs = [(TOPIC, "app"), (f"{TOPIC}.voip", "voip"), ("a" * 200, "app")]  # long form length
    assert decode_topics(encode_topics(pairs)) == (TOPIC, f"{TOPIC}.voip", "a" * 200)
    for garbage in (b"", b"\x0c\x01a", b"\x30\x05\x0c\x09ab"):
        with pytest.raises(CertificateError):
            decode_topics(garbage)


def test_issued_certificates_read_as_apple_writes_them(authority: PushCertificateAuthority) -> None:
    single = read_push_certificate(authority.issue(TOPIC).certificate)
    assert (single.bundle_id, single.topics, single.environments) == (
        TOPIC,
        (TOPIC,),
        frozenset({"sandbox"}),
    )
    universal = authority.issue(TOPIC, voip=True, environment="both")
    read = read_push_certificate(universal.certificate)
    assert read.topics == UNIVERSAL
    assert read.environments == BOTH
    subject = universal.certificate.subject.rfc4514_string()
    assert f"CN=Apple Push Services: {TOPIC}" in subject
    assert f"UID={TOPIC}" in subject
    production = read_push_certificate(authority.issue(TOPIC, environment="production").certificate)
    assert production.environments == frozenset({"production"})
    expired = read_push_certificate(authority.issue(TOPIC, expired=True).certificate)
    assert expired.not_after < datetime.datetime.now(datetime.UTC)


def test_a_certificate_without_apples_extensions_allows_nothing(tmp_path: Path) -> None:
    # The simulator's server certificate: a fine TLS certificate, not a push certificate.
    identity = create_server_identity(tmp_path)
    read = read_push_certificate(x509.load_pem_x509_certificate(identity.cert_file.read_bytes()))
    assert read.topics == ()
    assert read.environments == frozenset()
    assert read.describe() == "topics (none) in no APNs environment"


def test_pem_and_pkcs12_load_into_a_tls_context(
    authority: PushCertificateAuthority, tmp_path: Path
) -> None:
    issued = authority.issue(TOPIC, voip=True)
    combined = tmp_path / "combined.pem"
    combined.write_bytes(issued.pem())
    p12 = tmp_path / "app.p12"
    p12.write_bytes(issued.pkcs12(b"s3cret"))
    for loaded in (load_pem(combined, None, None), load_pkcs12(p12, b"s3cret")):
        assert loaded.info.topics == UNIVERSAL
        context = ssl.create_default_context()
        loaded.load_into(context)
    assert not list(Path(tempfile.gettempdir()).glob("apns-client-*")), "a key file left behind"


def test_loading_says_what_is_wrong(authority: PushCertificateAuthority, tmp_path: Path) -> None:
    issued, other = authority.issue(TOPIC), authority.issue(TOPIC)
    cert_only = tmp_path / "cert.pem"
    cert_only.write_bytes(issued.pem().split(b"-----BEGIN PRIVATE KEY")[0])
    with pytest.raises(CertificateError, match="no PEM private key"):
        load_pem(cert_only, None, None)
    wrong_key = tmp_path / "other.pem"
    wrong_key.write_bytes(other.pem())
    with pytest.raises(CertificateError, match="does not belong to the certificate"):
        load_pem(cert_only, wrong_key, None)
    p12 = tmp_path / "app.p12"
    p12.write_bytes(issued.pkcs12(b"right"))
    with pytest.raises(CertificateError, match="cannot open"):
        load_pkcs12(p12, b"wrong")


# --- configuration ---------------------------------------------------------------------------


def write_app(tmp_path: Path, certificate: dict[str, Any], **app: Any) -> Path:
    document = {
        "apps": [
            {
                "name": "certified",
                "topic": TOPIC,
                "environment": "sandbox",
                "auth": {"certificate": certificate},
                **app,
            }
        ]
    }
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env=env or {})
    return caught.value.problems


def test_config_both_forms(authority: PushCertificateAuthority, tmp_path: Path) -> None:
    issued = authority.issue(TOPIC, voip=True, environment="both")
    cert, key = issued.pem().split(b"-----BEGIN PRIVATE KEY")
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(b"-----BEGIN PRIVATE KEY" + key)
    (tmp_path / "app.p12").write_bytes(issued.pkcs12(b"from-env"))
    pem_app = load_settings(
        write_app(tmp_path, {"cert_file": "cert.pem", "key_file": "key.pem"}), env={}
    ).app(None)
    assert pem_app.auth.certificate is not None
    assert read_certificate(pem_app.auth.certificate).info.topics == UNIVERSAL
    p12_path = write_app(
        tmp_path, {"p12_file": "app.p12", "password_env": "P12_PASSWORD"}, environment="production"
    )
    p12_app = load_settings(p12_path, env={"P12_PASSWORD": "from-env"}).app(None)
    assert p12_app.auth.certificate is not None
    assert (
        read_certificate(p12_app.auth.certificate).info.serial == issued.certificate.serial_number
    )
    voip_app = load_settings(
        write_app(tmp_path, {"p12_file": "app.p12", "password": "from-env"}, topic=f"{TOPIC}.voip"),
        env={},
    ).app(None)
    assert voip_app.topic == f"{TOPIC}.voip"


def test_config_refuses_a_certificate_that_cannot_send_the_app(
    authority: PushCertificateAuthority, tmp_path: Path
) -> None:
    (tmp_path / "app.pem").write_bytes(authority.issue(TOPIC).pem())
    wrong_topic = problems(write_app(tmp_path, {"cert_file": "app.pem"}, topic="com.other.app"))
    assert wrong_topic == [
        "apps[0]: auth.certificate: the certificate allows topics com.example.cert in sandbox; "
        "this app sends topic com.other.app in sandbox [file "
        f"{tmp_path / 'relay.yaml'}]"
    ]
    wrong_environment = problems(
        write_app(tmp_path, {"cert_file": "app.pem"}, environment="production")
    )
    assert "allows topics com.example.cert in sandbox; this app sends topic" in wrong_environment[0]
    assert "in production" in wrong_environment[0]


@pytest.mark.parametrize(
    ("certificate", "env", "expected"),
    [
        ({}, {}, "give cert_file (PEM) or p12_file (PKCS#12), exactly one"),
        ({"cert_file": "app.pem", "p12_file": "app.p12"}, {}, "give cert_file (PEM) or p12_file"),
        ({"p12_file": "app.p12", "key_file": "app.pem"}, {}, "key_file goes with cert_file"),
        ({"p12_file": "app.p12", "password": "x", "password_env": "P"}, {"P": "x"}, "not both"),
        ({"p12_file": "app.p12", "password_env": "UNSET"}, {}, "the variable UNSET is not set"),
        ({"p12_file": "app.p12", "password": "wrong"}, {}, "auth.certificate: "),
        ({"p12_file": "missing.p12"}, {}, "no such file"),
    ],
)
def test_config_certificate_problems(
    authority: PushCertificateAuthority,
    tmp_path: Path,
    certificate: dict[str, Any],
    env: dict[str, str],
    expected: str,
) -> None:
    issued = authority.issue(TOPIC)
    (tmp_path / "app.pem").write_bytes(issued.pem())
    (tmp_path / "app.p12").write_bytes(issued.pkcs12(b"right"))
    found = problems(write_app(tmp_path, certificate), env)
    assert any(expected in problem for problem in found), found
    assert not any("wrong" in problem or "right" in problem for problem in found), "secret shown"


# --- the relay's policy ----------------------------------------------------------------------


def outcome(response: ApnsResponse) -> Any:
    return classify(
        response,
        attempt=1,
        expires_at_s=2_000_000_000,
        now_ms=1_000_000_000_000,
        policy=RetryPolicy(),
        rng=random.Random(1),
    )


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (ApnsResponse(403, "BadCertificate"), PauseApp),
        (ApnsResponse(403, "BadCertificateEnvironment"), PauseApp),
        (ApnsResponse(0, "CertificateRefused:SSLV3_ALERT_CERTIFICATE_EXPIRED"), PauseApp),
        (ApnsResponse(0, "CertificateRefused:TLSV1_ALERT_UNKNOWN_CA"), PauseApp),
        (ApnsResponse(0, "ConnectError"), Retry),
        (ApnsResponse(0, "CertificateRefusedButNotReally"), Retry),
    ],
)
def test_a_refused_certificate_pauses_the_app(response: ApnsResponse, expected: type) -> None:
    assert isinstance(outcome(response), expected)


def test_only_alerts_about_the_client_certificate_count_as_refusals() -> None:
    expired = ssl.SSLError(1, "[SSL: SSLV3_ALERT_CERTIFICATE_EXPIRED] sslv3 alert")
    expired.reason = "SSLV3_ALERT_CERTIFICATE_EXPIRED"
    assert connect_failure(expired) == ApnsResponse(
        0, "CertificateRefused:SSLV3_ALERT_CERTIFICATE_EXPIRED"
    )
    server_untrusted = ssl.SSLCertVerificationError(1, "certificate verify failed")
    server_untrusted.reason = "CERTIFICATE_VERIFY_FAILED"
    assert connect_failure(server_untrusted) == ApnsResponse(0, "ConnectError")
    assert connect_failure(ConnectionRefusedError()) == ApnsResponse(0, "ConnectError")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_a_legacy_p12_loads(authority: PushCertificateAuthority, tmp_path: Path) -> None:
    """RC2-40/3DES, as older Keychains and Java keystores (GMS's) write a .p12."""
    (tmp_path / "app.pem").write_bytes(authority.issue(TOPIC, voip=True).pem())
    p12 = tmp_path / "legacy.p12"
    export = ["openssl", "pkcs12", "-export", "-in", str(tmp_path / "app.pem"), "-out", str(p12)]
    done = subprocess.run([*export, "-legacy", "-passout", "pass:pw"], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"this openssl writes no legacy .p12: {done.stderr!r}")
    shown = subprocess.run(
        ["openssl", "pkcs12", "-in", str(p12), "-info", "-noout", "-legacy", "-passin", "pass:pw"],
        capture_output=True,
        text=True,
    )
    assert "RC2" in shown.stdout + shown.stderr
    assert load_pkcs12(p12, b"pw").info.topics == UNIVERSAL
