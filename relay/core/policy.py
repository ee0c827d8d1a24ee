"""The relay's delivery decision: one APNs answer (or transport failure) -> one typed outcome."""

from __future__ import annotations

import random
from dataclasses import dataclass

from relay.core.model import (
    ApnsResponse,
    Delivered,
    DeliveryOutcome,
    Expired,
    Failed,
    PauseApp,
    Retry,
)

# Reasons after which the token must not be used again for that app/environment (invariant 6).
DEAD_TOKEN_REASONS = frozenset(
    {"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered", "ExpiredToken"}
)
# 400s that mean the relay built a bad request: a relay bug or bad configuration worth an alert.
MALFORMED_REQUEST_REASONS = frozenset(
    {
        "BadCollapseId",
        "BadExpirationDate",
        "BadMessageId",
        "BadPriority",
        "BadTopic",
        "DuplicateHeaders",
        "InvalidPushType",
        "MissingTopic",
        "PayloadEmpty",
        "TopicDisallowed",
        "MissingDeviceToken",
    }
)
# 403s that a fresh token or a fresh connection cures; every other 403 pauses the app.
EXPIRED_PROVIDER_TOKEN = "ExpiredProviderToken"
UNRELATED_KEY_ID = "UnrelatedKeyIdInToken"
IDLE_TIMEOUT = "IdleTimeout"
TOO_MANY_PROVIDER_TOKEN_UPDATES = "TooManyProviderTokenUpdates"
# Apple: TooManyRequests may be retried "with a delay"; the same device is being pushed too fast,
# so waiting only the exponential backoff (half a second at first) would just earn another 429.
TOO_MANY_REQUESTS_MIN_DELAY_MS = 5_000
# Re-signing is what APNs objects to; the current token stays valid for up to an hour, so wait
# long enough for the 20-minute refresh window to matter less than the queue behind this device.
PROVIDER_TOKEN_UPDATES_DELAY_MS = 60_000
# Status 0 with this reason (then ":<TLS alert>"): the TLS handshake refused the client
# certificate (expired, revoked, not from Apple's CA). A credential fault like a 403.
CERTIFICATE_REFUSED = "CertificateRefused"
TRANSPORT_FAILURE_STATUS = 0
TRANSPORT_FAILURE_REASON = "TransportError"
# No answer because the connection itself went (dropped, or never made): every stream on it fails
# alike, so such a failure says nothing about the notification and never makes it a poison one.
CONNECTION_LOSS_REASONS = frozenset({"ConnectionClosed", "ConnectError", "ConnectTimeout"})
UNKNOWN_REASON = "Unknown"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_ms: int = 500
    cap_ms: int = 60_000
    max_attempts: int = 8


def backoff_ms(attempt: int, policy: RetryPolicy, rng: random.Random) -> int:
    """Full-jitter exponential backoff after the `attempt`-th attempt (1-based):
    uniform in [0, min(cap, base * 2**(attempt-1))]."""
    if attempt < 1:
        raise ValueError(f"attempt must be >= 1 (got {attempt})")
    # The exponent is bounded so a huge attempt count cannot build a huge integer.
    ceiling = min(policy.cap_ms, policy.base_ms * 2 ** min(attempt - 1, 62))
    return rng.randint(0, ceiling)


def is_route_failure(response: ApnsResponse) -> bool:
    """Whether an answer says the route (app, environment, endpoint) fails rather than this
    notification: a 5xx, a 429 other than TooManyProviderTokenUpdates (that one is about signing,
    not sending), or no answer at all."""
    if response.status == 429:
        return response.reason != TOO_MANY_PROVIDER_TOKEN_UPDATES
    return response.status == TRANSPORT_FAILURE_STATUS or response.status >= 500


def is_connection_loss(response: ApnsResponse) -> bool:
    lost = response.reason in CONNECTION_LOSS_REASONS
    return response.status == TRANSPORT_FAILURE_STATUS and lost


def classify(
    response: ApnsResponse,
    *,
    attempt: int,
    expires_at_s: int,
    now_ms: int,
    policy: RetryPolicy,
    rng: random.Random,
    route_delivered: bool = True,
) -> DeliveryOutcome:
    """What to do after the `attempt`-th attempt (1-based) got `response`.

    A Retry turns into Expired when the retry would not happen before `expires_at_s` (nothing is
    sent stale), and into Failed (reason kept) once `attempt` reaches `policy.max_attempts`, with
    one exception: a route failure (is_route_failure) when the route delivered nothing since this
    notification's previous attempt (`route_delivered` False). The route is failing then, not
    the notification, and only its lifetime bounds it: max_attempts is the guard against a
    poison notification, one that keeps failing while the same route delivers others. A lost
    connection (CONNECTION_LOSS_REASONS) fails every stream on it alike, so it never makes a
    notification poison either: only its lifetime bounds it too.
    """
    outcome = _outcome_for(response, attempt, policy, rng)
    if not isinstance(outcome, Retry):
        return outcome
    route_failing = is_route_failure(response) and not route_delivered
    if attempt >= policy.max_attempts and not (route_failing or is_connection_loss(response)):
        return Failed(reason=outcome.reason, status=outcome.status)
    if now_ms + outcome.delay_ms >= expires_at_s * 1000:
        return Expired()
    return outcome


def _outcome_for(
    response: ApnsResponse, attempt: int, policy: RetryPolicy, rng: random.Random
) -> DeliveryOutcome:
    """The policy table for Apple's answers ("Handling notification responses from APNs",
    developer.apple.com), before attempt and expiry limits."""
    status = response.status
    reason = response.reason or (
        TRANSPORT_FAILURE_REASON if status == TRANSPORT_FAILURE_STATUS else UNKNOWN_REASON
    )

    def with_backoff(floor_ms: int = 0) -> Retry:
        # The operator's cap bounds every wait, floors included.
        delay_ms = min(policy.cap_ms, floor_ms + backoff_ms(attempt, policy, rng))
        return Retry(reason=reason, status=status, delay_ms=delay_ms)

    if status == 200:
        return Delivered(apns_id=response.apns_id, apns_unique_id=response.apns_unique_id)
    if status == TRANSPORT_FAILURE_STATUS:
        if reason.startswith(f"{CERTIFICATE_REFUSED}:"):
            return PauseApp(reason=reason, status=status)
        return with_backoff()
    if status == 400:
        if reason == IDLE_TIMEOUT:
            return Retry(reason=reason, status=status, delay_ms=0)
        return Failed(reason=reason, status=status, dead_token=reason in DEAD_TOKEN_REASONS)
    if status == 403:
        if reason == EXPIRED_PROVIDER_TOKEN:
            return Retry(reason=reason, status=status, delay_ms=0, refresh_jwt=True)
        if reason == UNRELATED_KEY_ID:
            return Retry(reason=reason, status=status, delay_ms=0)
        return PauseApp(reason=reason, status=status)
    if status == 410:
        # 410 means the token is no longer active for the topic whatever the reason says.
        return Failed(
            reason=reason,
            status=status,
            dead_token=True,
            token_invalid_since_ms=response.timestamp_ms,
        )
    if status == 429:
        if reason == TOO_MANY_PROVIDER_TOKEN_UPDATES:
            delay_ms = min(policy.cap_ms, PROVIDER_TOKEN_UPDATES_DELAY_MS)
            return Retry(reason=reason, status=status, delay_ms=delay_ms)
        return with_backoff(TOO_MANY_REQUESTS_MIN_DELAY_MS)
    if status >= 500:
        return with_backoff()
    # 404, 405, 413 and any other status: retrying the same request cannot help.
    return Failed(reason=reason, status=status)
