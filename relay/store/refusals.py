"""Why the store refused to store a push: typed, with a reason and how long waiting takes; no
HTTP (the HTTP layer maps each reason to its status)."""

from __future__ import annotations

from typing import ClassVar


class QueueRefusal(Exception):
    """Enqueue refused; nothing was stored. `reason` names the kind of refusal (each subclass has
    its own; the HTTP layer maps it to a status, relay.http.problems.REFUSAL_STATUSES),
    `retry_after_s` is None when waiting does not help. The store knows nothing of HTTP."""

    reason: ClassVar[str]

    def __init__(self, message: str, retry_after_s: int | None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class IdempotencyKeyReused(QueueRefusal):
    """The idempotency key was used before for a different request: the first one stands."""

    reason = "idempotency_key_reused"

    def __init__(self, key: str, notification_id: str) -> None:
        super().__init__(
            f"idempotency_key {key!r} was used for notification {notification_id} with a"
            " different request; send that same request again, or use a new key",
            None,
        )
        self.notification_id = notification_id


class DeadToken(QueueRefusal):
    reason = "device_token_dead"

    def __init__(
        self, app: str, token: str, apns_reason: str, invalid_since_ms: int | None
    ) -> None:
        super().__init__(
            f"device_token: APNs reported {token} dead for app {app} ({apns_reason});"
            " refused until the device registers again",
            None,
        )
        self.apns_reason = apns_reason  # why APNs gave it up, e.g. "Unregistered"
        self.invalid_since_ms = invalid_since_ms


class DeviceQueueFull(QueueRefusal):
    reason = "device_queue_full"

    def __init__(self, app: str, token: str, limit: int, retry_after_s: int) -> None:
        super().__init__(
            f"device_token: {token} of app {app} already has {limit} notifications queued,"
            f" the most allowed per device",
            retry_after_s,
        )


class PendingCapReached(QueueRefusal):
    reason = "pending_cap_reached"

    def __init__(self, limit: int, retry_after_s: int) -> None:
        super().__init__(
            f"the relay holds its maximum of {limit} undelivered notifications; try again later",
            retry_after_s,
        )


class StoredKeyUnreadable(QueueRefusal):
    """A key of the device's in Redis is not of the type this relay writes (written by something
    else, or by a relay of another layout): its script cannot read it, so this one notification
    is refused, having stored nothing (invariant 14); waiting does not help, removing the key
    does."""

    reason = "stored_key_unreadable"

    def __init__(self, app: str, token: str, error: str) -> None:
        super().__init__(
            f"device_token: Redis holds a key of {token} of app {app} that this relay cannot read"
            f" ({error}); nothing was stored. An operator must remove or repair that key",
            None,
        )
        self.error = error
