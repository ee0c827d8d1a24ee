"""`--profile`: where a relay phase's CPU goes, per role. py-spy samples every relay process (api,
workers) for the phase; Valkey's INFO commandstats delta and SLOWLOG say what the store did (its
commands inside scripts included); the relay's own script counter says which script ran how often.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from prometheus_client.parser import text_string_to_metric_families

from bench.processes import REPO_ROOT, Tracked
from bench.stack import Relay
from relay.store.scripts import RUNS_AT_MAXMEMORY

PY_SPY_DIR = REPO_ROOT / "bench" / ".work" / "py-spy"  # `make bench-setup` installs it here
PY_SPY_RATE = 100  # samples per second per process
PY_SPY_STOP_TIMEOUT_S = 20.0
TOP_ENTRIES = 15
ENTRY_CHAIN_SHARE = 0.85  # share of samples above which a frame without own time is the entry
SLOWLOG_ENTRIES = 10
# Lower than Valkey's 10 ms default for the phase, so the slowest commands show at all.
SLOWLOG_SLOWER_THAN_US = 1000
SCRIPT_METRIC = "apns_relay_redis_script_calls"
NO_FRAME = "(no Python frame: native code)"

JsonObject = dict[str, Any]


def find_py_spy() -> str | None:
    """bench-setup's copy first, then the venv's, then PATH."""
    for candidate in (PY_SPY_DIR / "bin" / "py-spy", Path(sys.executable).parent / "py-spy"):
        if os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("py-spy")


def script_of(function: str) -> str:
    """The relay/store/lua file an FCALL's function runs: `<name>_<library digest>`."""
    name, _, digest = function.rpartition("_")
    return name if name in RUNS_AT_MAXMEMORY and len(digest) == 16 else "unknown script"


# --- py-spy's collapsed stacks -----------------------------------------------------------------


def parse_collapsed(text: str) -> list[tuple[tuple[str, ...], int]]:
    """`py-spy record --format raw`: one "frame;frame;...;leaf count" line per distinct stack."""
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = tuple(f for f in stack.strip().split(";") if f) or (NO_FRAME,)
        stacks.append((frames, int(count)))
    return stacks


def top_frames(stacks: list[tuple[tuple[str, ...], int]], limit: int = TOP_ENTRIES) -> JsonObject:
    """The frames with the most own samples (leaf), each with its cumulative samples (anywhere
    on the stack, once per stack), as shares of all samples; then the frames with the most
    cumulative samples, less the entry chain (main, asyncio's run: on nearly every sample, next
    to no time of their own)."""
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    for frames, count in stacks:
        own[frames[-1]] += count
        for frame in set(frames):
            cumulative[frame] += count
    total = sum(count for _, count in stacks)
    entry_chain = {
        frame
        for frame, samples in cumulative.items()
        if samples >= ENTRY_CHAIN_SHARE * total and own[frame] < 0.01 * samples
    }
    return {
        "samples": total,
        "top_own": [
            {
                "frame": frame,
                "own": samples,
                "own_share": samples / total,
                "cumulative": cumulative[frame],
                "cumulative_share": cumulative[frame] / total,
            }
            for frame, samples in own.most_common(limit)
        ],
        "top_cumulative": [
            {"frame": frame, "cumulative": samples, "cumulative_share": samples / total}
            for frame, samples in cumulative.most_common(limit + len(entry_chain))
            if frame not in entry_chain
        ][:limit],
    }


def py_spy_error(log: str) -> str:
    """py-spy's error and its causes, without the Rust backtrace."""
    lines = []
    for line in log.splitlines():
        if line.startswith("Stack backtrace"):
            break
        if line.strip() and not line.startswith("py-spy>"):
            lines.append(line.strip())
    return " ".join(lines) or "no error printed (it had not attached yet when the phase ended)"


@dataclass
class Recorder:
    """One py-spy process sampling one relay process until stopped (or until it exits)."""

    target: Tracked
    output: Path
    popen: subprocess.Popen[bytes]
    log_file: Path

    @classmethod
    def start(cls, py_spy: str, target: Tracked, out_dir: Path) -> Recorder:
        out_dir.mkdir(parents=True, exist_ok=True)
        output = out_dir / f"{target.name}.txt"
        log_file = out_dir / f"{target.name}.log"
        argv = [py_spy, "record", "--pid", str(target.pid), "--rate", str(PY_SPY_RATE)]
        # --function: one entry per function, not per line; --nonblocking: never pause the
        # relay to read its stack (the phase's timing stays the relay's).
        argv += ["--format", "raw", "--function", "--nonblocking", "--output", str(output)]
        with log_file.open("wb") as log:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        return cls(target, output, popen, log_file)

    def stop(self) -> JsonObject:
        """py-spy writes its file on SIGINT, or by itself once its target has exited."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
        try:
            code = self.popen.wait(PY_SPY_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            code = self.popen.wait()
        entry: JsonObject = {
            "name": self.target.name,
            "role": self.target.role,
            "pid": self.target.pid,
            "file": str(self.output),
        }
        if code != 0 or not self.output.exists():
            log = self.log_file.read_text(errors="replace")
            entry["error"] = f"py-spy could not sample it (exit {code}): {py_spy_error(log)}"
            return entry
        return {**entry, **top_frames(parse_collapsed(self.output.read_text(errors="replace")))}


# --- Valkey and the relay's counters -----------------------------------------------------------


def commandstats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    """command -> (calls, usec) since Valkey started (or CONFIG RESETSTAT)."""
    stats: JsonObject = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
        for name, v in stats.items()
    }


def commandstats_delta(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], delivered: int
) -> list[JsonObject]:
    """Per command called in between (commands scripts run included), most time first."""
    rows = []
    for command, (calls, usec) in after.items():
        calls_before, usec_before = before.get(command, (0, 0))
        if calls == calls_before:
            continue
        calls, usec = calls - calls_before, usec - usec_before
        rows.append(
            {
                "command": command,
                "calls": calls,
                "usec": usec,
                "usec_per_call": usec / calls,
                "calls_per_delivered": calls / delivered if delivered else None,
                "usec_per_delivered": usec / delivered if delivered else None,
            }
        )
    return sorted(rows, key=lambda row: (-row["usec"], row["command"]))


def script_calls(metrics_text: str) -> dict[str, float]:
    """The relay process's apns_relay_redis_script_calls_total, by script."""
    calls: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        if family.name != SCRIPT_METRIC:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                calls[sample.labels["script"]] = sample.value
    return calls


def read_script_calls(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return script_calls(response.read().decode())


def script_rows(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]], delivered: int
) -> list[JsonObject]:
    """Calls per script over the phase, all relay processes summed (a process started in the
    phase counts from 0), per delivered notification."""
    total: Counter[str] = Counter()
    for process, calls in after.items():
        for script, value in calls.items():
            total[script] += int(value - before.get(process, {}).get(script, 0.0))
    return [
        {
            "script": script,
            "calls": calls,
            "calls_per_delivered": calls / delivered if delivered else None,
        }
        for script, calls in total.most_common()
        if calls
    ]


def slowlog_rows(entries: Iterable[JsonObject]) -> list[JsonObject]:
    rows = []
    for entry in entries:
        raw = entry["command"]
        command = raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)
        words = command.split()
        script = None
        if len(words) > 1 and words[0].upper() == "FCALL":
            script = script_of(words[1])
        rows.append(
            {
                "duration_us": int(entry["duration"]),
                "command": command[:120],
                "script": script,
            }
        )
    return rows


# --- one phase ---------------------------------------------------------------------------------


@dataclass
class Profiler:
    """What `--profile` needs across phases; `session` starts one phase's recording."""

    redis_client: redis.Redis
    out_dir: Path
    py_spy: str | None = field(default_factory=find_py_spy)

    def py_spy_absent(self) -> str | None:
        if self.py_spy is None:
            return f"py-spy is not installed (make bench-setup installs it into {PY_SPY_DIR})"
        return None

    def note(self) -> str:
        sampler = self.py_spy_absent() or (
            f"py-spy ({self.py_spy}) sampled each relay process {PY_SPY_RATE} times a second "
            "without pausing it; its own CPU is not any role's, but it shares the cores"
        )
        return f"profiled: {sampler}; profiles in profile.md"

    def session(self, phase: str, relay: Relay) -> ProfileSession:
        return ProfileSession(self, phase, relay)


class ProfileSession:
    """One phase: py-spy on every relay process (one started in the phase attaches as it does),
    Valkey's counters and the relay's script counters read at both ends of the window."""

    def __init__(self, profiler: Profiler, phase: str, relay: Relay) -> None:
        self.profiler = profiler
        self.phase = phase
        self.relay = relay
        self.recorders: list[Recorder] = []
        self.processes: list[tuple[Tracked, str]] = []
        self.scripts_before: dict[str, dict[str, float]] = {}
        client = profiler.redis_client
        self.slowlog_threshold = str(
            client.config_get("slowlog-log-slower-than")["slowlog-log-slower-than"]
        )
        client.config_set("slowlog-log-slower-than", SLOWLOG_SLOWER_THAN_US)
        client.slowlog_reset()
        self.stats_before = commandstats(client)
        for tracked, metrics_url in relay.processes():
            self.scripts_before[tracked.name] = read_script_calls(metrics_url)
            self.attach(tracked, metrics_url)
        relay.on_start = self.attach
        self.stats_after: dict[str, tuple[int, int]] = {}
        self.scripts_after: dict[str, dict[str, float]] = {}
        self.slowlog: list[JsonObject] = []
        self.sampled: list[JsonObject] = []
        self.stopped = False

    def attach(self, tracked: Tracked, metrics_url: str) -> None:
        """Sample a relay process from now on; one started in the phase counts from zero."""
        self.processes.append((tracked, metrics_url))
        if self.profiler.py_spy is not None:
            out_dir = self.profiler.out_dir / self.phase
            self.recorders.append(Recorder.start(self.profiler.py_spy, tracked, out_dir))

    def stop(self) -> None:
        """The window's end: read every counter, stop every py-spy."""
        self.stopped = True
        self.relay.on_start = None
        client = self.profiler.redis_client
        self.stats_after = commandstats(client)
        # A process stopped in the window took its counters with it (no phase stops one there).
        self.scripts_after = {
            tracked.name: read_script_calls(url)
            for tracked, url in self.processes
            if tracked.alive()
        }
        self.slowlog = client.slowlog_get(SLOWLOG_ENTRIES)
        client.config_set("slowlog-log-slower-than", self.slowlog_threshold)
        self.sampled = [recorder.stop() for recorder in self.recorders]

    def report(self, delivered: int, wall_s: float) -> JsonObject:
        if not self.stopped:  # the phase failed before its window ended
            self.stop()
        absent = self.profiler.py_spy_absent()
        return {
            "delivered": delivered,
            "wall_s": wall_s,
            "py_spy": {
                "status": "absent" if absent else "recorded",
                "why": absent,
                "rate_per_s": PY_SPY_RATE,
                "processes": self.sampled,
            },
            "commandstats": commandstats_delta(self.stats_before, self.stats_after, delivered),
            "scripts": script_rows(self.scripts_before, self.scripts_after, delivered),
            "slowlog": slowlog_rows(self.slowlog),
            "slowlog_slower_than_us": SLOWLOG_SLOWER_THAN_US,
        }
