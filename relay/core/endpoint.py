"""Where APNs is: Apple's hosts by environment, or a private endpoint (the simulator)."""

from __future__ import annotations

from dataclasses import dataclass

from relay.core.model import Route

PRODUCTION_HOST = "api.push.apple.com"
SANDBOX_HOST = "api.sandbox.push.apple.com"
APNS_PORT = 443


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int = APNS_PORT
    ca_file: str | None = None  # trust anchor for a private endpoint (the simulator)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def default_endpoint(environment: str) -> Endpoint:
    return Endpoint(SANDBOX_HOST if environment == "sandbox" else PRODUCTION_HOST)


def route_to(app: str, environment: str, endpoint: Endpoint) -> Route:
    """The route an app's pushes take: what a circuit is kept for, the one identity the worker's
    client and the stored circuits share."""
    return Route(app, environment, endpoint.address)
