"""The APNs simulator's pure core: a request and its connection's auth state in, Apple's answer out.

No I/O here: the clock (`now`, epoch seconds) and the random source are handed in, so every rule
is tested by feeding plain data in and checking answers out.

Checks run in this order, first failure answers: duplicate headers, method, path, provider token,
apns-id, topic, push type, priority, expiration, collapse id, device token (shape, then the token
registry: issued, same environment, same topic), body; then, for a valid request, the injected
faults and the per-device state (script, rate limit, unregistered).

Choices where Apple documents nothing:
- a body that is not a JSON object answers 400 `PayloadEmpty`: only Apple's documented reasons
  are ever sent, and a body APNs cannot read as a JSON dictionary leaves it no payload to deliver;
  the relay's policy for it (malformed: fail, do not retry) is the one a malformed payload needs;
- a token's topic binding admits the app's own topic and its suffixed ones (`<bundle>.voip`,
  `<bundle>.complication`, `<bundle>.push-type.liveactivity`, ...); others: DeviceTokenNotForTopic;
- a run of errors ends in GOAWAY with reason `TooManyRequests` and ENHANCE_YOUR_CALM (Apple
  documents that it closes such connections, not what it says then);
- a different team on a connection answers 403 `InvalidProviderToken`; the same team with another
  key id answers 403 `UnrelatedKeyIdInToken` (Apple: "open a new connection");
- "a new token more often than every 20 minutes" compares the `iat` of the new token with the
  connection's current one, so a token shared by many connections is not punished;
- without `apns-priority` the priority is 10 (Apple's default), so `background` must send 5;
- device tokens are matched case-insensitively (they are hex).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import jwt
import orjson
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey

from relay_devkit.apns_sim.answers import (
    BAD_COLLAPSE_ID,
    BAD_DEVICE_TOKEN,
    BAD_ENVIRONMENT_KEY,
    BAD_EXPIRATION_DATE,
    BAD_MESSAGE_ID,
    BAD_PATH,
    BAD_PRIORITY,
    BAD_TOPIC,
    DEVICE_TOKEN_NOT_FOR_TOPIC,
    DUPLICATE_HEADERS,
    EXPIRED_PROVIDER_TOKEN,
    INVALID_PROVIDER_TOKEN,
    INVALID_PUSH_TYPE,
    METHOD_NOT_ALLOWED,
    MISSING_DEVICE_TOKEN,
    MISSING_PROVIDER_TOKEN,
    MISSING_TOPIC,
    PAYLOAD_EMPTY,
    PAYLOAD_TOO_LARGE,
    TOO_MANY_PROVIDER_TOKEN_UPDATES,
    TOO_MANY_REQUESTS,
    TOPIC_DISALLOWED,
    UNRELATED_KEY_ID,
    Answer,
)
from relay_devkit.apns_sim.apple import (
    MAX_COLLAPSE_ID_BYTES,
    PRIORITIES,
    PUSH_TYPES,
    payload_limit,
)
from relay_devkit.apns_sim.faults import FaultConfig
from relay_devkit.apns_sim.live_activity import check_live_activity

DEVICE_PATH: Final = "/3/device/"
PROVIDER_TOKEN_MAX_AGE_S: Final = 3600
PROVIDER_TOKEN_MIN_REFRESH_S: Final = 20 * 60
DEFAULT_PRIORITY: Final = 10
DEFAULT_TOKEN_LENGTH: Final = 64  # hex digits: Apple's device tokens today are 32 bytes
PRODUCTION: Final = "production"
SANDBOX: Final = "sandbox"
ENVIRONMENTS: Final = (PRODUCTION, SANDBOX)
VERDICT_CACHE_SIZE: Final = 64  # distinct token strings remembered per connection

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_HEX = re.compile(r"[0-9a-fA-F]+\Z")
_TOPIC = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
_EXPIRATION = re.compile(r"-?[0-9]+\Z")


@dataclass(frozen=True, slots=True)
class TrustedKey:
    """A provider signing key the simulator accepts, as Apple knows it: key id, team, public key."""

    key_id: str
    team_id: str
    public_key: EllipticCurvePublicKey
    environments: frozenset[str] = frozenset(ENVIRONMENTS)  # where Apple lets it sign


@dataclass(frozen=True, slots=True)
class TokenBinding:
    """What a device token was issued for: APNs ties a token to one app and one environment."""

    topic: str
    environment: str


@dataclass(frozen=True, slots=True)
class Policy:
    """What one listener (one APNs environment) accepts."""

    keys: Mapping[str, TrustedKey]  # by key id
    environment: str = PRODUCTION
    topics: frozenset[str] | None = None  # allow-list; None allows any well-formed topic
    token_length: int = DEFAULT_TOKEN_LENGTH  # hex digits
    open_tokens: bool = False  # any well-formed token is "issued" (load generation)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    key_id: str
    team_id: str
    issued_at: int


@dataclass(slots=True)
class ConnectionAuth:
    """One connection's provider-token state: team and key bind on the first valid token."""

    team_id: str | None = None
    key_id: str | None = None
    token: str | None = None
    token_issued_at: int = 0
    # Token string -> its verified claims or the rejection: one ES256 verify per distinct token.
    verdicts: dict[str, TokenClaims | Answer] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    headers: Mapping[str, str]  # regular headers, lower-case names
    body: bytes
    body_size: int  # the whole body's size, even when the server kept only its start
    duplicate_header: str | None = None

    @classmethod
    def from_header_list(
        cls, header_list: Iterable[tuple[str, str]], body: bytes, body_size: int | None = None
    ) -> Request:
        method = path = ""
        headers: dict[str, str] = {}
        duplicate: str | None = None
        for raw_name, value in header_list:
            name = raw_name.lower()
            if name == ":method":
                method = value
            elif name == ":path":
                path = value
            elif not name.startswith(":"):
                if name in headers:
                    duplicate = name
                headers[name] = value
        return cls(
            method, path, headers, body, len(body) if body_size is None else body_size, duplicate
        )


@dataclass(frozen=True, slots=True)
class Accepted:
    """A request APNs would take; what the notification log records."""

    token: str  # lower-case hex
    topic: str
    push_type: str
    headers: tuple[tuple[str, str], ...]  # every regular header except authorization
    payload: bytes
    key_id: str | None = None  # the provider key the connection is bound to (None: certificate)


def evaluate(
    request: Request,
    auth: ConnectionAuth,
    policy: Policy,
    registry: Mapping[str, TokenBinding],
    now: float,
    *,
    certified: bool = False,
) -> Accepted | Answer:
    """Validate one request as APNs does; may bind or update the connection's provider token.
    `registry`: the device tokens issued so far (unused with `policy.open_tokens`).
    `certified`: the connection's client certificate authorised it (certificate_rules)."""
    if request.duplicate_header is not None:
        return DUPLICATE_HEADERS
    if request.method != "POST":
        return METHOD_NOT_ALLOWED
    token_or_answer = device_token_in(request.path)
    if isinstance(token_or_answer, Answer):
        return token_or_answer
    if not certified:
        rejection = authorize(request.headers, auth, policy, now)
        if rejection is not None:
            return rejection
    headers = request.headers
    apns_id = headers.get("apns-id")
    if apns_id is not None and not _UUID.match(apns_id):
        return BAD_MESSAGE_ID
    topic = headers.get("apns-topic")
    if not topic:
        return MISSING_TOPIC
    if not is_topic(topic):
        return BAD_TOPIC
    if policy.topics is not None and topic not in policy.topics:
        return TOPIC_DISALLOWED
    push_type = headers.get("apns-push-type", "alert")
    if push_type not in PUSH_TYPES:
        return INVALID_PUSH_TYPE
    priority_text = headers.get("apns-priority", str(DEFAULT_PRIORITY))
    if not priority_text.isdigit() or int(priority_text) not in PRIORITIES:
        return BAD_PRIORITY
    if push_type == "background" and int(priority_text) != 5:
        return BAD_PRIORITY
    expiration = headers.get("apns-expiration")
    if expiration is not None and not _EXPIRATION.match(expiration):
        return BAD_EXPIRATION_DATE
    collapse_id = headers.get("apns-collapse-id")
    if collapse_id is not None and len(collapse_id.encode()) > MAX_COLLAPSE_ID_BYTES:
        return BAD_COLLAPSE_ID
    token_answer = check_device_token(token_or_answer.lower(), topic, policy, registry)
    if token_answer is not None:
        return token_answer
    payload_answer = check_payload(request.body, request.body_size, push_type)
    if payload_answer is not None:
        return payload_answer
    if push_type == "liveactivity":
        live_answer = check_live_activity(topic, int(priority_text), orjson.loads(request.body))
        if live_answer is not None:
            return live_answer
    return Accepted(
        token=token_or_answer.lower(),
        topic=topic,
        push_type=push_type,
        headers=tuple((k, v) for k, v in headers.items() if k != "authorization"),
        payload=request.body,
        key_id=None if certified else auth.key_id,
    )


def is_topic(text: str) -> bool:
    return _TOPIC.match(text) is not None


def device_token_in(path: str) -> str | Answer:
    """The device token of `/3/device/<token>`, or the answer a wrong path gets."""
    if path in ("/3/device", DEVICE_PATH):
        return MISSING_DEVICE_TOKEN
    if not path.startswith(DEVICE_PATH):
        return BAD_PATH
    token = path[len(DEVICE_PATH) :]
    if "/" in token or "?" in token:
        return BAD_PATH
    return token


def check_device_token(
    token: str, topic: str, policy: Policy, registry: Mapping[str, TokenBinding]
) -> Answer | None:
    """A token Apple never issued, or issued in the other environment, is BadDeviceToken."""
    if len(token) != policy.token_length or not _HEX.match(token):
        return BAD_DEVICE_TOKEN
    if policy.open_tokens:
        return None
    binding = registry.get(token)
    if binding is None or binding.environment != policy.environment:
        return BAD_DEVICE_TOKEN
    if topic != binding.topic and not topic.startswith(binding.topic + "."):
        return DEVICE_TOKEN_NOT_FOR_TOPIC
    return None


def check_payload(body: bytes, body_size: int, push_type: str) -> Answer | None:
    if body_size == 0:
        return PAYLOAD_EMPTY
    if body_size > payload_limit(push_type):
        return PAYLOAD_TOO_LARGE
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return PAYLOAD_EMPTY
    return None if isinstance(document, dict) else PAYLOAD_EMPTY


def authorize(
    headers: Mapping[str, str], auth: ConnectionAuth, policy: Policy, now: float
) -> Answer | None:
    """Whether the request may be sent on this connection; None when it may.

    Token-based trust only: a bearer provider token checked against the connection's state.
    """
    authorization = headers.get("authorization")
    if not authorization:
        return MISSING_PROVIDER_TOKEN
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return INVALID_PROVIDER_TOKEN
    verdict = auth.verdicts.get(token)
    if verdict is None:
        verdict = verify_provider_token(token, policy.keys, policy.environment)
        if len(auth.verdicts) >= VERDICT_CACHE_SIZE:
            auth.verdicts.clear()
        auth.verdicts[token] = verdict
    if isinstance(verdict, Answer):
        return verdict
    if auth.team_id is not None and verdict.team_id != auth.team_id:
        return INVALID_PROVIDER_TOKEN
    if auth.key_id is not None and verdict.key_id != auth.key_id:
        return UNRELATED_KEY_ID
    if now - verdict.issued_at > PROVIDER_TOKEN_MAX_AGE_S:
        return EXPIRED_PROVIDER_TOKEN
    if token != auth.token:
        if (
            auth.token is not None
            and verdict.issued_at - auth.token_issued_at < PROVIDER_TOKEN_MIN_REFRESH_S
        ):
            return TOO_MANY_PROVIDER_TOKEN_UPDATES
        auth.team_id, auth.key_id = verdict.team_id, verdict.key_id
        auth.token, auth.token_issued_at = token, verdict.issued_at
    return None


def verify_provider_token(
    token: str, keys: Mapping[str, TrustedKey], environment: str
) -> TokenClaims | Answer:
    """Verify an ES256 provider JWT's signature, key id, environment and claims (not its age)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return INVALID_PROVIDER_TOKEN
    key = keys.get(str(header.get("kid")))
    if header.get("alg") != "ES256" or key is None:
        return INVALID_PROVIDER_TOKEN
    try:
        claims = jwt.decode(
            token,
            key.public_key,
            algorithms=["ES256"],
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
    except jwt.PyJWTError:
        return INVALID_PROVIDER_TOKEN
    issued_at = claims.get("iat")
    if (
        claims.get("iss") != key.team_id
        or isinstance(issued_at, bool)
        or not isinstance(issued_at, int)
    ):
        return INVALID_PROVIDER_TOKEN
    if environment not in key.environments:
        return BAD_ENVIRONMENT_KEY
    return TokenClaims(key.key_id, key.team_id, issued_at)


def echoed_apns_id(request: Request) -> str | None:
    """The request's apns-id, echoed as sent even when malformed (clients match answers by it)."""
    return request.headers.get("apns-id") or None


def response_headers(
    answer: Answer, apns_id: str, unique_id: str | None = None
) -> list[tuple[str, str]]:
    """`unique_id`: the apns-unique-id a 200 carries in the development (sandbox) environment."""
    if answer.status == 200 and unique_id is not None:
        return [(":status", "200"), ("apns-id", apns_id), ("apns-unique-id", unique_id)]
    if answer.status == 200 or not answer.body:
        return [(":status", str(answer.status)), ("apns-id", apns_id)]
    return [
        (":status", str(answer.status)),
        ("apns-id", apns_id),
        ("content-type", "application/json"),
    ]


def response_body(answer: Answer) -> bytes:
    if answer.status == 200 or not answer.body:
        return b""
    document: dict[str, object] = {"reason": answer.reason or ""}
    if answer.timestamp_ms is not None:
        document["timestamp"] = answer.timestamp_ms
    return orjson.dumps(document)


# --- connection policing -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConnectionRules:
    """How APNs polices one connection: its stream limit, idleness, runs of errors."""

    max_streams: int = 1000
    # Apple: one stream until a request with a valid token succeeds, then max_streams; observed
    # (Pushy #732) dropping back to one after a rejected request until the next success.
    dynamic_streams: bool = True
    idle_timeout_s: float | None = None
    goaway_after_errors: int | None = None  # consecutive counted errors; None: never

    @property
    def initial_streams(self) -> int:
        return 1 if self.dynamic_streams else self.max_streams


@dataclass(slots=True)
class ConnectionPolicing:
    """One connection's policed state."""

    stream_limit: int
    error_run: int = 0


@dataclass(frozen=True, slots=True)
class AfterAnswer:
    """What the connection does once an answer has gone: new stream limit, or GOAWAY."""

    stream_limit: int | None = None  # None: unchanged
    goaway_reason: str | None = None


KEEP_GOING: Final = AfterAnswer()
TOO_MANY_ERRORS_REASON: Final = "TooManyRequests"


def after_answer(rules: ConnectionRules, state: ConnectionPolicing, status: int) -> AfterAnswer:
    """Update `state` for an answer with `status`; what the connection must announce.

    Errors counted towards GOAWAY are the client's (4xx) except 410, which Apple says it does
    not count; a 200 ends the run.
    """
    if status == 200:
        state.error_run = 0
    elif 400 <= status < 500 and status != 410:
        state.error_run += 1
    limit = rules.max_streams if status == 200 or not rules.dynamic_streams else 1
    changed = limit if limit != state.stream_limit else None
    state.stream_limit = limit
    if rules.goaway_after_errors is not None and state.error_run >= rules.goaway_after_errors:
        return AfterAnswer(changed, TOO_MANY_ERRORS_REASON)
    return KEEP_GOING if changed is None else AfterAnswer(changed)


def goaway_debug_data(reason: str) -> bytes:
    return orjson.dumps({"reason": reason})


# --- faults ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stall:
    """Never answer the stream."""


STALL: Final = Stall()


def answer_delay_s(faults: FaultConfig, rng: random.Random) -> float:
    latency = faults.latency
    if latency is None:
        return 0.0
    return rng.uniform(latency.min_ms, latency.max_ms) / 1000.0


def drops_connection(faults: FaultConfig, stream_number: int, rng: random.Random) -> bool:
    """Whether to cut the TCP connection instead of serving its `stream_number`-th stream (1-based).

    "After N streams": N are served, the next one finds the connection gone.
    """
    if faults.drop_after_streams is not None and stream_number > faults.drop_after_streams:
        return True
    return faults.drop_probability > 0 and rng.random() < faults.drop_probability


def goaway_after(faults: FaultConfig, stream_number: int) -> bool:
    """Whether the answer to the `stream_number`-th stream is followed by GOAWAY."""
    return faults.goaway_after_streams is not None and stream_number >= faults.goaway_after_streams


def stream_fault(faults: FaultConfig, token: str, rng: random.Random) -> Stall | Answer | None:
    """The random or per-token fault for a valid request, if any."""
    if token in faults.stall_tokens:
        return STALL
    if faults.stall_probability > 0 and rng.random() < faults.stall_probability:
        return STALL
    error = faults.error
    if error is not None and error.probability > 0 and rng.random() < error.probability:
        return Answer(error.status, error.reason, body=error.body)
    return None


@dataclass(slots=True)
class DeviceLedger:
    """Per-device state every server process must agree on: scripts, rate windows, dead tokens."""

    unregistered: dict[str, int] = field(default_factory=dict)  # token -> timestamp ms
    script_positions: dict[str, int] = field(default_factory=dict)
    rate_window: int = -1  # the whole second the counts belong to
    rate_counts: dict[str, int] = field(default_factory=dict)

    def forget_fault_state(self) -> None:
        self.script_positions.clear()
        self.rate_counts.clear()

    def clear(self) -> None:
        self.unregistered.clear()
        self.forget_fault_state()


def device_answer(
    ledger: DeviceLedger, faults: FaultConfig, token: str, now: float
) -> Answer | None:
    """The answer the device's state dictates (script, rate limit, unregistered); None: accept."""
    script = faults.scripted.get(token)
    if script:
        position = ledger.script_positions.get(token, 0)
        if position < len(script):
            ledger.script_positions[token] = position + 1
            scripted = script[position]
            if scripted.status != 200:
                timestamp_ms = int(now * 1000) if scripted.status == 410 else None
                return Answer(scripted.status, scripted.reason, timestamp_ms, scripted.body)
    limit = faults.rate_limit_per_second
    if limit is not None:
        window = int(now)
        if window != ledger.rate_window:
            ledger.rate_window = window
            ledger.rate_counts.clear()
        count = ledger.rate_counts.get(token, 0) + 1
        ledger.rate_counts[token] = count
        if count > limit:
            return TOO_MANY_REQUESTS
    unregistered_at = ledger.unregistered.get(token)
    if unregistered_at is not None:
        return Answer(410, "Unregistered", unregistered_at)
    return None
