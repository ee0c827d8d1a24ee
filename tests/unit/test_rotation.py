"""relay.credentials.rotation: whether re-read credentials are taken, and what only a restart
applies."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, get_args

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from relay.config.schema import Settings
from relay.credentials.check import AppUnderCheck, CertificateFacts, CredentialFacts, TokenKeyFacts
from relay.credentials.client_certificate import ClientCertificate, read_push_certificate
from relay.credentials.model import CertificateCredentials, Credentials, TokenCredentials
from relay.credentials.rotation import Outcome, describe, judge, restart_needed, same_credentials
from relay.telemetry import metrics
from relay_devkit.apns_sim.push_certificates import PushCertificateAuthority

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
AUTHORITY = PushCertificateAuthority.create()


def key_pem() -> str:
    return (
        ec.generate_private_key(ec.SECP256R1())
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )


KEY_A, KEY_B = key_pem(), key_pem()
TOKEN_A = TokenCredentials(KEY_A, "KEYAAAAAAA", "TEAM123456")


def certificate() -> CertificateCredentials:
    issued = AUTHORITY.issue("com.example.app", voip=True)
    return CertificateCredentials(
        ClientCertificate(
            issued.certificate, issued.key, (), read_push_certificate(issued.certificate)
        )
    )


CERT_A, CERT_B = certificate(), certificate()
EC_KEY = TokenKeyFacts("/keys/AuthKey.p8", "EC", "secp256r1")
VALID_CERTIFICATE = CertificateFacts(NOW + datetime.timedelta(days=300))


def under_check(facts: CredentialFacts) -> AppUnderCheck:
    return AppUnderCheck("demo", "com.example.app", "sandbox", "127.0.0.1:2197", facts)


@pytest.mark.parametrize(
    ("facts", "in_use", "candidate", "outcome", "detail_says"),
    [
        # A new key (and a new key id, as Apple issues them) is taken.
        (
            EC_KEY,
            TOKEN_A,
            TokenCredentials(KEY_B, "KEYBBBBBBB", "TEAM123456"),
            "rotated",
            "key KEYAAAAAAA of team TEAM123456 replaced by key KEYBBBBBBB",
        ),
        # A new key under the same id (the config's key_id kept) is a new key all the same.
        (EC_KEY, TOKEN_A, TokenCredentials(KEY_B, "KEYAAAAAAA", "TEAM123456"), "rotated", ""),
        (EC_KEY, TOKEN_A, TokenCredentials(KEY_A, "KEYAAAAAAA", "TEAM123456"), "unchanged", ""),
        (EC_KEY, TOKEN_A, CERT_B, "rotated", "replaced by certificate for com.example.app valid"),
        (VALID_CERTIFICATE, CERT_A, CERT_A, "unchanged", "certificate for com.example.app"),
        (VALID_CERTIFICATE, CERT_A, CERT_B, "rotated", " UTC replaced by certificate for"),
        (VALID_CERTIFICATE, CERT_A, TOKEN_A, "rotated", "replaced by key KEYAAAAAAA"),
        # Invalid files: check's verdict, and the ones in use are kept.
        (
            TokenKeyFacts("/keys/AuthKey.p8", None, problem="Could not deserialize key data"),
            TOKEN_A,
            TOKEN_A,
            "rejected",
            "/keys/AuthKey.p8 is not a PEM private key",
        ),
        (
            TokenKeyFacts("/keys/AuthKey.p8", "RSA"),
            TOKEN_A,
            TOKEN_A,
            "rejected",
            "holds a key of RSA, not ES256",
        ),
        (
            CertificateFacts(NOW - datetime.timedelta(days=1)),
            CERT_A,
            CERT_B,
            "rejected",
            "the certificate expired on 2029-12-31",
        ),
        (CertificateFacts(None, "bad.p12: cannot open"), CERT_A, CERT_B, "rejected", "bad.p12"),
        # Files that passed the checks and then failed to load (changed in between).
        (EC_KEY, TOKEN_A, OSError("No such file"), "rejected", "cannot be read: No such file"),
    ],
)
def test_judge(
    facts: CredentialFacts,
    in_use: Credentials,
    candidate: Credentials | Exception,
    outcome: Outcome,
    detail_says: str,
) -> None:
    judgement = judge(under_check(facts), NOW, in_use, candidate)
    assert judgement.outcome == outcome, judgement
    assert detail_says in judgement.detail
    assert bool(judgement.fix) == (outcome == "rejected")


def test_a_judgement_never_holds_key_material() -> None:
    rotated = judge(
        under_check(EC_KEY), NOW, TOKEN_A, TokenCredentials(KEY_B, "KEYBBBBBBB", "TEAM123456")
    )
    for key in (KEY_A, KEY_B):
        body = "".join(key.splitlines()[1:-1])
        assert body[:16] not in rotated.detail
    assert "PRIVATE KEY" not in describe(CERT_A)


def test_same_credentials_compares_what_is_sent() -> None:
    assert same_credentials(TOKEN_A, TokenCredentials(KEY_A, "KEYAAAAAAA", "TEAM123456"))
    assert not same_credentials(TOKEN_A, TokenCredentials(KEY_A, "KEYAAAAAAA", "TEAM654321"))
    assert same_credentials(CERT_A, CertificateCredentials(CERT_A.certificate))
    assert not same_credentials(CERT_A, CERT_B)
    assert not same_credentials(TOKEN_A, CERT_A)


def test_the_outcomes_are_the_ones_the_metric_is_primed_with() -> None:
    assert get_args(Outcome) == metrics.CREDENTIAL_RELOAD_OUTCOMES


def settings(*apps: dict[str, Any], **sections: Any) -> Settings:
    return Settings.model_validate({"apps": list(apps), **sections})


def app(
    tmp_path: Path, name: str = "demo", key: str = "AuthKey_A.p8", **fields: Any
) -> dict[str, Any]:
    key_file = tmp_path / key
    key_file.write_text(KEY_A)
    return {
        "name": name,
        "topic": "com.example.app",
        "environment": "sandbox",
        "auth": {
            "token": {"key_file": str(key_file), "key_id": "KEYAAAAAAA", "team_id": "TEAM123456"}
        },
        **fields,
    }


def test_only_credentials_changed_needs_no_restart(tmp_path: Path) -> None:
    running = settings(app(tmp_path))
    rotated = app(tmp_path, key="AuthKey_B.p8")
    rotated["auth"]["token"]["key_id"] = "KEYBBBBBBB"
    assert restart_needed(running, settings(rotated)) == []
    assert restart_needed(running, running) == []


def test_everything_else_that_changed_is_named(tmp_path: Path) -> None:
    running = settings(
        app(tmp_path), app(tmp_path, "gone"), auth={"api_tokens": ["token-one-0123"]}
    )
    reloaded = settings(
        app(tmp_path, topic="com.example.other", max_connections=2),
        app(tmp_path, "new"),
        auth={"api_tokens": ["token-two-0123"]},
        delivery={"batch_size": 10},
    )
    assert restart_needed(running, reloaded) == [
        "auth",
        "delivery",
        "apps: new added",
        "apps: gone removed",
        "apps[demo]: topic, max_connections",
    ]
