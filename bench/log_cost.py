"""What one log line costs at the production setting (JSON, level info), before and after a change.

    .venv/bin/python bench/log_cost.py                      # before = relay/logs.py at BASELINE
    .venv/bin/python bench/log_cost.py --before <rev> --lines 20000 --rounds 7

"Before" is `relay/logs.py` as git holds it at `--before`, loaded beside the working tree's
module; "after" is the working tree's. Both write to a file (as the benchmark's processes do),
taking turns round by round, so a machine whose speed moves during the run moves both alike.
Each variant's lines are checked to carry the same fields (timestamps aside) before any number is
printed: a faster path that logs something else is not a result. Prints a markdown table of µs per
line (the median of the rounds).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog

import relay.core.redaction
import relay.telemetry.logs

ROOT = Path(__file__).resolve().parent.parent
# The last commit before the relay's own lines left the stdlib route (see docs/operations.md, Logs).
BASELINE = "24668ab"
TOKEN = "c0ffee12" * 8
# The worker's `apns_attempt` line as it is logged for a delivered notification.
ATTEMPT = {
    "id": "07-0123456789abcdef0123456789abcdef",
    "app": "dev",
    "token": relay.core.redaction.mask_token(TOKEN),
    "service_id": "3SQI3S31693JL9L3R00506T40C000U73",
    "action": "get-dialog-start-chat",
    "attempt": 1,
    "status": 200,
    "reason": None,
    "apns_id": "123e4567-e89b-12d3-a456-426614174000",
    "apns_unique_id": "8c1a7f3e-2b4d-4e6f-9a1b-3c5d7e9f1a2b",
    "latency_ms": 3.42,
    "outcome": "delivered",
}
# A line the redaction has work on: a parser's repr of a request with a credential and a token.
HOSTILE = {"error": f"b'Authorization: Bearer sEcReT-abc.123\\r\\n' for /v1/devices/dev/{TOKEN}"}


def logs_module_at(revision: str) -> types.ModuleType:
    """relay/logs.py as committed at `revision`, as a module of its own."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{revision}:relay/logs.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType(f"relay_logs_{revision}")
    exec(compile(source, f"{revision}:relay/logs.py", "exec"), module.__dict__)
    return module


@contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """configure_logging binds to sys.stderr when called: point it at a file for the variant."""
    saved = sys.stderr
    with path.open("w", encoding="utf-8") as file:
        sys.stderr = file
        try:
            yield
        finally:
            sys.stderr = saved


def cases() -> dict[str, Callable[[], None]]:
    """One log call per case, through loggers got after configure_logging (as a process does)."""
    worker = structlog.get_logger("relay.worker")
    stdlib = logging.getLogger("asyncio")
    return {
        "apns_attempt (relay, info)": lambda: worker.info("apns_attempt", **ATTEMPT),
        "with a credential and a token": lambda: worker.warning("apns_error", **HOSTILE),
        "stdlib logger (asyncio warning)": lambda: stdlib.warning(
            "Executing %s took %.3f s", "x", 0.2
        ),
        "debug line at level info": lambda: worker.debug("apns_attempt", **ATTEMPT),
    }


def run_round(module: types.ModuleType, path: Path, lines: int) -> dict[str, float]:
    """µs per line of each case, logging `lines` lines of it into `path`."""
    result = {}
    with stderr_to(path):
        module.configure_logging("json", "info")
        for name, call in cases().items():
            call()  # the first call binds and caches the logger
            started = time.perf_counter()
            for _ in range(lines):
                call()
            result[name] = (time.perf_counter() - started) / lines * 1e6
        logging.getLogger().handlers[:] = []
    return result


def fields_of(path: Path) -> list[dict[str, Any]]:
    """The distinct lines of a variant's file, timestamps aside."""
    distinct = {}
    for line in path.read_text().splitlines():
        event = json.loads(line)
        event.pop("timestamp")
        distinct[json.dumps(event, sort_keys=True)] = event
    return [distinct[key] for key in sorted(distinct)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default=BASELINE, help="git revision of the baseline")
    parser.add_argument("--lines", type=int, default=10_000, help="lines per case per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    variants = {"before": logs_module_at(args.before), "after": relay.telemetry.logs}
    measured: dict[str, dict[str, list[float]]] = {name: {} for name in variants}
    with tempfile.TemporaryDirectory() as directory:
        files = {name: Path(directory) / f"{name}.jsonl" for name in variants}
        for _ in range(args.rounds):
            for name, module in variants.items():
                for case, micros in run_round(module, files[name], args.lines).items():
                    measured[name].setdefault(case, []).append(micros)
        before, after = (fields_of(files[name]) for name in variants)
        if before != after:
            print(f"the variants log different lines:\n{before}\n{after}", file=sys.stderr)
            return 1
        assert not any(TOKEN in json.dumps(line) for line in after), "a token left unmasked"
    print(f"µs per line, median of {args.rounds} rounds of {args.lines} lines (JSON, level info)")
    print(f"before: relay/logs.py at {args.before}; after: the working tree\n")
    print("| line | before µs | after µs | after/before |")
    print("|---|---:|---:|---:|")
    for case in measured["before"]:
        old = statistics.median(measured["before"][case])
        new = statistics.median(measured["after"][case])
        print(f"| {case} | {old:.1f} | {new:.1f} | {new / old:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
