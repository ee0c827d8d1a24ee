"""An app's APNs client, built from its settings and credentials (the workers' and the check's)."""

from __future__ import annotations

from relay.config.schema import App, Settings
from relay.credentials.files import load_credentials, publish_certificate_expiry
from relay.credentials.model import CertificateCredentials
from relay.credentials.model import Credentials as SendingCredentials
from relay.delivery import apns


def make_client(
    app: App,
    settings: Settings,
    credentials: SendingCredentials | None = None,
    *,
    counted: bool = True,
) -> apns.ApnsClient:
    """The app's APNs client, with `credentials` (already read) or those its files hold now;
    `counted` False for a check's probe (not in the delivery metrics)."""
    if credentials is None:
        credentials = load_credentials(app)
    if isinstance(credentials, CertificateCredentials):
        publish_certificate_expiry(app.name, credentials.certificate)
    return apns.ApnsClient(
        app.name,
        app.topic,
        app.apns_endpoint(),
        credentials,
        environment=app.environment,
        request_timeout_s=settings.delivery.request_timeout_seconds,
        max_connections=app.max_connections,
        internal_error_streak=settings.delivery.connection_internal_error_streak,
        counted=counted,
    )
