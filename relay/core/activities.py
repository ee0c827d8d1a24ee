"""GMS callback action -> Live Activity push (start, update, end), by Apple's ActivityKit rules."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import orjson

from relay.core.alerts import AlertTemplate
from relay.core.model import (
    MAX_PAYLOAD_BYTES,
    DeliveryOutcome,
    Failed,
    Notification,
    PayloadTooLarge,
)

LIVE_ACTIVITY = "liveactivity"


class ActivityStepPlan(Protocol):
    """One GMS action's step of the activity, as planning reads it (config's LiveActivityStep)."""

    @property
    def stage(self) -> str: ...
    @property
    def label(self) -> str: ...
    @property
    def event(self) -> str: ...
    @property
    def priority(self) -> int: ...


class LiveActivitySettings(Protocol):
    """An app's Live Activity as planning reads it: config's section of that name satisfies it,
    so this layer reads the settings without importing relay.config."""

    @property
    def steps(self) -> Mapping[str, ActivityStepPlan]: ...
    @property
    def start_actions(self) -> Collection[str]: ...
    @property
    def start_alert(self) -> AlertTemplate: ...
    @property
    def stale_after_s(self) -> int: ...
    @property
    def dismiss_after_s(self) -> int: ...
    @property
    def relevance_score(self) -> float: ...
    @property
    def attributes_type(self) -> str: ...


class ActivityEvent(StrEnum):
    """Apple's `aps.event` values."""

    START = "start"
    UPDATE = "update"
    END = "end"


@dataclass(frozen=True, slots=True)
class ActivityTokens:
    """What the relay knows of one service's Live Activity when an event for it arrives."""

    activity_token: str | None  # registered by the app for this service (its update token)
    push_to_start_token: str | None  # the device's push-to-start token (iOS 17.2+)


@dataclass(frozen=True, slots=True)
class ActivityPush:
    """The Live Activity push an event asks for, before its timestamp is drawn (next_timestamp)."""

    event: ActivityEvent
    token: str  # the activity's update token, or the push-to-start token for START
    priority: int
    content_state: dict[str, object]


def plan_activity_push(
    settings: LiveActivitySettings,
    *,
    service_id: str,
    action: str,
    fields: dict[str, object],
    tokens: ActivityTokens,
) -> ActivityPush | None:
    """The push the GMS callback `action` asks for, or None: the action is not a step of the
    activity, or there is no token to reach it (an update for an activity never started, a
    start on a device without a push-to-start token, anything but a start action)."""
    step = settings.steps.get(action)
    if step is None:
        return None
    # GMS's own fields (an estimated wait, a position) come first, so the relay's keys win.
    state: dict[str, object] = {
        **{key: value for key, value in fields.items() if value is not None},
        "stage": step.stage,
        "service_id": service_id,
        "label": step.label,
    }
    if tokens.activity_token is not None:
        event = ActivityEvent.END if step.event == "end" else ActivityEvent.UPDATE
        return ActivityPush(event, tokens.activity_token, step.priority, state)
    if action in settings.start_actions and tokens.push_to_start_token is not None:
        return ActivityPush(ActivityEvent.START, tokens.push_to_start_token, step.priority, state)
    return None


@dataclass(frozen=True, slots=True)
class LastSent:
    """The last Live Activity push taken for an activity: when its event happened, its stamp."""

    event_s: int
    timestamp_s: int


def next_timestamp(last: LastSent | None, event_s: int) -> int | None:
    """The `aps.timestamp` for an event that happened at `event_s`, or None when it happened
    before the last one sent for the activity: it stands for a state the customer has already
    left (and the phone would ignore it). Events in one second get successive stamps, so stamps
    strictly increase (their queue keeps them in order) while an event is judged old by when it
    happened, never by a stamp that ran ahead of the clock."""
    if last is None:
        return event_s
    if event_s < last.event_s:
        return None
    return max(event_s, last.timestamp_s + 1)


def activity_notification(
    app_name: str,
    settings: LiveActivitySettings,
    push: ActivityPush,
    *,
    service_id: str,
    timestamp_s: int,
    now_s: int,
    expires_at: int,
) -> Notification:
    """The APNs request for `push` stamped `timestamp_s`; InvalidInput if it is over Apple's limit
    (the GMS message carried too much for a content-state)."""
    aps: dict[str, object] = {
        "timestamp": timestamp_s,
        "event": push.event.value,
        "content-state": push.content_state,
    }
    if push.event is ActivityEvent.END:
        aps["dismissal-date"] = now_s + settings.dismiss_after_s
    else:
        aps["stale-date"] = now_s + settings.stale_after_s
        aps["relevance-score"] = settings.relevance_score
    if push.event is ActivityEvent.START:
        aps["attributes-type"] = settings.attributes_type
        aps["attributes"] = {"service_id": service_id}
        aps["alert"] = {"title": settings.start_alert.title, "body": settings.start_alert.body}
    body = orjson.dumps({"aps": aps})
    if len(body) > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(
            "message",
            f"makes a Live Activity payload of {len(body)} bytes; APNs accepts at most "
            f"{MAX_PAYLOAD_BYTES}",
        )
    return Notification(
        app=app_name,
        device_token=push.token,
        payload=body,
        push_type=LIVE_ACTIVITY,
        priority=push.priority,
        expires_at=expires_at,
        action=push.event.value,
    )


def without_device_dead_mark(
    push_type: str, outcome: DeliveryOutcome
) -> tuple[DeliveryOutcome, bool]:
    """(the outcome to settle, whether a Live Activity token is dead). APNs' dead answer to a Live
    Activity push concerns that activity (or push-to-start) token alone: it is failed without the
    device dead mark, which would refuse the device's own pushes (a device token registered as
    an activity token got its owner 410s for 30 days), and the caller marks the activity token."""
    if push_type == LIVE_ACTIVITY and isinstance(outcome, Failed) and outcome.dead_token:
        return Failed(reason=outcome.reason, status=outcome.status), True
    return outcome, False
