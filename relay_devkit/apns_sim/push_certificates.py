"""The simulator's push-certificate authority: issues client certificates shaped as Apple's.

A separate CA from the one behind the server certificate, as at Apple (the server chains to a
public root, push certificates to Apple's WWDR CA). It is kept in the state directory and reused,
so a certificate issued once stays valid across simulator restarts, as a real one does.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from relay_devkit.apns_sim.apple import ENVIRONMENT_OIDS, OID_TOPICS
from relay_devkit.apns_sim.certs import self_signed_ca

CA_FILE: Final = "push-ca.pem"
CA_KEY_FILE: Final = "push-ca-key.pem"
CA_LIFETIME = datetime.timedelta(days=3650)
CERTIFICATE_LIFETIME = datetime.timedelta(days=395)  # Apple's push certificates: 13 months
RSA_KEY_BITS = 2048  # what Apple's push certificates carry
_ASN1_NULL = b"\x05\x00"
_DER_UTF8_STRING = 0x0C
_DER_SEQUENCE = 0x30

Environment = Literal["sandbox", "production", "both"]
ENVIRONMENTS: Final = ("sandbox", "production", "both")


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    certificate: x509.Certificate
    key: rsa.RSAPrivateKey

    def pem(self) -> bytes:
        """Certificate then unencrypted key, as `openssl pkcs12 -nodes` writes them."""
        return self.certificate.public_bytes(serialization.Encoding.PEM) + self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def pkcs12(self, password: bytes) -> bytes:
        """A .p12 as Keychain exports one: certificate and key under a password."""
        return pkcs12.serialize_key_and_certificates(
            name=self.certificate.subject.rfc4514_string().encode(),
            key=self.key,
            cert=self.certificate,
            cas=None,
            encryption_algorithm=serialization.BestAvailableEncryption(password),
        )


class PushCertificateAuthority:
    """The CA key and certificate; issues push certificates."""

    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.certificate = certificate
        self.key = key

    @classmethod
    def in_directory(cls, directory: Path) -> PushCertificateAuthority:
        """The CA kept in `directory`, created there the first time (or once it has expired)."""
        cert_path, key_path = directory / CA_FILE, directory / CA_KEY_FILE
        if cert_path.is_file() and key_path.is_file():
            certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            now = datetime.datetime.now(datetime.UTC)
            if (
                isinstance(key, ec.EllipticCurvePrivateKey)
                and certificate.not_valid_after_utc > now
            ):
                return cls(certificate, key)
        authority = cls.create()
        cert_path.write_bytes(authority.certificate.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            authority.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        return authority

    @classmethod
    def create(cls) -> PushCertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "apns-sim Push Certification Authority"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "apns-sim"),
            ]
        )
        return cls(self_signed_ca(key, name, CA_LIFETIME, digital_signature=False), key)

    def issue(
        self,
        topic: str,
        *,
        voip: bool = False,
        environment: Environment = "sandbox",
        expired: bool = False,
        lifetime: datetime.timedelta = CERTIFICATE_LIFETIME,
    ) -> IssuedCertificate:
        """A push certificate for bundle id `topic`. With `voip`, a universal certificate: its
        topics extension lists the bundle id, `.voip` and `.complication`; without, a
        single-topic certificate whose topic is the subject's UID (Apple issues both kinds)."""
        now = datetime.datetime.now(datetime.UTC)
        not_before, not_after = now - datetime.timedelta(minutes=5), now + lifetime
        if expired:
            not_after = now - datetime.timedelta(days=1)
            not_before = not_after - lifetime
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
        kind = "Apple Push Services" if voip else _single_topic_title(environment)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.USER_ID, topic),
                x509.NameAttribute(NameOID.COMMON_NAME, f"{kind}: {topic}"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "APNSSIMTEAM"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "apns-sim developer"),
                x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            ]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        for name in ("sandbox", "production"):
            if environment in (name, "both"):
                builder = builder.add_extension(
                    x509.UnrecognizedExtension(ENVIRONMENT_OIDS[name], _ASN1_NULL), False
                )
        if voip:
            topics = [(topic, "app"), (f"{topic}.voip", "voip")]
            topics.append((f"{topic}.complication", "complication"))
            builder = builder.add_extension(
                x509.UnrecognizedExtension(OID_TOPICS, encode_topics(topics)), False
            )
        return IssuedCertificate(builder.sign(self.key, hashes.SHA256()), key)


def _single_topic_title(environment: Environment) -> str:
    if environment == "production":
        return "Apple Production IOS Push Services"
    if environment == "sandbox":
        return "Apple Development IOS Push Services"
    return "Apple Push Services"


def encode_topics(topics: list[tuple[str, str]]) -> bytes:
    """A 1.2.840.113635.100.6.3.6 value for (topic, kind) pairs, as Apple writes it: each topic
    a UTF8String followed by a SEQUENCE holding its kind."""
    return _der(
        _DER_SEQUENCE,
        b"".join(
            _der(_DER_UTF8_STRING, topic.encode())
            + _der(_DER_SEQUENCE, _der(_DER_UTF8_STRING, kind.encode()))
            for topic, kind in topics
        ),
    )


def _der(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        return bytes([tag, length]) + content
    size = (length.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + length.to_bytes(size, "big") + content
