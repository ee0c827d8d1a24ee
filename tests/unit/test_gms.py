"""GMS customhttp parsing: callback, text and chat events (the seed's shapes), refusals."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import orjson
import pytest
from app_profiles import app_profile
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.config.loading import load_settings
from relay.config.schema import ChatEvent, ConfigError
from relay.core.app_profile import AppProfile
from relay.core.gms import CHAT_ACTION, parse_customhttp, to_notification
from relay.core.model import InvalidInput, Notification, payload_limit
from relay.core.payload import AlertFields, ChatEventKind, ChatLine, PushSpec

TOKEN = "0f" * 32
SERVICE_ID = "3SQI3S31693JL9L3R00506T40C000U73"
CHAT_SERVICE_ID = "3SQIS3S1693JL9L3R00506T40C000UL4"
SESSION = "000FRa9NYM9A001K"
NOW = 1_700_000_000


PROFILES = {
    "quiet": app_profile("quiet"),
    # Typing notices are worth having only told apart (started, stopped): lineType says which.
    "typing": app_profile(
        "typing",
        chat_typing="background",
        chat_action="chat-line",
        chat_message_fields=("lineType",),
    ),
}


def profile_of(name: str | None) -> AppProfile:
    """The app a push names; "quiet" is the default."""
    return PROFILES[name or "quiet"]


def notify(spec: PushSpec, app: AppProfile) -> Notification | None:
    return to_notification(spec, app, now_s=NOW, default_ttl_s=3_600, max_ttl_s=86_400)


def body(message: object, device_id: object = TOKEN) -> bytes:
    return orjson.dumps({"deviceId": device_id, "message": message})


def parsed(message: object, device_id: str = TOKEN) -> PushSpec:
    spec = parse_customhttp(body(message, device_id))
    assert spec is not None
    return spec


def refusal(raw: bytes) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse_customhttp(raw)
    return caught.value


# The seed's Comet chat events, verbatim apart from the trailing commas JSON does not allow.
SEED_MESSAGE_RECEIPT: dict[str, Any] = {
    "data": {
        "message": {
            "startedAt": "2014-05-02T16:27:38Z",
            "chatIxnState": "TRANSCRIPT",
            "chatSessionId": SESSION,
            "transcriptToShow": [["Message.Text", "Stan", "Hello.", "8", "CLIENT"]],
            "transcriptPosition": "2",
            "chatServiceMessage": "Chat service is available",
        },
        "id": "b2e607a0d21611e3000010932938a0ff",
        "tag": f"service.chat.refresh.{CHAT_SERVICE_ID}",
    },
    "channel": "/_genesys",
}


def chat_event(line: list[str] | None, *, position: str = "3", state: str = "TRANSCRIPT") -> Any:
    event = copy.deepcopy(SEED_MESSAGE_RECEIPT)
    event["data"]["message"].update(
        chatIxnState=state,
        transcriptPosition=position,
        transcriptToShow=[] if line is None else [line],
    )
    return event


def test_callback_object_gives_id_action_and_template() -> None:
    spec = parsed({"_id": SERVICE_ID, "_action": "wait-for-agent"})
    assert spec == PushSpec(device_token=TOKEN, service_id=SERVICE_ID, action="wait-for-agent")
    notification = notify(spec, profile_of(spec.app))
    assert notification is not None
    payload = orjson.loads(notification.payload)
    assert payload["message"] == {"_id": SERVICE_ID, "_action": "wait-for-agent"}
    assert payload["aps"]["alert"]["body"] == "We will notify you when an agent is available."


def test_callback_as_a_json_encoded_string_is_the_same() -> None:
    message = {"_id": SERVICE_ID, "_action": "connect-outbound"}
    assert parsed(orjson.dumps(message).decode()) == parsed(message)


def test_other_message_keys_are_kept_and_alert_keys_become_the_alert() -> None:
    spec = parsed(
        {"_id": SERVICE_ID, "_action": "connect-inbound", "title": "Hi", "body": "B", "q": 3}
    )
    assert spec.alert == AlertFields(title="Hi", body="B")
    assert spec.message_fields == {"q": 3}
    assert parsed({"_id": SERVICE_ID, "alert": "Call now"}).alert == "Call now"
    assert parsed({"_action": "x", "body": "Only body"}).alert == "Only body"
    assert parsed({"_id": SERVICE_ID, "title": "Only title"}).alert == AlertFields(
        title="Only title"
    )
    alert_object = {"title": "T", "loc-key": "K", "loc-args": ["a"]}
    assert parsed({"_id": SERVICE_ID, "alert": alert_object}).alert == AlertFields(
        title="T", loc_key="K", loc_args=("a",)
    )


def test_unknown_actions_are_relayed() -> None:
    assert parsed({"_id": SERVICE_ID, "_action": "future.action_2"}).action == "future.action_2"


def test_plain_text_becomes_the_alert_body() -> None:
    assert parsed("Your callback is scheduled") == PushSpec(
        device_token=TOKEN, alert="Your callback is scheduled"
    )


def test_device_id_may_name_the_app_and_is_lowered() -> None:
    spec = parsed({"_id": SERVICE_ID}, device_id="typing:" + TOKEN.upper())
    assert (spec.app, spec.device_token) == ("typing", TOKEN)


@pytest.mark.parametrize(
    ("raw", "field", "rule"),
    [
        (b"not json", "body", "is not valid JSON"),
        (b"[1]", "body", "must be a JSON object"),
        (orjson.dumps({"message": "hi"}), "deviceId", "is required"),
        (body("hi", "zz"), "deviceId", "must be 8 to 200 hex digits"),
        (body("hi", "zz"), "deviceId", "; received 2 characters"),
        (body("hi", "q" * 64), "deviceId", 'received 64 characters, "q" at 1 not a hex digit'),
        (body("hi", 5), "deviceId", "must be a string; received 5"),
        (body("hi", "Bad App:" + TOKEN), "deviceId", "app prefix must be an app name: 1 to 64"),
        (body("hi", "Bad App:" + TOKEN), "deviceId", 'received "Bad App"'),
        (orjson.dumps({"deviceId": TOKEN}), "message", "is required"),
        (body(42), "message", "must be an object, a JSON string of one, or text; received 42"),
        (body(None), "message", "must be an object"),
        (body("   "), "message", 'must not be empty; received "   "'),
        (body("{broken"), "message", "looks like JSON but is not valid"),
        (body("[1, 2]"), "message", None),  # text that is not an object stays text
        (body({"foo": 1}), "message", "must have _id, _action or alert text"),
        (body({"_id": ""}), "message._id", 'must not be empty; received ""'),
        (body({"_id": 5}), "message._id", "must be a string; received 5"),
        (body({"_id": "x" * 129}), "message._id", "at most 128 characters; received"),
        (body({"_id": "S", "_action": "a b"}), "message._action", "A-Z, a-z, 0-9"),
        (body({"_id": "S", "_action": "ixn/../x"}), "message._action", "'..' segment"),
        (body({"_id": "S", "title": 3}), "message.title", "must be a string; received 3"),
        (body({"_id": "S", "alert": "a", "body": "b"}), "message.alert", "not both"),
        (body({"_id": "S", "alert": {"text": "a"}}), "message.alert.text", "not a field here"),
        (body({"_id": "S", "alert": {"loc-args": "a"}}), "message.alert.loc-args", "be a list"),
        (body({"_id": "S", "alert": {"loc-args": [1]}}), "message.alert.loc-args[0]", "string"),
    ],
)
def test_bad_bodies_are_refused_naming_the_field(raw: bytes, field: str, rule: str | None) -> None:
    if rule is None:
        assert parse_customhttp(raw) == PushSpec(device_token=TOKEN, alert="[1, 2]")
        return
    error = refusal(raw)
    assert (error.field, type(error)) == (field, InvalidInput)
    assert rule in error.detail


def test_the_customers_own_chat_line_is_not_pushed() -> None:
    assert parse_customhttp(body(SEED_MESSAGE_RECEIPT)) is None


def test_agent_chat_line_becomes_a_titled_alert() -> None:
    spec = parsed(chat_event(["Message.Text", "Kristi Sippola", "How can I help?", "9", "AGENT"]))
    assert spec.alert == AlertFields(title="Kristi Sippola", body="How can I help?")
    assert (spec.service_id, spec.action, spec.thread_id) == (CHAT_SERVICE_ID, CHAT_ACTION, SESSION)
    assert spec.chat == ChatLine(kind=ChatEventKind.MESSAGE, session_id=SESSION, position=3)
    assert spec.idempotency_key == f"chat:{SESSION}:3"
    notification = notify(spec, profile_of(None))
    assert notification is not None
    message = orjson.loads(notification.payload)["message"]
    assert message == {"_id": CHAT_SERVICE_ID, "_action": CHAT_ACTION}  # the seed's shape


def test_chat_fields_are_added_only_as_configured_with_the_seeds_types() -> None:
    spec = parsed(chat_event(["Message.Text", "Kristi Sippola", "How can I help?", "9", "AGENT"]))
    every = ("chatSessionId", "transcriptPosition", "chatEvent", "lineType", "nick")
    for fields, expected in (
        (("transcriptPosition",), {"transcriptPosition": "3"}),  # a string, as in the seed
        (
            every,
            {
                "chatSessionId": SESSION,
                "transcriptPosition": "3",
                "chatEvent": "message",
                "lineType": "Message.Text",
                "nick": "Kristi Sippola",
            },
        ),
    ):
        notification = notify(spec, app_profile("fields", chat_message_fields=fields))
        assert notification is not None
        message = orjson.loads(notification.payload)["message"]
        assert message == {"_id": CHAT_SERVICE_ID, "_action": CHAT_ACTION, **expected}


APP_YAML = """
apps:
  - name: a
    topic: com.example.demo
    environment: sandbox
    auth: {token: {key_file: key.p8, key_id: ABCDE12345, team_id: TEAM123456}}
"""


def settings_problem(tmp_path: Path, app_lines: str, queue: str = "") -> str:
    (tmp_path / "key.p8").write_text("key")
    (tmp_path / "relay.yaml").write_text(APP_YAML + app_lines + queue)
    with pytest.raises(ConfigError) as raised:
        load_settings(tmp_path / "relay.yaml", env={})
    return str(raised.value)


def test_chat_message_fields_are_a_closed_set(tmp_path: Path) -> None:
    problem = settings_problem(tmp_path, "    chat: {message_fields: [chatSessionId, startedAt]}\n")
    assert "apps[0].chat.message_fields[1]" in problem
    assert "transcriptPosition" in problem  # what is allowed


# ---- lifetimes: by action, GMS's documented defaults ----

CONFIRMATIONS = (
    "get-dialog-user-confirmation-provide_code-true",
    "get-dialog-user-confirmation-provide_code-false",
)


@pytest.mark.parametrize("action", CONFIRMATIONS)
def test_a_confirmation_lives_gms_user_confirm_timeout_and_apns_expiration_follows(
    action: str,
) -> None:
    """GMS's _user_confirm_timeout is 30 s by default: a confirmation delivered later asks about
    a callback GMS has moved on from."""
    notification = notify(parsed({"_id": SERVICE_ID, "_action": action}), profile_of(None))
    assert notification is not None
    assert notification.expires_at == NOW + 30  # apns-expiration is expires_at (the adapter)


@pytest.mark.parametrize(
    "action", ["wait-for-agent", "connect-inbound", "connect-outbound", "get-dialog-start-chat"]
)
def test_actions_gms_gives_no_timeout_keep_the_queue_default(action: str) -> None:
    notification = notify(parsed({"_id": SERVICE_ID, "_action": action}), profile_of(None))
    assert notification is not None
    assert notification.expires_at == NOW + 3_600


def test_an_apps_lifetimes_add_to_the_defaults_and_chat_events_have_their_own(
    tmp_path: Path,
) -> None:
    (tmp_path / "key.p8").write_text("key")
    (tmp_path / "relay.yaml").write_text(
        APP_YAML
        + "    ttl_by_action: {wait-for-agent: 600}\n"
        + "    chat: {ttl_by_event: {typing: 5}}\n"
    )
    app = load_settings(tmp_path / "relay.yaml", env={}).apps[0].profile()
    cases = [
        ({"_id": SERVICE_ID, "_action": "wait-for-agent"}, 600),
        ({"_id": SERVICE_ID, "_action": CONFIRMATIONS[0]}, 30),  # the default kept
        ({"_id": SERVICE_ID, "_action": "connect-outbound"}, 3_600),
    ]
    for message, lifetime in cases:
        notification = notify(parsed(message), app)
        assert notification is not None
        assert notification.expires_at == NOW + lifetime
    typing = parsed(
        chat_event(["Notice.TypingStarted", "Kristi Sippola", "is typing", "20", "AGENT"])
    )
    line = parsed(chat_event(["Message.Text", "Kristi Sippola", "Hi", "9", "AGENT"]))
    with_typing = replace(app, chat_typing="background")
    for spec, lifetime in ((typing, 5), (line, 3_600)):
        notification = notify(spec, with_typing)
        assert notification is not None
        assert notification.expires_at == NOW + lifetime


def test_a_given_ttl_wins_over_the_actions_lifetime() -> None:
    spec = replace(parsed({"_id": SERVICE_ID, "_action": CONFIRMATIONS[0]}), ttl_s=90)
    notification = notify(spec, profile_of(None))
    assert notification is not None
    assert notification.expires_at == NOW + 90


def test_a_lifetime_beyond_max_ttl_is_refused(tmp_path: Path) -> None:
    problem = settings_problem(
        tmp_path,
        "    ttl_by_action: {wait-for-agent: 100}\n",
        "queue: {max_ttl_seconds: 60, default_ttl_seconds: 60}\n",
    )
    assert "wait-for-agent (100 s) must not exceed queue.max_ttl_seconds (60)" in problem
    problem = settings_problem(tmp_path, "    ttl_by_action: {'a/../b': 100}\n")
    assert "apps[0].ttl_by_action" in problem
    assert "'..' segment" in problem


def test_chat_events_settings_name_every_kind() -> None:
    assert set(get_args(ChatEvent)) == {kind.value for kind in ChatEventKind}


@pytest.mark.parametrize(
    ("line_type", "expected", "kind"),
    [
        ("Notice.Joined", "Kristi Sippola has joined the session", ChatEventKind.JOINED),
        ("Notice.Left", "Kristi Sippola has left the session", ChatEventKind.LEFT),
    ],
)
def test_party_joined_or_left(line_type: str, expected: str, kind: ChatEventKind) -> None:
    spec = parsed(
        chat_event([line_type, "Kristi Sippola", "has joined the session", "17", "AGENT"])
    )
    assert spec.alert == AlertFields(body=expected)
    assert spec.chat is not None
    assert spec.chat.kind is kind


def test_chat_pushes_carry_an_action_the_app_can_post_or_the_apps_own() -> None:
    """The seed: "The _id and _action parameters are extracted and used to construct a URL for a
    POST to GMS": by default that POST is the chat's refresh, .../service/<id>/ixn/chat/refresh."""
    spec = parsed(chat_event(["Message.Text", "Kristi Sippola", "Hi", "9", "AGENT"]))
    for app_name, action in (("quiet", "ixn/chat/refresh"), ("typing", "chat-line")):
        notification = notify(spec, profile_of(app_name))
        assert notification is not None
        assert notification.action == action
        assert orjson.loads(notification.payload)["message"]["_action"] == action


@pytest.mark.parametrize(
    ("action", "rule"),
    [("ixn/../chat", "'..' segment"), ("./refresh", "'..' segment"), ("ixn//chat", "segments")],
)
def test_an_apps_chat_action_must_be_a_usable_path(tmp_path: Path, action: str, rule: str) -> None:
    (tmp_path / "key.p8").write_text("key")
    (tmp_path / "relay.yaml").write_text(
        f"""
apps:
  - name: a
    topic: com.example.demo
    environment: sandbox
    auth: {{token: {{key_file: key.p8, key_id: ABCDE12345, team_id: TEAM123456}}}}
    chat: {{action: "{action}"}}
"""
    )
    with pytest.raises(ConfigError) as raised:
        load_settings(tmp_path / "relay.yaml", env={})
    assert "apps[0].chat.action" in str(raised.value)
    assert rule in str(raised.value)


def test_customer_joining_is_not_pushed() -> None:
    event = chat_event(["Notice.Joined", "Stan", "has joined the session", "1", "CLIENT"])
    assert parse_customhttp(body(event)) is None


@pytest.mark.parametrize("line_type", ["Notice.TypingStarted", "Notice.TypingStopped"])
def test_typing_is_a_background_push_only_for_apps_that_want_it(line_type: str) -> None:
    spec = parsed(
        chat_event([line_type, "Kristi Sippola", "is typing", "20", "AGENT"], position="4")
    )
    assert spec.push_type == "background"
    assert spec.alert is None
    assert notify(spec, profile_of("quiet")) is None
    notification = notify(spec, profile_of("typing"))
    assert notification is not None
    assert (notification.push_type, notification.priority) == ("background", 5)
    payload = orjson.loads(notification.payload)
    assert payload["aps"] == {"content-available": 1, "thread-id": SESSION}
    assert payload["message"]["lineType"] == line_type


def test_a_message_wins_over_typing_in_the_same_event() -> None:
    event = chat_event(None)
    event["data"]["message"]["transcriptToShow"] = [
        ["Message.Text", "Kristi", "First", "8", "AGENT"],
        ["Notice.TypingStarted", "Kristi", "is typing", "9", "AGENT"],
        ["Message.Text", "Stan", "Mine", "10", "CLIENT"],
    ]
    assert parsed(event).alert == AlertFields(title="Kristi", body="First")


def test_disconnected_chat_ends_once_per_session() -> None:
    spec = parsed(chat_event(None, state="DISCONNECTED", position="12"))
    assert spec.alert == "Chat ended"
    assert spec.chat == ChatLine(kind=ChatEventKind.ENDED, session_id=SESSION, position=12)
    assert spec.idempotency_key == f"chat:{SESSION}:ended"
    event = chat_event(None, state="DISCONNECTED")
    del event["data"]["message"]["transcriptPosition"]
    assert parsed(event).chat == ChatLine(
        kind=ChatEventKind.ENDED, session_id=SESSION, position=None
    )


def test_a_repeated_position_has_the_same_idempotency_key() -> None:
    line = ["Message.Text", "Kristi", "Hello", "8", "AGENT"]
    first, again = parsed(chat_event(line, position="5")), parsed(chat_event(line, position="5"))
    later = parsed(chat_event(line, position="6"))
    assert first.idempotency_key == again.idempotency_key != later.idempotency_key


def test_chat_event_without_the_comet_wrapper_and_as_a_string() -> None:
    line = ["Message.Text", "Kristi", "Hello", "8", "AGENT"]
    whole = parsed(chat_event(line))
    assert parsed(chat_event(line)["data"]) == whole
    assert parsed(orjson.dumps(chat_event(line)).decode()) == whole


def test_unknown_line_types_are_skipped() -> None:
    event = chat_event(["Notice.Custom", "Kristi", "pushed a URL", "8", "AGENT"])
    assert parse_customhttp(body(event)) is None


@pytest.mark.parametrize(
    ("mutate", "field", "rule"),
    [
        (lambda d: d.update(tag="service.other.X"), "message.data.tag", "service.chat.refresh."),
        (lambda d: d.update(tag="service.chat.refresh."), "message.data.tag", "not be empty"),
        (lambda d: d["message"].pop("chatSessionId"), "message.data.message.chatSessionId", ""),
        (
            lambda d: d["message"].update(transcriptPosition="two"),
            "message.data.message.transcriptPosition",
            "must be a non-negative integer",
        ),
        (
            lambda d: d["message"].update(transcriptToShow="nope"),
            "message.data.message.transcriptToShow",
            "must be a list",
        ),
        (
            lambda d: d["message"].update(transcriptToShow=[["Message.Text", "x"]]),
            "message.data.message.transcriptToShow[0]",
            "must be [type, nick, text, position, party]",
        ),
    ],
)
def test_bad_chat_events_are_refused_naming_the_field(mutate: Any, field: str, rule: str) -> None:
    event = chat_event(["Message.Text", "Kristi", "Hello", "8", "AGENT"])
    mutate(event["data"])
    error = refusal(body(event))
    assert error.field == field
    assert rule in error.rule


def test_bare_chat_message_without_tag_is_refused() -> None:
    error = refusal(body(SEED_MESSAGE_RECEIPT["data"]["message"]))
    assert error.field == "message.tag"


def test_integer_positions_are_accepted() -> None:
    event = chat_event(["Message.Text", "Kristi", "Hello", "8", "AGENT"])
    event["data"]["message"]["transcriptPosition"] = 7
    assert parsed(event).idempotency_key == f"chat:{SESSION}:7"


# Property: any body GMS (or anyone) might POST is refused with InvalidInput, dropped (None), or
# becomes a notification within Apple's size limit; nothing else escapes.
texts = st.text(max_size=60) | st.integers(0, 4_500).map("y".__mul__)
# JSON numbers as GMS could send them: orjson holds 64-bit integers.
json_integers = st.integers(-(2**63), 2**63 - 1)
scalars = st.none() | st.booleans() | json_integers | st.floats(allow_nan=False) | texts
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=15,
)
lines = st.lists(
    st.sampled_from(["Message.Text", "Notice.Joined", "Notice.TypingStarted", "Other"])
    .flatmap(
        lambda kind: st.tuples(
            st.just(kind), texts, texts, st.text(max_size=3), st.sampled_from(["AGENT", "CLIENT"])
        )
    )
    .map(list),
    max_size=3,
)
chat_events = st.builds(
    lambda state, session, position, shown, tag: {
        "data": {
            "message": {
                "chatIxnState": state,
                "chatSessionId": session,
                "transcriptPosition": position,
                "transcriptToShow": shown,
            },
            "tag": f"service.chat.refresh.{tag}",
        },
        "channel": "/_genesys",
    },
    st.sampled_from(["TRANSCRIPT", "DISCONNECTED"]),
    st.sampled_from([SESSION, SESSION, ""]) | st.text(min_size=120, max_size=130),
    st.integers(0, 10**6) | st.integers(0, 10**6).map(str) | st.text(max_size=4),
    lines,
    st.sampled_from([CHAT_SERVICE_ID, CHAT_SERVICE_ID, ""]) | st.text(max_size=130),
)
callbacks = st.fixed_dictionaries(
    {},
    optional={
        "_id": st.just(SERVICE_ID) | json_values,
        "_action": st.sampled_from(["wait-for-agent", "get-dialog-start-chat"]) | json_values,
        "alert": json_values,
        "title": texts,
        "body": texts,
        "extra": json_values,
    },
)
messages = callbacks | chat_events | texts | json_values
message_forms = messages | messages.map(lambda m: orjson.dumps(m).decode())
# Valid device ids only (bad ones are refused first, tested above), so inputs reach the rest.
device_ids = st.sampled_from([TOKEN, f"typing:{TOKEN}", f"quiet:{TOKEN}"])
bodies = st.builds(
    lambda d, m: orjson.dumps({"deviceId": d, "message": m}), device_ids, message_forms
)


@settings(max_examples=400, deadline=None)
@given(raw=bodies)
def test_any_body_is_refused_dropped_or_pushed_within_the_limit(raw: bytes) -> None:
    refused: InvalidInput | None = None
    notification: Notification | None = None
    try:
        spec = parse_customhttp(raw)
        notification = None if spec is None else notify(spec, profile_of(spec.app))
    except InvalidInput as error:
        refused = error
    if refused is not None:
        assert refused.rule
    elif notification is not None:
        assert len(notification.payload) <= payload_limit(notification.push_type)
        assert isinstance(orjson.loads(notification.payload)["aps"], dict)


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(max_size=64))
def test_arbitrary_bytes_are_refused_or_parsed(raw: bytes) -> None:
    refused: InvalidInput | None = None
    try:
        parse_customhttp(raw)
    except InvalidInput as error:
        refused = error
    assert refused is None or refused.field in ("body", "deviceId", "message")
