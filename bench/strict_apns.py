"""The relay's APNs adapter against the strict simulator: ramp-up, waiting for a stream, rejections.

    .venv/bin/python -m bench.strict_apns

Three measurements, each compared within the same run (the machine is shared and noisy):
1. ramp-up: from a client's start, how long until fresh connections (one stream each until their
   first 200) send at the rate they reach; the same client against `--stream-limit fixed`;
2. waiting for a stream: log lines (any level) as 500 sends start waiting on a connection whose
   only stream is stalled, then the CPU share while they wait; the relay's adapter and aioapns
   4.0's own pool;
3. rejections: good-token delivery rate and p99 latency with 5 % never-issued tokens (each
   answered 400 BadDeviceToken, dropping its connection to one stream) against none, in short
   alternated rounds; the last line gives the medians and their ratio.
Prints one JSON line per measurement. Each simulator is a child process, the client this one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import structlog
from aioapns import NotificationRequest
from simulator import SimInfo, aioapns_client, control_client, simulator_process

from relay.core.endpoint import Endpoint
from relay.core.model import Notification
from relay.credentials.model import TokenCredentials
from relay.delivery.apns import ApnsClient

TOPIC = "com.example.app"
PAYLOAD = b'{"aps":{"alert":"Agent available"}}'
LATENCY_MS = "20"  # a round trip to Apple, roughly: what makes streams worth having
MAX_CONNECTIONS = 4
BUCKET_S = 0.05


@contextlib.contextmanager
def simulator(*arguments: str) -> Iterator[SimInfo]:
    with (
        tempfile.TemporaryDirectory() as state_dir,
        simulator_process(
            Path(state_dir), "--no-log", "--latency-ms", LATENCY_MS, *arguments
        ) as sim,
    ):
        yield sim.info


def relay_client(info: SimInfo, max_in_flight: int, timeout_s: float = 10.0) -> ApnsClient:
    return ApnsClient(
        f"bench-{uuid.uuid4().hex[:6]}",
        TOPIC,
        Endpoint(info.host, info.port, str(info.ca)),
        TokenCredentials(info.key_pem, info.key_id, info.team_id),
        request_timeout_s=timeout_s,
        max_connections=MAX_CONNECTIONS,
        max_in_flight=max_in_flight,
    )


def notification(token: str) -> Notification:
    return Notification(
        app="bench",
        device_token=token,
        payload=PAYLOAD,
        push_type="alert",
        priority=10,
        expires_at=int(time.time()) + 3600,
    )


async def closed_loop(
    client: ApnsClient, tokens: list[str], sends: int, concurrency: int
) -> list[tuple[str, int, float, float]]:
    """(token, status, finished at, latency) per send, times from the start."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    results: list[tuple[str, int, float, float]] = []
    numbers = iter(range(sends))

    async def sender() -> None:
        for number in numbers:  # shared: each send takes the next token in turn
            token = tokens[number % len(tokens)]
            sent = loop.time()
            response = await client.send(notification(token), str(uuid.uuid4()))
            results.append((token, response.status, loop.time() - start, loop.time() - sent))

    await asyncio.gather(*(sender() for _ in range(concurrency)))
    return results


def ramp_figures(results: list[tuple[str, int, float, float]]) -> dict[str, Any]:
    finished = sorted(at for _, status, at, _ in results if status == 200)
    buckets: dict[int, int] = {}
    for at in finished:
        buckets[int(at / BUCKET_S)] = buckets.get(int(at / BUCKET_S), 0) + 1
    last = max(buckets)
    rates = [buckets.get(b, 0) / BUCKET_S for b in range(last)]  # the last bucket is partial
    steady = sorted(rates[len(rates) // 2 :])[len(rates[len(rates) // 2 :]) // 2]
    reached = next(b for b, rate in enumerate(rates) if rate >= 0.9 * steady)
    return {
        "sends_ok": len(finished),
        "steady_per_s": round(steady),
        "first_200_ms": round(finished[0] * 1000, 1),
        "full_rate_after_ms": round((reached + 1) * BUCKET_S * 1000),
        "total_s": round(finished[-1], 2),
    }


async def ramp_up(info: SimInfo) -> dict[str, Any]:
    client = relay_client(info, max_in_flight=1000)
    results = await closed_loop(client, [f"{n:064x}" for n in range(1, 200)], 20_000, 1000)
    await client.close()
    return ramp_figures(results)


class LogCount(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


async def waiting_for_a_stream(info: SimInfo, which: str, seconds: float = 3.0) -> dict[str, Any]:
    """One connection whose only stream never gets an answer; 500 more sends wait for it."""
    stalled, waiting = "ee" * 32, "ab" * 32
    async with control_client(info) as control:
        await control.put_faults({"stall": {"tokens": [stalled]}})
    counter = LogCount()
    first: asyncio.Future[object]
    tasks: list[asyncio.Future[Any]]
    if which == "relay":
        client = relay_client(info, max_in_flight=1000, timeout_s=60)
        client.pool.max_connections = 1
        first = asyncio.ensure_future(client.send(notification(stalled), str(uuid.uuid4())))
        await asyncio.sleep(0.5)
        logging.getLogger().addHandler(counter)
        tasks = [
            asyncio.ensure_future(client.send(notification(waiting), str(uuid.uuid4())))
            for _ in range(500)
        ]
    else:
        plain = aioapns_client(info, topic=TOPIC, max_connections=1)
        first = asyncio.ensure_future(plain.send_notification(NotificationRequest(stalled, {})))
        await asyncio.sleep(0.5)
        logging.getLogger().addHandler(counter)
        tasks = [
            asyncio.ensure_future(plain.send_notification(NotificationRequest(waiting, {})))
            for _ in range(500)
        ]
    await asyncio.sleep(0.5)
    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    cpu_s, wall_s = time.process_time() - cpu, time.monotonic() - wall
    logged = counter.count
    logging.getLogger().removeHandler(counter)
    for task in (first, *tasks):
        task.cancel()
    await asyncio.gather(first, *tasks, return_exceptions=True)
    if which == "relay":
        await client.close()
    else:
        plain.pool.close()
    return {
        "client": which,
        "waiting_sends": len(tasks),
        "cpu_share_while_waiting": round(cpu_s / wall_s, 3),
        "log_lines": logged,
    }


REJECTION_ROUNDS = 8  # pairs of short runs, alternated: a noisy neighbour hurts both alike
REJECTION_SENDS = 5000


async def with_rejections(info: SimInfo, bad_share: float, seed: int) -> dict[str, Any]:
    async with control_client(info) as control:
        good = await control.issue_tokens(100, TOPIC, "production")
    rng = random.Random(seed)
    bad_count = round(len(good) * bad_share / (1 - bad_share))
    tokens = good + [f"{rng.getrandbits(256):064x}" for _ in range(bad_count)]
    rng.shuffle(tokens)
    client = relay_client(info, max_in_flight=500)
    results = await closed_loop(client, tokens, REJECTION_SENDS, 500)
    await client.close()
    good_set = set(good)
    good_results = [r for r in results if r[0] in good_set]
    latencies = sorted(latency for _, _, _, latency in good_results)
    elapsed = max(at for _, _, at, _ in results)
    statuses: dict[int, int] = {}
    for _, status, _, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    return {
        "bad_share": bad_share,
        "statuses": statuses,
        "good_delivered_per_s": round(sum(r[1] == 200 for r in good_results) / elapsed),
        "good_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "good_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
    }


def rejection_summary(
    clean: list[dict[str, Any]], rejected: list[dict[str, Any]]
) -> dict[str, Any]:
    """Medians of each side, and the 5 % side relative to the clean one."""

    def median(runs: list[dict[str, Any]], key: str) -> float:
        return float(statistics.median(run[key] for run in runs))

    summary: dict[str, Any] = {"rounds": len(clean)}
    for key in ("good_delivered_per_s", "good_p99_ms"):
        summary[key] = {"none": median(clean, key), "5%": median(rejected, key)}
        summary[key]["ratio"] = round(summary[key]["5%"] / summary[key]["none"], 3)
    return summary


async def main() -> None:
    # The relay's structlog events through stdlib logging too, so one handler counts both.
    structlog.configure(logger_factory=structlog.stdlib.LoggerFactory())
    logging.getLogger().setLevel(logging.INFO)
    with simulator("--tokens", "open") as info:
        print(json.dumps({"ramp_up": "apple stream limit", **await ramp_up(info)}), flush=True)
    with simulator("--tokens", "open", "--stream-limit", "fixed") as info:
        print(json.dumps({"ramp_up": "fixed stream limit", **await ramp_up(info)}), flush=True)
    for which in ("relay", "aioapns"):
        with simulator("--tokens", "open") as info:
            print(json.dumps(await waiting_for_a_stream(info, which)), flush=True)
    with simulator() as info:
        runs: dict[float, list[dict[str, Any]]] = {0.0: [], 0.05: []}
        for round_number, share in enumerate((0.0, 0.05) * REJECTION_ROUNDS):
            run = await with_rejections(info, share, round_number)
            runs[share].append(run)
            print(json.dumps(run), flush=True)
        print(json.dumps(rejection_summary(runs[0.0], runs[0.05])), flush=True)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
