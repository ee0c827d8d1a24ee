"""The app's Notification Service Extension: for each alert push marked `mutable-content` that
carries a delivery receipt, it posts the receipt to the relay, as a phone that shows the alert.

`receipt_to_post` is the extension's decision (pure); `ReceiptExtension` its shell, which loses
a share of the receipts and posts the rest after a delay, as phones that are offline or whose
extension is killed before its network call ends. The rule that iOS runs an extension only for
an alert push with `mutable-content: 1` is Apple's (UNNotificationServiceExtension); the shape of
the receipt is the relay's (docs/receipts.md), read here as the app would read it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import aiohttp

EXTENSION_TIME_LIMIT_S = 30.0  # iOS ends an extension that has not called its handler by then


def receipt_to_post(payload: Mapping[str, object]) -> dict[str, str] | None:
    """The receipt the extension posts for this push, or None when it does not run (no alert,
    no mutable-content) or the push carries no receipt it can read."""
    aps = payload.get("aps")
    if not isinstance(aps, Mapping) or aps.get("mutable-content") != 1 or not aps.get("alert"):
        return None
    receipt = payload.get("receipt")
    if not isinstance(receipt, Mapping):
        return None
    notification_id, mac = receipt.get("id"), receipt.get("mac")
    if not isinstance(notification_id, str) or not isinstance(mac, str):
        return None
    return {"id": notification_id, "mac": mac}


@dataclass(frozen=True, slots=True)
class ReceiptSent:
    """What became of one receipt: posted (the relay's answer status), or lost."""

    at: float
    notification_id: str
    status: int | None  # None: lost (never posted), or no answer


@dataclass
class ReceiptExtension:
    """Posts the receipts of the pushes a phone shows: `loss` of them never (0..1), the rest
    `delay_s` after the push arrived."""

    session: aiohttp.ClientSession
    receipts_url: str  # the relay's POST /v1/receipts
    loss: float = 0.0
    delay_s: float = 0.0
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.time
    sent: list[ReceiptSent] = field(default_factory=list)
    _posting: set[asyncio.Task[None]] = field(default_factory=set)

    def on_push(self, payload: Mapping[str, object]) -> None:
        """The alert arrived on the phone: its receipt is posted in the background."""
        receipt = receipt_to_post(payload)
        if receipt is None:
            return
        if self.rng.random() < self.loss:
            self.sent.append(ReceiptSent(self.clock(), receipt["id"], None))
            return
        task = asyncio.create_task(self._post(receipt))
        self._posting.add(task)
        task.add_done_callback(self._posting.discard)

    async def _post(self, receipt: dict[str, str]) -> None:
        # The phone's own pace (network, being woken), not a wait for a condition.
        await asyncio.sleep(self.delay_s)
        status: int | None = None
        try:
            async with self.session.post(
                self.receipts_url,
                json=receipt,
                timeout=aiohttp.ClientTimeout(total=EXTENSION_TIME_LIMIT_S),
            ) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            pass  # the extension calls its content handler all the same: the alert is shown
        self.sent.append(ReceiptSent(self.clock(), receipt["id"], status))

    def confirmed(self) -> set[str]:
        """The notification ids whose receipt the relay took (204)."""
        return {s.notification_id for s in self.sent if s.status == 204}

    async def drain(self) -> None:
        """Wait for the receipts being posted."""
        if self._posting:
            await asyncio.gather(*self._posting)
