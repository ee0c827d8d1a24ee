"""Credentials (Bearer and Basic, compared in constant time) and what each may act for."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import SecretStr

from relay.config.schema import App, ConfigError, Settings
from relay.core.payload import PushSpec
from relay.http.problems import Problem

WWW_AUTHENTICATE = 'Bearer realm="apns-relay", Basic realm="apns-relay"'


@dataclass(frozen=True)
class Grant:
    """What one accepted credential may do: act for every app (`apps` None) or those named."""

    name: str  # which credential, for rate limits and logs; never the secret
    apps: frozenset[str] | None = None
    operator: bool = False  # auth.operator_tokens: may take the operator actions (check)

    def allows(self, app: str) -> bool:
        return self.apps is None or app in self.apps

    @property
    def sole_app(self) -> str | None:
        """The one app a credential scoped to exactly one app acts for by default."""
        if self.apps is not None and len(self.apps) == 1:
            return next(iter(self.apps))
        return None


@dataclass(frozen=True)
class AcceptedSecret:
    scheme: str  # "bearer" or "basic"
    digest: bytes  # SHA-256 of the secret: equal lengths, so a comparison reveals no length
    grant: Grant


def _digest(secret: bytes) -> bytes:
    return hashlib.sha256(secret).digest()


def _accept(scheme: str, secret: SecretStr, grant: Grant) -> AcceptedSecret:
    return AcceptedSecret(scheme, _digest(secret.get_secret_value().encode()), grant)


def _basic_user(pair: SecretStr) -> str:
    return pair.get_secret_value().partition(":")[0]


class Credentials:
    """Accepted credentials, compared in constant time."""

    def __init__(self, accepted: Iterable[AcceptedSecret] = ()) -> None:
        self.accepted = tuple(accepted)

    @classmethod
    def from_settings(cls, settings: Settings) -> Credentials:
        """Every configured credential; ConfigError when a scoped one names an unknown app."""
        auth = settings.auth
        accepted = [
            _accept("bearer", t, Grant(f"token#{i}")) for i, t in enumerate(auth.api_tokens)
        ]
        accepted += [_accept("basic", p, Grant(f"basic:{_basic_user(p)}")) for p in auth.basic]
        accepted += [
            _accept("bearer", t, Grant(f"operator#{i}", operator=True))
            for i, t in enumerate(auth.operator_tokens)
        ]
        configured = {app.name for app in settings.apps}
        problems: list[str] = []
        for index, scoped in enumerate(auth.scoped):
            unknown = sorted(set(scoped.apps) - configured)
            if unknown:
                problems.append(
                    f"auth.scoped[{index}].apps: unknown app(s) {', '.join(unknown)}"
                    f" (configured: {', '.join(sorted(configured)) or 'none'})"
                )
            apps = frozenset(scoped.apps)
            if scoped.basic is not None:
                grant = Grant(f"basic:{_basic_user(scoped.basic)}", apps)
                accepted.append(_accept("basic", scoped.basic, grant))
            elif scoped.token is not None:
                accepted.append(_accept("bearer", scoped.token, Grant(f"scoped#{index}", apps)))
        if problems:
            raise ConfigError(problems)
        return cls(accepted)

    def grant_for(self, authorization: str | None) -> Grant | None:
        """The grant of the credential an Authorization header presents, or None."""
        presented = _presented_secret(authorization)
        if presented is None:
            return None
        scheme, secret = presented
        digest = _digest(secret)
        granted: Grant | None = None
        # Every accepted secret is compared, so timing does not tell which one (or none) matched.
        for accepted in self.accepted:
            if hmac.compare_digest(digest, accepted.digest) and accepted.scheme == scheme:
                granted = accepted.grant
        return granted


def _presented_secret(authorization: str | None) -> tuple[str, bytes] | None:
    scheme, _, value = (authorization or "").partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        # aiohttp keeps a header's non-UTF-8 bytes as surrogates: compared as the bytes sent,
        # they match no configured (UTF-8) token, so the caller gets the plain 401.
        return scheme, value.strip().encode("utf-8", "surrogateescape")
    if scheme == "basic":
        try:
            return scheme, base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            return None
    return None


# What a credential may act for


def _forbidden_app(grant: Grant, app: str | None, field: str) -> Problem:
    allowed = ", ".join(sorted(grant.apps or ()))
    named = "without naming one" if app is None else f"for app {app!r}"
    return Problem(
        403,
        "app-not-allowed",
        f"this credential may not act {named} (allowed: {allowed})",
        field=field,
    )


def resolve_app(settings: Settings, grant: Grant, name: str | None, field: str) -> App:
    """The app a request names (None: the default) as this credential may see it. A scoped
    credential learns no other app's name: an unknown app and another's app get one answer."""
    if grant.apps is not None and name is not None and name not in grant.apps:
        raise _forbidden_app(grant, name, field)
    app = settings.app(name)
    if not grant.allows(app.name):
        raise _forbidden_app(grant, name, field)
    return app


def require_full_access(grant: Grant) -> None:
    if grant.apps is not None:
        raise Problem(
            403,
            "app-not-allowed",
            "this route covers every app; a credential scoped to some apps may not use it",
            field="Authorization",
        )


def require_operator(grant: Grant) -> None:
    """Operator actions (they reach APNs on the caller's word) take an operator token: not an
    app's scoped credential (every install holds it), not GMS's."""
    if not grant.operator:
        raise Problem(
            403,
            "operator-only",
            "this route is an operator action: only a credential of auth.operator_tokens may"
            " use it",
            field="Authorization",
        )


def scoped_spec(grant: Grant, spec: PushSpec) -> PushSpec:
    """The spec with its app settled for this credential: one scoped to a single app pushes
    to it without naming it."""
    if spec.app is None and grant.sole_app is not None:
        return dataclasses.replace(spec, app=grant.sole_app)
    return spec
