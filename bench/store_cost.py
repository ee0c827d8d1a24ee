"""What the store costs Valkey per notification: Redis commands and Valkey CPU, by operation.

    .venv/bin/python bench/store_cost.py                    # the working tree
    .venv/bin/python bench/store_cost.py --before b1a865c   # and a revision, round by round

A Valkey of its own, as the benchmark runs it (AOF everysec), and the relay's RelayQueue, no api,
worker or APNs: `batch` enqueues 5,000 notifications over
1,000 devices in calls of 500 (enqueue_many) and claims and settles them 500 at a time, as the
batch phase's worker does; `one at a time` enqueues one, claims its shard and settles it, as at
a steady few hundred a second. Each is measured by INFO commandstats (the commands the scripts
run, the FCALL or EVALSHA included) and Valkey's own CPU time (INFO cpu), per notification.

With `--before REV`, REV's tree (a temporary git worktree) is measured too, in a process of its
own, taking turns with the working tree round by round, so a machine whose speed moves during
the run moves both alike; the median of the rounds is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BATCH_N, DEVICES, CALL_SIZE = 5000, 1000, 500
ONE_BY_ONE_N = 1000
PAYLOAD = b'{"aps":{"alert":"' + b"x" * 200 + b'"}}'  # the benchmark's ~230-byte body

Stats = tuple[dict[str, int], float]


async def _stats(redis: Any) -> Stats:
    commands = await redis.info("commandstats")
    cpu = await redis.info("cpu")
    calls = {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in commands.items()}
    return calls, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def _per_notification(before: Stats, after: Stats, n: int) -> dict[str, Any]:
    calls = {name: after[0][name] - before[0].get(name, 0) for name in after[0]}
    # Each reading's own INFO calls are not the store's.
    calls = {name: count for name, count in calls.items() if count and name != "info"}
    return {
        "commands": sum(calls.values()) / n,
        "valkey_us": (after[1] - before[1]) * 1e6 / n,
        "top": {name: count / n for name, count in sorted(calls.items(), key=lambda c: -c[1])[:8]},
    }


async def measure(url: str) -> dict[str, dict[str, Any]]:
    """One round against the Valkey at `url` (flushed first), with whatever `relay` this process
    imports."""
    import redis.asyncio as aioredis

    from relay.core.model import Delivered, Notification
    from relay.store.queue import RelayQueue
    from relay.store.records import QueueLimits

    expires = int(time.time()) + 3600

    def note(i: int) -> Notification:
        token = f"{i % DEVICES:064x}"
        return Notification(
            app="dev",
            device_token=token,
            payload=PAYLOAD,
            push_type="alert",
            priority=10,
            expires_at=expires,
            service_id=f"S{i}",
        )

    redis = aioredis.Redis.from_url(url)
    queue = RelayQueue(redis, QueueLimits())
    await redis.flushall()
    # The scripts loaded and the shards marked first: a relay that has run a while.
    await queue.enqueue(note(0))
    warm = await queue.claim(10)
    await queue.settle([(claim, Delivered(None)) for claim in warm.claimed])

    start = await _stats(redis)
    for first in range(0, BATCH_N, CALL_SIZE):
        await queue.enqueue_many([note(i) for i in range(first, first + CALL_SIZE)])
    enqueued = await _stats(redis)
    done = 0
    while done < BATCH_N:
        batch = await queue.claim(CALL_SIZE)
        await queue.settle([(claim, Delivered(None)) for claim in batch.claimed])
        done += len(batch.claimed)
    delivered = await _stats(redis)
    for i in range(ONE_BY_ONE_N):
        n = note(i)
        await queue.enqueue(n)
        # As a worker with free send slots claims: more than there is.
        batch = await queue.claim(CALL_SIZE, shards=[queue.shard_of(n.app, n.device_token)])
        await queue.settle([(claim, Delivered(None)) for claim in batch.claimed])
    one_by_one = await _stats(redis)
    await queue.aclose()
    return {
        "batch: enqueue": _per_notification(start, enqueued, BATCH_N),
        "batch: claim + settle": _per_notification(enqueued, delivered, BATCH_N),
        "one at a time: enqueue + claim + settle": _per_notification(
            delivered, one_by_one, ONE_BY_ONE_N
        ),
    }


@contextmanager
def valkey() -> Iterator[str]:
    """The Valkey the benchmark runs (relay_devkit's, AOF everysec)."""
    from relay_devkit.embedded import EmbeddedServer

    with tempfile.TemporaryDirectory() as data, EmbeddedServer(Path(data)) as server:
        yield server.url


@contextmanager
def tree_at(revision: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as parent:
        tree = Path(parent) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), revision],
            check=True,
        )
        try:
            yield tree
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True
            )


def one_round(tree: Path, url: str) -> dict[str, dict[str, Any]]:
    """measure() in a process that imports `tree`'s relay."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--round", url],
        env=env,
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return dict(json.loads(out))


def table(results: dict[str, list[dict[str, dict[str, Any]]]]) -> str:
    names = list(results)
    rows = ["| operation | " + " | ".join(f"{n}: commands | {n}: Valkey µs" for n in names) + " |"]
    rows.append("|---|" + "---:|---:|" * len(names))
    for operation in results[names[0]][0]:
        cells = []
        for name in names:
            rounds = [r[operation] for r in results[name]]
            cells.append(f"{statistics.median(r['commands'] for r in rounds):.2f}")
            cells.append(f"{statistics.median(r['valkey_us'] for r in rounds):.1f}")
        rows.append(f"| {operation} | " + " | ".join(cells) + " |")
    lines = ["\n".join(rows), ""]
    for name in names:
        for operation, row in results[name][-1].items():
            top = ", ".join(f"{c} {v:.2f}" for c, v in row["top"].items())
            lines.append(f"- {name}, {operation} (last round): {top}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", help="a git revision to measure beside the working tree")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--round", help=argparse.SUPPRESS)  # one round, on the Valkey at this URL
    args = parser.parse_args()
    if args.round:
        print(json.dumps(asyncio.run(measure(args.round))))
        return
    results: dict[str, list[dict[str, dict[str, Any]]]] = {}
    with valkey() as url, tree_or_none(args.before) as before:
        trees = {"after": ROOT} if before is None else {"before": before, "after": ROOT}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                results.setdefault(name, []).append(one_round(tree, url))
    print(f"Per notification, median of {args.rounds} rounds (before: {args.before or '-'})\n")
    print(table(results))


@contextmanager
def tree_or_none(revision: str | None) -> Iterator[Path | None]:
    if revision is None:
        yield None
        return
    with tree_at(revision) as tree:
        yield tree


if __name__ == "__main__":
    main()
