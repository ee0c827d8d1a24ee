"""Simulator key material: a private CA, its loopback server certificate, a .p8 signing key."""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from relay_devkit.apns_sim.protocol import ENVIRONMENTS, TrustedKey

CERT_LIFETIME = datetime.timedelta(days=30)
IDENTIFIER_ALPHABET = string.ascii_uppercase + string.digits
IDENTIFIER_LENGTH = 10  # Apple key ids and team ids


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    ca_file: Path  # the trust anchor clients load
    cert_file: Path  # server certificate
    key_file: Path  # server private key


@dataclass(frozen=True, slots=True)
class SigningKey:
    key_id: str
    team_id: str
    key_file: Path  # AuthKey_<KEY_ID>.p8, PKCS8 PEM as Apple ships it

    def trusted(self) -> TrustedKey:
        return load_trusted_key(self.key_id, self.team_id, self.key_file)


def random_identifier() -> str:
    return "".join(secrets.choice(IDENTIFIER_ALPHABET) for _ in range(IDENTIFIER_LENGTH))


def is_identifier(value: str) -> bool:
    return len(value) == IDENTIFIER_LENGTH and all(c in IDENTIFIER_ALPHABET for c in value)


def self_signed_ca(
    key: ec.EllipticCurvePrivateKey,
    name: x509.Name,
    lifetime: datetime.timedelta,
    *,
    digital_signature: bool,
) -> x509.Certificate:
    """A CA certificate for `key`, valid from five minutes ago (clock skew) for `lifetime`,
    that may sign end-entity certificates only (path length 0)."""
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def create_server_identity(directory: Path, extra_names: Sequence[str] = ()) -> ServerIdentity:
    """A fresh CA and a certificate it signs for localhost, 127.0.0.1, ::1 and `extra_names`
    (the host name a container network gives the simulator, e.g. apns-sim)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "apns-sim local CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = self_signed_ca(ca_key, ca_name, CERT_LIFETIME, digital_signature=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CERT_LIFETIME)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                    *(x509.DNSName(name) for name in extra_names),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    identity = ServerIdentity(
        ca_file=directory / "ca.pem",
        cert_file=directory / "server.pem",
        key_file=directory / "server-key.pem",
    )
    _write(identity.ca_file, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(identity.cert_file, server_cert.public_bytes(serialization.Encoding.PEM))
    _write(identity.key_file, _pkcs8(server_key), private=True)
    return identity


def create_signing_key(directory: Path, key_id: str, team_id: str) -> SigningKey:
    """A development provider key, written the way Apple ships it: AuthKey_<KEY_ID>.p8."""
    key_file = directory / f"AuthKey_{key_id}.p8"
    _write(key_file, _pkcs8(ec.generate_private_key(ec.SECP256R1())), private=True)
    return SigningKey(key_id, team_id, key_file.resolve())


def load_trusted_key(
    key_id: str,
    team_id: str,
    pem_file: Path,
    environments: frozenset[str] = frozenset(ENVIRONMENTS),
) -> TrustedKey:
    """A key from a PEM file holding either the P-256 public key or the private .p8 key."""
    pem = pem_file.read_bytes()
    public_key: object
    if b"PRIVATE KEY" in pem:
        public_key = serialization.load_pem_private_key(pem, password=None).public_key()
    else:
        public_key = serialization.load_pem_public_key(pem)
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise ValueError(f"{pem_file}: not a P-256 (ES256) key")
    return TrustedKey(key_id, team_id, public_key, environments)


def _pkcs8(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, content: bytes, *, private: bool = False) -> None:
    path.write_bytes(content)
    if private:
        path.chmod(0o600)
