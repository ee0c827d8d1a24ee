"""APNs client certificates: load a PEM pair or a PKCS#12 (.p12), read what Apple wrote in it.

Apple marks a push certificate with private extensions (Apple WWDR CPS):
- 1.2.840.113635.100.6.3.1 (an ASN.1 NULL): valid for the development (sandbox) environment;
- 1.2.840.113635.100.6.3.2 (NULL): valid for production; a universal certificate has both;
- 1.2.840.113635.100.6.3.6: the topics, a SEQUENCE alternating a UTF8String topic and a SEQUENCE
  of UTF8String kinds ("app", "voip", "complication"). A single-topic certificate has no such
  extension: its one topic is the bundle id in the subject's UID.
"""

from __future__ import annotations

import datetime
import os
import secrets
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from relay.config.secret_files import CERTIFICATE_FILE_MAX_BYTES, read_bounded

OID_DEVELOPMENT: Final = x509.ObjectIdentifier("1.2.840.113635.100.6.3.1")
OID_PRODUCTION: Final = x509.ObjectIdentifier("1.2.840.113635.100.6.3.2")
OID_TOPICS: Final = x509.ObjectIdentifier("1.2.840.113635.100.6.3.6")
ENVIRONMENT_OIDS: Final = {"sandbox": OID_DEVELOPMENT, "production": OID_PRODUCTION}

_DER_UTF8_STRING = 0x0C
_DER_SEQUENCE = 0x30


class CertificateError(ValueError):
    """A certificate or key that cannot be used, said so that an operator can fix it."""


@dataclass(frozen=True, slots=True)
class PushCertificateInfo:
    """What an Apple push certificate allows, read from its extensions."""

    serial: int
    bundle_id: str | None  # the subject's UID
    topics: tuple[str, ...]
    environments: frozenset[str]  # "sandbox", "production"
    not_before: datetime.datetime
    not_after: datetime.datetime

    def allows(self, topic: str, environment: str) -> bool:
        return topic in self.topics and environment in self.environments

    def describe(self) -> str:
        environments = " and ".join(sorted(self.environments)) or "no APNs environment"
        return f"topics {', '.join(self.topics) or '(none)'} in {environments}"


@dataclass(frozen=True, slots=True)
class ClientCertificate:
    """A client certificate with its key and any intermediates, ready for a TLS context."""

    certificate: x509.Certificate
    key: PrivateKeyTypes
    chain: tuple[x509.Certificate, ...]
    info: PushCertificateInfo

    def load_into(self, context: ssl.SSLContext) -> None:
        """Give `context` this certificate and key. Python's ssl loads a key only from a file,
        so the key is written for the moment of loading to a private temporary file, encrypted
        with a one-time passphrase, and unlinked at once: no readable key is left on disk."""
        passphrase = secrets.token_bytes(32)
        pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        ) + b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in (self.certificate, *self.chain)
        )
        descriptor, name = tempfile.mkstemp(prefix="apns-client-", suffix=".pem")
        try:
            with os.fdopen(descriptor, "wb") as file:  # mkstemp: mode 0600
                file.write(pem)
            context.load_cert_chain(name, password=passphrase)
        finally:
            os.unlink(name)


def read_push_certificate(certificate: x509.Certificate) -> PushCertificateInfo:
    uids = certificate.subject.get_attributes_for_oid(NameOID.USER_ID)
    bundle_id = str(uids[0].value) if uids else None
    extensions = {extension.oid: extension.value for extension in certificate.extensions}
    topics_extension = extensions.get(OID_TOPICS)
    if isinstance(topics_extension, x509.UnrecognizedExtension):
        topics = decode_topics(topics_extension.value)
    else:
        topics = (bundle_id,) if bundle_id else ()
    return PushCertificateInfo(
        serial=certificate.serial_number,
        bundle_id=bundle_id,
        topics=topics,
        environments=frozenset(name for name, oid in ENVIRONMENT_OIDS.items() if oid in extensions),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
    )


def decode_topics(value: bytes) -> tuple[str, ...]:
    """The topics of a 1.2.840.113635.100.6.3.6 extension value (the kinds are not needed:
    a topic's suffix already says what it is for)."""
    outer = list(_der_elements(value))
    if len(outer) != 1 or outer[0][0] != _DER_SEQUENCE:
        raise CertificateError("the topics extension is not a DER SEQUENCE")
    topics = []
    for tag, content in _der_elements(outer[0][1]):
        if tag == _DER_UTF8_STRING:
            topics.append(content.decode("utf-8"))
    return tuple(topics)


def _der_elements(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The (tag, content) elements of concatenated DER, single-byte tags only (all Apple uses)."""
    position = 0
    while position < len(data):
        if position + 2 > len(data):
            raise CertificateError("the topics extension is truncated")
        tag, length = data[position], data[position + 1]
        position += 2
        if length & 0x80:
            size = length & 0x7F
            length = int.from_bytes(data[position : position + size], "big")
            position += size
        if position + length > len(data):
            raise CertificateError("the topics extension is truncated")
        yield tag, data[position : position + length]
        position += length


def load_pem(cert_file: Path, key_file: Path | None, password: bytes | None) -> ClientCertificate:
    """The certificate (then any intermediates) from `cert_file`; the key from `key_file`, or
    from `cert_file` when both are in one file (openssl pkcs12 -nodes writes them so)."""
    try:
        certificates = x509.load_pem_x509_certificates(
            read_bounded(cert_file, CERTIFICATE_FILE_MAX_BYTES)
        )
    except ValueError as error:
        raise CertificateError(f"{cert_file}: no PEM certificate ({error})") from None
    key_source = key_file or cert_file
    key_pem = read_bounded(key_source, CERTIFICATE_FILE_MAX_BYTES)
    if b"PRIVATE KEY-----" not in key_pem:
        raise CertificateError(
            f"{key_source}: no PEM private key (give key_file, or put the key in cert_file)"
        )
    try:
        key = serialization.load_pem_private_key(key_pem, password=password)
    except (ValueError, TypeError) as error:
        raise CertificateError(f"{key_source}: cannot read the private key: {error}") from None
    return _assemble(certificates[0], key, tuple(certificates[1:]), str(cert_file))


def load_pkcs12(p12_file: Path, password: bytes | None) -> ClientCertificate:
    try:
        bundle = pkcs12.load_pkcs12(read_bounded(p12_file, CERTIFICATE_FILE_MAX_BYTES), password)
    except ValueError as error:
        # cryptography says "Invalid password or PKCS12 data" for both.
        raise CertificateError(f"{p12_file}: cannot open: {error}") from None
    if bundle.cert is None or bundle.key is None:
        raise CertificateError(f"{p12_file}: must hold the certificate and its private key")
    chain = tuple(c.certificate for c in bundle.additional_certs)
    return _assemble(bundle.cert.certificate, bundle.key, chain, str(p12_file))


def _assemble(
    certificate: x509.Certificate,
    key: PrivateKeyTypes,
    chain: tuple[x509.Certificate, ...],
    source: str,
) -> ClientCertificate:
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*public) != certificate.public_key().public_bytes(*public):
        raise CertificateError(f"{source}: the private key does not belong to the certificate")
    return ClientCertificate(certificate, key, chain, read_push_certificate(certificate))
