"""The composition root: builds each role's objects (queue, spool, clients, worker, HTTP apps) from
the settings and runs them; relay.commands.serve parses the command line and calls it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiohttp import web
from redis.exceptions import AuthenticationError, NoPermissionError

from relay.config.loading import config_file
from relay.config.schema import ConfigError, Settings
from relay.credentials.check import NO_SPOOL, NO_SPOOL_FIX
from relay.credentials.rotator import SIGHUP_TRIGGER, CredentialRotator
from relay.delivery import apns
from relay.delivery.clients import make_client
from relay.delivery.worker import DeliveryWorker
from relay.http.app import create_app, server_options
from relay.http.auth import Credentials
from relay.http.receipts import create_receipts_app, prime_receipt_series
from relay.http.state import RelayState
from relay.store.connection import connect, replica_acknowledgement
from relay.store.errors import REDIS_ERRORS
from relay.store.memory import MemoryWatch
from relay.store.queue import RelayQueue
from relay.store.records import QueueLimits
from relay.store.retention import keep_history
from relay.store.spool import Spool
from relay.telemetry import metrics

log = structlog.get_logger("relay.runtime")

DEFAULT_WORKER_PORT = 8081
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


async def serve_role(
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
