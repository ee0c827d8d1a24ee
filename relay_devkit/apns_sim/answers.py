"""What the simulator answers a stream: the status and Apple's reason, one constant per reason
("Handling notification responses from APNs"). Apart from relay_devkit.apns_sim.protocol so that
the rule modules it calls (live_activity) import these without importing it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Answer:
    """What the simulator says to one stream."""

    status: int
    reason: str | None = None
    timestamp_ms: int | None = None  # 410 only
    body: bool = True  # False: the status alone, no DATA frame (a fault)


OK: Final = Answer(200)
METHOD_NOT_ALLOWED: Final = Answer(405, "MethodNotAllowed")
BAD_PATH: Final = Answer(404, "BadPath")
MISSING_DEVICE_TOKEN: Final = Answer(400, "MissingDeviceToken")
BAD_DEVICE_TOKEN: Final = Answer(400, "BadDeviceToken")
BAD_MESSAGE_ID: Final = Answer(400, "BadMessageId")
MISSING_TOPIC: Final = Answer(400, "MissingTopic")
BAD_TOPIC: Final = Answer(400, "BadTopic")
TOPIC_DISALLOWED: Final = Answer(400, "TopicDisallowed")
INVALID_PUSH_TYPE: Final = Answer(400, "InvalidPushType")
BAD_PRIORITY: Final = Answer(400, "BadPriority")
BAD_EXPIRATION_DATE: Final = Answer(400, "BadExpirationDate")
BAD_COLLAPSE_ID: Final = Answer(400, "BadCollapseId")
DUPLICATE_HEADERS: Final = Answer(400, "DuplicateHeaders")
PAYLOAD_EMPTY: Final = Answer(400, "PayloadEmpty")
PAYLOAD_TOO_LARGE: Final = Answer(413, "PayloadTooLarge")
MISSING_PROVIDER_TOKEN: Final = Answer(403, "MissingProviderToken")
INVALID_PROVIDER_TOKEN: Final = Answer(403, "InvalidProviderToken")
EXPIRED_PROVIDER_TOKEN: Final = Answer(403, "ExpiredProviderToken")
UNRELATED_KEY_ID: Final = Answer(403, "UnrelatedKeyIdInToken")
BAD_ENVIRONMENT_KEY: Final = Answer(403, "BadEnvironmentKeyIdInToken")
DEVICE_TOKEN_NOT_FOR_TOPIC: Final = Answer(400, "DeviceTokenNotForTopic")
TOO_MANY_PROVIDER_TOKEN_UPDATES: Final = Answer(429, "TooManyProviderTokenUpdates")
TOO_MANY_REQUESTS: Final = Answer(429, "TooManyRequests")
