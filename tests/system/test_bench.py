"""The benchmark harness: `--quick` end to end writes well-formed outputs; its pure parts."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.loadgen import device_tokens, gms_ids, parse_response_head
from bench.phases import PhaseResult, percentiles_ms, service_id_of
from bench.profile import parse_collapsed, script_of, top_frames
from bench.report import evaluate_targets, headline
from relay.store.activity_store import ACTIVITY_STAMP
from relay.store.routes import ROUTE_WRITE
from relay.store.scripts import CLAIM, ENQUEUE, SETTLE
from relay_devkit import bench as benchcli

REPO_ROOT = Path(__file__).resolve().parents[2]

RELAY_PHASES = ("single", "batch", "latency", "backlog", "scale-1", "scale-2")
PROFILED_PHASES = (*RELAY_PHASES, "idle")
ROLES = {"relay-api", "relay-worker", "valkey", "simulator", "loadgen"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench-out")
    work = tmp_path_factory.mktemp("bench-work")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--generator",
            "python",
            "--profile",
            "--out",
            str(out),
            "--work-dir",
            str(work),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    return out, json.loads((out / "results.json").read_text()), completed.stdout


@pytest.mark.timeout(150)
@pytest.mark.slow
def test_quick_run_writes_every_phase(quick_run: tuple[Path, dict[str, Any], str]) -> None:
    _, document, _ = quick_run
    phases = {p["name"]: p for p in document["phases"]}
    assert set(phases) == {"ceiling", "peer", "idle", *RELAY_PHASES}
    for name in ("ceiling", *RELAY_PHASES):
        phase = phases[name]
        assert phase["error"] is None, phase
        assert phase["skipped"] is None, phase
        assert phase["delivered"] > 0
        assert phase["rates"]["delivered_per_s"] > 0
        assert phase["cpu_s"]["simulator"] > 0
    assert phases["peer"]["skipped"] or phases["peer"]["delivered"] == document["plan"]["n"]
    for name in ("single", "batch", "backlog"):
        assert set(phases[name]["cpu_us_per_delivered"]) == ROLES
        # Everything the relay accepted reached the simulator.
        accepted = phases[name]["details"].get("accepted", phases[name]["details"].get("queued"))
        assert phases[name]["delivered"] == accepted
    assert phases["ceiling"]["delivered"] == document["plan"]["n"]
    assert len(phases["ceiling"]["details"]["grid"]) == len(document["plan"]["grid"])


@pytest.mark.timeout(150)
@pytest.mark.slow
def test_quick_run_measures_latency_backlog_and_idle(
    quick_run: tuple[Path, dict[str, Any], str],
) -> None:
    _, document, _ = quick_run
    phases = {p["name"]: p for p in document["phases"]}
    latency = phases["latency"]["details"]
    assert latency["unmatched"] == 0
    assert latency["latency_ms"]["count"] == latency["accepted"] > 0
    assert 0 < latency["latency_ms"]["p50"] <= latency["latency_ms"]["p99"]
    backlog = phases["backlog"]["details"]
    assert backlog["queued"] == document["plan"]["backlog_n"]
    assert backlog["redis_bytes_per_queued"] > 0
    # Drained: what stays is history, less than the queue took.
    assert 0 < backlog["redis_bytes_per_final"] < backlog["redis_bytes_per_queued"]
    assert any(name.startswith("relay-worker") for name in phases["backlog"]["peak_rss_bytes"])
    assert phases["scale-2"]["details"]["workers"] == 2
    assert phases["idle"]["details"]["window_s"] >= document["plan"]["idle_s"]


@pytest.mark.timeout(150)
@pytest.mark.slow
def test_quick_run_reports_targets_and_machine(
    quick_run: tuple[Path, dict[str, Any], str],
) -> None:
    out, document, stdout = quick_run
    assert len(document["targets"]) == 15
    for target in document["targets"]:
        assert target["verdict"] in ("met", "MISSED"), target
        assert target["goal"] in stdout
    headline = {row["phase"]: row for row in document["headline"]}
    assert set(headline) == set(RELAY_PHASES)
    assert all(row["x_client"] > 0 for row in headline.values())
    notes = " ".join(document["notes"])
    assert "log level info" in notes
    assert "appendfsync everysec" in notes
    machine = document["machine"]
    assert machine["cores"] >= 1
    assert machine["python"]
    assert machine["packages"]["aioapns"] == "4.0"
    assert machine["valkey"]
    markdown = (out / "results.md").read_text()
    assert "| goal | measured | limit | verdict | inputs |" in markdown
    assert "## Headline: the relay's CPU per delivered notification" in markdown
    assert all(p["title"] in markdown for p in document["phases"])
    png = (out / "results.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 10_000


@pytest.mark.timeout(150)
@pytest.mark.slow
def test_quick_run_profiles_each_relay_phase(quick_run: tuple[Path, dict[str, Any], str]) -> None:
    out, document, _ = quick_run
    phases = {p["name"]: p for p in document["phases"]}
    assert phases["ceiling"]["profile"] is None  # the raw client is no relay role
    markdown = (out / "profile.md").read_text()
    for name in PROFILED_PHASES:
        profile = phases[name]["profile"]
        assert f"## {phases[name]['title']}" in markdown
        commands = {row["command"]: row for row in profile["commandstats"]}
        scripts = {row["script"]: row["calls"] for row in profile["scripts"]}
        assert scripts.get("claim", 0) > 0, name  # a worker claims, busy or idle
        assert commands["fcall"]["calls"] > 0, name
        if name != "idle":
            # One per notification, or (enqueue_many) one per shard a batch.
            assert scripts["enqueue"] > 0, name
            assert scripts["settle"] > 0, name
            assert commands["fcall"]["calls_per_delivered"] > 0, name
            # Every phase counts what Valkey ran, profiled or not (the headline's column).
            assert phases[name]["redis_commands_per_delivered"] > 1, name
        for row in profile["slowlog"]:  # any FCALL here is named after its relay/store/lua file
            assert row["script"] is None or row["script"] in scripts, row
        py_spy = profile["py_spy"]
        if py_spy["status"] == "absent":  # the suite's machine need not have run bench-setup
            assert "make bench-setup" in py_spy["why"]
            assert "Not sampled: py-spy is not installed" in markdown
            continue
        sampled = {process["name"]: process for process in py_spy["processes"]}
        assert "relay-api" in sampled, name
        assert any(process["role"] == "relay-worker" for process in sampled.values()), name
        for process in sampled.values():
            assert "error" in process or len(process["top_own"]) <= 15, process
            assert f"#### {process['name']}" in markdown


def test_quick_refuses_to_overwrite_committed_results() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", "bench/results"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 2
    assert "must not overwrite" in completed.stderr


def test_benchcli_takes_the_harness_options() -> None:
    parser = argparse.ArgumentParser()
    benchcli.configure(parser)
    args = parser.parse_args(
        ["--quick", "--sim-workers", "3", "--phase", "batch", "--phase", "idle"]
    )
    assert args.quick
    assert args.sim_workers == 3
    assert args.phase == ["batch", "idle"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--phase", "no-such-phase"])


def test_a_run_of_some_phases_or_profiled_needs_its_own_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A partial or profiled run must not replace the committed results, which hold every
    phase's figures taken without a profiler."""
    parser = argparse.ArgumentParser()
    benchcli.configure(parser)
    assert benchcli.run(parser.parse_args(["--phase", "single"])) == 2
    assert "--phase: a run of some phases needs --out" in capsys.readouterr().err
    assert benchcli.run(parser.parse_args(["--profile"])) == 2
    assert "--profile: a profiled run needs --out" in capsys.readouterr().err


def test_benchcli_says_when_the_harness_is_missing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(benchcli, "HARNESS", "bench.not_here")
    monkeypatch.setattr(benchcli, "CHECKOUT_ROOT", Path("/nonexistent"))
    assert benchcli.run(argparse.Namespace()) == 2
    assert "not importable" in capsys.readouterr().err


def test_ids_and_tokens_have_the_gms_and_apns_shapes() -> None:
    ids = gms_ids("R007")
    first, second = next(ids), next(ids)
    assert len(first) == 32
    assert first.isalnum()
    assert first.upper() == first
    assert first != second
    tokens = device_tokens(3, seed=0xABCDEF01)
    assert len(set(tokens)) == 3
    assert all(len(t) == 64 and int(t, 16) >= 0 for t in tokens)


def test_parse_response_head() -> None:
    head = b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 17\r\nRetry-After: 1\r\n\r\n"
    assert parse_response_head(head) == (429, 17)


def test_service_id_of_either_message_encoding() -> None:
    assert service_id_of({"message": {"_id": "A1", "_action": "x"}}) == "A1"
    assert service_id_of({"message": '{"_id": "B2"}'}) == "B2"
    assert service_id_of({"aps": {}}) is None


def test_percentiles_ms() -> None:
    stats = percentiles_ms([float(v) for v in range(1, 101)])
    assert (stats["p50"], stats["p99"], stats["max"], stats["count"]) == (51.0, 100.0, 100.0, 100)
    assert percentiles_ms([]) == {"count": 0}


def test_targets_compare_against_the_ceiling() -> None:
    ceiling = PhaseResult(
        "ceiling", "1", delivered=1000, rates={"delivered_per_s": 1000.0}, cpu_s={"loadgen": 0.2}
    )
    batch = PhaseResult(
        "batch",
        "4",
        delivered=1000,
        rates={"delivered_per_s": 900.0},
        cpu_s={"relay-api": 0.1, "relay-worker": 0.3, "valkey": 0.05},
    )
    single = PhaseResult("single", "3", skipped="not run")
    targets = {t.goal: t for t in evaluate_targets({p.name: p for p in (ceiling, batch, single)})}
    assert targets["R_batch >= 0.8 x R_raw"].verdict == "met"
    assert targets["R_batch >= 0.8 x R_raw"].measured == pytest.approx(0.9)
    cpu = targets[
        "relay CPU per delivered (batch; api + worker + Valkey) <= 1.0 x raw aioapns client"
    ]
    assert cpu.measured == pytest.approx(2.25)
    assert cpu.verdict == "MISSED"
    assert targets["Valkey CPU per delivered at full load (batch) <= 60 µs"].verdict == "met"
    assert targets["R_single >= 0.5 x R_raw"].verdict == "n/a"


def test_memory_targets_are_bytes_per_queued_and_per_final_record() -> None:
    backlog = PhaseResult(
        "backlog",
        "6",
        delivered=1000,
        details={"redis_bytes_per_queued": 935.0, "redis_bytes_per_final": 188.0},
    )
    targets = {t.goal: t for t in evaluate_targets({"backlog": backlog})}
    queued = targets["Redis <= 600 B per queued notification"]
    final = targets["Redis <= 200 B per retained final record"]
    assert (queued.measured, queued.verdict) == (935.0, "MISSED")
    assert (final.measured, final.verdict) == (188.0, "met")
    # A run from before the final-record figure: n/a, not met.
    older = PhaseResult("backlog", "6", delivered=1, details={"redis_bytes_per_queued": 500.0})
    targets = {t.goal: t for t in evaluate_targets({"backlog": older})}
    assert targets["Redis <= 200 B per retained final record"].verdict == "n/a"
    assert targets["Redis <= 600 B per queued notification"].verdict == "met"


def test_headline_is_relay_roles_cpu_as_a_multiple_of_the_raw_client() -> None:
    ceiling = PhaseResult("ceiling", "1", delivered=1000, cpu_s={"loadgen": 0.5})
    single = PhaseResult(
        "single",
        "3",
        delivered=1000,
        cpu_s={"relay-api": 0.2, "relay-worker": 0.3, "valkey": 0.25, "simulator": 9.0},
    )
    latency = PhaseResult("latency", "5", error="RuntimeError: boom")
    rows = {row["phase"]: row for row in headline({p.name: p for p in (ceiling, single, latency)})}
    assert rows["single"]["relay_us"] == pytest.approx(750.0)  # the simulator is not the relay
    assert rows["single"]["client_us"] == pytest.approx(500.0)
    assert rows["single"]["x_client"] == pytest.approx(1.5)
    assert rows["latency"]["x_client"] is None


def test_fcall_function_names_name_the_relays_scripts() -> None:
    for script in (ENQUEUE, CLAIM, SETTLE, ROUTE_WRITE, ACTIVITY_STAMP):
        assert script_of(script.function) == script.name
    assert script_of("claim") == "unknown script"


def test_top_frames_counts_own_and_cumulative_samples() -> None:
    stacks = parse_collapsed(
        "main (m.py:1);serve (s.py:5);parse (p.py:9) 6\n"
        "main (m.py:1);serve (s.py:5) 3\n"
        "main (m.py:1);log (l.py:2) 1\n"
        " 1\n"
    )
    top = top_frames(stacks)
    assert top["samples"] == 11
    own = [(row["frame"], row["own"], row["cumulative"]) for row in top["top_own"]]
    assert own[:2] == [("parse (p.py:9)", 6, 6), ("serve (s.py:5)", 3, 9)]
    assert ("(no Python frame: native code)", 1, 1) in own
    assert top["top_own"][0]["own_share"] == pytest.approx(6 / 11)
    # main is on 10 of 11 samples with no time of its own: the entry chain, left out.
    cumulative = [row["frame"] for row in top["top_cumulative"]]
    assert cumulative[:2] == ["serve (s.py:5)", "parse (p.py:9)"]
    assert "main (m.py:1)" not in cumulative
