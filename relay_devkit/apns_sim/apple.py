"""Apple's rules the simulator judges by, stated here as Apple publishes them.

The simulator is every test's oracle, so it reads none of these from the relay: a constant the
relay got wrong would otherwise be agreed on by both sides and no test could see it. Where the
relay states the same rule, tests/devkit/test_apns_sim_apple.py checks that the two agree and
names the side that differs. Sources: Apple's "Sending notification requests to APNs" (headers,
sizes; quoted beside each value) and Apple's push certificates as issued (their extensions).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from cryptography import x509

# "apns-push-type: alert, background, voip, complication, fileprovider, mdm, liveactivity,
# location, pushtotalk, widgets, controls".
PUSH_TYPES: Final = frozenset(
    {
        "alert",
        "background",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
        "location",
        "pushtotalk",
        "widgets",
        "controls",
    }
)
# "apns-priority: 10 immediate, 5 power-aware, 1 lowest".
PRIORITIES: Final = frozenset({1, 5, 10})
# "Payload limit 4096 bytes (5120 for VoIP)".
MAX_PAYLOAD_BYTES: Final = 4096
MAX_VOIP_PAYLOAD_BYTES: Final = 5120
# "apns-collapse-id: at most 64 bytes".
MAX_COLLAPSE_ID_BYTES: Final = 64

# A push certificate's extensions (Apple's OIDs): which APNs environments it may use, and the
# topics it may push to (a DER SEQUENCE of UTF8String topics, each followed by a SEQUENCE of its
# kind). A single-topic certificate has no topics extension: its topic is the subject's UID.
OID_DEVELOPMENT: Final = x509.ObjectIdentifier("1.2.840.113635.100.6.3.1")
OID_PRODUCTION: Final = x509.ObjectIdentifier("1.2.840.113635.100.6.3.2")
OID_TOPICS: Final = x509.ObjectIdentifier("1.2.840.113635.100.6.3.6")
ENVIRONMENT_OIDS: Final = {"sandbox": OID_DEVELOPMENT, "production": OID_PRODUCTION}

_DER_UTF8_STRING: Final = 0x0C
_DER_SEQUENCE: Final = 0x30


def payload_limit(push_type: str) -> int:
    """Apple's body size limit for a push type."""
    return MAX_VOIP_PAYLOAD_BYTES if push_type == "voip" else MAX_PAYLOAD_BYTES


class UnreadableCertificate(ValueError):
    """A push certificate extension the simulator cannot read."""


@dataclass(frozen=True, slots=True)
class PushCertificateGrant:
    """What an Apple push certificate allows, as APNs reads it from the certificate."""

    serial: int
    topics: tuple[str, ...]
    environments: frozenset[str]  # "sandbox", "production"
    not_before: datetime.datetime
    not_after: datetime.datetime


def read_push_certificate(certificate: x509.Certificate) -> PushCertificateGrant:
    """The grant of a client certificate: its topics and environments from Apple's extensions."""
    uids = certificate.subject.get_attributes_for_oid(x509.NameOID.USER_ID)
    bundle_id = str(uids[0].value) if uids else None
    extensions = {extension.oid: extension.value for extension in certificate.extensions}
    topics_extension = extensions.get(OID_TOPICS)
    if isinstance(topics_extension, x509.UnrecognizedExtension):
        topics = read_topics(topics_extension.value)
    else:
        topics = (bundle_id,) if bundle_id else ()
    return PushCertificateGrant(
        serial=certificate.serial_number,
        topics=topics,
        environments=frozenset(name for name, oid in ENVIRONMENT_OIDS.items() if oid in extensions),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
    )


def read_topics(value: bytes) -> tuple[str, ...]:
    """The topics of a topics extension's value (a topic's kind is not needed: its suffix
    already says what it is for)."""
    outer = list(_der_elements(value))
    if len(outer) != 1 or outer[0][0] != _DER_SEQUENCE:
        raise UnreadableCertificate("the topics extension is not a DER SEQUENCE")
    return tuple(
        content.decode("utf-8")
        for tag, content in _der_elements(outer[0][1])
        if tag == _DER_UTF8_STRING
    )


def _der_elements(data: bytes) -> Iterator[tuple[int, bytes]]:
    """The (tag, content) elements of concatenated DER, single-byte tags only (all Apple uses)."""
    position = 0
    while position < len(data):
        if position + 2 > len(data):
            raise UnreadableCertificate("the topics extension is truncated")
        tag, length = data[position], data[position + 1]
        position += 2
        if length & 0x80:
            size = length & 0x7F
            length = int.from_bytes(data[position : position + size], "big")
            position += size
        if position + length > len(data):
            raise UnreadableCertificate("the topics extension is truncated")
        yield tag, data[position : position + length]
        position += length
