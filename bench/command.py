"""`python -m bench` / `apns-relay bench`: start every process, run all phases, write results."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import redis

from bench.phases import (
    Bench,
    PhaseResult,
    Plan,
    SimulatorControl,
    ceiling,
    drain,
    idle,
    latency,
    peer,
    through_relay,
)
from bench.processes import REPO_ROOT, CpuLedger, RssSampler
from bench.profile import Profiler
from bench.report import machine_info, results_document, target_lines, write_outputs
from bench.stack import (
    LOG_LEVEL,
    VALKEY_ARGS,
    Relay,
    start_simulator,
    start_valkey,
    write_relay_config,
)

COMMITTED_RESULTS = REPO_ROOT / "bench" / "results"
SIM_LOG_LIMIT = 100_000  # enough for the latency phase's matching; older entries roll off
RELAY_MAX_CONNECTIONS = 4
RELAY_BATCH_SIZE = 256

CEILING = "1. Ceiling: raw aioapns"
PEER = "2. Peer: @parse/node-apn"
SINGLE = "3. Relay, GMS style: POST /gms/push"
BATCH = "4. Relay, batch: POST /v1/notifications:batch"
LATENCY = "5. Latency at steady load"
BACKLOG = "6. Backlog drain (1 worker)"
IDLE = "7. Idle relay"
SCALE = ("8. Scale: 1 worker", "8. Scale: 2 workers")
PHASES = ("ceiling", "peer", "single", "batch", "latency", "backlog", "idle", "scale")
NEEDS_RUNNING_RELAY = frozenset({"single", "batch", "latency", "idle"})
NEEDS_API_ONLY = frozenset({"backlog", "scale"})


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small N, seconds per phase: proves the harness works, measures nothing worth keeping",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help=f"where results.json/.md/.png go (default {COMMITTED_RESULTS}; --quick: a temp dir)",
    )
    parser.add_argument(
        "--sim-workers",
        type=int,
        default=2,
        help="APNs simulator server processes (default 2)",
    )
    parser.add_argument(
        "--generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="load generator for the GMS phase: wrk if available (auto), or the Python one",
    )
    parser.add_argument(
        "--phase",
        action="append",
        choices=PHASES,
        metavar="NAME",
        help=(
            "run only this phase (repeatable, for an A/B; default all): "
            f"{', '.join(PHASES)}; the ceiling always runs, as the headline's reference"
        ),
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help=(
            "also profile each relay phase: py-spy on the api and workers (make bench-setup "
            "installs it), Valkey's INFO commandstats and SLOWLOG, Lua script calls per "
            "delivered notification; written to profile.md (needs --out: py-spy's sampling "
            "takes CPU the committed figures must not share)"
        ),
    )
    parser.add_argument(
        "--work-dir", type=Path, help="process logs, Valkey data, specs (default: a temp dir)"
    )


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def output_dir(args: argparse.Namespace) -> Path:
    partial_run = args.phase is not None and set(args.phase) != set(PHASES)
    if args.out is None and partial_run and not args.quick:
        raise ValueError(
            "--phase: a run of some phases needs --out (the committed results hold all)"
        )
    if args.out is None and args.profile and not args.quick:
        raise ValueError(
            "--profile: a profiled run needs --out (its CPU figures share the cores with "
            "py-spy; copy its profile.md into bench/results/ under a name of its own)"
        )
    if args.out is None:
        return (
            Path(tempfile.mkdtemp(prefix="apns-bench-quick-")) if args.quick else COMMITTED_RESULTS
        )
    out: Path = args.out.resolve()
    if (args.quick or partial_run or args.profile) and out == COMMITTED_RESULTS.resolve():
        raise ValueError(
            f"--out: quick, --phase or --profile results must not overwrite the ones in {out}"
        )
    return out


def choose_generator(requested: str, notes: list[str]) -> str:
    """wrk when asked for or installed (`make bench-setup`; a run installs nothing), else Python."""
    if requested == "python":
        return "python"
    if shutil.which("wrk") is not None:
        return "wrk"
    if requested == "wrk":
        raise ValueError("--generator wrk: wrk is not installed (make bench-setup installs it)")
    notes.append(
        "wrk not installed (make bench-setup installs it): the GMS phase used the Python generator"
    )
    return "python"


def guarded(
    bench: Bench,
    name: str,
    title: str,
    phase: Callable[[], PhaseResult],
    phases: list[PhaseResult],
) -> PhaseResult:
    """Run a phase; a failure is recorded in its result and the next phases still run."""
    log(f"{title} ...")
    started = time.monotonic()
    try:
        result = phase()
    except Exception as error:
        log(traceback.format_exc())
        result = PhaseResult(name, title, error=f"{type(error).__name__}: {error}")
    bench.report_profile(result)
    phases.append(result)
    summary = (
        result.skipped
        or result.error
        or ", ".join(f"{k} {v:,.0f}" for k, v in result.rates.items())
    )
    log(f"  {summary} ({time.monotonic() - started:.1f} s)")
    return result


def run_phases(bench: Bench, selected: frozenset[str]) -> list[PhaseResult]:
    """Run the selected phases in an order that differs from their numbering: idle needs the
    running worker the backlog stops. The ceiling always runs: it is every headline's reference."""
    phases: list[PhaseResult] = []
    plan = bench.plan
    raw = guarded(bench, "ceiling", CEILING, lambda: ceiling(bench, CEILING), phases)
    if "peer" in selected:
        guarded(bench, "peer", PEER, lambda: peer(bench, PEER, raw), phases)
    if selected & NEEDS_RUNNING_RELAY:
        bench.relay.start_api()
        bench.relay.start_workers(1)
    if "single" in selected:
        guarded(
            bench, "single", SINGLE, partial(through_relay, bench, "single", SINGLE, "gms"), phases
        )
    if "batch" in selected:
        guarded(
            bench, "batch", BATCH, partial(through_relay, bench, "batch", BATCH, "batch"), phases
        )
    if "latency" in selected:
        guarded(bench, "latency", LATENCY, lambda: latency(bench, LATENCY), phases)
    if "idle" in selected:
        guarded(bench, "idle", IDLE, lambda: idle(bench, IDLE), phases)
    if selected & NEEDS_API_ONLY and bench.relay.api is None:
        bench.relay.start_api()  # the drains start their own workers
    if "backlog" in selected:
        backlog = partial(drain, bench, "backlog", BACKLOG, plan.backlog_n, 1)
        guarded(bench, "backlog", BACKLOG, backlog, phases)
    if "scale" in selected:
        for workers, title in enumerate(SCALE, start=1):
            name = f"scale-{workers}"
            scale = partial(drain, bench, name, title, plan.scale_n, workers)
            guarded(bench, name, title, scale, phases)
    return sorted(phases, key=lambda p: p.title)


def benchmark(args: argparse.Namespace, out_dir: Path) -> int:
    plan = Plan.quick() if args.quick else Plan.full()
    notes: list[str] = []
    generator = choose_generator(args.generator, notes)
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="apns-bench-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    log(f"benchmark ({'quick' if args.quick else 'full'}): work dir {work_dir}, out {out_dir}")
    ledger = CpuLedger()
    valkey, _ = start_valkey(ledger, work_dir)
    relay: Relay | None = None
    simulator = None
    try:
        sim, simulator = start_simulator(ledger, work_dir, args.sim_workers, SIM_LOG_LIMIT)
        config = write_relay_config(
            work_dir / "relay.yaml", valkey.url, sim, RELAY_MAX_CONNECTIONS, RELAY_BATCH_SIZE
        )
        relay = Relay(ledger, config, work_dir / "logs")
        redis_client = redis.Redis.from_url(valkey.url)
        profiler = Profiler(redis_client, work_dir / "profiles") if args.profile else None
        if profiler is not None:
            notes.append(profiler.note())
            log(f"--profile: {profiler.note()}")
        server_info = redis_client.info("server")
        valkey_version = server_info.get("valkey_version") or server_info.get("redis_version")
        with RssSampler(ledger) as sampler:
            bench = Bench(
                plan=plan,
                work_dir=work_dir,
                ledger=ledger,
                sampler=sampler,
                sim=sim,
                control=SimulatorControl(sim),
                redis_client=redis_client,
                relay=relay,
                log=log,
                generator=generator,
                profiler=profiler,
            )
            phases = run_phases(bench, frozenset(args.phase or PHASES))
        notes.append(
            f"simulator: {args.sim_workers} server processes, --tokens open (the generated "
            "device tokens are not issued by it; every other rule, the moving stream limit "
            "included, is Apple's); its cores_busy per phase shows its headroom (it is the "
            "bottleneck only if that approaches its process count)"
        )
        notes.append(
            f"relay: 1 api process, worker processes as each phase says; app max_connections "
            f"{RELAY_MAX_CONNECTIONS}, delivery.batch_size {RELAY_BATCH_SIZE}; GMS generator "
            f"{generator}, 64 connections"
        )
        notes.append(
            f"production settings: relay log level {LOG_LEVEL}, JSON log lines to a file per "
            f"process; Valkey {' '.join(VALKEY_ARGS)}"
        )
    finally:
        if relay is not None:
            relay.stop()
        if simulator is not None:
            simulator.stop()
        valkey.stop()
    document = results_document(
        "quick" if args.quick else "full",
        machine_info(str(valkey_version) if valkey_version else None),
        dataclasses.asdict(plan),
        phases,
        notes,
    )
    for path in write_outputs(document, phases, out_dir):
        log(f"wrote {path}")
    for line in target_lines(document):
        print(line)
    return 1 if any(p.error for p in phases) else 0


def run(args: argparse.Namespace) -> int:
    try:
        out_dir = output_dir(args)
    except ValueError as error:
        log(str(error))
        return 2
    if args.sim_workers < 1:
        log("--sim-workers: must be at least 1")
        return 2
    try:
        return benchmark(args, out_dir)
    except ValueError as error:
        log(str(error))
        return 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    configure(parser)
    return run(parser.parse_args(argv))
