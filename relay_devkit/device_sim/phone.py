"""The simulated phone's I/O: its pushes from the APNs simulator's control API, the app's HTTP
requests to GMS, and the app's CometD session (aiocometd-ng, long-polling)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiocometd_ng.client import Client as CometClient
from aiocometd_ng.constants import ConnectionType
from aiocometd_ng.exceptions import AiocometdException
from aiocometd_ng.extensions import Extension
from aiocometd_ng.typing import Headers, Payload

from relay_devkit.device_sim.activities import ActivityWatcher
from relay_devkit.device_sim.app import (
    CloseComet,
    DeviceApp,
    Effect,
    GmsFailure,
    HttpRequest,
    OpenComet,
    TranscriptEntry,
)
from relay_devkit.device_sim.extension import ReceiptExtension

DEFAULT_POLL_INTERVAL_S = 0.05
DEFAULT_REQUEST_TIMEOUT_S = 5.0
COMET_CHANNEL = "/_genesys"  # the seed's default chat channel
DEVICE_TOKEN_BYTES = 32


class ControlApiError(RuntimeError):
    """The APNs simulator's control API answered with something other than the documented shape."""


async def register_device(
    session: aiohttp.ClientSession,
    control_url: str,
    topic: str,
    environment: str,
    timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
) -> str:
    """A device token from the APNs simulator for `topic` in `environment`, as an app gets one
    from APNs when it registers for remote notifications."""
    async with session.post(
        control_url.rstrip("/") + "/tokens",
        json={"topic": topic, "environment": environment},
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    ) as response:
        if response.status != 200:
            raise ControlApiError(f"POST /tokens answered {response.status}")
        document = await response.json()
    token = document.get("token") if isinstance(document, dict) else None
    if not isinstance(token, str):
        raise ControlApiError(f"POST /tokens: no `token` in {document!r}")
    return token


class _RequestHeaders(Extension):
    """The chat's headers (gms_user) on every Comet request, as on its HTTP requests."""

    def __init__(self, headers: Headers) -> None:
        self._headers = headers

    async def outgoing(self, payload: Payload, headers: Headers) -> None:
        headers.update(self._headers)

    async def incoming(self, payload: Payload, headers: Headers | None = None) -> None:
        pass


@contextlib.contextmanager
def _quiet_comet_close(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """aiocometd-ng 0.5.6 closes by cancelling its held /meta/connect; the task's done-callback
    (TransportBase._connect_done) then reads the CancelledError, which since Python 3.8 is no
    Exception, and the loop logs it as an error. Drop exactly that report while closing."""
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        cancelled = isinstance(context.get("exception"), asyncio.CancelledError)
        if cancelled and "_connect_done" in repr(context.get("handle")):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    try:
        yield
    finally:
        loop.set_exception_handler(previous)


@dataclass
class Phone:
    """One device token: fetches its pushes from the APNs simulator and runs the app on them."""

    session: aiohttp.ClientSession
    control_url: str  # http://127.0.0.1:<control_port>
    token: str  # hex device token
    app: DeviceApp
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    clock: Callable[[], float] = time.time
    last_seq: int = 0
    pushes: list[dict[str, object]] = field(default_factory=list)  # the control API's records
    comet_messages: list[dict[str, object]] = field(default_factory=list)  # as received
    activity_watcher: ActivityWatcher | None = None  # the phone's Live Activities, if any
    extension: ReceiptExtension | None = None  # the app's Notification Service Extension
    _comet: CometClient | None = None
    _comet_reader: asyncio.Task[None] | None = None

    @property
    def transcript(self) -> list[TranscriptEntry]:
        return self.app.transcript

    @property
    def comet_connected(self) -> bool:
        return self._comet is not None

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.request_timeout_s)

    async def fetch_new_pushes(self) -> list[dict[str, object]]:
        """The control API's notifications for this token after the last one seen."""
        async with self.session.get(
            self.control_url.rstrip("/") + "/notifications",
            params={"token": self.token, "since": str(self.last_seq)},
            timeout=self._timeout(),
        ) as response:
            if response.status != 200:
                raise ControlApiError(f"GET /notifications answered {response.status}")
            listing = await response.json()
        notifications = listing.get("notifications") if isinstance(listing, dict) else None
        if not isinstance(notifications, list):
            raise ControlApiError(f"GET /notifications: no `notifications` list in {listing!r}")
        fresh = [
            n for n in notifications if isinstance(n, dict) and n.get("seq", 0) > self.last_seq
        ]
        if fresh:
            self.last_seq = max(int(n["seq"]) for n in fresh)
        return fresh

    async def poll_once(self) -> int:
        """Fetch new pushes and run the app on each, in order; returns how many arrived."""
        fresh = await self.fetch_new_pushes()
        for record in fresh:
            self.pushes.append(record)
            payload = record.get("payload")
            if not isinstance(payload, dict):
                raise ControlApiError(
                    f"notification seq {record.get('seq')}: payload not an object"
                )
            if self.extension is not None:  # iOS runs it before the alert is shown
                self.extension.on_push(payload)
            await self.perform(self.app.receive_push(payload, self.clock()))
        if self.activity_watcher is not None:
            shown = await self.activity_watcher.poll_once(self.clock())
            self.app.transcript.extend(shown)
            return len(fresh) + len(shown)
        return len(fresh)

    async def perform(self, effects: Sequence[Effect]) -> None:
        """Carry out the app's effects, and those that follow from their answers, in order."""
        pending = deque(effects)
        while pending:
            effect = pending.popleft()
            if isinstance(effect, OpenComet):
                await self._open_comet(effect.url, effect.headers)
            elif isinstance(effect, CloseComet):
                await self._close_comet()
            else:
                pending.extend(await self._request(effect))

    async def _request(self, request: HttpRequest) -> list[Effect]:
        if request.not_before is not None:
            # The scripted user's own pace (reading, thinking), not a wait for a condition.
            await asyncio.sleep(max(0.0, request.not_before - self.clock()))
        try:
            async with self.session.request(
                request.method,
                request.url,
                headers=dict(request.headers),
                data=dict(request.form) if request.form else None,
                timeout=self._timeout(),
            ) as response:
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as error:
            self.app.receive_no_answer(request, f"{type(error).__name__}: {error}", self.clock())
            return []
        return self.app.receive_answer(request, response.status, body, self.clock())

    async def _open_comet(self, url: str, headers: Mapping[str, str]) -> None:
        client = CometClient(
            url, ConnectionType.LONG_POLLING, extensions=[_RequestHeaders(dict(headers))]
        )
        try:
            await client.open()
            await client.subscribe(COMET_CHANNEL)
        except (AiocometdException, aiohttp.ClientError) as error:
            self.app.transcript.append(GmsFailure(self.clock(), url, 0, f"Comet: {error!r}"))
            self.app.comet_open = False
            with _quiet_comet_close(asyncio.get_running_loop()):
                await client.close()
            return
        self._comet = client
        self._comet_reader = asyncio.create_task(self._read_comet(client))

    async def _read_comet(self, client: CometClient) -> None:
        async for message in client:
            self.comet_messages.append(message)
            effects = self.app.receive_comet_message(message, self.clock())
            if any(isinstance(effect, CloseComet) for effect in effects):
                self._comet_reader = None  # closing must not cancel this task mid-way
                await self._close_comet()
                return
            await self.perform(effects)

    async def _close_comet(self) -> None:
        client, self._comet = self._comet, None
        reader, self._comet_reader = self._comet_reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        if client is not None:
            with _quiet_comet_close(asyncio.get_running_loop()):
                await client.close()  # sends /meta/disconnect

    async def to_background(self) -> None:
        await self.perform(self.app.to_background(self.clock()))

    async def to_foreground(self) -> None:
        await self.perform(self.app.to_foreground(self.clock()))

    async def say(self, text: str) -> None:
        await self.perform(self.app.say(text, self.clock()))

    async def leave_chat(self) -> None:
        await self.perform(self.app.leave_chat(self.clock()))

    async def close(self) -> None:
        await self._close_comet()

    async def run_until(
        self, done: Callable[[list[TranscriptEntry]], bool], timeout_s: float
    ) -> list[TranscriptEntry]:
        """Poll until `done(transcript)` holds, or raise TimeoutError at the deadline."""
        deadline = time.monotonic() + timeout_s
        while not done(self.transcript):
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"phone {self.token[:12]}...: condition not met after {timeout_s} s; "
                    f"{self.app.pushes_received} pushes, transcript: {self.transcript!r}"
                )
            if await self.poll_once() == 0:
                await asyncio.sleep(self.poll_interval_s)  # the control API has no long-poll
        return self.transcript

    async def wait_for_pushes(self, count: int, timeout_s: float) -> list[TranscriptEntry]:
        """Run until at least `count` pushes have been received and acted on."""
        return await self.run_until(lambda _: self.app.pushes_received >= count, timeout_s)
