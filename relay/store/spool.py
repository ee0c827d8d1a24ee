"""The api's local spool on disk: one append-only file, fsync'd before a push is answered from it.

The format and every decision (what remains after a crash, whether a record fits) are in
relay.spool_log; this module only reads, appends, rewrites and locks files."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import os
import time
from collections.abc import Awaitable
from pathlib import Path

import orjson
import structlog

from relay.config.schema import ConfigError
from relay.store.refusals import QueueRefusal
from relay.store.spool_log import (
    Admission,
    Quarantined,
    Replayed,
    Scan,
    SpooledNotification,
    SpoolLedger,
    encode,
    scan_file,
)
from relay.telemetry import metrics
from relay.telemetry.logs import RepeatedCondition

log = structlog.get_logger("relay.spool")
SPOOL_WRITE_FAILED = RepeatedCondition("spool_write_failed", log)

LOG_FILE = "spool.log"
LOCK_FILE = "spool.lock"
# Records the scan set aside (invariant 14): one JSON line each, appended, never read back.
QUARANTINE_FILE = "spool.quarantine"
SPOOL_FULL_RETRY_AFTER_S = 1


class SpoolFull(QueueRefusal):
    reason = "spool_full"

    def __init__(self, max_notifications: int, max_bytes: int) -> None:
        super().__init__(
            "the queue (Redis) cannot be reached and this api's spool is full"
            f" ({max_notifications} notifications or {max_bytes} bytes,"
            " ingest.spool_max_notifications / ingest.spool_max_bytes); nothing was stored",
            SPOOL_FULL_RETRY_AFTER_S,
        )


class SpoolUnavailable(QueueRefusal):
    reason = "spool_unavailable"

    def __init__(self, error: str) -> None:
        super().__init__(
            f"the queue (Redis) cannot be reached and this api's spool cannot be written ({error});"
            " nothing was stored",
            SPOOL_FULL_RETRY_AFTER_S,
        )


def _lock(directory: Path) -> int:
    """An exclusive lock on the directory, held while the process lives (the kernel drops it
    when the process dies, kill -9 included): two processes never share one spool."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ConfigError(
            [
                f"ingest.spool_dir: {directory} is in use by another process (pid {holder});"
                " give each api process a spool directory of its own"
            ]
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Notifications answered while Redis could not be reached, until the replay stores them."""

    def __init__(self, directory: Path, ledger: SpoolLedger, lock_fd: int) -> None:
        self.directory = directory
        self.ledger = ledger
        self._lock_fd = lock_fd
        self._path = directory / LOG_FILE
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._buffer: list[bytes] = []
        self._waiters: list[asyncio.Future[None]] = []
        self._compact = False
        self._durable = False  # whether the buffered records include one to fsync
        self._writer: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()  # set when a notification is added (wakes the replay)
        self._publish()

    @classmethod
    def open(cls, directory: Path, max_bytes: int, max_notifications: int) -> Spool:
        """Lock the directory and recover what a previous process left, reading the file as a
        stream: records after the last good one (a torn write) are cut off; notifications not
        marked replayed remain; records that break ingest's rules are quarantined (moved to
        spool.quarantine, counted, logged once each) and the file is rewritten without them."""
        directory.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(directory)
        path = directory / LOG_FILE
        found = Scan([], 0, 0)
        if path.exists():
            with path.open("rb", buffering=0) as file:  # whole chunks: no second copy
                found = scan_file(file)
        if found.good_end < found.scanned_bytes:
            with path.open("r+b") as file:
                file.truncate(found.good_end)
                os.fsync(file.fileno())
        ledger = SpoolLedger.recovered(found, max_bytes, max_notifications)
        if found.quarantined:
            _quarantine(directory, found.quarantined)
            live = b"".join(encode(s) for s in ledger.pending.values())
            _replace_file(path, live)
            ledger.file_bytes = len(live)
        if found.scanned_bytes:
            log.warning(
                "spool_recovered",
                directory=str(directory),
                notifications=len(ledger.pending),
                damaged_bytes=found.damaged_bytes,
                torn_tail_bytes=found.scanned_bytes - found.good_end,
                quarantined=len(found.quarantined),
            )
        return cls(directory, ledger, lock_fd)

    # ---- adding and marking ----

    def append(self, spooled: SpooledNotification) -> Awaitable[None]:
        """Take `spooled` into the spool now (its place in the file, behind everything taken
        before) and return what completes once it is fsync'd. Raises SpoolFull, having taken
        nothing. The wait may raise OSError (the disk failed): the record is then withdrawn,
        as it was never acknowledged."""
        record = encode(spooled)
        admission = self.ledger.admit(len(record))
        if admission is Admission.FULL:
            metrics.SPOOL_REFUSED.labels(reason="spool_full").inc()
            raise SpoolFull(self.ledger.max_notifications, self.ledger.max_bytes)
        self.ledger.apply(spooled, len(record))
        self._compact |= admission is Admission.COMPACT_FIRST
        written = self._write(record, durable=True)
        self._publish()
        self.changed.set()
        return self._written(spooled.id, written)

    async def _written(self, notification_id: str, written: asyncio.Future[None]) -> None:
        try:
            await written
        except OSError:
            self.ledger.apply(Replayed(notification_id), 0)
            self._publish()
            raise

    async def add(self, spooled: SpooledNotification) -> None:
        """append, and wait until it is on disk."""
        await self.append(spooled)

    def mark_replayed(self, notification_id: str) -> None:
        """Record that a notification reached Redis. Not waited for, nor fsync'd on its own:
        a mark lost in a crash only makes the next start send it again, which enqueue ignores."""
        record = encode(Replayed(notification_id))
        self.ledger.apply(Replayed(notification_id), len(record))
        # An empty spool starts again from an empty file; otherwise the mark is appended.
        self._compact |= not self.ledger.pending
        self._write(record, durable=False).add_done_callback(_log_failed_write)
        self._publish()

    def full(self) -> bool:
        """Whether a further notification would be refused (readiness)."""
        return len(self.ledger.pending) >= self.ledger.max_notifications

    def oldest_age_s(self) -> float:
        oldest = self.ledger.oldest()
        return 0.0 if oldest is None else max(0.0, time.time() - oldest.spooled_at_ms / 1000)

    def _publish(self) -> None:
        metrics.SPOOL_NOTIFICATIONS.set(len(self.ledger.pending))
        metrics.SPOOL_BYTES.set(self.ledger.file_bytes)

    # ---- the one writer ----

    def _write(self, record: bytes, *, durable: bool) -> asyncio.Future[None]:
        """Hand a record to the writer; concurrent adds share one write and one fsync. The
        future is done once the record is written (and fsync'd if `durable`)."""
        self._buffer.append(record)
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._durable |= durable
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        return waiter

    async def _drain(self) -> None:
        while self._buffer or self._compact:
            waiters, self._waiters = self._waiters, []
            try:
                if self._compact:
                    # The ledger is the whole truth: the buffered records are in it already.
                    self._compact, self._buffer, self._durable = False, [], False
                    live = b"".join(encode(s) for s in self.ledger.pending.values())
                    await asyncio.to_thread(self._rewrite, live)
                    self.ledger.file_bytes = len(live) + sum(map(len, self._buffer))
                    self._publish()
                else:
                    data, self._buffer = b"".join(self._buffer), []
                    durable, self._durable = self._durable, False
                    await asyncio.to_thread(self._append, data, durable)
            except OSError as error:
                SPOOL_WRITE_FAILED.occurred(str(self.directory), error)  # a full disk: per write
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(error)
                continue
            SPOOL_WRITE_FAILED.cleared()
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _append(self, data: bytes, durable: bool) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        if durable:
            os.fsync(self._fd)

    def _rewrite(self, live: bytes) -> None:
        """Replace the file by `live` atomically: a crash leaves the old file or the new one."""
        _replace_file(self._path, live)
        old, self._fd = self._fd, os.open(self._path, os.O_WRONLY | os.O_APPEND)
        os.close(old)

    async def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError):
                await self._writer
        os.close(self._fd)
        os.close(self._lock_fd)  # releases the lock


def _replace_file(path: Path, live: bytes) -> None:
    """Replace the file at `path` by `live` atomically: a crash leaves the old file or the new."""
    temporary = path.with_suffix(".tmp")
    with temporary.open("wb") as file:
        file.write(live)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    _fsync_directory(path.parent)


def _quarantine(directory: Path, records: list[Quarantined]) -> None:
    """Keep the records aside for an operator, fsync'd before the spool file drops them; a crash
    in between only quarantines them again at the next start."""
    lines = b"".join(
        orjson.dumps(
            {
                "id": record.id,
                "problem": record.problem,
                "body": base64.b64encode(record.body).decode(),
                "quarantined_at_ms": int(time.time() * 1000),
            }
        )
        + b"\n"
        for record in records
    )
    with (directory / QUARANTINE_FILE).open("ab") as file:
        file.write(lines)
        file.flush()
        os.fsync(file.fileno())
    for record in records:
        metrics.MALFORMED_RECORDS.labels(source="spool").inc()
        log.error(
            "spool_record_quarantined",
            id=record.id,
            problem=record.problem,
            file=str(directory / QUARANTINE_FILE),
        )


def _log_failed_write(written: asyncio.Future[None]) -> None:
    if not written.cancelled() and (error := written.exception()) is not None:
        log.warning("spool_mark_not_written", error=str(error))
