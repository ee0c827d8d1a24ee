"""What the relay authenticates to APNs with: plain data, one definition for the credentials
layer (relay.credentials.files reads them from an app's settings) and delivery (the client sends
with them). Where APNs is: relay.core.endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relay.credentials.client_certificate import ClientCertificate


@dataclass(frozen=True, slots=True)
class TokenCredentials:
    key_pem: str
    key_id: str
    team_id: str


@dataclass(frozen=True, slots=True)
class CertificateCredentials:
    certificate: ClientCertificate


Credentials = TokenCredentials | CertificateCredentials
