"""Apple's rules for a request on a connection authenticated by a client certificate (pure).

What the TLS handshake already refused never gets here: a certificate not issued by the
simulator's push CA fails the handshake, as at Apple. The rules below decide per request:
- revoked (the CA learns it after issuing, so it is checked on every request, open connections
  included) or outside its validity dates -> 403 BadCertificate. Apple refuses an expired
  certificate in the handshake (alert certificate_expired); asyncio's TLS server cannot send that
  alert (it closes a failed handshake silently, which a client cannot tell from a network fault),
  so the simulator says it with Apple's documented 403 instead;
- issued for the other environment -> 403 BadCertificateEnvironment;
- no apns-topic: a single-topic certificate's own topic; several topics -> 400 MissingTopic;
- a topic the certificate does not list -> 400 TopicDisallowed.
The authorization header is ignored on such a connection, a provider token included, as at Apple.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Collection, Mapping
from typing import Final

from cryptography import x509

from relay_devkit.apns_sim.answers import MISSING_TOPIC, TOPIC_DISALLOWED, Answer
from relay_devkit.apns_sim.apple import PushCertificateGrant, read_push_certificate
from relay_devkit.apns_sim.protocol import (
    Accepted,
    ConnectionAuth,
    Policy,
    Request,
    TokenBinding,
    evaluate,
)

BAD_CERTIFICATE: Final = Answer(403, "BadCertificate")
BAD_CERTIFICATE_ENVIRONMENT: Final = Answer(403, "BadCertificateEnvironment")


def certificate_verdict(
    certificate: PushCertificateGrant,
    topic: str | None,
    environment: str,
    revoked: Collection[int],
    now: float,
) -> Answer | str:
    """The refusal, or the topic the request is sent to."""
    if certificate.serial in revoked:
        return BAD_CERTIFICATE
    if not certificate.not_before.timestamp() <= now < certificate.not_after.timestamp():
        return BAD_CERTIFICATE
    if environment not in certificate.environments:
        return BAD_CERTIFICATE_ENVIRONMENT
    if not topic:
        return certificate.topics[0] if len(certificate.topics) == 1 else MISSING_TOPIC
    return topic if topic in certificate.topics else TOPIC_DISALLOWED


def evaluate_certified(
    request: Request,
    certificate: PushCertificateGrant,
    revoked: Collection[int],
    auth: ConnectionAuth,
    policy: Policy,
    registry: Mapping[str, TokenBinding],
    now: float,
) -> Accepted | Answer:
    """The certificate's rules in the listener's environment, then every other rule of
    `evaluate` on the request as the certificate authorises it: its topic filled in, no
    authorization header."""
    verdict = certificate_verdict(
        certificate, request.headers.get("apns-topic"), policy.environment, revoked, now
    )
    if isinstance(verdict, Answer):
        return verdict
    headers = {k: v for k, v in request.headers.items() if k != "authorization"}
    headers["apns-topic"] = verdict
    return evaluate(
        dataclasses.replace(request, headers=headers), auth, policy, registry, now, certified=True
    )


def peer_certificate(transport: asyncio.BaseTransport) -> PushCertificateGrant | None:
    """What the client certificate of a TLS connection allows; None: the client sent none.
    It has been verified against the push CA in the handshake."""
    ssl_object = transport.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return read_push_certificate(x509.load_der_x509_certificate(der)) if der else None
