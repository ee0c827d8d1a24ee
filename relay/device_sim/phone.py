"""The simulated phone's I/O: polls the APNs simulator's control API, POSTs to GMS for the app."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

from relay.device_sim.app import DeviceApp, PostRequest, TranscriptEntry

DEFAULT_POLL_INTERVAL_S = 0.05
DEFAULT_REQUEST_TIMEOUT_S = 5.0


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

    @property
    def transcript(self) -> list[TranscriptEntry]:
        return self.app.transcript

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
            await self._perform(self.app.receive_push(payload, self.clock()))
        return len(fresh)

    async def _perform(self, requests: Sequence[PostRequest]) -> None:
        pending = deque(requests)
        while pending:
            request = pending.popleft()
            try:
                async with self.session.request(
                    request.method,
                    request.url,
                    headers=dict(request.headers),
                    timeout=self._timeout(),
                ) as response:
                    body = await response.read()
            except (aiohttp.ClientError, TimeoutError) as error:
                self.app.receive_no_answer(
                    request, f"{type(error).__name__}: {error}", self.clock()
                )
                continue
            pending.extend(self.app.receive_answer(request, response.status, body, self.clock()))

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
