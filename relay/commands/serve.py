"""`apns-relay serve` (api + worker), `api`, `worker`: the command line, the start-up refusals and
development mode (`serve --dev`), which lives in the development kit (relay_devkit.dev_mode),
imported only when asked for: the one import of relay_devkit the import contract allows."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path

from relay.commands.dev_state import DEV_AUTH_CHOICES, DEV_STATE_DIR
from relay.config.schema import ConfigError, Settings
from relay.core.redaction import redact_text
from relay.credentials.files import load_settings
from relay.runtime import StartupError, serve_role
from relay.telemetry.logs import configure_logging

DEV_ENV = "RELAY_DEV"  # "1" (or true/yes/on): `serve` in development mode, as with --dev
# Exit statuses of a process that does not start: its configuration is wrong (2), or something
# outside it refused (3): the port is taken, Redis turns the relay's credentials away.
EXIT_CONFIG = 2
EXIT_START = 3


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML configuration file (default: $RELAY_CONFIG)")
    parser.add_argument(
        "--dev",
        action="store_true",
        help=f"serve only: development mode (also ${DEV_ENV}=1): start an embedded Valkey, the"
        " APNs simulator and an API token for whatever is not configured",
    )
    parser.add_argument("--host", help="listen address (default: http.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: http.port, 8080)")
    parser.add_argument(
        "--state-dir",
        default=DEV_STATE_DIR,
        help="development mode: where the embedded Valkey and the simulator keep their files",
    )
    parser.add_argument(
        "--grace", type=float, default=10.0, help="seconds in-flight sends get at shutdown"
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="when the process cannot start, print the traceback under the one-line reason",
    )
    if parser.prog.endswith(" serve"):  # the one role with a development mode
        parser.add_argument(
            "--auth",
            choices=DEV_AUTH_CHOICES,
            default="token",
            help="development mode: the simulator app's APNs credentials, a .p8 token key or a "
            "push certificate issued by the simulator (default token)",
        )


def development_requested(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> bool:
    return bool(args.dev) or env.get(DEV_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def missing_settings(settings: Settings, role: str) -> list[str]:
    """What a role cannot run without outside development mode (nothing is filled in there)."""
    missing = []
    if not settings.redis.url:
        missing.append("redis.url (or RELAY_REDIS_URL)")
    if not settings.apps:
        missing.append("apps (at least one app with its APNs credentials)")
    auth = settings.auth
    if role != "worker" and not (auth.api_tokens or auth.basic or auth.scoped):
        missing.append("auth (api_tokens, basic or scoped; or RELAY_API_TOKENS, RELAY_BASIC_AUTH)")
    return missing


def _refuse(message: str, status: int = EXIT_CONFIG, *, debug: bool = False) -> int:
    if debug:  # a traceback quotes values too (a path that is a key, a URL): redacted alike
        print(redact_text(traceback.format_exc()), end="", file=sys.stderr)
    print(f"apns-relay: {redact_text(message)}", file=sys.stderr)
    return status


def _cannot_start(error: ConfigError | StartupError, debug: bool) -> int:
    if isinstance(error, StartupError):
        return _refuse(str(error), EXIT_START, debug=debug)
    # One line, however many problems: a log collector keeps it as one event.
    return _refuse(f"invalid configuration: {'; '.join(error.problems)}", debug=debug)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as error:
        return _cannot_start(error, args.debug)
    debug = args.debug or settings.logging.level == "debug"
    if args.dev and args.command != "serve":
        return _refuse(f"{args.command} --dev: development mode is for `serve` only")
    # RELAY_DEV concerns `serve` alone: an api or worker started from the same shell is unaffected.
    dev_mode = args.command == "serve" and development_requested(args)
    if not dev_mode and (missing := missing_settings(settings, args.command)):
        # One line, before anything starts: production never falls back to a stand-in.
        return _refuse(
            f"not configured: {'; '.join(missing)}. Give them in the config file (--config,"
            " $RELAY_CONFIG) or the environment, or run `apns-relay serve --dev` for"
            " development mode"
        )
    configure_logging(settings.logging.format, settings.logging.level)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    # Only development mode writes files: api and worker run on a read-only root filesystem.
    if not dev_mode:
        try:
            return asyncio.run(serve_role(args.command, settings, args, None))
        except (ConfigError, StartupError) as error:
            return _cannot_start(error, debug)
    try:
        # Imported only here: production processes load nothing of the development kit.
        from relay_devkit import dev_mode as kit
    except ModuleNotFoundError as error:
        if error.name != "relay_devkit":
            raise
        return _refuse(
            "serve --dev: development mode needs the development kit (relay_devkit), which this"
            " installation does not include (the production image leaves it out); run it from"
            " a source checkout (make run)"
        )
    try:
        with kit.development_mode(settings, Path(args.state_dir).resolve(), args.auth) as (
            settings,
            dev,
        ):
            return asyncio.run(serve_role(args.command, settings, args, dev))
    except (ConfigError, StartupError) as error:
        return _cannot_start(error, debug)
    except kit.START_ERRORS as error:
        return _refuse(str(error), debug=debug)
