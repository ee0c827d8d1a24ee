"""`apns-relay check`'s judgement, pure: what an app's credential files hold and what APNs answered
to one push for a random device token -> a verdict and the fix, in plain words; and what the
relay's surroundings hold for it: each Redis primary's memory policy and limit, the spool.

The probe's token is well-formed but belongs to no phone, so APNs answers `BadDeviceToken` exactly
when everything before the token passed: the TLS connection, the provider token (key, key id,
team) or the client certificate, the topic and the environment. Any other answer names what
failed before the token was looked at.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from relay.core.model import ApnsResponse
from relay.core.policy import CERTIFICATE_REFUSED

# Apple's push certificates last 13 months; the alert on their expiry fires 30 days before.
EXPIRY_WARNING: Final = datetime.timedelta(days=30)
ES256_CURVE: Final = "secp256r1"


@dataclass(frozen=True, slots=True)
class TokenKeyFacts:
    """What the `.p8` file holds: its key's algorithm ("EC", "RSA", ...) and, for EC, the curve;
    `problem` says why it is no PEM private key at all."""

    key_file: str
    algorithm: str | None
    curve: str | None = None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class CertificateFacts:
    """When the push certificate expires (its topics and environment are checked when the
    configuration is loaded: a certificate that cannot send the app's topic is a start-up error).
    `problem`: why it could not be read again (the file changed since the configuration loaded)."""

    not_after: datetime.datetime | None
    problem: str | None = None


CredentialFacts = TokenKeyFacts | CertificateFacts


@dataclass(frozen=True, slots=True)
class AppUnderCheck:
    name: str
    topic: str
    environment: str
    endpoint: str  # "host:port"
    credential: CredentialFacts


@dataclass(frozen=True, slots=True)
class Verdict:
    app: str
    ok: bool
    verdict: str  # a short code: "ready", "invalid-provider-token", ...
    detail: str  # what was found
    fix: str  # what to do, or "" when nothing is to be done
    endpoint: str
    status: int | None = None  # APNs' answer to the probe (0: none), None if not probed
    reason: str | None = None
    expires_at: str | None = None  # a certificate's not_after, ISO 8601

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        text = f"{mark} {self.app}: {self.verdict} — {self.detail}"
        return f"{text}. Fix: {self.fix}" if self.fix else text


def credential_verdict(app: AppUnderCheck, now: datetime.datetime) -> Verdict | None:
    """A verdict from the files alone when they cannot work (then nothing is sent); else None."""
    credential = app.credential
    if isinstance(credential, TokenKeyFacts):
        if credential.algorithm is None:
            return _failed(
                app,
                "key-unreadable",
                f"{credential.key_file} is not a PEM private key ({credential.problem})",
                "download the .p8 again from Apple's portal (Keys) and point key_file at it",
            )
        if (credential.algorithm, credential.curve) != ("EC", ES256_CURVE):
            found = credential.algorithm + (f" on {credential.curve}" if credential.curve else "")
            return _failed(
                app,
                "key-not-es256",
                f"{credential.key_file} holds a key of {found}, not ES256 (EC on P-256)",
                "use the APNs .p8 key Apple issued: it is an ES256 (EC P-256) key",
            )
        return None
    if credential.problem is not None or credential.not_after is None:
        return _failed(
            app,
            "certificate-unreadable",
            f"the certificate cannot be read: {credential.problem}",
            "point auth.certificate at the push certificate (.p12 or PEM) and its password",
        )
    if credential.not_after <= now:
        return _failed(
            app,
            "certificate-expired",
            f"the certificate expired on {credential.not_after:%Y-%m-%d}",
            "create a new push certificate in Apple's portal, export it as .p12 and configure it",
            expires_at=credential.not_after.isoformat(),
        )
    return None


def answer_verdict(app: AppUnderCheck, answer: ApnsResponse, now: datetime.datetime) -> Verdict:
    """APNs' answer to the probe (a random token, the app's topic and environment) judged."""
    status, reason = answer.status, answer.reason or ""
    code, ok, detail, fix = _judge(app, status, reason)
    expires_at = None
    if isinstance(app.credential, CertificateFacts) and app.credential.not_after is not None:
        expires_at = app.credential.not_after.isoformat()
        remaining = app.credential.not_after - now
        if ok and remaining <= EXPIRY_WARNING:
            code = "certificate-expiring"
            detail += f"; the certificate expires in {remaining.days} days"
            fix = "renew the push certificate in Apple's portal before it expires"
    return Verdict(
        app.name, ok, code, detail, fix, app.endpoint, status, reason or None, expires_at
    )


def _judge(app: AppUnderCheck, status: int, reason: str) -> tuple[str, bool, str, str]:
    """(verdict code, ok, what was found, the fix) for one answer."""
    where = f"{app.topic} in {app.environment} at {app.endpoint}"
    if status == 400 and reason == "BadDeviceToken":
        return "ready", True, f"APNs accepted the credential for {where}", ""
    if status == 200:
        # Apple never accepts a token no phone registered; a simulator with open tokens does.
        return "ready", True, f"{app.endpoint} accepted a push to a random token for {where}", ""
    if status == 403 and reason == "InvalidProviderToken":
        return (
            "invalid-provider-token",
            False,
            f"APNs refused the provider token for {where}",
            "key_id must be the .p8 key's id and team_id your team's id (both in Apple's "
            "portal), and the key must not be revoked",
        )
    if status == 403 and reason == "BadEnvironmentKeyIdInToken":
        return (
            "key-wrong-environment",
            False,
            f"the key is restricted to the other environment than {app.environment}",
            f"use a key enabled for {app.environment} (Apple's portal, Keys), or change the "
            "app's environment",
        )
    if status == 403 and reason == "ExpiredProviderToken":
        return (
            "clock-skew",
            False,
            "APNs found the provider token's time more than an hour off",
            "synchronise this machine's clock (NTP)",
        )
    if status == 400 and reason == "TopicDisallowed":
        return (
            "topic-disallowed",
            False,
            f"the credential may not push to {app.topic}",
            "set topic to the app's bundle id, which must belong to the key's team (or be "
            "listed in the certificate)",
        )
    if status == 403 and reason == "BadCertificate":
        return (
            "certificate-refused",
            False,
            "APNs refused the certificate (expired, revoked or not issued by Apple)",
            "create a new push certificate in Apple's portal and configure it",
        )
    if status == 403 and reason == "BadCertificateEnvironment":
        return (
            "certificate-wrong-environment",
            False,
            f"the certificate is not valid for {app.environment} at {app.endpoint}",
            f"use a certificate for {app.environment} (or a universal one), or point the app "
            "at the other environment",
        )
    if status == 403:
        return (
            "credential-refused",
            False,
            f"APNs refused the credential: 403 {reason or '(no reason)'}",
            "check the key or certificate, its ids, topic and environment in Apple's portal",
        )
    if status == 0 and reason.startswith(f"{CERTIFICATE_REFUSED}:"):
        return (
            "certificate-refused",
            False,
            f"the TLS handshake refused the client certificate ({reason.partition(':')[2]})",
            "create a new push certificate in Apple's portal and configure it",
        )
    if status == 0:
        return (
            "unreachable",
            False,
            f"no answer from {app.endpoint} ({reason or 'connection failed'})",
            "allow egress to Apple's 17.0.0.0/8 on TCP 443 (or 2197), check DNS and any proxy",
        )
    if status == 429 or status >= 500:
        return (
            "apns-unavailable",
            False,
            f"APNs answered {status} {reason}".rstrip(),
            "nothing in the relay: try again later (Apple's system status page)",
        )
    return (
        "unexpected-answer",
        False,
        f"APNs answered {status} {reason}".rstrip(),
        "look the reason up in Apple's 'Handling notification responses' table",
    )


def _failed(
    app: AppUnderCheck, code: str, detail: str, fix: str, expires_at: str | None = None
) -> Verdict:
    return Verdict(app.name, False, code, detail, fix, app.endpoint, expires_at=expires_at)


def exit_status(verdicts: list[Verdict], findings: list[Finding] | None = None) -> int:
    return 0 if all(v.ok for v in verdicts) and all(f.ok for f in findings or ()) else 1


# ---- the relay's surroundings: Redis memory, the spool ----

NO_SPOOL: Final = (
    "ingest.spool_dir is unset: while Redis is down or full, a GMS push that outlasts the hold"
    " (ingest.hold_seconds) is refused with 503, and GMS does not send it again"
)
NO_SPOOL_FIX: Final = "set ingest.spool_dir to a volume of each api's own"


@dataclass(frozen=True, slots=True)
class Finding:
    """One fact about what the relay runs on; `level` "FAIL" fails the check, "warn" does not."""

    subject: str
    level: str  # "ok", "warn" or "FAIL"
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.level != "FAIL"

    def line(self) -> str:
        text = f"{self.level:<4} {self.subject}: {self.detail}"
        return f"{text}. Fix: {self.fix}" if self.fix else text


def spool_finding(spool_dir: Path | None) -> Finding:
    if spool_dir is None:
        return Finding("spool", "warn", NO_SPOOL, NO_SPOOL_FIX)
    return Finding("spool", "ok", f"ingest.spool_dir {spool_dir}")
