"""The local spool: record format and decisions (pure), the file under crashes; the hold."""

from __future__ import annotations

import asyncio
import base64
import multiprocessing
import multiprocessing.synchronize
import tracemalloc
import zlib
from pathlib import Path

import orjson
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from relay.config.schema import ConfigError
from relay.core.model import Notification
from relay.ingest.hold import HOLD_MAX_DELAY_S, DeviceLanes, hold_delay_s
from relay.store.errors import vanished_as_unreachable, vanished_connection
from relay.store.spool import LOG_FILE, QUARANTINE_FILE, Spool, SpoolFull
from relay.store.spool_log import (
    HEADER,
    MAGIC,
    READ_BYTES,
    Admission,
    Replayed,
    SpooledNotification,
    SpoolLedger,
    encode,
    scan,
    scan_file,
)


def notification(device: int = 1, n: int = 0, key: str | None = None) -> Notification:
    return Notification(
        app="app",
        device_token=f"{device:064x}",
        payload=b'{"aps":{"alert":"n%d"}}' % n,
        push_type="alert",
        priority=10,
        expires_at=2_000_000_000,
        service_id=f"svc{n}",
        action="chat",
        idempotency_key=key,
        order_group="g" if n else None,
        order=n or None,
    )


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def spooled(device: int = 1, n: int = 0, key: str | None = None) -> SpooledNotification:
    return SpooledNotification(f"00-{device:04x}{n:04x}", notification(device, n, key), 1000 + n)


# ---- record format ----


def test_a_record_round_trips_every_field() -> None:
    record = spooled(3, 7, key="k")
    found = scan(encode(record) + encode(Replayed(record.id)))
    assert [r for r, _ in found.records] == [record, Replayed(record.id)]
    assert found.damaged_bytes == 0


@pytest.mark.parametrize("cut", [1, HEADER.size - 1, HEADER.size, HEADER.size + 5, -1])
def test_a_torn_last_record_is_skipped_and_cut_off(cut: int) -> None:
    first, second = encode(spooled(1, 1)), encode(spooled(1, 2))
    data = first + second[:cut]
    found = scan(data)
    assert [r.id for r, _ in found.records] == [spooled(1, 1).id]
    assert found.good_end == len(first)


@pytest.mark.parametrize("where", ["magic", "length", "checksum", "body"])
def test_a_damaged_record_in_the_middle_is_skipped_and_the_next_one_found(where: str) -> None:
    records = [spooled(1, n) for n in range(3)]
    framed = [bytearray(encode(r)) for r in records]
    offset = {"magic": 0, "length": 5, "checksum": 9, "body": HEADER.size + 3}[where]
    framed[1][offset] ^= 0xFF
    found = scan(b"".join(framed))
    assert [r.id for r, _ in found.records] == [records[0].id, records[2].id]
    assert found.damaged_bytes == len(framed[1])
    assert found.good_end == sum(map(len, framed))


def frame(document: object) -> bytes:
    """A record with a valid frame and checksum around any JSON body."""
    body = orjson.dumps(document)
    return HEADER.pack(MAGIC, len(body), zlib.crc32(body)) + body


def spooled_document(**changed: object) -> dict[str, object]:
    """spooled()'s record as the spool writes it, with some of its notification's fields
    changed (a value of REMOVED leaves the field out)."""
    document = orjson.loads(encode(spooled())[HEADER.size :])
    for name, value in changed.items():
        if value is REMOVED:
            del document["n"][name]
        else:
            document["n"][name] = value
    assert isinstance(document, dict)
    return document


REMOVED = object()

# Every field of a spooled notification wrong in type (and a few wrong in value), each with the
# field its problem must name.
WRONG_FIELDS = [
    ("app", 5),
    ("app", None),
    ("device_token", 12),
    ("device_token", "AB" * 32),
    ("device_token", REMOVED),
    ("payload", 5),
    ("payload", "not base64!"),
    ("push_type", None),
    ("push_type", REMOVED),
    ("push_type", "text"),
    ("priority", "ten"),
    ("priority", 7),
    ("priority", True),
    ("expires_at", None),
    ("expires_at", "soon"),
    ("expires_at", 1.5),
    ("collapse_id", 7),
    ("collapse_id", " padded"),
    ("service_id", []),
    ("service_id", ""),
    ("action", {}),
    ("action", "../up"),
    ("idempotency_key", 3),
    ("order_group", 1),
    ("order", "1"),
    ("request_digest", 2),
    ("unknown_field", 1),
]


@pytest.mark.parametrize(("name", "value"), WRONG_FIELDS)
def test_a_checksummed_record_with_a_field_wrong_is_quarantined_not_replayed(
    name: str, value: object
) -> None:
    bad = frame(spooled_document(**{name: value}))
    before, after = spooled(1, 1), spooled(2, 2)
    found = scan(encode(before) + bad + encode(after))
    assert [r for r, _ in found.records] == [before, after]
    assert found.damaged_bytes == 0
    (quarantined,) = found.quarantined
    assert quarantined.id == spooled().id
    assert quarantined.body == bad[HEADER.size :]
    assert name in quarantined.problem, quarantined


@pytest.mark.parametrize(
    "document",
    [
        {"k": "n", "id": "x"},  # an id the queue never makes, no notification
        {"k": "n", "id": "00-ab", "at": "then", "n": {}},
        {"k": "n", "id": "00-ab", "at": 1},
        {"k": "d", "id": 7},
        {"k": "z", "id": "00-ab"},
        [1, 2],
        "text",
    ],
)
def test_a_checksummed_body_that_is_not_a_record_is_quarantined(document: object) -> None:
    good = encode(spooled())
    found = scan(frame(document) + good)
    assert [r.id for r, _ in found.records] == [spooled().id]
    assert found.damaged_bytes == 0
    assert len(found.quarantined) == 1


def test_garbage_only_yields_nothing() -> None:
    assert scan(b"\x00" * 100).records == []
    assert scan(b"\x00" * 100).damaged_bytes == 100
    assert scan(b"").good_end == 0


# ---- what remains, what is admitted ----


def test_recovery_keeps_what_was_not_replayed_oldest_first() -> None:
    a, b, c = spooled(1, 1), spooled(2, 1), spooled(1, 2)
    data = b"".join(encode(r) for r in (a, b, Replayed(a.id), c, c))  # c twice: a retried write
    ledger = SpoolLedger.recovered(scan(data), max_bytes=1 << 20, max_notifications=10)
    assert list(ledger.pending) == [b.id, c.id]
    assert ledger.holds((a.notification.app, a.notification.device_token))
    assert ledger.file_bytes == len(data)
    ledger.apply(Replayed(c.id), 10)
    assert not ledger.holds((c.notification.app, c.notification.device_token))
    assert ledger.oldest() == b


@pytest.mark.parametrize(
    ("pending", "file_bytes", "size", "expected"),
    [
        (0, 0, 100, Admission.ADMIT),
        (2, 800, 200, Admission.ADMIT),  # exactly the byte limit
        (3, 900, 200, Admission.COMPACT_FIRST),  # replayed records take room
        (4, 1000, 100, Admission.FULL),  # the count limit
    ],
)
def test_admission(pending: int, file_bytes: int, size: int, expected: Admission) -> None:
    ledger = SpoolLedger(max_bytes=1000, max_notifications=4)
    for n in range(pending):
        ledger.apply(spooled(n, 1), 100)
    ledger.file_bytes = file_bytes
    assert ledger.admit(size) is expected


def test_admission_refuses_when_live_records_alone_fill_the_bytes() -> None:
    ledger = SpoolLedger(max_bytes=1000, max_notifications=100)
    for n in range(9):
        ledger.apply(spooled(n, 1), 100)
    assert ledger.admit(200) is Admission.FULL


def test_an_idempotency_key_matches_only_on_the_same_device() -> None:
    ledger = SpoolLedger(max_bytes=1 << 20, max_notifications=10)
    ledger.apply(spooled(1, 1, key="k"), 100)
    assert ledger.idempotent_match(notification(1, 5, key="k")) == spooled(1, 1).id
    assert ledger.idempotent_match(notification(2, 5, key="k")) is None
    assert ledger.idempotent_match(notification(1, 5, key="other")) is None
    assert ledger.idempotent_match(notification(1, 5)) is None


def test_replay_takes_each_devices_head_oldest_first_skipping_blocked_devices() -> None:
    ledger = SpoolLedger(max_bytes=1 << 20, max_notifications=10)
    for record in (spooled(1, 1), spooled(2, 1), spooled(1, 2), spooled(3, 1)):
        ledger.apply(record, 100)
    device_1 = (notification(1).app, notification(1).device_token)
    assert ledger.heads_to_replay({}, 0.0, 10) == [spooled(1, 1), spooled(2, 1), spooled(3, 1)]
    assert ledger.heads_to_replay({}, 0.0, 2) == [spooled(1, 1), spooled(2, 1)]
    assert ledger.heads_to_replay({device_1: 5.0}, 1.0, 10) == [spooled(2, 1), spooled(3, 1)]
    ledger.apply(Replayed(spooled(1, 1).id), 10)
    assert ledger.heads_to_replay({}, 0.0, 10) == [spooled(2, 1), spooled(1, 2), spooled(3, 1)]
    assert ledger.heads_to_replay({device_1: 5.0}, 5.0, 1) == [spooled(2, 1)]


# ---- the hold ----


@pytest.mark.parametrize(
    ("attempt", "remaining_s", "jitter", "expected"),
    [
        (0, 1.5, 0.0, 0.01),  # half the first ceiling
        (0, 1.5, 1.0, 0.02),
        (3, 1.5, 0.5, 0.12),  # 0.16 * 0.75
        (20, 1.5, 1.0, HOLD_MAX_DELAY_S),  # capped
        (0, 0.015, 0.9, None),  # the wait would use up the hold
        (0, 0.0, 0.0, None),
    ],
)
def test_hold_delay(
    attempt: int, remaining_s: float, jitter: float, expected: float | None
) -> None:
    assert hold_delay_s(attempt, remaining_s, jitter) == pytest.approx(expected)


async def test_device_lanes_admit_in_arrival_order_and_forget_idle_devices() -> None:
    lanes = DeviceLanes()
    order: list[int] = []

    async def one(n: int) -> None:
        async with lanes.lane(("app", "t")):
            # The behaviour under test: the first holds its lane longest, order stays arrival's.
            await asyncio.sleep(0.001 * (5 - n))  # behaviour: lanes held for different times
            order.append(n)

    await asyncio.gather(*(one(n) for n in range(5)))
    assert order == list(range(5))
    assert not lanes._lanes


# ---- the file ----


async def test_spool_survives_reopen_and_cuts_a_torn_tail(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, 1 << 20, 100)
    for n in range(3):
        await spool.add(spooled(1, n))
    spool.mark_replayed(spooled(1, 0).id)
    await spool.close()
    with (tmp_path / LOG_FILE).open("ab") as file:
        file.write(encode(spooled(1, 9))[:-3])  # a crash mid-write
    reopened = Spool.open(tmp_path, 1 << 20, 100)
    assert list(reopened.ledger.pending) == [spooled(1, 1).id, spooled(1, 2).id]
    await reopened.add(spooled(1, 3))
    await reopened.close()
    again = Spool.open(tmp_path, 1 << 20, 100)
    assert list(again.ledger.pending) == [spooled(1, n).id for n in (1, 2, 3)]
    assert scan((tmp_path / LOG_FILE).read_bytes()).damaged_bytes == 0
    await again.close()


async def test_a_poisoned_record_is_quarantined_once_at_open_and_the_rest_kept(
    tmp_path: Path,
) -> None:
    good = [spooled(1, 1), spooled(2, 1)]
    poisoned = frame(spooled_document(expires_at=None))
    (tmp_path / LOG_FILE).write_bytes(encode(good[0]) + poisoned + encode(good[1]))
    counted = metric("apns_relay_malformed_records_total", source="spool")
    spool = Spool.open(tmp_path, 1 << 20, 100)
    assert list(spool.ledger.pending) == [r.id for r in good]
    await spool.close()
    (line,) = (tmp_path / QUARANTINE_FILE).read_bytes().splitlines()
    kept = orjson.loads(line)
    assert (kept["id"], base64.b64decode(kept["body"])) == (spooled().id, poisoned[HEADER.size :])
    assert "expires_at" in kept["problem"]
    assert metric("apns_relay_malformed_records_total", source="spool") == counted + 1
    # The spool file no longer holds it: the next start neither quarantines nor counts it again.
    assert scan((tmp_path / LOG_FILE).read_bytes()).quarantined == []
    again = Spool.open(tmp_path, 1 << 20, 100)
    assert list(again.ledger.pending) == [r.id for r in good]
    assert again.ledger.file_bytes == (tmp_path / LOG_FILE).stat().st_size
    await again.close()
    assert len((tmp_path / QUARANTINE_FILE).read_bytes().splitlines()) == 1
    assert metric("apns_relay_malformed_records_total", source="spool") == counted + 1


def test_a_huge_sparse_spool_file_is_scanned_in_bounded_memory(tmp_path: Path) -> None:
    """Issue 27: a 2 GiB sparse file took 2.1 GB to open. The scan streams it in chunks."""
    path = tmp_path / LOG_FILE
    record = spooled()
    with path.open("wb") as file:
        file.write(encode(spooled(9, 9)))
        file.seek(256 << 20)  # a 256 MiB hole: zeros, no magic
        file.write(encode(record))
    tracemalloc.start()
    try:
        with path.open("rb") as file:
            found = scan_file(file)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [r for r, _ in found.records] == [spooled(9, 9), record]
    assert found.damaged_bytes == (256 << 20) - len(encode(spooled(9, 9)))
    assert peak < 8 * READ_BYTES, f"peak {peak} bytes"


def test_a_magic_across_two_chunks_is_found(tmp_path: Path) -> None:
    path = tmp_path / LOG_FILE
    record = spooled()
    with path.open("wb") as file:
        file.write(b"\x00" * (READ_BYTES - 2))  # the magic starts 2 bytes before a chunk's end
        file.write(encode(record))
    with path.open("rb") as file:
        found = scan_file(file)
    assert [r for r, _ in found.records] == [record]
    assert found.damaged_bytes == READ_BYTES - 2


async def test_an_emptied_spool_starts_again_from_an_empty_file(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, 1 << 20, 100)
    await spool.add(spooled(1, 1))
    spool.mark_replayed(spooled(1, 1).id)
    await spool.add(spooled(1, 2))  # waits for the writer, which compacted first
    spool.mark_replayed(spooled(1, 2).id)
    await spool.close()
    assert (tmp_path / LOG_FILE).read_bytes() == b""


async def test_a_full_spool_refuses_and_writes_nothing(tmp_path: Path) -> None:
    spool = Spool.open(tmp_path, 1 << 20, 2)
    await spool.add(spooled(1, 1))
    await spool.add(spooled(2, 1))
    before = (tmp_path / LOG_FILE).read_bytes()
    with pytest.raises(SpoolFull) as refused:
        await spool.add(spooled(3, 1))
    assert (refused.value.reason, refused.value.retry_after_s) == ("spool_full", 1)
    assert (tmp_path / LOG_FILE).read_bytes() == before
    assert len(spool.ledger.pending) == 2
    await spool.close()


async def test_bytes_taken_by_replayed_records_are_reclaimed(tmp_path: Path) -> None:
    size = len(encode(spooled(1, 1)))
    spool = Spool.open(tmp_path, size * 3, 100)
    for n in (1, 2, 3):
        await spool.add(spooled(1, n))
    for n in (1, 2):
        spool.mark_replayed(spooled(1, n).id)
    await spool.add(spooled(2, 1))  # fits only once the two replayed ones are dropped
    await spool.close()
    kept = [r.id for r, _ in scan((tmp_path / LOG_FILE).read_bytes()).records]
    assert kept == [spooled(1, 3).id, spooled(2, 1).id]


def _hold_lock(
    directory: Path,
    ready: multiprocessing.synchronize.Event,
    done: multiprocessing.synchronize.Event,
) -> None:
    async def hold() -> None:
        spool = Spool.open(directory, 1 << 20, 10)
        ready.set()
        done.wait(30)
        await spool.close()

    asyncio.run(hold())


def test_a_second_process_cannot_open_the_same_spool(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    ready, done = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(tmp_path, ready, done))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(ConfigError, match=f"in use by another process \\(pid {holder.pid}\\)"):
            Spool.open(tmp_path, 1 << 20, 10)
    finally:
        done.set()
        holder.join(30)
    asyncio.run(Spool.open(tmp_path, 1 << 20, 10).close())  # free again once the holder is gone


def test_only_uvloops_closed_transport_error_counts_as_redis_unreachable() -> None:
    uvloop_says = RuntimeError(
        "unable to perform operation on <TCPTransport closed=True reading=False 0x5>;"
        " the handler is closed"
    )
    assert vanished_connection(uvloop_says)
    assert not vanished_connection(RuntimeError("Event loop is closed"))


async def test_a_connection_disconnected_mid_command_counts_as_redis_unreachable(
    redis_url: str,
) -> None:
    # What redis-py's cluster client does at a failover (it disconnects every connection of the
    # node it drops, in use or not) while another command awaits its health check: the write
    # then meets a connection without a writer and fails with AttributeError, not ConnectionError.
    # (A push met it in CI during a primary's kill -9 and was refused.)
    client = Redis.from_url(redis_url, health_check_interval=1)
    # redis-py leaves make_connection (and the connection's connect) unannotated.
    connection = client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
    await connection.connect()

    async def disconnected_meanwhile() -> None:
        await connection.disconnect()

    connection.check_health = disconnected_meanwhile
    with pytest.raises(AttributeError) as raised:
        await connection.send_command("PING")
    assert vanished_connection(raised.value)
    with pytest.raises(RedisConnectionError), vanished_as_unreachable():
        await connection.send_command("PING")
    # The same error raised by code of ours is a defect, not an outage: it stays what it is.
    with pytest.raises(AttributeError), vanished_as_unreachable():
        None.writelines  # type: ignore[attr-defined]  # noqa: B018
    await client.aclose()
