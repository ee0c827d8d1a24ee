"""The store's plain data: its limits, what enqueue and claim return, what a read finds, and which
of a notification's fields its record holds."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

from relay.core.model import ClaimedNotification, DeliveryOutcome, DeliveryState, Notification

# The payload ends the record (relay.store.queued); the request digest lives only beside the
# idempotency key.
NOTIFICATION_FIELDS = tuple(
    f.name for f in fields(Notification) if f.name not in ("payload", "request_digest")
)
# What claim reads of a head: the whole Notification, then the delivery record it needs.
CLAIM_FIELDS = (*NOTIFICATION_FIELDS, "attempts", "accepted_at_ms", "updated_at_ms")


@dataclass(frozen=True, slots=True)
class QueueLimits:
    """How the store is sharded and bounded; every process sharing a Redis must agree on them."""

    shards: int = 16
    max_per_device: int = 100  # per (app, token) queue length
    # The global cap on non-final notifications, enforced per shard as ceil(max_pending / shards)
    # so the check stays inside one shard's script: the real total can reach shards * that.
    max_pending: int = 1_000_000
    retention_s: int = 86_400  # TTL of final notification records and idempotency keys
    lease_ms: int = 30_000  # how long a claim is held before another worker may take it
    dead_token_ttl_s: int = 30 * 86_400
    # A newer notification for the same (device, service_id) supersedes an older QUEUED one
    # (never one possibly sent: in flight, retrying, or whose lease ran out; invariant 12).
    supersede: bool = True
    device_full_retry_after_s: int = 30  # Retry-After for DeviceQueueFull
    pending_cap_retry_after_s: int = 60  # Retry-After for PendingCapReached

    def __post_init__(self) -> None:
        for name in (
            "shards",
            "max_per_device",
            "max_pending",
            "retention_s",
            "lease_ms",
            "dead_token_ttl_s",
        ):
            if getattr(self, name) < 1:
                value = getattr(self, name)
                raise ValueError(f"QueueLimits.{name}: must be at least 1, got {value}")

    @property
    def max_pending_per_shard(self) -> int:
        return math.ceil(self.max_pending / self.shards)


@dataclass(frozen=True, slots=True)
class Accepted:
    id: str
    duplicate: bool  # the idempotency key was seen before: the existing id is returned
    superseded: str | None = None  # the older notification this one replaced, if any
    spooled: bool = False  # held in the api's local spool until Redis answers (relay.store.spool)


@dataclass(frozen=True, slots=True, kw_only=True)
class LeasedNotification(ClaimedNotification):
    """A claim as `claim` hands it out: the claim number proves the lease at settle/release
    (a claim ended once, or overtaken by a later claim, changes nothing)."""

    claim_no: int


@dataclass(frozen=True, slots=True)
class ExpiredRecord:
    """A head that claim found past its expires_at and finalised as EXPIRED (for metrics, logs)."""

    id: str
    app: str
    service_id: str | None
    action: str | None


@dataclass(frozen=True, slots=True)
class MalformedRecord:
    """A head a claim could not send as stored (invariant 14): failed with reason
    MalformedRecord, never handed out."""

    id: str
    device: str  # "<app>:<token>"
    problem: str


@dataclass(frozen=True, slots=True)
class ClaimError:
    """A script error a claim or a settle met: on one device (set aside for a while, the call
    went on), or on a whole shard (device None: that shard's claim failed, the other shards' did
    not)."""

    shard: int
    device: str | None
    error: str


@dataclass(frozen=True, slots=True)
class ClaimBatch:
    claimed: list[ClaimedNotification]  # LeasedNotification instances
    expired: list[ExpiredRecord]  # heads finalised as EXPIRED during the claim
    malformed: list[MalformedRecord] = field(default_factory=list)
    errors: list[ClaimError] = field(default_factory=list)
    # The settle or release script error that the settlement carried by this claim met (the
    # settlement is then to be written again); None when it was written, or none was carried.
    settlement_error: Exception | None = None


@dataclass(slots=True)
class Settlement:
    """Outcomes and give-backs of sends, written together in one round trip (alone, or ahead of
    a claim: RelayQueue.write_settlement, RelayQueue.claim)."""

    settled: list[tuple[ClaimedNotification, DeliveryOutcome]] = field(default_factory=list)
    # (claim, due again after ms, whether its request went out: possibly sent)
    released: list[tuple[ClaimedNotification, int, bool]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.settled) + len(self.released)

    def claims(self) -> list[ClaimedNotification]:
        return [claim for claim, _ in self.settled] + [claim for claim, _, _ in self.released]


@dataclass(frozen=True, slots=True)
class NotificationStatus:
    id: str
    app: str
    device_token: str | None  # None once final: the history keeps no device token
    service_id: str | None
    action: str | None
    state: DeliveryState
    attempts: int
    # Times it was handed to a worker: more than attempts when a worker stopped mid-send, so the
    # phone may have got it more than once (at-least-once).
    claims: int
    accepted_at_ms: int
    updated_at_ms: int
    expires_at: int  # UNIX seconds
    delivered_at_ms: int | None
    last_status: int | None
    last_reason: str | None
    apns_id: str | None
    apns_unique_id: str | None  # sandbox only: the key of Apple's Delivery Log
    collapse_id: str | None
    push_type: str
    priority: int
    # When the phone's delivery receipt arrived (apps[].receipts), and how long after acceptance.
    received_at_ms: int | None = None
    device_latency_ms: int | None = None

    @classmethod
    def unsent(
        cls, notification_id: str, n: Notification, state: DeliveryState, at_ms: int
    ) -> NotificationStatus:
        """The status of a notification no worker has had yet (one in an api's spool): the
        untried fields said once, here."""
        return cls(
            id=notification_id,
            app=n.app,
            device_token=n.device_token,
            service_id=n.service_id,
            action=n.action,
            state=state,
            attempts=0,
            claims=0,
            accepted_at_ms=at_ms,
            updated_at_ms=at_ms,
            expires_at=n.expires_at,
            delivered_at_ms=None,
            last_status=None,
            last_reason=None,
            apns_id=None,
            apns_unique_id=None,
            collapse_id=n.collapse_id,
            push_type=n.push_type,
            priority=n.priority,
        )


def with_received(status: NotificationStatus, received: bytes | str | None) -> NotificationStatus:
    """The status with its delivery receipt's time (the receipt bucket's field), if any."""
    if received is None:
        return status
    received_at_ms = int(received)
    latency = received_at_ms - status.accepted_at_ms
    return replace(status, received_at_ms=received_at_ms, device_latency_ms=latency)


@dataclass(frozen=True, slots=True)
class NoLongerRetained:
    """A notification id whose record is gone: past its retention, or history given up while
    Redis memory ran short (trimmed by the relay, evicted by a volatile-* policy)."""

    id: str
    why: str


@dataclass(frozen=True, slots=True)
class DeadTokenRecord:
    reason: str
    status: int | None
    invalid_since_ms: int | None  # APNs' timestamp: when the token went invalid
    marked_at_ms: int


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    pending: int  # non-final notifications, the one in flight included
    in_flight: bool
    dead: DeadTokenRecord | None


@dataclass(frozen=True, slots=True)
class QueueTotals:
    pending: int  # non-final notifications
    devices_pending: int  # devices with at least one
    leased: int  # devices whose head is in flight
    oldest_pending_age_s: float | None
    enqueued: int
    delivered: int
    failed: int
    expired: int
    superseded: int
    retried: int
    dead_marked: int
