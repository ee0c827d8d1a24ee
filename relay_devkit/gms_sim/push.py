"""GMS's customhttp push type: how GMS POSTs a notification to the relay."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import aiohttp

from relay_devkit.gms_sim.dialogs import JsonObject, JsonValue

PUSH_PATH = "/gms/push"


class PushRefused(RuntimeError):
    """The relay answered a push with something other than 200: GMS counts it as failed."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"relay answered {status}, not 200: {body[:500]}")
        self.status = status
        self.body = body


@dataclass(frozen=True, slots=True)
class SentPush:
    """One customhttp POST: the body exactly as sent, and the relay's 200 answer."""

    body: JsonObject
    answer: JsonValue


@dataclass
class CustomHttpPusher:
    """GMS's customhttp push type: POST {deviceId, message} with the subscription's Basic auth."""

    session: aiohttp.ClientSession
    relay_url: str  # scheme://host:port of the relay
    authorization: str | None = None  # the Authorization header value, see basic_authorization()
    push_path: str = PUSH_PATH
    timeout_s: float = 10.0

    async def push(
        self, device_id: str, message: JsonValue, *, message_as_string: bool = False
    ) -> SentPush:
        body: JsonObject = {
            "deviceId": device_id,
            "message": json.dumps(message) if message_as_string else message,
        }
        headers = {"Content-Type": "application/json"}
        if self.authorization is not None:
            headers["Authorization"] = self.authorization
        async with self.session.post(
            self.relay_url.rstrip("/") + self.push_path,
            data=json.dumps(body).encode(),
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
        ) as response:
            text = await response.text()
            if response.status != 200:
                raise PushRefused(response.status, text)
        answer: JsonValue = json.loads(text) if text else None
        return SentPush(body, answer)


def basic_authorization(user: str, password: str) -> str:
    """The header a subscription's `authorization` (base64 of user:password) becomes."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def callback_message(service_id: str, action: str) -> JsonObject:
    """The seed's message component: {"_id": ..., "_action": ...}."""
    return {"_id": service_id, "_action": action}
