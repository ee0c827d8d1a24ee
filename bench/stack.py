"""The system under test, each part its own process: Valkey, APNs simulator, relay api/workers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.processes import (
    CpuLedger,
    Tracked,
    http_ok,
    python_argv,
    start_process,
    wait_until,
)
from relay_devkit.apns_sim.info import SimInfo
from relay_devkit.dev_mode import simulator_app
from relay_devkit.embedded import EmbeddedServer, free_port

TOPIC = "com.example.gms.bench"
APP = "bench"
API_TOKEN = "bench-api-token"
START_TIMEOUT_S = 60.0
LOG_LEVEL = "info"
# Valkey as production runs it: AOF on, fsync once a second (the relay's durability promise).
VALKEY_ARGS = ("--appendonly", "yes", "--appendfsync", "everysec")


def sim_target(sim: SimInfo) -> dict[str, Any]:
    """What a load generator needs to send to the simulator."""
    return {**sim.document(), "topic": TOPIC}


def start_valkey(ledger: CpuLedger, work_dir: Path) -> tuple[EmbeddedServer, Tracked]:
    server = EmbeddedServer(data_dir=work_dir / "valkey", extra_args=VALKEY_ARGS).start()
    assert server.process is not None
    return server, ledger.add(Tracked("valkey", "valkey", server.process.pid))


def start_simulator(
    ledger: CpuLedger, work_dir: Path, workers: int, log_limit: int
) -> tuple[SimInfo, Tracked]:
    state_dir = work_dir / "apns-sim"
    state_dir.mkdir(parents=True, exist_ok=True)
    sim_json = state_dir / "sim.json"
    sim_json.unlink(missing_ok=True)
    tracked = ledger.add(
        start_process(
            "simulator",
            "simulator",
            python_argv(
                "-m",
                "relay.cli",
                "apns-sim",
                "--state-dir",
                str(state_dir),
                "--workers",
                str(workers),
                "--log-limit",
                str(log_limit),
                # The load generator makes up its device tokens: the simulator accepts any
                # well-formed one. Every other rule (stream limits, environments) stays Apple's.
                "--tokens",
                "open",
            ),
            work_dir / "logs" / "apns-sim.log",
        )
    )
    wait_until(sim_json.exists, tracked, START_TIMEOUT_S, "sim.json")
    return SimInfo.from_file(sim_json), tracked


def write_relay_config(
    path: Path, redis_url: str, sim: SimInfo, max_connections: int, batch_size: int
) -> Path:
    document = {
        "redis": {"url": redis_url},
        "auth": {"api_tokens": [API_TOKEN], "basic": []},
        # Generous caps: the benchmark measures speed, not refusals.
        "queue": {"max_per_device": 1000, "max_pending": 2_000_000},
        "delivery": {"batch_size": batch_size},
        # Production settings: every process's JSON log lines go to its log file (stdout is
        # redirected there) at the level a deployment runs, so their cost is in the figures.
        "logging": {"format": "json", "level": LOG_LEVEL},
        "apps": [
            {
                **simulator_app(sim).model_dump(mode="json", exclude_defaults=True),
                "name": APP,
                "topic": TOPIC,
                "max_connections": max_connections,
            }
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@dataclass
class Relay:
    """The relay's api process and its worker processes, started and stopped one by one."""

    ledger: CpuLedger
    config: Path
    log_dir: Path
    api: Tracked | None = None
    api_url: str = ""
    workers: list[Tracked] = field(default_factory=list)
    started_workers: int = 0
    metrics_urls: dict[str, str] = field(default_factory=dict)  # by process name
    # Told of each process once it answers /healthz (--profile attaches to it then).
    on_start: Callable[[Tracked, str], None] | None = None

    def processes(self) -> list[tuple[Tracked, str]]:
        """The running api and workers, each with its /metrics URL."""
        running = [self.api] if self.api is not None and self.api.exit_code is None else []
        return [(p, self.metrics_urls[p.name]) for p in [*running, *self.workers]]

    def start_api(self) -> None:
        port = free_port()
        self.api = self.ledger.add(self._start("api", "relay-api", "relay-api", port))
        self.api_url = f"http://127.0.0.1:{port}"
        wait_until(http_ok(self.api_url + "/healthz"), self.api, START_TIMEOUT_S, "/healthz")
        self._started(self.api, port)

    def start_workers(self, count: int) -> list[Tracked]:
        """Start `count` workers at once, then wait until every one answers /healthz."""
        started = []
        for _ in range(count):
            self.started_workers += 1
            port = free_port()
            name = f"relay-worker-{self.started_workers}"
            started.append(
                (self.ledger.add(self._start("worker", "relay-worker", name, port)), port)
            )
        for worker, port in started:
            wait_until(
                http_ok(f"http://127.0.0.1:{port}/healthz"), worker, START_TIMEOUT_S, "/healthz"
            )
            self._started(worker, port)
        self.workers.extend(worker for worker, _ in started)
        return [worker for worker, _ in started]

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []

    def stop(self) -> None:
        self.stop_workers()
        if self.api is not None:
            self.api.stop()

    def _started(self, tracked: Tracked, port: int) -> None:
        self.metrics_urls[tracked.name] = f"http://127.0.0.1:{port}/metrics"
        if self.on_start is not None:
            self.on_start(tracked, self.metrics_urls[tracked.name])

    def _start(self, command: str, role: str, name: str, port: int) -> Tracked:
        return start_process(
            role,
            name,
            python_argv(
                "-m", "relay.cli", command, "--config", str(self.config), "--port", str(port)
            ),
            self.log_dir / f"{name}.log",
        )
