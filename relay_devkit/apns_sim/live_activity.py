"""The simulator's checks of a liveactivity push (sans-IO): topic suffix, priority, payload keys.

Apple checks the topic and priority at the gateway. A payload ActivityKit cannot use (no
timestamp, an unknown event, a content-state that is not an object, a start without its
attributes) is accepted by APNs and dropped on the phone, where nobody sees why; the simulator
refuses it instead, with the simulator-only reason InvalidLiveActivityPayload, so a test sees it.
"""

from __future__ import annotations

from typing import Final

from relay_devkit.apns_sim.answers import BAD_PRIORITY, BAD_TOPIC, Answer

LIVE_ACTIVITY_SUFFIX: Final = ".push-type.liveactivity"
LIVE_ACTIVITY_PRIORITIES: Final = frozenset({5, 10})
INVALID_LIVE_ACTIVITY_PAYLOAD: Final = Answer(400, "InvalidLiveActivityPayload")
EVENTS: Final = frozenset({"start", "update", "end"})
# Keys each event must carry beside timestamp and event.
REQUIRED: Final = {
    "start": ("content-state", "attributes-type", "attributes", "alert"),
    "update": ("content-state",),
    "end": (),
}
DATES: Final = ("stale-date", "dismissal-date")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_live_activity(topic: str, priority: int, document: object) -> Answer | None:
    """Why a liveactivity push is refused, or None when ActivityKit can apply it."""
    if not topic.endswith(LIVE_ACTIVITY_SUFFIX):
        return BAD_TOPIC
    if priority not in LIVE_ACTIVITY_PRIORITIES:
        return BAD_PRIORITY
    aps = document.get("aps") if isinstance(document, dict) else None
    if not isinstance(aps, dict):
        return INVALID_LIVE_ACTIVITY_PAYLOAD
    event = aps.get("event")
    if not _is_int(aps.get("timestamp")) or event not in EVENTS:
        return INVALID_LIVE_ACTIVITY_PAYLOAD
    if any(key not in aps for key in REQUIRED[event]):
        return INVALID_LIVE_ACTIVITY_PAYLOAD
    if "content-state" in aps and not isinstance(aps["content-state"], dict):
        return INVALID_LIVE_ACTIVITY_PAYLOAD
    if event == "start" and (
        not isinstance(aps["attributes-type"], str) or not isinstance(aps["attributes"], dict)
    ):
        return INVALID_LIVE_ACTIVITY_PAYLOAD
    if any(key in aps and not _is_int(aps[key]) for key in DATES):
        return INVALID_LIVE_ACTIVITY_PAYLOAD
    return None
