"""The local spool's record format and bookkeeping, pure: bytes in, records and decisions out.

A spool file is a sequence of records, each `MAGIC | length (u32) | crc32 (u32) | body`, the body
a JSON object: a spooled notification (`"k": "n"`) or the mark that one reached Redis
(`"k": "d"`). A write torn by a crash leaves a record whose length or checksum does not hold: the
scan skips it and finds the next record by its magic, so nothing after a damaged record is lost.
A record whose checksum holds but whose notification breaks ingest's rules (another version wrote
it, a bug, a hand edit) is quarantined: kept aside, never replayed (invariant 14). The scan reads
the file in bounded chunks, whatever its size.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, BinaryIO

import orjson

from relay.core.model import InvalidInput, Notification
from relay.core.payload import check_notification
from relay.store.keys import shard_of_id

MAGIC = b"\xa7SPL"
HEADER = struct.Struct(">4sII")  # magic, body length, crc32 of the body
MAX_BODY_BYTES = (
    64 * 1024
)  # far above a notification (payload <= 5120 bytes): a length over it is damage
NOTIFICATION, DONE = "n", "d"
READ_BYTES = 1 << 20  # the scan's chunk: its memory is about two of them, whatever the file

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


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A record whose frame and checksum hold but whose content cannot be replayed: the id it
    names (None when it names none), what is wrong, and its body as found."""

    id: str | None
    problem: str
    body: bytes


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


def _record_id(document: object) -> str | None:
    notification_id = document.get("id") if isinstance(document, dict) else None
    if isinstance(notification_id, str) and shard_of_id(notification_id) is not None:
        return notification_id
    return None


def _decode_body(body: bytes) -> SpoolRecord | Quarantined:
    """The record a checksummed body holds, validated as ingest validates a push; what does not
    pass is Quarantined with the first problem found."""
    document: object = None
    try:
        document = orjson.loads(body)
        if not isinstance(document, dict) or document.get("k") not in (DONE, NOTIFICATION):
            raise ValueError("not a spool record (no kind 'n' or 'd')")
        notification_id = _record_id(document)
        if notification_id is None:
            raise ValueError("id: must be an id the queue makes (<shard>-<hex>)")
        if document["k"] == DONE:
            return Replayed(notification_id)
        spooled_at = document.get("at")
        if not isinstance(spooled_at, int) or isinstance(spooled_at, bool):
            raise ValueError("at: must be a whole number (ms)")
        values = dict(document["n"])
        payload = values.get("payload")
        if not isinstance(payload, str):
            raise ValueError("payload: must be base64 text")
        try:
            values["payload"] = base64.b64decode(payload, validate=True)
        except ValueError as error:
            raise ValueError(f"payload: must be base64 text ({error})") from None
        notification = check_notification(Notification(**values))
        return SpooledNotification(notification_id, notification, spooled_at)
    except InvalidInput as error:
        problem = str(error)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        problem = str(error) or type(error).__name__
    return Quarantined(_record_id(document), problem, body)


@dataclass(frozen=True, slots=True)
class Scan:
    """What a spool file holds: its good records in file order, the quarantined ones, where the
    last whole record ends (the file is cut back there before anything is appended), how many
    bytes were damaged, and how many were read in all."""

    records: list[tuple[SpoolRecord, int]]  # (record, its framed size)
    good_end: int
    damaged_bytes: int
    quarantined: list[Quarantined] = field(default_factory=list)
    scanned_bytes: int = 0


class _Chunks:
    """A file read forward in bounded chunks: the unread part of the last one or two in memory."""

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self.data = b""
        self.position = 0  # in data
        self._data_offset = 0  # the file offset of data[0]
        self.ended = False

    @property
    def available(self) -> int:
        return len(self.data) - self.position

    @property
    def offset(self) -> int:
        return self._data_offset + self.position

    def ensure(self, size: int) -> bool:
        """Whether `size` unread bytes are in memory, reading on until they are or the file ends."""
        while self.available < size and not self.ended:
            chunk = self._file.read(max(READ_BYTES, size - self.available))
            if not chunk:
                self.ended = True
                break
            self._data_offset += self.position
            self.data, self.position = self.data[self.position :] + chunk, 0
        return self.available >= size

    def skip_to_magic(self) -> int:
        """Skip to the next MAGIC after the current byte (or the end); the bytes skipped."""
        skipped = 0
        while True:
            found = self.data.find(MAGIC, self.position + 1)
            if found >= 0:
                skipped += found - self.position
                self.position = found
                return skipped
            # Keep the last bytes: a magic may straddle the next chunk.
            keep_from = max(self.position + 1, len(self.data) - (len(MAGIC) - 1))
            skipped += keep_from - self.position
            self.position = keep_from
            if not self.ensure(self.available + 1):
                skipped += self.available
                self.position = len(self.data)
                return skipped


def scan_file(file: BinaryIO) -> Scan:
    """Scan a spool file from its start, streaming: memory stays bounded whatever its size (a
    huge or sparse file costs time, not memory)."""
    records: list[tuple[SpoolRecord, int]] = []
    quarantined: list[Quarantined] = []
    good_end = damaged = 0
    chunks = _Chunks(file)
    while chunks.ensure(1):
        if chunks.ensure(HEADER.size):
            magic, length, checksum = HEADER.unpack_from(chunks.data, chunks.position)
            size = HEADER.size + length
            if magic == MAGIC and length <= MAX_BODY_BYTES and chunks.ensure(size):
                start = chunks.position + HEADER.size
                body = chunks.data[start : start + length]
                if zlib.crc32(body) == checksum:
                    decoded = _decode_body(body)
                    if isinstance(decoded, Quarantined):
                        quarantined.append(decoded)
                    else:
                        records.append((decoded, size))
                    chunks.position += size
                    good_end = chunks.offset
                    continue
        # Damage: resynchronise at the next magic (a torn tail has none, and ends the scan).
        damaged += chunks.skip_to_magic()
    return Scan(records, good_end, damaged, quarantined, chunks.offset)


def scan(data: bytes) -> Scan:
    """scan_file over bytes in memory."""
    return scan_file(io.BytesIO(data))


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
