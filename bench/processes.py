"""Child processes of the benchmark: start, wait until ready, stop, and their CPU and peak RSS."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# psutil ships no type hints; unused-ignore keeps mypy quiet where types-psutil is installed.
import psutil  # type: ignore[import-untyped, unused-ignore]

REPO_ROOT = Path(__file__).resolve().parent.parent
POLL_INTERVAL_S = 0.02
RSS_SAMPLE_INTERVAL_S = 0.2


class ProcessFailed(RuntimeError):
    pass


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and all its descendants, live or already reaped by it."""
    try:
        root = psutil.Process(pid)
        times = root.cpu_times()
        total: float = times.user + times.system + times.children_user + times.children_system
        descendants = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    for child in descendants:
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue  # its time moves to its parent's children_* once reaped
        # children_* of a live descendant counts only its own reaped children: no double count.
        total += times.user + times.system + times.children_user + times.children_system
    return total


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process plus its live descendants (the simulator's workers)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


@dataclass
class Tracked:
    """One process the benchmark accounts for, under a role (relay-api, valkey, ...)."""

    role: str
    name: str
    pid: int
    popen: subprocess.Popen[bytes] | None = None  # None: owned and reaped by someone else
    log_file: Path | None = None
    final_cpu_s: float | None = None  # from wait4's rusage once it has exited
    exit_code: int | None = None

    def cpu_seconds(self) -> float:
        if self.final_cpu_s is not None:
            return self.final_cpu_s
        return tree_cpu_seconds(self.pid)

    def alive(self) -> bool:
        return self.exit_code is None and self.final_cpu_s is None and self._reap(os.WNOHANG)

    def log_tail(self, size: int = 3000) -> str:
        if self.log_file is None or not self.log_file.exists():
            return ""
        return self.log_file.read_text(errors="replace")[-size:]

    def wait(self, timeout_s: float) -> int:
        """Its exit code; rusage (with its reaped descendants) becomes its final CPU seconds."""
        deadline = time.monotonic() + timeout_s
        while self._reap(os.WNOHANG):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} (pid {self.pid}) still running after {timeout_s} s"
                )
            time.sleep(POLL_INTERVAL_S)
        assert self.exit_code is not None
        return self.exit_code

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGTERM (graceful), then SIGKILL after the timeout."""
        if self.exit_code is not None:
            return self.exit_code
        self._signal(signal.SIGTERM)
        try:
            return self.wait(timeout_s)
        except TimeoutError:
            self._signal(signal.SIGKILL)
            return self.wait(timeout_s)

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def _reap(self, options: int) -> bool:
        """True while still running."""
        if self.popen is None:
            return bool(psutil.pid_exists(self.pid))
        if self.exit_code is not None:
            return False
        try:
            pid, status, usage = os.wait4(self.pid, options)
        except ChildProcessError:
            # Reaped elsewhere: the exit code is lost, the CPU reading stays the last one.
            self.exit_code = -1
            self.final_cpu_s = self.final_cpu_s or 0.0
            return False
        if pid == 0:
            return True
        self.exit_code = os.waitstatus_to_exitcode(status)
        self.popen.returncode = self.exit_code  # so Popen never waits on a reaped pid
        self.final_cpu_s = usage.ru_utime + usage.ru_stime
        return False


def start_process(
    role: str,
    name: str,
    argv: Sequence[str],
    log_file: Path,
    env: dict[str, str] | None = None,
) -> Tracked:
    """Start a child in its own session (so a Ctrl-C at the harness reaches only the harness)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("wb") as log:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )
    return Tracked(role, name, popen.pid, popen, log_file)


def python_argv(*arguments: str) -> list[str]:
    return [sys.executable, *arguments]


def wait_until(ready: Callable[[], bool], tracked: Tracked, timeout_s: float, what: str) -> None:
    """Poll `ready` until true; fail early, with its log, if the process dies first."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if not tracked.alive():
            raise ProcessFailed(
                f"{tracked.name} exited ({tracked.exit_code}) before {what}:\n{tracked.log_tail()}"
            )
        if time.monotonic() > deadline:
            raise ProcessFailed(
                f"{tracked.name}: no {what} within {timeout_s} s\n{tracked.log_tail()}"
            )
        time.sleep(POLL_INTERVAL_S)


def http_ok(url: str) -> Callable[[], bool]:
    def answers() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1.0) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    return answers


@dataclass
class CpuLedger:
    """Every tracked process; CPU deltas per role between two snapshots."""

    processes: list[Tracked] = field(default_factory=list)

    def add(self, tracked: Tracked) -> Tracked:
        self.processes.append(tracked)
        return tracked

    def snapshot(self) -> dict[int, float]:
        return {id(t): t.cpu_seconds() for t in self.processes}

    def by_role_since(self, before: dict[int, float]) -> dict[str, float]:
        """CPU seconds each role used since `before` (processes started since count from 0)."""
        used: dict[str, float] = {}
        for tracked in self.processes:
            delta = tracked.cpu_seconds() - before.get(id(tracked), 0.0)
            used[tracked.role] = used.get(tracked.role, 0.0) + max(delta, 0.0)
        return used

    def live(self) -> Iterable[Tracked]:
        return [t for t in self.processes if t.exit_code is None]


class RssSampler:
    """Peak RSS of every live tracked process, sampled in a thread; `take_peaks` restarts it."""

    def __init__(self, ledger: CpuLedger, interval_s: float = RSS_SAMPLE_INTERVAL_S) -> None:
        self.ledger = ledger
        self.interval_s = interval_s
        self.peaks: dict[str, tuple[str, int]] = {}  # name -> (role, bytes)
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()

    def sample(self) -> None:
        for tracked in list(self.ledger.live()):
            rss = tree_rss_bytes(tracked.pid)
            with self.lock:
                _, peak = self.peaks.get(tracked.name, (tracked.role, 0))
                self.peaks[tracked.name] = (tracked.role, max(peak, rss))

    def take_peaks(self) -> dict[str, tuple[str, int]]:
        self.sample()
        with self.lock:
            peaks, self.peaks = self.peaks, {}
        return peaks

    def _run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            self.sample()
