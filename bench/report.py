"""The benchmark's outputs: targets met or missed, results.json, results.md and results.png."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.phases import NODE_WORK_DIR, PhaseResult
from bench.profile_report import profile_markdown

ROLES = ("relay-api", "relay-worker", "valkey", "simulator", "loadgen")
# The relay's cost is its processes and its store: a durable queue is what the relay adds.
RELAY_ROLES = ("relay-api", "relay-worker", "valkey")
HEADLINE_PHASES = ("single", "batch", "latency", "backlog", "scale-1", "scale-2")
PACKAGES = (
    "gms-apns-relay",
    "aioapns",
    "aiohttp",
    "h2",
    "redis",
    "hiredis",
    "uvloop",
    "orjson",
    "pydantic",
    "structlog",
    "psutil",
    "matplotlib",
)
MIB = 1024 * 1024
CHART_LABELS = {
    "ceiling": "raw aioapns",
    "peer": "node-apn",
    "single": "relay /gms/push",
    "batch": "relay batch",
    "backlog": "backlog drain",
    "scale-1": "drain, 1 worker",
    "scale-2": "drain, 2 workers",
}

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Target:
    """One goal from the issue, against what was measured."""

    goal: str
    measured: float | None  # None: an input phase was skipped or failed
    limit: float
    at_least: bool  # True: measured >= limit is met; False: measured <= limit
    unit: str
    inputs: str

    @property
    def verdict(self) -> str:
        if self.measured is None:
            return "n/a"
        met = self.measured >= self.limit if self.at_least else self.measured <= self.limit
        return "met" if met else "MISSED"

    def to_json(self) -> JsonObject:
        return {
            "goal": self.goal,
            "measured": self.measured,
            "limit": self.limit,
            "at_least": self.at_least,
            "unit": self.unit,
            "inputs": self.inputs,
            "verdict": self.verdict,
        }


def _usable(phase: PhaseResult | None) -> bool:
    return phase is not None and phase.skipped is None and phase.error is None


def _rate(phases: dict[str, PhaseResult], name: str) -> float | None:
    phase = phases.get(name)
    return phase.rates.get("delivered_per_s") if phase is not None and _usable(phase) else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def relay_cpu_us(phase: PhaseResult | None) -> float | None:
    if phase is None or not _usable(phase) or not phase.delivered:
        return None
    per = phase.cpu_us_per_delivered()
    return sum(per.get(role, 0.0) for role in RELAY_ROLES)


def role_cpu_us(phase: PhaseResult | None, role: str) -> float | None:
    if phase is None or not _usable(phase) or not phase.delivered:
        return None
    return phase.cpu_us_per_delivered().get(role, 0.0)


def client_cpu_us(phases: dict[str, PhaseResult]) -> float | None:
    """The raw aioapns client's CPU per push in this run: the headline's reference."""
    return role_cpu_us(phases.get("ceiling"), "loadgen")


def headline(phases: dict[str, PhaseResult]) -> list[JsonObject]:
    """Per relay phase: relay roles' CPU per delivered notification, and that as a multiple of
    the raw client's CPU per push in the same run (a ratio within one run survives a busy
    machine; absolute µs do not)."""
    client_us = client_cpu_us(phases)
    rows = []
    for name in HEADLINE_PHASES:
        phase = phases.get(name)
        if phase is None:
            continue
        relay_us = relay_cpu_us(phase)
        rows.append(
            {
                "phase": name,
                "title": phase.title,
                **{f"{role}_us": role_cpu_us(phase, role) for role in RELAY_ROLES},
                "relay_us": relay_us,
                "client_us": client_us,
                "x_client": _ratio(relay_us, client_us),
                "redis_commands_per_delivered": (
                    phase.redis_commands_per_delivered() if _usable(phase) else None
                ),
            }
        )
    return rows


def _fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def evaluate_targets(phases: dict[str, PhaseResult]) -> list[Target]:
    raw = _rate(phases, "ceiling")
    client_us = client_cpu_us(phases)
    latency = phases.get("latency")
    latency_ms = latency.details.get("latency_ms", {}) if latency and _usable(latency) else {}
    backlog = phases.get("backlog")
    backlog_details = backlog.details if backlog and _usable(backlog) else {}
    bytes_per_queued = backlog_details.get("redis_bytes_per_queued")
    bytes_per_final = backlog_details.get("redis_bytes_per_final")
    rss_peaks = [
        rss
        for phase in phases.values()
        for name, rss in phase.peak_rss_bytes.items()
        if name.startswith("relay-")
    ]
    idle = phases.get("idle")
    idle_percent = idle.details.get("relay_core_percent") if idle and _usable(idle) else None
    single, batch = _rate(phases, "single"), _rate(phases, "batch")
    drain = _rate(phases, "backlog")
    one, two = _rate(phases, "scale-1"), _rate(phases, "scale-2")
    batch_us, single_us = relay_cpu_us(phases.get("batch")), relay_cpu_us(phases.get("single"))
    steady_us = relay_cpu_us(latency)
    valkey_us = role_cpu_us(phases.get("batch"), "valkey")
    worker_one = role_cpu_us(phases.get("scale-1"), "relay-worker")
    worker_two = role_cpu_us(phases.get("scale-2"), "relay-worker")
    roles = "api + worker + Valkey"
    return [
        Target(
            "R_batch >= 0.8 x R_raw",
            _ratio(batch, raw),
            0.8,
            True,
            "x",
            f"{_fmt(batch)}/s vs {_fmt(raw)}/s",
        ),
        Target(
            "R_single >= 0.5 x R_raw",
            _ratio(single, raw),
            0.5,
            True,
            "x",
            f"{_fmt(single)}/s vs {_fmt(raw)}/s",
        ),
        Target(
            f"relay CPU per delivered (batch; {roles}) <= 1.0 x raw aioapns client",
            _ratio(batch_us, client_us),
            1.0,
            False,
            "x",
            f"{_fmt(batch_us)} µs vs {_fmt(client_us)} µs",
        ),
        Target(
            f"relay CPU per delivered (single; {roles}) <= 1.5 x raw aioapns client",
            _ratio(single_us, client_us),
            1.5,
            False,
            "x",
            f"{_fmt(single_us)} µs vs {_fmt(client_us)} µs",
        ),
        Target(
            f"relay CPU per delivered at steady load ({roles}) <= 1.3 x at full load (single)",
            _ratio(steady_us, single_us),
            1.3,
            False,
            "x",
            f"{_fmt(steady_us)} µs vs {_fmt(single_us)} µs, both one event per POST /gms/push",
        ),
        Target(
            "Valkey CPU per delivered at full load (batch) <= 60 µs",
            valkey_us,
            60.0,
            False,
            "µs",
            "the Valkey process's CPU over the batch phase",
        ),
        Target(
            "worker CPU per delivered, 2 workers <= 1.1 x one worker's",
            _ratio(worker_two, worker_one),
            1.1,
            False,
            "x",
            f"{_fmt(worker_two)} µs vs {_fmt(worker_one)} µs",
        ),
        Target(
            "latency p50 <= 5 ms",
            latency_ms.get("p50"),
            5.0,
            False,
            "ms",
            "scheduled send -> simulator receipt (no coordinated omission)",
        ),
        Target(
            "latency p99 <= 20 ms",
            latency_ms.get("p99"),
            20.0,
            False,
            "ms",
            "scheduled send -> simulator receipt (no coordinated omission)",
        ),
        Target(
            "backlog drain >= 0.8 x R_raw",
            _ratio(drain, raw),
            0.8,
            True,
            "x",
            f"{_fmt(drain)}/s vs {_fmt(raw)}/s",
        ),
        Target(
            "Redis <= 600 B per queued notification",
            bytes_per_queued,
            600.0,
            False,
            "bytes",
            "INFO memory used_memory, before/after queueing the backlog",
        ),
        Target(
            "Redis <= 200 B per retained final record",
            bytes_per_final,
            200.0,
            False,
            "bytes",
            "INFO memory used_memory, before queueing/after the backlog drained, per delivered",
        ),
        Target(
            "each relay process <= 150 MiB RSS",
            max(rss_peaks) / MIB if rss_peaks else None,
            150.0,
            False,
            "MiB",
            "largest peak over all relay processes and phases",
        ),
        Target(
            "idle relay <= 1% of one core",
            idle_percent,
            1.0,
            False,
            "%",
            "api + worker CPU over the idle window",
        ),
        Target(
            "2 workers >= 1.6 x one",
            _ratio(two, one),
            1.6,
            True,
            "x",
            f"{_fmt(two)}/s vs {_fmt(one)}/s",
        ),
    ]


# --- machine ----------------------------------------------------------------------------------


def _command_output(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (completed.stdout or completed.stderr).strip()
    return text.splitlines()[0] if text else None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(valkey_version: str | None) -> JsonObject:
    versions: dict[str, str | None] = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    node_apn = NODE_WORK_DIR / "node_modules" / "@parse" / "node-apn" / "package.json"
    return {
        "cores": os.cpu_count(),
        # Other work on the machine skews every number: the load average says how much there was.
        "load_average_at_end": os.getloadavg(),
        "cpu_model": cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "packages": versions,
        "valkey": valkey_version,
        "node": _command_output(["node", "--version"]),
        "node_apn": json.loads(node_apn.read_text())["version"] if node_apn.exists() else None,
        "wrk": _command_output(["wrk", "-v"]),
    }


# --- writing ------------------------------------------------------------------------------------


def results_document(
    mode: str, machine: JsonObject, plan: JsonObject, phases: list[PhaseResult], notes: list[str]
) -> JsonObject:
    by_name = {p.name: p for p in phases}
    documents = []
    for phase in phases:
        document = phase.to_json()
        # The raw samples feed the chart; the JSON keeps their percentiles only.
        document["details"] = {
            k: v for k, v in document["details"].items() if k != "latency_samples_ms"
        }
        documents.append(document)
    return {
        "mode": mode,
        "machine": machine,
        "plan": plan,
        "phases": documents,
        "headline": headline(by_name),
        "targets": [t.to_json() for t in evaluate_targets(by_name)],
        "notes": notes,
    }


def markdown(document: JsonObject) -> str:
    machine = document["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items() if v)
    lines = [
        f"# Benchmark results ({document['mode']} mode)",
        "",
        f"Machine: {machine['cores']} cores, {machine['cpu_model']}; {machine['platform']}; "
        f"Python {machine['python']}; Valkey {machine['valkey']}; node {machine['node']}, "
        f"@parse/node-apn {machine['node_apn']}; {machine['wrk'] or 'no wrk'}. "
        f"Load average at the end (1, 5, 15 min): {machine.get('load_average_at_end')}.",
        "",
        f"Packages: {packages}.",
        "",
        "## Headline: the relay's CPU per delivered notification",
        "",
        "Relay roles are the api, the worker(s) and Valkey (the durable queue). The multiple "
        "is of the raw aioapns client's CPU per push in this same run (phase 1), so it "
        "compares across runs and machines where absolute µs do not. Redis commands are what "
        "Valkey ran per delivered notification over the phase (INFO commandstats: the commands "
        "inside scripts and the FCALL calls themselves; enqueue, claim and settle together).",
        "",
        "| phase | api µs | worker µs | Valkey µs | relay roles µs | raw client µs | x client "
        "| Redis commands |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {row['title']} | {_fmt(row['relay-api_us'])} | {_fmt(row['relay-worker_us'])} | "
            f"{_fmt(row['valkey_us'])} | {_fmt(row['relay_us'])} | {_fmt(row['client_us'])} | "
            f"{_fmt(row['x_client'], 2)} | {_fmt(row.get('redis_commands_per_delivered'), 1)} |"
            for row in document["headline"]
        ),
        "",
        "## Phases",
        "",
        "CPU is per delivered notification, in µs, for each process role (all its processes, "
        "children included). With every process on one machine, the machine's cores bound "
        "any phase at cores x 10^6 / (all roles' µs) notifications/s: the CPU bound column.",
        "",
        "| phase | delivered | delivered/s | ingest/s | wall s | "
        + " | ".join(f"{r} µs" for r in ROLES)
        + " | all roles µs | CPU bound/s | simulator cores busy | peak RSS MiB |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(ROLES) + "---:|---:|---:|---|",
    ]
    for phase in document["phases"]:
        if phase["skipped"] or phase["error"]:
            why = phase["skipped"] or f"error: {phase['error'].splitlines()[0]}"
            lines.append(f"| {phase['title']} | {why} |" + " |" * (len(ROLES) + 7))
            continue
        per = phase["cpu_us_per_delivered"]
        total_us = sum(per.values()) if per else None
        bound = machine["cores"] * 1e6 / total_us if total_us else None
        rss = ", ".join(
            f"{name} {size / MIB:.0f}"
            for name, size in sorted(phase["peak_rss_bytes"].items())
            if name.startswith("relay-")
        )
        lines.append(
            f"| {phase['title']} | {phase['delivered']:,} | "
            f"{_fmt(phase['rates'].get('delivered_per_s'))} | "
            f"{_fmt(phase['rates'].get('ingest_per_s'))} | {phase['wall_s']:.1f} | "
            + " | ".join(_fmt(per.get(role)) for role in ROLES)
            + f" | {_fmt(total_us)} | {_fmt(bound)}"
            + f" | {_fmt(phase['cores_busy'].get('simulator'), 2)} | {rss} |"
        )
    lines += [
        "",
        "## Targets",
        "",
        "| goal | measured | limit | verdict | inputs |",
        "|---|---:|---:|---|---|",
    ]
    for target in document["targets"]:
        lines.append(
            f"| {target['goal']} | {_fmt(target['measured'], 2)} {target['unit']} | "
            f"{target['limit']:g} {target['unit']} | {target['verdict']} | {target['inputs']} |"
        )
    lines += ["", "## Details", ""]
    for phase in document["phases"]:
        details = {k: v for k, v in phase["details"].items() if k != "records"}
        if details:
            lines.append(f"- **{phase['title']}**: `{json.dumps(details, sort_keys=True)}`")
    if document["notes"]:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in document["notes"]]
    return "\n".join(lines) + "\n"


def chart(phases: list[PhaseResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(13, 5))
    # The latency phase's rate is the offered load, not a capacity: it is not a bar.
    shown = [p for p in phases if p.name in CHART_LABELS and _usable(p)]
    labels = [CHART_LABELS[p.name] for p in shown]
    values = [p.rates["delivered_per_s"] for p in shown]
    throughput.bar(range(len(shown)), values, color="tab:blue")
    throughput.set_xticks(range(len(shown)), labels, rotation=30, ha="right")
    throughput.set_ylabel("delivered notifications / s")
    throughput.set_title("Throughput per phase")
    for index, value in enumerate(values):
        throughput.annotate(f"{value:,.0f}", (index, value), ha="center", va="bottom", fontsize=8)
    samples = next(
        (p.details.get("latency_samples_ms") for p in phases if p.name == "latency" and _usable(p)),
        None,
    )
    if samples:
        latency.hist(samples, bins=60, color="tab:orange")
        for share, style in ((0.5, "--"), (0.99, ":")):
            mark = sorted(samples)[min(int(share * len(samples)), len(samples) - 1)]
            latency.axvline(
                mark, color="black", linestyle=style, label=f"p{share * 100:g} {mark:.1f} ms"
            )
        latency.legend()
    else:
        latency.text(0.5, 0.5, "no latency samples", ha="center", va="center")
    latency.set_xlabel("scheduled send -> simulator receipt (ms)")
    latency.set_ylabel("notifications")
    offered = next((p.rates.get("offered_per_s") for p in phases if p.name == "latency"), None)
    latency.set_title(f"Latency at a steady {_fmt(offered)} notifications/s")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_outputs(document: JsonObject, phases: list[PhaseResult], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path, png_path = (out_dir / f"results.{ext}" for ext in ("json", "md", "png"))
    json_path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    md_path.write_text(markdown(document))
    chart(phases, png_path)
    written = [json_path, md_path, png_path]
    if any(phase.profile is not None for phase in phases):
        written.append(out_dir / "profile.md")
        written[-1].write_text(profile_markdown(document))
    return written


def target_lines(document: JsonObject) -> list[str]:
    """What the run prints: the headline per phase, then every target with its verdict."""
    return [
        f"{row['phase']:>8}  relay roles {_fmt(row['relay_us'])} µs per delivered = "
        f"{_fmt(row['x_client'], 2)} x the raw client's {_fmt(row['client_us'])} µs, "
        f"{_fmt(row.get('redis_commands_per_delivered'), 1)} Redis commands"
        for row in document["headline"]
    ] + [
        f"{t['verdict']:>6}  {t['goal']}: {_fmt(t['measured'], 2)} {t['unit']} "
        f"(limit {t['limit']:g}; {t['inputs']})"
        for t in document["targets"]
    ]
