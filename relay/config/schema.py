"""The settings' schema: one pydantic model per section of the YAML file, validated into types.

Over 450 lines, on purpose: the settings file's whole schema, each section's model with its
validators beside it, read, validated and documented together as config/relay.example.yaml lays
them out. Loading (file, RELAY_* overrides) is relay.config.loading; the wording of a problem,
relay.config.wording. What the sections feed is kept elsewhere as plain data
(relay.core.app_profile, relay.core.endpoint, relay.core.alerts)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from relay.config.secret_files import KEY_FILE_MAX_BYTES
from relay.config.topology import cluster_url, parse_address, parse_redis_url, sentinel_url
from relay.core.alerts import DEFAULT_ALERTS, AlertTemplate
from relay.core.app_profile import DEFAULT_CHAT_ACTION, AppProfile
from relay.core.circuit import CircuitPolicy
from relay.core.endpoint import Endpoint, default_endpoint
from relay.core.fields import APP_NAME_PATTERN, MAX_APP_NAME_CHARS, validate_action
from relay.core.model import PUSH_TYPES, InvalidInput
from relay.core.policy import RetryPolicy
from relay.core.quoting import shown
from relay.core.receipts import MIN_SECRET_BYTES, ReceiptSecrets

# An app's name: the rule is relay.core.fields' (requests name apps by it too).
AppName = Annotated[str, Field(pattern=APP_NAME_PATTERN, max_length=MAX_APP_NAME_CHARS)]
# Apple's bundle id alphabet: letters, digits, hyphens and periods.
BUNDLE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9.-]*$"
APPLE_ID_PATTERN = r"^[A-Z0-9]{10}$"
MAX_PORT = 65535

# The validation context's keys (relay.config.loading sets them): the directory relative paths in
# a file are resolved against, and the environment variables (password_env is read from them).
CONTEXT_BASE_DIR = "base_dir"
CONTEXT_ENV = "env"


class ConfigError(Exception):
    """The configuration cannot be used; `problems` holds one line per bad key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))
        self.problems = problems


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _readable_file(value: Path, info: ValidationInfo) -> Path:
    """Resolve a path against the config file's directory and insist it can be read now,
    so a wrong mount fails at start-up rather than at the first push."""
    base_dir = (info.context or {}).get(CONTEXT_BASE_DIR)
    path = value if value.is_absolute() or base_dir is None else Path(base_dir) / value
    if not path.exists():
        raise ValueError(f"no such file: {path}")
    if not path.is_file():  # a FIFO would block the first read: refused here already
        raise ValueError(f"not a regular file: {path}")
    if not os.access(path, os.R_OK):
        raise ValueError(f"file is not readable: {path}")
    return path


def _readable_optional(value: Path | None, info: ValidationInfo) -> Path | None:
    return None if value is None else _readable_file(value, info)


Port = Annotated[int, Field(ge=0, le=MAX_PORT)]
PositiveInt = Annotated[int, Field(gt=0)]


class RedisSettings(_Section):
    """Where the queue lives: a URL (redis://, rediss://, unix://, redis+sentinel://...,
    redis+cluster://...), or a Sentinel set (sentinels + service_name), or Cluster seed nodes.
    The explicit forms are folded into `url`, so `url` alone names the topology once validated."""

    url: str | None = None  # None: start the embedded Valkey (development only)
    sentinels: list[str] = []  # "host:port" of each Sentinel
    service_name: str | None = None  # the Sentinel-monitored primary's name
    cluster_nodes: list[str] = []  # "host:port" seed nodes of a Cluster
    password: SecretStr | None = None  # for the data nodes when the URL carries none
    shards: PositiveInt = 16
    # Replicas that must hold an accepted write before ingest answers 2xx (0: do not wait).
    ack_replicas: Annotated[int, Field(ge=0)] = 0
    ack_timeout_ms: PositiveInt = 250
    # The fraction of maxmemory past which new pushes go to the spool rather than into Redis,
    # so that the memory left goes to draining (relay.store.memory).
    memory_watermark: Annotated[float, Field(gt=0, le=1)] = 0.9

    @field_validator("url", "service_name")
    @classmethod
    def _empty_means_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("sentinels", "cluster_nodes", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        """RELAY_REDIS_SENTINELS / RELAY_REDIS_CLUSTER_NODES arrive as "host:port,host:port"."""
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("sentinels", "cluster_nodes")
    @classmethod
    def _addresses(cls, addresses: list[str]) -> list[str]:
        for address in addresses:
            parse_address(address, default_port=None)
        return addresses

    @model_validator(mode="after")
    def _one_topology(self) -> RedisSettings:
        composed: str | None = None
        if self.sentinels or self.service_name:
            if not (self.sentinels and self.service_name):
                raise ValueError("a Sentinel set needs both sentinels and service_name")
            if self.cluster_nodes:
                raise ValueError("give sentinels + service_name or cluster_nodes, not both")
            composed = sentinel_url(self.sentinels, self.service_name)
        elif self.cluster_nodes:
            composed = cluster_url(self.cluster_nodes)
        if composed is not None:
            if self.url is not None and self.url != composed:
                raise ValueError(
                    "give url or the explicit form (sentinels + service_name, cluster_nodes),"
                    " not both"
                )
            # Frozen model: the validator is the one place the folded URL can be set.
            object.__setattr__(self, "url", composed)
        if self.url is not None:
            parse_redis_url(self.url)
        return self


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: Port = 8080
    max_body_bytes: PositiveInt = 1024 * 1024
    # Proxies (addresses or networks) whose X-Forwarded-For names the client: the per-address
    # limits (Live Activity registrations) count the address it gives, not the proxy's.
    trusted_proxies: list[IPvAnyNetwork] = []
    # A listener serving only POST /v1/receipts (the one route phones call), so that only it
    # faces the internet; None: the route is served on `port` alone.
    receipts_port: Port | None = None
    # POST /v1/receipts is open to the internet: at most this many a second from one address
    # (bursts of 10), and from every address together.
    receipts_per_second_per_address: Annotated[float, Field(gt=0)] = 2.0
    receipts_per_second: Annotated[float, Field(gt=0)] = 500.0

    @field_validator("receipts_port", mode="before")
    @classmethod
    def _empty_means_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        """RELAY_HTTP_TRUSTED_PROXIES arrives as "10.0.0.0/8,192.0.2.1"."""
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value


class ScopedCredential(_Section):
    """A credential that may act only for the apps it names: one Bearer token or one
    "user:password" Basic pair."""

    token: SecretStr | None = None
    basic: SecretStr | None = None  # "user:password"
    apps: Annotated[list[AppName], Field(min_length=1)]

    @model_validator(mode="after")
    def _exactly_one_secret(self) -> ScopedCredential:
        if (self.token is None) == (self.basic is None):
            raise ValueError("give exactly one of token: ... or basic: user:password")
        if self.token is not None and not self.token.get_secret_value():
            raise ValueError("token must not be empty")
        if self.basic is not None:
            user, colon, _ = self.basic.get_secret_value().partition(":")
            if not user or not colon:
                raise ValueError('basic must be "user:password" with a non-empty user')
        return self


class AuthSettings(_Section):
    # The two lists grant every app; `scoped` entries grant only the apps they name.
    api_tokens: list[SecretStr] = []
    # Bearer tokens with the operator scope: every app, and the operator actions besides (GET
    # /v1/apps/{app}/check probes APNs); no other credential may take those.
    operator_tokens: list[SecretStr] = []
    basic: list[SecretStr] = []  # "user:password"
    scoped: list[ScopedCredential] = []
    # Requests per second allowed to each credential in each api process (a token bucket
    # holding `burst` requests); None: no limit.
    requests_per_second: Annotated[float, Field(gt=0)] | None = None
    burst: PositiveInt | None = None  # None: one second's worth of requests_per_second

    @field_validator("api_tokens", "operator_tokens")
    @classmethod
    def _tokens_not_empty(cls, tokens: list[SecretStr]) -> list[SecretStr]:
        if any(not token.get_secret_value() for token in tokens):
            raise ValueError("an API token must not be empty")
        return tokens

    @field_validator("basic")
    @classmethod
    def _user_colon_password(cls, pairs: list[SecretStr]) -> list[SecretStr]:
        for pair in pairs:
            user, colon, _ = pair.get_secret_value().partition(":")
            if not user or not colon:
                raise ValueError('each entry must be "user:password" with a non-empty user')
        return pairs

    def basic_users(self) -> dict[str, SecretStr]:
        """Basic-auth user name -> password."""
        users: dict[str, SecretStr] = {}
        for pair in self.basic:
            user, _, password = pair.get_secret_value().partition(":")
            users[user] = SecretStr(password)
        return users


class QueueSettings(_Section):
    max_per_device: PositiveInt = 100
    max_pending: PositiveInt = 1_000_000
    retention_seconds: PositiveInt = 86_400
    lease_seconds: PositiveInt = 30
    default_ttl_seconds: PositiveInt = 3_600
    max_ttl_seconds: PositiveInt = 30 * 86_400
    supersede: bool = True
    dead_token_ttl_seconds: PositiveInt = 30 * 86_400

    @model_validator(mode="after")
    def _default_ttl_within_max(self) -> QueueSettings:
        if self.default_ttl_seconds > self.max_ttl_seconds:
            raise ValueError(
                f"default_ttl_seconds ({self.default_ttl_seconds}) must not exceed "
                f"max_ttl_seconds ({self.max_ttl_seconds})"
            )
        return self


class IngestSettings(_Section):
    """What ingest does while Redis cannot be reached: hold the request, then spool it locally."""

    # Retry Redis this long before any other answer; under GMS's 2 s socket timeout, with room
    # for the spool's fsync and the answer.
    hold_seconds: Annotated[float, Field(gt=0, le=1.8)] = 1.5
    # The api's local spool (None: none; a push that outlasts the hold is answered 503).
    spool_dir: Path | None = None
    spool_max_bytes: PositiveInt = 64 * 1024 * 1024
    spool_max_notifications: PositiveInt = 100_000


class RetrySettings(_Section):
    base_ms: PositiveInt = 500
    cap_ms: PositiveInt = 60_000
    max_attempts: PositiveInt = 8

    @model_validator(mode="after")
    def _cap_at_least_base(self) -> RetrySettings:
        if self.cap_ms < self.base_ms:
            raise ValueError(f"cap_ms ({self.cap_ms}) must be >= base_ms ({self.base_ms})")
        return self

    def policy(self) -> RetryPolicy:
        return RetryPolicy(base_ms=self.base_ms, cap_ms=self.cap_ms, max_attempts=self.max_attempts)


class DeliverySettings(_Section):
    request_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    batch_size: PositiveInt = 256
    pause_probe_seconds: PositiveInt = 30
    # A connection answering this many 500s in a row is closed and replaced (peers found a
    # connection can go bad alone: Pushy #408, node-apn #463).
    connection_internal_error_streak: PositiveInt = 10
    # How often a delivering process compares its credential files and the config file with
    # what it last read, to rotate credentials without a restart (0: only on SIGHUP).
    credential_poll_seconds: Annotated[float, Field(ge=0)] = 10.0


class CircuitSettings(_Section):
    """When a route (app, environment, endpoint) counts as failing, and how it is probed."""

    failure_threshold: PositiveInt = 5
    window_ms: PositiveInt = 10_000
    probe_min_ms: PositiveInt = 1_000
    probe_max_ms: PositiveInt = 30_000

    @model_validator(mode="after")
    def _max_at_least_min(self) -> CircuitSettings:
        if self.probe_max_ms < self.probe_min_ms:
            raise ValueError(
                f"probe_max_ms ({self.probe_max_ms}) must be >= probe_min_ms ({self.probe_min_ms})"
            )
        return self

    def policy(self, request_timeout_s: float) -> CircuitPolicy:
        return CircuitPolicy(
            failure_threshold=self.failure_threshold,
            window_ms=self.window_ms,
            probe_min_ms=self.probe_min_ms,
            probe_max_ms=self.probe_max_ms,
            # A probe is one request: another worker may probe once it must have been answered.
            probe_lease_ms=int(request_timeout_s * 1000) + self.probe_min_ms,
        )


class LoggingSettings(_Section):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error", "critical"] = "info"

    @field_validator("format", "level", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value


class TokenAuth(_Section):
    """An APNs token key (.p8) and the ids it is signed with (relay.credentials.files reads it)."""

    key_file: Path
    key_id: Annotated[str, Field(pattern=APPLE_ID_PATTERN)]
    team_id: Annotated[str, Field(pattern=APPLE_ID_PATTERN)]

    _key_file_readable = field_validator("key_file")(_readable_file)

    @field_validator("key_file")
    @classmethod
    def _key_file_bounded(cls, value: Path) -> Path:
        size = value.stat().st_size
        if size > KEY_FILE_MAX_BYTES:
            raise ValueError(
                f"{value}: {size} bytes, larger than an APNs key file can be"
                f" (at most {KEY_FILE_MAX_BYTES})"
            )
        return value


class CertificateAuth(_Section):
    """A TLS client certificate: PEM (cert_file, and key_file unless the key is in cert_file)
    or PKCS#12 (p12_file, as Keychain exports it); password opens the .p12 or an encrypted PEM
    key, password_env names the variable holding it (folded into password when validated)."""

    cert_file: Path | None = None
    key_file: Path | None = None
    p12_file: Path | None = None
    password: SecretStr | None = None
    password_env: str | None = None

    _files_readable = field_validator("cert_file", "key_file", "p12_file")(_readable_optional)

    @model_validator(mode="after")
    def _one_form(self, info: ValidationInfo) -> CertificateAuth:
        if (self.cert_file is None) == (self.p12_file is None):
            raise ValueError("give cert_file (PEM) or p12_file (PKCS#12), exactly one")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file goes with cert_file (a .p12 holds its own key)")
        if self.password_env is not None:
            if self.password is not None:
                raise ValueError("give password or password_env, not both")
            env = (info.context or {}).get(CONTEXT_ENV, os.environ)
            if self.password_env not in env:
                raise ValueError(f"password_env: the variable {self.password_env} is not set")
            # Frozen model: the validator is the one place the resolved secret can be set.
            object.__setattr__(self, "password", SecretStr(env[self.password_env]))
        return self


class AppAuth(_Section):
    token: TokenAuth | None = None
    certificate: CertificateAuth | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> AppAuth:
        if (self.token is None) == (self.certificate is None):
            raise ValueError("give exactly one of token: {...} or certificate: {...}")
        return self


class EndpointSettings(_Section):
    """Where to reach APNs instead of Apple (the simulator, in development and tests)."""

    host: str
    port: Annotated[int, Field(gt=0, le=MAX_PORT)]
    ca_file: Path | None = None

    @field_validator("ca_file")
    @classmethod
    def _ca_file_readable(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return None if value is None else _readable_file(value, info)

    def endpoint(self) -> Endpoint:
        return Endpoint(self.host, self.port, str(self.ca_file) if self.ca_file else None)


ChatEvent = Literal["message", "joined", "left", "typing", "ended"]  # payload.ChatEventKind
# The chat fields a chat push's `message` may carry beside _id/_action (`chat.message_fields`);
# none by default: the seed's message is {"_id", "_action"} and an app built from it reads
# nothing else. Each is taken from the chat event GMS posted, with the seed's type:
MessageField = Literal["chatSessionId", "transcriptPosition", "chatEvent", "lineType", "nick"]
# - chatSessionId: the event's chatSessionId (a string, as in the seed);
# - transcriptPosition: the event's transcriptPosition, a decimal string as in the seed ("2");
# - chatEvent: the relay's name for what happened: message, joined, left, typing, ended;
# - lineType: the transcript line's type as GMS gives it (Message.Text, Notice.Left, ...);
# - nick: the nick of the line's author.

# How long a callback push lives by its `_action` when GMS gives no lifetime (apps[].ttl_by_action
# adds to or overrides these; an action not named lives queue.default_ttl_seconds).
DEFAULT_TTL_BY_ACTION: Mapping[str, int] = {
    # GMS's Callback Services option `_user_confirm_timeout`: "default 30" seconds (Genesys
    # Mobile Services Callback API reference, docs.genesys.com). After it GMS counts the attempt
    # as unanswered and moves on, so a confirmation delivered later asks about nothing.
    "get-dialog-user-confirmation-provide_code-true": 30,
    "get-dialog-user-confirmation-provide_code-false": 30,
    # wait-for-agent, connect-inbound, connect-outbound, get-dialog-start-chat: GMS documents no
    # timeout for them, so they keep queue.default_ttl_seconds.
}


def _lifetimes(value: object) -> object:
    """A lifetime map as given, on top of the defaults (naming one action keeps the others)."""
    if isinstance(value, Mapping):
        return {**DEFAULT_TTL_BY_ACTION, **value}
    return value


class ChatSettings(_Section):
    typing: Literal["none", "background"] = "none"
    # Lifetime (seconds) of a chat push by the event it reports; GMS documents none for chat
    # events, so none is set here and each lives queue.default_ttl_seconds.
    ttl_by_event: dict[ChatEvent, PositiveInt] = {}
    # Chat fields added to the push's `message` (see MessageField); none: the seed's shape.
    message_fields: list[MessageField] = []
    # The `_action` of chat pushes. The app POSTs $(ServerURL)$(URLPath)$(_id)/$(_action) for
    # every push (the seed's rule), so the default names the chat's own GMS resource (the
    # seed's _start_chat_url is .../service/<id>/ixn/chat, its events are tagged
    # service.chat.refresh.<id>): the app's POST fetches the transcript it missed.
    action: str = DEFAULT_CHAT_ACTION

    @field_validator("action")
    @classmethod
    def _usable_action(cls, value: str) -> str:
        try:
            return validate_action(value, "action")
        except InvalidInput as error:
            raise ValueError(error.rule) from None


STAGE_PATTERN = r"^[a-z][a-z0-9-]*$"


class LiveActivityStep(_Section):
    """What one GMS callback action does to the service's Live Activity."""

    stage: Annotated[str, Field(pattern=STAGE_PATTERN, max_length=64)]
    label: str
    event: Literal["update", "end"] = "update"
    # Apple budgets priority-10 Live Activity updates per hour: keep 10 for what the customer
    # must see now.
    priority: Literal[5, 10] = 5


DEFAULT_LIVE_ACTIVITY_STEPS: Mapping[str, LiveActivityStep] = {
    "wait-for-agent": LiveActivityStep(stage="waiting", label="Waiting for an agent"),
    "get-dialog-user-confirmation-provide_code-true": LiveActivityStep(
        stage="agent-available", label="An agent is available", priority=10
    ),
    "get-dialog-user-confirmation-provide_code-false": LiveActivityStep(
        stage="agent-available", label="An agent is available", priority=10
    ),
    "connect-inbound": LiveActivityStep(
        stage="connecting", label="Connecting you to an agent", event="end", priority=10
    ),
    "connect-outbound": LiveActivityStep(
        stage="connecting", label="We are calling you", event="end", priority=10
    ),
    "cancel": LiveActivityStep(stage="cancelled", label="Callback cancelled", event="end"),
    "expired": LiveActivityStep(stage="expired", label="Callback expired", event="end"),
}


def _check_actions(actions: Iterable[str], field_name: str) -> None:
    """Each key of a per-action map is a usable GMS action (the rule /gms/push applies)."""
    for action in actions:
        try:
            validate_action(action, field_name)
        except InvalidInput as error:
            raise ValueError(f"{action!r}: {error.rule}") from None


class LiveActivitySettings(_Section):
    """An app's callback Live Activity: off unless the section is given."""

    attributes_type: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = (
        "CallbackAttributes"
    )
    steps: dict[str, LiveActivityStep] = dict(DEFAULT_LIVE_ACTIVITY_STEPS)
    # Actions that start the activity through the push-to-start token when none is registered.
    start_actions: list[str] = ["wait-for-agent"]
    start_alert: AlertTemplate = AlertTemplate(
        title="You are in the queue", body="We will show your callback here."
    )
    # How long a registration lives: the GMS callback service's lifetime. Apple ends an activity
    # after 8 hours and takes it off the Lock Screen after 12, so longer would only keep garbage.
    service_lifetime_s: Annotated[int, Field(gt=0, le=43_200)] = 43_200
    stale_after_s: PositiveInt = 1_800
    dismiss_after_s: Annotated[int, Field(ge=0, le=14_400)] = 300
    relevance_score: Annotated[float, Field(ge=0, le=100)] = 100
    # Registrations (PUT of an activity or a push-to-start token) each client address may make,
    # per second on average and at once, in each api process.
    registrations_per_second: Annotated[float, Field(gt=0)] = 1.0
    registration_burst: PositiveInt = 20
    # Live registrations the app may hold in Redis, of each kind (activities; push-to-start
    # tokens): about 610 and 440 bytes each with its budget entry (README, Live Activities).
    max_registrations: PositiveInt = 100_000

    @field_validator("steps")
    @classmethod
    def _usable_actions(cls, steps: dict[str, LiveActivityStep]) -> dict[str, LiveActivityStep]:
        _check_actions(steps, "steps")
        return steps

    @model_validator(mode="after")
    def _start_actions_are_steps(self) -> LiveActivitySettings:
        unknown = sorted(set(self.start_actions) - self.steps.keys())
        if unknown:
            raise ValueError(f"start_actions: {', '.join(unknown)} must also be in steps")
        return self


def _secret_from(
    field_name: str,
    inline: SecretStr | None,
    env_name: str | None,
    file: Path | None,
    info: ValidationInfo,
) -> bytes | None:
    """One secret given inline, as a variable's name or as a file (at most one of them)."""
    given = [v for v in (inline, env_name, file) if v is not None]
    if len(given) > 1:
        raise ValueError(f"give {field_name}, {field_name}_env or {field_name}_file, not more")
    if inline is not None:
        secret = inline.get_secret_value().encode()
    elif env_name is not None:
        env = (info.context or {}).get(CONTEXT_ENV, os.environ)
        if env_name not in env:
            raise ValueError(f"{field_name}_env: the variable {env_name} is not set")
        secret = env[env_name].encode()
    elif file is not None:
        secret = file.read_bytes().strip()
    else:
        return None
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(
            f"{field_name}: must be at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex"
            f" 32`), got {len(secret)}"
        )
    return secret


class ReceiptSettings(_Section):
    """Delivery receipts (docs/receipts.md): alert pushes carry a receipt the app's Notification
    Service Extension posts back. The secret signs it; after a rotation the previous one is
    still accepted: keep it until queue.max_ttl_seconds have passed."""

    secret: SecretStr | None = None
    secret_env: str | None = None
    secret_file: Path | None = None
    previous_secret: SecretStr | None = None
    previous_secret_env: str | None = None
    previous_secret_file: Path | None = None

    _files_readable = field_validator("secret_file", "previous_secret_file")(_readable_optional)

    def secrets(self) -> ReceiptSecrets:
        assert self.secret is not None  # _resolved folds every form into `secret`
        previous = self.previous_secret
        # Resolved secrets are held as latin-1 text: any bytes, back as they were.
        return ReceiptSecrets(
            self.secret.get_secret_value().encode("latin-1"),
            None if previous is None else previous.get_secret_value().encode("latin-1"),
        )

    @model_validator(mode="after")
    def _resolved(self, info: ValidationInfo) -> ReceiptSettings:
        current = _secret_from("secret", self.secret, self.secret_env, self.secret_file, info)
        if current is None:
            raise ValueError("give secret, secret_env or secret_file")
        previous = _secret_from(
            "previous_secret",
            self.previous_secret,
            self.previous_secret_env,
            self.previous_secret_file,
            info,
        )
        # Frozen model: the validator is the one place the resolved secrets can be set.
        object.__setattr__(self, "secret", SecretStr(current.decode("latin-1")))
        if previous is not None:
            object.__setattr__(self, "previous_secret", SecretStr(previous.decode("latin-1")))
        return self


class App(_Section):
    name: AppName
    topic: Annotated[str, Field(pattern=BUNDLE_ID_PATTERN, max_length=255)]
    environment: Literal["production", "sandbox"]
    default: bool = False
    auth: AppAuth
    message_encoding: Literal["object", "string"] = "object"
    alerts: dict[str, AlertTemplate] = {}
    sound: str | None = "default"
    priority: Literal[1, 5, 10] = 10
    push_type: str = "alert"
    max_connections: PositiveInt = 4
    endpoint: EndpointSettings | None = None
    ttl_by_action: dict[str, PositiveInt] = dict(DEFAULT_TTL_BY_ACTION)
    chat: ChatSettings = ChatSettings()
    live_activity: LiveActivitySettings | None = None
    receipts: ReceiptSettings | None = None  # delivery receipts from the app; None: off

    _lifetimes_on_defaults = field_validator("ttl_by_action", mode="before")(_lifetimes)

    @field_validator("ttl_by_action")
    @classmethod
    def _usable_ttl_actions(cls, lifetimes: dict[str, int]) -> dict[str, int]:
        _check_actions(lifetimes, "ttl_by_action")
        return lifetimes

    @field_validator("push_type")
    @classmethod
    def _known_push_type(cls, value: str) -> str:
        if value not in PUSH_TYPES:
            raise ValueError(f"must be one of {', '.join(sorted(PUSH_TYPES))} (got {value!r})")
        return value

    def apns_endpoint(self) -> Endpoint:
        """Where this app's pushes go: its endpoint setting, else Apple's for its environment."""
        return self.endpoint.endpoint() if self.endpoint else default_endpoint(self.environment)

    @model_validator(mode="after")
    def _live_activity_needs_token_auth(self) -> App:
        # Apple takes Live Activity pushes only over token-based connections.
        if self.live_activity is not None and self.auth.token is None:
            raise ValueError(
                "live_activity: Apple accepts Live Activity pushes only with token auth "
                "(auth.token), not with a certificate"
            )
        return self

    @property
    def known_actions(self) -> frozenset[str]:
        """The `_action`s this app's configuration names (or ships alerts for): the actions its
        metrics label as themselves (relay.telemetry.metrics.action_label)."""
        return frozenset({*self.alerts, *self.ttl_by_action, *DEFAULT_ALERTS, self.chat.action})

    def profile(self) -> AppProfile:
        """What building this app's pushes needs of it, as plain data."""
        return AppProfile(
            name=self.name,
            push_type=self.push_type,
            priority=self.priority,
            sound=self.sound,
            message_encoding=self.message_encoding,
            alerts=self.alerts,
            chat_typing=self.chat.typing,
            chat_action=self.chat.action,
            ttl_by_action=self.ttl_by_action,
            chat_ttl_by_event={str(event): ttl for event, ttl in self.chat.ttl_by_event.items()},
            chat_message_fields=tuple(self.chat.message_fields),
            receipt_secret=None if self.receipts is None else self.receipts.secrets().current,
        )


class Settings(_Section):
    redis: RedisSettings = RedisSettings()
    http: HttpSettings = HttpSettings()
    auth: AuthSettings = AuthSettings()
    queue: QueueSettings = QueueSettings()
    ingest: IngestSettings = IngestSettings()
    retry: RetrySettings = RetrySettings()
    delivery: DeliverySettings = DeliverySettings()
    circuit: CircuitSettings = CircuitSettings()
    logging: LoggingSettings = LoggingSettings()
    apps: list[App] = []

    @field_validator("apps")
    @classmethod
    def _apps_consistent(cls, apps: list[App]) -> list[App]:
        names = [app.name for app in apps]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"names must be unique (repeated: {', '.join(duplicates)})")
        defaults = [app.name for app in apps if app.default]
        if len(defaults) > 1:
            raise ValueError(f"at most one app may be default (got {', '.join(defaults)})")
        return apps

    @model_validator(mode="after")
    def _lifetimes_within_max(self) -> Settings:
        longest = self.queue.max_ttl_seconds
        for app in self.apps:
            named = {
                **app.ttl_by_action,
                **{f"chat {e}": t for e, t in app.chat.ttl_by_event.items()},
            }
            for what, ttl in named.items():
                if ttl > longest:
                    raise ValueError(
                        f"apps[{app.name}]: the lifetime of {what} ({ttl} s) must not exceed "
                        f"queue.max_ttl_seconds ({longest})"
                    )
        return self

    def receipt_secrets(self) -> dict[str, ReceiptSecrets]:
        """The receipt secrets of every app that has receipts on, by app name."""
        return {app.name: app.receipts.secrets() for app in self.apps if app.receipts is not None}

    def app(self, name: str | None) -> App:
        """The app by name; None means the default app (the only one, or the one marked default).
        Raises InvalidInput, as the name comes from a request."""
        if name is None:
            marked = [app for app in self.apps if app.default]
            if marked:
                return marked[0]
            if len(self.apps) == 1:
                return self.apps[0]
            raise InvalidInput(
                "app",
                "no default app is configured: name the app, or mark one app `default: true`",
            )
        for app in self.apps:
            if app.name == name:
                return app
        configured = ", ".join(app.name for app in self.apps) or "none"
        raise InvalidInput(
            "app", f"must be a configured app (configured: {configured})", received=shown(name)
        )
