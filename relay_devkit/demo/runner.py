"""The demo's runner: the whole stack in this process, the scenarios in turn, the command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

import aiohttp

from relay.commands.dev_state import DEV_AUTH_CHOICES
from relay.config.schema import Settings
from relay.runtime import run_relay
from relay.telemetry.logs import configure_logging
from relay_devkit.apns_sim.command import Simulator, SimulatorOptions
from relay_devkit.apns_sim.info import SimInfo
from relay_devkit.demo.callbacks import (
    callback_cancel,
    callback_confirm,
    callback_inbound,
    callback_snooze,
    callback_timeout,
)
from relay_devkit.demo.chat import chat
from relay_devkit.demo.flow import DEMO_APP, DEMO_CIRCUIT, GMS_BASIC_USER, FlowEnds, flow_ends
from relay_devkit.demo.live_activity import callback_live_activity
from relay_devkit.demo.receipts import report_receipts
from relay_devkit.demo.report import SOURCE_LABELS, DemoReport
from relay_devkit.dev_mode import simulator_app
from relay_devkit.embedded import EmbeddedServer
from relay_devkit.gms_sim.push import basic_authorization
from relay_devkit.gms_sim.server import GmsSimServer, GmsSimulator

Scenario = Callable[[FlowEnds, DemoReport], Awaitable[None]]

DEMO_SCENARIOS: Mapping[str, Scenario] = {
    "callback-confirm": callback_confirm,
    "callback-snooze": callback_snooze,
    "callback-cancel": callback_cancel,
    "callback-timeout": callback_timeout,
    "callback-inbound": callback_inbound,
    "chat": chat,
    "callback-live-activity": callback_live_activity,
}


# ---- the whole stack in this process ----


def demo_settings(redis_url: str, simulator: SimInfo, basic: str, auth: str = "token") -> Settings:
    app = simulator_app(simulator, auth).model_dump(mode="json")
    app.update(DEMO_APP)
    app["receipts"] = {"secret": secrets.token_hex(32)}
    if auth == "token":  # Apple takes Live Activity pushes only from token auth
        app["live_activity"] = {"dismiss_after_s": 2}  # dismissed within the demo's step
    return Settings.model_validate(
        {
            "redis": {"url": redis_url},
            "auth": {"basic": [basic]},
            "retry": {"base_ms": 20, "cap_ms": 500},
            "delivery": {"request_timeout_seconds": 2.0},
            "circuit": dict(DEMO_CIRCUIT),
            "apps": [app],
        }
    )


@contextlib.asynccontextmanager
async def relay_in_loop(settings: Settings) -> AsyncIterator[str]:
    """The relay's api and worker in this event loop; yields the api's URL."""
    async with run_relay(settings, grace_s=2.0) as relay:
        yield relay.url


async def run_demo(
    scenarios: Sequence[str],
    state_dir: Path,
    out: TextIO | None,
    auth: str = "token",
    receipt_loss: float = 0.0,
) -> DemoReport:
    """Start everything, run `scenarios` in turn and return the transcript with its checks."""
    report = DemoReport(out=out)
    password = secrets.token_urlsafe(12)
    with EmbeddedServer(data_dir=state_dir / "valkey") as valkey:
        async with Simulator(SimulatorOptions(state_dir=state_dir / "apns-sim")) as simulator:
            info = SimInfo.from_document(simulator.info)
            settings = demo_settings(valkey.url, info, f"{GMS_BASIC_USER}:{password}", auth)
            async with (
                relay_in_loop(settings) as relay_url,
                GmsSimServer(GmsSimulator()) as gms,
                aiohttp.ClientSession() as session,
            ):
                relay_app = settings.apps[0]
                ends = await flow_ends(
                    session,
                    relay_url=relay_url,
                    authorization=basic_authorization(GMS_BASIC_USER, password),
                    control_url=info.control_url,
                    relay_app=relay_app,
                    gms=gms,
                    receipt_loss=receipt_loss,
                )
                report.note("apns-relay demo: the GMS flow end to end, times since the start")
                report.note(f"Valkey (embedded)  {valkey.url}")
                environment = relay_app.environment
                report.note(
                    f"APNs simulator     https://{info.host}:{info.port_of(environment)}"
                    f"  {environment} ({auth} auth)"
                )
                report.note(f"relay              {relay_url}  (GMS pushes to /gms/push)")
                report.note(f"GMS simulator      {gms.base_url}{gms.simulator.url_path}")
                token = ends.phone.token
                report.note(f"phone              device token {token[:16]}... (registered)")
                try:
                    for name in scenarios:
                        try:
                            await DEMO_SCENARIOS[name](ends, report)
                        except (TimeoutError, aiohttp.ClientError, RuntimeError) as error:
                            report.check(
                                f"{name} ran to its end", False, str(error), source="relay"
                            )
                    await report_receipts(ends, report)
                finally:
                    await ends.phone.close()
    return report


# ---- command line ----


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(DEMO_SCENARIOS),
        help="run only this scenario (repeatable; default: all of them)",
    )
    parser.add_argument(
        "--state-dir",
        help="keep Valkey's and the simulator's files here (default: a temporary dir)",
    )
    parser.add_argument(
        "--receipt-loss",
        type=float,
        default=0.0,
        help="share of delivery receipts the phone never posts, 0 to 1 (default: 0)",
    )
    parser.add_argument(
        "--auth",
        choices=DEV_AUTH_CHOICES,
        default="token",
        help="the relay's APNs credentials: a .p8 token key or a push certificate (.pem)",
    )


def run(args: argparse.Namespace) -> int:
    configure_logging("auto", "warning")
    scenarios = args.scenario or list(DEMO_SCENARIOS)
    with contextlib.ExitStack() as stack:
        state_dir = (
            Path(args.state_dir)
            if args.state_dir
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="apns-relay-demo-")))
        )
        report = asyncio.run(
            run_demo(scenarios, state_dir.resolve(), sys.stdout, args.auth, args.receipt_loss)
        )
    failures = report.failures
    print(
        f"\n{len(report.checks) - len(failures)} of {len(report.checks)} checks passed"
        f" over {len(report.hops)} hops: " + ("every check held" if not failures else "FAILED"),
        flush=True,
    )
    for source, count in report.by_source().items():
        print(f"  [{source}] {count} checks against {SOURCE_LABELS[source]}", flush=True)
    for failure in failures:
        print(f"  FAIL {failure.name}: {failure.detail}", file=sys.stderr)
    return 0 if not failures else 1
