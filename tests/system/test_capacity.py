"""The capacity model (bench/capacity.py): its arithmetic, and a scaled-down run in a real Valkey
that reproduces its memory figures within 20 %."""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from app_profiles import app_profile
from eventually import eventually

from bench.capacity import (
    BYTES_PER_QUEUED_DEFAULT,
    Assumptions,
    Figures,
    GiB,
    capacity,
    committed_figures,
    figures_from,
    main,
    redis_bytes,
)
from bench.loadgen import ACTION, device_tokens, gms_ids
from bench.stack import APP
from relay.config.schema import QueueSettings
from relay.core.model import Delivered, Notification, apns_id_for
from relay.core.payload import PushSpec, build_notification
from relay.store.history import HISTORY_BUCKET_S
from relay.store.queue import MAX_BATCH, RelayQueue
from relay.store.queued import QUEUED_LAYOUT
from relay.store.records import Accepted, QueueLimits
from relay_devkit.embedded import EmbeddedServer

FIGURES = Figures(
    bytes_per_queued=1000.0, bytes_per_final=200.0, api_us=300.0, worker_us=250.0, valkey_us=100.0
)
TOLERANCE = 0.20

# ---- the model's arithmetic ----


def test_memory_is_the_outage_backlog_plus_history_for_retention_and_its_bucket() -> None:
    plan = Assumptions(outage_s=1800, retention_s=86_400)
    c = capacity(100, FIGURES, plan)
    assert c.backlog == 180_000
    assert c.queue_bytes == 180_000 * 1000
    assert c.history_bytes == 100 * (86_400 + HISTORY_BUCKET_S) * 200
    assert c.idempotency_bytes == 0
    assert c.data_bytes == c.queue_bytes + c.history_bytes
    # One primary holds it all, under the 0.9 watermark; the host has room for the fork.
    assert (c.primaries, c.primaries_for_cpu) == (1, 1)
    assert c.maxmemory == pytest.approx(c.data_bytes / 0.9)
    assert c.host_ram == pytest.approx(2 * c.maxmemory)
    assert c.fits


def test_idempotency_keys_are_kept_for_the_retention() -> None:
    plan = Assumptions(retention_s=1000, idempotent_share=0.5, bytes_per_idempotency_key=250)
    assert capacity(10, FIGURES, plan).idempotency_bytes == 10 * 0.5 * 1000 * 250


def test_cores_are_whole_processes_at_the_target_utilisation() -> None:
    # api: 1,000/s * 300 µs = 0.3 cores busy, / 0.6 = 0.5 -> 1; 10,000/s: 3 / 0.6 = 5.
    plan = Assumptions(utilisation=0.6)
    assert capacity(1_000, FIGURES, plan).api_cores == 1
    assert capacity(10_000, FIGURES, plan).api_cores == 5
    assert capacity(10_000, FIGURES, plan).worker_cores == math.ceil(2.5 / 0.6)
    assert capacity(0.001, FIGURES, plan).worker_cores == 1


def test_primaries_for_cpu_then_for_memory_over_the_shards() -> None:
    # 10,000/s * 100 µs = one Valkey core busy: two primaries at 50 %.
    plan = Assumptions(outage_s=0, retention_s=0, redis_utilisation=0.5, shards=16)
    lean = capacity(10_000, FIGURES, plan)
    assert (lean.valkey_cores_busy, lean.primaries_for_cpu, lean.primaries) == (1.0, 2, 2)
    # Memory: 16 shards over 3 primaries put 6 on the fullest, over 4 primaries 4.
    heavy = Assumptions(
        outage_s=0, retention_s=100_000 - HISTORY_BUCKET_S, memory_per_primary=6 * GiB, shards=16
    )
    c = capacity(1_000, FIGURES, heavy)  # 1,000 * 100,000 s * 200 B = 20e9 B of history
    data = 1_000 * 100_000 * 200
    assert c.data_bytes == data
    assert data * 6 / 16 / 0.9 > 6 * GiB >= data * 4 / 16 / 0.9
    assert c.primaries == 4
    assert c.maxmemory == pytest.approx(data * 4 / 16 / 0.9)
    # More than one shard's worth per primary cannot be had: over budget, said so.
    tight = capacity(1_000, FIGURES, Assumptions(retention_s=10**7, shards=4))
    assert (tight.primaries, tight.fits) == (4, False)


def test_the_backlog_drains_with_what_the_workers_have_to_spare() -> None:
    # One worker at 250 µs delivers 4,000/s; 100/s keep arriving: 180,000 / 3,900 s.
    c = capacity(100, FIGURES, Assumptions(outage_s=1800))
    assert c.drain_s == pytest.approx(180_000 / (4_000 - 100))


def test_figures_come_from_the_backlog_phase_and_the_one_event_per_post_headline() -> None:
    backlog_details: dict[str, float] = {
        "redis_bytes_per_queued": 900.0,
        "queued_layout": QUEUED_LAYOUT,
    }
    document = {
        "phases": [{"name": "backlog", "details": backlog_details}],
        "headline": [
            {"phase": "batch", "relay-api_us": 1.0, "relay-worker_us": 1.0, "valkey_us": 1.0},
            {
                "phase": "single",
                "relay-api_us": 317.0,
                "relay-worker_us": 268.0,
                "valkey_us": 112.0,
            },
        ],
    }
    older = figures_from(document)
    assert older == Figures(900.0, 152.0, 317.0, 268.0, 112.0)  # the documented default
    assert figures_from(document, bytes_per_final=150.0).bytes_per_final == 150.0
    backlog_details["redis_bytes_per_final"] = 175.0
    assert figures_from(document).bytes_per_final == 175.0
    # A backlog phase that queued another record layout measured that layout, not this one.
    backlog_details["queued_layout"] = QUEUED_LAYOUT - 1
    assert figures_from(document).bytes_per_queued == BYTES_PER_QUEUED_DEFAULT


def test_the_command_prints_a_row_per_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results.json"
    results.write_text(
        json.dumps(
            {
                "phases": [{"name": "backlog", "details": {"redis_bytes_per_queued": 950.0}}],
                "headline": [
                    {
                        "phase": "single",
                        "relay-api_us": 317.0,
                        "relay-worker_us": 268.0,
                        "valkey_us": 112.0,
                    }
                ],
            }
        )
    )
    assert (
        main(["--results", str(results), "--rates", "10", "10000", "--outage-minutes", "60"]) == 0
    )
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| pushes/s | backlog |")
    assert [row.split(" | ")[1] for row in rows[1:]] == [
        "36,000",
        "36,000,000 (over queue.max_pending)",
    ]
    assert "APNs outage 60 min" in table
    assert "152 B per final record" in table


def test_the_benchmarks_page_shows_the_table_for_the_committed_figures(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main([]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    page = (Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md").read_text()
    section = page.split("## Capacity: how much Redis and how many cores", 1)[1]
    shown = [line for line in section.split("\n#")[0].splitlines() if line.startswith("| ")]
    assert shown == table


# ---- the scaled-down run: measured used_memory against the model ----

# As in the benchmark's backlog phase: 20 notifications per device, built as it builds them.
BACKLOG, BACKLOG_DEVICES = 5_000, 250
FINALS, FINAL_DEVICES = 20_000, 1_000


def benchmark_notifications(tokens: list[str], count: int, id_prefix: str) -> list[Notification]:
    """Built as the api builds the benchmark's batch items: default app settings, a GMS service id
    and the wait-for-agent action, devices taken in turn."""
    ids = gms_ids(id_prefix)
    settings = QueueSettings()
    now_s = int(time.time())
    return [
        build_notification(
            PushSpec(device_token=tokens[index % len(tokens)], service_id=next(ids), action=ACTION),
            app_profile(APP),
            now_s=now_s,
            default_ttl_s=settings.default_ttl_seconds,
            max_ttl_s=settings.max_ttl_seconds,
        )
        for index in range(count)
    ]


async def used_memory(redis: aioredis.Redis) -> int:
    info = await redis.info("memory")
    return int(info["used_memory"])


async def enqueue_all(queue: RelayQueue, notifications: list[Notification]) -> None:
    for start in range(0, len(notifications), MAX_BATCH):
        outcomes = await queue.enqueue_many(notifications[start : start + MAX_BATCH])
        assert all(isinstance(o, Accepted) and not o.duplicate for o in outcomes)


async def deliver_all(queue: RelayQueue) -> int:
    """Claim and settle as delivered until nothing is due, as a worker does against the
    benchmark's simulator: it echoes the apns-id the relay derived and, as Apple's development
    environment does, sends an apns-unique-id (37 of a record's bytes; production APNs sends
    none, so the model's history is that much above production's); how many were delivered."""
    delivered = 0
    while claimed := (await queue.claim(MAX_BATCH)).claimed:
        await queue.settle([(c, Delivered(apns_id_for(c.id), str(uuid.uuid4()))) for c in claimed])
        delivered += len(claimed)
    return delivered


@dataclass(frozen=True, slots=True)
class ScaledDownRun:
    """used_memory deltas (bytes) of a scaled-down run, and the model's for the same counts."""

    measured: dict[str, int]
    predicted: dict[str, float]

    def within_tolerance(self, part: str) -> bool:
        return abs(self.measured[part] - self.predicted[part]) <= TOLERANCE * self.predicted[part]

    def __str__(self) -> str:
        return ", ".join(
            f"{part}: measured {self.measured[part]:,} B, predicted {self.predicted[part]:,.0f} B "
            f"({self.measured[part] / self.predicted[part] - 1:+.0%})"
            for part in self.measured
        )


async def settled_used_memory(redis: aioredis.Redis) -> int:
    """used_memory once nothing is left for the lazy-free thread (an ASYNC flush, such as the
    fixtures' FLUSHALL, frees in the background while used_memory still counts it)."""

    async def freed() -> int | None:
        info = await redis.info("memory")
        return int(info["used_memory"]) if not int(info["lazyfree_pending_objects"]) else None

    return await eventually(freed, what="lazy-free done")


async def scaled_down_run(redis_url: str) -> ScaledDownRun:
    """FINALS notifications delivered (history), then BACKLOG queued while APNs is out."""
    figures = committed_figures()
    redis = aioredis.Redis.from_url(redis_url)
    queue = RelayQueue(redis, QueueLimits(max_per_device=1000))
    try:
        await redis.execute_command("FLUSHALL", "SYNC")  # type: ignore[no-untyped-call]
        before = await settled_used_memory(redis)
        delivered = benchmark_notifications(device_tokens(FINAL_DEVICES, seed=8), FINALS, "HIST")
        await enqueue_all(queue, delivered)
        assert await deliver_all(queue) == FINALS
        history = await used_memory(redis) - before
        backlog = benchmark_notifications(device_tokens(BACKLOG_DEVICES, seed=7), BACKLOG, "OUTAGE")
        await enqueue_all(queue, backlog)
        total = await used_memory(redis) - before
        await redis.execute_command("FLUSHALL", "SYNC")  # type: ignore[no-untyped-call]
    finally:
        await queue.aclose()
    run = ScaledDownRun(
        measured={"total": total, "backlog": total - history, "history": history},
        predicted={
            "total": redis_bytes(BACKLOG, FINALS, figures),
            "backlog": redis_bytes(BACKLOG, 0, figures),
            "history": redis_bytes(0, FINALS, figures),
        },
    )
    print(f"\nscaled-down run, {BACKLOG:,} queued + {FINALS:,} final: {run}")
    return run


@pytest.fixture(scope="module")
def scaled_down(redis_server: EmbeddedServer | None) -> ScaledDownRun:
    """One run for the module's checks (a run takes several seconds)."""
    url = os.environ.get("REDIS_URL") or (redis_server.url if redis_server else "")
    return asyncio.run(scaled_down_run(url))


@pytest.mark.timeout(60)
def test_a_scaled_down_backlog_and_history_use_what_the_model_predicts(
    scaled_down: ScaledDownRun,
) -> None:
    assert scaled_down.within_tolerance("total"), scaled_down
    assert scaled_down.within_tolerance("backlog"), scaled_down


@pytest.mark.timeout(60)
def test_a_scaled_down_history_uses_what_the_model_predicts(scaled_down: ScaledDownRun) -> None:
    assert scaled_down.within_tolerance("history"), scaled_down
