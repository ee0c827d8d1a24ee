"""Live Activity registrations in Redis: each service's activity token and last timestamp, each
device's push-to-start token."""

from __future__ import annotations

from dataclasses import dataclass

from relay.activities import ActivityTokens, LastSent, next_timestamp
from relay.store.keys import activity_key, push_to_start_key
from relay.store.queue import RelayQueue
from relay.store.scripts import REFUSED_AT_MAXMEMORY, ScriptCall, load_script

# A push-to-start token lives as long as the app's install; the app sends it again at every
# launch (ActivityKit's pushToStartTokenUpdates), so a month without one means it is gone.
PUSH_TO_START_TTL_S = 30 * 86_400
# Compare-and-set rounds: each round one contender wins, so this many events for one activity
# may race at once (GMS sends a service a handful of events over minutes).
STAMP_ATTEMPTS = 32
ACTIVITY_STAMP = load_script("activity_stamp", REFUSED_AT_MAXMEMORY, shard_script=False)
ACTIVITY_REGISTER = load_script("activity_register", REFUSED_AT_MAXMEMORY, shard_script=False)


@dataclass(frozen=True, slots=True)
class ActivityRecord:
    tokens: ActivityTokens
    last: LastSent | None


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def _encode_last(last: LastSent | None) -> str:
    return "" if last is None else f"{last.event_s}:{last.timestamp_s}"


def _decode_last(raw: bytes | str | None) -> LastSent | None:
    text = _text(raw)
    if not text:
        return None
    event_s, _, timestamp_s = text.partition(":")
    return LastSent(int(event_s), int(timestamp_s))


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

    async def drop_push_to_start(self, app: str, device_token: str) -> bool:
        return bool(await self._queue.client.delete(push_to_start_key(app, device_token)))

    async def read(self, app: str, service_id: str, device_token: str) -> ActivityRecord:
        """What is known of the service's activity and the device, in one round trip."""
        pipe = self._queue.client.pipeline(transaction=False)
        pipe.hmget(activity_key(app, service_id), "activity_token", "last")
        pipe.get(push_to_start_key(app, device_token))
        (activity_token, last), push_to_start = await pipe.execute()
        return ActivityRecord(
            ActivityTokens(_text(activity_token), _text(push_to_start)), _decode_last(last)
        )

    async def take_stamp(
        self, app: str, service_id: str, event_s: int, last: LastSent | None, lifetime_s: int
    ) -> int | None:
        """The activity's next aps.timestamp for an event at `event_s` (taken: no other process
        gets it), or None when the event happened before the last one sent. `last` is what a
        read found; when another process took a stamp since, it is read again."""
        key = activity_key(app, service_id)
        for _ in range(STAMP_ATTEMPTS):
            stamp = next_timestamp(last, event_s)
            if stamp is None:
                return None
            taken = LastSent(event_s, stamp)
            call = ScriptCall(
                ACTIVITY_STAMP, [key], [_encode_last(last), _encode_last(taken), lifetime_s]
            )
            (done,) = await self._queue.run_scripts([call])
            if done:
                return stamp
            last = _decode_last(await self._queue.client.hget(key, "last"))
        raise RuntimeError(f"activity {service_id}: no timestamp after {STAMP_ATTEMPTS} attempts")
