"""Where APNs is: Apple's hosts by environment, or a private endpoint (the simulator)."""

from __future__ import annotations

from dataclasses import dataclass

PRODUCTION_HOST = "api.push.apple.com"
SANDBOX_HOST = "api.sandbox.push.apple.com"
APNS_PORT = 443


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int = APNS_PORT
    ca_file: str | None = None  # trust anchor for a private endpoint (the simulator)


def default_endpoint(environment: str) -> Endpoint:
    return Endpoint(SANDBOX_HOST if environment == "sandbox" else PRODUCTION_HOST)
