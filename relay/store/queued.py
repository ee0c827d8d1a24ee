"""The record of a queued notification: one Redis STRING, a packed header and the APNs payload.

Layout QUEUED_LAYOUT, written here at enqueue and read and rewritten by the scripts
(relay/store/lua/shared.lua: read_note, note_header, pack_note):
    HEADER  layout version, state (its place in STATE_CODES, from 1), claim number,
            updated_at_ms, attempts, possibly_sent (0/1), last APNs status (0 = none), priority,
            push type (its place in PUSH_TYPE_CODES, from 1), accepted_at_ms, expires_at (s);
            the fields a claim, a release or a lease running out change come first, so each
            rewrites them with one SETRANGE (MUTABLE: bytes 1 to 14)
    then    each of NOTE_STRINGS: a 2-byte length (ABSENT: None; SAME_AS_SERVICE: the collapse id
            is the service id, as in every GMS push) and its bytes; the device token as its
            bytes, not its hex digits
    then    the APNs payload, to the end of the string.
One key a notification (the record and its payload together) and no field names: ~480 bytes in
Redis at the benchmark's notification, against ~790 for the HASH and payload STRING of layout 1.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

from relay.core.model import DeliveryState, Notification
from relay.store.history import PUSH_TYPE_CODES, STATE_CODES
from relay.store.records import NotificationStatus

QUEUED_LAYOUT = 2
HEADER_FIELDS = (
    "layout",
    "state",
    "claim_no",
    "updated_at_ms",
    "attempts",
    "possibly_sent",
    "last_status",
    "priority",
    "push_type",
    "accepted_at_ms",
    "expires_at",
)
HEADER = struct.Struct(">BBI6sHBHBB6s6s")
HEADER_SIZES = (1, 1, 4, 6, 2, 1, 2, 1, 1, 6, 6)
ABSENT, SAME_AS_SERVICE = 0xFFFF, 0xFFFE
MAX_STRING_BYTES = 0xFFFD
# The order the strings follow the header in; enqueue's scans read the first three.
NOTE_STRINGS = (
    "service_id",
    "order_group",
    "order",
    "action",
    "collapse_id",
    "app",
    "device_token",
    "idempotency_key",
    "last_reason",
)
_LENGTH = struct.Struct(">H")


def _string(value: bytes | None) -> bytes:
    if value is None:
        return _LENGTH.pack(ABSENT)
    if len(value) > MAX_STRING_BYTES:
        raise ValueError(
            f"a queued record's string is {len(value)} bytes, at most {MAX_STRING_BYTES}"
        )
    return _LENGTH.pack(len(value)) + value


def pack_record(
    numbers: Sequence[int], strings: Mapping[str, bytes | None], payload: bytes
) -> bytes:
    """A record from its HEADER_FIELDS values, its NOTE_STRINGS and its payload."""
    six = {i for i, size in enumerate(HEADER_SIZES) if size == 6}
    header = HEADER.pack(*(v.to_bytes(6) if i in six else v for i, v in enumerate(numbers)))
    parts = [header]
    for name in NOTE_STRINGS:
        value = strings.get(name)
        if name == "collapse_id" and value is not None and value == strings.get("service_id"):
            parts.append(_LENGTH.pack(SAME_AS_SERVICE))
        else:
            parts.append(_string(value))
    parts.append(payload)
    return b"".join(parts)


def pack_queued(n: Notification, now_ms: int) -> bytes:
    """The record enqueue stores for `n`, accepted at `now_ms`: queued, never claimed."""
    state = STATE_CODES.index(DeliveryState.QUEUED) + 1
    push = PUSH_TYPE_CODES.index(n.push_type) + 1
    numbers = (QUEUED_LAYOUT, state, 0, now_ms, 0, 0, 0, n.priority, push, now_ms, n.expires_at)
    strings = {
        "service_id": n.service_id,
        "order_group": n.order_group,
        "order": None if n.order is None else str(n.order),
        "action": n.action,
        "collapse_id": n.collapse_id,
        "app": n.app,
        "idempotency_key": n.idempotency_key,
    }
    encoded = {name: None if v is None else v.encode() for name, v in strings.items()}
    encoded["device_token"] = bytes.fromhex(n.device_token)
    return pack_record(numbers, encoded, n.payload)


def unpack_queued(record: bytes) -> tuple[tuple[int, ...], dict[str, bytes | None], bytes]:
    """(header values, strings by name, payload); ValueError or struct.error when `record` is
    not one this layout wrote."""
    header = HEADER.unpack_from(record)
    if header[0] != QUEUED_LAYOUT:
        raise ValueError(f"layout {header[0]}, not {QUEUED_LAYOUT}")
    numbers = tuple(int.from_bytes(v) if isinstance(v, bytes) else v for v in header)
    offset = HEADER.size
    strings: dict[str, bytes | None] = {}
    for name in NOTE_STRINGS:
        (length,) = _LENGTH.unpack_from(record, offset)
        offset += _LENGTH.size
        if length == ABSENT:
            strings[name] = None
        elif length == SAME_AS_SERVICE and name == "collapse_id":
            strings[name] = strings["service_id"]
        else:
            if offset + length > len(record):
                raise ValueError(f"{name}: {length} bytes past the record's end")
            strings[name] = record[offset : offset + length]
            offset += length
    return numbers, strings, record[offset:]


def status_from_queued(notification_id: str, record: bytes) -> NotificationStatus:
    """A queued record (GET) as the notification's status; ValueError, IndexError or
    struct.error for one this layout did not write."""
    numbers, strings, _ = unpack_queued(record)
    _, state, claim_no, updated, attempts, _, status, priority, push, accepted, expires = numbers

    if not 1 <= state <= len(STATE_CODES) or not 0 <= push <= len(PUSH_TYPE_CODES):
        raise ValueError(f"state code {state} or push type code {push} unknown")

    def text(name: str) -> str | None:
        value = strings[name]
        return None if value is None else value.decode()

    token = strings["device_token"]
    return NotificationStatus(
        id=notification_id,
        app=text("app") or "",
        device_token=None if token is None else token.hex(),
        service_id=text("service_id"),
        action=text("action"),
        state=STATE_CODES[state - 1],
        attempts=attempts,
        claims=claim_no,
        accepted_at_ms=accepted,
        updated_at_ms=updated,
        expires_at=expires,
        delivered_at_ms=None,
        last_status=status or None,
        last_reason=text("last_reason"),
        apns_id=None,
        apns_unique_id=None,
        collapse_id=text("collapse_id"),
        push_type=PUSH_TYPE_CODES[push - 1] if push else "",
        priority=priority,
    )
