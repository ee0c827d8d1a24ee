"""APNs payload building: exact bytes, headers, every refusal, and a property over all inputs."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import orjson
import pytest
from app_profiles import app_profile
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core.alerts import AlertTemplate
from relay.core.app_profile import AppProfile
from relay.core.fields import normalize_device_token
from relay.core.model import (
    MAX_PAYLOAD_BYTES,
    MAX_VOIP_PAYLOAD_BYTES,
    ExpiredOnArrival,
    InvalidInput,
    Notification,
    PayloadTooLarge,
    payload_limit,
)
from relay.core.payload import AlertFields, ChatEventKind, ChatLine, PushSpec, build_notification

TOKEN = "ab" * 32
SERVICE_ID = "3SQI3S31693JL9L3R00506T40C000U73"
NOW = 1_700_000_000
DEFAULT_TTL = 3_600
MAX_TTL = 86_400


DEMO = app_profile(
    alerts={"wait-for-agent": AlertTemplate(title="Queued, {name}", body="Ref {_id}")}
)


@pytest.fixture(scope="module")
def app() -> AppProfile:
    return DEMO


def build(spec: PushSpec, app: AppProfile) -> Notification:
    return build_notification(spec, app, now_s=NOW, default_ttl_s=DEFAULT_TTL, max_ttl_s=MAX_TTL)


def refusal(spec: PushSpec, app: AppProfile) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        build(spec, app)
    return caught.value


def callback(**changes: Any) -> PushSpec:
    return replace(
        PushSpec(device_token=TOKEN, service_id=SERVICE_ID, action="get-dialog-start-chat"),
        **changes,
    )


def test_callback_push_has_the_seed_shape_and_default_headers(app: AppProfile) -> None:
    notification = build(callback(), app)
    assert notification.payload == (
        b'{"aps":{"alert":{"title":"Your chat is ready","body":"Tap to start chatting with an '
        b'agent."},"sound":"default","thread-id":"3SQI3S31693JL9L3R00506T40C000U73"},'
        b'"message":{"_id":"3SQI3S31693JL9L3R00506T40C000U73","_action":"get-dialog-start-chat"}}'
    )
    assert notification.app == "demo"
    assert notification.device_token == TOKEN
    assert (notification.push_type, notification.priority) == ("alert", 10)
    assert notification.expires_at == NOW + DEFAULT_TTL
    assert notification.collapse_id == SERVICE_ID
    assert notification.service_id == SERVICE_ID
    assert notification.action == "get-dialog-start-chat"


def test_message_as_a_json_string_when_the_app_asks() -> None:
    notification = build(callback(), app_profile("strings", message_encoding="string", sound=None))
    payload = orjson.loads(notification.payload)
    assert payload["message"] == (
        '{"_id":"3SQI3S31693JL9L3R00506T40C000U73","_action":"get-dialog-start-chat"}'
    )
    assert "sound" not in payload["aps"]  # the app configured no sound


def test_app_template_is_filled_from_the_message(app: AppProfile) -> None:
    spec = callback(action="wait-for-agent", message_fields={"name": "Ann", "empty": None})
    payload = orjson.loads(build(spec, app).payload)
    assert payload["aps"]["alert"] == {"title": "Queued, Ann", "body": f"Ref {SERVICE_ID}"}
    # Fields travel in `message` for the app; nulls are left out.
    assert payload["message"] == {
        "_id": SERVICE_ID,
        "_action": "wait-for-agent",
        "name": "Ann",
    }


def test_unknown_action_gets_the_generic_alert(app: AppProfile) -> None:
    payload = orjson.loads(build(callback(action="brand-new-action"), app).payload)
    assert payload["aps"]["alert"] == {"body": "You have a new notification."}
    assert payload["message"]["_action"] == "brand-new-action"


def test_explicit_alerts_and_aps_fields(app: AppProfile) -> None:
    alert = AlertFields(
        title="T",
        subtitle="S",
        body="B",
        loc_key="LK",
        loc_args=("a",),
        title_loc_key="TLK",
        title_loc_args=("b", "c"),
    )
    spec = callback(alert=alert, sound="ping.caf", badge=3, thread_id="thread-1")
    aps = orjson.loads(build(spec, app).payload)["aps"]
    assert aps == {
        "alert": {
            "title": "T",
            "subtitle": "S",
            "body": "B",
            "loc-key": "LK",
            "loc-args": ["a"],
            "title-loc-key": "TLK",
            "title-loc-args": ["b", "c"],
        },
        "sound": "ping.caf",
        "badge": 3,
        "thread-id": "thread-1",
    }
    text_only = orjson.loads(build(callback(alert="Hello"), app).payload)
    assert text_only["aps"]["alert"] == "Hello"


def test_plain_alert_without_service_has_no_message(app: AppProfile) -> None:
    notification = build(PushSpec(device_token=TOKEN, alert="Hi"), app)
    assert notification.payload == b'{"aps":{"alert":"Hi","sound":"default"}}'
    assert notification.collapse_id is None


def test_extra_keys_go_beside_aps(app: AppProfile) -> None:
    payload = orjson.loads(build(callback(extra={"acme": {"x": 1}, "unset": None}), app).payload)
    assert payload["acme"] == {"x": 1}
    assert "unset" not in payload


def test_the_apps_sound_is_for_alert_pushes_only(app: AppProfile) -> None:
    voip = orjson.loads(build(callback(push_type="voip"), app).payload)
    assert "sound" not in voip["aps"]
    asked = orjson.loads(build(callback(push_type="voip", sound="ring.caf"), app).payload)
    assert asked["aps"]["sound"] == "ring.caf"


@pytest.mark.parametrize("key", ["aps", "message"])
def test_extra_keys_may_not_replace_aps_or_message(app: AppProfile, key: str) -> None:
    error = refusal(callback(extra={key: 1}), app)
    assert (error.field, type(error)) == (f"extra.{key}", InvalidInput)


def test_background_push_is_silent_and_power_aware(app: AppProfile) -> None:
    notification = build(callback(push_type="background"), app)
    assert (notification.push_type, notification.priority) == ("background", 5)
    assert orjson.loads(notification.payload)["aps"] == {
        "content-available": 1,
        "thread-id": SERVICE_ID,
    }


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"alert": "Hi"}, "alert"),
        ({"sound": "x"}, "sound"),
        ({"badge": 1}, "badge"),
        ({"priority": 10}, "priority"),
    ],
)
def test_background_push_refuses_visible_content_and_high_priority(
    app: AppProfile, changes: dict[str, Any], field: str
) -> None:
    error = refusal(callback(push_type="background", **changes), app)
    assert (error.field, type(error)) == (field, InvalidInput)


@pytest.mark.parametrize(
    ("changes", "field", "rule"),
    [
        ({"push_type": "banner"}, "push_type", "must be one of alert, background"),
        ({"priority": 7}, "priority", "must be 1, 5 or 10; received 7"),
        ({"ttl_s": 0}, "ttl", "must be 1 to 86400 seconds; received 0"),
        ({"ttl_s": MAX_TTL + 1}, "ttl", "must be 1 to 86400 seconds; received 86401"),
        ({"ttl_s": 5, "expires_at": NOW + 5}, "ttl", "give ttl or expires_at, not both"),
        ({"expires_at": NOW + MAX_TTL + 1}, "expires_at", "must be at most 86400 s from now"),
        (
            {"collapse_id": "x" * 65},
            "collapse_id",
            "collapse_id must be 1 to 64 bytes; received 65",
        ),
        ({"collapse_id": ""}, "collapse_id", "collapse_id must be 1 to 64 bytes; received 0 bytes"),
        ({"service_id": "S" * 65}, "collapse_id", "service_id (the default collapse id) must"),
        ({"service_id": "S" * 129}, "service_id", "must be at most 128 characters"),
        ({"service_id": ""}, "service_id", 'must not be empty; received ""'),
        ({"action": "get dialog"}, "action", "must be a non-empty string of A-Z"),
        ({"action": "a" * 129}, "action", "must be at most 128 characters"),
        ({"badge": -1}, "badge", "must be at least 0; received -1"),
        ({"idempotency_key": ""}, "idempotency_key", "must be 1 to 256 characters"),
        ({"idempotency_key": "k" * 257}, "idempotency_key", "must be 1 to 256 characters"),
        ({"device_token": "xyz" * 10}, "device_token", '30 characters, "x" at 1 not a hex digit'),
        ({"device_token": "abc"}, "device_token", "200 hex digits (0-9, a-f), an even number of"),
        ({"device_token": "abc"}, "device_token", "; received 3 hex digits"),
        ({"device_token": "a" * 201}, "device_token", "; received 201 hex digits"),
        ({"device_token": "abcdef123"}, "device_token", "an even number of them; received 9 hex"),
    ],
)
def test_bad_requests_are_refused_with_400_naming_the_field(
    app: AppProfile, changes: dict[str, Any], field: str, rule: str
) -> None:
    error = refusal(callback(**changes), app)
    assert (error.field, type(error)) == (field, InvalidInput)
    assert rule in error.detail


def test_expired_on_arrival_is_its_own_refusal(app: AppProfile) -> None:
    for expires_at in (NOW, NOW - 1):
        error = refusal(callback(expires_at=expires_at), app)
        assert (error.field, type(error)) == ("expires_at", ExpiredOnArrival)
        assert "expired on arrival" in error.rule
    assert build(callback(expires_at=NOW + 1), app).expires_at == NOW + 1


def test_ttl_sets_the_expiry(app: AppProfile) -> None:
    assert build(callback(ttl_s=30), app).expires_at == NOW + 30
    assert build(callback(ttl_s=MAX_TTL), app).expires_at == NOW + MAX_TTL


def test_upper_case_token_is_lowered() -> None:
    assert normalize_device_token("ABCDEF0123456789") == "abcdef0123456789"


def test_collapse_id_of_exactly_64_bytes_is_accepted(app: AppProfile) -> None:
    assert build(callback(collapse_id="é" * 32), app).collapse_id == "é" * 32


@pytest.mark.parametrize("bad", ["a\r\nx-injected: 1", "tab\there", " padded", "nul\x00"])
def test_collapse_id_that_cannot_be_a_header_value_is_refused(app: AppProfile, bad: str) -> None:
    error = refusal(callback(collapse_id=bad), app)
    assert (error.field, type(error)) == ("collapse_id", InvalidInput)
    assert "control characters" in error.rule


def test_payload_over_the_limit_is_refused_naming_size_and_limit(app: AppProfile) -> None:
    fits = MAX_PAYLOAD_BYTES - len(build(callback(message_fields={"pad": ""}), app).payload)
    assert len(build(callback(message_fields={"pad": "x" * fits}), app).payload) == 4096
    error = refusal(callback(message_fields={"pad": "x" * (fits + 1)}), app)
    assert (error.field, type(error)) == ("payload", PayloadTooLarge)
    assert error.detail == (
        "must be at most 4096 bytes once built (APNs' limit for push type alert);"
        " received 4097 bytes"
    )


def test_voip_allows_5120_bytes(app: AppProfile) -> None:
    base = len(build(callback(push_type="voip", message_fields={"pad": ""}), app).payload)
    spec = callback(push_type="voip", message_fields={"pad": "x" * (MAX_VOIP_PAYLOAD_BYTES - base)})
    assert len(build(spec, app).payload) == MAX_VOIP_PAYLOAD_BYTES
    error = refusal(replace(spec, message_fields={"pad": "x" * (5121 - base)}), app)
    assert error.detail == (
        "must be at most 5120 bytes once built (APNs' limit for push type voip);"
        " received 5121 bytes"
    )


def test_values_json_cannot_hold_are_refused(app: AppProfile) -> None:
    error = refusal(callback(message_fields={"n": 2**70}), app)
    assert (error.field, type(error)) == ("message", InvalidInput)


def test_chat_lines_neither_collapse_nor_supersede(app: AppProfile) -> None:
    spec = callback(
        action="chat-message",
        thread_id="000FRa9NYM9A001K",
        chat=ChatLine(kind=ChatEventKind.MESSAGE, session_id="000FRa9NYM9A001K", position=2),
    )
    notification = build(spec, app)
    assert notification.collapse_id is None
    assert notification.service_id is None
    payload = orjson.loads(notification.payload)
    assert payload["message"]["_id"] == SERVICE_ID
    assert payload["aps"]["thread-id"] == "000FRa9NYM9A001K"


# Property: whatever a caller puts in a PushSpec, the builder returns a payload within Apple's
# limit for its push type, or refuses with InvalidInput; nothing else escapes.
# Long runs of x reach the size limit; hypothesis rarely draws long text on its own.
padding = st.integers(1_000, 5_200).map("x".__mul__)
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=400) | padding
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
optional_text = st.none() | st.text(max_size=80)
alerts = (
    st.none()
    | st.text(max_size=4000)
    | st.builds(
        AlertFields,
        title=optional_text,
        subtitle=optional_text,
        body=st.none() | st.text(max_size=4000),
        loc_key=optional_text,
        loc_args=st.none() | st.lists(st.text(max_size=20), max_size=3).map(tuple),
    )
)


def mostly(valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid values three times in four, so that inputs also get past the first check."""
    return st.sampled_from([True, True, True, False]).flatmap(lambda ok: valid if ok else other)


specs = st.builds(
    PushSpec,
    device_token=mostly(
        st.just(TOKEN), st.sampled_from(["AB" * 8, "a" * 7, "zz" * 16, "ab" * 101])
    ),
    service_id=mostly(st.none() | st.just(SERVICE_ID), st.text(max_size=130)),
    action=mostly(
        st.none() | st.sampled_from(["wait-for-agent", "connect-inbound", "new.action_1"]),
        st.text(max_size=130),
    ),
    alert=alerts,
    sound=optional_text,
    badge=mostly(st.none() | st.integers(0, 10**6), st.integers()),
    ttl_s=mostly(st.none(), st.integers(-10, MAX_TTL + 10)),
    expires_at=mostly(st.none(), st.integers(NOW - 10, NOW + MAX_TTL + 10)),
    priority=mostly(st.none(), st.sampled_from([1, 5, 10, 3])),
    push_type=mostly(st.none() | st.sampled_from(["background", "voip"]), st.text(max_size=12)),
    collapse_id=mostly(st.none(), st.text(max_size=70)),
    message_fields=st.dictionaries(st.text(max_size=12), json_values, max_size=6),
    extra=mostly(
        st.dictionaries(st.sampled_from(["acme", "x"]), json_values, max_size=2),
        st.dictionaries(st.sampled_from(["aps", "message"]), json_values, min_size=1),
    ),
    thread_id=optional_text,
)


@settings(max_examples=300, deadline=None)
@given(spec=specs)
def test_any_spec_is_built_within_the_limit_or_refused(app: AppProfile, spec: PushSpec) -> None:
    refused: InvalidInput | None = None
    try:
        notification = build(spec, app)
    except InvalidInput as error:
        refused = error
    if refused is not None:
        assert refused.rule
        return
    assert len(notification.payload) <= payload_limit(notification.push_type)
    payload = orjson.loads(notification.payload)
    assert isinstance(payload["aps"], dict)
    assert NOW < notification.expires_at <= NOW + MAX_TTL
    assert notification.priority in (1, 5, 10)
    if notification.collapse_id is not None:
        assert len(notification.collapse_id.encode()) <= 64
