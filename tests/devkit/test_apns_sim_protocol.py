"""The simulator's pure core, without a network: every APNs reason, JWT rule and fault decision."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from relay_devkit.apns_sim.answers import Answer
from relay_devkit.apns_sim.faults import FaultConfig, FaultConfigError
from relay_devkit.apns_sim.protocol import (
    PRODUCTION,
    SANDBOX,
    STALL,
    Accepted,
    AfterAnswer,
    ConnectionAuth,
    ConnectionPolicing,
    ConnectionRules,
    DeviceLedger,
    Policy,
    Request,
    TokenBinding,
    TrustedKey,
    after_answer,
    answer_delay_s,
    authorize,
    device_answer,
    drops_connection,
    echoed_apns_id,
    evaluate,
    goaway_after,
    goaway_debug_data,
    response_body,
    response_headers,
    stream_fault,
)

NOW = 1_700_000_000
TOKEN = "a1" * 32
APNS_ID = "123e4567-e89b-12d3-a456-426655440000"


def _key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return private, pem


PRIVATE, PEM = _key()
OTHER_PRIVATE, OTHER_PEM = _key()
KEYS = {
    "KEY1111111": TrustedKey("KEY1111111", "TEAM111111", PRIVATE.public_key()),
    "KEY2222222": TrustedKey("KEY2222222", "TEAM111111", OTHER_PRIVATE.public_key()),
    "KEY3333333": TrustedKey("KEY3333333", "TEAM333333", OTHER_PRIVATE.public_key()),
}
POLICY = Policy(keys=KEYS)
REGISTRY = {TOKEN: TokenBinding("com.example.app", PRODUCTION)}


def token_for(
    key_id: str = "KEY1111111",
    team_id: str = "TEAM111111",
    issued_at: int = NOW,
    pem: str | None = None,
    algorithm: str = "ES256",
) -> str:
    if pem is None:
        pem = PEM if key_id == "KEY1111111" else OTHER_PEM
    return jwt.encode(
        {"iss": team_id, "iat": issued_at}, pem, algorithm=algorithm, headers={"kid": key_id}
    )


GOOD_JWT = token_for()


def request(
    *,
    body: bytes = b'{"aps":{"alert":"hi"}}',
    drop: tuple[str, ...] = (),
    pseudo: Mapping[str, str] | None = None,
    **headers: str,
) -> Request:
    """A valid request; `pseudo` replaces pseudo-headers (`:path`), keyword headers replace others
    (`_` for `-`), `drop` removes."""
    fields = {
        ":method": "POST",
        ":path": f"/3/device/{TOKEN}",
        ":scheme": "https",
        "authorization": f"bearer {GOOD_JWT}",
        "apns-topic": "com.example.app",
        "apns-push-type": "alert",
        "apns-id": APNS_ID,
        "apns-priority": "10",
        "apns-expiration": str(NOW + 60),
    }
    fields.update(pseudo or {})
    fields.update({k.replace("_", "-"): v for k, v in headers.items()})
    return Request.from_header_list([(k, v) for k, v in fields.items() if k not in drop], body)


def judge(
    req: Request,
    auth: ConnectionAuth | None = None,
    policy: Policy = POLICY,
    registry: dict[str, TokenBinding] = REGISTRY,
) -> object:
    return evaluate(req, auth or ConnectionAuth(), policy, registry, NOW)


def test_a_valid_request_is_accepted_with_its_headers_minus_authorization() -> None:
    verdict = judge(request(apns_collapse_id="x" * 64))
    assert isinstance(verdict, Accepted)
    assert verdict.token == TOKEN
    assert verdict.topic == "com.example.app"
    assert verdict.payload == b'{"aps":{"alert":"hi"}}'
    assert "authorization" not in dict(verdict.headers)
    assert dict(verdict.headers)["apns-id"] == APNS_ID


@pytest.mark.parametrize(
    ("req", "expected"),
    [
        (request(pseudo={":method": "GET"}), Answer(405, "MethodNotAllowed")),
        (request(pseudo={":method": "PUT"}), Answer(405, "MethodNotAllowed")),
        (request(pseudo={":path": "/3/devices/ab"}), Answer(404, "BadPath")),
        (request(pseudo={":path": "/"}), Answer(404, "BadPath")),
        (request(pseudo={":path": f"/3/device/{TOKEN}/x"}), Answer(404, "BadPath")),
        (request(pseudo={":path": "/3/device/"}), Answer(400, "MissingDeviceToken")),
        (request(pseudo={":path": "/3/device"}), Answer(400, "MissingDeviceToken")),
        (request(pseudo={":path": "/3/device/xyz"}), Answer(400, "BadDeviceToken")),
        (request(pseudo={":path": "/3/device/ab cd"}), Answer(400, "BadDeviceToken")),
        (request(apns_id="not-a-uuid"), Answer(400, "BadMessageId")),
        (request(apns_id=APNS_ID.upper()), Answer(400, "BadMessageId")),
        (request(apns_id=APNS_ID.replace("-", "")), Answer(400, "BadMessageId")),
        (request(drop=("apns-topic",)), Answer(400, "MissingTopic")),
        (request(apns_topic=""), Answer(400, "MissingTopic")),
        (request(apns_topic="com.example app"), Answer(400, "BadTopic")),
        (request(apns_topic=".leading.dot"), Answer(400, "BadTopic")),
        (request(apns_push_type="telegram"), Answer(400, "InvalidPushType")),
        (request(apns_push_type=""), Answer(400, "InvalidPushType")),
        (request(apns_priority="7"), Answer(400, "BadPriority")),
        (request(apns_priority="high"), Answer(400, "BadPriority")),
        (request(apns_push_type="background"), Answer(400, "BadPriority")),
        (
            request(apns_push_type="background", drop=("apns-priority",)),
            Answer(400, "BadPriority"),
        ),
        (request(apns_expiration="soon"), Answer(400, "BadExpirationDate")),
        (request(apns_expiration="1.5"), Answer(400, "BadExpirationDate")),
        (request(apns_collapse_id="x" * 65), Answer(400, "BadCollapseId")),
        (request(apns_collapse_id="é" * 33), Answer(400, "BadCollapseId")),  # 66 bytes
        (request(body=b""), Answer(400, "PayloadEmpty")),
        (request(body=b"{" + b" " * 4096), Answer(413, "PayloadTooLarge")),
        (
            request(apns_push_type="voip", body=b"{" + b" " * 5120),
            Answer(413, "PayloadTooLarge"),
        ),
        (request(body=b"[1, 2]"), Answer(400, "PayloadEmpty")),
        (request(body=b'"text"'), Answer(400, "PayloadEmpty")),
        (request(body=b"{not json"), Answer(400, "PayloadEmpty")),
        (request(drop=("authorization",)), Answer(403, "MissingProviderToken")),
        (request(authorization=""), Answer(403, "MissingProviderToken")),
        (request(authorization=f"basic {GOOD_JWT}"), Answer(403, "InvalidProviderToken")),
        (request(authorization="bearer "), Answer(403, "InvalidProviderToken")),
        (request(authorization="bearer not.a.jwt"), Answer(403, "InvalidProviderToken")),
    ],
)
def test_each_malformed_request_gets_apples_status_and_reason(
    req: Request, expected: Answer
) -> None:
    assert judge(req) == expected


@pytest.mark.parametrize(
    "req",
    [
        request(apns_priority="5"),
        request(apns_priority="1"),
        request(apns_push_type="background", apns_priority="5"),
        request(drop=("apns-id", "apns-push-type", "apns-priority", "apns-expiration")),
        request(apns_expiration="0"),
        request(body=b"{" + b" " * 4094 + b"}"),  # exactly 4096 bytes
        request(apns_push_type="voip", body=b"{" + b" " * 5118 + b"}"),  # exactly 5120
        request(pseudo={":path": f"/3/device/{TOKEN.upper()}"}),
    ],
)
def test_edge_values_apple_allows_are_accepted(req: Request) -> None:
    assert isinstance(judge(req), Accepted)


def test_a_header_sent_twice_is_duplicate_headers() -> None:
    req = Request.from_header_list(
        [
            (":method", "POST"),
            (":path", f"/3/device/{TOKEN}"),
            ("apns-topic", "a"),
            ("apns-topic", "b"),
        ],
        b"{}",
    )
    assert judge(req) == Answer(400, "DuplicateHeaders")


def test_the_whole_body_size_counts_even_when_only_its_start_was_kept() -> None:
    base = request()
    truncated = Request(base.method, base.path, base.headers, b"{}", body_size=10_000)
    assert judge(truncated) == Answer(413, "PayloadTooLarge")


def test_topic_allow_list() -> None:
    policy = Policy(keys=KEYS, topics=frozenset({"com.example.app"}))
    assert isinstance(judge(request(), policy=policy), Accepted)
    assert judge(request(apns_topic="com.other.app"), policy=policy) == Answer(
        400, "TopicDisallowed"
    )


def test_method_is_checked_before_path_and_path_before_credentials() -> None:
    assert judge(
        request(pseudo={":method": "GET", ":path": "/x"}, drop=("authorization",))
    ) == Answer(405, "MethodNotAllowed")
    assert judge(request(pseudo={":path": "/x"}, drop=("authorization",))) == Answer(404, "BadPath")


# --- provider tokens ------------------------------------------------------------------------


def auth_check(token: str, auth: ConnectionAuth, now: float = NOW) -> Answer | None:
    return authorize({"authorization": f"bearer {token}"}, auth, POLICY, now)


@pytest.mark.parametrize(
    "token",
    [
        token_for(key_id="UNKNOWN000"),
        token_for(pem=OTHER_PEM),  # signed by another key than its kid names
        token_for(team_id="TEAM999999"),  # iss is not the key's team
        jwt.encode(
            {"iss": "TEAM111111", "iat": NOW},
            "s" * 32,
            algorithm="HS256",
            headers={"kid": "KEY1111111"},
        ),
        jwt.encode(
            {"iss": "TEAM111111", "iat": str(NOW)},
            PEM,
            algorithm="ES256",
            headers={"kid": "KEY1111111"},
        ),
        jwt.encode({"iss": "TEAM111111"}, PEM, algorithm="ES256", headers={"kid": "KEY1111111"}),
        GOOD_JWT[:-4] + ("AAAA" if not GOOD_JWT.endswith("AAAA") else "BBBB"),
    ],
    ids=[
        "unknown-kid",
        "bad-signature",
        "wrong-team",
        "wrong-alg",
        "iat-text",
        "no-iat",
        "tampered",
    ],
)
def test_tokens_apple_cannot_verify_are_invalid(token: str) -> None:
    assert auth_check(token, ConnectionAuth()) == Answer(403, "InvalidProviderToken")


def test_a_token_older_than_an_hour_is_expired_even_when_cached() -> None:
    auth = ConnectionAuth()
    assert auth_check(GOOD_JWT, auth) is None
    assert auth_check(GOOD_JWT, auth, now=NOW + 3600) is None
    assert auth_check(GOOD_JWT, auth, now=NOW + 3601) == Answer(403, "ExpiredProviderToken")
    fresh = ConnectionAuth()
    assert auth_check(token_for(issued_at=NOW - 3601), fresh) == Answer(403, "ExpiredProviderToken")


def test_verified_tokens_are_cached_per_connection() -> None:
    auth = ConnectionAuth()
    assert auth_check(GOOD_JWT, auth) is None
    claims = auth.verdicts[GOOD_JWT]
    assert auth_check(GOOD_JWT, auth) is None
    assert auth.verdicts[GOOD_JWT] is claims  # reused, not verified again


def test_a_second_team_on_one_connection_is_invalid() -> None:
    auth = ConnectionAuth()
    assert auth_check(GOOD_JWT, auth) is None
    other_team = token_for(key_id="KEY3333333", team_id="TEAM333333", issued_at=NOW + 1800)
    assert auth_check(other_team, auth, now=NOW + 1800) == Answer(403, "InvalidProviderToken")
    assert auth_check(other_team, ConnectionAuth(), now=NOW + 1800) is None  # fine on its own


def test_another_key_of_the_same_team_needs_a_new_connection() -> None:
    auth = ConnectionAuth()
    assert auth_check(GOOD_JWT, auth) is None
    other_key = token_for(key_id="KEY2222222", issued_at=NOW + 1800)
    assert auth_check(other_key, auth, now=NOW + 1800) == Answer(403, "UnrelatedKeyIdInToken")


def test_a_new_token_within_20_minutes_is_too_many_updates_and_the_old_one_stays() -> None:
    auth = ConnectionAuth()
    assert auth_check(GOOD_JWT, auth) is None
    early = token_for(issued_at=NOW + 1199)
    assert auth_check(early, auth, now=NOW + 1199) == Answer(429, "TooManyProviderTokenUpdates")
    assert auth_check(GOOD_JWT, auth, now=NOW + 1199) is None
    on_time = token_for(issued_at=NOW + 1200)
    assert auth_check(on_time, auth, now=NOW + 1200) is None
    assert auth_check(GOOD_JWT, auth, now=NOW + 1201) == Answer(
        429, "TooManyProviderTokenUpdates"
    )  # going back to an older token is an update too


def test_an_expired_token_can_be_replaced_by_a_fresh_one() -> None:
    auth = ConnectionAuth()
    assert auth_check(GOOD_JWT, auth) is None
    later = NOW + 4000
    assert auth_check(GOOD_JWT, auth, now=later) == Answer(403, "ExpiredProviderToken")
    assert auth_check(token_for(issued_at=later), auth, now=later) is None


def test_the_verdict_cache_is_bounded() -> None:
    auth = ConnectionAuth()
    for n in range(200):
        auth_check(f"garbage{n}", auth)
    assert len(auth.verdicts) <= 64


# --- responses ------------------------------------------------------------------------------


def test_success_has_apns_id_and_no_body() -> None:
    assert response_headers(Answer(200), APNS_ID) == [(":status", "200"), ("apns-id", APNS_ID)]
    assert response_body(Answer(200)) == b""


def test_errors_have_json_reason_and_410_a_timestamp() -> None:
    assert response_headers(Answer(400, "BadTopic"), APNS_ID) == [
        (":status", "400"),
        ("apns-id", APNS_ID),
        ("content-type", "application/json"),
    ]
    assert response_body(Answer(400, "BadTopic")) == b'{"reason":"BadTopic"}'
    assert response_body(Answer(410, "Unregistered", 1234)) == (
        b'{"reason":"Unregistered","timestamp":1234}'
    )


def test_an_error_without_body_is_the_status_alone() -> None:
    bare = Answer(503, "ServiceUnavailable", body=False)
    assert response_headers(bare, APNS_ID) == [(":status", "503"), ("apns-id", APNS_ID)]
    assert response_body(bare) == b""


def test_apns_id_is_echoed_as_sent_and_left_to_the_server_when_absent() -> None:
    assert echoed_apns_id(request()) == APNS_ID
    assert echoed_apns_id(request(apns_id="nope")) == "nope"
    assert echoed_apns_id(request(apns_id="")) is None
    assert echoed_apns_id(request(drop=("apns-id",))) is None


# --- faults ---------------------------------------------------------------------------------


def faults(**document: object) -> FaultConfig:
    return FaultConfig.from_json(document)


def test_fault_config_round_trips_through_json() -> None:
    config = faults(
        scripted={TOKEN.upper(): [{"status": 500, "reason": "InternalServerError"}]},
        error={"probability": 0.5, "status": 503, "reason": "ServiceUnavailable", "body": False},
        latency_ms={"min": 1, "max": 5},
        stall={"probability": 0.1, "tokens": ["AB"]},
        goaway={"after_streams": 3, "reason": "Shutdown"},
        drop={"after_streams": 7, "probability": 0.2},
        rate_limit={"per_second": 4},
    )
    assert FaultConfig.from_json(config.to_json()) == config
    assert TOKEN in config.scripted  # tokens are matched in lower case
    assert config.stall_tokens == {"ab"}


@pytest.mark.parametrize(
    ("document", "names"),
    [
        ({"bogus": 1}, "bogus"),
        ({"error": {"probability": 2, "status": 500, "reason": "x"}}, "error.probability"),
        ({"error": {"probability": 0.5, "status": 99, "reason": "x"}}, "error.status"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"latency_ms": {"min": 5, "max": 1}}, "latency_ms"),
        ({"goaway": {"after_streams": 0}}, "goaway.after_streams"),
        ({"scripted": {"ab": [{"status": "500"}]}}, "scripted[ab][0].status"),
        ({"scripted": {"ab": {"status": 500}}}, "scripted[ab]"),
        ({"stall": {"tokens": "ab"}}, "stall.tokens"),
        ({"rate_limit": {"per_second": True}}, "rate_limit.per_second"),
        ([], "faults"),
    ],
)
def test_bad_fault_configs_name_the_field(document: object, names: str) -> None:
    with pytest.raises(FaultConfigError, match=names.replace("[", r"\[").replace("]", r"\]")):
        FaultConfig.from_json(document)


def test_scripted_answers_are_consumed_in_order_then_normal_service_resumes() -> None:
    config = faults(
        scripted={
            TOKEN: [
                {"status": 500, "reason": "InternalServerError"},
                {"status": 200},
                {"status": 410, "reason": "Unregistered"},
                {"status": 503, "reason": "ServiceUnavailable", "body": False},
            ]
        }
    )
    ledger = DeviceLedger()
    answers = [device_answer(ledger, config, TOKEN, NOW) for _ in range(5)]
    assert answers == [
        Answer(500, "InternalServerError"),
        None,
        Answer(410, "Unregistered", NOW * 1000),
        Answer(503, "ServiceUnavailable", body=False),
        None,
    ]
    assert device_answer(ledger, config, "ff", NOW) is None


def test_unregistered_tokens_answer_410_with_their_timestamp() -> None:
    ledger = DeviceLedger(unregistered={TOKEN: 1234})
    assert device_answer(ledger, FaultConfig(), TOKEN, NOW) == Answer(410, "Unregistered", 1234)
    assert device_answer(ledger, FaultConfig(), "ff", NOW) is None


def test_rate_limit_counts_per_token_per_second() -> None:
    config = faults(rate_limit={"per_second": 2})
    ledger = DeviceLedger()
    first_second = [device_answer(ledger, config, TOKEN, NOW + 0.1) for _ in range(3)]
    assert first_second == [None, None, Answer(429, "TooManyRequests")]
    assert device_answer(ledger, config, "ff", NOW + 0.2) is None  # another device
    assert device_answer(ledger, config, TOKEN, NOW + 1.0) is None  # the next second


def test_stall_by_token_and_by_probability() -> None:
    rng = random.Random(1)
    assert stream_fault(faults(stall={"tokens": [TOKEN]}), TOKEN, rng) is STALL
    assert stream_fault(faults(stall={"tokens": [TOKEN]}), "ff", rng) is None
    assert stream_fault(faults(stall={"probability": 1.0}), TOKEN, rng) is STALL
    assert stream_fault(faults(stall={"probability": 0.0}), TOKEN, rng) is None


def test_random_error_probability_is_honoured() -> None:
    config = faults(error={"probability": 0.3, "status": 500, "reason": "InternalServerError"})
    rng = random.Random(7)
    outcomes = [stream_fault(config, TOKEN, rng) for _ in range(10_000)]
    errors = sum(o == Answer(500, "InternalServerError") for o in outcomes)
    assert 2700 < errors < 3300
    assert set(outcomes) <= {None, Answer(500, "InternalServerError")}


def test_latency_is_fixed_or_within_its_range() -> None:
    rng = random.Random(3)
    assert answer_delay_s(FaultConfig(), rng) == 0.0
    assert answer_delay_s(faults(latency_ms=250), rng) == 0.25
    delays = [answer_delay_s(faults(latency_ms={"min": 10, "max": 20}), rng) for _ in range(1000)]
    assert 0.010 <= min(delays) < 0.011
    assert 0.019 < max(delays) <= 0.020


def test_drop_after_n_streams_serves_n_then_cuts() -> None:
    config = faults(drop={"after_streams": 3})
    rng = random.Random(0)
    assert [drops_connection(config, n, rng) for n in range(1, 6)] == [
        False,
        False,
        False,
        True,
        True,
    ]
    assert drops_connection(faults(drop={"probability": 1.0}), 1, rng)
    assert not drops_connection(FaultConfig(), 10**6, rng)


def test_goaway_follows_the_nth_answer_with_a_json_reason() -> None:
    config = faults(goaway={"after_streams": 2, "reason": "Shutdown"})
    assert [goaway_after(config, n) for n in (1, 2, 3)] == [False, True, True]
    assert not goaway_after(FaultConfig(), 10**6)
    assert goaway_debug_data(config.goaway_reason) == b'{"reason":"Shutdown"}'


def test_replacing_faults_restarts_scripts() -> None:
    config = faults(scripted={TOKEN: [{"status": 500, "reason": "InternalServerError"}]})
    ledger = DeviceLedger()
    assert device_answer(ledger, config, TOKEN, NOW) is not None
    assert device_answer(ledger, config, TOKEN, NOW) is None
    ledger.forget_fault_state()
    assert device_answer(ledger, config, TOKEN, NOW) == Answer(500, "InternalServerError")


def test_wall_clock_is_only_an_input() -> None:
    # The same request judged "now" against a real clock: the token minted at NOW is long expired.
    assert evaluate(request(), ConnectionAuth(), POLICY, REGISTRY, time.time()) == Answer(
        403, "ExpiredProviderToken"
    )


# --- the token registry and environments -----------------------------------------------------

SANDBOX_TOKEN = "b2" * 32
BAD_DEVICE = Answer(400, "BadDeviceToken")


@pytest.mark.parametrize(
    ("path_token", "topic", "policy", "expected"),
    [
        (TOKEN, "com.example.app", POLICY, None),
        (TOKEN.upper(), "com.example.app", POLICY, None),
        (TOKEN, "com.example.app.voip", POLICY, None),  # the app's own suffixed topic
        ("c3" * 32, "com.example.app", POLICY, Answer(400, "BadDeviceToken")),  # never issued
        (TOKEN[:62], "com.example.app", POLICY, Answer(400, "BadDeviceToken")),  # truncated
        (TOKEN + "00", "com.example.app", POLICY, Answer(400, "BadDeviceToken")),
        ("zz" * 32, "com.example.app", POLICY, Answer(400, "BadDeviceToken")),
        (TOKEN, "com.other.app", POLICY, Answer(400, "DeviceTokenNotForTopic")),
        (TOKEN, "com.example.application", POLICY, Answer(400, "DeviceTokenNotForTopic")),
        (SANDBOX_TOKEN, "com.example.app", POLICY, Answer(400, "BadDeviceToken")),
        (
            SANDBOX_TOKEN,
            "com.example.app",
            Policy(keys=KEYS, environment=SANDBOX),
            None,
        ),
        (TOKEN, "com.example.app", Policy(keys=KEYS, environment=SANDBOX), BAD_DEVICE),
        ("c3" * 32, "com.any.app", Policy(keys=KEYS, open_tokens=True), None),
        (TOKEN[:62], "com.any.app", Policy(keys=KEYS, open_tokens=True), BAD_DEVICE),
        ("c3" * 50, "com.any.app", Policy(keys=KEYS, open_tokens=True, token_length=100), None),
    ],
)
def test_only_issued_tokens_of_this_environment_and_topic_are_accepted(
    path_token: str, topic: str, policy: Policy, expected: Answer | None
) -> None:
    registry = {
        TOKEN: TokenBinding("com.example.app", PRODUCTION),
        SANDBOX_TOKEN: TokenBinding("com.example.app", SANDBOX),
    }
    verdict = judge(
        request(apns_topic=topic, pseudo={":path": f"/3/device/{path_token}"}),
        policy=policy,
        registry=registry,
    )
    if expected is None:
        assert isinstance(verdict, Accepted)
    else:
        assert verdict == expected


def test_a_key_restricted_to_one_environment_is_refused_in_the_other() -> None:
    sandbox_only = {
        "KEY1111111": TrustedKey(
            "KEY1111111", "TEAM111111", PRIVATE.public_key(), frozenset({SANDBOX})
        )
    }
    registry = {TOKEN: TokenBinding("com.example.app", SANDBOX)}
    production = Policy(keys=sandbox_only, environment=PRODUCTION)
    sandbox = Policy(keys=sandbox_only, environment=SANDBOX)
    assert judge(request(), policy=production, registry=registry) == Answer(
        403, "BadEnvironmentKeyIdInToken"
    )
    assert isinstance(judge(request(), policy=sandbox, registry=registry), Accepted)


def test_a_200_in_sandbox_carries_apns_unique_id_and_errors_never_do() -> None:
    unique = "0f0e0d0c-0b0a-4999-8888-777766665555"
    assert response_headers(Answer(200), APNS_ID, unique) == [
        (":status", "200"),
        ("apns-id", APNS_ID),
        ("apns-unique-id", unique),
    ]
    assert ("apns-unique-id", unique) not in response_headers(
        Answer(400, "BadTopic"), APNS_ID, unique
    )


# --- connection policing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rules", "statuses", "limits"),
    [
        # Apple: 1 until the first 200, then the maximum; back to 1 after any rejection.
        (ConnectionRules(max_streams=1000), [200, 200], [1000, 1000]),
        (ConnectionRules(max_streams=1000), [403, 200], [1, 1000]),
        (ConnectionRules(max_streams=1000), [200, 400, 400, 200], [1000, 1, 1, 1000]),
        (ConnectionRules(max_streams=1000), [200, 410, 500, 200], [1000, 1, 1, 1000]),
        (ConnectionRules(max_streams=7, dynamic_streams=False), [200, 400, 500], [7, 7, 7]),
    ],
)
def test_stream_limit_follows_the_answers(
    rules: ConnectionRules, statuses: list[int], limits: list[int]
) -> None:
    state = ConnectionPolicing(rules.initial_streams)
    assert state.stream_limit == (1 if rules.dynamic_streams else rules.max_streams)
    seen = []
    for status in statuses:
        after_answer(rules, state, status)
        seen.append(state.stream_limit)
    assert seen == limits


def test_only_a_change_of_limit_is_announced() -> None:
    rules = ConnectionRules(max_streams=50)
    state = ConnectionPolicing(rules.initial_streams)
    assert after_answer(rules, state, 200) == AfterAnswer(stream_limit=50)
    assert after_answer(rules, state, 200) == AfterAnswer()
    assert after_answer(rules, state, 400) == AfterAnswer(stream_limit=1)
    assert after_answer(rules, state, 400) == AfterAnswer()


@pytest.mark.parametrize(
    ("statuses", "goaway_at"),
    [
        ([400, 400, 400], 2),  # the third consecutive 4xx
        ([400, 400, 200, 400, 400, 400], 5),  # a 200 ends the run
        ([400, 410, 410, 400, 403], 4),  # 410 does not count (Apple)
        ([500, 503, 500, 400], None),  # server errors are not the client's
    ],
)
def test_a_run_of_client_errors_ends_in_goaway(statuses: list[int], goaway_at: int | None) -> None:
    rules = ConnectionRules(dynamic_streams=False, goaway_after_errors=3)
    state = ConnectionPolicing(rules.initial_streams)
    reasons = [after_answer(rules, state, status).goaway_reason for status in statuses]
    first = reasons.index("TooManyRequests") if "TooManyRequests" in reasons else None
    assert first == goaway_at


def test_error_runs_are_never_policed_by_default() -> None:
    rules = ConnectionRules()
    state = ConnectionPolicing(rules.initial_streams)
    assert all(after_answer(rules, state, 400).goaway_reason is None for _ in range(10_000))
