"""An app's credential files, read: the credentials a client sends with, and the facts `check`
and a rotation judge them by."""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from pathlib import Path

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from relay.config import loading
from relay.config.schema import App, CertificateAuth, ConfigError, Settings, TokenAuth
from relay.config.secret_files import KEY_FILE_MAX_BYTES, read_bounded
from relay.credentials.check import CertificateFacts, CredentialFacts, TokenKeyFacts
from relay.credentials.client_certificate import (
    CertificateError,
    ClientCertificate,
    load_pem,
    load_pkcs12,
)
from relay.credentials.model import CertificateCredentials, Credentials, TokenCredentials
from relay.telemetry import metrics

log = structlog.get_logger("relay.credentials")


def load_settings(path: str | Path | None = None, env: Mapping[str, str] = os.environ) -> Settings:
    """The settings as relay.config.loading.load_settings reads them, each app's certificate then
    opened: one that cannot be read, or cannot send its app's topic in its environment (APNs would
    refuse every push: TopicDisallowed, BadCertificateEnvironment), is a configuration problem
    (ConfigError), worded as the configuration's own. What every process starts and reloads with."""
    settings = loading.load_settings(path, env)
    file = loading.config_file(path, env)
    source = "built-in defaults" if file is None else f"file {file}"
    if problems := certificate_problems(settings):
        raise ConfigError([f"{problem} [{source}]" for problem in problems])
    return settings


def certificate_problems(settings: Settings) -> list[str]:
    problems = []
    for index, app in enumerate(settings.apps):
        if app.auth.certificate is None:
            continue
        try:
            allowed = read_certificate(app.auth.certificate).info
        except (CertificateError, OSError) as error:  # OSError: refused (a FIFO, too large)
            problems.append(f"apps[{index}]: auth.certificate: {error}")
            continue
        if not allowed.allows(app.topic, app.environment):
            problems.append(
                f"apps[{index}]: auth.certificate: the certificate allows {allowed.describe()};"
                f" this app sends topic {app.topic} in {app.environment}"
            )
    return problems


def read_certificate(auth: CertificateAuth) -> ClientCertificate:
    """The certificate and key these settings name; CertificateError says what is wrong."""
    password = auth.password.get_secret_value().encode() if auth.password else None
    if auth.p12_file is not None:
        return load_pkcs12(auth.p12_file, password)
    assert auth.cert_file is not None  # CertificateAuth._one_form
    return load_pem(auth.cert_file, auth.key_file, password)


def load_credentials(app: App) -> Credentials:
    """The key or certificate the app's settings name, read now (OSError, CertificateError)."""
    if app.auth.token is not None:
        return read_token_key(app.auth.token)
    assert app.auth.certificate is not None  # AppAuth allows exactly one
    return CertificateCredentials(read_certificate(app.auth.certificate))


def read_token_key(auth: TokenAuth) -> TokenCredentials:
    """The key these settings name, read now (OSError; ValueError: not text)."""
    key_pem = read_bounded(auth.key_file, KEY_FILE_MAX_BYTES).decode()
    return TokenCredentials(key_pem, auth.key_id, auth.team_id)


def credential_facts(app: App) -> CredentialFacts:
    """What relay.credentials.check judges the app's credential files by, read from them now."""
    if app.auth.token is not None:
        key_file = app.auth.token.key_file
        try:
            key_pem = read_bounded(key_file, KEY_FILE_MAX_BYTES)
            key = serialization.load_pem_private_key(key_pem, password=None)
        except (ValueError, TypeError, OSError) as error:
            return TokenKeyFacts(str(key_file), None, problem=str(error))
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return TokenKeyFacts(str(key_file), "EC", key.curve.name)
        return TokenKeyFacts(str(key_file), type(key).__name__.removesuffix("PrivateKey"))
    assert app.auth.certificate is not None
    try:
        return CertificateFacts(read_certificate(app.auth.certificate).info.not_after)
    except (CertificateError, OSError) as error:  # the configuration read it: the file changed
        return CertificateFacts(None, str(error))


def publish_certificate_expiry(app: str, certificate: ClientCertificate) -> None:
    """The expiry gauge (its alert fires 30 days ahead), and an error line if it has passed."""
    expires_at = certificate.info.not_after
    metrics.CREDENTIAL_EXPIRY.labels(app=app).set(expires_at.timestamp())
    if expires_at <= datetime.datetime.now(datetime.UTC):
        # Used anyway: ingest keeps queueing, the worker pauses the app on APNs' refusal and
        # delivers the queue once a valid certificate is configured.
        log.error("certificate_expired", app=app, not_after=expires_at.isoformat())
