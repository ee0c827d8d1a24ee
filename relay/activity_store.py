"""Live Activity registrations in Redis: each service's activity token and last timestamp, each
device's push-to-start token."""

from __future__ import annotations

from dataclasses import dataclass

from relay.activities import ActivityTokens, next_timestamp
from relay.queue import KEY_ROOT, RelayQueue, ScriptCall, load_script

ACTIVITY = "activity:"  # HASH: activity_token, device_token, last_ts
PUSH_TO_START = "pts:"  # STRING: a device's push-to-start token
# A push-to-start token lives as long as the app's install; the app sends it again at every
# launch (ActivityKit's pushToStartTokenUpdates), so a month without one means it is gone.
PUSH_TO_START_TTL_S = 30 * 86_400
STAMP_ATTEMPTS = 8  # compare-and-set rounds before giving up under extreme contention
ACTIVITY_STAMP = load_script("activity_stamp", shard_script=False)
ACTIVITY_REGISTER = load_script("activity_register", shard_script=False)


def activity_key(app: str, service_id: str) -> str:
    # Its own hash tag: one key per activity, so it may live in any Cluster slot.
    name = f"{ACTIVITY}{app}:{service_id}"
    return f"{KEY_ROOT}:{{{name}}}:{name}"


def push_to_start_key(app: str, device_token: str) -> str:
    name = f"{PUSH_TO_START}{app}:{device_token}"
    return f"{KEY_ROOT}:{{{name}}}:{name}"


@dataclass(frozen=True, slots=True)
class ActivityRecord:
    tokens: ActivityTokens
    last_ts: int | None


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class ActivityStore:
    """Reads and writes of Live Activity registrations (the decisions are relay.activities')."""

    def __init__(self, queue: RelayQueue) -> None:
        self._queue = queue

    async def register(
        self, app: str, service_id: str, activity_token: str, device_token: str, lifetime_s: int
    ) -> None:
        """Bind the service's activity to its update token for the service's lifetime."""
        call = ScriptCall(
            ACTIVITY_REGISTER,
            [activity_key(app, service_id)],
            [activity_token, device_token, lifetime_s],
        )
        await self._queue.run_scripts([call])

    async def unregister(self, app: str, service_id: str) -> bool:
        """Forget the service's activity token (the app ended it); its last stamp stays, so a
        late event cannot go out older than what the phone already showed."""
        removed = await self._queue.client.hdel(
            activity_key(app, service_id), "activity_token", "device_token"
        )
        return bool(removed)

    async def drop_activity_token(self, app: str, service_id: str, activity_token: str) -> None:
        """Forget a token APNs called dead, unless the app registered a new one meanwhile."""
        key = activity_key(app, service_id)
        current = _text(await self._queue.client.hget(key, "activity_token"))
        if current == activity_token:
            await self._queue.client.hdel(key, "activity_token", "device_token")

    async def set_push_to_start(self, app: str, device_token: str, token: str) -> None:
        await self._queue.client.set(
            push_to_start_key(app, device_token), token, ex=PUSH_TO_START_TTL_S
        )

    async def drop_push_to_start(self, app: str, device_token: str) -> None:
        await self._queue.client.delete(push_to_start_key(app, device_token))

    async def read(self, app: str, service_id: str, device_token: str) -> ActivityRecord:
        """What is known of the service's activity and the device, in one round trip."""
        pipe = self._queue.client.pipeline(transaction=False)
        pipe.hmget(activity_key(app, service_id), "activity_token", "last_ts")
        pipe.get(push_to_start_key(app, device_token))
        (activity_token, last_ts), push_to_start = await pipe.execute()
        last = _text(last_ts)
        return ActivityRecord(
            ActivityTokens(_text(activity_token), _text(push_to_start)),
            None if last is None else int(last),
        )

    async def take_stamp(
        self, app: str, service_id: str, event_s: int, last_ts: int | None, lifetime_s: int
    ) -> int | None:
        """The activity's next aps.timestamp for an event at `event_s` (taken: no other process
        gets it), or None when the event is older than the last stamp sent."""
        key = activity_key(app, service_id)
        for _ in range(STAMP_ATTEMPTS):
            stamp = next_timestamp(last_ts, event_s)
            if stamp is None:
                return None
            expected = "" if last_ts is None else str(last_ts)
            call = ScriptCall(ACTIVITY_STAMP, [key], [expected, stamp, lifetime_s])
            (taken,) = await self._queue.run_scripts([call])
            if taken:
                return stamp
            raw = _text(await self._queue.client.hget(key, "last_ts"))
            last_ts = None if raw is None else int(raw)
        raise RuntimeError(f"activity {service_id}: no timestamp after {STAMP_ATTEMPTS} attempts")
