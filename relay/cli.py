"""The `apns-relay` command: one sub-command per role, each defined in the module that runs it."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol

from relay import __version__

DESCRIPTION = """\
Relay Genesys Mobile Services (GMS) push notifications to iPhones over Apple's APNs. GMS posts to
the relay's /gms/push; the relay queues every push in Redis and delivers it, at least once and in
order per device. Start with `apns-relay serve --dev` (no setup), check your Apple credentials with
`apns-relay check --config relay.yaml`, then run `api` and `worker` in production."""

EPILOG = """\
environment: RELAY_CONFIG (the config file for serve, api, worker, check), RELAY_URL and
RELAY_API_TOKEN (the relay and its bearer token for push and status), RELAY_DEV=1 (serve in
development mode). `apns-relay COMMAND --help` shows a command's options."""


class CommandModule(Protocol):
    def configure(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


# name -> (module holding configure() and run(), one-line help). Imported only when chosen,
# so `apns-relay apns-sim` does not pay for the relay's imports and vice versa, and the
# production roles never load the development kit (relay_devkit), which the image leaves out.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("relay.commands.serve", "api and worker in one process; --dev: development mode"),
    "api": ("relay.commands.serve", "the HTTP ingest and status API"),
    "worker": ("relay.commands.serve", "the delivery loop (serves /healthz, /readyz, /metrics)"),
    "push": (
        "relay.commands.remote",
        "send one notification to a running relay and wait for its fate",
    ),
    "status": ("relay.commands.remote", "queue totals, or one notification's state"),
    "check": (
        "relay.commands.check",
        "for every app: are its APNs credentials, topic and environment right?",
    ),
    "apns-sim": ("relay_devkit.apns_sim.command", "run the APNs simulator (HTTP/2 over TLS)"),
    "gms-sim": (
        "relay_devkit.gms_sim.command",
        "run the GMS simulator (dialogs and push scenarios)",
    ),
    "demo": (
        "relay_devkit.demo",
        "the whole GMS flow with simulators, every hop checked and printed",
    ),
    "bench": ("relay_devkit.bench", "run the benchmark harness (from a source checkout)"),
}


def build_parser(
    chosen: str | None,
) -> tuple[argparse.ArgumentParser, dict[str, CommandModule]]:
    parser = argparse.ArgumentParser(
        prog="apns-relay",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules: dict[str, CommandModule] = {}
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            module: CommandModule = importlib.import_module(module_name)
            module.configure(sub)
            modules[name] = module
    return parser, modules


def development_kit_missing(name: str) -> int:
    print(
        f"apns-relay {name}: this command belongs to the development kit (relay_devkit), which"
        " this installation does not include (the production image leaves it out); run it from"
        " a source checkout (make lint bootstraps one)",
        file=sys.stderr,
    )
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in arguments if a in COMMANDS), None)
    try:
        parser, modules = build_parser(chosen)
    except ModuleNotFoundError as error:
        if chosen is None or error.name != "relay_devkit":
            raise
        return development_kit_missing(chosen)
    args = parser.parse_args(arguments)
    return modules[args.command].run(args)


if __name__ == "__main__":
    raise SystemExit(main())
