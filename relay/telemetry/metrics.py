"""Prometheus metrics: every metric the relay exports, declared once here."""

from __future__ import annotations

import functools
import platform
from collections.abc import Collection, Iterable
from typing import TypeVar, cast

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from relay import __version__

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_E2E_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

# Ingest
EVENTS_RECEIVED = Counter(
    "apns_relay_events_received_total",
    "Push events received, by source (gms, api, batch), outcome and refusal reason",
    ["source", "outcome", "reason"],
)
NOTIFICATIONS_ENQUEUED = Counter(
    "apns_relay_notifications_enqueued_total", "Notifications durably queued", ["app"]
)

LIVE_ACTIVITY_PUSHES = Counter(
    "apns_relay_live_activity_pushes_total",
    "Live Activity pushes a GMS callback event asked for, by event (start, update, end) and "
    "outcome (queued, stale: older than the last one sent, dead-token, failed)",
    ["app", "event", "outcome"],
)

# Delivery
NOTIFICATIONS_DELIVERED = Counter(
    "apns_relay_notifications_delivered_total",
    "Notifications accepted by APNs (200), by app and action (action_label)",
    ["app", "action"],
)
NOTIFICATIONS_FAILED = Counter(
    "apns_relay_notifications_failed_total",
    "Notifications that reached the failed state, by APNs reason",
    ["app", "reason"],
)
NOTIFICATIONS_EXPIRED = Counter(
    "apns_relay_notifications_expired_total", "Notifications dropped unsent at expiry", ["app"]
)
NOTIFICATIONS_SUPERSEDED = Counter(
    "apns_relay_notifications_superseded_total",
    "Queued notifications replaced by a newer one for the same device and service",
    ["app"],
)
NOTIFICATIONS_RETRIED = Counter(
    "apns_relay_notifications_retried_total",
    "Attempts scheduled for retry, by reason",
    ["app", "reason"],
)
APNS_RESPONSES = Counter(
    "apns_relay_apns_responses_total",
    "APNs answers (status 0: no answer: timeout or connection failure)",
    ["app", "status", "reason"],
)
APNS_REQUEST_DURATION = Histogram(
    "apns_relay_apns_request_duration_seconds",
    "Time from sending a request to APNs to its answer",
    ["app"],
    buckets=_LATENCY_BUCKETS,
)
DELIVERY_LATENCY = Histogram(
    "apns_relay_delivery_latency_seconds",
    "End-to-end latency: accepted at ingest to APNs 200",
    ["app"],
    buckets=_E2E_BUCKETS,
)
APNS_IN_FLIGHT = Gauge(
    "apns_relay_apns_in_flight_requests", "Requests sent to APNs awaiting an answer", ["app"]
)
APNS_CONNECTIONS = Gauge("apns_relay_apns_connections", "Open HTTP/2 connections to APNs", ["app"])
APNS_CONNECTIONS_REPLACED = Counter(
    "apns_relay_apns_connections_replaced_total",
    "APNs connections closed for health (a streak of 500s, stalled streams)",
    ["reason"],
)
APNS_UNPROCESSED_RESENDS = Counter(
    "apns_relay_apns_unprocessed_resends_total",
    "Requests APNs never processed (above GOAWAY's last_stream_id, a retired connection), sent"
    " again at once without spending an attempt",
    ["app", "reason"],
)
DEAD_TOKENS_MARKED = Counter(
    "apns_relay_dead_tokens_marked_total",
    "Device tokens marked dead, by APNs reason",
    ["app", "reason"],
)
APP_PAUSED = Gauge(
    "apns_relay_app_paused", "1 while sending for an app is paused on a credential error", ["app"]
)
CREDENTIAL_EXPIRY = Gauge(
    "apns_relay_credential_expiry_timestamp_seconds",
    "When the app's APNs client certificate expires (Unix time); token keys do not expire",
    ["app"],
)
CREDENTIAL_RELOADS = Counter(
    "apns_relay_credential_reloads_total",
    "Credential reloads (SIGHUP, a changed file) per app, by outcome: rotated (new connections"
    " use the new key or certificate), unchanged, rejected (invalid: the old ones are kept)",
    ["app", "outcome"],
)
CREDENTIAL_RELOAD_OUTCOMES = ("rotated", "unchanged", "rejected")
ROUTE_STATE = Gauge(
    "apns_relay_route_state",
    "A route's circuit as this worker last read it: 0 closed (sending), 1 open (parked, probing"
    " at intervals), 2 half-open (one probe in flight)",
    ["app", "environment"],
)
ROUTE_STATE_VALUES = {"closed": 0, "open": 1, "half-open": 2}
ROUTE_TRANSITIONS = Counter(
    "apns_relay_route_transitions_total",
    "Route circuit state changes, counted once across all workers (by the one that made it)",
    ["app", "environment", "to"],
)
JWT_REFRESHES = Counter("apns_relay_jwt_refreshes_total", "Provider tokens (JWT) signed", ["app"])

# Queue state, read from Redis so that every replica reports the same truth.
QUEUE_PENDING = Gauge(
    "apns_relay_queue_pending_notifications", "Accepted notifications not yet in a final state"
)
QUEUE_DEVICES_PENDING = Gauge(
    "apns_relay_queue_devices_pending", "Devices with at least one pending notification"
)
QUEUE_OLDEST_AGE = Gauge(
    "apns_relay_queue_oldest_pending_age_seconds", "Age of the oldest pending notification"
)

# The api's local spool (this process's; relay.store.spool)
SPOOL_NOTIFICATIONS = Gauge(
    "apns_relay_spool_notifications",
    "Notifications answered from this api's local spool and not yet stored in Redis",
)
MALFORMED_RECORDS = Counter(
    "apns_relay_malformed_records_total",
    "Records that broke ingest's rules where they were read back, quarantined or failed "
    "(MalformedRecord) instead of sent: source spool (kept in spool.quarantine) or redis (also "
    "a push refused because a key of its device is of another type)",
    ["source"],
)
CLAIM_ERRORS = Counter(
    "apns_relay_claim_errors_total",
    "Claims that met an error in Redis's scripts, by scope: shard (the shard's claim failed; "
    "the other shards were claimed) or device (one device set aside for a minute, at its claim or "
    "its settle)",
    ["scope"],
)
SPOOL_BYTES = Gauge("apns_relay_spool_bytes", "Size of this api's spool file")
SPOOL_OLDEST_AGE = Gauge(
    "apns_relay_spool_oldest_age_seconds", "Age of the oldest notification in this api's spool"
)
SPOOL_REPLAYED = Counter(
    "apns_relay_spool_replayed_total", "Spooled notifications stored in Redis by the replay"
)
SPOOL_REFUSED = Counter(
    "apns_relay_spool_refused_total",
    "Notifications the spool could not take (spool_full: answered 503) or Redis refused for"
    " good at replay (device_token_dead: answered 200 earlier, never sent)",
    ["reason"],
)
INGEST_HELD = Counter(
    "apns_relay_ingest_held_total",
    "Pushes that did not go straight into Redis: stored after waiting for it, spooled (after"
    " the hold, refused for memory, above the memory watermark, or behind their device's"
    " spooled pushes), or refused (no spool)",
    ["outcome"],
)
INGEST_GROUPS_CUT = Counter(
    "apns_relay_ingest_groups_cut_total",
    "Groups of concurrent pushes whose one enqueue call failed part-way (a record the script"
    " could not handle, Redis full between two shards' scripts): each member then looked for its"
    " own record and was stored alone when it was not there",
)

# Redis
REDIS_LIBRARY_REFUSED = Counter(
    "apns_relay_redis_library_refused_total",
    "Times Redis refused to load the scripts' library at maxmemory (the calls then ran as EVAL"
    " scripts: start a new relay version while Redis has room)",
)
REDIS_SCRIPT_CALLS = Counter(
    "apns_relay_redis_script_calls_total",
    "Lua scripts this process sent to Redis (FCALL, a resend after loading the library"
    " included), by script",
    ["script"],
)

# Redis memory, each primary's as this process last read it (INFO memory, about once a second)
REDIS_MEMORY_USED = Gauge(
    "apns_relay_redis_memory_used_bytes", "Memory the Redis primary uses (used_memory)", ["node"]
)
REDIS_MEMORY_MAX = Gauge(
    "apns_relay_redis_memory_max_bytes",
    "The Redis primary's maxmemory (0: no limit: it grows until the host runs out)",
    ["node"],
)
REDIS_MAXMEMORY_POLICY = Gauge(
    "apns_relay_redis_maxmemory_policy_info",
    "The Redis primary's maxmemory-policy (always 1; allkeys-* evicts queued work: refused)",
    ["node", "policy"],
)
REDIS_MEMORY_WATERMARK = Gauge(
    "apns_relay_redis_memory_watermark",
    "1 while a Redis primary uses at least redis.memory_watermark of its maxmemory (new pushes"
    " then go to the spool, leaving the last memory to draining)",
)
HISTORY_TRIMMED = Counter(
    "apns_relay_history_trimmed_total",
    "Final records the relay gave up before their retention ran out (oldest first, while Redis"
    " was above its memory watermark), so that history never crowds out queued work",
)

# HTTP
HTTP_REQUESTS = Counter(
    "apns_relay_http_requests_total", "HTTP requests served", ["route", "method", "status"]
)
HTTP_REQUEST_DURATION = Histogram(
    "apns_relay_http_request_duration_seconds",
    "HTTP request handling time",
    ["route"],
    buckets=_LATENCY_BUCKETS,
)

# Delivery receipts (relay.core.receipts): the phone's word that it showed an alert
RECEIPTS = Counter(
    "apns_relay_receipts_total",
    "Delivery receipts posted by phones, by app, action and outcome (recorded, replayed, forged,"
    " malformed, stale, rate_limited); app and action are 'unknown' until a receipt's MAC names"
    " them",
    ["app", "action", "outcome"],
)
RECEIPT_LATENCY = Histogram(
    "apns_relay_receipt_latency_seconds",
    "Accepted at ingest to the phone's receipt (first receipt per notification)",
    ["app"],
    buckets=(*_E2E_BUCKETS, 1800, 3600, 4 * 3600, 24 * 3600),
)

BUILD_INFO = Gauge("apns_relay_build_info", "Build information (always 1)", ["version", "python"])
BUILD_INFO.labels(version=__version__, python=platform.python_version()).set(1)


OTHER_ACTION = "other"


def action_label(known: Collection[str], action: str | None) -> str:
    """A push's `_action` as a metric label: one its app's configuration names (`known`), "none"
    without one, else "other", so that what GMS sends cannot grow the series without bound."""
    if action is None:
        return "none"
    return action if action in known else OTHER_ACTION


def prime_app_series(apps: Iterable[str], *, ingest: bool, delivery: bool) -> None:
    """Export each app's series at 0 from the start: rate() and alerts need a first sample, and
    a dashboard should show "none yet" rather than "no data". Reason-labelled series cannot be
    known in advance and appear with their first event."""
    if ingest:
        for outcome in ("stored", "spooled", "refused"):
            INGEST_HELD.labels(outcome=outcome)
        SPOOL_REFUSED.labels(reason="spool_full")
        MALFORMED_RECORDS.labels(source="spool")
    if delivery:
        MALFORMED_RECORDS.labels(source="redis")
        for scope in ("shard", "device"):
            CLAIM_ERRORS.labels(scope=scope)
    for app in apps:
        if ingest:
            NOTIFICATIONS_ENQUEUED.labels(app=app)
            NOTIFICATIONS_SUPERSEDED.labels(app=app)
        if delivery:
            NOTIFICATIONS_DELIVERED.labels(app=app, action=OTHER_ACTION)
            NOTIFICATIONS_EXPIRED.labels(app=app)
            DELIVERY_LATENCY.labels(app=app)
            APNS_REQUEST_DURATION.labels(app=app)
            APNS_IN_FLIGHT.labels(app=app)
            APNS_CONNECTIONS.labels(app=app)
            APP_PAUSED.labels(app=app)
            JWT_REFRESHES.labels(app=app)
            for outcome in CREDENTIAL_RELOAD_OUTCOMES:
                CREDENTIAL_RELOADS.labels(app=app, outcome=outcome)


Metric = TypeVar("Metric", bound=MetricWrapperBase)


def series(metric: Metric, *values: str | int) -> Metric:
    """metric.labels(*values), looked up once per label set: labels() costs 2-4 µs a call and a
    request's path calls it four times. For metrics whose series are never removed."""
    return cast(Metric, _series(metric, *values))


@functools.cache
def _series(metric: MetricWrapperBase, *values: str | int) -> MetricWrapperBase:
    return metric.labels(*values)
