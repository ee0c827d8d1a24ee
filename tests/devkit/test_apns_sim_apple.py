"""The simulator states Apple's rules itself: it imports nothing of the relay, and where the relay
states the same rule the two agree (a divergence fails here, naming the side that differs)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from relay.core.model import (
    MAX_COLLAPSE_ID_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_VOIP_PAYLOAD_BYTES,
    PRIORITIES,
    PUSH_TYPES,
    payload_limit,
)
from relay.credentials import client_certificate as relay_certificates
from relay_devkit.apns_sim import apple
from relay_devkit.apns_sim.certs import create_server_identity
from relay_devkit.apns_sim.push_certificates import PushCertificateAuthority

SIMULATOR = Path(apple.__file__).parent
TOPIC = "com.example.agree"


def relay_imports(source: Path) -> list[str]:
    """`file:line module` for each import of the relay package (relay_devkit is not the relay)."""
    found = []
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        for name in names:
            if name == "relay" or name.startswith("relay."):
                found.append(f"{source.name}:{node.lineno} {name}")
    return found


def test_no_simulator_module_imports_the_relay() -> None:
    sources = sorted(SIMULATOR.glob("*.py"))
    assert len(sources) > 5
    assert [hit for source in sources for hit in relay_imports(source)] == []


def test_the_loaded_simulator_holds_no_relay_module() -> None:
    # Indirect imports too (through another kit module): a fresh interpreter loads every module
    # of the simulator and lists what of the relay came with them.
    modules = [f"relay_devkit.apns_sim.{source.stem}" for source in sorted(SIMULATOR.glob("*.py"))]
    probe = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m == 'relay' or m.startswith('relay.')))\n"
    )
    answer = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert answer.stdout.strip() == "[]", answer.stdout


@pytest.mark.parametrize(
    ("rule", "relay_value", "apple_value"),
    [
        ("push types", PUSH_TYPES, apple.PUSH_TYPES),
        ("priorities", PRIORITIES, apple.PRIORITIES),
        ("payload limit", MAX_PAYLOAD_BYTES, apple.MAX_PAYLOAD_BYTES),
        ("VoIP payload limit", MAX_VOIP_PAYLOAD_BYTES, apple.MAX_VOIP_PAYLOAD_BYTES),
        ("collapse id limit", MAX_COLLAPSE_ID_BYTES, apple.MAX_COLLAPSE_ID_BYTES),
        ("environment OIDs", relay_certificates.ENVIRONMENT_OIDS, apple.ENVIRONMENT_OIDS),
        ("topics OID", relay_certificates.OID_TOPICS, apple.OID_TOPICS),
    ],
)
def test_the_relay_states_apples_rules_as_the_simulator_does(
    rule: str, relay_value: object, apple_value: object
) -> None:
    assert relay_value == apple_value, f"{rule}: relay {relay_value!r}, simulator {apple_value!r}"


@pytest.mark.parametrize("push_type", sorted(apple.PUSH_TYPES | {"unknown"}))
def test_the_payload_limit_per_push_type_agrees(push_type: str) -> None:
    assert payload_limit(push_type) == apple.payload_limit(push_type), push_type


def test_both_read_a_push_certificate_the_same_way(tmp_path: Path) -> None:
    authority = PushCertificateAuthority.create()
    certificates = {
        "single topic": authority.issue(TOPIC).certificate,
        "universal, both environments": authority.issue(
            TOPIC, voip=True, environment="both"
        ).certificate,
        "production": authority.issue(TOPIC, environment="production").certificate,
        "expired": authority.issue(TOPIC, expired=True).certificate,
        "no push extensions": x509.load_pem_x509_certificate(
            create_server_identity(tmp_path).cert_file.read_bytes()
        ),
    }
    for name, certificate in certificates.items():
        relay_read = relay_certificates.read_push_certificate(certificate)
        simulator_read = apple.read_push_certificate(certificate)
        relay_view = (
            relay_read.serial,
            relay_read.topics,
            relay_read.environments,
            relay_read.not_before,
            relay_read.not_after,
        )
        simulator_view = (
            simulator_read.serial,
            simulator_read.topics,
            simulator_read.environments,
            simulator_read.not_before,
            simulator_read.not_after,
        )
        assert relay_view == simulator_view, (
            f"{name}: relay {relay_view}, simulator {simulator_view}"
        )


def test_the_simulator_refuses_an_unreadable_topics_extension() -> None:
    for garbage in (b"", b"\x0c\x01a", b"\x30\x05\x0c\x09ab"):
        with pytest.raises(apple.UnreadableCertificate):
            apple.read_topics(garbage)
