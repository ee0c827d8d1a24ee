"""`apns-relay check`: for every configured app, read its credential files and send APNs one push
to a random device token, then print relay.check's verdict per app (exit 1 if any failed)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import secrets
import sys
import time
import uuid

import orjson

from relay.check import (
    AppUnderCheck,
    CertificateFacts,
    CredentialFacts,
    TokenKeyFacts,
    Verdict,
    answer_verdict,
    credential_verdict,
    exit_status,
)
from relay.config import App, ConfigError, Settings, load_settings
from relay.credential_files import credential_facts, load_credentials
from relay.logs import configure_logging, redact_text
from relay.model import Notification
from relay.service import make_client

PROBE_TOKEN_BYTES = 32  # a device token as Apple issues them today: 64 hex digits
# Addressed to no phone; kept short-lived anyway (apns-expiration: a minute).
PROBE_PAYLOAD = orjson.dumps({"aps": {"alert": "apns-relay check"}})
PROBE_TTL_S = 60
EXIT_CONFIG = 2


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", help="the relay's YAML configuration (default: $RELAY_CONFIG)", default=None
    )
    parser.add_argument(
        "--app", action="append", help="check only this app (repeatable; default: every app)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document, not lines")
    parser.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds to wait for each app's connection and answer (default 10)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as error:
        for problem in error.problems:
            print(f"config: {redact_text(problem)}", file=sys.stderr)
        return EXIT_CONFIG
    unknown = sorted(set(args.app or ()) - {app.name for app in settings.apps})
    if unknown or not settings.apps:
        named = redact_text(", ".join(unknown) or "(none configured)")
        print(f"config: apps: no app named {named}", file=sys.stderr)
        return EXIT_CONFIG
    # The relay's own lines (a JWT signed, a connection failing) would only repeat the verdict.
    configure_logging(settings.logging.format, "error")
    apps = [app for app in settings.apps if not args.app or app.name in args.app]
    verdicts = asyncio.run(check_apps(settings, apps, args.timeout))
    if args.json:
        document = {
            "ok": exit_status(verdicts) == 0,
            "apps": [dataclasses.asdict(v) for v in verdicts],
        }
        print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        for verdict in verdicts:
            print(verdict.line())
    return exit_status(verdicts)


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
    endpoint = app.apns_endpoint()
    return f"{endpoint.host}:{endpoint.port}"


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
