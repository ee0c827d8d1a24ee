"""Outcomes and give-backs of sends, written to the queue in batches: one round trip per batch.

A notification's settle is buffered, not written at once: writes that arrive within a short,
bounded window share one round trip (at tens or hundreds of pushes a second each send would
otherwise pay its own). The window never delays what the worker waits for: it ends as soon as no
send is in flight (the claimed batch has drained), and a full buffer is written at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Protocol

from relay.core.model import ClaimedNotification, DeliveryOutcome
from relay.store.errors import REDIS_ERRORS, REDIS_UNAVAILABLE

# How long a settle may wait for others to share its round trip while sends are still in flight.
# A device's next notification waits for its settle, so this is bounded well under the latency
# targets (p50 5 ms, p99 20 ms).
SETTLE_WINDOW_S = 0.002
SETTLE_BATCH_MAX = 256  # written at once when this many wait
REDIS_RETRY_S = 0.5


class SettlingQueue(Protocol):
    """What the buffer writes to (relay.store.queue.RelayQueue)."""

    async def settle(
        self, results: Sequence[tuple[ClaimedNotification, DeliveryOutcome]]
    ) -> None: ...

    async def release(
        self, claims: Sequence[ClaimedNotification], *, delay_ms: int, possibly_sent: bool
    ) -> None: ...


class SettleBuffer:
    """Settles and releases waiting for their round trip; run() writes them until close()."""

    def __init__(
        self,
        queue: SettlingQueue,
        *,
        window_s: float = SETTLE_WINDOW_S,
        batch_max: int = SETTLE_BATCH_MAX,
        retry_s: float = REDIS_RETRY_S,
    ) -> None:
        self.queue = queue
        self.window_s = window_s
        self.batch_max = batch_max
        self.retry_s = retry_s
        self.settled: list[tuple[ClaimedNotification, DeliveryOutcome]] = []
        # (claim, due again after ms, whether its request went out: possibly sent)
        self.released: list[tuple[ClaimedNotification, int, bool]] = []
        self._ready = asyncio.Event()
        self._idle = asyncio.Event()  # no send in flight: write now
        self._idle.set()
        self._closing = False

    def __len__(self) -> int:
        return len(self.settled) + len(self.released)

    def settle(self, claim: ClaimedNotification, outcome: DeliveryOutcome) -> None:
        self.settled.append((claim, outcome))
        self._added()

    def release(self, claim: ClaimedNotification, delay_ms: int, *, possibly_sent: bool) -> None:
        self.released.append((claim, delay_ms, possibly_sent))
        self._added()

    def _added(self) -> None:
        self._ready.set()
        if len(self) >= self.batch_max:
            self._idle.set()

    def sends_in_flight(self, count: int) -> None:
        """The worker's sends in flight: at 0 the window closes and the buffer is written."""
        if count == 0:
            self._idle.set()
        elif len(self) < self.batch_max:
            self._idle.clear()

    async def run(self) -> None:
        """Write batches as they fill; after close(), until the buffer is empty."""
        while True:
            await self._ready.wait()
            if not self._idle.is_set() and not self._closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.window_s):
                        await self._idle.wait()
            self._ready.clear()
            await self.flush()
            if self._closing and not self:
                return

    def close(self) -> None:
        """No more sends: write what is buffered (run() then ends)."""
        self._closing = True
        self._idle.set()
        self._ready.set()

    async def flush(self) -> None:
        while self:
            settled, self.settled = self.settled, []
            released, self.released = self.released, []
            try:
                if settled:
                    await self.queue.settle(settled)
                for delay_ms, sent in {(delay, sent) for _, delay, sent in released}:
                    await self.queue.release(
                        [c for c, d, s in released if (d, s) == (delay_ms, sent)],
                        delay_ms=delay_ms,
                        possibly_sent=sent,
                    )
            except REDIS_ERRORS as exc:
                # Keep them: a lease that runs out meanwhile only costs a duplicate send.
                REDIS_UNAVAILABLE.occurred("settle", exc)
                self.settled[:0] = settled
                self.released[:0] = released
                await asyncio.sleep(self.retry_s)
