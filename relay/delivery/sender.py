"""What the delivery worker needs of an APNs client: the `Sender` protocol.

relay.delivery.apns.ApnsClient (on the aioapns adapter) is the real one; tests drive the worker
with a fake. The worker depends on this protocol alone, so delivery decisions are testable
without TLS."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from relay.core.model import ApnsResponse, Notification, Route


class Sender(Protocol):
    """Sends one app's notifications to its route; `send` always returns by its deadline."""

    @property
    def route(self) -> Route: ...

    @property
    def max_in_flight(self) -> int: ...

    async def send(
        self, notification: Notification, apns_id: str, on_wire: Callable[[], None] = ...
    ) -> ApnsResponse:
        """One attempt: an APNs answer, or a transport failure (status 0). `on_wire` is called
        when the request is about to leave (from then on it may reach the phone)."""
        ...

    def refresh_jwt(self) -> bool:
        """Sign a fresh provider token (after ExpiredProviderToken); False when not token-based."""
        ...

    async def close(self) -> None: ...
