"""What stays of a final notification: a compact record in its shard's history bucket, the
bucket an id's record lives in, and the record read back as a status.

A final record is ~100 bytes (the queued record, ~480 bytes with its payload, is deleted): it
keeps what the status API shows of a final notification, packed by finalise() in
relay/store/lua/shared.lua as
    header  HEADER: layout version (+ COLLAPSE_IS_SERVICE), state, attempts and claims (each
            at most 255), last APNs status (0 = none), priority, push type (its place in
            PUSH_TYPE_CODES, from 1; 0 = not one of them), accepted_at_ms, ms from acceptance to
            the final state, s from acceptance to expires_at
    then    one length byte and the bytes of each of HISTORY_STRINGS, in that order; the
            collapse id left empty when it is the service id (GMS pushes: flag
            COLLAPSE_IS_SERVICE).
It keeps no device token: the largest field, a personal identifier, and known to whoever sent the
notification; a final status shows it as null. An apns-id the relay derived itself
(relay.core.model.apns_id_for) is not stored either: it is derived again.

Records are grouped by the time their id was made (ids carry it, RelayQueue.new_id), one HASH per
shard and HISTORY_BUCKET_S: so a status read knows its key from the id alone, and the oldest
history goes first, a bucket at a time (trim_history), when Redis memory runs short. Each bucket
carries a TTL (the retention from its last write), so a volatile-* eviction policy evicts only
history.
"""

from __future__ import annotations

import os
import struct
import time
import uuid

from relay.core.model import PUSH_TYPES, DeliveryState, apns_id_for
from relay.store.records import NotificationStatus

LAYOUT_VERSION = 1
COLLAPSE_IS_SERVICE = 0x80  # or'ed into the layout byte
HEADER = struct.Struct(">BBBBHBB6s4s4s")
PUSH_TYPE_CODES = tuple(sorted(PUSH_TYPES))
# The strings after the header, in order (names of NotificationStatus fields).
HISTORY_STRINGS = (
    "app",
    "service_id",
    "action",
    "collapse_id",
    "last_reason",
    "apns_id",
    "apns_unique_id",
)
# A final state's code in a record: its position in this tuple, from 1.
STATE_CODES = tuple(DeliveryState)
HISTORY_BUCKET_S = 600
# Ids are "<shard>-<32 hex>", the first 12 hex digits the time they were made (ms, UUIDv7).
ID_TIME_HEX_DIGITS = 12


def time_ordered_hex() -> str:
    """The 32 hex digits of a new id: a UUIDv7 (RFC 9562), the time it was made (ms) first."""
    rand_a, rand_b = divmod(int.from_bytes(os.urandom(10)) >> 6, 1 << 62)  # 12 and 62 bits
    made_ms = time.time_ns() // 1_000_000
    return f"{made_ms << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b:032x}"


def id_time_ms(notification_id: str) -> int | None:
    """When the id was made (ms), or None for an id this queue never made (not "<shard>-" and a
    UUIDv7's 32 hex digits)."""
    _, _, hex_part = notification_id.partition("-")
    try:
        made = uuid.UUID(hex=hex_part) if len(hex_part) == 32 else None
    except ValueError:
        return None
    if made is None or made.version != 7 or made.variant != uuid.RFC_4122:
        return None
    return int(hex_part[:ID_TIME_HEX_DIGITS], 16)


def bucket_of(notification_id: str) -> int | None:
    """The history bucket an id's final record goes to (finalise() computes the same)."""
    made_ms = id_time_ms(notification_id)
    return None if made_ms is None else made_ms // (HISTORY_BUCKET_S * 1000)


def history_field(notification_id: str) -> str:
    """A record's field in its bucket: the id's last 16 hex digits (62 of them random; the bucket
    already names the shard and the time)."""
    return notification_id[-16:]


def status_from_history(notification_id: str, record: bytes) -> NotificationStatus:
    """A history record (HGET of its bucket) as the notification's status."""
    layout, state, attempts, claims, status, priority, push_type, accepted, took, expires = (
        HEADER.unpack_from(record)
    )
    offset = HEADER.size
    strings: dict[str, bytes] = {}
    for name in HISTORY_STRINGS:
        length = record[offset]
        strings[name] = record[offset + 1 : offset + 1 + length]
        offset += 1 + length
    accepted_at_ms = int.from_bytes(accepted)
    updated_at_ms = accepted_at_ms + int.from_bytes(took)
    final = STATE_CODES[state - 1]

    def text(name: str) -> str | None:
        return strings[name].decode() or None

    apns_id = text("apns_id")
    if apns_id is None and final is DeliveryState.DELIVERED:
        apns_id = apns_id_for(notification_id)
    return NotificationStatus(
        id=notification_id,
        app=strings["app"].decode(),
        device_token=None,
        service_id=text("service_id"),
        action=text("action"),
        state=final,
        attempts=attempts,
        claims=claims,
        accepted_at_ms=accepted_at_ms,
        updated_at_ms=updated_at_ms,
        expires_at=accepted_at_ms // 1000 + int.from_bytes(expires),
        delivered_at_ms=updated_at_ms if final is DeliveryState.DELIVERED else None,
        last_status=status or None,
        last_reason=text("last_reason"),
        apns_id=apns_id,
        apns_unique_id=text("apns_unique_id"),
        collapse_id=text("service_id") if layout & COLLAPSE_IS_SERVICE else text("collapse_id"),
        push_type=PUSH_TYPE_CODES[push_type - 1] if push_type else "",
        priority=priority,
    )


def retention_gap(
    notification_id: str,
    *,
    now_ms: int,
    retention_s: int,
    oldest_bucket: int | None,
    bucket_listed: bool,
    bucket_exists: bool,
) -> str | None:
    """Why an id found neither queued nor in its history bucket is no longer retained, or None
    when nothing says it ever existed (a 404). `oldest_bucket` is the oldest its shard's history
    index lists; `bucket_listed`/`bucket_exists` say whether the id's own bucket is listed there
    and still exists."""
    made_ms, bucket = id_time_ms(notification_id), bucket_of(notification_id)
    if made_ms is None or bucket is None:
        return None
    if made_ms + retention_s * 1000 < now_ms:
        return f"past its retention (queue.retention_seconds: {retention_s})"
    if (bucket_listed and not bucket_exists) or (
        oldest_bucket is not None and bucket < oldest_bucket
    ):
        return "history given up while Redis memory ran short (trimmed or evicted)"
    return None
