"""The relay's processes: `serve` (api + worker), `api`, `worker`. Development mode (`serve --dev`)
lives in the development kit (relay_devkit.dev_mode), imported only when asked for."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import sys
import traceback
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog
from aiohttp import web
from redis.exceptions import AuthenticationError, NoPermissionError

from relay import metrics
from relay.check import NO_SPOOL, NO_SPOOL_FIX
from relay.cli import DEV_AUTH_CHOICES, DEV_STATE_DIR
from relay.config import App, ConfigError, Settings, config_file, load_settings
from relay.credential_files import load_credentials, publish_certificate_expiry
from relay.credentials import CertificateCredentials
from relay.credentials import Credentials as SendingCredentials
from relay.delivery import apns
from relay.delivery.rotator import SIGHUP_TRIGGER, CredentialRotator
from relay.delivery.worker import DeliveryWorker
from relay.http.app import create_app, server_options
from relay.http.auth import Credentials
from relay.http.receipts import create_receipts_app, prime_receipt_series
from relay.http.state import RelayState
from relay.logs import configure_logging, redact_text
from relay.store.connection import connect, replica_acknowledgement
from relay.store.errors import REDIS_ERRORS
from relay.store.memory import MemoryWatch
from relay.store.queue import RelayQueue
from relay.store.records import QueueLimits
from relay.store.retention import keep_history
from relay.store.spool import Spool

log = structlog.get_logger("relay.service")

DEFAULT_WORKER_PORT = 8081
DEV_ENV = "RELAY_DEV"  # "1" (or true/yes/on): `serve` in development mode, as with --dev
# Exit statuses of a process that does not start: its configuration is wrong (2), or something
# outside it refused (3): the port is taken, Redis turns the relay's credentials away.
EXIT_CONFIG = 2
EXIT_START = 3
# Redis answers but refuses this relay: no retry mends that. An unreachable Redis is not among
# them: the api holds and spools, the worker waits, readiness says so (see the README). An
# eviction policy that may evict queued work (relay.store.memory.policy_refusal) is the other
# refusal, checked when Redis first answers.
REDIS_REFUSALS = (AuthenticationError, NoPermissionError)


class StartupError(Exception):
    """The process cannot start here for a reason outside its configuration: its port, Redis."""


class DevelopmentMode(Protocol):
    """What `serve --dev` adds to a serving relay (relay_devkit.dev_mode.DevEnvironment)."""

    def announce(self, settings: Settings, relay_url: str) -> None: ...

    async def watch(self) -> None:
        """Returns only when a part development mode started has failed for good."""


NO_CREDENTIALS = "this process holds no APNs credentials to reload (the worker's are)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML configuration file (default: $RELAY_CONFIG)")
    parser.add_argument(
        "--dev",
        action="store_true",
        help=f"serve only: development mode (also ${DEV_ENV}=1): start an embedded Valkey, the"
        " APNs simulator and an API token for whatever is not configured",
    )
    parser.add_argument("--host", help="listen address (default: http.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: http.port, 8080)")
    parser.add_argument(
        "--state-dir",
        default=DEV_STATE_DIR,
        help="development mode: where the embedded Valkey and the simulator keep their files",
    )
    parser.add_argument(
        "--grace", type=float, default=10.0, help="seconds in-flight sends get at shutdown"
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        help="when the process cannot start, print the traceback under the one-line reason",
    )
    if parser.prog.endswith(" serve"):  # the one role with a development mode
        parser.add_argument(
            "--auth",
            choices=DEV_AUTH_CHOICES,
            default="token",
            help="development mode: the simulator app's APNs credentials, a .p8 token key or a "
            "push certificate issued by the simulator (default token)",
        )


def development_requested(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> bool:
    return bool(args.dev) or env.get(DEV_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def missing_settings(settings: Settings, role: str) -> list[str]:
    """What a role cannot run without outside development mode (nothing is filled in there)."""
    missing = []
    if not settings.redis.url:
        missing.append("redis.url (or RELAY_REDIS_URL)")
    if not settings.apps:
        missing.append("apps (at least one app with its APNs credentials)")
    auth = settings.auth
    if role != "worker" and not (auth.api_tokens or auth.basic or auth.scoped):
        missing.append("auth (api_tokens, basic or scoped; or RELAY_API_TOKENS, RELAY_BASIC_AUTH)")
    return missing


def _refuse(message: str, status: int = EXIT_CONFIG, *, debug: bool = False) -> int:
    if debug:  # a traceback quotes values too (a path that is a key, a URL): redacted alike
        print(redact_text(traceback.format_exc()), end="", file=sys.stderr)
    print(f"apns-relay: {redact_text(message)}", file=sys.stderr)
    return status


def _cannot_start(error: ConfigError | StartupError, debug: bool) -> int:
    if isinstance(error, StartupError):
        return _refuse(str(error), EXIT_START, debug=debug)
    # One line, however many problems: a log collector keeps it as one event.
    return _refuse(f"invalid configuration: {'; '.join(error.problems)}", debug=debug)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as error:
        return _cannot_start(error, args.debug)
    debug = args.debug or settings.logging.level == "debug"
    if args.dev and args.command != "serve":
        return _refuse(f"{args.command} --dev: development mode is for `serve` only")
    # RELAY_DEV concerns `serve` alone: an api or worker started from the same shell is unaffected.
    dev_mode = args.command == "serve" and development_requested(args)
    if not dev_mode and (missing := missing_settings(settings, args.command)):
        # One line, before anything starts: production never falls back to a stand-in.
        return _refuse(
            f"not configured: {'; '.join(missing)}. Give them in the config file (--config,"
            " $RELAY_CONFIG) or the environment, or run `apns-relay serve --dev` for"
            " development mode"
        )
    configure_logging(settings.logging.format, settings.logging.level)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    # Only development mode writes files: api and worker run on a read-only root filesystem.
    if not dev_mode:
        try:
            return asyncio.run(_serve(args.command, settings, args, None))
        except (ConfigError, StartupError) as error:
            return _cannot_start(error, debug)
    try:
        # Imported only here: production processes load nothing of the development kit.
        from relay_devkit import dev_mode as kit
    except ModuleNotFoundError as error:
        if error.name != "relay_devkit":
            raise
        return _refuse(
            "serve --dev: development mode needs the development kit (relay_devkit), which this"
            " installation does not include (the production image leaves it out); run it from"
            " a source checkout (make run)"
        )
    try:
        with kit.development_mode(settings, Path(args.state_dir).resolve(), args.auth) as (
            settings,
            dev,
        ):
            return asyncio.run(_serve(args.command, settings, args, dev))
    except (ConfigError, StartupError) as error:
        return _cannot_start(error, debug)
    except kit.START_ERRORS as error:
        return _refuse(str(error), debug=debug)


# Building the parts from settings


def make_queue(settings: Settings) -> RelayQueue:
    assert settings.redis.url, "development_mode() fills in the URL"
    redis = connect(settings.redis)
    queue = settings.queue
    return RelayQueue(
        redis,
        QueueLimits(
            shards=settings.redis.shards,
            max_per_device=queue.max_per_device,
            max_pending=queue.max_pending,
            retention_s=queue.retention_seconds,
            lease_ms=queue.lease_seconds * 1000,
            dead_token_ttl_s=queue.dead_token_ttl_seconds,
            supersede=queue.supersede,
        ),
    )


def open_spool(settings: Settings) -> Spool | None:
    """The api's spool, locked for this process and recovered; None when none is configured."""
    ingest = settings.ingest
    if ingest.spool_dir is None:
        return None
    try:
        return Spool.open(ingest.spool_dir, ingest.spool_max_bytes, ingest.spool_max_notifications)
    except OSError as error:
        raise ConfigError([f"ingest.spool_dir: {ingest.spool_dir}: {error}"]) from None


def make_client(
    app: App,
    settings: Settings,
    credentials: SendingCredentials | None = None,
    *,
    counted: bool = True,
) -> apns.ApnsClient:
    """The app's APNs client, with `credentials` (already read) or those its files hold now;
    `counted` False for a check's probe (not in the delivery metrics)."""
    if credentials is None:
        credentials = load_credentials(app)
    if isinstance(credentials, CertificateCredentials):
        publish_certificate_expiry(app.name, credentials.certificate)
    return apns.ApnsClient(
        app.name,
        app.topic,
        app.apns_endpoint(),
        credentials,
        environment=app.environment,
        request_timeout_s=settings.delivery.request_timeout_seconds,
        max_connections=app.max_connections,
        internal_error_streak=settings.delivery.connection_internal_error_streak,
        counted=counted,
    )


@contextlib.asynccontextmanager
async def http_server(
    application: web.Application, host: str, port: int
) -> AsyncIterator[web.AppRunner]:
    runner = web.AppRunner(
        application, access_log=None, handle_signals=False, **server_options(application)
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, reuse_address=True).start()
    except OSError as error:
        await runner.cleanup()
        raise StartupError(f"cannot listen on {host}:{port}: {error.strerror or error}") from error
    try:
        yield runner
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def receipts_server(
    state: RelayState, host: str, *, ingest: bool
) -> AsyncIterator[str | None]:
    """The listener of http.receipts_port (POST /v1/receipts alone), when set: its address."""
    port = state.settings.http.receipts_port
    if not ingest or port is None:
        yield None
        return
    async with http_server(create_receipts_app(state), host, port) as runner:
        yield bound_address(runner)


def bound_address(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


@dataclass
class RunningRelay:
    """One process's relay, serving: its HTTP address, queue, worker and its APNs clients (when
    it delivers), state."""

    url: str
    queue: RelayQueue
    state: RelayState
    memory: MemoryWatch
    worker: DeliveryWorker | None
    worker_task: asyncio.Task[None] | None
    clients: Mapping[str, apns.ApnsClient]
    receipts_url: str | None = None  # http.receipts_port's listener, when set


def make_worker(
    settings: Settings, queue: RelayQueue, clients: Mapping[str, apns.ApnsClient]
) -> DeliveryWorker:
    if not settings.apps:
        raise ConfigError(["apps: a worker needs at least one app"])
    return DeliveryWorker(
        queue,
        clients,
        retry=settings.retry.policy(),
        batch_size=settings.delivery.batch_size,
        pause_probe_s=settings.delivery.pause_probe_seconds,
        circuit_policy=settings.circuit.policy(settings.delivery.request_timeout_seconds),
        known_actions={app.name: app.known_actions for app in settings.apps},
    )


@contextlib.asynccontextmanager
async def run_relay(
    settings: Settings,
    *,
    role: str = "serve",
    host: str = "127.0.0.1",
    port: int = 0,
    grace_s: float = 10.0,
) -> AsyncIterator[RunningRelay]:
    """Serve HTTP (and deliver, for `serve` and `worker`) until the block ends, then shut down
    as at SIGTERM: readiness and ingest turn traffic away first; the worker stops claiming,
    lets its sends in flight finish within `grace_s` and gives the rest back at once."""
    if not settings.redis.url:
        raise ConfigError(["redis.url: required (set RELAY_REDIS_URL); only `serve` embeds one"])
    queue = make_queue(settings)
    ingest = role != "worker"
    spool = open_spool(settings) if ingest else None
    background_stop = asyncio.Event()
    replay_task: asyncio.Task[None] | None = None
    memory = MemoryWatch(queue.client, settings.redis.memory_watermark)
    memory_task: asyncio.Task[None] | None = None
    history_task: asyncio.Task[None] | None = None
    try:
        delivers = role in ("serve", "worker")
        clients = {app.name: make_client(app, settings) for app in settings.apps if delivers}
        worker = make_worker(settings, queue, clients) if delivers else None
        state = RelayState(
            settings,
            queue,
            Credentials.from_settings(settings),
            paused_apps=(lambda: worker.paused_apps) if worker else dict,
            replicas=replica_acknowledgement(queue.client, settings.redis),
            spool=spool,
            memory=memory,
        )
        if worker is not None:
            state.extra_ready_checks.append(worker.delivery_failing)
        if spool is not None:
            replay_task = asyncio.create_task(state.ingest.replay(background_stop))
        metrics.prime_app_series(
            (app.name for app in settings.apps), ingest=ingest, delivery=worker is not None
        )
        if ingest:
            prime_receipt_series(settings.receipt_secrets())
        try:
            # One command first: a fresh cluster client learns the slot map once, rather than
            # under a burst of first requests.
            await queue.ping()
            if worker is not None:
                # Listening before the first request: a push is then picked up at once, not at
                # the idle worker's next look a second later.
                await queue.listen_for_work()
        except REDIS_REFUSALS as error:
            raise StartupError(
                f"Redis refused the relay (redis.url, RELAY_REDIS_URL): {error}"
            ) from error
        except REDIS_ERRORS:
            pass  # unreachable for now: served all the same, readiness reports it
        else:
            # Unreachable: the policy is checked when Redis first answers (_serve stops then).
            await memory.poll()
            if (refusal := memory.refusal or await queue.layout_refusal()) is not None:
                raise StartupError(refusal)
        memory_task = asyncio.create_task(memory.run(background_stop))
        if worker is not None:
            history_task = asyncio.create_task(keep_history(queue, memory, background_stop))
        async with (
            http_server(create_app(state, ingest=ingest), host, port) as runner,
            receipts_server(state, host, ingest=ingest) as receipts_url,
        ):
            worker_task = asyncio.create_task(worker.run(grace_s)) if worker else None
            try:
                yield RunningRelay(
                    bound_address(runner),
                    queue,
                    state,
                    memory,
                    worker,
                    worker_task,
                    clients,
                    receipts_url,
                )
            finally:
                state.draining = True
                log.info("shutting_down", role=role, grace_s=grace_s if worker else 0)
                if worker is not None and worker_task is not None:
                    worker.stop()
                    await worker_task
                for client in clients.values():
                    await client.close()
                # What is spooled survives the exit on the volume; moving it to Redis now, if
                # Redis answers, spares it depending on that volume (not into one that may
                # evict it).
                if spool is not None and (
                    memory.refusal is not None or not await state.ingest.drain(grace_s)
                ):
                    log.warning(
                        "spool_left_on_disk",
                        notifications=len(spool.ledger.pending),
                        directory=str(spool.directory),
                    )
    finally:
        background_stop.set()
        if replay_task is not None:
            await replay_task
        if memory_task is not None:
            await memory_task
        if history_task is not None:
            await history_task
        if spool is not None:
            await spool.close()
        await queue.aclose()


async def _serve(
    role: str,
    settings: Settings,
    args: argparse.Namespace,
    dev: DevelopmentMode | None,
) -> int:
    """Serve until SIGTERM/SIGINT (0), or until the worker or development mode's Valkey fails
    for good (1, so that whatever runs the process restarts it)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    default_port = DEFAULT_WORKER_PORT if role == "worker" else settings.http.port
    async with run_relay(
        settings,
        role=role,
        host=args.host or settings.http.host,
        port=default_port if args.port is None else args.port,
        grace_s=args.grace,
    ) as relay:
        log.info("listening", role=role, url=relay.url, pid=os.getpid())
        if role != "worker" and dev is None and settings.ingest.spool_dir is None:
            log.warning("spool_unset", detail=NO_SPOOL, fix=NO_SPOOL_FIX)
        if dev is not None:
            dev.announce(settings, relay.url)
        waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(stop.wait())}
        watcher = None
        # Development mode's credentials are the simulator's own: nothing to rotate there.
        if relay.clients and dev is None:
            rotator = CredentialRotator(config_file(args.config), settings, relay.clients)
            loop.add_signal_handler(signal.SIGHUP, rotator.reload_soon, SIGHUP_TRIGGER)
            if settings.delivery.credential_poll_seconds > 0:
                poll_s = settings.delivery.credential_poll_seconds
                watcher = asyncio.ensure_future(rotator.watch(poll_s))
        else:
            # Nothing to reload here, but a SIGHUP sent to every pod of a release (a config
            # reloader does that) must not stop an api: the default action would.
            loop.add_signal_handler(
                signal.SIGHUP,
                functools.partial(log.info, "sighup_ignored", role=role, reason=NO_CREDENTIALS),
            )
        if relay.worker_task:
            waiters.add(relay.worker_task)
        # Redis did not answer at start: its policy is checked when it first does.
        policy_check = None
        if not relay.memory.has_answered:
            policy_check = asyncio.ensure_future(_policy_refused(relay.memory))
            waiters.add(policy_check)
        supervisor = None
        if dev is not None:
            supervisor = asyncio.ensure_future(dev.watch())
            waiters.add(supervisor)
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if watcher is not None:
            watcher.cancel()
        for waiter in waiters:
            if waiter is not relay.worker_task:
                waiter.cancel()
    if policy_check is not None and policy_check.done() and not policy_check.cancelled():
        # A refusal at start, only later: one line on stderr and exit 3 all the same.
        raise StartupError(policy_check.result())
    failed = supervisor is not None and supervisor.done() and not supervisor.cancelled()
    log.info("stopped", role=role, exit_status=1 if failed else 0)
    return 1 if failed else 0


async def _policy_refused(memory: MemoryWatch) -> str:
    """Once Redis first answers: the refusal of its eviction policy, logged; never returns when
    the policy is accepted."""
    await memory.answered()
    refusal = memory.refusal
    if refusal is None:
        await asyncio.Event().wait()  # accepted: nothing to stop for
        raise AssertionError("an Event nobody sets was set")
    log.error("redis_policy_refused", detail=refusal)
    return refusal
