"""The local spool's record format and bookkeeping, pure: bytes in, records and decisions out.

A spool file is a sequence of records, each `MAGIC | length (u32) | crc32 (u32) | body`, the body
a JSON object: a spooled notification (`"k": "n"`) or the mark that one reached Redis
(`"k": "d"`). A write torn by a crash leaves a record whose length or checksum does not hold: the
scan skips it and finds the next record by its magic, so nothing after a damaged record is lost.
"""

from __future__ import annotations

import base64
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any

import orjson

from relay.model import Notification

MAGIC = b"\xa7SPL"
HEADER = struct.Struct(">4sII")  # magic, body length, crc32 of the body
MAX_BODY_BYTES = (
    64 * 1024
)  # far above a notification (payload <= 5120 bytes): a length over it is damage
NOTIFICATION, DONE = "n", "d"

_FIELDS = tuple(f.name for f in fields(Notification))

Device = tuple[str, str]  # (app, device token)


@dataclass(frozen=True, slots=True)
class SpooledNotification:
    """A notification answered 2xx from the spool, with the id it will have in Redis."""

    id: str
    notification: Notification
    spooled_at_ms: int

    @property
    def device(self) -> Device:
        return self.notification.app, self.notification.device_token


@dataclass(frozen=True, slots=True)
class Replayed:
    """The mark that a spooled notification is in Redis (or was refused there for good)."""

    id: str


SpoolRecord = SpooledNotification | Replayed


def _frame(body: bytes) -> bytes:
    return HEADER.pack(MAGIC, len(body), zlib.crc32(body)) + body


def encode(record: SpoolRecord) -> bytes:
    """One record, framed and checksummed, ready to append."""
    if isinstance(record, Replayed):
        return _frame(orjson.dumps({"k": DONE, "id": record.id}))
    values: dict[str, Any] = {name: getattr(record.notification, name) for name in _FIELDS}
    values["payload"] = base64.b64encode(record.notification.payload).decode()
    body = {"k": NOTIFICATION, "id": record.id, "at": record.spooled_at_ms, "n": values}
    return _frame(orjson.dumps(body))


def _decode_body(body: bytes) -> SpoolRecord | None:
    try:
        document = orjson.loads(body)
        if document["k"] == DONE:
            return Replayed(str(document["id"]))
        if document["k"] == NOTIFICATION:
            values = dict(document["n"])
            values["payload"] = base64.b64decode(values["payload"], validate=True)
            return SpooledNotification(
                str(document["id"]), Notification(**values), int(document["at"])
            )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        pass
    return None


@dataclass(frozen=True, slots=True)
class Scan:
    """What a spool file holds: its good records in file order, where the last one ends (the
    file is cut back there before anything is appended), and how many bytes were damaged."""

    records: list[tuple[SpoolRecord, int]]  # (record, its framed size)
    good_end: int
    damaged_bytes: int


def scan(data: bytes) -> Scan:
    records: list[tuple[SpoolRecord, int]] = []
    position = good_end = damaged = 0
    while position < len(data):
        record = None
        end = position + HEADER.size
        if end <= len(data):
            magic, length, checksum = HEADER.unpack_from(data, position)
            if magic == MAGIC and length <= MAX_BODY_BYTES and end + length <= len(data):
                body = data[end : end + length]
                if zlib.crc32(body) == checksum:
                    record = _decode_body(body)
                    end += length
        if record is not None:
            records.append((record, end - position))
            position = good_end = end
            continue
        # Damage: resynchronise at the next magic (a torn tail has none, and ends the scan).
        following = data.find(MAGIC, position + 1)
        next_position = len(data) if following < 0 else following
        damaged += next_position - position
        position = next_position
    return Scan(records, good_end, damaged)


class Admission(StrEnum):
    ADMIT = "admit"
    COMPACT_FIRST = "compact_first"  # fits once replayed records are dropped from the file
    FULL = "full"


@dataclass
class SpoolLedger:
    """What the spool still holds, oldest first, and the decisions taken on it."""

    max_bytes: int
    max_notifications: int
    pending: dict[str, SpooledNotification] = field(default_factory=dict)  # insertion = age order
    sizes: dict[str, int] = field(default_factory=dict)  # framed size of each pending record
    devices: Counter[Device] = field(default_factory=Counter)
    file_bytes: int = 0  # the file's length, replayed records and damage included

    @classmethod
    def recovered(cls, found: Scan, max_bytes: int, max_notifications: int) -> SpoolLedger:
        """The ledger of a file after a restart: notifications without a replayed mark remain.
        The file counts as cut back to its last good record."""
        ledger = cls(max_bytes, max_notifications)
        for record, size in found.records:
            ledger.apply(record, size)
        ledger.file_bytes = found.good_end
        return ledger

    def apply(self, record: SpoolRecord, size: int) -> None:
        self.file_bytes += size
        if isinstance(record, Replayed):
            if (done := self.pending.pop(record.id, None)) is not None:
                del self.sizes[record.id]
                self.devices[done.device] -= 1
                if self.devices[done.device] <= 0:
                    del self.devices[done.device]
            return
        if record.id not in self.pending:
            self.pending[record.id] = record
            self.sizes[record.id] = size
            self.devices[record.device] += 1

    def admit(self, size: int) -> Admission:
        if len(self.pending) >= self.max_notifications:
            return Admission.FULL
        if self.file_bytes + size <= self.max_bytes:
            return Admission.ADMIT
        if self.live_bytes + size <= self.max_bytes:
            return Admission.COMPACT_FIRST
        return Admission.FULL

    @property
    def live_bytes(self) -> int:
        return sum(self.sizes.values())

    def holds(self, device: Device) -> bool:
        """Whether the device has spooled notifications: then new ones go behind them."""
        return device in self.devices

    def idempotent_match(self, notification: Notification) -> str | None:
        """The id of a spooled notification with the same device and idempotency key."""
        key = notification.idempotency_key
        if key is None or not self.holds((notification.app, notification.device_token)):
            return None
        for spooled in self.pending.values():
            n = spooled.notification
            if (n.idempotency_key, n.app, n.device_token) == (
                key,
                notification.app,
                notification.device_token,
            ):
                return spooled.id
        return None

    def oldest(self) -> SpooledNotification | None:
        return next(iter(self.pending.values()), None)

    def heads_to_replay(
        self, blocked_until: dict[Device, float], now: float, limit: int
    ) -> list[SpooledNotification]:
        """Up to `limit` notifications to replay at once, oldest first: the first spooled one of
        each device (a device's next waits for it), skipping devices waiting out a refusal (a
        full device queue in Redis), which hold back only themselves."""
        heads: list[SpooledNotification] = []
        seen: set[Device] = set()
        for spooled in self.pending.values():
            if len(heads) >= limit:
                break
            device = spooled.device
            if device not in seen and blocked_until.get(device, 0.0) <= now:
                heads.append(spooled)
            seen.add(device)
        return heads
