"""`apns-relay gms-sim`: serve the GMS simulator and optionally push one scenario to the relay."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys

import aiohttp

from relay_devkit.gms_sim.dialogs import CONNECT_MODES
from relay_devkit.gms_sim.push import CustomHttpPusher, basic_authorization
from relay_devkit.gms_sim.scenarios import SCENARIOS, ScenarioOptions
from relay_devkit.gms_sim.server import DEFAULT_URL_PATH, GmsSimServer, GmsSimulator


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (0 = any free)")
    parser.add_argument("--url-path", default=DEFAULT_URL_PATH, help="GMS service API path")
    parser.add_argument(
        "--ext-url-base",
        help="$(ExtURLBase) in dialogs (default: http://<Host header>/genesys of each request)",
    )
    parser.add_argument("--relay-url", help="the relay's base URL; pushes go to <URL>/gms/push")
    parser.add_argument("--basic-auth", metavar="USER:PASS", help="Basic credentials for pushes")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), help="push this scenario once")
    parser.add_argument("--device-id", help="deviceId to push to: <token hex> or <app>:<token hex>")
    parser.add_argument(
        "--message-as-string", action="store_true", help="send `message` as a JSON-encoded string"
    )
    parser.add_argument(
        "--connect-mode",
        choices=CONNECT_MODES,
        default="outbound",
        help="which connect dialog Yes answers with: the agent calls (outbound) or the user"
        " calls in (inbound); default outbound",
    )
    parser.add_argument("--gms-user", default="", help="$(GMSUser) for the scenario's service")
    parser.add_argument(
        "--once", action="store_true", help="exit after the scenario instead of serving on"
    )


def _usage_problem(args: argparse.Namespace) -> str | None:
    if args.scenario and not (args.relay_url and args.device_id):
        return "--scenario needs --relay-url and --device-id"
    if args.basic_auth is not None and ":" not in args.basic_auth:
        return "--basic-auth: must be USER:PASS (a colon separates them)"
    if args.once and not args.scenario:
        return "--once needs --scenario"
    return None


def run(args: argparse.Namespace) -> int:
    problem = _usage_problem(args)
    if problem:
        print(f"apns-relay gms-sim: {problem}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(args))


def _emit(record: dict[str, object]) -> None:
    print(json.dumps(record), flush=True)


async def _serve(args: argparse.Namespace) -> int:
    simulator = GmsSimulator(
        url_path=args.url_path,
        ext_url_base=args.ext_url_base,
        message_as_string=args.message_as_string,
    )
    # Installed before the ready line, so a supervisor's SIGTERM right after it exits cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with (
        aiohttp.ClientSession() as session,
        GmsSimServer(simulator, args.host, args.port) as server,
    ):
        _emit({"gms_sim": server.base_url, "url_path": simulator.url_path})
        if args.relay_url:
            user, _, password = (args.basic_auth or "").partition(":")
            simulator.pusher = CustomHttpPusher(
                session,
                args.relay_url,
                basic_authorization(user, password) if args.basic_auth else None,
            )
        if args.scenario:
            options = ScenarioOptions(args.device_id, args.connect_mode, args.gms_user)
            result = await SCENARIOS[args.scenario](simulator, options)
            pushes = [
                {"message": push.message, **({"error": push.error} if push.error else {})}
                for push in result.pushes
            ]
            _emit({"scenario": args.scenario, "service_id": result.service_id, "pushes": pushes})
            if result.failures:
                return 1
            if args.once:
                return 0
        with contextlib.suppress(asyncio.CancelledError):
            await stop.wait()
    return 0
