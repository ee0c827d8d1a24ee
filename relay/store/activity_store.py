"""Live Activity registrations in Redis: each service's activity token and last timestamp, each
device's push-to-start token."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from relay.core.activities import ActivityTokens, LastSent, next_timestamp
from relay.store.codec import optional_text
from relay.store.keys import (
    activity_dead_key,
    activity_key,
    push_to_start_key,
    registrations_key,
)
from relay.store.queue import RelayQueue
from relay.store.scripts import LIBRARY, ScriptCall

# A push-to-start token lives as long as the app's install; the app sends it again at every
# launch (ActivityKit's pushToStartTokenUpdates), so a month without one means it is gone.
PUSH_TO_START_TTL_S = 30 * 86_400
# Compare-and-set rounds: each round one contender wins, so this many events for one activity
# may race at once (GMS sends a service a handful of events over minutes).
STAMP_ATTEMPTS = 32
ACTIVITY_STAMP = LIBRARY.script("activity_stamp")
ACTIVITY_REGISTER = LIBRARY.script("activity_register")
ACTIVITY_BIND = LIBRARY.script("activity_bind")
# The two kinds of registration each app's budget counts.
ACTIVITIES = "activities"
PUSH_TO_START_TOKENS = "push-to-start"


@dataclass(frozen=True, slots=True)
class ActivityRecord:
    tokens: ActivityTokens
    last: LastSent | None


def _encode_last(last: LastSent | None) -> str:
    return "" if last is None else f"{last.event_s}:{last.timestamp_s}"


def _decode_last(raw: bytes | str | None) -> LastSent | None:
    text = optional_text(raw)
    if not text:
        return None
    event_s, _, timestamp_s = text.partition(":")
    return LastSent(int(event_s), int(timestamp_s))


class ActivityStore:
    """Reads and writes of Live Activity registrations (the decisions are
    relay.core.activities')."""

    def __init__(self, queue: RelayQueue) -> None:
        self._queue = queue

    async def register(
        self, app: str, service_id: str, activity_token: str, device_token: str, lifetime_s: int
    ) -> bool:
        """Bind the service's activity to its update token, if GMS pushed the service to
        `device_token` (False otherwise: nothing is written). The record's lifetime runs from
        GMS's first push for the service: a registration does not extend it."""
        call = ScriptCall(
            ACTIVITY_REGISTER,
            [activity_key(app, service_id)],
            [activity_token, device_token, lifetime_s],
        )
        (registered,) = await self._queue.run_scripts([call])
        return bool(registered)

    async def within_budget(
        self, app: str, kind: str, member: str, lifetime_s: int, budget: int, now_ms: int
    ) -> bool:
        """Count `member` among the app's live registrations of `kind` (until now + lifetime);
        False, and nothing counted, when it is new and the app already holds `budget` of them."""
        key = registrations_key(app, kind)
        pipe = self._queue.client.pipeline(transaction=True)
        pipe.zremrangebyscore(key, "-inf", now_ms)
        pipe.zadd(key, {member: now_ms + lifetime_s * 1000})
        pipe.zcard(key)
        pipe.pexpire(key, lifetime_s * 1000)
        _, added, count, _ = await pipe.execute()
        if added and count > budget:
            await self._queue.client.zrem(key, member)
            return False
        return True

    async def mark_token_dead(self, app: str, token: str, ttl_s: int) -> None:
        """APNs called a Live Activity token dead: remembered for Live Activity pushes alone (a
        device's own token, registered as an activity token by mistake or malice, stays
        deliverable for its alerts)."""
        await self._queue.client.set(activity_dead_key(app, token), 1, ex=ttl_s)

    async def token_dead(self, app: str, token: str) -> bool:
        return bool(await self._queue.client.exists(activity_dead_key(app, token)))

    async def bound_to(self, app: str, service_id: str, device_token: str) -> bool:
        """Whether GMS pushed the service to `device_token` (within the service's lifetime)."""
        bound = await self._queue.client.hget(activity_key(app, service_id), "gms_device_token")
        return optional_text(bound) == device_token

    async def unregister(self, app: str, service_id: str, device_token: str) -> bool:
        """Forget the service's activity token (the app ended it), when `device_token` is the
        device GMS pushed the service to; its last stamp stays, so a late event cannot go out
        older than what the phone already showed."""
        if not await self.bound_to(app, service_id, device_token):
            return False
        key = activity_key(app, service_id)
        removed = await self._queue.client.hdel(key, "activity_token", "device_token")
        return bool(removed)

    async def drop_activity_token(self, app: str, service_id: str, activity_token: str) -> None:
        """Forget a token APNs called dead, unless the app registered a new one meanwhile."""
        key = activity_key(app, service_id)
        current = optional_text(await self._queue.client.hget(key, "activity_token"))
        if current == activity_token:
            await self._queue.client.hdel(key, "activity_token", "device_token")

    async def set_push_to_start(self, app: str, device_token: str, token: str) -> None:
        await self._queue.client.set(
            push_to_start_key(app, device_token), token, ex=PUSH_TO_START_TTL_S
        )

    async def drop_push_to_start(self, app: str, device_token: str) -> bool:
        return bool(await self._queue.client.delete(push_to_start_key(app, device_token)))

    async def bind_and_read(
        self, app: str, service_id: str, device_token: str, lifetime_s: int
    ) -> ActivityRecord:
        """Remember that GMS pushed the service to `device_token` (the one device that may
        register its activity), and read what is known of the activity and the device."""
        bind = ScriptCall(
            ACTIVITY_BIND, [activity_key(app, service_id)], [device_token, lifetime_s]
        )
        ((activity_token, last),), push_to_start = await asyncio.gather(
            self._queue.run_scripts([bind]),
            self._queue.client.get(push_to_start_key(app, device_token)),
        )
        return ActivityRecord(
            ActivityTokens(optional_text(activity_token), optional_text(push_to_start)),
            _decode_last(last),
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
