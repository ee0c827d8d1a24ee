"""How much Redis and how many cores a push rate needs, from the benchmark's measured figures.

`python -m bench.capacity` reads bench/results/results.json and prints a markdown table for
10 / 100 / 1,000 / 10,000 pushes/s (docs/benchmarks.md: "Capacity: how much Redis and how many
cores").

The model, per push rate r (pushes/s), each line one formula:
    backlog           = r * outage_s                  everything sent while APNs is out stays
                                                      queued (no push expires within the outage);
                                                      queue.max_pending must be above it
    queue bytes       = backlog * bytes_per_queued
    history records   = r * (retention_s + HISTORY_BUCKET_S)
                                                      a final record is kept retention_s from its
                                                      bucket's last write, so a 10-minute bucket
                                                      lives up to 10 minutes longer than its first
    history bytes     = history records * bytes_per_final
    idempotency bytes = r * idempotent_share * retention_s * bytes_per_idempotency_key
    data              = queue + history + idempotency bytes
                                                      the sum, not the peak: during an outage the
                                                      backlog's pushes are not history yet, so
                                                      this overstates by r * outage_s * per_final
    primaries         = the fewest P >= ceil(r * valkey_us / 1e6 / redis_utilisation) whose
                        fullest primary stays within memory_per_primary: Redis runs commands on
                        one core, and the relay's `shards` hash tags spread over P primaries as
                        ceil(shards / P) on the fullest, so P > shards adds nothing
    maxmemory         = data * ceil(shards / P) / shards / watermark
                                                      per primary: each stays under the watermark
                                                      (redis.memory_watermark), past which ingest
                                                      spools
    host RAM          = maxmemory * (1 + fork_share)  an AOF rewrite forks; copy-on-write can
                                                      copy every page a busy primary writes
    api cores         = ceil(r * api_us / 1e6 / utilisation)       one Python process per core
    worker cores      = ceil(r * worker_us / 1e6 / utilisation)
    drained in        = backlog / (capacity - r)     after APNs heals, with capacity the lesser
                        of the workers' (cores * 1e6 / worker_us) and the fullest primary's
                        (1e6 / valkey_us * shards / ceil(shards / P)) delivered per second

The figures: bytes per queued notification and per final record from the backlog phase (200,000
notifications over 10,000 devices, 20 per device: fewer per device costs more per notification,
the scale phases' 5 per device about 10 % more), CPU per delivered notification of the api, the
worker and Valkey from the one-event-per-POST phase (GMS's way: its api figure is the dearer
one). Results whose backlog phase queued an older record layout (relay.store.queued) take
bytes_per_queued measured for the current one (BYTES_PER_QUEUED_DEFAULT). Results from before
the backlog phase measured final records lack bytes_per_final: it is then an option, by default
the figure measured when compact history landed (at the benchmark's payload a scaled-down run
measures ~22 % more: tests/system/test_capacity.py). Idempotency keys (chat lines, clients'
idempotency_key) are separate keys kept retention_s; their cost is an option too (default
measured at a 36-character key). Not modelled: Redis's own baseline (a few MiB), replicas
(each needs the same memory as its primary), APNs' limits per connection.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.processes import REPO_ROOT
from relay.config.schema import RedisSettings
from relay.store.history import HISTORY_BUCKET_S
from relay.store.queued import QUEUED_LAYOUT
from relay.store.records import QueueLimits

RESULTS = REPO_ROOT / "bench" / "results" / "results.json"
RATES = (10, 100, 1_000, 10_000)
# Measured (INFO memory used_memory, Valkey 8.1) for the benchmark's notifications once a GMS
# push's collapse id was no longer stored twice (tests/system/test_capacity.py's scaled-down run);
# results.json from before then has no figure of its own.
BYTES_PER_FINAL_DEFAULT = 152.0
# Measured (INFO memory used_memory, Valkey 8.1) for the benchmark's notifications queued in the
# record layout relay.store.queued.QUEUED_LAYOUT (tests/system/test_capacity.py's scaled-down
# run, 20 per device); results.json whose backlog phase ran an older layout (no "queued_layout"
# of this number) measured that layout, not this one.
BYTES_PER_QUEUED_DEFAULT = 554.0
# An idempotency key (relay:{tag}:idem:<app>:<64-hex token>:<key> -> id, with its TTL): 20,000
# benchmark notifications, delivered, each with a 36-character idempotency_key, less the same
# without (used_memory, Valkey 8.1; the notifications built as tests/system/test_capacity.py
# builds them).
BYTES_PER_IDEMPOTENCY_KEY_DEFAULT = 254.0
MiB, GiB = 1 << 20, 1 << 30

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Figures:
    """What the benchmark measured: memory per notification, CPU per delivered notification."""

    bytes_per_queued: float
    bytes_per_final: float
    api_us: float
    worker_us: float
    valkey_us: float


@dataclass(frozen=True, slots=True)
class Assumptions:
    """What the operator decides: the outage to ride out, retention, headroom."""

    outage_s: float = 30 * 60
    retention_s: float = QueueLimits().retention_s
    idempotent_share: float = 0.0  # of pushes carrying an idempotency key (chat lines, clients)
    bytes_per_idempotency_key: float = BYTES_PER_IDEMPOTENCY_KEY_DEFAULT
    watermark: float = RedisSettings.model_fields["memory_watermark"].default
    fork_share: float = 1.0  # of maxmemory kept free for an AOF rewrite's fork
    utilisation: float = 0.6  # of an api or worker core at the steady rate
    redis_utilisation: float = 0.5  # of a primary's core at the steady rate
    memory_per_primary: float = 25 * GiB  # the largest maxmemory wanted on one primary
    shards: int = QueueLimits().shards  # queue.shards: the hash tags primaries share
    max_pending: int = QueueLimits().max_pending  # queue.max_pending: past it ingest refuses


@dataclass(frozen=True, slots=True)
class Capacity:
    """What one push rate needs."""

    rate: float
    backlog: float
    queue_bytes: float
    history_bytes: float
    idempotency_bytes: float
    primaries_for_cpu: int
    primaries: int
    maxmemory: float  # per primary
    host_ram: float  # per primary
    api_cores: int
    worker_cores: int
    valkey_cores_busy: float  # all primaries together, at the steady rate
    drain_s: float  # after the outage; inf: the relay cannot catch up
    fits: bool  # False: even one shard per primary is over the memory or CPU budget

    @property
    def data_bytes(self) -> float:
        return self.queue_bytes + self.history_bytes + self.idempotency_bytes


def cores(rate: float, us_per_push: float, utilisation: float) -> int:
    """Processes of one core each to carry `rate` at `utilisation`; at least one."""
    return max(1, math.ceil(rate * us_per_push / 1e6 / utilisation))


def fullest_share(shards: int, primaries: int) -> float:
    """The share of the data on the primary holding the most shards."""
    return math.ceil(shards / primaries) / shards


def primaries_for(data_bytes: float, at_least: int, a: Assumptions) -> int:
    """The fewest primaries, at least `at_least`, whose fullest stays within the memory budget
    under the watermark; `shards` when none does (more primaries would hold no shard)."""
    for primaries in range(max(1, at_least), a.shards + 1):
        per_primary = data_bytes * fullest_share(a.shards, primaries) / a.watermark
        if per_primary <= a.memory_per_primary:
            return primaries
    return a.shards


def capacity(rate: float, f: Figures, a: Assumptions) -> Capacity:
    backlog = rate * a.outage_s
    queue_bytes = backlog * f.bytes_per_queued
    history_bytes = rate * (a.retention_s + HISTORY_BUCKET_S) * f.bytes_per_final
    idempotency_bytes = rate * a.idempotent_share * a.retention_s * a.bytes_per_idempotency_key
    data = queue_bytes + history_bytes + idempotency_bytes
    valkey_busy = rate * f.valkey_us / 1e6
    for_cpu = max(1, math.ceil(valkey_busy / a.redis_utilisation))
    primaries = primaries_for(data, for_cpu, a)
    maxmemory = data * fullest_share(a.shards, primaries) / a.watermark
    worker_cores = cores(rate, f.worker_us, a.utilisation)
    drains_per_s = min(
        worker_cores * 1e6 / f.worker_us,
        1e6 / f.valkey_us / fullest_share(a.shards, primaries),
    )
    spare = drains_per_s - rate
    return Capacity(
        rate=rate,
        backlog=backlog,
        queue_bytes=queue_bytes,
        history_bytes=history_bytes,
        idempotency_bytes=idempotency_bytes,
        primaries_for_cpu=for_cpu,
        primaries=primaries,
        maxmemory=maxmemory,
        host_ram=maxmemory * (1 + a.fork_share),
        api_cores=cores(rate, f.api_us, a.utilisation),
        worker_cores=worker_cores,
        valkey_cores_busy=valkey_busy,
        drain_s=backlog / spare if spare > 0 else math.inf,
        fits=maxmemory <= a.memory_per_primary and for_cpu <= a.shards,
    )


def redis_bytes(queued: int, finals: int, f: Figures) -> float:
    """The model's Redis memory for `queued` notifications waiting and `finals` final records."""
    return queued * f.bytes_per_queued + finals * f.bytes_per_final


# --- the benchmark's results ------------------------------------------------------------------


def figures_from(document: JsonObject, bytes_per_final: float | None = None) -> Figures:
    """The model's figures from a results.json document; `bytes_per_final` when it has none
    (or to override it)."""
    backlog = next(p for p in document["phases"] if p["name"] == "backlog")
    single = next(row for row in document["headline"] if row["phase"] == "single")
    measured = backlog["details"].get("redis_bytes_per_final")
    same_layout = backlog["details"].get("queued_layout") == QUEUED_LAYOUT
    return Figures(
        bytes_per_queued=(
            backlog["details"]["redis_bytes_per_queued"]
            if same_layout
            else BYTES_PER_QUEUED_DEFAULT
        ),
        bytes_per_final=(
            bytes_per_final
            if bytes_per_final is not None
            else measured
            if measured is not None
            else BYTES_PER_FINAL_DEFAULT
        ),
        api_us=single["relay-api_us"],
        worker_us=single["relay-worker_us"],
        valkey_us=single["valkey_us"],
    )


def committed_figures() -> Figures:
    return figures_from(json.loads(RESULTS.read_text()))


# --- the table --------------------------------------------------------------------------------


def size(value: float) -> str:
    """Bytes as MiB below a GiB, else GiB (what redis.conf's `mb`/`gb` mean)."""
    if value < GiB:
        return f"{value / MiB:,.0f} MiB"
    return f"{value / GiB:,.1f} GiB"


def duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "never"
    return f"{seconds / 60:,.0f} min" if seconds >= 60 else f"{seconds:,.0f} s"


def markdown(rows: Sequence[Capacity], f: Figures, a: Assumptions) -> str:
    idempotency = (
        f", {a.idempotent_share:.0%} of pushes with an idempotency key "
        f"({a.bytes_per_idempotency_key:,.0f} B each)"
        if a.idempotent_share
        else ""
    )
    lines = [
        f"APNs outage {duration(a.outage_s)}, retention {a.retention_s:,.0f} s{idempotency}; "
        f"{f.bytes_per_queued:,.0f} B per queued notification, {f.bytes_per_final:,.0f} B per "
        f"final record; api {f.api_us:,.0f} µs, worker {f.worker_us:,.0f} µs, Valkey "
        f"{f.valkey_us:,.0f} µs per push; cores at {a.utilisation:.0%}, primaries at "
        f"{a.redis_utilisation:.0%} of a core and at most {size(a.memory_per_primary)} maxmemory "
        f"over {a.shards} shards; watermark {a.watermark:g}, host RAM "
        f"{1 + a.fork_share:g} x maxmemory.",
        "",
        "| pushes/s | backlog | queue | history | Redis data | primaries (CPU) "
        "| maxmemory per primary | host RAM per primary | api cores | worker cores "
        "| Valkey cores busy | backlog drained in |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in rows:
        over = "" if c.fits else " (over budget: more queue.shards)"
        refused = " (over queue.max_pending)" if c.backlog > a.max_pending else ""
        lines.append(
            f"| {c.rate:,.0f} | {c.backlog:,.0f}{refused} | {size(c.queue_bytes)} | "
            f"{size(c.history_bytes + c.idempotency_bytes)} | {size(c.data_bytes)} | "
            f"{c.primaries} ({c.primaries_for_cpu}) | {size(c.maxmemory)}{over} | "
            f"{size(c.host_ram)} | {c.api_cores} | {c.worker_cores} | "
            f"{c.valkey_cores_busy:.3g} | {duration(c.drain_s)} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.capacity",
        description="Redis memory, cores and Cluster primaries per push rate, from the "
        "benchmark's measured figures (docs/benchmarks.md: Capacity).",
    )
    defaults = Assumptions()
    parser.add_argument("--results", type=Path, default=RESULTS, help="a results.json")
    parser.add_argument(
        "--rates", type=float, nargs="+", default=RATES, help="pushes per second, one per row"
    )
    parser.add_argument("--outage-minutes", type=float, default=defaults.outage_s / 60)
    parser.add_argument(
        "--retention-seconds",
        type=float,
        default=defaults.retention_s,
        help="queue.retention_seconds",
    )
    parser.add_argument(
        "--bytes-per-final",
        type=float,
        default=None,
        help="Redis bytes per retained final record, when the results have none "
        f"(default then {BYTES_PER_FINAL_DEFAULT:g})",
    )
    parser.add_argument(
        "--idempotent-share",
        type=float,
        default=defaults.idempotent_share,
        help="share of pushes with an idempotency key (0..1)",
    )
    parser.add_argument(
        "--bytes-per-idempotency-key", type=float, default=defaults.bytes_per_idempotency_key
    )
    parser.add_argument("--utilisation", type=float, default=defaults.utilisation)
    parser.add_argument("--redis-utilisation", type=float, default=defaults.redis_utilisation)
    parser.add_argument(
        "--memory-per-primary-gib", type=float, default=defaults.memory_per_primary / GiB
    )
    parser.add_argument("--shards", type=int, default=defaults.shards, help="queue.shards")
    parser.add_argument(
        "--max-pending", type=int, default=defaults.max_pending, help="queue.max_pending"
    )
    parser.add_argument(
        "--watermark", type=float, default=defaults.watermark, help="redis.memory_watermark"
    )
    args = parser.parse_args(argv)
    figures = figures_from(json.loads(args.results.read_text()), args.bytes_per_final)
    assumptions = Assumptions(
        outage_s=args.outage_minutes * 60,
        retention_s=args.retention_seconds,
        idempotent_share=args.idempotent_share,
        bytes_per_idempotency_key=args.bytes_per_idempotency_key,
        watermark=args.watermark,
        utilisation=args.utilisation,
        redis_utilisation=args.redis_utilisation,
        memory_per_primary=args.memory_per_primary_gib * GiB,
        shards=args.shards,
        max_pending=args.max_pending,
    )
    rows = [capacity(rate, figures, assumptions) for rate in args.rates]
    sys.stdout.write(markdown(rows, figures, assumptions))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
