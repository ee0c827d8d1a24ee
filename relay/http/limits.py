"""Limits on requests: the server's timeouts and sizes, and a token bucket per credential."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ApiLimits:
    """Limits on requests beside the configured body size and request rate."""

    body_read_timeout_s: float = 10.0  # slow clients: the whole body must arrive by then
    # A connection must deliver a complete request head this soon after opening or after its
    # last response, else it is closed (aiohttp's keep-alive timer; bounds slow headers too).
    idle_timeout_s: float = 15.0
    # After an early answer (413, 408) aiohttp reads and drops the rest of the body this long,
    # so the client sees the answer rather than a reset; a slow client is then cut off.
    linger_s: float = 2.0
    max_request_line_bytes: int = 8190
    max_header_bytes: int = 8190  # one header line
    max_headers: int = 64


@dataclass
class TokenBucket:
    """`rate` requests a second on average, `capacity` at once; time is given, not read."""

    rate: float
    capacity: float
    tokens: float
    updated_s: float

    def take(self, now_s: float) -> float:
        """Spend one request: 0.0 when allowed, else the seconds until one is allowed."""
        elapsed = max(0.0, now_s - self.updated_s)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.updated_s = now_s
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RequestRates:
    """One token bucket per credential (their number is fixed by the configuration)."""

    def __init__(self, requests_per_second: float | None, burst: int | None) -> None:
        self.rate = requests_per_second
        self.capacity = float(burst or math.ceil(requests_per_second or 1))
        self.buckets: dict[str, TokenBucket] = {}

    def wait_s(self, credential: str, now_s: float) -> float:
        """0.0 when `credential` may make a request now, else how long it must wait."""
        if self.rate is None:
            return 0.0
        bucket = self.buckets.get(credential)
        if bucket is None:
            bucket = self.buckets[credential] = TokenBucket(
                self.rate, self.capacity, self.capacity, now_s
            )
        return bucket.take(now_s)
