"""Load generators, each its own process: raw aioapns, and lean HTTP/1.1 clients of the relay.

`python -m bench.loadgen SPEC.json` reads what to do from SPEC.json and writes its result as JSON
to the spec's `result_file`. The harness measures this process's CPU from outside.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import ssl
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

ACTION = "wait-for-agent"
GMS_ID_LENGTH = 32
RESPONSE_HEAD_LIMIT = 64 * 1024

JsonObject = dict[str, Any]


# --- what is sent: many devices, a unique GMS service id per notification ---------------------


def device_tokens(count: int, seed: int) -> list[str]:
    """`count` distinct 64-hex-digit tokens; per-device order needs many devices to go fast."""
    return [f"{seed:08x}{index:056x}" for index in range(count)]


def gms_ids(prefix: str) -> Iterator[str]:
    """Unique 32-character upper-case alphanumeric ids (GMS `_id`), `prefix` first."""
    width = GMS_ID_LENGTH - len(prefix)
    return (f"{prefix}{index:0{width}X}" for index in itertools.count())


def relay_payload(service_id: str) -> JsonObject:
    """The payload the relay builds for a GMS wait-for-agent event (default app settings)."""
    return {
        "aps": {
            "alert": {
                "title": "You are in the queue",
                "body": "We will notify you when an agent is available.",
            },
            "sound": "default",
        },
        "message": {"_id": service_id, "_action": ACTION},
    }


def gms_body(token: str, service_id: str) -> bytes:
    return orjson.dumps({"deviceId": token, "message": {"_id": service_id, "_action": ACTION}})


def batch_body(items: list[tuple[str, str]]) -> bytes:
    return orjson.dumps(
        {
            "notifications": [
                {"device_token": token, "service_id": service_id, "action": ACTION}
                for token, service_id in items
            ]
        }
    )


def http_request(path: str, host: str, token: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def parse_response_head(head: bytes) -> tuple[int, int]:
    """(status, content length) of an HTTP/1.1 response head."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    return status, length


# --- raw aioapns: the ceiling --------------------------------------------------------------


async def aioapns_send(spec: JsonObject) -> JsonObject:
    from aioapns import APNs, NotificationRequest, PushType
    from aioapns.connection import APNsProductionClientProtocol

    target = spec["target"]

    class SimulatorProtocol(APNsProductionClientProtocol):
        APNS_SERVER = target["host"]
        APNS_PORT = target["port"]

    client = APNs(
        key=spec["key_pem"],
        key_id=target["key_id"],
        team_id=target["team_id"],
        topic=target["topic"],
        max_connections=spec["connections"],
        ssl_context=ssl.create_default_context(cafile=target["ca"]),
    )
    client.pool.protocol_class = SimulatorProtocol
    tokens = device_tokens(spec["devices"], spec["seed"])
    ids = gms_ids(spec["id_prefix"])
    total = spec["n"]
    next_index = itertools.count()
    statuses: Counter[str] = Counter()

    async def sender() -> None:
        for index in next_index:
            if index >= total:
                return
            request = NotificationRequest(
                device_token=tokens[index % len(tokens)],
                message=relay_payload(next(ids)),
                time_to_live=3600,
                priority=10,
                push_type=PushType.ALERT,
            )
            try:
                result = await client.send_notification(request)
                statuses[str(result.status)] += 1
            except Exception as error:  # a benchmark counts failures rather than stopping
                statuses[type(error).__name__] += 1

    # Timing includes opening the connections, as a sender starting cold would.
    started_at, started = time.time(), time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(spec["concurrency"])))
    elapsed = time.perf_counter() - started
    return {
        "started_at": started_at,
        "sent": total,
        "ok": statuses.get("200", 0),
        "statuses": dict(statuses),
        "elapsed_s": elapsed,
    }


# --- HTTP/1.1 to the relay -------------------------------------------------------------------


class HttpConnection:
    """One keep-alive HTTP/1.1 connection: a request, then its response, in turn."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        reader, writer = await asyncio.open_connection(host, port, limit=RESPONSE_HEAD_LIMIT)
        return cls(reader, writer)

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        self.writer.write(request)
        status, length = parse_response_head(await self.reader.readuntil(b"\r\n\r\n"))
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        self.writer.close()


async def open_connections(spec: JsonObject) -> list[HttpConnection]:
    return list(
        await asyncio.gather(
            *(HttpConnection.open(spec["host"], spec["port"]) for _ in range(spec["connections"]))
        )
    )


def request_bodies(spec: JsonObject) -> Iterator[tuple[list[str], bytes]]:
    """(service ids, request bytes) for each request of the spec's kind, `n` notifications."""
    tokens = device_tokens(spec["devices"], spec["seed"])
    ids = gms_ids(spec["id_prefix"])
    host = f"{spec['host']}:{spec['port']}"
    total = spec["n"]
    if spec["kind"] == "gms":
        for index in range(total):
            service_id = next(ids)
            body = gms_body(tokens[index % len(tokens)], service_id)
            yield [service_id], http_request("/gms/push", host, spec["api_token"], body)
        return
    size = spec["batch_size"]
    for start in range(0, total, size):
        items = [
            (tokens[i % len(tokens)], next(ids)) for i in range(start, min(start + size, total))
        ]
        path = "/v1/notifications:batch"
        yield [s for _, s in items], http_request(path, host, spec["api_token"], batch_body(items))


def accepted_count(kind: str, status: int, body: bytes, items: int) -> int:
    if status != 200:
        return 0
    if kind == "gms":
        return items
    accepted: int = orjson.loads(body)["accepted"]
    return accepted


async def http_closed_loop(spec: JsonObject) -> JsonObject:
    """As fast as the relay answers, on `connections` connections."""
    connections = await open_connections(spec)
    requests = request_bodies(spec)
    statuses: Counter[int] = Counter()
    accepted = 0

    async def client(connection: HttpConnection) -> None:
        nonlocal accepted
        for ids, request in requests:  # shared iterator: each request is taken once
            status, body = await connection.exchange(request)
            statuses[status] += 1
            accepted += accepted_count(spec["kind"], status, body, len(ids))

    started_at, started = time.time(), time.perf_counter()
    await asyncio.gather(*(client(c) for c in connections))
    elapsed = time.perf_counter() - started
    for connection in connections:
        connection.close()
    return {
        "started_at": started_at,
        "sent": spec["n"],
        "accepted": accepted,
        "statuses": {str(k): v for k, v in statuses.items()},
        "elapsed_s": elapsed,
    }


async def http_steady(spec: JsonObject) -> JsonObject:
    """Open loop: request i is due at i / rate; each record is (id, due_at, answered_at).

    Latency counts from the request's *scheduled* time, not from when it got a connection or
    left the socket: time a request spends queued behind a late generator or a busy connection
    is latency a GMS sender would see (no coordinated omission)."""
    connections: asyncio.Queue[HttpConnection] = asyncio.Queue()
    for connection in await open_connections(spec):
        connections.put_nowait(connection)
    rate = spec["rate"]
    records: list[tuple[str, float, float, int]] = []
    late = 0
    in_flight: set[asyncio.Task[None]] = set()

    async def send(ids: list[str], request: bytes, due_at: float) -> None:
        connection = await connections.get()
        status, _ = await connection.exchange(request)
        records.append((ids[0], due_at, time.time(), status))
        connections.put_nowait(connection)

    started_at, started = time.time(), time.perf_counter()
    for index, (ids, request) in enumerate(request_bodies(spec)):
        due = started + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)  # pacing the offered load, not waiting for a condition
        elif delay < -0.01:
            late += 1
        task = asyncio.create_task(send(ids, request, started_at + index / rate))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)
    elapsed = time.perf_counter() - started
    statuses = Counter(str(status) for *_, status in records)
    return {
        "started_at": started_at,
        "sent": spec["n"],
        "accepted": statuses.get("200", 0),
        "statuses": dict(statuses),
        "elapsed_s": elapsed,
        "late_sends": late,
        "records": [[i, due, answered] for i, due, answered, status in records if status == 200],
    }


MODES = {"aioapns": aioapns_send, "closed": http_closed_loop, "steady": http_steady}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.loadgen SPEC.json", file=sys.stderr)
        return 2
    spec = orjson.loads(Path(argv[0]).read_bytes())
    if "target" in spec:  # read before the event loop runs: no blocking file I/O inside it
        spec["key_pem"] = Path(spec["target"]["key_file"]).read_text()
    logging.basicConfig(level=logging.ERROR)  # aioapns logs every busy-pool retry at WARNING
    try:
        import uvloop  # the relay runs on uvloop; so does its ceiling
    except ImportError:
        result = asyncio.run(MODES[spec["mode"]](spec))
    else:
        result = uvloop.run(MODES[spec["mode"]](spec))
    Path(spec["result_file"]).write_bytes(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
