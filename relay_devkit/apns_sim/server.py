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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from relay_devkit.apns_sim.answers import OK, Answer
from relay_devkit.apns_sim.apple import PushCertificateGrant
from relay_devkit.apns_sim.certificate_rules import evaluate_certified, peer_certificate
from relay_devkit.apns_sim.certs import load_trusted_key
from relay_devkit.apns_sim.control import HubClient, Stats
from relay_devkit.apns_sim.faults import FaultConfig
from relay_devkit.apns_sim.protocol import (
    DEFAULT_TOKEN_LENGTH,
    ENVIRONMENTS,
    SANDBOX,
    Accepted,
    ConnectionAuth,
    ConnectionPolicing,
    ConnectionRules,
    Policy,
    Request,
    Stall,
    TokenBinding,
    after_answer,
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

DEFAULT_MAX_STREAMS = 1000
MAX_HEADER_LIST_SIZE = 8000  # what Apple advertises
UNENFORCED_STREAM_LIMIT = 2**31 - 1
GOAWAY_GRACE_S = 10.0  # after a graceful GOAWAY, admitted streams have this long to be answered
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

    @property
    def registry(self) -> Mapping[str, TokenBinding]: ...

    def device_answer(
        self, token: str, now: float, then: Callable[[Answer | None], None]
    ) -> None: ...

    def record(self, accepted: Accepted, received_at: float) -> None: ...


class AnnouncedSettings(h2.settings.Settings):
    """Local settings whose stream limit is announced but not enforced by h2.

    h2 makes a stream over the limit a connection error, and applies the limit from the very
    first frame; RFC 9113 lets a client open streams before it has seen the server's SETTINGS
    (node's http2 does, bursting), and a stream over an acknowledged limit is better refused
    alone (REFUSED_STREAM: safe to retry). The server enforces the limit itself.
    """

    @property
    def max_concurrent_streams(self) -> int:
        return UNENFORCED_STREAM_LIMIT

    @max_concurrent_streams.setter
    def max_concurrent_streams(self, value: int) -> None:
        self[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = value


@dataclass(slots=True)
class _StreamBuffer:
    headers: list[tuple[str, str]]
    body: bytearray
    body_size: int = 0


class ApnsServerProtocol(asyncio.Protocol):
    """One client connection: h2 frames in, the core's answers out.

    GOAWAY is written by hand rather than through h2's close_connection: h2 then refuses to
    send anything more, and a graceful GOAWAY must still answer the streams it admitted.
    """

    def __init__(
        self,
        backplane: Backplane,
        policy: Policy,
        rules: ConnectionRules,
        rng: random.Random,
        open_connections: set[ApnsServerProtocol],
    ) -> None:
        self.backplane = backplane
        self.certificate: PushCertificateGrant | None = None  # the client's, if it sent one
        self.open_connections = open_connections
        self.stats = backplane.stats
        self.policy = policy
        self.rules = rules
        self.policing = ConnectionPolicing(rules.initial_streams)
        self.rng = rng
        self.loop = asyncio.get_running_loop()
        self.conn = h2.connection.H2Connection(config=_H2_CONFIG)
        self.auth = ConnectionAuth()
        self.streams: dict[int, _StreamBuffer] = {}
        self.streams_seen = 0
        self.highest_admitted = 0  # the highest stream whose request went to the core
        self.unanswered: set[int] = set()  # admitted, answer still to come (stalls excluded)
        self.last_stream_id: int | None = None  # set once GOAWAY has gone
        # The stream limit the client has acknowledged; None until it acknowledges any SETTINGS
        # (until then RFC 9113 lets it assume no limit).
        self.acknowledged_limit: int | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.receiving = False  # inside data_received: one write at its end
        self.timers: set[asyncio.TimerHandle] = set()
        self.last_activity = self.loop.time()
        self.idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but has its methods.
        self.transport = cast(asyncio.Transport, transport)
        self.certificate = peer_certificate(transport)
        self.open_connections.add(self)
        self.stats.counters["connections_opened"] += 1
        self.conn.local_settings = AnnouncedSettings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.policing.stream_limit,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
            },
        )
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(CONNECTION_WINDOW)
        self._flush()
        if self.rules.idle_timeout_s is not None:
            self.idle_timer = self.loop.call_later(self.rules.idle_timeout_s, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.open_connections.discard(self)
        self.stats.counters["connections_closed"] += 1
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
        if self.idle_timer is not None:
            self.idle_timer.cancel()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as error:
            # h2 has queued its own GOAWAY naming the highest stream *received*; send one
            # naming only streams answered, so the client knows what it may resend.
            self.stats.counters["protocol_errors"] += 1
            self.conn.data_to_send()
            # No reason: Apple documents none for a connection error.
            self._goaway(None, error.error_code, self._highest_answered_prefix())
            self._close()  # after the GOAWAY is written (abort would drop it)
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
            if self._beyond_goaway(event.stream_id):
                return
            limit = self.acknowledged_limit
            if limit is not None and self.conn.open_inbound_streams > limit:
                self.stats.counters["refused_streams"] += 1
                self.conn.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
                return
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
            if buffer is not None and not self._beyond_goaway(event.stream_id):
                self._on_request(event.stream_id, buffer)
        elif isinstance(event, h2.events.StreamReset):
            self.streams.pop(event.stream_id, None)
            self._settled(event.stream_id)
        elif isinstance(event, h2.events.SettingsAcknowledged):
            # One event per SETTINGS frame, in order: the first is the connection's own.
            changed = event.changed_settings.get(h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS)
            if changed is not None:
                self.acknowledged_limit = changed.new_value
            elif self.acknowledged_limit is None:
                self.acknowledged_limit = self.rules.initial_streams
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._close()

    def _beyond_goaway(self, stream_id: int) -> bool:
        """A stream above GOAWAY's last_stream_id: never processed, never answered."""
        return self.last_stream_id is not None and stream_id > self.last_stream_id

    def _on_request(self, stream_id: int, buffer: _StreamBuffer) -> None:
        self.streams_seen += 1
        self.stats.counters["streams"] += 1
        self.last_activity = self.loop.time()
        faults = self.backplane.faults
        if drops_connection(faults, self.streams_seen, self.rng):
            self.stats.counters["drops"] += 1
            self.abort()
            return
        self.highest_admitted = max(self.highest_admitted, stream_id)
        request = Request.from_header_list(buffer.headers, bytes(buffer.body), buffer.body_size)
        apns_id = echoed_apns_id(request) or str(uuid.uuid4())
        then_goaway = goaway_after(faults, self.streams_seen)
        now = time.time()
        registry = self.backplane.registry
        if self.certificate is None:
            verdict = evaluate(request, self.auth, self.policy, registry, now)
        else:
            verdict = evaluate_certified(
                request,
                self.certificate,
                self.backplane.revoked_certificates,
                self.auth,
                self.policy,
                registry,
                now,
            )
        if isinstance(verdict, Answer):
            self._answer(stream_id, verdict, apns_id, then_goaway)
            return
        fault = stream_fault(faults, verdict.token, self.rng)
        if isinstance(fault, Stall):
            self.stats.counters["stalled"] += 1
            if then_goaway:
                self._goaway(faults.goaway_reason)
            return
        if fault is not None:
            self._answer(stream_id, fault, apns_id, then_goaway)
            return
        accepted = verdict
        self.unanswered.add(stream_id)

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
        self.unanswered.add(stream_id)
        timer: asyncio.TimerHandle

        def fire() -> None:
            self.timers.discard(timer)
            self._send_answer(stream_id, answer, apns_id, then_goaway)

        timer = self.loop.call_later(delay, fire)
        self.timers.add(timer)

    def _send_answer(self, stream_id: int, answer: Answer, apns_id: str, then_goaway: bool) -> None:
        if self.closed:
            return
        after = after_answer(self.rules, self.policing, answer.status)
        if after.stream_limit is not None:
            # Queued before the answer, so the client knows the new limit when the stream frees.
            self.conn.update_settings(
                {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: after.stream_limit}
            )
        unique_id = (
            str(uuid.uuid4())
            if answer.status == 200 and self.policy.environment == SANDBOX
            else None
        )
        body = response_body(answer)
        try:
            self.conn.send_headers(
                stream_id, response_headers(answer, apns_id, unique_id), end_stream=not body
            )
            if body:
                self.conn.send_data(stream_id, body, end_stream=True)
        except h2.exceptions.StreamClosedError:
            self._settled(stream_id)
            return  # the client reset the stream while it waited
        self.stats.count_answer(answer)
        if then_goaway:
            self._goaway(self.backplane.faults.goaway_reason)
        elif after.goaway_reason is not None:
            self.stats.counters["error_goaways"] += 1
            self._goaway(after.goaway_reason, ErrorCodes.ENHANCE_YOUR_CALM)
        elif not self.receiving:
            self._flush()
        self._settled(stream_id)

    def _settled(self, stream_id: int) -> None:
        """A stream needs no answer any more; after GOAWAY the last one closes the connection."""
        self.unanswered.discard(stream_id)
        if self.last_stream_id is not None and not self.unanswered and not self.closed:
            self._flush()
            self._close()

    def _goaway(
        self,
        reason: str | None,
        error_code: int = ErrorCodes.NO_ERROR,
        last_stream_id: int | None = None,
    ) -> None:
        """Announce that no stream above last_stream_id (default: every admitted one) will be
        processed; the admitted ones still get their answers, then the connection closes."""
        if self.last_stream_id is not None:
            return
        self.stats.counters["goaways"] += 1
        self.last_stream_id = self.highest_admitted if last_stream_id is None else last_stream_id
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.last_stream_id
        frame.error_code = error_code
        frame.additional_data = b"" if reason is None else goaway_debug_data(reason)
        if self.transport is not None:
            # One write with the answer before it: a client reads both together.
            self.transport.write(self.conn.data_to_send() + frame.serialize())
        self._settled(0)
        if not self.closed:
            grace = self.loop.call_later(GOAWAY_GRACE_S, self._close)
            self.timers.add(grace)

    def _highest_answered_prefix(self) -> int:
        """The highest stream id at or below which every admitted stream has been answered."""
        waiting = [*self.unanswered, *self.streams]
        return min([self.highest_admitted, *(s - 1 for s in waiting)])

    def _check_idle(self) -> None:
        assert self.rules.idle_timeout_s is not None
        idle = self.loop.time() - self.last_activity
        if self.closed or self.last_stream_id is not None:
            return
        if idle >= self.rules.idle_timeout_s and not self.unanswered:
            self.stats.counters["idle_goaways"] += 1
            self._goaway("IdleTimeout")
            return
        remaining = max(self.rules.idle_timeout_s - idle, 0.01)
        self.idle_timer = self.loop.call_later(remaining, self._check_idle)

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
    rules: ConnectionRules,
    ssl_context: ssl.SSLContext,
    sock: socket.socket,
    rng: random.Random,
) -> H2Server:
    open_connections: set[ApnsServerProtocol] = set()
    server = await asyncio.get_running_loop().create_server(
        lambda: ApnsServerProtocol(backplane, policy, rules, rng, open_connections),
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
    environments: frozenset[str] = frozenset(ENVIRONMENTS)


@dataclass(frozen=True, slots=True)
class ServerSetup:
    """What every listener of every server process applies (picklable, for worker processes)."""

    keys: tuple[KeySource, ...]
    topics: frozenset[str] | None = None
    token_length: int = DEFAULT_TOKEN_LENGTH
    open_tokens: bool = False
    rules: ConnectionRules = field(default_factory=ConnectionRules)

    def policies(self) -> dict[str, Policy]:
        """One policy per environment, by environment."""
        trusted = {
            k.key_id: load_trusted_key(k.key_id, k.team_id, k.pem_file, k.environments)
            for k in self.keys
        }
        return {
            environment: Policy(
                keys=trusted,
                environment=environment,
                topics=self.topics,
                token_length=self.token_length,
                open_tokens=self.open_tokens,
            )
            for environment in ENVIRONMENTS
        }


async def start_listeners(
    backplane: Backplane,
    setup: ServerSetup,
    ssl_context: ssl.SSLContext,
    socks: Mapping[str, socket.socket],
    seed: int | None,
) -> list[H2Server]:
    """One h2 server per environment, each on its socket."""
    rng = random.Random(seed)
    policies = setup.policies()
    return [
        await start_h2_server(backplane, policies[environment], setup.rules, ssl_context, sock, rng)
        for environment, sock in socks.items()
    ]


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    hub_address: str
    host: str
    ports: tuple[tuple[str, int], ...]  # (environment, port)
    cert_file: Path
    key_file: Path
    setup: ServerSetup
    seed: int | None
    client_ca_file: Path | None = None  # the push CA: client certificates are asked for


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
    servers = await start_listeners(
        hub,
        spec.setup,
        server_ssl_context(spec.cert_file, spec.key_file, spec.client_ca_file),
        {env: listening_socket(spec.host, port, reuse_port=True) for env, port in spec.ports},
        spec.seed,
    )
    loop = asyncio.get_running_loop()
    stopping = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stopping.cancel)
    hub.announce_ready()
    following = asyncio.ensure_future(hub.follow_hub())
    await asyncio.wait([following, stopping], return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    for server in servers:
        await server.close()
    hub.send_report()
    following.cancel()
    writer.close()
