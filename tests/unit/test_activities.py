"""Live Activity mapping and Apple's push-type rules: pure, table-tested."""

from __future__ import annotations

import orjson
import pytest

from relay.config.schema import LiveActivitySettings
from relay.core.activities import (
    ActivityEvent,
    ActivityPush,
    ActivityTokens,
    LastSent,
    activity_notification,
    next_timestamp,
    plan_activity_push,
    without_device_dead_mark,
)
from relay.core.model import PUSH_TYPES, Expired, Failed, InvalidInput, PayloadTooLarge
from relay.core.push_types import check_priority, topic_for

SETTINGS = LiveActivitySettings()
ACTIVITY = "ab" * 32
START = "cd" * 32
SERVICE = "3SQI3S31693JL9L3R00506T40C000U73"
NOW = 1_800_000_000


@pytest.mark.parametrize(
    ("push_type", "topic"),
    [
        ("alert", "com.example.app"),
        ("background", "com.example.app"),
        ("mdm", "com.example.app"),
        ("voip", "com.example.app.voip"),
        ("complication", "com.example.app.complication"),
        ("fileprovider", "com.example.app.pushkit.fileprovider"),
        ("location", "com.example.app.location-query"),
        ("liveactivity", "com.example.app.push-type.liveactivity"),
        ("pushtotalk", "com.example.app.voip-ptt"),
        ("widgets", "com.example.app.push-type.widgets"),
        ("controls", "com.example.app.push-type.controls"),
    ],
)
def test_each_push_type_has_its_topic(push_type: str, topic: str) -> None:
    assert push_type in PUSH_TYPES
    assert topic_for("com.example.app", push_type) == topic


def test_a_topic_configured_with_its_suffix_keeps_it() -> None:
    assert topic_for("com.example.app.voip", "voip") == "com.example.app.voip"
    assert topic_for("com.example.app.voip", "alert") == "com.example.app.voip"


@pytest.mark.parametrize(
    ("push_type", "priority", "allowed"),
    [
        ("alert", 1, True),
        ("alert", 10, True),
        ("background", 5, True),
        ("background", 10, False),
        ("background", 1, False),
        ("liveactivity", 5, True),
        ("liveactivity", 10, True),
        ("liveactivity", 1, False),
        ("voip", 10, True),
    ],
)
def test_priority_rules(push_type: str, priority: int, allowed: bool) -> None:
    if allowed:
        assert check_priority(push_type, priority) == priority
    else:
        with pytest.raises(InvalidInput) as caught:
            check_priority(push_type, priority)
        assert caught.value.field == "priority"
        assert push_type in caught.value.rule


@pytest.mark.parametrize(
    ("action", "tokens", "expected"),
    [
        # Registered activity: every step updates it, connect and cancel end it.
        ("wait-for-agent", ActivityTokens(ACTIVITY, START), (ActivityEvent.UPDATE, ACTIVITY, 5)),
        (
            "get-dialog-user-confirmation-provide_code-true",
            ActivityTokens(ACTIVITY, None),
            (ActivityEvent.UPDATE, ACTIVITY, 10),
        ),
        ("connect-inbound", ActivityTokens(ACTIVITY, None), (ActivityEvent.END, ACTIVITY, 10)),
        ("connect-outbound", ActivityTokens(ACTIVITY, None), (ActivityEvent.END, ACTIVITY, 10)),
        ("cancel", ActivityTokens(ACTIVITY, None), (ActivityEvent.END, ACTIVITY, 5)),
        # None registered: only a start action starts it, and only with a push-to-start token.
        ("wait-for-agent", ActivityTokens(None, START), (ActivityEvent.START, START, 5)),
        ("wait-for-agent", ActivityTokens(None, None), None),
        ("connect-inbound", ActivityTokens(None, START), None),
        # Not a step of the activity (a chat, an unknown action).
        ("get-dialog-start-chat", ActivityTokens(ACTIVITY, START), None),
    ],
)
def test_plan(
    action: str,
    tokens: ActivityTokens,
    expected: tuple[ActivityEvent, str, int] | None,
) -> None:
    push = plan_activity_push(SETTINGS, service_id=SERVICE, action=action, fields={}, tokens=tokens)
    if expected is None:
        assert push is None
    else:
        assert push is not None
        assert (push.event, push.token, push.priority) == expected
        assert push.content_state["service_id"] == SERVICE


def test_content_state_carries_gms_fields_but_not_over_its_own() -> None:
    push = plan_activity_push(
        SETTINGS,
        service_id=SERVICE,
        action="wait-for-agent",
        fields={"estimated_wait_s": 240, "stage": "forged", "nothing": None},
        tokens=ActivityTokens(ACTIVITY, None),
    )
    assert push is not None
    assert push.content_state == {
        "estimated_wait_s": 240,
        "stage": "waiting",
        "service_id": SERVICE,
        "label": "Waiting for an agent",
    }


@pytest.mark.parametrize(
    ("last", "event_s", "stamp"),
    [
        (None, 100, 100),
        (LastSent(99, 99), 100, 100),
        (LastSent(100, 100), 100, 101),  # one second, two events: successive stamps
        (LastSent(100, 102), 100, 103),  # a burst ran ahead of the clock: keep increasing
        (LastSent(100, 102), 101, 103),  # ...and a later event is not taken for an old one
        (LastSent(100, 102), 105, 105),
        (LastSent(101, 101), 100, None),  # happened before the last one sent: dropped
    ],
)
def test_timestamps_strictly_increase_and_older_events_are_dropped(
    last: LastSent | None, event_s: int, stamp: int | None
) -> None:
    assert next_timestamp(last, event_s) == stamp


def _aps(event: ActivityEvent, state: dict[str, object] | None = None) -> dict[str, object]:
    push = ActivityPush(event, ACTIVITY, 10, state or {"stage": "waiting"})
    n = activity_notification(
        "app", SETTINGS, push, service_id=SERVICE, timestamp_s=NOW, now_s=NOW, expires_at=NOW + 60
    )
    assert (n.push_type, n.priority, n.device_token, n.expires_at) == (
        "liveactivity",
        10,
        ACTIVITY,
        NOW + 60,
    )
    aps: dict[str, object] = orjson.loads(n.payload)["aps"]
    return aps


def test_payload_per_event() -> None:
    start = _aps(ActivityEvent.START)
    assert start == {
        "timestamp": NOW,
        "event": "start",
        "content-state": {"stage": "waiting"},
        "stale-date": NOW + SETTINGS.stale_after_s,
        "relevance-score": SETTINGS.relevance_score,
        "attributes-type": "CallbackAttributes",
        "attributes": {"service_id": SERVICE},
        "alert": {"title": "You are in the queue", "body": "We will show your callback here."},
    }
    update = _aps(ActivityEvent.UPDATE)
    assert update["event"] == "update"
    assert "attributes" not in update
    assert "alert" not in update
    assert update["stale-date"] == NOW + SETTINGS.stale_after_s
    end = _aps(ActivityEvent.END)
    assert end["dismissal-date"] == NOW + SETTINGS.dismiss_after_s
    assert "stale-date" not in end


def test_oversized_content_state_is_refused() -> None:
    with pytest.raises(PayloadTooLarge):
        _aps(ActivityEvent.UPDATE, {"stage": "waiting", "note": "x" * 5000})


def test_config_refuses_a_start_action_that_is_not_a_step() -> None:
    with pytest.raises(ValueError, match="start_actions"):
        LiveActivitySettings(start_actions=["get-dialog-start-chat"])


def test_a_dead_answer_to_a_live_activity_push_marks_only_the_activity_token() -> None:
    dead = Failed(reason="Unregistered", status=410, dead_token=True, token_invalid_since_ms=5)
    assert without_device_dead_mark("liveactivity", dead) == (
        Failed(reason="Unregistered", status=410),
        True,
    )
    assert without_device_dead_mark("alert", dead) == (dead, False)
    failed = Failed(reason="PayloadTooLarge", status=413)
    assert without_device_dead_mark("liveactivity", failed) == (failed, False)
    assert without_device_dead_mark("liveactivity", Expired()) == (Expired(), False)
