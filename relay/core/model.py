"""Plain typed data shared by ingest, queue and delivery: notifications, states, outcomes."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from enum import StrEnum


class DeliveryState(StrEnum):
    """Where one notification stands; the last four are final. SPOOLED is never in Redis: the
    api that answered it holds it in its local spool until Redis answers again."""

    SPOOLED = "spooled"
    QUEUED = "queued"
    SENDING = "sending"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    FAILED = "failed"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"


FINAL_STATES = frozenset(
    {
        DeliveryState.DELIVERED,
        DeliveryState.FAILED,
        DeliveryState.EXPIRED,
        DeliveryState.SUPERSEDED,
    }
)

# Apple's apns-push-type values ("Sending notification requests to APNs", developer.apple.com).
PUSH_TYPES = frozenset(
    {
        "alert",
        "background",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
        "location",
        "pushtotalk",
        "widgets",
        "controls",
    }
)
PRIORITIES = frozenset({1, 5, 10})
MAX_PAYLOAD_BYTES = 4096
MAX_VOIP_PAYLOAD_BYTES = 5120
MAX_COLLAPSE_ID_BYTES = 64


class InvalidInput(ValueError):
    """Bad input, said as the field it concerns, the rule it broke and what was received
    (problem+json material). `received` is already shown as a refusal may show it: bounded, no
    secret, no device token in full (relay.core.quoting.shown); None when nothing was received."""

    def __init__(self, field: str, rule: str, *, received: str | None = None) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule
        self.received = received

    @property
    def detail(self) -> str:
        """The rule and what was received, in the one wording every route uses."""
        return self.rule if self.received is None else f"{self.rule}; received {self.received}"


# Input that is well-formed but cannot be served: kinds of their own, so a caller can tell them
# from a malformed request (the HTTP layer gives each its status, relay.http.problems).
class PayloadTooLarge(InvalidInput):
    """The APNs body the input builds is over APNs' limit for its push type."""


class ExpiredOnArrival(InvalidInput):
    """The push's expiry had passed when it arrived."""


APNS_ID_NAMESPACE = uuid.UUID("6f0b3c2e-4a43-4b8e-9a51-2a1f0c9d7e10")
_APNS_ID_NAMESPACE_BYTES = APNS_ID_NAMESPACE.bytes


def apns_id_for(notification_id: str) -> str:
    """The same apns-id on every attempt of one notification, so Apple's logs line up with ours
    (and a status read derives it rather than the history storing it).

    str(uuid.uuid5(APNS_ID_NAMESPACE, notification_id)), spelled out: the UUID object it builds
    on the way was most of its cost, paid on every send. Records stored without an apns-id rely
    on this exact rule (relay.store.history), so the result must never change."""
    digest = bytearray(hashlib.sha1(_APNS_ID_NAMESPACE_BYTES + notification_id.encode()).digest())
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = digest[:16].hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def payload_limit(push_type: str) -> int:
    """The APNs body size limit for a push type."""
    return MAX_VOIP_PAYLOAD_BYTES if push_type == "voip" else MAX_PAYLOAD_BYTES


@dataclass(frozen=True, slots=True)
class Notification:
    """One APNs request as ingest hands it to the queue: validated and ready to send."""

    app: str
    device_token: str  # lower-case hex
    payload: bytes  # the APNs JSON body, built once at ingest
    push_type: str
    priority: int
    expires_at: int  # UNIX seconds, sent as apns-expiration
    collapse_id: str | None = None
    service_id: str | None = None  # GMS _id: thread-id, collapse id and supersede key
    action: str | None = None  # GMS _action
    idempotency_key: str | None = None
    # Per-device ordering inside a group (a chat session): the queue inserts the notification
    # before the first not-yet-sent one of the same group with a higher order (RelayQueue.enqueue).
    order_group: str | None = None
    order: int | None = None  # e.g. GMS transcriptPosition; None: plain FIFO
    # A digest of the normalised request that chose `idempotency_key` (a client's own key): the
    # key then repeats only with the same request. None for keys the relay derives itself.
    request_digest: str | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """Where an app's notifications go: what a circuit is kept for (relay.core.circuit)."""

    app: str
    environment: str  # production | sandbox
    endpoint: str  # "host:port"


@dataclass(frozen=True, slots=True)
class ClaimedNotification:
    """A device's head notification, leased to one worker for one send attempt."""

    id: str
    notification: Notification
    attempts: int  # attempts made before this one
    accepted_at_ms: int
    # When it last went back to waiting: its previous attempt (or a release, a run-out lease);
    # acceptance for a first attempt. Did its route deliver anything since? (poison detection)
    waiting_since_ms: int = 0


@dataclass(frozen=True, slots=True)
class ApnsResponse:
    """What one send attempt produced: an APNs answer, or a transport failure (status 0)."""

    status: int
    reason: str | None = None
    apns_id: str | None = None
    timestamp_ms: int | None = None  # 410 only: when APNs learned the token went invalid
    # Status 0 only: the request never reached APNs, or APNs said it did not process it (a stream
    # above GOAWAY's last_stream_id). Sending it again cannot duplicate a push.
    unprocessed: bool = False
    apns_unique_id: str | None = None  # 200 in sandbox: the key of Apple's Delivery Log


# The outcome of one attempt: a small closed set, so that policy is a type decision.


@dataclass(frozen=True, slots=True)
class Delivered:
    apns_id: str | None
    apns_unique_id: str | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    reason: str
    delay_ms: int
    status: int = 0
    refresh_jwt: bool = False  # 403 ExpiredProviderToken: sign a fresh token first


@dataclass(frozen=True, slots=True)
class Failed:
    reason: str
    status: int
    dead_token: bool = False
    token_invalid_since_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Expired:
    pass


@dataclass(frozen=True, slots=True)
class PauseApp:
    """Credentials or configuration are wrong: stop the app, keep its queue, probe later."""

    reason: str
    status: int


DeliveryOutcome = Delivered | Retry | Failed | Expired | PauseApp
