"""Recording a delivery receipt: one HSETNX in the receipt bucket beside the notification's
history bucket (relay/store/lua/receipt.lua), read back by RelayQueue.get()."""

from __future__ import annotations

import time
from enum import StrEnum

from relay.store.history import bucket_of, history_field, id_time_ms
from relay.store.keys import RECEIPTS, shard_of_id, shard_prefix
from relay.store.queue import RelayQueue
from relay.store.scripts import LIBRARY, ScriptCall

# Adds data: refused whole at maxmemory (a receipt is worth less than the queue's room).
RECEIPT = LIBRARY.script("receipt")


class Recorded(StrEnum):
    FIRST = "first"  # received_at_ms set now
    AGAIN = "again"  # one was recorded before: nothing changed
    NOT_RETAINED = "not_retained"  # past the retention, or an id no shard of this queue made


def receipt_key(notification_id: str, shards: int) -> str | None:
    """The receipt bucket an id's receipt goes to; None for an id this queue never made."""
    shard, bucket = shard_of_id(notification_id), bucket_of(notification_id)
    if shard is None or shard >= shards or bucket is None:
        return None
    return f"{shard_prefix(shard)}{RECEIPTS}{bucket}"


async def record_receipt(
    queue: RelayQueue, notification_id: str, *, now_ms: int | None = None
) -> Recorded:
    """Record that the phone showed `notification_id` (its MAC already checked)."""
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    key, made_ms = receipt_key(notification_id, queue.limits.shards), id_time_ms(notification_id)
    retention_ms = queue.limits.retention_s * 1000
    if key is None or made_ms is None or made_ms + retention_ms < now:
        return Recorded.NOT_RETAINED
    call = ScriptCall(
        RECEIPT, [key], [history_field(notification_id), now, queue.limits.retention_s]
    )
    (reply,) = await queue.run_scripts([call])
    return Recorded.FIRST if int(reply) == 1 else Recorded.AGAIN
