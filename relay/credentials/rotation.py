"""Credential rotation's decisions, pure: is a re-read key or certificate taken, kept out, or the
one in use; and which changed settings only a restart applies."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Literal

from relay.config.schema import App, Settings
from relay.credentials.check import AppUnderCheck, credential_verdict
from relay.credentials.model import CertificateCredentials, Credentials, TokenCredentials

# The outcomes metrics.CREDENTIAL_RELOAD_OUTCOMES lists.
Outcome = Literal["rotated", "unchanged", "rejected"]


@dataclass(frozen=True, slots=True)
class Judgement:
    outcome: Outcome
    detail: str  # what was found, without any secret
    fix: str = ""  # for a rejection: what to do


def judge(
    app: AppUnderCheck,
    now: datetime.datetime,
    in_use: Credentials,
    candidate: Credentials | Exception,
) -> Judgement:
    """The re-read credentials (or the error reading them raised) against the ones in use, by
    `apns-relay check`'s rules for credential files."""
    refused = credential_verdict(app, now)
    if refused is not None:
        return Judgement("rejected", refused.detail, refused.fix)
    if isinstance(candidate, Exception):
        return Judgement(
            "rejected",
            f"the credentials cannot be read: {candidate}",
            "point the app's auth at readable credential files",
        )
    if same_credentials(in_use, candidate):
        return Judgement("unchanged", describe(candidate))
    return Judgement("rotated", f"{describe(in_use)} replaced by {describe(candidate)}")


def same_credentials(a: Credentials, b: Credentials) -> bool:
    if isinstance(a, TokenCredentials) or isinstance(b, TokenCredentials):
        return a == b
    # The key is the certificate's own (checked when loaded): the certificates decide.
    return (a.certificate.certificate, a.certificate.chain) == (
        b.certificate.certificate,
        b.certificate.chain,
    )


def describe(credentials: Credentials) -> str:
    """Which credentials, in words a log may hold: ids and dates, never key material."""
    if isinstance(credentials, CertificateCredentials):
        # Not the serial: a run of hex digits is masked in logs as a device token would be.
        info = credentials.certificate.info
        valid = f"{info.not_before:%Y-%m-%d %H:%M} to {info.not_after:%Y-%m-%d %H:%M} UTC"
        return f"certificate for {info.bundle_id or ', '.join(info.topics)} valid {valid}"
    return f"key {credentials.key_id} of team {credentials.team_id}"


def restart_needed(running: Settings, reloaded: Settings) -> list[str]:
    """What the reloaded settings change besides the running apps' credentials (auth), which a
    reload does not apply: one entry per section, app added or removed, or app's fields."""
    changes = [
        section
        for section in Settings.model_fields
        if section != "apps" and getattr(running, section) != getattr(reloaded, section)
    ]
    before = {app.name: app for app in running.apps}
    after = {app.name: app for app in reloaded.apps}
    changes += [f"apps: {name} added" for name in after if name not in before]
    changes += [f"apps: {name} removed" for name in before if name not in after]
    for name, app in before.items():
        if name in after and (fields := _changed_fields(app, after[name])):
            changes.append(f"apps[{name}]: {', '.join(fields)}")
    return changes


def _changed_fields(running: App, reloaded: App) -> list[str]:
    return [
        field
        for field in App.model_fields
        if field != "auth" and getattr(running, field) != getattr(reloaded, field)
    ]
