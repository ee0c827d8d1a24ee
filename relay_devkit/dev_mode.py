"""Development mode (`apns-relay serve --dev`): whatever production would configure and is
missing (Redis, an app with APNs credentials, an API token) is started or made here, and said
loudly. relay.commands.serve imports this module only when development mode is asked for."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog
from pydantic import SecretStr

from relay.commands.dev_state import DEV_JSON
from relay.config.schema import App, ConfigError, Settings
from relay_devkit.apns_sim.info import SIM_JSON, SimInfo
from relay_devkit.apns_sim.push_certificates import PushCertificateAuthority
from relay_devkit.embedded import EmbeddedServer, EmbeddedServerError

log = structlog.get_logger("relay.runtime")

DEV_APP = "dev"
DEV_TOPIC = "com.example.gms"
SIMULATOR_START_TIMEOUT_S = 20.0
VALKEY_WATCH_S = 0.5  # how often development mode looks whether its Valkey is still running
DEV_CERTIFICATE = "dev-app.pem"
# What development mode can fail to start with, besides a ConfigError.
START_ERRORS: tuple[type[Exception], ...] = (EmbeddedServerError,)


@dataclass
class DevEnvironment:
    state_dir: Path
    valkey: EmbeddedServer | None = None
    simulator: subprocess.Popen[bytes] | None = None
    simulator_info: SimInfo | None = None
    api_token: str | None = None

    def announce(self, settings: Settings, relay_url: str) -> None:
        """Write dev.json (what `apns-relay push`/`status` read) and print the API token."""
        path = write_dev_json(self, settings, relay_url)
        if self.api_token:
            print(
                f"\n  relay     {relay_url}\n  api token {self.api_token}\n  (also in {path})\n",
                file=sys.stderr,
                flush=True,
            )

    async def watch(self) -> None:
        """Returns only when a part development mode started has failed for good."""
        if self.valkey is None:
            await asyncio.Event().wait()  # nothing to watch: runs until cancelled
        else:
            await supervise_valkey(self.valkey)

    def close(self) -> None:
        if self.simulator is not None and self.simulator.poll() is None:
            self.simulator.send_signal(signal.SIGTERM)
            try:
                self.simulator.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.simulator.kill()
        if self.valkey is not None:
            self.valkey.stop()


def start_simulator(state_dir: Path) -> tuple[subprocess.Popen[bytes], SimInfo]:
    """The APNs simulator as a child process; returns once its sim.json is written."""
    (state_dir / SIM_JSON).unlink(missing_ok=True)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "relay.cli",
            "apns-sim",
            "--port",
            "0",
            "--control-port",
            "0",
            "--state-dir",
            str(state_dir),
        ],
        stdin=subprocess.DEVNULL,
    )
    try:
        info = SimInfo.wait_for(
            state_dir, SIMULATOR_START_TIMEOUT_S, alive=lambda: process.poll() is None
        )
    except (RuntimeError, TimeoutError) as error:
        process.kill()
        raise ConfigError([f"the APNs simulator did not start: {error}"]) from None
    return process, info


def simulator_app(info: SimInfo, auth: str = "token") -> App:
    """The development app, sending to the simulator with a token key or a push certificate."""
    credentials: dict[str, Any]
    if auth == "certificate":
        credentials = {"certificate": {"cert_file": simulator_certificate(info)}}
    else:
        credentials = {
            "token": {"key_file": info.key_file, "key_id": info.key_id, "team_id": info.team_id}
        }
    return App.model_validate(
        {
            "name": DEV_APP,
            "topic": DEV_TOPIC,
            "environment": "sandbox",
            "default": True,
            "auth": credentials,
            "endpoint": {
                "host": "127.0.0.1",
                "port": info.port_of("sandbox"),
                "ca_file": info.ca,
            },
        }
    )


def simulator_certificate(info: SimInfo) -> Path:
    """A universal sandbox push certificate for DEV_TOPIC from the simulator's push CA (kept
    beside its ca.pem), written as PEM next to it."""
    state_dir = info.ca.parent
    issued = PushCertificateAuthority.in_directory(state_dir).issue(DEV_TOPIC, voip=True)
    path = state_dir / DEV_CERTIFICATE
    path.touch(mode=0o600)
    path.write_bytes(issued.pem())
    return path


@contextlib.contextmanager
def development_mode(
    settings: Settings, state_dir: Path, auth: str = "token"
) -> Iterator[tuple[Settings, DevEnvironment]]:
    """Fill in what production would configure: Redis, an app, an API token."""
    dev = DevEnvironment(state_dir)
    try:
        if not settings.redis.url:
            state_dir.mkdir(parents=True, exist_ok=True)
            dev.valkey = EmbeddedServer(data_dir=state_dir / "valkey").start()
            settings = settings.model_copy(
                update={"redis": settings.redis.model_copy(update={"url": dev.valkey.url})}
            )
            log.warning(
                "DEVELOPMENT MODE: embedded Valkey started",
                url=dev.valkey.url,
                pid=dev.valkey.pid,
                binary=dev.valkey.binary.origin,
                data_dir=str(dev.valkey.data_dir),
            )
        if not settings.apps:
            dev.simulator, dev.simulator_info = start_simulator(state_dir / "apns-sim")
            app = simulator_app(dev.simulator_info, auth)
            settings = settings.model_copy(update={"apps": [app]})
            log.warning(
                "DEVELOPMENT MODE: no app configured, delivering to the APNs simulator",
                app=DEV_APP,
                topic=DEV_TOPIC,
                auth=auth,
                port=dev.simulator_info.port,
                control_port=dev.simulator_info.control_port,
            )
        if not settings.auth.api_tokens and not settings.auth.basic:
            state_dir.mkdir(parents=True, exist_ok=True)  # dev.json holds the token
            dev.api_token = secrets.token_urlsafe(24)
            settings = settings.model_copy(
                update={
                    "auth": settings.auth.model_copy(
                        update={"api_tokens": [SecretStr(dev.api_token)]}
                    )
                }
            )
        yield settings, dev
    finally:
        dev.close()


def write_dev_json(dev: DevEnvironment, settings: Settings, relay_url: str) -> Path:
    path = dev.state_dir / DEV_JSON
    app = settings.app(None)
    path.write_bytes(
        orjson.dumps(
            {
                "relay_url": relay_url,
                "api_token": dev.api_token,
                "app": app.name,
                "topic": app.topic,
                "apns_sim": dev.simulator_info.document() if dev.simulator_info else None,
            },
            option=orjson.OPT_INDENT_2,
        )
    )
    return path


async def supervise_valkey(valkey: EmbeddedServer) -> None:
    """Development mode's Valkey is a child process: when it dies (a crash, kill -9) it is reaped
    and started again on the same port with the same data (its AOF). Returns only when it cannot
    be started again, which ends the relay with a failing status."""
    while True:
        await asyncio.sleep(VALKEY_WATCH_S)
        status = valkey.exit_status()
        if status is None:
            continue
        log.warning(
            "DEVELOPMENT MODE: embedded Valkey exited", exit_status=status, port=valkey.port
        )
        try:
            await asyncio.to_thread(valkey.start)
        except EmbeddedServerError as error:
            log.error("DEVELOPMENT MODE: embedded Valkey cannot be restarted", error=str(error))
            return
        log.warning(
            "DEVELOPMENT MODE: embedded Valkey restarted",
            url=valkey.url,
            pid=valkey.pid,
            data_dir=str(valkey.data_dir),
        )
