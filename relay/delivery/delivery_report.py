"""What the delivery loop reports: outcome counts, the attempt log line, and claim faults.

The claim faults keep state of their own (which shards' claims fail, since when): readiness
reads it (ClaimFaults.failing)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

import structlog

from relay.core.model import (
    ApnsResponse,
    ClaimedNotification,
    Delivered,
    DeliveryOutcome,
    Expired,
    Failed,
    Retry,
)
from relay.core.redaction import mask_token
from relay.store.records import ClaimBatch, ClaimError
from relay.telemetry import metrics
from relay.telemetry.logs import RepeatedCondition

log = structlog.get_logger("relay.worker")
# Claims meeting script errors: an episode in the logs (started, summaries, ended), not a line
# per claim.
CLAIMS_FAILING = RepeatedCondition("claims_failing", log)
CLAIMS_FAILING_READY_S = 10.0


def count_outcome(
    claim: ClaimedNotification,
    outcome: DeliveryOutcome,
    known_actions: Mapping[str, frozenset[str]],
    now_s: float,
) -> None:
    app = claim.notification.app
    if isinstance(outcome, Delivered):
        action = metrics.action_label(
            known_actions.get(app, frozenset()), claim.notification.action
        )
        metrics.series(metrics.NOTIFICATIONS_DELIVERED, app, action).inc()
        metrics.series(metrics.DELIVERY_LATENCY, app).observe(
            max(0.0, now_s - claim.accepted_at_ms / 1000)
        )
    elif isinstance(outcome, Retry):
        metrics.NOTIFICATIONS_RETRIED.labels(app=app, reason=outcome.reason).inc()
    elif isinstance(outcome, Failed):
        metrics.NOTIFICATIONS_FAILED.labels(app=app, reason=outcome.reason).inc()
        if outcome.dead_token:
            metrics.DEAD_TOKENS_MARKED.labels(app=app, reason=outcome.reason).inc()
    elif isinstance(outcome, Expired):
        metrics.NOTIFICATIONS_EXPIRED.labels(app=app).inc()


def count_expired(batch: ClaimBatch) -> None:
    for record in batch.expired:
        metrics.NOTIFICATIONS_EXPIRED.labels(app=record.app).inc()
        log.info("notification_expired", id=record.id, app=record.app, at="claim")


def log_attempt(
    claim: ClaimedNotification,
    response: ApnsResponse,
    outcome: DeliveryOutcome,
    latency: float,
) -> None:
    notification = claim.notification
    log.info(
        "apns_attempt",
        id=claim.id,
        app=notification.app,
        token=mask_token(notification.device_token),
        service_id=notification.service_id,
        action=notification.action,
        attempt=claim.attempts + 1,
        status=response.status,
        reason=response.reason,
        apns_id=response.apns_id,
        apns_unique_id=response.apns_unique_id,
        latency_ms=round(latency * 1000, 2),
        outcome=type(outcome).__name__.lower(),
    )


def count_set_aside(errors: Iterable[ClaimError]) -> None:
    """Devices a claim or a settle set aside after a script error on them: counted and said (an
    episode of claims_failing naming each device, its token masked), never a readiness failure on
    their own."""
    for error in errors:
        metrics.CLAIM_ERRORS.labels(scope="device").inc()
        app, _, token = (error.device or "").rpartition(":")
        CLAIMS_FAILING.occurred(f"shard {error.shard} {app}:{mask_token(token)}", error.error)


class ClaimFaults:
    """Invariant 14: what one bad record or script error cost is counted and said, once each.
    A shard whose claim errored is failing until a claim of every shard finds it well (a claim
    of some shards says nothing of the others)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        # Shards whose claims error: since when, and the first error (readiness).
        self._failing_shards: dict[int, tuple[float, str]] = {}

    def record(self, batch: ClaimBatch, *, every_shard: bool) -> None:
        for malformed in batch.malformed:
            metrics.MALFORMED_RECORDS.labels(source="redis").inc()
            app, _, token = malformed.device.rpartition(":")
            log.error(
                "malformed_record_failed",
                id=malformed.id,
                app=app,
                token=mask_token(token),
                problem=malformed.problem,
            )
        now = self.clock()
        failed_now = set()
        count_set_aside(error for error in batch.errors if error.device is not None)
        for error in batch.errors:
            if error.device is None:
                metrics.CLAIM_ERRORS.labels(scope="shard").inc()
                CLAIMS_FAILING.occurred(f"shard {error.shard}", error.error)
                failed_now.add(error.shard)
                self._failing_shards.setdefault(error.shard, (now, error.error))
        if every_shard:
            for shard in set(self._failing_shards) - failed_now:
                del self._failing_shards[shard]
            if not batch.errors:
                CLAIMS_FAILING.cleared()

    def failing(self) -> str | None:
        """Readiness: why delivery is failing, when a shard's claims have errored for
        CLAIMS_FAILING_READY_S (a device set aside alone does not stop delivery: it is counted,
        logged and alerted on, not a readiness failure)."""
        if not self._failing_shards:
            return None
        since, error = min(self._failing_shards.values())
        failing_s = self.clock() - since
        if failing_s < CLAIMS_FAILING_READY_S:
            return None
        shards = ", ".join(str(shard) for shard in sorted(self._failing_shards))
        return f"claims failing for {failing_s:.0f} s on shard {shards}: {error}"
