"""Every Redis key name and prefix the relay uses, spelled once; the shards' Cluster hash tags.

The Lua scripts get the names they share in a prelude (relay.store.scripts), never spelled there.
"""

from __future__ import annotations

import functools

from redis.crc import key_slot

from relay.core.model import Route

# Every key of shard s starts with shard_prefix(s) = "relay:{<tag>}:"; the hash tag puts all of a
# shard's keys in one Cluster slot, so each script touches exactly one slot (see shard_tag).
# A device is "<app>:<token>".
KEY_ROOT = "relay"
WAKE_CHANNEL = "relay:wake"  # enqueue/settle PUBLISH the shard prefix when a device becomes due
DUE = "due"  # ZSET device -> when its head is next due (ms); only unleased devices
LEASE = "lease"  # ZSET device -> lease deadline (ms) of its claimed head
HEADS = "heads"  # ZSET device -> accepted_at_ms of its head (oldest pending age)
STATS = "stats"  # HASH lifetime counters (STAT_COUNTERS) and the live "pending" count
QUEUE = "q:"  # LIST + device: notification ids, oldest first
# STRING per shard: the record layout (relay.store.queued.QUEUED_LAYOUT) its queued notifications
# are in; written by the first relay of that layout to start on an empty shard (see
# RelayQueue.layout_refusal).
LAYOUT = "layout"
# STRING + id: a queued notification's record, its APNs payload included (relay.store.queued);
# deleted once final.
NOTE = "n:"
# HASH + bucket: final records (relay.store.history), field = the id without its shard; TTL = the
# retention from its last write.
HISTORY = "h:"
# HASH + bucket: delivery receipts (relay.store.receipts), field as in HISTORY, value = when the
# phone's receipt arrived (ms); TTL = the retention from its last write.
RECEIPTS = "r:"
HISTORY_BUCKETS = "hist"  # ZSET bucket -> bucket: the shard's history buckets, oldest first
DEAD = "dead:"  # HASH + device: reason, status, invalid_since_ms, marked_at_ms
IDEM = "idem:"  # STRING + device + ":" + idempotency key -> "<id>[ <request digest>]"
# ZSET + app: the app's devices set aside while its route's circuit is open -> the due time each
# had; claim returns them to DUE once the route sends again.
PARKED = "parked:"
# STRING per shard: the key written just before WAIT (relay.store.connection). WAIT counts
# replicas that acknowledged this connection's last write; the marker makes that write one that
# follows the notification's.
ACK_MARK = "ack"

# Keys outside the shards, each with a hash tag of its own (one key, so any Cluster slot):
# HASH "relay:{route:<app>}:route:<app>:<environment>:<endpoint>", a route's circuit
# (relay.store.routes), shared by every worker.
ROUTE = "route:"
# HASH + app:service_id: gms_device_token (the device GMS pushed the service to: the only one
# that may register its activity), activity_token, device_token, last (<event_s>:<timestamp_s>)
ACTIVITY = "activity:"
PUSH_TO_START = "pts:"  # STRING + app:device_token: a device's push-to-start token
# STRING + app:token: APNs called this Live Activity token (update or push-to-start) dead. Apart
# from the device dead marks (DEAD): an activity's answer never marks a device's own token.
ACTIVITY_DEAD = "adead:"
# ZSET + kind:app: the app's live registrations (service ids, or device tokens for
# push-to-start) scored by when they expire: the per-app registration budget counts them.
REGISTRATIONS = "registrations:"

# Lifetime counters the scripts keep in each shard's stats hash; the final ones are named after
# the state they count.
STAT_COUNTERS = (
    "enqueued",
    "delivered",
    "failed",
    "expired",
    "superseded",
    "retried",
    "dead_marked",
)

CLUSTER_SLOTS = 16384
_TAG_CANDIDATES = 1024


def _van_der_corput(n: int) -> float:
    """n's binary digits mirrored behind the point: 0, 1/2, 1/4, 3/4, 1/8, ... Any first k of
    these points are spread evenly over [0, 1)."""
    point, scale = 0.0, 0.5
    while n:
        point += scale * (n & 1)
        n >>= 1
        scale /= 2
    return point


@functools.cache
def shard_tag(shard: int) -> str:
    """The hash tag of a shard's keys, chosen so that shards 0..n-1 land evenly on Redis
    Cluster's slots whatever n is, and so evenly on its primaries; a plain "{3}" lands wherever
    CRC16 happens to put it."""
    target = int(_van_der_corput(shard) * CLUSTER_SLOTS)

    def distance(n: int) -> int:
        offset = abs(key_slot(f"{shard}.{n}".encode()) - target)
        return min(offset, CLUSTER_SLOTS - offset)

    return f"{shard}.{min(range(_TAG_CANDIDATES), key=distance)}"


def shard_prefix(shard: int) -> str:
    return f"{KEY_ROOT}:{{{shard_tag(shard)}}}:"


def shard_keys(prefix: str) -> list[str]:
    """KEYS[1..4] of every shard script: the shard's indexes and its stats."""
    return [prefix + DUE, prefix + LEASE, prefix + HEADS, prefix + STATS]


def shard_of_id(notification_id: str) -> int | None:
    """The shard an id names (ids are "<shard>-<hex>"), or None for an id this queue never made."""
    head, _, rest = notification_id.partition("-")
    return int(head) if head.isascii() and head.isdigit() and rest else None


def _own_slot_key(name: str) -> str:
    return f"{KEY_ROOT}:{{{name}}}:{name}"


def route_key(route: Route) -> str:
    """A route's circuit record: a hash tag of its own, so it may live in any Cluster slot."""
    return (
        f"{KEY_ROOT}:{{{ROUTE}{route.app}}}:{ROUTE}{route.app}:{route.environment}:{route.endpoint}"
    )


def activity_key(app: str, service_id: str) -> str:
    return _own_slot_key(f"{ACTIVITY}{app}:{service_id}")


def push_to_start_key(app: str, device_token: str) -> str:
    return _own_slot_key(f"{PUSH_TO_START}{app}:{device_token}")


def activity_dead_key(app: str, token: str) -> str:
    return _own_slot_key(f"{ACTIVITY_DEAD}{app}:{token}")


def registrations_key(app: str, kind: str) -> str:
    return _own_slot_key(f"{REGISTRATIONS}{kind}:{app}")
