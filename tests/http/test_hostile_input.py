"""The hostile-input catalogue against one running relay and a real Valkey: every bad request gets
a 4xx problem (or aiohttp's plain parser 400), Redis is left exactly as it was, and the run's log
holds no secret and no traceback."""

from __future__ import annotations

import json
import socket
import time
import uuid
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis as syncredis
import redis.asyncio as aioredis
from hostile_catalogue import (
    API_TOKEN,
    BASIC_PASSWORD,
    BASIC_USER,
    IDEMPOTENCY_KEY,
    SCOPED_TOKEN,
    SECRETS,
    Case,
    api,
    catalogue,
    request,
)
from relay_harness import relay_document, relay_processes, running_relay, write_config
from simulator import running_simulator

from relay.core.model import Notification
from relay.store.records import QueueLimits
from relay.store.spool import LOG_FILE, QUARANTINE_FILE
from relay.store.spool_log import HEADER, MAGIC, SpooledNotification, encode
from relay_devkit.dev_mode import DEV_APP

# Whole processes, outages or crashes: seconds each (`make test-fast` leaves them out).
pytestmark = pytest.mark.slow


READ_TIMEOUT_S = 20.0


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_answers(data: bytes) -> list[Answer]:
    """The complete responses in `data` (1xx interim answers skipped)."""
    answers = []
    while b"\r\n\r\n" in data:
        head, _, rest = data.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        if len(rest) < length:
            break
        data = rest[length:]
        status = int(status_line.split(" ")[1])
        if status >= 200:
            answers.append(Answer(status, headers, rest[:length]))
    return answers


def exchange(port: int, case: Case) -> list[Answer]:
    """Send the case's bytes (slowly, if it is a slow client) and read its answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S) as sock:
        try:
            sent = case.raw[: len(case.raw) - case.withhold]
            if case.chunk_bytes:
                for start in range(0, len(sent), case.chunk_bytes):
                    sock.sendall(sent[start : start + case.chunk_bytes])
                    time.sleep(0.005)  # the behaviour under test: a slow client's pacing
            else:
                sock.sendall(sent)
        except OSError:
            pass  # the relay answered early and closed (413 before the whole body): read that
        received = b""
        while len(parse_answers(received)) < case.responses:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
    return parse_answers(received)


def redis_dump(client: syncredis.Redis) -> dict[bytes | str, Any]:
    return {key: client.dump(key) for key in sorted(client.keys("*"))}


def check(case: Case, answers: list[Answer]) -> list[str]:
    """What is wrong with the relay's answers to `case` (nothing, if it is right)."""
    if len(answers) != case.responses:
        return [f"{len(answers)} answers of {case.responses}"]
    faults = []
    for answer in answers:
        media = answer.headers.get("content-type", "")
        if not 400 <= answer.status < 500:
            faults.append(f"status {answer.status}: {answer.body[:200]!r}")
        elif case.status is not None and answer.status != case.status:
            faults.append(f"status {answer.status}, not {case.status}: {answer.body[:200]!r}")
        elif media.startswith("application/problem+json"):
            problem = json.loads(answer.body)
            if problem.get("status") != answer.status or not problem.get("detail"):
                faults.append(f"problem without status or detail: {problem}")
        elif not (case.plain_ok and answer.status == 400 and media.startswith("text/plain")):
            faults.append(f"{answer.status} as {media!r}: {answer.body[:200]!r}")
    return faults


async def test_every_catalogued_bad_request_is_refused_stores_nothing_and_leaks_nothing(
    redis_url: str, state_dir: Path
) -> None:
    cases = catalogue()
    assert len(cases) >= 300
    async with running_simulator(state_dir / "sim") as info:
        document = relay_document(redis_url, info, logging={"level": "debug"})
        other = {**document["apps"][0], "name": "other", "topic": "com.example.other"}
        document["apps"][0]["default"] = True
        other["default"] = False
        document["apps"].append(other)
        document["auth"] = {
            "api_tokens": [API_TOKEN],
            "basic": [f"{BASIC_USER}:{BASIC_PASSWORD}"],
            "scoped": [{"token": SCOPED_TOKEN, "apps": ["dev"]}],
        }
        config = write_config(state_dir / "relay.yaml", document)
        client = syncredis.Redis.from_url(redis_url)
        with relay_processes("api", config=config, log_dir=state_dir) as [relay]:
            port = int(relay.url.rsplit(":", 1)[1])
            # Something to leave untouched, and the idempotency key one case reuses.
            seed = api(idempotency_key=f'"{IDEMPOTENCY_KEY}"', alert='"the first"')
            headers = [(b"Authorization", f"Bearer {API_TOKEN}".encode())]
            [seeded] = exchange(
                port, Case("seed", request(b"POST", b"/v1/notifications", headers, seed))
            )
            assert seeded.status == 202, seeded
            before = redis_dump(client)
            assert before
            started = time.monotonic()
            faults: dict[str, list[str]] = {}
            unauthorized: Counter[bytes] = Counter()
            statuses: Counter[int] = Counter()

            def judge(case: Case, answers: list[Answer]) -> None:
                nonlocal before
                if problems := check(case, answers):
                    faults[case.name] = problems
                if (after := redis_dump(client)) != before:
                    changed = set(after.items()) ^ set(before.items())
                    faults.setdefault(case.name, []).append(f"Redis changed: {sorted(changed)[:3]}")
                    before = after
                for answer in answers:
                    statuses[answer.status] += 1
                    if answer.status == 401:
                        unauthorized[answer.body] += 1

            # Stalled clients wait out the relay's body timeout beside the rest, not before it.
            stalled = [case for case in cases if case.withhold]
            with ThreadPoolExecutor(len(stalled)) as pool:
                waiting = [(case, pool.submit(exchange, port, case)) for case in stalled]
                for case in cases:
                    if not case.withhold:
                        judge(case, exchange(port, case))
                for case, answers in waiting:
                    judge(case, answers.result())
            elapsed = time.monotonic() - started
        log = relay.log()
        client.close()
    assert not faults, "\n".join(f"{name}: {problems}" for name, problems in faults.items())
    # Every 401 is the same answer, whatever was wrong with the credential.
    assert len(unauthorized) == 1, unauthorized
    leaked = sorted(secret for secret in SECRETS if secret in log)
    assert not leaked, f"logged in full: {leaked}"
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert "Traceback" not in log
    assert not [line for line in lines if line["level"] in ("error", "critical")]
    assert not [line for line in lines if "exception" in line]
    print(f"{len(cases)} cases in {elapsed:.1f} s; statuses {dict(sorted(statuses.items()))}")


# ---- a damaged volume: the spool (issue 27) ----

POISONS: list[dict[str, object]] = [
    {"expires_at": None},
    {"expires_at": "soon"},
    {"priority": "ten"},
    {"push_type": None},
]


async def test_a_spool_with_one_poisoned_record_per_shard_delivers_every_valid_push(
    tmp_path: Path, redis_url: str
) -> None:
    """Issue 27: a spool record with a valid checksum and `expires_at` null stopped delivery on
    every shard; `priority: "ten"` crash-looped the worker. Now each costs only itself."""
    shards = QueueLimits().shards
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    now_ms = int(time.time() * 1000)
    valid: dict[str, str] = {}  # token -> its push's alert
    poisoned: dict[int, str] = {}  # shard -> the poisoned record's id
    records: list[bytes] = []
    n = 0
    while len(poisoned) < shards or len(valid) < 3 * shards:
        n += 1
        token = f"{n:064x}"
        shard = zlib.crc32(f"{DEV_APP}:{token}".encode()) % shards
        spooled = SpooledNotification(
            f"{shard:02d}-{uuid.uuid4().hex}",
            Notification(
                app=DEV_APP,
                device_token=token,
                payload=json.dumps({"aps": {"alert": f"push {n}"}}).encode(),
                push_type="alert",
                priority=10,
                expires_at=now_ms // 1000 + 600,
            ),
            now_ms,
        )
        framed = encode(spooled)
        if shard not in poisoned:
            document = json.loads(framed[HEADER.size :])
            document["n"].update(POISONS[shard % len(POISONS)])
            body = json.dumps(document).encode()
            framed = HEADER.pack(MAGIC, len(body), zlib.crc32(body)) + body
            poisoned[shard] = spooled.id
        else:
            valid[token] = f"push {n}"
        records.append(framed)
    (spool_dir / LOG_FILE).write_bytes(b"".join(records))
    async with running_relay(
        redis_url, tmp_path, sim_options={"open_tokens": True}, ingest={"spool_dir": str(spool_dir)}
    ) as relay:
        sent = await relay.received(count=len(valid))
        assert {r["token"]: r["payload"]["aps"]["alert"] for r in sent} == valid
        assert relay.worker.delivery_failing() is None
    quarantined = [
        json.loads(line) for line in (spool_dir / QUARANTINE_FILE).read_bytes().splitlines()
    ]
    assert sorted(q["id"] for q in quarantined) == sorted(poisoned.values())


async def test_a_status_read_of_a_malformed_record_is_a_409_never_a_500(
    tmp_path: Path, redis_url: str
) -> None:
    """Every corruption test_queue's claim copes with, read through GET /v1/notifications/{id}
    while the record is still queued (the worker paused by an open route would not matter: the
    read comes first): a status, or 409 record-malformed naming the id — never a 500."""
    from test_queue import CORRUPTIONS, corrupt

    async with running_relay(redis_url, tmp_path) as relay:
        relay.worker.stop()  # the records stay queued and malformed while they are read
        token = await relay.device_token()
        client = aioredis.Redis.from_url(redis_url)
        try:
            for name, fields in CORRUPTIONS.items():
                notification_id = await relay.notify(device_token=token, alert=name)
                await corrupt(client, notification_id, fields)
                status, body, _ = await relay.call("GET", f"/v1/notifications/{notification_id}")
                assert status in (200, 409), (name, status, body)
                if status == 409:
                    assert (body["field"], body["type"].rsplit(":", 1)[-1]) == (
                        "id",
                        "record-malformed",
                    ), name
        finally:
            await client.aclose()
