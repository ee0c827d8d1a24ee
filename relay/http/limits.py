"""Limits on requests: the server's timeouts and sizes, a token bucket per credential, and one
per client address on the routes every install of an app may call."""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


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


# Buckets kept for client addresses at most: past it, the ones full again are forgotten, and while
# none is, a new address waits (an address flood cannot grow the process's memory).
MAX_ADDRESS_BUCKETS = 100_000


class AddressRates:
    """One token bucket per key (an app and a client address), each call giving its rate."""

    def __init__(self, max_buckets: int = MAX_ADDRESS_BUCKETS) -> None:
        self.max_buckets = max_buckets
        self.buckets: dict[str, TokenBucket] = {}

    def wait_s(self, key: str, rate: float, capacity: float, now_s: float) -> float:
        """0.0 when `key` may make a request now, else how long it must wait."""
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.max_buckets:
                self._forget_full(now_s)
            if len(self.buckets) >= self.max_buckets:
                return 1.0 / rate
            bucket = self.buckets[key] = TokenBucket(rate, capacity, capacity, now_s)
        return bucket.take(now_s)

    def _forget_full(self, now_s: float) -> None:
        """Drop the buckets that have refilled: forgetting them changes no answer."""
        full = [
            key
            for key, bucket in self.buckets.items()
            if bucket.tokens + (now_s - bucket.updated_s) * bucket.rate >= bucket.capacity
        ]
        for key in full:
            del self.buckets[key]


def client_address(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[IpNetwork]
) -> str:
    """The address a request came from: the peer's, unless the peer is a trusted proxy
    (http.trusted_proxies); then the last address in X-Forwarded-For that is not one."""
    address = peer or "unknown"
    if not trusted or not _within(address, trusted):
        return address
    for hop in reversed((forwarded_for or "").split(",")):
        hop = hop.strip()
        if not hop:
            continue
        if not _within(hop, trusted):
            return hop if _parses(hop) else address
        address = hop
    return address


def _parses(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _within(text: str, networks: Sequence[IpNetwork]) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return any(address in network for network in networks)
