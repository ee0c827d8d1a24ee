"""Delivery policy: every row of the APNs response table, backoff, attempt and expiry limits."""

from __future__ import annotations

import random

import pytest

from relay.core.model import (
    ApnsResponse,
    Delivered,
    DeliveryOutcome,
    Expired,
    Failed,
    PauseApp,
    Retry,
)
from relay.core.policy import (
    DEAD_TOKEN_REASONS,
    MALFORMED_REQUEST_REASONS,
    PROVIDER_TOKEN_UPDATES_DELAY_MS,
    TOO_MANY_REQUESTS_MIN_DELAY_MS,
    RetryPolicy,
    backoff_ms,
    classify,
)

NOW_MS = 1_700_000_000_000
FAR_EXPIRY_S = NOW_MS // 1000 + 86_400
POLICY = RetryPolicy(base_ms=500, cap_ms=60_000, max_attempts=8)


def decide(
    status: int,
    reason: str | None = None,
    *,
    attempt: int = 1,
    expires_at_s: int = FAR_EXPIRY_S,
    timestamp_ms: int | None = None,
    seed: int = 7,
) -> DeliveryOutcome:
    response = ApnsResponse(status=status, reason=reason, apns_id="a-1", timestamp_ms=timestamp_ms)
    return classify(
        response,
        attempt=attempt,
        expires_at_s=expires_at_s,
        now_ms=NOW_MS,
        policy=POLICY,
        rng=random.Random(seed),
    )


def test_200_is_delivered_with_the_apns_id() -> None:
    assert decide(200) == Delivered(apns_id="a-1")


@pytest.mark.parametrize("reason", sorted(MALFORMED_REQUEST_REASONS))
def test_malformed_request_fails_without_retry(reason: str) -> None:
    assert decide(400, reason) == Failed(reason=reason, status=400, dead_token=False)


@pytest.mark.parametrize("reason", ["BadDeviceToken", "DeviceTokenNotForTopic"])
def test_bad_token_400_fails_and_marks_the_token_dead(reason: str) -> None:
    assert decide(400, reason) == Failed(reason=reason, status=400, dead_token=True)


def test_idle_timeout_retries_at_once() -> None:
    assert decide(400, "IdleTimeout") == Retry(reason="IdleTimeout", status=400, delay_ms=0)


def test_unknown_400_reason_fails() -> None:
    assert decide(400, "SomethingNew") == Failed(reason="SomethingNew", status=400)


def test_expired_provider_token_retries_now_with_a_fresh_jwt() -> None:
    assert decide(403, "ExpiredProviderToken") == Retry(
        reason="ExpiredProviderToken", status=403, delay_ms=0, refresh_jwt=True
    )


def test_unrelated_key_id_retries_without_refresh() -> None:
    assert decide(403, "UnrelatedKeyIdInToken") == Retry(
        reason="UnrelatedKeyIdInToken", status=403, delay_ms=0, refresh_jwt=False
    )


@pytest.mark.parametrize(
    "reason",
    [
        "BadCertificate",
        "BadCertificateEnvironment",
        "Forbidden",
        "InvalidProviderToken",
        "MissingProviderToken",
        "BadEnvironmentKeyIdInToken",
        "BadEnvironmentKeyInToken",
        "SomeFutureCredentialProblem",
        None,
    ],
)
def test_credential_403_pauses_the_app(reason: str | None) -> None:
    assert decide(403, reason) == PauseApp(reason=reason or "Unknown", status=403)


def test_credential_pause_ignores_attempts_and_expiry() -> None:
    # Pausing keeps the notification queued; it must not be burnt as failed or expired.
    outcome = decide(403, "Forbidden", attempt=POLICY.max_attempts, expires_at_s=0)
    assert outcome == PauseApp(reason="Forbidden", status=403)


@pytest.mark.parametrize(("status", "reason"), [(404, "BadPath"), (405, "MethodNotAllowed")])
def test_bad_path_or_method_fails(status: int, reason: str) -> None:
    assert decide(status, reason) == Failed(reason=reason, status=status)


@pytest.mark.parametrize("reason", ["Unregistered", "ExpiredToken"])
def test_410_marks_the_token_dead_since_apples_timestamp(reason: str) -> None:
    outcome = decide(410, reason, timestamp_ms=1_650_000_000_123)
    assert outcome == Failed(
        reason=reason, status=410, dead_token=True, token_invalid_since_ms=1_650_000_000_123
    )


def test_410_without_timestamp_is_still_dead() -> None:
    assert decide(410, "Unregistered") == Failed(
        reason="Unregistered", status=410, dead_token=True, token_invalid_since_ms=None
    )


def test_payload_too_large_fails() -> None:
    assert decide(413, "PayloadTooLarge") == Failed(reason="PayloadTooLarge", status=413)


def test_too_many_requests_waits_at_least_the_floor() -> None:
    delays = []
    for seed in range(50):
        outcome = decide(429, "TooManyRequests", seed=seed)
        assert isinstance(outcome, Retry)
        assert (outcome.reason, outcome.status, outcome.refresh_jwt) == (
            "TooManyRequests",
            429,
            False,
        )
        delays.append(outcome.delay_ms)
    assert min(delays) >= TOO_MANY_REQUESTS_MIN_DELAY_MS >= 3_000
    assert max(delays) <= TOO_MANY_REQUESTS_MIN_DELAY_MS + POLICY.base_ms
    assert len(set(delays)) > 1  # jittered


def test_too_many_provider_token_updates_waits_long_and_does_not_resign() -> None:
    assert decide(429, "TooManyProviderTokenUpdates") == Retry(
        reason="TooManyProviderTokenUpdates",
        status=429,
        delay_ms=PROVIDER_TOKEN_UPDATES_DELAY_MS,
        refresh_jwt=False,
    )
    assert PROVIDER_TOKEN_UPDATES_DELAY_MS >= 30_000


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (500, "InternalServerError"),
        (503, "ServiceUnavailable"),
        (503, "Shutdown"),
        (502, None),
        (599, "Whatever"),
    ],
)
def test_server_errors_retry_with_backoff(status: int, reason: str | None) -> None:
    outcome = decide(status, reason, attempt=3)
    assert isinstance(outcome, Retry)
    assert outcome.status == status
    assert outcome.reason == (reason or "Unknown")
    assert 0 <= outcome.delay_ms <= 2_000  # base 500 * 2**2
    assert not outcome.refresh_jwt


@pytest.mark.parametrize("reason", ["Timeout", "ConnectionError", "ConnectionClosed", None])
def test_transport_failure_retries_with_backoff(reason: str | None) -> None:
    outcome = decide(0, reason, attempt=2)
    assert isinstance(outcome, Retry)
    assert outcome.reason == (reason or "TransportError")
    assert outcome.status == 0
    assert 0 <= outcome.delay_ms <= 1_000


@pytest.mark.parametrize("status", [401, 418, 422, 451, 201, 302])
def test_unknown_non_5xx_statuses_fail(status: int) -> None:
    assert decide(status, "Odd") == Failed(reason="Odd", status=status)


def test_retry_becomes_failed_at_max_attempts_keeping_the_reason() -> None:
    assert isinstance(decide(503, "ServiceUnavailable", attempt=POLICY.max_attempts - 1), Retry)
    assert decide(503, "ServiceUnavailable", attempt=POLICY.max_attempts) == Failed(
        reason="ServiceUnavailable", status=503
    )
    assert decide(403, "ExpiredProviderToken", attempt=POLICY.max_attempts) == Failed(
        reason="ExpiredProviderToken", status=403
    )


def test_retry_that_would_reach_expiry_is_expired() -> None:
    immediate_expiry = NOW_MS // 1000  # the retry at delay 0 would be exactly at expiry
    assert decide(400, "IdleTimeout", expires_at_s=immediate_expiry) == Expired()
    assert decide(400, "IdleTimeout", expires_at_s=immediate_expiry + 1) == Retry(
        reason="IdleTimeout", status=400, delay_ms=0
    )
    # TooManyRequests waits >= 5 s: an expiry 3 s away cannot be met.
    assert decide(429, "TooManyRequests", expires_at_s=NOW_MS // 1000 + 3) == Expired()


def test_final_outcomes_ignore_expiry() -> None:
    assert decide(200, expires_at_s=0) == Delivered(apns_id="a-1")
    assert decide(410, "Unregistered", expires_at_s=0) == Failed(
        reason="Unregistered", status=410, dead_token=True
    )


def test_exported_reason_sets() -> None:
    assert {
        "BadDeviceToken",
        "DeviceTokenNotForTopic",
        "Unregistered",
        "ExpiredToken",
    } == DEAD_TOKEN_REASONS
    assert "BadTopic" in MALFORMED_REQUEST_REASONS
    assert not MALFORMED_REQUEST_REASONS & DEAD_TOKEN_REASONS
    assert "IdleTimeout" not in MALFORMED_REQUEST_REASONS


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(1, 500), (2, 1_000), (3, 2_000), (8, 60_000), (500, 60_000)]
)
def test_backoff_is_full_jitter_under_the_capped_exponential(attempt: int, ceiling: int) -> None:
    rng = random.Random(attempt)
    draws = [backoff_ms(attempt, POLICY, rng) for _ in range(400)]
    assert all(0 <= draw <= ceiling for draw in draws)
    # Full jitter spreads over the whole range, not just near the ceiling.
    assert min(draws) < ceiling * 0.1
    assert max(draws) > ceiling * 0.9


def test_backoff_is_reproducible_from_the_rng() -> None:
    first = [backoff_ms(4, POLICY, random.Random(1)) for _ in range(3)]
    assert first == [backoff_ms(4, POLICY, random.Random(1)) for _ in range(3)]


def test_backoff_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError, match="attempt must be >= 1"):
        backoff_ms(0, POLICY, random.Random(0))


@pytest.mark.parametrize("reason", ["TooManyRequests", "TooManyProviderTokenUpdates"])
def test_the_configured_cap_bounds_every_wait_floors_included(reason: str) -> None:
    tight = RetryPolicy(base_ms=20, cap_ms=200, max_attempts=8)
    outcome = classify(
        ApnsResponse(status=429, reason=reason),
        attempt=1,
        expires_at_s=FAR_EXPIRY_S,
        now_ms=NOW_MS,
        policy=tight,
        rng=random.Random(1),
    )
    assert isinstance(outcome, Retry)
    assert outcome.delay_ms <= tight.cap_ms
