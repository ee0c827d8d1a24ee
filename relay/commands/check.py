"""`apns-relay check`: for every configured app, read its credential files and send APNs one push
to a random device token, then print relay.credentials.check's verdict per app; then each Redis
primary's memory policy and limit, and whether there is a spool (exit 1 if any failed)."""

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

from relay.config.schema import App, ConfigError, Settings, load_settings
from relay.core.model import Notification
from relay.credentials.check import (
    AppUnderCheck,
    CertificateFacts,
    CredentialFacts,
    Finding,
    TokenKeyFacts,
    Verdict,
    answer_verdict,
    credential_verdict,
    exit_status,
    memory_finding,
    spool_finding,
)
from relay.credentials.files import credential_facts, load_credentials
from relay.runtime import make_client
from relay.store.connection import connect
from relay.store.errors import REDIS_ERRORS
from relay.store.memory import read_memory
from relay.telemetry.logs import configure_logging, redact_text

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
    verdicts, findings = asyncio.run(check_all(settings, apps, args.timeout))
    status = exit_status(verdicts, findings)
    if args.json:
        document = {
            "ok": status == 0,
            "apps": [dataclasses.asdict(v) for v in verdicts],
            "findings": [dataclasses.asdict(f) for f in findings],
        }
        print(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        for line in (*(v.line() for v in verdicts), *(f.line() for f in findings)):
            print(line)
    return status


async def check_all(
    settings: Settings, apps: list[App], timeout_s: float
) -> tuple[list[Verdict], list[Finding]]:
    verdicts, redis = await asyncio.gather(
        check_apps(settings, apps, timeout_s), check_redis(settings, timeout_s)
    )
    return verdicts, [*redis, spool_finding(settings.ingest.spool_dir)]


async def check_redis(settings: Settings, timeout_s: float) -> list[Finding]:
    """Each primary's memory policy and limit (an unreachable Redis fails the check)."""
    if not settings.redis.url:
        return [Finding("redis", "warn", "redis.url is unset: its memory policy is not checked")]
    client = connect(settings.redis)
    try:
        memories = await asyncio.wait_for(read_memory(client), timeout_s)
    except REDIS_ERRORS as error:  # TimeoutError among them (an OSError)
        return [
            Finding(
                "redis",
                "FAIL",
                f"unreachable: {error or 'no answer in time'}",
                "check redis.url and that this host may reach it",
            )
        ]
    finally:
        await client.aclose()
    return [memory_finding(memory) for memory in memories]


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
