"""`apns-relay check`: for every configured app, read its credential files and send APNs one push
to a random device token, then print relay.credentials.check's verdict per app; then each Redis
primary's memory policy and limit, and whether there is a spool (exit 1 if any failed)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys

import orjson

from relay.config.schema import App, ConfigError, Settings
from relay.core.redaction import redact_text
from relay.credentials.check import (
    Finding,
    Verdict,
    exit_status,
    spool_finding,
)
from relay.credentials.files import load_settings
from relay.delivery.probe import check_apps
from relay.store.connection import connect
from relay.store.errors import REDIS_ERRORS
from relay.store.memory import RedisMemory, policy_refusal, read_memory
from relay.telemetry.logs import configure_logging

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


def _size(count: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


def memory_finding(memory: RedisMemory) -> Finding:
    """A primary's policy and maxmemory: an evicting policy fails, no maxmemory warns."""
    subject = f"redis {memory.node}"
    if policy_refusal(memory) is not None:
        return Finding(
            subject,
            "FAIL",
            f"maxmemory-policy {memory.policy}: at maxmemory it evicts any key, queued"
            " notifications included, so pushes already acknowledged to GMS would be lost"
            " without a word (api and worker refuse to start on it)",
            "CONFIG SET maxmemory-policy noeviction (and in its configuration file), or a"
            " volatile-* policy, which evicts only history",
        )
    policy = f"maxmemory-policy {memory.policy}"
    if memory.policy.startswith("volatile-"):
        policy += " (evicts only history: keys with a TTL)"
    if memory.max_bytes == 0:
        return Finding(
            subject,
            "warn",
            f"{policy}, maxmemory 0 (unbounded), {_size(memory.used_bytes)} used: Redis then"
            " grows until the host's memory runs out and the kernel's OOM killer ends it,"
            " losing what its last AOF write did not hold",
            "set maxmemory to what the host can give Redis, leaving room for the fork of an"
            " AOF rewrite",
        )
    percent = 100 * memory.used_bytes / memory.max_bytes
    return Finding(
        subject,
        "ok",
        f"{policy}, maxmemory {_size(memory.max_bytes)}, {_size(memory.used_bytes)} used"
        f" ({percent:.0f} %)",
    )
