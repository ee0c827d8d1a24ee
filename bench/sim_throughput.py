"""How many notifications/s the APNs simulator accepts, with aioapns 4.0 as the load.

    .venv/bin/python bench/sim_throughput.py --sends 20000 --concurrency 200 --workers 1
    .venv/bin/python bench/sim_throughput.py --sends 20000 --concurrency 200 --workers 2 --clients 2

Starts `apns-relay apns-sim --no-log --tokens open --stream-limit fixed` as a child process (made-up
tokens; aioapns' own pool cannot follow Apple's moving stream limit, and this measures the
simulator, not the client), then runs `--clients` load processes,
each with one aioapns client (`--connections` connections) keeping `--concurrency` sends in
flight. Prints one JSON line: sends, seconds, notifications/s, and the simulator's own count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from aioapns import NotificationRequest
from simulator import SimInfo, aioapns_client, simulator_process

MESSAGE = {"aps": {"alert": "Agent available"}, "message": {"_id": "s1", "_action": "chat"}}


async def send_all(info: SimInfo, sends: int, concurrency: int, connections: int) -> int:
    client = aioapns_client(info, max_connections=connections)
    await client.send_notification(NotificationRequest("ab" * 32, MESSAGE))  # connect first
    remaining = sends
    succeeded = 0

    async def sender(index: int) -> None:
        nonlocal remaining, succeeded
        token = f"{index % 256:02x}" * 32
        while remaining > 0:
            remaining -= 1
            result = await client.send_notification(NotificationRequest(token, MESSAGE))
            succeeded += result.is_successful

    await asyncio.gather(*(sender(i) for i in range(concurrency)))
    client.pool.close()
    return succeeded


def load_process(
    info: SimInfo, sends: int, concurrency: int, connections: int, start: float
) -> tuple[int, float]:
    """(sends that got 200, when it finished); every load process starts at `start`."""
    import uvloop

    time.sleep(max(0.0, start - time.time()))
    succeeded = uvloop.run(send_all(info, sends, concurrency, connections))
    return succeeded, time.time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sends", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=200, help="in flight per load process")
    parser.add_argument("--connections", type=int, default=1, help="per load process")
    parser.add_argument("--clients", type=int, default=1, help="load processes")
    parser.add_argument("--workers", type=int, default=1, help="simulator server processes")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as state_dir,
        simulator_process(
            Path(state_dir),
            *("--no-log", "--tokens", "open", "--stream-limit", "fixed"),
            *("--workers", str(args.workers)),
        ) as sim,
    ):
        per_client = args.sends // args.clients
        start = time.time() + 1.0
        context = multiprocessing.get_context("spawn")
        with context.Pool(args.clients) as pool:
            results = pool.starmap(
                load_process,
                [(sim.info, per_client, args.concurrency, args.connections, start)] * args.clients,
            )
        with urllib.request.urlopen(f"{sim.info.control_url}/stats") as reply:
            stats = json.load(reply)
    succeeded = sum(ok for ok, _ in results)
    seconds = max(finished for _, finished in results) - start
    print(
        json.dumps(
            {
                "sends": per_client * args.clients,
                "succeeded": succeeded,
                "seconds": round(seconds, 2),
                "per_second": round(succeeded / seconds),
                "sim_accepted": stats["accepted"],
                "sim_workers": stats["workers"],
                "workers": args.workers,
                "clients": args.clients,
                "concurrency": args.concurrency,
                "connections": args.connections,
            }
        )
    )


if __name__ == "__main__":
    main()
