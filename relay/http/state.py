"""What the handlers share: the relay's state on the application, the grant on each request."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from relay.config.schema import Settings
from relay.http.auth import Credentials, Grant
from relay.http.check_runs import CheckRuns
from relay.http.limits import AddressRates, ApiLimits, RequestRates
from relay.ingest.hold import Ingest
from relay.store.connection import ReplicaAcknowledgement
from relay.store.memory import MemoryWatch
from relay.store.queue import RelayQueue
from relay.store.spool import Spool


@dataclass
class RelayState:
    """What the handlers share: settings, the queue, and the process's own condition."""

    settings: Settings
    queue: RelayQueue
    credentials: Credentials
    draining: bool = False
    paused_apps: Callable[[], Mapping[str, str]] = dict
    gauges_read_at: float = 0.0
    extra_ready_checks: list[Callable[[], str | None]] = field(default_factory=list)
    limits: ApiLimits = field(default_factory=ApiLimits)
    replicas: ReplicaAcknowledgement | None = None  # redis.ack_replicas: WAIT before a 2xx
    spool: Spool | None = None  # ingest.spool_dir: where pushes wait out a Redis outage
    memory: MemoryWatch | None = None  # Redis memory: the policy, the high watermark
    checks: CheckRuns = field(default_factory=CheckRuns)  # GET /v1/apps/{app}/check
    # Per client address: the Live Activity registrations every install of an app may make.
    registration_rates: AddressRates = field(default_factory=AddressRates)
    rates: RequestRates = field(init=False)
    ingest: Ingest = field(init=False)

    def __post_init__(self) -> None:
        auth = self.settings.auth
        self.rates = RequestRates(auth.requests_per_second, auth.burst)
        self.ingest = Ingest(
            self.queue,
            hold_s=self.settings.ingest.hold_seconds,
            spool=self.spool,
            replicas=self.replicas,
            memory=self.memory,
        )


STATE = web.AppKey("relay_state", RelayState)
GRANT = web.RequestKey("relay_grant", Grant)
