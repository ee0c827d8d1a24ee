"""The benchmark's phases, run in one invocation against one set of processes, so ratios hold."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import statistics
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench.processes import (
    REPO_ROOT,
    CpuLedger,
    RssSampler,
    Tracked,
    python_argv,
    start_process,
    wait_until,
)
from bench.profile import Profiler, ProfileSession, commandstats
from bench.stack import API_TOKEN, Relay, sim_target
from relay.store.queued import QUEUED_LAYOUT
from relay_devkit.apns_sim.info import SimInfo

NODE_DIR = REPO_ROOT / "bench" / "node"
NODE_WORK_DIR = REPO_ROOT / "bench" / ".work" / "node"
WRK_SCRIPT = REPO_ROOT / "bench" / "wrk" / "gms_push.lua"
DELIVERY_POLL_S = 0.05
LOADGEN_TIMEOUT_S = 600.0

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Plan:
    """How much of everything: full mode takes ~5-10 minutes, quick mode seconds."""

    n: int
    grid: tuple[tuple[int, int], ...]  # raw aioapns (concurrency, connections) tried
    devices: int
    single_n: int
    single_connections: int
    wrk_seconds: float
    batch_n: int
    batch_size: int
    batch_connections: int
    latency_rate: float
    latency_s: float
    idle_s: float
    backlog_n: int
    scale_n: int
    delivery_timeout_s: float

    @classmethod
    def full(cls) -> Plan:
        return cls(
            n=20_000,
            grid=((100, 1), (300, 1), (300, 2), (1000, 2), (1000, 4)),
            devices=10_000,
            single_n=20_000,
            single_connections=64,
            wrk_seconds=10.0,
            batch_n=50_000,
            batch_size=1000,
            batch_connections=4,
            latency_rate=500.0,
            latency_s=30.0,
            idle_s=30.0,
            backlog_n=200_000,
            scale_n=50_000,
            delivery_timeout_s=600.0,
        )

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            n=1000,
            grid=((100, 1), (300, 2)),
            devices=1000,
            single_n=1000,
            single_connections=64,
            wrk_seconds=1.0,
            batch_n=2000,
            batch_size=200,
            batch_connections=4,
            latency_rate=200.0,
            latency_s=2.0,
            idle_s=2.5,
            backlog_n=2000,
            scale_n=1000,
            delivery_timeout_s=60.0,
        )


@dataclass
class PhaseResult:
    """One phase: what was delivered, how fast, and what it cost each role."""

    name: str
    title: str
    wall_s: float = 0.0
    delivered: int = 0
    rates: dict[str, float] = field(default_factory=dict)  # per second
    cpu_s: dict[str, float] = field(default_factory=dict)  # by role
    peak_rss_bytes: dict[str, int] = field(default_factory=dict)  # by process name
    details: JsonObject = field(default_factory=dict)
    skipped: str | None = None
    error: str | None = None
    profile: JsonObject | None = None  # --profile: see bench.profile
    # Commands Valkey ran over the phase (INFO commandstats: those inside scripts included).
    redis_commands: int | None = None

    def redis_commands_per_delivered(self) -> float | None:
        if self.redis_commands is None or not self.delivered:
            return None
        return self.redis_commands / self.delivered

    def cpu_us_per_delivered(self) -> dict[str, float]:
        if not self.delivered:
            return {}
        return {role: s * 1e6 / self.delivered for role, s in self.cpu_s.items()}

    def cores_busy(self) -> dict[str, float]:
        """CPU seconds per wall second, by role: 1.0 is one core fully used."""
        if not self.wall_s:
            return {}
        return {role: s / self.wall_s for role, s in self.cpu_s.items()}

    def to_json(self) -> JsonObject:
        return {
            "name": self.name,
            "title": self.title,
            "wall_s": self.wall_s,
            "delivered": self.delivered,
            "rates": self.rates,
            "cpu_s": self.cpu_s,
            "cpu_us_per_delivered": self.cpu_us_per_delivered(),
            "cores_busy": self.cores_busy(),
            "peak_rss_bytes": self.peak_rss_bytes,
            "redis_commands": self.redis_commands,
            "redis_commands_per_delivered": self.redis_commands_per_delivered(),
            "details": self.details,
            "skipped": self.skipped,
            "error": self.error,
            "profile": self.profile,
        }


# Commands of the harness's own (reading INFO, the profile's SLOWLOG), not the relay's.
HARNESS_COMMANDS = ("info", "config", "slowlog", "client", "ping", "memory", "script", "flushall")


def redis_commands(client: redis.Redis) -> int:
    """Commands Valkey has run since it started, the harness's own left out."""
    return sum(
        calls
        for name, (calls, _) in commandstats(client).items()
        if not name.startswith(HARNESS_COMMANDS)
    )


class Measurement:
    """CPU per role, Redis commands, peak RSS per process and wall time from creation to
    `finish`; with a profile session, the profile's recording stops at `finish` too."""

    def __init__(
        self,
        ledger: CpuLedger,
        sampler: RssSampler,
        session: ProfileSession | None = None,
        redis_client: redis.Redis | None = None,
    ) -> None:
        self.ledger = ledger
        self.sampler = sampler
        self.session = session
        self.redis_client = redis_client
        self.commands_before = redis_commands(redis_client) if redis_client else None
        sampler.take_peaks()
        self.cpu_before = ledger.snapshot()
        self.started = time.perf_counter()

    def finish(self, result: PhaseResult) -> PhaseResult:
        result.wall_s = time.perf_counter() - self.started
        result.cpu_s = self.ledger.by_role_since(self.cpu_before)
        result.peak_rss_bytes = {n: rss for n, (_, rss) in self.sampler.take_peaks().items()}
        if self.redis_client is not None and self.commands_before is not None:
            # Every command Valkey ran, those inside scripts included (INFO commandstats).
            result.redis_commands = redis_commands(self.redis_client) - self.commands_before
        if self.session is not None:
            self.session.stop()
        return result


class SimulatorControl:
    """The simulator's control API, read with plain blocking HTTP (the harness has no loop)."""

    def __init__(self, sim: SimInfo) -> None:
        self.base = sim.control_url

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=30) as response:
            return json.load(response)

    def accepted(self) -> int:
        count: int = self.get("/stats")["accepted"]
        return count

    def wait_accepted(self, target: int, timeout_s: float) -> tuple[float, int]:
        """(wall time, count) once the simulator has accepted `target` in total."""
        deadline = time.monotonic() + timeout_s
        while True:
            count = self.accepted()
            if count >= target:
                return time.time(), count
            if time.monotonic() > deadline:
                raise TimeoutError(f"simulator accepted {count} of {target} within {timeout_s} s")
            time.sleep(DELIVERY_POLL_S)

    def notifications_since(self, seq: int) -> list[JsonObject]:
        entries: list[JsonObject] = self.get(f"/notifications?since={seq}")["notifications"]
        return entries


@dataclass
class Bench:
    """Everything the phases share: the processes, the plan, where files go."""

    plan: Plan
    work_dir: Path
    ledger: CpuLedger
    sampler: RssSampler
    sim: SimInfo
    control: SimulatorControl
    redis_client: redis.Redis
    relay: Relay
    log: Callable[[str], None]
    generator: str = "python"  # or "wrk"
    profiler: Profiler | None = None  # --profile
    runs: Iterator[int] = field(default_factory=lambda: iter(range(1, 1_000_000)))
    seed: int = field(default_factory=lambda: secrets.randbits(32))

    profiles: dict[str, ProfileSession] = field(default_factory=dict)  # by phase, until reported

    def measure(self, profile: str | None = None) -> Measurement:
        """Start measuring; with --profile, the relay phase `profile` names is profiled over the
        same window (see bench.profile; `report_profile` adds it to the phase's result)."""
        if profile is None or self.profiler is None:
            return Measurement(self.ledger, self.sampler, redis_client=self.redis_client)
        session = self.profiler.session(profile, self.relay)
        self.profiles[profile] = session
        return Measurement(self.ledger, self.sampler, session, self.redis_client)

    def report_profile(self, result: PhaseResult) -> None:
        session = self.profiles.pop(result.name, None)
        if session is not None:
            result.profile = session.report(result.delivered, result.wall_s)

    def spec(self, mode: str, n: int, **extra: Any) -> tuple[Path, JsonObject]:
        """A load-generator spec with fresh ids (a new prefix per run: supersede never fires)."""
        run = next(self.runs)
        spec_file = self.work_dir / "specs" / f"run-{run:03d}.json"
        spec_file.parent.mkdir(parents=True, exist_ok=True)
        spec = {
            "mode": mode,
            "n": n,
            "devices": self.plan.devices,
            "seed": self.seed,
            "id_prefix": f"R{run:03d}",
            "result_file": str(spec_file.with_suffix(".result.json")),
            **extra,
        }
        spec_file.write_text(json.dumps(spec))
        return spec_file, spec

    def run_loadgen(self, argv: list[str], name: str) -> Tracked:
        tracked = self.ledger.add(
            start_process("loadgen", name, argv, self.work_dir / "logs" / f"{name}.log")
        )
        code = tracked.wait(LOADGEN_TIMEOUT_S)
        if code != 0:
            raise RuntimeError(f"{name} exited {code}:\n{tracked.log_tail()}")
        return tracked

    def python_loadgen(self, mode: str, n: int, **extra: Any) -> JsonObject:
        spec_file, spec = self.spec(mode, n, **extra)
        self.run_loadgen(python_argv("-m", "bench.loadgen", str(spec_file)), spec_file.stem)
        result: JsonObject = json.loads(Path(spec["result_file"]).read_text())
        return result

    def relay_http(self, kind: str, **extra: Any) -> JsonObject:
        host, port = self.relay.api_url.removeprefix("http://").rsplit(":", 1)
        return {"kind": kind, "host": host, "port": int(port), "api_token": API_TOKEN, **extra}


# --- phase 1: the ceiling ---------------------------------------------------------------------


def ceiling(bench: Bench, title: str) -> PhaseResult:
    """Raw aioapns (no relay, no Redis) over a small grid; the best point is R_raw."""
    best: PhaseResult | None = None
    grid = []
    for concurrency, connections in bench.plan.grid:
        measurement = bench.measure()
        before = bench.control.accepted()
        outcome = bench.python_loadgen(
            "aioapns",
            bench.plan.n,
            target=sim_target(bench.sim),
            concurrency=concurrency,
            connections=connections,
        )
        bench.control.wait_accepted(before + outcome["ok"], bench.plan.delivery_timeout_s)
        point = measurement.finish(
            PhaseResult(
                "ceiling",
                title,
                delivered=outcome["ok"],
                rates={"delivered_per_s": outcome["ok"] / outcome["elapsed_s"]},
                details={"concurrency": concurrency, "connections": connections, **outcome},
            )
        )
        grid.append(
            {
                "concurrency": concurrency,
                "connections": connections,
                "rate_per_s": point.rates["delivered_per_s"],
                "statuses": outcome["statuses"],
                "cpu_us_per_delivered": point.cpu_us_per_delivered(),
            }
        )
        bench.log(
            f"  aioapns concurrency {concurrency}, {connections} connection(s): "
            f"{point.rates['delivered_per_s']:.0f}/s"
        )
        if best is None or point.rates["delivered_per_s"] > best.rates["delivered_per_s"]:
            best = point
    assert best is not None
    best.details = {**best.details, "grid": grid}
    return best


# --- phase 2: the peer ------------------------------------------------------------------------


def node_peer_ready() -> str | None:
    """None when node-apn can run, else why not (`make bench-setup` installs it, a run never)."""
    if shutil.which("node") is None:
        return "node is not installed"
    installed = NODE_WORK_DIR / "node_modules" / "@parse" / "node-apn" / "package.json"
    if not installed.exists():
        return f"@parse/node-apn is not installed in {NODE_WORK_DIR} (run make bench-setup)"
    return None


def peer(bench: Bench, title: str, raw: PhaseResult) -> PhaseResult:
    """The same N through @parse/node-apn at the ceiling's best concurrency and connections."""
    result = PhaseResult("peer", title)
    why_not = node_peer_ready()
    if why_not is not None:
        result.skipped = why_not
        return result
    concurrency = raw.details.get("concurrency", 100)
    connections = raw.details.get("connections", 1)
    measurement = bench.measure()
    before = bench.control.accepted()
    spec_file, spec = bench.spec(
        "node-apn",
        bench.plan.n,
        target=sim_target(bench.sim),
        concurrency=concurrency,
        connections=connections,
    )
    node = shutil.which("node")
    assert node is not None
    with_modules = {**os.environ, "NODE_PATH": str(NODE_WORK_DIR / "node_modules")}
    tracked = bench.ledger.add(
        start_process(
            "loadgen",
            spec_file.stem,
            [node, str(NODE_DIR / "send.js"), str(spec_file)],
            bench.work_dir / "logs" / f"{spec_file.stem}.log",
            env=with_modules,
        )
    )
    code = tracked.wait(LOADGEN_TIMEOUT_S)
    if code != 0:
        raise RuntimeError(f"node send.js exited {code}:\n{tracked.log_tail()}")
    outcome = json.loads(Path(spec["result_file"]).read_text())
    bench.control.wait_accepted(before + outcome["ok"], bench.plan.delivery_timeout_s)
    result.delivered = outcome["ok"]
    result.rates = {"delivered_per_s": outcome["ok"] / outcome["elapsed_s"]}
    result.details = {"concurrency": concurrency, "connections": connections, **outcome}
    return measurement.finish(result)


# --- phases 3 and 4: through the relay ----------------------------------------------------------


def wrk_single(bench: Bench) -> tuple[int, float, float, JsonObject]:
    """(accepted, ingest seconds, started at, details) from wrk with the Lua script."""
    wrk = shutil.which("wrk")
    assert wrk is not None
    run = next(bench.runs)
    name = f"run-{run:03d}-wrk"
    started_at = time.time()
    tracked = bench.run_loadgen(
        [
            wrk,
            "-t1",
            f"-c{bench.plan.single_connections}",
            f"-d{bench.plan.wrk_seconds:g}s",
            "--latency",
            "-s",
            str(WRK_SCRIPT),
            bench.relay.api_url,
            "--",
            API_TOKEN,
            str(bench.plan.devices),
            f"{bench.seed:08x}",
            f"W{run:03d}",
        ],
        name,
    )
    line = next(x for x in tracked.log_tail(20_000).splitlines() if x.startswith("WRK_RESULT "))
    summary = json.loads(line.removeprefix("WRK_RESULT "))
    failed = summary["non_2xx"] + summary["read_errors"] + summary["write_errors"]
    accepted = summary["requests"] - summary["non_2xx"]
    details = {"generator": "wrk", "wrk": summary, "failed": failed}
    return accepted, summary["duration_us"] / 1e6, started_at, details


def through_relay(bench: Bench, name: str, title: str, kind: str) -> PhaseResult:
    """Load the api as fast as it answers: ingest rate, and delivered rate as the simulator saw."""
    measurement = bench.measure(profile=name)
    before = bench.control.accepted()
    plan = bench.plan
    if kind == "gms" and bench.generator == "wrk":
        accepted, ingest_s, started_at, details = wrk_single(bench)
    else:
        spec = (
            bench.relay_http("gms", connections=plan.single_connections)
            if kind == "gms"
            else bench.relay_http(
                "batch", connections=plan.batch_connections, batch_size=plan.batch_size
            )
        )
        outcome = bench.python_loadgen(
            "closed", plan.single_n if kind == "gms" else plan.batch_n, **spec
        )
        accepted, ingest_s, started_at = (
            outcome["accepted"],
            outcome["elapsed_s"],
            outcome["started_at"],
        )
        details = {"generator": "python", **outcome}
    done_at, count = bench.control.wait_accepted(before + accepted, plan.delivery_timeout_s)
    delivered = count - before
    return measurement.finish(
        PhaseResult(
            name,
            title,
            delivered=delivered,
            rates={
                "ingest_per_s": accepted / ingest_s,
                "delivered_per_s": delivered / (done_at - started_at),
            },
            details={"accepted": accepted, **details},
        )
    )


# --- phase 5: latency -------------------------------------------------------------------------


def service_id_of(payload: JsonObject) -> str | None:
    message = payload.get("message")
    if isinstance(message, str):  # the app's message_encoding may be "string"
        message = json.loads(message)
    if isinstance(message, dict):
        value = message.get("_id")
        return value if isinstance(value, str) else None
    return None


def percentiles_ms(samples: list[float]) -> JsonObject:
    if not samples:
        return {"count": 0}
    ordered = sorted(samples)

    def at(share: float) -> float:
        return ordered[min(int(share * len(ordered)), len(ordered) - 1)]

    return {
        "count": len(ordered),
        "p50": at(0.50),
        "p95": at(0.95),
        "p99": at(0.99),
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


def latency(bench: Bench, title: str) -> PhaseResult:
    """Steady offered load; request's scheduled send time -> simulator receipt, matched by GMS
    _id (no coordinated omission: see loadgen.http_steady)."""
    plan = bench.plan
    n = int(plan.latency_rate * plan.latency_s)
    measurement = bench.measure(profile="latency")
    seq_before = bench.control.accepted()
    outcome = bench.python_loadgen(
        "steady", n, rate=plan.latency_rate, **bench.relay_http("gms", connections=64)
    )
    bench.control.wait_accepted(seq_before + outcome["accepted"], plan.delivery_timeout_s)
    result = measurement.finish(PhaseResult("latency", title))
    due_at = {service_id: due for service_id, due, _ in outcome["records"]}
    ingest_ms = [(answered - due) * 1000 for _, due, answered in outcome["records"]]
    latencies_ms = []
    for entry in bench.control.notifications_since(seq_before):
        service_id = service_id_of(entry["payload"])
        if service_id in due_at:
            latencies_ms.append((entry["received_at"] - due_at[service_id]) * 1000)
    result.delivered = len(latencies_ms)
    result.rates = {
        "offered_per_s": plan.latency_rate,
        "delivered_per_s": len(latencies_ms) / outcome["elapsed_s"],
    }
    result.details = {
        "sent": outcome["sent"],
        "accepted": outcome["accepted"],
        "late_sends": outcome["late_sends"],
        "unmatched": outcome["accepted"] - len(latencies_ms),
        "latency_ms": percentiles_ms(latencies_ms),
        "ingest_response_ms": percentiles_ms(ingest_ms),
        "latency_samples_ms": latencies_ms,
    }
    return result


# --- phases 6 and 8: a queued backlog, drained ------------------------------------------------


def used_memory(client: redis.Redis) -> int:
    info: JsonObject = client.info("memory")
    return int(info["used_memory"])


def pending(bench: Bench) -> int:
    request = urllib.request.Request(
        bench.relay.api_url + "/v1/queue", headers={"Authorization": f"Bearer {API_TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        count: int = json.load(response)["pending"]
        return count


def drain(bench: Bench, name: str, title: str, n: int, workers: int) -> PhaseResult:
    """Queue n with no worker running, then start `workers` and time the drain."""
    plan = bench.plan
    bench.relay.stop_workers()
    # SYNC: Valkey frees lazily by default, which would leave "before" counting the old data.
    # (redis-py leaves execute_command unannotated.)
    bench.redis_client.execute_command("FLUSHALL", "SYNC")  # type: ignore[no-untyped-call]
    memory_before = used_memory(bench.redis_client)
    measurement = bench.measure(profile=name)
    ingest = bench.python_loadgen(
        "closed",
        n,
        **bench.relay_http("batch", connections=plan.batch_connections, batch_size=plan.batch_size),
    )
    queued = pending(bench)
    memory_after = used_memory(bench.redis_client)
    before = bench.control.accepted()
    started_at = time.time()
    bench.relay.start_workers(workers)
    ready_at, count_at_ready = time.time(), bench.control.accepted()
    done_at, count = bench.control.wait_accepted(before + queued, plan.delivery_timeout_s)
    result = measurement.finish(PhaseResult(name, title, delivered=count - before))
    # The simulator counts a push before the worker settles it: history is complete only once
    # nothing is pending in Redis.
    wait_until(
        lambda: pending(bench) == 0,
        bench.relay.workers[0],
        plan.delivery_timeout_s,
        "an empty queue",
    )
    memory_drained = used_memory(bench.redis_client)
    delivered = count - before
    # Timed from the workers' readiness, so that their start-up is not counted; but a quick run's
    # few may be mostly sent before the workers report ready: those are timed from their start.
    mostly_before_ready = count_at_ready - before > delivered / 2
    timed_from, counted_from = (
        (started_at, before) if mostly_before_ready else (ready_at, count_at_ready)
    )
    result.rates = {
        "ingest_per_s": ingest["accepted"] / ingest["elapsed_s"],
        "delivered_per_s": (count - counted_from) / (done_at - timed_from),
    }
    result.details = {
        "workers": workers,
        "queued": queued,
        "delivered_before_ready": count_at_ready - before,
        "redis_used_memory_before": memory_before,
        "redis_used_memory_after": memory_after,
        "redis_bytes_per_queued": (memory_after - memory_before) / queued if queued else None,
        # The record layout measured (bench.capacity uses the figure only for the same one).
        "queued_layout": QUEUED_LAYOUT,
        # What history costs: every delivered notification is a final record now.
        "redis_used_memory_drained": memory_drained,
        "redis_bytes_per_final": (
            (memory_drained - memory_before) / delivered if delivered else None
        ),
        "ingest": {k: v for k, v in ingest.items() if k != "records"},
    }
    return result


# --- phase 7: idle ----------------------------------------------------------------------------


def idle(bench: Bench, title: str) -> PhaseResult:
    """The relay with nothing to do: CPU over a fixed window."""
    measurement = bench.measure(profile="idle")
    time.sleep(bench.plan.idle_s)  # the window being measured, not a wait for a condition
    result = measurement.finish(PhaseResult("idle", title))
    relay_cpu = result.cpu_s.get("relay-api", 0.0) + result.cpu_s.get("relay-worker", 0.0)
    result.details = {
        "window_s": result.wall_s,
        "relay_cpu_s": relay_cpu,
        "relay_core_percent": 100 * relay_cpu / result.wall_s,
    }
    return result
