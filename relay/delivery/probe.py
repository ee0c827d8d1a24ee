"""The credential check's probe: one push per app to a device token no phone has, through a real
APNs client, judged by relay.credentials.check (`apns-relay check` and GET /v1/apps/{app}/check)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import secrets
import time
import uuid

import orjson

from relay.config.schema import App, Settings
from relay.core.model import Notification
from relay.credentials.check import (
    AppUnderCheck,
    CertificateFacts,
    CredentialFacts,
    TokenKeyFacts,
    Verdict,
    answer_verdict,
    credential_verdict,
)
from relay.credentials.files import credential_facts, load_credentials
from relay.delivery.clients import make_client

PROBE_TOKEN_BYTES = 32  # a device token as Apple issues them today: 64 hex digits
# Addressed to no phone; kept short-lived anyway (apns-expiration: a minute).
PROBE_PAYLOAD = orjson.dumps({"aps": {"alert": "apns-relay check"}})
PROBE_TTL_S = 60


async def check_apps(settings: Settings, apps: list[App], timeout_s: float) -> list[Verdict]:
    """Every app checked at once (each its own connection), verdicts in configuration order."""
    settings = settings.model_copy(
        update={
            "delivery": settings.delivery.model_copy(update={"request_timeout_seconds": timeout_s})
        }
    )
    return list(await asyncio.gather(*(check_app(settings, app) for app in apps)))


async def check_app(settings: Settings, app: App) -> Verdict:
    # The files are read in a thread: in a serving api, a slow or huge file must not stall it.
    facts = await asyncio.to_thread(credential_facts, app)
    under_check = AppUnderCheck(app.name, app.topic, app.environment, _endpoint_of(app), facts)
    now = datetime.datetime.now(datetime.UTC)
    refused = credential_verdict(under_check, now)
    if refused is not None:
        return refused
    try:
        credentials = await asyncio.to_thread(load_credentials, app)
    except (OSError, ValueError) as error:  # changed since the facts were read
        unreadable = dataclasses.replace(under_check, credential=_unreadable(app, error))
        verdict = credential_verdict(unreadable, now)
        assert verdict is not None  # facts without a key or certificate always fail
        return verdict
    client = make_client(app, settings, credentials, counted=False)
    try:
        answer = await client.send(_probe(app), str(uuid.uuid4()))
    finally:
        await client.close()
    return answer_verdict(under_check, answer, now)


def _unreadable(app: App, error: Exception) -> CredentialFacts:
    if app.auth.token is not None:
        return TokenKeyFacts(str(app.auth.token.key_file), None, problem=str(error))
    return CertificateFacts(None, str(error))


def _endpoint_of(app: App) -> str:
    return app.apns_endpoint().address


def _probe(app: App) -> Notification:
    """One push to a token no phone has, in the app's push type (background must be priority 5)."""
    return Notification(
        app=app.name,
        device_token=secrets.token_hex(PROBE_TOKEN_BYTES),
        payload=PROBE_PAYLOAD,
        push_type=app.push_type,
        priority=5 if app.push_type == "background" else 10,
        expires_at=int(time.time()) + PROBE_TTL_S,
    )
