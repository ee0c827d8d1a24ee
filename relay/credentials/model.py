"""Where APNs is and what the relay authenticates with: plain data, one definition for settings
(relay.config.schema builds these from its sections) and delivery (the client sends with them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.credentials.client_certificate import ClientCertificate

PRODUCTION_HOST = "api.push.apple.com"
SANDBOX_HOST = "api.sandbox.push.apple.com"
APNS_PORT = 443


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int = APNS_PORT
    ca_file: str | None = None  # trust anchor for a private endpoint (the simulator)


@dataclass(frozen=True, slots=True)
class TokenCredentials:
    key_pem: str
    key_id: str
    team_id: str


@dataclass(frozen=True, slots=True)
class CertificateCredentials:
    certificate: ClientCertificate


Credentials = TokenCredentials | CertificateCredentials


def default_endpoint(environment: str) -> Endpoint:
    return Endpoint(SANDBOX_HOST if environment == "sandbox" else PRODUCTION_HOST)
