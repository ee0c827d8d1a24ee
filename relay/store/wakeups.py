"""Wake-ups of idle workers: the wake channel read by one task into the set of shards woken.

enqueue and settle PUBLISH a shard's prefix on the wake channel when a device there becomes due.
One task reads the subscription and collects the shards named, so that a worker asks what woke
it by looking at a set rather than by reading the connection: a read that finds nothing costs
redis-py's whole read path and an event-loop turn (tens of µs, paid twice per push at low rates
when a wait polled for the wake-ups already queued)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from redis.asyncio.client import PubSub

from relay.store.connection import RedisClient
from relay.store.keys import WAKE_CHANNEL

SUBSCRIBE_TIMEOUT_S = 5.0
# How long one read of the subscription waits before the next: each read first runs redis-py's
# health check of the connection (a PING once its interval has passed), so a connection that went
# silent is found within about this long plus that interval.
READ_S = 1.0


class WakeUps:
    """The wake channel's subscription and the shards it named since the last take()."""

    def __init__(self, redis: RedisClient, shards_of: Callable[[bytes], range | tuple[int]]):
        self._redis = redis
        self._shards_of = shards_of  # the shards a published prefix names
        self._wake: PubSub | None = None
        self._reader: asyncio.Task[None] | None = None
        self._woken: set[int] = set()
        self._changed = asyncio.Event()  # a wake-up arrived, or the reader failed
        self._error: BaseException | None = None

    async def listen(self) -> None:
        """Subscribed (confirmed by the server) and read from now on: every PUBLISH after this
        returns is seen. A reader that failed (Redis went away) is started again here."""
        if self._wake is None:
            wake = self._redis.pubsub()
            await wake.subscribe(WAKE_CHANNEL)
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                while True:
                    message = await wake.get_message(timeout=SUBSCRIBE_TIMEOUT_S)
                    if message is not None and message["type"] == "subscribe":
                        break
            self._wake = wake
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(self._wake), name="wake-ups")

    async def _read(self, wake: PubSub) -> None:
        try:
            while True:
                message = await wake.get_message(ignore_subscribe_messages=True, timeout=READ_S)
                if message is not None:
                    self._woken.update(self._shards_of(message["data"]))
                    self._changed.set()
        except Exception as error:  # Redis' errors, and a connection that vanished mid-read
            # Said by the next wait; the one after reads again (redis-py reconnects and
            # subscribes again; what was published meanwhile is lost, and the worker then
            # claims every shard).
            self._error = error
            self._changed.set()

    async def wait(self, timeout_s: float) -> frozenset[int]:
        """The shards named since the last call, as soon as there is one; empty after
        `timeout_s` without any. Raises what the reader met, once."""
        await self.listen()
        if not self._woken and self._error is None and timeout_s > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._changed.wait()
        self._changed.clear()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        woken, self._woken = frozenset(self._woken), set()
        return woken

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait({self._reader})
            self._reader = None
        if self._wake is not None:
            wake, self._wake = self._wake, None
            await wake.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
