"""The simulator's I/O shell: HTTP/2 over TLS (ALPN h2 or prior knowledge) around the pure core."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from relay.apns_sim.certificate_rules import evaluate_certified, peer_certificate
from relay.apns_sim.certs import load_trusted_key
from relay.apns_sim.control import HubClient, Stats
from relay.apns_sim.faults import FaultConfig
from relay.apns_sim.protocol import (
    OK,
    Accepted,
    Answer,
    ConnectionAuth,
    Policy,
    Request,
    Stall,
    answer_delay_s,
    drops_connection,
    echoed_apns_id,
    evaluate,
    goaway_after,
    goaway_debug_data,
    response_body,
    response_headers,
    stream_fault,
)
from relay.client_certificate import PushCertificateInfo

DEFAULT_MAX_STREAMS = 1000
BODY_KEEP_BYTES = 8192  # more than any payload limit: a larger body is only counted, for 413
CONNECTION_WINDOW = 16 * 1024 * 1024
LISTEN_BACKLOG = 1024
X509_V_FLAG_NO_CHECK_TIME = 0x200000  # OpenSSL's; Python's ssl.VerifyFlags does not name it

_H2_CONFIG = h2.config.H2Configuration(
    client_side=False,
    header_encoding="utf-8",
    # The core checks headers as APNs does and answers with APNs reasons; h2's own checks
    # would reset streams instead and cost time on the hot path.
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)


class Backplane(Protocol):
    """Where the server's shared state lives: this process, or the hub that owns it."""

    stats: Stats
    revoked_certificates: set[int]  # serials of push certificates revoked

    @property
    def faults(self) -> FaultConfig: ...

    def device_answer(
        self, token: str, now: float, then: Callable[[Answer | None], None]
    ) -> None: ...

    def record(self, accepted: Accepted, received_at: float) -> None: ...


@dataclass(slots=True)
class _StreamBuffer:
    headers: list[tuple[str, str]]
    body: bytearray
    body_size: int = 0


class ApnsServerProtocol(asyncio.Protocol):
    """One client connection: h2 frames in, the core's answers out."""

    def __init__(
        self,
        backplane: Backplane,
        policy: Policy,
        max_streams: int,
        rng: random.Random,
        open_connections: set[ApnsServerProtocol],
        environment: str = "sandbox",
    ) -> None:
        self.backplane = backplane
        self.environment = environment
        self.certificate: PushCertificateInfo | None = None  # the client's, if it sent one
        self.open_connections = open_connections
        self.stats = backplane.stats
        self.policy = policy
        self.max_streams = max_streams
        self.rng = rng
        self.loop = asyncio.get_running_loop()
        self.conn = h2.connection.H2Connection(config=_H2_CONFIG)
        self.auth = ConnectionAuth()
        self.streams: dict[int, _StreamBuffer] = {}
        self.streams_seen = 0
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.receiving = False  # inside data_received: one write at its end
        self.timers: set[asyncio.TimerHandle] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but has its methods.
        self.transport = cast(asyncio.Transport, transport)
        self.certificate = peer_certificate(transport)
        self.open_connections.add(self)
        self.stats.counters["connections_opened"] += 1
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
            },
        )
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONNECTION_WINDOW)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.open_connections.discard(self)
        self.stats.counters["connections_closed"] += 1
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.stats.counters["protocol_errors"] += 1
            self._flush()
            self._close()
            return
        self.receiving = True
        try:
            for event in events:
                self._on_event(event)
                if self.closed:
                    return
        finally:
            self.receiving = False
        self._flush()

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            # header_encoding="utf-8" makes h2 hand over str pairs.
            headers: list[tuple[str, str]] = list(event.headers)  # type: ignore[arg-type]
            self.streams[event.stream_id] = _StreamBuffer(headers, bytearray())
        elif isinstance(event, h2.events.DataReceived):
            buffer = self.streams.get(event.stream_id)
            if buffer is not None:
                buffer.body_size += len(event.data)
                if len(buffer.body) < BODY_KEEP_BYTES:
                    buffer.body += event.data[: BODY_KEEP_BYTES - len(buffer.body)]
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            buffer = self.streams.pop(event.stream_id, None)
            if buffer is not None:
                self._on_request(event.stream_id, buffer)
        elif isinstance(event, h2.events.StreamReset):
            self.streams.pop(event.stream_id, None)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._close()

    def _on_request(self, stream_id: int, buffer: _StreamBuffer) -> None:
        self.streams_seen += 1
        self.stats.counters["streams"] += 1
        faults = self.backplane.faults
        if drops_connection(faults, self.streams_seen, self.rng):
            self.stats.counters["drops"] += 1
            self.abort()
            return
        request = Request.from_header_list(buffer.headers, bytes(buffer.body), buffer.body_size)
        apns_id = echoed_apns_id(request) or str(uuid.uuid4())
        then_goaway = goaway_after(faults, self.streams_seen)
        now = time.time()
        if self.certificate is None:
            verdict = evaluate(request, self.auth, self.policy, now)
        else:
            verdict = evaluate_certified(
                request,
                self.certificate,
                self.environment,
                self.backplane.revoked_certificates,
                self.auth,
                self.policy,
                now,
            )
        if isinstance(verdict, Answer):
            self._answer(stream_id, verdict, apns_id, then_goaway)
            return
        fault = stream_fault(faults, verdict.token, self.rng)
        if isinstance(fault, Stall):
            self.stats.counters["stalled"] += 1
            if then_goaway:
                self._goaway()
            return
        if fault is not None:
            self._answer(stream_id, fault, apns_id, then_goaway)
            return
        accepted = verdict

        def settle(answer: Answer | None) -> None:
            if answer is None:
                self.backplane.record(accepted, now)
                answer = OK
            self._answer(stream_id, answer, apns_id, then_goaway)

        self.backplane.device_answer(accepted.token, now, settle)

    def _answer(self, stream_id: int, answer: Answer, apns_id: str, then_goaway: bool) -> None:
        delay = answer_delay_s(self.backplane.faults, self.rng)
        if delay <= 0:
            self._send_answer(stream_id, answer, apns_id, then_goaway)
            return
        timer: asyncio.TimerHandle

        def fire() -> None:
            self.timers.discard(timer)
            self._send_answer(stream_id, answer, apns_id, then_goaway)

        timer = self.loop.call_later(delay, fire)
        self.timers.add(timer)

    def _send_answer(self, stream_id: int, answer: Answer, apns_id: str, then_goaway: bool) -> None:
        if self.closed:
            return
        body = response_body(answer)
        try:
            self.conn.send_headers(
                stream_id, response_headers(answer, apns_id), end_stream=not body
            )
            if body:
                self.conn.send_data(stream_id, body, end_stream=True)
        except h2.exceptions.StreamClosedError:
            return  # the client reset the stream while it waited
        self.stats.count_answer(answer)
        if then_goaway:
            self._goaway()
        elif not self.receiving:
            self._flush()

    def _goaway(self) -> None:
        self.stats.counters["goaways"] += 1
        self.conn.close_connection(
            error_code=0,
            additional_data=goaway_debug_data(self.backplane.faults),
            last_stream_id=self.conn.highest_inbound_stream_id,
        )
        self._flush()
        self._close()

    def _flush(self) -> None:
        if self.transport is not None:
            outgoing = self.conn.data_to_send()
            if outgoing:
                self.transport.write(outgoing)

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def server_ssl_context(
    cert_file: Path, key_file: Path, client_ca_file: Path | None = None
) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file is not None:
        # Asked on every connection, optional as at Apple: token-auth clients send none.
        # One that is sent must chain to the push CA or the handshake fails. Its dates are
        # left to certificate_rules (403 BadCertificate): asyncio closes a failed handshake
        # without sending the TLS alert, so a client could not tell "expired" from a dropped
        # connection, where Apple's alert tells it.
        context.verify_mode = ssl.CERT_OPTIONAL
        context.verify_flags |= X509_V_FLAG_NO_CHECK_TIME
        context.load_verify_locations(client_ca_file)
    # Offered to clients that ask; clients without ALPN (aioapns) speak h2 by prior knowledge.
    context.set_alpn_protocols(["h2"])
    return context


def listening_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


@dataclass(slots=True)
class H2Server:
    server: asyncio.Server
    open_connections: set[ApnsServerProtocol]

    async def close(self) -> None:
        """Stop listening and cut every open connection (Python 3.11 has no close_clients)."""
        self.server.close()
        for connection in list(self.open_connections):
            connection.abort()
        await self.server.wait_closed()


async def start_h2_server(
    backplane: Backplane,
    policy: Policy,
    ssl_context: ssl.SSLContext,
    sock: socket.socket,
    max_streams: int = DEFAULT_MAX_STREAMS,
    seed: int | None = None,
    environment: str = "sandbox",
) -> H2Server:
    rng = random.Random(seed)
    open_connections: set[ApnsServerProtocol] = set()
    server = await asyncio.get_running_loop().create_server(
        lambda: ApnsServerProtocol(
            backplane, policy, max_streams, rng, open_connections, environment
        ),
        sock=sock,
        ssl=ssl_context,
        backlog=LISTEN_BACKLOG,
    )
    return H2Server(server, open_connections)


@dataclass(frozen=True, slots=True)
class KeySource:
    """A trusted provider key as the command line names it (picklable, for worker processes)."""

    key_id: str
    team_id: str
    pem_file: Path


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    hub_address: str
    host: str
    port: int
    cert_file: Path
    key_file: Path
    keys: tuple[KeySource, ...]
    topics: frozenset[str] | None
    max_streams: int
    seed: int | None
    client_ca_file: Path | None = None
    environment: str = "sandbox"


def load_policy(keys: tuple[KeySource, ...], topics: frozenset[str] | None) -> Policy:
    trusted = {k.key_id: load_trusted_key(k.key_id, k.team_id, k.pem_file) for k in keys}
    return Policy(keys=trusted, topics=topics)


def worker_main(spec: WorkerSpec) -> None:
    """Entry point of one `--workers` server process; ends when the owning process goes."""
    # The owning process handles Ctrl-C and SIGTERMs its workers; a terminal's SIGINT to the
    # whole group must not kill a worker before the owner has shut it down in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    asyncio.run(_serve_as_worker(spec))


async def _serve_as_worker(spec: WorkerSpec) -> None:
    # Connected by hand: uvloop refuses abstract-namespace addresses, the kernel does not.
    link = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    link.connect(spec.hub_address)
    reader, writer = await asyncio.open_unix_connection(sock=link)
    hub = HubClient(reader, writer)
    await hub.wait_for_config()
    sock = listening_socket(spec.host, spec.port, reuse_port=True)
    server = await start_h2_server(
        hub,
        load_policy(spec.keys, spec.topics),
        server_ssl_context(spec.cert_file, spec.key_file, spec.client_ca_file),
        sock,
        spec.max_streams,
        spec.seed,
        spec.environment,
    )
    loop = asyncio.get_running_loop()
    stopping = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stopping.cancel)
    hub.announce_ready()
    following = asyncio.ensure_future(hub.follow_hub())
    await asyncio.wait([following, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    await server.close()
    hub.send_report()
    following.cancel()
    writer.close()
