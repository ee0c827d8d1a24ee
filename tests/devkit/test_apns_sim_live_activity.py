"""The simulator judges liveactivity pushes: topic suffix, priority, the keys each event needs."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from test_apns_sim_protocol import judge, request

from relay_devkit.apns_sim.answers import Answer
from relay_devkit.apns_sim.protocol import (
    Accepted,
)

TOPIC = "com.example.app.push-type.liveactivity"
STATE = {"stage": "waiting"}
START = {
    "timestamp": 1,
    "event": "start",
    "content-state": STATE,
    "attributes-type": "CallbackAttributes",
    "attributes": {"service_id": "S"},
    "alert": {"title": "t", "body": "b"},
}
UPDATE = {"timestamp": 1, "event": "update", "content-state": STATE, "stale-date": 9}
END = {"timestamp": 1, "event": "end", "content-state": STATE, "dismissal-date": 9}


def live(aps: dict[str, Any], topic: str = TOPIC, priority: str = "10") -> object:
    body = orjson.dumps({"aps": aps})
    return judge(
        request(body=body, apns_topic=topic, apns_push_type="liveactivity", apns_priority=priority)
    )


@pytest.mark.parametrize("aps", [START, UPDATE, END, {"timestamp": 1, "event": "end"}])
def test_what_activitykit_can_apply_is_accepted(aps: dict[str, Any]) -> None:
    assert isinstance(live(aps), Accepted)
    assert isinstance(live(aps, priority="5"), Accepted)


def without(aps: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in aps.items() if k != key}


@pytest.mark.parametrize(
    ("aps", "topic", "priority", "reason"),
    [
        (UPDATE, "com.example.app", "10", "BadTopic"),
        (UPDATE, TOPIC, "1", "BadPriority"),
        (without(UPDATE, "timestamp"), TOPIC, "10", "InvalidLiveActivityPayload"),
        ({**UPDATE, "timestamp": "1"}, TOPIC, "10", "InvalidLiveActivityPayload"),
        ({**UPDATE, "event": "pause"}, TOPIC, "10", "InvalidLiveActivityPayload"),
        (without(UPDATE, "content-state"), TOPIC, "10", "InvalidLiveActivityPayload"),
        ({**UPDATE, "content-state": "waiting"}, TOPIC, "10", "InvalidLiveActivityPayload"),
        ({**UPDATE, "content-state": [1]}, TOPIC, "10", "InvalidLiveActivityPayload"),
        ({**END, "dismissal-date": "soon"}, TOPIC, "10", "InvalidLiveActivityPayload"),
        (without(START, "attributes-type"), TOPIC, "10", "InvalidLiveActivityPayload"),
        (without(START, "attributes"), TOPIC, "10", "InvalidLiveActivityPayload"),
        (without(START, "alert"), TOPIC, "10", "InvalidLiveActivityPayload"),
        ({**START, "attributes": "S"}, TOPIC, "10", "InvalidLiveActivityPayload"),
    ],
)
def test_what_it_cannot_is_refused(
    aps: dict[str, Any], topic: str, priority: str, reason: str
) -> None:
    answer = live(aps, topic, priority)
    assert isinstance(answer, Answer)
    assert (answer.status, answer.reason) == (400, reason)


def test_a_live_activity_payload_over_4096_bytes_is_too_large() -> None:
    answer = live({**UPDATE, "content-state": {"note": "x" * 4100}})
    assert isinstance(answer, Answer)
    assert (answer.status, answer.reason) == (413, "PayloadTooLarge")
