"""The delivery loop's own guarantees, against a real Valkey."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis
from eventually import eventually

from relay.core.endpoint import Endpoint
from relay.core.model import ApnsResponse, DeliveryState, Notification
from relay.credentials.model import TokenCredentials
from relay.delivery.apns import ApnsClient
from relay.delivery.worker import DeliveryWorker
from relay.store.queue import RelayQueue
from relay.store.records import QueueLimits

TOKEN = "ab" * 32


class BrokenClient(ApnsClient):
    """An adapter with a bug in it: every send raises."""

    async def send(
        self, notification: Notification, apns_id: str, on_wire: object = None
    ) -> ApnsResponse:
        raise RuntimeError("a bug")


async def test_a_send_that_crashes_fails_its_notification_and_the_device_moves_on(
    redis: aioredis.Redis,
) -> None:
    queue = RelayQueue(redis, QueueLimits())
    client = BrokenClient(
        "app", "com.example", Endpoint("127.0.0.1", 9), TokenCredentials("unused", "K", "T")
    )
    worker = DeliveryWorker(queue, {"app": client})
    ids = [
        (
            await queue.enqueue(
                Notification(
                    app="app",
                    device_token=TOKEN,
                    payload=b"{}",
                    push_type="alert",
                    priority=10,
                    expires_at=int(time.time()) + 60,
                )
            )
        ).id
        for _ in range(2)
    ]
    running = asyncio.create_task(worker.run(grace_s=1))
    try:

        async def failed() -> list[Any] | None:
            states = [await queue.get(i) for i in ids]
            ok = all(s is not None and s.state is DeliveryState.FAILED for s in states)
            return states if ok else None

        states = await eventually(failed, timeout_s=10, what="both notifications failed")
    finally:
        worker.stop()
        await running
        await queue.aclose()
    assert [s.last_reason for s in states if s is not None] == ["RelayError", "RelayError"]
