"""Claim faults alone (no Redis): when a failing shard makes the worker not ready, and when not."""

from __future__ import annotations

import structlog.testing

from relay.core.redaction import mask_token
from relay.delivery.delivery_report import CLAIMS_FAILING, CLAIMS_FAILING_READY_S, ClaimFaults
from relay.store.records import ClaimBatch, ClaimError

SHARD_ERROR = ClaimBatch([], [], errors=[ClaimError(3, None, "ERR script")])
TOKEN = "ab" * 32
DEVICE_ERROR = ClaimBatch([], [], errors=[ClaimError(3, f"app:{TOKEN}", "ERR script")])


class Clock:
    now = 1_000.0

    def __call__(self) -> float:
        return self.now


def test_a_shard_failing_long_enough_is_named_until_a_claim_of_every_shard_finds_it_well() -> None:
    clock = Clock()
    faults = ClaimFaults(clock)
    faults.record(SHARD_ERROR, every_shard=True)
    assert faults.failing() is None  # not yet long enough
    clock.now += CLAIMS_FAILING_READY_S
    faults.record(SHARD_ERROR, every_shard=False)
    assert (failing := faults.failing()) is not None
    assert "shard 3: ERR script" in failing
    faults.record(ClaimBatch([], []), every_shard=False)  # some shards: says nothing of shard 3
    assert faults.failing() is not None
    faults.record(ClaimBatch([], []), every_shard=True)
    assert faults.failing() is None


def test_one_device_set_aside_is_not_a_readiness_failure_and_the_log_names_it_masked() -> None:
    clock = Clock()
    faults = ClaimFaults(clock)
    CLAIMS_FAILING.cleared()  # an episode another test left open would not start again
    with structlog.testing.capture_logs() as logs:
        faults.record(DEVICE_ERROR, every_shard=True)
    clock.now += CLAIMS_FAILING_READY_S * 2
    assert faults.failing() is None
    (started,) = [line for line in logs if line["event"] == "claims_failing"]
    assert started["where"] == f"shard 3 app:{mask_token(TOKEN)}"
    assert TOKEN not in str(logs)
