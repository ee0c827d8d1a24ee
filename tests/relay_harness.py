"""Test helpers: a whole relay (api + worker) in this loop or as processes, and the simulator."""

from __future__ import annotations

import base64
import contextlib
import signal
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from eventually import eventually, eventually_blocking
from simulator import ControlClient, SimInfo, control_client, running_simulator

from relay.config.schema import App, Settings
from relay.delivery.worker import DeliveryWorker
from relay.http.state import RelayState
from relay.runtime import run_relay
from relay.store.queue import RelayQueue
from relay_devkit.dev_mode import simulator_app
from relay_devkit.embedded import free_port

API_TOKEN = "test-token-0123456789"
OPERATOR_TOKEN = "test-operator-token-0123456789"  # the only kind that may call the check route
BASIC = ("gms", "gms-secret")
WAIT_S = 20.0


def relay_document(redis_url: str, info: SimInfo, **sections: Any) -> dict[str, Any]:
    """Configuration for a relay aimed at the simulator, fast retries; `sections` override."""
    app = simulator_app(info).model_dump(mode="json")
    app.update(sections.pop("app", {}))
    document: dict[str, Any] = {
        "redis": {"url": redis_url},
        "auth": {
            "api_tokens": [API_TOKEN],
            "basic": [":".join(BASIC)],
            "operator_tokens": [OPERATOR_TOKEN],
        },
        "retry": {"base_ms": 20, "cap_ms": 200, "max_attempts": 5},
        "delivery": {"request_timeout_seconds": 1.0, "pause_probe_seconds": 1},
        "logging": {"format": "json"},
        "apps": [app],
    }
    for section, values in sections.items():
        document[section] = {**document.get(section, {}), **values}
    return document


async def app_tokens(control: ControlClient, app: App, count: int) -> list[str]:
    """Device tokens the simulator issued for `app`'s topic and environment, as phones get
    theirs from APNs: the one way a test gets a token the strict simulator accepts."""
    return await control.issue_tokens(count, app.topic, app.environment)


def relay_settings(redis_url: str, info: SimInfo, **sections: Any) -> Settings:
    return Settings.model_validate(relay_document(redis_url, info, **sections))


def basic_authorization() -> str:
    return "Basic " + base64.b64encode(":".join(BASIC).encode()).decode()


@dataclass
class RelayHarness:
    url: str
    settings: Settings
    queue: RelayQueue
    worker: DeliveryWorker
    state: RelayState
    session: aiohttp.ClientSession
    sim: SimInfo
    control: ControlClient
    receipts_url: str | None = None  # http.receipts_port's listener, when configured

    async def call(
        self, method: str, path: str, body: Any = None, *, auth: str | None = "bearer", **kw: Any
    ) -> tuple[int, Any, Any]:
        headers = dict(kw.pop("headers", {}))
        if auth == "bearer":
            headers["Authorization"] = f"Bearer {API_TOKEN}"
        elif auth == "basic":
            headers["Authorization"] = basic_authorization()
        elif auth == "operator":
            headers["Authorization"] = f"Bearer {OPERATOR_TOKEN}"
        if body is not None and not isinstance(body, bytes | str):
            kw["json"] = body
        elif body is not None:
            kw["data"] = body
            headers.setdefault("Content-Type", "application/json")  # aiohttp: octet-stream
        async with self.session.request(method, self.url + path, headers=headers, **kw) as r:
            raw = await r.read()
            try:
                parsed: Any = await r.json(content_type=None)
            except ValueError:
                parsed = raw.decode(errors="replace")
            return r.status, parsed, r.headers

    async def device_tokens(self, count: int, app: str | None = None) -> list[str]:
        """Tokens issued for the app (default: the first); see app_tokens."""
        config = next(a for a in self.settings.apps if app in (None, a.name))
        return await app_tokens(self.control, config, count)

    async def device_token(self, app: str | None = None) -> str:
        return (await self.device_tokens(1, app))[0]

    async def gms_push(self, device_id: str, message: Any) -> tuple[int, Any, Any]:
        return await self.call(
            "POST", "/gms/push", {"deviceId": device_id, "message": message}, auth="basic"
        )

    async def notify(self, **body: Any) -> str:
        status, answer, _ = await self.call("POST", "/v1/notifications", body)
        assert status == 202, answer
        return str(answer["id"])

    async def wait_state(
        self, notification_id: str, states: Collection[str], timeout_s: float = WAIT_S
    ) -> dict[str, Any]:
        async def reached() -> dict[str, Any] | None:
            status, body, _ = await self.call("GET", f"/v1/notifications/{notification_id}")
            return dict(body) if status == 200 and body["state"] in states else None

        return await eventually(
            reached, timeout_s=timeout_s, what=f"{notification_id} to reach {sorted(states)}"
        )

    async def received(
        self, token: str | None = None, count: int = 1, timeout_s: float = WAIT_S
    ) -> list[dict[str, Any]]:
        """What the simulator accepted (for `token`), once there are at least `count`."""

        async def accepted() -> list[dict[str, Any]] | None:
            records = (await self.control.notifications(token=token))["notifications"]
            return list(records) if len(records) >= count else None

        return await eventually(
            accepted, timeout_s=timeout_s, what=f"the simulator to accept {count} for {token}"
        )


@contextlib.asynccontextmanager
async def running_relay(
    redis_url: str, state_dir: Path, *, sim_options: dict[str, Any] | None = None, **sections: Any
) -> AsyncIterator[RelayHarness]:
    async with running_simulator(state_dir / "sim", **(sim_options or {})) as info:
        settings = relay_settings(redis_url, info, **sections)
        async with (
            run_relay(settings, grace_s=2.0) as relay,
            aiohttp.ClientSession() as session,
            control_client(info) as control,
        ):
            assert relay.worker is not None
            yield RelayHarness(
                relay.url,
                settings,
                relay.queue,
                relay.worker,
                relay.state,
                session,
                info,
                control,
                relay.receipts_url,
            )


def write_config(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(document))
    return path


@dataclass
class RelayProcess:
    """One `apns-relay <role>` process; `url` answers once /healthz does."""

    role: str
    process: subprocess.Popen[bytes]
    url: str
    log_file: Path

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=30)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


def start_relay_process(role: str, config: Path, log_dir: Path) -> RelayProcess:
    port = free_port()
    log_file = log_dir / f"{role}-{port}.log"
    with log_file.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", role, "--config", str(config), "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    relay = RelayProcess(role, process, f"http://127.0.0.1:{port}", log_file)

    def healthy() -> bool:
        if process.poll() is not None:
            raise ProcessLookupError(f"{role} exited {process.returncode}: {relay.log()}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(relay.url + "/healthz", timeout=1),
        ):
            return True
        return False

    try:
        eventually_blocking(healthy, timeout_s=WAIT_S, interval_s=0.05, what=f"{role} healthy")
    except ProcessLookupError as exited:
        raise AssertionError(str(exited)) from None
    except AssertionError as error:
        relay.kill()
        raise AssertionError(f"{error}: {relay.log()}") from None
    return relay


@contextlib.contextmanager
def relay_processes(*roles: str, config: Path, log_dir: Path) -> Iterator[list[RelayProcess]]:
    started = [start_relay_process(role, config, log_dir) for role in roles]
    try:
        yield started
    finally:
        for relay in started:
            relay.kill(signal.SIGTERM)
