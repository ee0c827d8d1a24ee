"""Outcomes and give-backs of sends, written to the queue in batches: one round trip per batch.

A notification's settle is buffered for a short, bounded window rather than written at once: the
worker's next claim carries what is buffered in its own round trip, ahead of its claims (so a
device whose head a settle ends can have its next one claimed there), and settles arriving
within the window share one round trip. At tens or hundreds of pushes a second a send then costs
one round trip to Redis, not two. While the worker waits for work (no claim is coming), what has
waited out its window is written alone by run(); a full buffer, and a closed one, at once.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from relay.core.model import ClaimedNotification, DeliveryOutcome
from relay.delivery.delivery_report import count_set_aside
from relay.store.errors import REDIS_ERRORS, REDIS_UNAVAILABLE
from relay.store.records import ClaimError, Settlement

# How long a settle may wait for a claim, or for other settles, to share its round trip. A
# device's next notification waits for its settle: this is how much later it can be claimed than
# with every settle written at once (a settle written alone is followed by its wake-up, the
# worker's claim window and its claim), so it stays well under the latency targets (p50 5 ms,
# p99 20 ms). As long as the claim window: a push arriving while another is sent is claimed
# within it, so at a steady few hundred a second most settles ride that claim.
SETTLE_WINDOW_S = 0.001
SETTLE_BATCH_MAX = 256  # written at once when this many wait
REDIS_RETRY_S = 0.5


class SettlingQueue(Protocol):
    """What the buffer writes to (relay.store.queue.RelayQueue)."""

    async def write_settlement(self, settlement: Settlement) -> list[ClaimError]: ...


class SettleBuffer:
    """Settles and releases waiting for their round trip: taken by a claim (take), or written by
    run() until close()."""

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
        self.pending = Settlement()
        # What Redis refused (a script error, Redis away): written again by run() every
        # retry_s, never carried by a claim (a settle that fails would fail every claim's trip).
        self.failed = Settlement()
        self._window: asyncio.TimerHandle | None = None  # runs while something waits unripe
        self._ripe = False  # the oldest entry has waited window_s: write it at the next chance
        # Whether the worker's claim is coming (it claims, or gathers wake-ups for a claim): then
        # that claim carries what ripens; if not, run() writes it.
        self._carried = False
        self._write = asyncio.Event()  # run(): write now
        self._closing = False

    def __len__(self) -> int:
        return len(self.pending) + len(self.failed)

    @property
    def settled(self) -> list[tuple[ClaimedNotification, DeliveryOutcome]]:
        return self.failed.settled + self.pending.settled

    @property
    def released(self) -> list[tuple[ClaimedNotification, int, bool]]:
        return self.failed.released + self.pending.released

    def settle(self, claim: ClaimedNotification, outcome: DeliveryOutcome) -> None:
        self.pending.settled.append((claim, outcome))
        self._added()

    def release(self, claim: ClaimedNotification, delay_ms: int, *, possibly_sent: bool) -> None:
        self.pending.released.append((claim, delay_ms, possibly_sent))
        self._added()

    def _added(self) -> None:
        if self._window is None and not self._ripe:
            self._window = asyncio.get_running_loop().call_later(self.window_s, self._ripen)
        if len(self) >= self.batch_max:
            self._write.set()

    def _ripen(self) -> None:
        self._window = None
        self._ripe = True
        if not self._carried:
            self._write.set()

    def carried(self, by_claim: bool) -> None:
        """Whether a claim of the worker's is coming, to carry what ripens meanwhile (True), or
        run() must write it (False: the worker waits for work, or cannot claim)."""
        self._carried = by_claim
        if not by_claim and self._ripe:
            self._write.set()

    def take(self) -> Settlement:
        """What is buffered, for a claim to write; the buffer starts empty (but for what failed)."""
        taken, self.pending = self.pending, Settlement()
        if self._window is not None:
            self._window.cancel()
            self._window = None
        self._ripe = False
        return taken

    def restore(self, taken: Settlement) -> None:
        """Put back what a claim took but could not write (the claim failed): carried by the next
        claim, ahead of what came since (a lease that runs out meanwhile only costs a duplicate
        send)."""
        if taken:
            self.pending.settled[:0] = taken.settled
            self.pending.released[:0] = taken.released
            self._added()

    def refused(self, taken: Settlement) -> None:
        """What a claim carried and Redis refused (a settle script's error): run() writes it
        again, every retry_s until it goes through, apart from the claims."""
        self.failed.settled += taken.settled
        self.failed.released += taken.released
        self._write.set()

    async def run(self) -> None:
        """Write what no claim carries once it ripens, or when the buffer is full; after close(),
        until it is empty."""
        while True:
            await self._write.wait()
            self._write.clear()
            await self.flush()
            if self._closing and not self:
                return

    def close(self) -> None:
        """No more sends: write what is buffered (run() then ends)."""
        self._closing = True
        self._carried = False
        self._write.set()

    async def flush(self) -> None:
        while self:
            taken, self.failed = self.failed, Settlement()
            pending = self.take()
            taken.settled += pending.settled
            taken.released += pending.released
            try:
                set_aside = await self.queue.write_settlement(taken)
            except REDIS_ERRORS as exc:
                REDIS_UNAVAILABLE.occurred("settle", exc)
                self.refused(taken)
                await asyncio.sleep(self.retry_s)
            else:
                count_set_aside(set_aside)
