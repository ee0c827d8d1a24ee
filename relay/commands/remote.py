"""Commands that talk to a running relay over its API: `push` and `status`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from relay.commands.dev_state import DEV_JSON, DEV_STATE_DIR
from relay.core.model import FINAL_STATES

POLL_INTERVAL_S = 0.1


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--relay-url",
        default=os.environ.get("RELAY_URL"),
        help="the relay's base URL (default: $RELAY_URL, else the development dev.json)",
    )
    parser.add_argument(
        "--api-token",
        default=os.environ.get("RELAY_API_TOKEN"),
        help="the relay API's bearer token, not the device's (default: $RELAY_API_TOKEN, else the"
        " development dev.json)",
    )
    parser.add_argument(
        "--state-dir",
        default=DEV_STATE_DIR,
        help=f"where `serve --dev` wrote {DEV_JSON}, read when no URL or token is given"
        f" (default {DEV_STATE_DIR})",
    )
    if parser.prog.endswith("push"):
        parser.add_argument(
            "--device",
            "--token",  # its first name, kept so that scripts written for it still run
            dest="device",
            required=True,
            metavar="HEX",
            help="the phone's APNs device token, 64 (or more) hex digits; `--token` is an alias",
        )
        parser.add_argument(
            "--service-id", required=True, help="the GMS service id the push is about"
        )
        parser.add_argument(
            "--action",
            required=True,
            help="what happened, e.g. wait-for-agent or connect-inbound; picks the app's template",
        )
        parser.add_argument(
            "--app", help="which configured app sends it (default: the default one)"
        )
        parser.add_argument("--alert", help="alert text (default: the app's template)")
        parser.add_argument("--ttl", type=int, help="seconds APNs may hold it for an offline phone")
        parser.add_argument(
            "--wait", type=float, default=30.0, help="seconds to wait for a final state"
        )
    else:
        parser.add_argument("id", nargs="?", help="a notification id (default: queue totals)")


def run(args: argparse.Namespace) -> int:
    url, token = _relay(args)
    if args.command == "push":
        return asyncio.run(_push(url, token, args))
    return asyncio.run(_status(url, token, args.id))


def _relay(args: argparse.Namespace) -> tuple[str, str]:
    url, token = args.relay_url, args.api_token
    dev_json = Path(args.state_dir) / DEV_JSON
    if (not url or not token) and dev_json.exists():
        dev = orjson.loads(dev_json.read_bytes())
        url = url or dev["relay_url"]
        token = token or dev["api_token"]
    if not url or not token:
        sys.exit("no relay: pass --relay-url and --api-token (or run `apns-relay serve` first)")
    return url.rstrip("/"), token


def _print(body: Any) -> None:
    print(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())


async def _push(url: str, token: str, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "device_token": args.device,
        "service_id": args.service_id,
        "action": args.action,
    }
    for key in ("app", "alert", "ttl"):
        if getattr(args, key) is not None:
            body[key] = getattr(args, key)
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(f"{url}/v1/notifications", json=body) as response:
            answer = await response.json(content_type=None)
            if response.status != 202:
                _print(answer)
                return 1
        deadline = time.monotonic() + args.wait
        while True:
            async with session.get(f"{url}{answer['status_url']}") as response:
                status = await response.json(content_type=None)
            if status.get("state") in FINAL_STATES or time.monotonic() > deadline:
                _print(status)
                return 0 if status.get("state") == "delivered" else 1
            await asyncio.sleep(POLL_INTERVAL_S)


async def _status(url: str, token: str, notification_id: str | None) -> int:
    path = f"/v1/notifications/{notification_id}" if notification_id else "/v1/queue"
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session,
        session.get(f"{url}{path}") as response,
    ):
        _print(await response.json(content_type=None))
        return 0 if response.status == 200 else 1
