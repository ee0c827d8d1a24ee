"""Test helpers around the APNs simulator: start it, read sim.json, aim aioapns or raw h2 at it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import jwt
from aioapns import APNs
from aioapns.connection import APNsProductionClientProtocol
from eventually import eventually, eventually_blocking

from relay.delivery.apns_adapter import DrainingStateMachine
from relay_devkit.apns_sim import info
from relay_devkit.apns_sim.command import Simulator, SimulatorOptions
from relay_devkit.apns_sim.info import SIM_JSON

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
REPO_ROOT = Path(__file__).resolve().parent.parent


class SimInfo(info.SimInfo):
    """sim.json, with what tests do with it: the key, a TLS context, a provider token."""

    @property
    def key_pem(self) -> str:
        return self.key_file.read_text()

    def ssl_context(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        if alpn:
            context.set_alpn_protocols(alpn)
        return context

    def provider_token(
        self,
        issued_at: int | None = None,
        key_id: str | None = None,
        team_id: str | None = None,
        key_pem: str | None = None,
    ) -> str:
        """A provider JWT as Apple documents it, signed with the simulator's key by default."""
        return jwt.encode(
            {
                "iss": team_id or self.team_id,
                "iat": int(time.time()) if issued_at is None else issued_at,
            },
            key_pem or self.key_pem,
            algorithm="ES256",
            headers={"kid": key_id or self.key_id},
        )


def read_sim_json(state_dir: Path, timeout: float = START_TIMEOUT_S) -> SimInfo:
    """Wait until the simulator has written sim.json (it writes it last, atomically)."""
    return SimInfo.wait_for(state_dir, timeout)


@contextlib.asynccontextmanager
async def running_simulator(state_dir: Path, **options: Any) -> AsyncIterator[SimInfo]:
    """The simulator in this event loop (one server process); options as SimulatorOptions."""
    async with Simulator(SimulatorOptions(state_dir=state_dir, **options)):
        yield SimInfo.from_file(state_dir / SIM_JSON)


@dataclass
class SimulatorProcess:
    process: subprocess.Popen[bytes]
    info: SimInfo
    log_file: Path

    def stop(self) -> int:
        """SIGTERM and wait; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(STOP_TIMEOUT_S)


@contextlib.contextmanager
def simulator_process(state_dir: Path, *arguments: str) -> Iterator[SimulatorProcess]:
    """`apns-relay apns-sim --state-dir DIR ARGUMENTS...` as a child process, until SIGTERM."""
    state_dir.mkdir(parents=True, exist_ok=True)
    log_file = state_dir / "apns-sim.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "relay.cli",
                "apns-sim",
                "--state-dir",
                str(state_dir),
                *arguments,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:

        def written() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"apns-sim exited {process.returncode}: {log_file.read_text()}")
            return (state_dir / SIM_JSON).exists()

        try:
            eventually_blocking(written, timeout_s=START_TIMEOUT_S, what="apns-sim's sim.json")
        except AssertionError:
            raise TimeoutError(f"apns-sim wrote no sim.json: {log_file.read_text()}") from None
        yield SimulatorProcess(process, SimInfo.from_file(state_dir / SIM_JSON), log_file)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def aioapns_client(info: SimInfo, topic: str = "com.example.app", **kwargs: Any) -> APNs:
    """An aioapns 4.0 client aimed at the simulator; call it inside the running loop."""

    class SimulatorProtocol(APNsProductionClientProtocol):
        APNS_SERVER = info.host
        APNS_PORT = info.port

    client = APNs(
        key=info.key_pem,
        key_id=info.key_id,
        team_id=info.team_id,
        topic=topic,
        ssl_context=info.ssl_context(),
        **kwargs,
    )
    client.pool.protocol_class = SimulatorProtocol
    return client


class ControlClient:
    """The simulator's control API, as tests use it."""

    def __init__(self, info: SimInfo, session: aiohttp.ClientSession) -> None:
        self.base = info.control_url
        self.session = session

    async def _call(self, method: str, path: str, body: object = None, **params: Any) -> Any:
        async with self.session.request(
            method,
            self.base + path,
            json=body,
            params={k: str(v) for k, v in params.items() if v is not None},
        ) as response:
            document = await response.json()
            if response.status != 200:
                raise AssertionError(f"{method} {path}: {response.status} {document}")
            return document

    async def notifications(self, token: str | None = None, since: int = 0) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/notifications", token=token, since=since)
        return result

    async def put_faults(self, faults: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("PUT", "/faults", faults)
        return result

    async def get_faults(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/faults")
        return result

    async def clear_faults(self) -> None:
        await self._call("DELETE", "/faults")

    async def issue_token(
        self, topic: str = "com.example.app", environment: str = "production"
    ) -> str:
        """A device token the simulator accepts for `topic` in `environment`: the one way tests
        get a valid token, as a phone gets one from APNs."""
        document = await self._call("POST", "/tokens", {"topic": topic, "environment": environment})
        token: str = document["token"]
        return token

    async def issue_tokens(
        self, count: int, topic: str = "com.example.app", environment: str = "production"
    ) -> list[str]:
        return [await self.issue_token(topic, environment) for _ in range(count)]

    async def describe_token(self, token: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", f"/tokens/{token}")
        return result

    async def unregister(self, token: str, timestamp_ms: int | None = None) -> None:
        body = {} if timestamp_ms is None else {"timestamp_ms": timestamp_ms}
        await self._call("POST", f"/tokens/{token}/unregister", body)

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("GET", "/stats")
        return result

    async def wait_for_stalls(self, count: int, timeout_s: float = 20.0) -> None:
        """Until the simulator holds at least `count` requests stalled (unanswered)."""

        async def stalled() -> bool:
            return int((await self.stats()).get("stalled", 0)) >= count

        await eventually(stalled, timeout_s=timeout_s, what=f"{count} stalled requests")

    async def reset(self) -> None:
        await self._call("POST", "/reset")

    async def issue_certificate(self, topic: str, **options: Any) -> dict[str, Any]:
        """A push certificate from the simulator's CA: POST /certificates (see certificate_api)."""
        result: dict[str, Any] = await self._call(
            "POST", "/certificates", {"topic": topic, **options}
        )
        return result

    async def revoke_certificate(self, serial: str) -> None:
        await self._call("POST", f"/certificates/{serial}/revoke")


@contextlib.asynccontextmanager
async def control_client(info: SimInfo) -> AsyncIterator[ControlClient]:
    async with aiohttp.ClientSession() as session:
        yield ControlClient(info, session)


# --- a raw HTTP/2 client, for what aioapns cannot send or cannot see ------------------------


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _PendingStream:
    done: asyncio.Future[RawResponse]
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)


class UnlimitedSettings(h2.settings.Settings):
    """A peer's settings with no stream limit: what a misbehaving client assumes."""

    @property
    def max_concurrent_streams(self) -> int:
        return 2**31 - 1

    @max_concurrent_streams.setter
    def max_concurrent_streams(self, value: int) -> None:
        self[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = value


class RawH2Client:
    """HTTP/2 over TLS with no header checks of its own, so tests can send anything."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(
                client_side=True,
                header_encoding="utf-8",
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
                validate_inbound_headers=False,
            )
        )
        # Reads the answers a graceful GOAWAY still owes, as the relay does.
        self.conn.state_machine = DrainingStateMachine()
        self.streams: dict[int, _PendingStream] = {}
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.closed = asyncio.get_running_loop().create_future()  # result: the read error or None
        self.remote_max_streams: int | None = None
        self.limits_seen: list[int] = []  # SETTINGS_MAX_CONCURRENT_STREAMS, as announced
        self.resets: dict[int, h2.errors.ErrorCodes | int] = {}  # RST_STREAM by the server
        self.provider_tokens: dict[SimInfo, str] = {}  # one per connection, as APNs wants
        self.settings_received = asyncio.Event()
        self.conn.initiate_connection()
        self.writer.write(self.conn.data_to_send())
        self.reading = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(
        cls, info: SimInfo, alpn: list[str] | None = None, environment: str = "production"
    ) -> RawH2Client:
        reader, writer = await asyncio.open_connection(
            info.host,
            info.port_of(environment),
            ssl=info.ssl_context(alpn),
            server_hostname="localhost",
        )
        return cls(reader, writer)

    def headers_for(self, info: SimInfo, token: str, **extra: str) -> list[tuple[str, str]]:
        """A valid APNs request's headers; keyword arguments add or replace (`_` for `-`)."""
        headers = {
            ":method": "POST",
            ":scheme": "https",
            ":path": f"/3/device/{token}",
            ":authority": "localhost",
            "authorization": f"bearer {self.provider_token(info)}",
            "apns-topic": "com.example.app",
            "apns-push-type": "alert",
        }
        headers.update({k.replace("_", "-"): v for k, v in extra.items()})
        return list(headers.items())

    def provider_token(self, info: SimInfo) -> str:
        return self.provider_tokens.setdefault(info, info.provider_token())

    def ignore_stream_limit(self) -> None:
        """Open streams whatever the server's SETTINGS say (h2 would refuse to), from now on."""
        self.conn.remote_settings = UnlimitedSettings(client=False)

    def send(self, headers: list[tuple[str, str]], body: bytes = b"") -> int:
        return self.send_together([(headers, body)])[0]

    def send_together(self, requests: list[tuple[list[tuple[str, str]], bytes]]) -> list[int]:
        """Several requests in one write, so the server reads them in one go; their stream ids."""
        stream_ids = []
        for headers, body in requests:
            stream_id = self.conn.get_next_available_stream_id()
            self.conn.send_headers(stream_id, headers, end_stream=not body)
            if body:
                self.conn.send_data(stream_id, body, end_stream=True)
            self.streams[stream_id] = _PendingStream(asyncio.get_running_loop().create_future())
            stream_ids.append(stream_id)
        self.writer.write(self.conn.data_to_send())
        return stream_ids

    async def response(self, stream_id: int, within_s: float = 5.0) -> RawResponse:
        async with asyncio.timeout(within_s):
            return await asyncio.shield(self.streams[stream_id].done)

    async def request(
        self, headers: list[tuple[str, str]], body: bytes = b"", within_s: float = 5.0
    ) -> RawResponse:
        return await self.response(self.send(headers, body), within_s)

    async def close(self) -> None:
        self.reading.cancel()
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    async def _read(self) -> None:
        error: BaseException | None = None
        try:
            while data := await self.reader.read(65536):
                for event in self.conn.receive_data(data):
                    self._on_event(event)
                self.writer.write(self.conn.data_to_send())
        except (ConnectionError, ssl.SSLError) as exc:
            error = exc
        finally:
            if not self.closed.done():
                self.closed.set_result(error)
            for pending in self.streams.values():
                if not pending.done.done():
                    pending.done.set_exception(ConnectionError("connection closed"))

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            pending = self.streams[event.stream_id]
            # The connection's header_encoding makes h2 give str names and values; h2's types
            # say bytes, as they would be without it.
            for name, value in cast(list[tuple[str, str]], event.headers):
                if name == ":status":
                    pending.status = int(value)
                else:
                    pending.headers[str(name)] = str(value)
        elif isinstance(event, h2.events.DataReceived):
            self.streams[event.stream_id].body += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            pending = self.streams[event.stream_id]
            pending.done.set_result(
                RawResponse(pending.status, pending.headers, bytes(pending.body))
            )
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.remote_max_streams = self.conn.remote_settings.max_concurrent_streams
            self.limits_seen.append(self.remote_max_streams)
            self.settings_received.set()
        elif isinstance(event, h2.events.StreamReset):
            self.resets[event.stream_id] = event.error_code
            pending = self.streams[event.stream_id]
            if not pending.done.done():
                pending.done.set_exception(ConnectionError(f"stream reset: {event.error_code!r}"))
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = event
