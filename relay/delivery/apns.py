"""The APNs client of one app: sends with a deadline, again at once when APNs did not process a
request, and rotates credentials; a refused client certificate is told from a transport failure.

It runs on relay.delivery.apns_adapter's connection pool (every aioapns deviation lives there)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

import structlog

from relay.core.endpoint import Endpoint, route_to
from relay.core.model import ApnsResponse, Notification
from relay.core.policy import CERTIFICATE_REFUSED
from relay.credentials.model import CertificateCredentials, Credentials, TokenCredentials
from relay.delivery.apns_adapter import (
    DEFAULT_INTERNAL_ERROR_STREAK,
    RelayConnectionPool,
    SharedJWT,
)
from relay.telemetry import metrics

log = structlog.get_logger("relay.apns")

# Sends of one request that APNs never processed (GOAWAY above last_stream_id, a retired
# connection) made again at once on another connection, within the request's deadline.
UNPROCESSED_RESENDS = 3
CLOSE_TIMEOUT_S = 5.0  # how long close() waits for connections to end (TLS close_notify)


def make_ssl_context(endpoint: Endpoint, credentials: Credentials) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=endpoint.ca_file)
    context.set_alpn_protocols(["h2"])
    if isinstance(credentials, CertificateCredentials):
        credentials.certificate.load_into(context)
    return context


# TLS alerts by which a server refuses the client certificate (OpenSSL's reason names). APNs
# refuses an expired, revoked or foreign certificate in the handshake, before any HTTP/2 frame.
CERTIFICATE_REFUSAL_ALERTS = frozenset(
    {
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_ACCESS_DENIED",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
    }
)


def connect_failure(exc: OSError) -> ApnsResponse:
    """The status-0 answer for a connection that could not be made: a refused client
    certificate is a credential fault (CertificateRefused:<alert>, which pauses the app);
    anything else is a transport failure, retried."""
    alert = getattr(exc, "reason", None)
    if isinstance(exc, ssl.SSLError) and alert in CERTIFICATE_REFUSAL_ALERTS:
        return ApnsResponse(0, f"{CERTIFICATE_REFUSED}:{alert}")
    return ApnsResponse(0, "ConnectError")


class ApnsClient:
    """Sends one app's notifications; every call returns an ApnsResponse by its deadline."""

    def __init__(
        self,
        app: str,
        topic: str,
        endpoint: Endpoint,
        credentials: Credentials,
        *,
        environment: str = "production",
        request_timeout_s: float = 10.0,
        max_connections: int = 4,
        max_in_flight: int = 1000,
        internal_error_streak: int = DEFAULT_INTERNAL_ERROR_STREAK,
        counted: bool = True,
    ) -> None:
        self.app = app
        # A check's probe client is not counted: its answers and connections are no delivery.
        self.counted = counted
        self.route = route_to(app, environment, endpoint)
        self.endpoint = endpoint
        self.request_timeout_s = request_timeout_s
        self.credentials = credentials
        self.pool = RelayConnectionPool(
            app,
            topic,
            endpoint,
            make_ssl_context(endpoint, credentials),
            max_connections,
            internal_error_streak,
            self._provider_token(credentials),
            counted=counted,
        )
        self.max_in_flight = max_in_flight
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self._in_flight_gauge = metrics.APNS_IN_FLIGHT.labels(app=app)
        self._duration = metrics.APNS_REQUEST_DURATION.labels(app=app)

    async def send(
        self,
        notification: Notification,
        apns_id: str,
        on_wire: Callable[[], None] = lambda: None,
    ) -> ApnsResponse:
        """Send once; `on_wire` is called when the request is about to leave (from then on it
        may reach the phone, so a shutdown must let it finish rather than take it back)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.request_timeout_s
        async with self._in_flight:
            if self.counted:
                self._in_flight_gauge.inc()
            try:
                response = await self._send(notification, apns_id, deadline, on_wire)
            finally:
                if self.counted:
                    self._in_flight_gauge.dec()
        if not self.counted:
            return response
        self._duration.observe(loop.time() - started)
        metrics.series(
            metrics.APNS_RESPONSES, self.app, str(response.status), response.reason or ""
        ).inc()
        return response

    async def _send(
        self,
        notification: Notification,
        apns_id: str,
        deadline: float,
        on_wire: Callable[[], None],
    ) -> ApnsResponse:
        """One attempt: sent again at once, on another connection, while APNs says it did not
        process it (no attempt is spent on what never reached it)."""
        response = await self._send_once(notification, apns_id, deadline, on_wire)
        for _ in range(UNPROCESSED_RESENDS):
            if not response.unprocessed:
                break
            metrics.APNS_UNPROCESSED_RESENDS.labels(
                app=self.app, reason=response.reason or ""
            ).inc()
            response = await self._send_once(notification, apns_id, deadline, on_wire)
        return response

    async def _send_once(
        self,
        notification: Notification,
        apns_id: str,
        deadline: float,
        on_wire: Callable[[], None],
    ) -> ApnsResponse:
        loop = asyncio.get_running_loop()
        # An open connection with a free stream is taken at once, without the deadline's timer
        # (armed and cancelled on every send, it was most of this method's cost).
        connection = self.pool.least_loaded()
        if connection is None:
            try:
                async with asyncio.timeout_at(deadline):
                    connection = await self.pool.acquire()
            except TimeoutError:
                return ApnsResponse(0, "ConnectTimeout")
            except OSError as exc:
                log.warning("apns_connect_failed", app=self.app, error=str(exc))
                return connect_failure(exc)
        if loop.time() >= deadline:
            return ApnsResponse(0, "ConnectTimeout")
        # The connection's own token: one opened before a rotation keeps the key it is bound to.
        authorization = connection.jwt.get_header() if connection.jwt else None
        return await connection.send_raw(notification, apns_id, deadline, authorization, on_wire)

    def _provider_token(self, credentials: Credentials) -> SharedJWT | None:
        if isinstance(credentials, TokenCredentials):
            return SharedJWT(credentials, self.app, counted=self.counted)
        return None

    def replace_credentials(self, credentials: Credentials) -> None:
        """Rotate: new connections use `credentials` (a new provider token, or a TLS context with
        the new certificate); the open ones finish their streams and close."""
        context = make_ssl_context(self.endpoint, credentials)
        self.credentials = credentials
        self.pool.replace_credentials(context, self._provider_token(credentials))

    @property
    def jwt(self) -> SharedJWT | None:
        """The provider token new connections send (None with a certificate)."""
        return self.pool.jwt

    def refresh_jwt(self) -> bool:
        return self.jwt.force_refresh() if self.jwt else False

    @property
    def connections(self) -> int:
        return len(self.pool.connections)

    async def close(self) -> None:
        await self.pool.close_all(CLOSE_TIMEOUT_S)
