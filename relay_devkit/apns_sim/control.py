"""The simulator's control plane: shared state, the HTTP/1.1 JSON control API, the worker hub.

One process owns the state (notification log, stats, faults, per-device ledger). With one server
process the h2 server uses it directly (`LocalPlane`). With `--workers N` every server process
links to the owning process over a unix socket (`WorkerHub` here, `HubClient` in the worker):
workers get the fault configuration pushed to them and acknowledge it before PUT /faults returns;
they batch accepted notifications and stats to the hub, and each read of the control API first
asks every worker to flush (a barrier), so a notification a client saw accepted is always listed;
per-device state that must be shared (scripted answers, rate limits) is decided by the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from aiohttp import web

from relay_devkit.apns_sim.answers import Answer
from relay_devkit.apns_sim.faults import NO_FAULTS, FaultConfig, FaultConfigError
from relay_devkit.apns_sim.protocol import (
    DEFAULT_TOKEN_LENGTH,
    ENVIRONMENTS,
    Accepted,
    DeviceLedger,
    TokenBinding,
    device_answer,
    is_topic,
)

DEFAULT_LOG_LIMIT = 100_000
REPORT_INTERVAL_S = 0.05
REPORT_BATCH = 2000
ROUND_TRIP_TIMEOUT_S = 10.0
_FRAME_LENGTH = struct.Struct("!I")

JsonObject = dict[str, Any]
AnswerCallback = Callable[[Answer | None], None]


@dataclass(frozen=True, slots=True)
class LoggedNotification:
    seq: int
    token: str
    topic: str
    headers: tuple[tuple[str, str], ...]
    payload: bytes  # kept as received; parsed only when read, to keep the hot path lean
    received_at: float
    key_id: str | None  # the provider key its connection is bound to (None: certificate)

    def to_json(self) -> JsonObject:
        return {
            "seq": self.seq,
            "token": self.token,
            "topic": self.topic,
            "headers": dict(self.headers),
            "payload": orjson.loads(self.payload),
            "received_at": self.received_at,
            "key_id": self.key_id,
        }


class NotificationLog:
    """Accepted notifications, oldest first, the newest `limit` kept; seq never goes back."""

    def __init__(self, limit: int = DEFAULT_LOG_LIMIT) -> None:
        self.entries: deque[LoggedNotification] = deque(maxlen=max(limit, 0) or 1)
        self.enabled = limit > 0
        self.last_seq = 0

    def append(
        self,
        token: str,
        topic: str,
        headers: tuple[tuple[str, str], ...],
        payload: bytes,
        received_at: float,
        key_id: str | None,
    ) -> None:
        self.last_seq += 1
        if self.enabled:
            self.entries.append(
                LoggedNotification(
                    self.last_seq, token, topic, headers, payload, received_at, key_id
                )
            )

    def since(self, seq: int, token: str | None = None) -> Iterator[LoggedNotification]:
        if not self.entries:
            return
        # Entries hold consecutive seqs, so the first one wanted is found by arithmetic.
        start = max(seq - self.entries[0].seq + 1, 0)
        for entry in itertools.islice(self.entries, start, None):
            if token is None or entry.token == token:
                yield entry

    def clear(self) -> None:
        self.entries.clear()


@dataclass(slots=True)
class Stats:
    responses: Counter[tuple[int, str]] = field(default_factory=Counter)
    counters: Counter[str] = field(default_factory=Counter)

    def count_answer(self, answer: Answer) -> None:
        self.responses[(answer.status, answer.reason or "")] += 1

    def to_json(self) -> JsonObject:
        by_status: dict[str, dict[str, int]] = {}
        for (status, reason), count in sorted(self.responses.items()):
            by_status.setdefault(str(status), {})[reason] = count
        return {"responses": by_status, **{name: self.counters[name] for name in COUNTERS}}

    def take(self) -> JsonObject:
        """The counts since the last take, in wire form, and start again from zero."""
        delta = {
            "responses": [[s, r, n] for (s, r), n in self.responses.items()],
            "counters": dict(self.counters),
        }
        self.responses.clear()
        self.counters.clear()
        return delta

    def add(self, delta: JsonObject) -> None:
        for status, reason, count in delta["responses"]:
            self.responses[(status, reason)] += count
        self.counters.update(delta["counters"])

    def clear(self) -> None:
        self.responses.clear()
        self.counters.clear()


COUNTERS = (
    "connections_opened",
    "connections_closed",
    "streams",
    "stalled",
    "goaways",
    "drops",
    "protocol_errors",
    "refused_streams",
    "error_goaways",
    "idle_goaways",
)


class SimulatorState:
    """Everything the control API shows and changes."""

    def __init__(
        self,
        faults: FaultConfig = NO_FAULTS,
        log_limit: int = DEFAULT_LOG_LIMIT,
        token_length: int = DEFAULT_TOKEN_LENGTH,
    ) -> None:
        self.faults = faults
        self.token_length = token_length
        # Issued device tokens; they outlive POST /reset, as a phone outlives a cleared log.
        self.registry: dict[str, TokenBinding] = {}
        self.ledger = DeviceLedger()
        self.log = NotificationLog(log_limit)
        self.stats = Stats()
        self.revoked_certificates: set[int] = set()  # push certificate serials

    def replace_faults(self, faults: FaultConfig) -> None:
        self.faults = faults
        self.ledger.forget_fault_state()

    def issue_token(self, binding: TokenBinding) -> str:
        """A new device token, as APNs hands one to an app that registers."""
        token = secrets.token_hex(self.token_length // 2)  # the length is even (validated)
        self.registry[token] = binding
        return token

    def record(self, accepted: Accepted, received_at: float) -> None:
        self.log.append(
            accepted.token,
            accepted.topic,
            accepted.headers,
            accepted.payload,
            received_at,
            accepted.key_id,
        )

    def reset(self) -> None:
        self.faults = NO_FAULTS
        self.ledger.clear()
        self.log.clear()
        self.stats.clear()


class ControlPlane(Protocol):
    state: SimulatorState

    def streams_by_worker(self) -> dict[str, int]:
        """Streams each server process has served, by its pid."""

    async def settle(self) -> None:
        """Make the state include everything every server process has done so far."""

    async def publish(self) -> None:
        """Make every server process use the state's current faults and dead tokens."""

    async def publish_token(self, token: str, binding: TokenBinding) -> None:
        """Make every server process know a newly issued token."""


class LocalPlane:
    """One process: the h2 server and the control API share the state directly."""

    def __init__(self, state: SimulatorState) -> None:
        self.state = state
        self.stats = state.stats
        self.revoked_certificates = state.revoked_certificates

    @property
    def faults(self) -> FaultConfig:
        return self.state.faults

    @property
    def registry(self) -> dict[str, TokenBinding]:
        return self.state.registry

    def device_answer(self, token: str, now: float, then: AnswerCallback) -> None:
        then(device_answer(self.state.ledger, self.state.faults, token, now))

    def record(self, accepted: Accepted, received_at: float) -> None:
        self.state.record(accepted, received_at)

    def streams_by_worker(self) -> dict[str, int]:
        return {str(os.getpid()): self.stats.counters["streams"]}

    async def settle(self) -> None:
        return None

    async def publish(self) -> None:
        return None

    async def publish_token(self, token: str, binding: TokenBinding) -> None:
        return None


# --- the control API ------------------------------------------------------------------------


def build_control_app(plane: ControlPlane) -> web.Application:
    routes = web.RouteTableDef()
    state = plane.state

    @routes.get("/notifications")
    async def list_notifications(request: web.Request) -> web.Response:
        since = _int_param(request, "since", 0)
        token = request.query.get("token") or None
        await plane.settle()
        entries = [e.to_json() for e in state.log.since(since, token.lower() if token else None)]
        return _json({"notifications": entries, "last_seq": state.log.last_seq})

    @routes.post("/tokens")
    async def issue_token(request: web.Request) -> web.Response:
        document = await _json_body(request, default=None)
        topic, environment = document.get("topic"), document.get("environment")
        if not isinstance(topic, str) or not is_topic(topic):
            raise _bad_request(f"topic: must be an app's bundle id, got {topic!r}")
        if environment not in ENVIRONMENTS:
            raise _bad_request(f"environment: must be one of {list(ENVIRONMENTS)}")
        binding = TokenBinding(topic, environment)
        token = state.issue_token(binding)
        await plane.publish_token(token, binding)
        return _json({"token": token, "topic": topic, "environment": environment})

    @routes.get("/tokens/{token}")
    async def describe_token(request: web.Request) -> web.Response:
        token = request.match_info["token"].lower()
        binding = state.registry.get(token)
        if binding is None:
            return _json({"error": f"token: {token[:8]}... was never issued"}, status=404)
        return _json(
            {
                "token": token,
                "topic": binding.topic,
                "environment": binding.environment,
                "unregistered_at_ms": state.ledger.unregistered.get(token),
            }
        )

    @routes.post("/tokens/{token}/unregister")
    async def unregister(request: web.Request) -> web.Response:
        document = await _json_body(request, default={})
        timestamp_ms = document.get("timestamp_ms", int(time.time() * 1000))
        if isinstance(timestamp_ms, bool) or not isinstance(timestamp_ms, int):
            raise _bad_request(f"timestamp_ms: must be an integer, got {timestamp_ms!r}")
        token = request.match_info["token"].lower()
        state.ledger.unregistered[token] = timestamp_ms
        await plane.publish()
        return _json({"token": token, "timestamp_ms": timestamp_ms})

    @routes.post("/tokens/{token}/register")
    async def register(request: web.Request) -> web.Response:
        token = request.match_info["token"].lower()
        state.ledger.unregistered.pop(token, None)
        await plane.publish()
        return _json({"token": token})

    @routes.get("/faults")
    async def get_faults(request: web.Request) -> web.Response:
        return _json(state.faults.to_json())

    @routes.put("/faults")
    async def put_faults(request: web.Request) -> web.Response:
        try:
            faults = FaultConfig.from_json(await _json_body(request, default=None))
        except FaultConfigError as error:
            raise _bad_request(str(error)) from error
        state.replace_faults(faults)
        await plane.publish()
        return _json(faults.to_json())

    @routes.delete("/faults")
    async def clear_faults(request: web.Request) -> web.Response:
        state.replace_faults(NO_FAULTS)
        await plane.publish()
        return _json(NO_FAULTS.to_json())

    @routes.get("/stats")
    async def get_stats(request: web.Request) -> web.Response:
        await plane.settle()
        return _json(
            {
                **state.stats.to_json(),
                "accepted": state.log.last_seq,
                "log_size": len(state.log.entries) if state.log.enabled else 0,
                "workers": plane.streams_by_worker(),
            }
        )

    @routes.post("/reset")
    async def reset(request: web.Request) -> web.Response:
        await plane.settle()
        state.reset()
        if isinstance(plane, WorkerHub):
            plane.worker_streams.clear()
        await plane.publish()
        return _json({"reset": True})

    app = web.Application()
    app.add_routes(routes)
    return app


def _json(document: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(document), status=status, content_type="application/json")


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=orjson.dumps({"error": message}).decode(), content_type="application/json"
    )


def _int_param(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit():
        raise _bad_request(f"{name}: must be an integer >= 0, got {text!r}")
    return int(text)


async def _json_body(request: web.Request, default: JsonObject | None) -> JsonObject:
    raw = await request.read()
    if not raw.strip():
        if default is None:
            raise _bad_request("body: a JSON object is required")
        return default
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise _bad_request(f"body: not JSON ({error})") from error
    if not isinstance(document, dict):
        raise _bad_request("body: must be a JSON object")
    return document


# --- the worker link: length-prefixed JSON frames over a unix socket -------------------------


def encode_frame(message: JsonObject) -> bytes:
    body = orjson.dumps(message)
    return _FRAME_LENGTH.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> JsonObject:
    (length,) = _FRAME_LENGTH.unpack(await reader.readexactly(_FRAME_LENGTH.size))
    message: JsonObject = orjson.loads(await reader.readexactly(length))
    return message


def answer_to_wire(answer: Answer | None) -> list[Any] | None:
    if answer is None:
        return None
    return [answer.status, answer.reason, answer.timestamp_ms, answer.body]


def answer_from_wire(wire: list[Any] | None) -> Answer | None:
    return None if wire is None else Answer(wire[0], wire[1], wire[2], wire[3])


def published_state(state: SimulatorState) -> JsonObject:
    return {
        "faults": state.faults.to_json(),
        "unregistered": state.ledger.unregistered,
        # Serials are up to 159 bits: text on the wire (orjson stops at 64).
        "revoked_certificates": [str(serial) for serial in state.revoked_certificates],
        "registry": {t: [b.topic, b.environment] for t, b in state.registry.items()},
    }


class WorkerHub:
    """The owning process's side of the worker links."""

    def __init__(self, state: SimulatorState) -> None:
        self.state = state
        self.links: list[asyncio.StreamWriter] = []
        self.worker_streams: dict[str, int] = {}  # by worker pid
        self.ready_count = 0
        self.ready_changed = asyncio.Event()
        self.pending_acks: dict[int, asyncio.Future[None]] = {}
        self.message_ids = itertools.count(1)
        self.server: asyncio.AbstractServer | None = None

    async def listen(self, address: str) -> None:
        self.server = await asyncio.start_unix_server(self._serve_link, path=address)

    async def wait_ready(self, workers: int) -> None:
        while self.ready_count < workers:
            self.ready_changed.clear()
            await self.ready_changed.wait()

    def streams_by_worker(self) -> dict[str, int]:
        return dict(self.worker_streams)

    async def settle(self) -> None:
        await self._round_trip({"op": "sync"})

    async def publish(self) -> None:
        await self._round_trip({"op": "config", **published_state(self.state)})

    async def publish_token(self, token: str, binding: TokenBinding) -> None:
        await self._round_trip(
            {"op": "token", "token": token, "binding": [binding.topic, binding.environment]}
        )

    async def close(self) -> None:
        for link in self.links:
            link.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _round_trip(self, message: JsonObject) -> None:
        """Send `message` to every worker and wait until each has acted on it."""
        waits = []
        for link in list(self.links):
            message_id = next(self.message_ids)
            ack = asyncio.get_running_loop().create_future()
            self.pending_acks[message_id] = ack
            link.write(encode_frame({**message, "id": message_id}))
            waits.append(ack)
        try:
            async with asyncio.timeout(ROUND_TRIP_TIMEOUT_S):
                await asyncio.gather(*waits)
        finally:
            for ack in waits:
                ack.cancel()

    async def _serve_link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.links.append(writer)
        writer.write(encode_frame({"op": "config", "id": 0, **published_state(self.state)}))
        try:
            while True:
                self._on_worker_message(await read_frame(reader), writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.links.remove(writer)
            writer.close()

    def _on_worker_message(self, message: JsonObject, writer: asyncio.StreamWriter) -> None:
        op = message["op"]
        if op == "report":
            for token, topic, headers, payload, received_at, key_id in message["log"]:
                self.state.log.append(
                    token, topic, tuple(map(tuple, headers)), payload.encode(), received_at, key_id
                )
            self.state.stats.add(message["stats"])
            pid = str(message["pid"])
            streams = message["stats"]["counters"].get("streams", 0)
            self.worker_streams[pid] = self.worker_streams.get(pid, 0) + streams
        elif op == "ask":
            answer = device_answer(
                self.state.ledger, self.state.faults, message["token"], message["now"]
            )
            writer.write(
                encode_frame(
                    {"op": "answer", "id": message["id"], "answer": answer_to_wire(answer)}
                )
            )
        elif op == "done":
            ack = self.pending_acks.pop(message["id"], None)
            if ack is not None and not ack.done():
                ack.set_result(None)
        elif op == "ready":
            self.ready_count += 1
            self.ready_changed.set()


class HubClient:
    """A worker process's side of its link: the h2 server's backplane in that process."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.faults = NO_FAULTS
        self.ledger = DeviceLedger()  # dead tokens as published; scripts are the hub's
        self.registry: dict[str, TokenBinding] = {}
        self.stats = Stats()
        self.revoked_certificates: set[int] = set()
        self.pending_log: list[list[Any]] = []
        self.asks: dict[int, AnswerCallback] = {}
        self.ask_ids = itertools.count(1)
        self.report_timer: asyncio.TimerHandle | None = None

    def device_answer(self, token: str, now: float, then: AnswerCallback) -> None:
        if not self.faults.shares_device_state(token):
            then(device_answer(self.ledger, self.faults, token, now))
            return
        ask_id = next(self.ask_ids)
        self.asks[ask_id] = then
        self.writer.write(encode_frame({"op": "ask", "id": ask_id, "token": token, "now": now}))

    def record(self, accepted: Accepted, received_at: float) -> None:
        self.pending_log.append(
            [
                accepted.token,
                accepted.topic,
                accepted.headers,
                accepted.payload.decode(),
                received_at,
                accepted.key_id,
            ]
        )
        if len(self.pending_log) >= REPORT_BATCH:
            self.send_report()
        elif self.report_timer is None:
            self.report_timer = asyncio.get_running_loop().call_later(
                REPORT_INTERVAL_S, self.send_report
            )

    def send_report(self) -> None:
        if self.report_timer is not None:
            self.report_timer.cancel()
            self.report_timer = None
        self.writer.write(
            encode_frame(
                {
                    "op": "report",
                    "pid": os.getpid(),
                    "log": self.pending_log,
                    "stats": self.stats.take(),
                }
            )
        )
        self.pending_log = []

    def announce_ready(self) -> None:
        self.writer.write(encode_frame({"op": "ready"}))

    async def wait_for_config(self) -> None:
        self._on_hub_message(await read_frame(self.reader))

    async def follow_hub(self) -> None:
        """Act on the hub's messages until the link closes (the owning process is gone)."""
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                self._on_hub_message(await read_frame(self.reader))

    def _on_hub_message(self, message: JsonObject) -> None:
        op = message["op"]
        if op == "answer":
            then = self.asks.pop(message["id"], None)
            if then is not None:
                then(answer_from_wire(message["answer"]))
            return
        if op == "config":
            self.faults = FaultConfig.from_json(message["faults"])
            self.ledger.clear()
            self.ledger.unregistered.update(message["unregistered"])
            self.revoked_certificates.clear()
            self.revoked_certificates.update(map(int, message["revoked_certificates"]))
            self.registry = {t: TokenBinding(*b) for t, b in message["registry"].items()}
        elif op == "token":
            self.registry[message["token"]] = TokenBinding(*message["binding"])
        elif op == "sync":
            self.send_report()
        self.writer.write(encode_frame({"op": "done", "id": message["id"]}))
