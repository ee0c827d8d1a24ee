"""Apple's per-push-type rules: the apns-topic each push type needs and the priorities it allows."""

from __future__ import annotations

from types import MappingProxyType

from relay.core.model import InvalidInput

# Apple's "Sending notification requests to APNs": every push type but alert, background and mdm
# goes to the bundle id with a suffix. mdm's topic is the MDM certificate's own (its UID), which
# the app's `topic` already is for an MDM app, so it gets none.
TOPIC_SUFFIXES = MappingProxyType(
    {
        "voip": ".voip",
        "complication": ".complication",
        "fileprovider": ".pushkit.fileprovider",
        "location": ".location-query",
        "liveactivity": ".push-type.liveactivity",
        "pushtotalk": ".voip-ptt",
        "widgets": ".push-type.widgets",
        "controls": ".push-type.controls",
    }
)
# Priorities Apple allows beyond the general 1/5/10: background only 5 (10 is an error), Live
# Activities 5 or 10 (10 counts against the activity's hourly budget).
ALLOWED_PRIORITIES = MappingProxyType(
    {
        "background": frozenset({5}),
        "liveactivity": frozenset({5, 10}),
    }
)
ANY_PRIORITY = frozenset({1, 5, 10})


def topic_for(bundle_topic: str, push_type: str) -> str:
    """The apns-topic of a `push_type` push for the app whose topic is `bundle_topic`; an app
    configured with the suffixed topic itself (a VoIP-only app with topic `<bundle id>.voip`)
    keeps it."""
    suffix = TOPIC_SUFFIXES.get(push_type, "")
    return bundle_topic if bundle_topic.endswith(suffix) else bundle_topic + suffix


def check_priority(push_type: str, priority: int) -> int:
    """`priority` if Apple allows it for `push_type`, else InvalidInput naming what it allows."""
    allowed = ALLOWED_PRIORITIES.get(push_type, ANY_PRIORITY)
    if priority not in allowed:
        choices = " or ".join(str(value) for value in sorted(allowed))
        raise InvalidInput(
            "priority", f"must be {choices} for push type {push_type}", received=str(priority)
        )
    return priority
