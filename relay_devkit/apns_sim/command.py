"""`apns-relay apns-sim`: start the simulator (TLS h2 server(s) + control API), write sim.json."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import secrets
import signal
import sys
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from aiohttp import web

from relay_devkit.apns_sim import certificate_api
from relay_devkit.apns_sim.certs import (
    create_server_identity,
    create_signing_key,
    is_identifier,
    random_identifier,
)
from relay_devkit.apns_sim.control import (
    DEFAULT_LOG_LIMIT,
    ControlPlane,
    LocalPlane,
    SimulatorState,
    WorkerHub,
    build_control_app,
)
from relay_devkit.apns_sim.faults import NO_FAULTS, FaultConfig, FaultConfigError
from relay_devkit.apns_sim.info import SIM_JSON
from relay_devkit.apns_sim.protocol import (
    DEFAULT_TOKEN_LENGTH,
    ENVIRONMENTS,
    PRODUCTION,
    SANDBOX,
    ConnectionRules,
)
from relay_devkit.apns_sim.push_certificates import CA_FILE, PushCertificateAuthority
from relay_devkit.apns_sim.server import (
    DEFAULT_MAX_STREAMS,
    H2Server,
    KeySource,
    ServerSetup,
    WorkerSpec,
    listening_socket,
    server_ssl_context,
    start_listeners,
    worker_main,
)

WORKER_START_TIMEOUT_S = 60.0
WORKER_STOP_TIMEOUT_S = 5.0

log = logging.getLogger("relay_devkit.apns_sim")


@dataclass(frozen=True, slots=True)
class SimulatorOptions:
    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 0  # production
    sandbox_port: int = 0
    control_port: int = 0
    workers: int = 1
    max_streams: int = DEFAULT_MAX_STREAMS
    dynamic_streams: bool = True  # --stream-limit apple (False: fixed)
    open_tokens: bool = False  # --tokens open
    token_length: int = DEFAULT_TOKEN_LENGTH
    idle_timeout_s: float | None = None
    goaway_after_errors: int | None = None
    key_environments: frozenset[str] = frozenset(ENVIRONMENTS)  # of the generated key
    topics: frozenset[str] | None = None
    extra_keys: tuple[KeySource, ...] = ()
    faults: FaultConfig = NO_FAULTS
    log_limit: int = DEFAULT_LOG_LIMIT
    seed: int | None = None
    key_id: str = field(default_factory=random_identifier)
    team_id: str = field(default_factory=random_identifier)
    tls_names: tuple[str, ...] = ()


class Simulator:
    """A running simulator in this event loop (its h2 servers here, or in worker processes)."""

    def __init__(self, options: SimulatorOptions) -> None:
        self.options = options
        self.info: dict[str, Any] = {}
        self._h2_servers: list[H2Server] = []
        self._control: web.AppRunner | None = None
        self._hub: WorkerHub | None = None
        self._workers: list[BaseProcess] = []

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        options = self.options
        state_dir = options.state_dir.resolve()
        state_dir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            (state_dir / SIM_JSON).unlink()  # a waiter must never read the last run's ports
        identity = create_server_identity(state_dir, self.options.tls_names)
        signing_key = create_signing_key(state_dir, options.key_id, options.team_id)
        push_authority = PushCertificateAuthority.in_directory(state_dir)
        push_ca = state_dir / CA_FILE
        keys = (
            KeySource(
                signing_key.key_id,
                signing_key.team_id,
                signing_key.key_file,
                options.key_environments,
            ),
            *options.extra_keys,
        )
        setup = ServerSetup(
            keys=keys,
            topics=options.topics,
            token_length=options.token_length,
            open_tokens=options.open_tokens,
            rules=ConnectionRules(
                max_streams=options.max_streams,
                dynamic_streams=options.dynamic_streams,
                idle_timeout_s=options.idle_timeout_s,
                goaway_after_errors=options.goaway_after_errors,
            ),
        )
        state = SimulatorState(options.faults, options.log_limit, options.token_length)
        wanted_ports = {PRODUCTION: options.port, SANDBOX: options.sandbox_port}
        plane: ControlPlane
        if options.workers <= 1:
            local = LocalPlane(state)
            socks = {
                env: listening_socket(options.host, port, reuse_port=False)
                for env, port in wanted_ports.items()
            }
            ports = {env: sock.getsockname()[1] for env, sock in socks.items()}
            self._h2_servers = await start_listeners(
                local,
                setup,
                server_ssl_context(identity.cert_file, identity.key_file, push_ca),
                socks,
                options.seed,
            )
            plane = local
        else:
            hub = self._hub = WorkerHub(state)
            hub_address = f"\0apns-sim-{os.getpid()}-{secrets.token_hex(6)}"
            await hub.listen(hub_address)
            # Held (bound, not listening) until the workers have bound the same ports.
            reservations = [
                listening_socket(options.host, port, reuse_port=True)
                for port in wanted_ports.values()
            ]
            ports = {
                env: sock.getsockname()[1]
                for env, sock in zip(wanted_ports, reservations, strict=True)
            }
            try:
                context = multiprocessing.get_context("spawn")
                for index in range(options.workers):
                    spec = WorkerSpec(
                        hub_address=hub_address,
                        host=options.host,
                        ports=tuple(ports.items()),
                        cert_file=identity.cert_file,
                        key_file=identity.key_file,
                        setup=setup,
                        seed=None if options.seed is None else options.seed + index,
                        client_ca_file=push_ca,
                    )
                    process = context.Process(
                        target=worker_main, args=(spec,), name=f"apns-sim-worker-{index}"
                    )
                    process.start()
                    self._workers.append(process)
                async with asyncio.timeout(WORKER_START_TIMEOUT_S):
                    await hub.wait_ready(options.workers)
            finally:
                for reservation in reservations:
                    reservation.close()
            plane = hub
        port = ports[PRODUCTION]
        control_app = build_control_app(plane)
        certificate_api.add_certificate_routes(control_app, push_authority, plane)
        self._control = web.AppRunner(control_app, access_log=None)
        await self._control.setup()
        site = web.TCPSite(self._control, options.host, options.control_port)
        await site.start()
        control_port = self._control.addresses[0][1]
        self.info = {
            "host": options.host,
            "port": port,
            "sandbox_port": ports[SANDBOX],
            "control_port": control_port,
            "ca": str(identity.ca_file),
            "key_file": str(signing_key.key_file),
            "key_id": signing_key.key_id,
            "team_id": signing_key.team_id,
            "workers": options.workers,
            "tokens": "open" if options.open_tokens else "registry",
            "stream_limit": "apple" if options.dynamic_streams else "fixed",
            "pid": os.getpid(),
            "push_ca": str(push_ca),
        }
        write_sim_json(state_dir, self.info)
        log.info(
            "apns-sim: HTTP/2+TLS production on https://%s:%d, sandbox on port %d (%d worker%s), "
            "control API on http://%s:%d, CA %s, signing key %s (key id %s, team id %s), "
            "state in %s",
            options.host,
            port,
            ports[SANDBOX],
            options.workers,
            "" if options.workers == 1 else "s",
            options.host,
            control_port,
            identity.ca_file,
            signing_key.key_file,
            signing_key.key_id,
            signing_key.team_id,
            state_dir / SIM_JSON,
        )

    async def stop(self) -> None:
        for server in self._h2_servers:
            await server.close()
        for process in self._workers:
            process.terminate()
        for process in self._workers:
            await asyncio.to_thread(process.join, WORKER_STOP_TIMEOUT_S)
            if process.is_alive():
                process.kill()
        if self._hub is not None:
            await self._hub.close()
        if self._control is not None:
            await self._control.cleanup()


def write_sim_json(state_dir: Path, info: dict[str, Any]) -> None:
    """Atomically, so that a waiter polling for the file never reads half of it."""
    temporary = state_dir / f".{SIM_JSON}.{os.getpid()}.tmp"
    temporary.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(temporary, state_dir / SIM_JSON)


# --- command line ---------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=0, help="production HTTP/2 TLS port (0: a free one)"
    )
    parser.add_argument(
        "--sandbox-port", type=int, default=0, help="sandbox HTTP/2 TLS port (0: a free one)"
    )
    parser.add_argument("--control-port", type=int, default=0, help="control API port (0: free)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".apns-sim"),
        help="where ca.pem, the .p8 key and sim.json are written (default .apns-sim)",
    )
    parser.add_argument("--workers", type=int, default=1, help="server processes on the port")
    parser.add_argument(
        "--max-streams",
        type=int,
        default=DEFAULT_MAX_STREAMS,
        help="SETTINGS_MAX_CONCURRENT_STREAMS once a request has succeeded (default 1000)",
    )
    parser.add_argument(
        "--stream-limit",
        choices=("apple", "fixed"),
        default="apple",
        help="apple (default): 1 stream until a 200 on the connection, then --max-streams, "
        "back to 1 after any other answer until the next 200; fixed: --max-streams always",
    )
    parser.add_argument(
        "--tokens",
        choices=("registry", "open"),
        default="registry",
        help="registry (default): only device tokens issued by POST /tokens, for their topic "
        "and environment; open: any well-formed token (load generation)",
    )
    parser.add_argument(
        "--token-length",
        type=int,
        default=DEFAULT_TOKEN_LENGTH,
        help=f"device token length in hex digits (default {DEFAULT_TOKEN_LENGTH})",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        metavar="SECONDS",
        help="GOAWAY IdleTimeout after this long without a request (default: never)",
    )
    parser.add_argument(
        "--goaway-after-errors",
        type=int,
        metavar="N",
        help="GOAWAY a connection after N consecutive 4xx answers, 410 excepted (default: never)",
    )
    parser.add_argument(
        "--key-environment",
        choices=("both", *ENVIRONMENTS),
        default="both",
        help="where the generated signing key is valid (default both); elsewhere its tokens "
        "get 403 BadEnvironmentKeyIdInToken",
    )
    parser.add_argument(
        "--topic",
        action="append",
        dest="topics",
        metavar="TOPIC",
        help="allow only these apns-topic values (repeatable; default: any)",
    )
    parser.add_argument(
        "--tls-name",
        action="append",
        default=[],
        dest="tls_names",
        help="another DNS name for the server certificate (repeatable), e.g. apns-sim",
    )
    parser.add_argument("--key-id", help="key id of the generated signing key (default random)")
    parser.add_argument("--team-id", help="team id of the generated signing key (default random)")
    parser.add_argument(
        "--trust-key",
        action="append",
        default=[],
        metavar="KEY_ID:TEAM_ID:PEM[:ENVIRONMENT]",
        help="also accept tokens signed by this key (public or private PEM), in both "
        "environments or only the one named",
    )
    parser.add_argument(
        "--log-limit",
        type=int,
        default=DEFAULT_LOG_LIMIT,
        help=f"accepted notifications kept (default {DEFAULT_LOG_LIMIT})",
    )
    parser.add_argument("--no-log", action="store_true", help="keep no notification log")
    parser.add_argument("--seed", type=int, help="seed of the fault dice (default random)")
    faults = parser.add_argument_group("faults (also settable at run time: PUT /faults)")
    faults.add_argument("--faults", metavar="JSON|@FILE", help="a whole fault configuration")
    faults.add_argument("--latency-ms", metavar="MS|MIN:MAX", help="answer latency")
    faults.add_argument("--stall-probability", type=float, help="never answer this share")
    faults.add_argument(
        "--stall-token",
        action="append",
        default=[],
        metavar="TOKEN",
        help="never answer this device token (repeatable)",
    )
    faults.add_argument("--error-probability", type=float, help="answer this share with an error")
    faults.add_argument("--error-status", type=int, default=500, help="status of those errors")
    faults.add_argument("--error-reason", default="InternalServerError", help="their reason")
    faults.add_argument(
        "--error-without-body",
        action="store_true",
        help="send those errors as a bare status, no JSON body",
    )
    faults.add_argument("--goaway-after", type=int, metavar="N", help="GOAWAY after N streams")
    faults.add_argument("--goaway-reason", default="Shutdown", help="GOAWAY debug reason")
    faults.add_argument(
        "--drop-after", type=int, metavar="N", help="cut the TCP connection after N streams"
    )
    faults.add_argument("--drop-probability", type=float, help="cut it at this share of streams")
    faults.add_argument(
        "--rate-limit",
        type=int,
        metavar="N",
        help="per device token: more than N a second get 429 TooManyRequests",
    )
    faults.add_argument(
        "--script",
        action="append",
        default=[],
        metavar="TOKEN:STATUS[:REASON]",
        help="the next answer for TOKEN (repeatable; consumed in order)",
    )
    certificate_api.configure(parser)


def options_from(args: argparse.Namespace) -> SimulatorOptions:
    """The options the arguments describe; ValueError names the argument that is wrong."""
    for name in ("key_id", "team_id"):
        value = getattr(args, name)
        if value is not None and not is_identifier(value):
            raise ValueError(f"--{name.replace('_', '-')}: must be 10 upper-case letters/digits")
    if args.workers < 1:
        raise ValueError("--workers: must be at least 1")
    if args.max_streams < 1:
        raise ValueError("--max-streams: must be at least 1")
    if args.token_length < 2 or args.token_length % 2:
        raise ValueError("--token-length: must be an even number of hex digits, at least 2")
    if args.idle_timeout is not None and args.idle_timeout <= 0:
        raise ValueError("--idle-timeout: must be a number of seconds above 0")
    if args.goaway_after_errors is not None and args.goaway_after_errors < 1:
        raise ValueError("--goaway-after-errors: must be at least 1")
    extra_keys = []
    for text in args.trust_key:
        key_id, _, rest = text.partition(":")
        team_id, _, pem = rest.partition(":")
        pem, _, environment = pem.partition(":")
        if not (is_identifier(key_id) and is_identifier(team_id) and pem):
            raise ValueError(
                f"--trust-key: expected KEY_ID:TEAM_ID:PEM_FILE[:ENVIRONMENT], got {text!r}"
            )
        if environment and environment not in ENVIRONMENTS:
            raise ValueError(f"--trust-key: environment must be one of {list(ENVIRONMENTS)}")
        environments = frozenset([environment] if environment else ENVIRONMENTS)
        extra_keys.append(KeySource(key_id, team_id, Path(pem).resolve(), environments))
    try:
        faults = FaultConfig.from_json(fault_document(args))
    except FaultConfigError as error:
        raise ValueError(f"faults: {error}") from error
    identifiers = {"key_id": args.key_id, "team_id": args.team_id}
    return SimulatorOptions(
        state_dir=args.state_dir,
        host=args.host,
        port=args.port,
        sandbox_port=args.sandbox_port,
        control_port=args.control_port,
        workers=args.workers,
        max_streams=args.max_streams,
        dynamic_streams=args.stream_limit == "apple",
        open_tokens=args.tokens == "open",
        token_length=args.token_length,
        idle_timeout_s=args.idle_timeout,
        goaway_after_errors=args.goaway_after_errors,
        key_environments=frozenset(
            ENVIRONMENTS if args.key_environment == "both" else [args.key_environment]
        ),
        topics=frozenset(args.topics) if args.topics else None,
        extra_keys=tuple(extra_keys),
        faults=faults,
        log_limit=0 if args.no_log else args.log_limit,
        seed=args.seed,
        tls_names=tuple(args.tls_names),
        **{k: v for k, v in identifiers.items() if v is not None},
    )


def fault_document(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON fault configuration the fault flags describe (flags override --faults)."""
    document: dict[str, Any] = {}
    if args.faults:
        text = Path(args.faults[1:]).read_text() if args.faults.startswith("@") else args.faults
        document = json.loads(text)
        if not isinstance(document, dict):
            raise ValueError("--faults: must be a JSON object")
    if args.latency_ms:
        low, _, high = args.latency_ms.partition(":")
        document["latency_ms"] = {"min": float(low), "max": float(high or low)}
    stall = document.setdefault("stall", {})
    if args.stall_probability is not None:
        stall["probability"] = args.stall_probability
    if args.stall_token:
        stall["tokens"] = args.stall_token
    if args.error_probability is not None:
        document["error"] = {
            "probability": args.error_probability,
            "status": args.error_status,
            "reason": None if args.error_without_body else args.error_reason,
            "body": not args.error_without_body,
        }
    if args.goaway_after is not None:
        document["goaway"] = {"after_streams": args.goaway_after, "reason": args.goaway_reason}
    drop = document.setdefault("drop", {})
    if args.drop_after is not None:
        drop["after_streams"] = args.drop_after
    if args.drop_probability is not None:
        drop["probability"] = args.drop_probability
    if args.rate_limit is not None:
        document["rate_limit"] = {"per_second": args.rate_limit}
    scripted = document.setdefault("scripted", {})
    for text in args.script:
        token, _, rest = text.partition(":")
        status, _, reason = rest.partition(":")
        if not status.isdigit():
            raise ValueError(f"--script: expected TOKEN:STATUS[:REASON], got {text!r}")
        scripted.setdefault(token, []).append({"status": int(status), "reason": reason or None})
    return document


def run(args: argparse.Namespace) -> int:
    if args.action == "issue-cert":
        return certificate_api.issue_certificate(args)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        options = options_from(args)
    except (ValueError, OSError) as error:
        print(f"apns-sim: {error}", file=sys.stderr)
        return 2
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(serve_until_stopped(options))
    return 0


async def serve_until_stopped(options: SimulatorOptions) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with Simulator(options):
        await stop.wait()
    log.info("apns-sim: stopped")
