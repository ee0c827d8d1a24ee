"""Scenario scripts that push to the relay exactly as GMS's customhttp push type does."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import string
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp

from relay.gms_sim.dialogs import JsonObject, JsonValue, format_timestamp
from relay.gms_sim.server import GmsSimulator

PUSH_PATH = "/gms/push"
COMET_CHANNEL = "/_genesys"
CHAT_SERVICE_MESSAGE = "Chat service is available"
AGENT_NICK = "Kristi Sippola"  # the seed's agent
CLIENT_NICK = "Stan"  # the seed's customer


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


@dataclass(frozen=True, slots=True)
class ScenarioRun:
    service_id: str
    pushes: list[SentPush]


@dataclass(frozen=True, slots=True)
class ScenarioOptions:
    device_id: str  # token hex, or "<app>:<token hex>"
    message_as_string: bool = False  # send `message` JSON-encoded inside a string
    connect_mode: str = "outbound"  # callback scenario: end with connect-outbound or -inbound
    gms_user: str = ""


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


# Chat: the seed's Comet event shapes, one transcript line per event.


@dataclass(frozen=True, slots=True)
class TranscriptLine:
    kind: str  # Message.Text, Notice.Joined, Notice.Left, Notice.TypingStarted, ...
    nick: str
    text: str
    party: str  # AGENT, CLIENT


# What a short chat looks like to the customer's phone; None = the session ends (DISCONNECTED).
CHAT_SESSION_SCRIPT: tuple[TranscriptLine | None, ...] = (
    TranscriptLine("Notice.Joined", AGENT_NICK, "has joined the session", "AGENT"),
    TranscriptLine("Message.Text", AGENT_NICK, "Hello, how can I help you?", "AGENT"),
    TranscriptLine("Notice.TypingStarted", AGENT_NICK, "is typing", "AGENT"),
    TranscriptLine("Notice.TypingStopped", AGENT_NICK, "stopped typing", "AGENT"),
    TranscriptLine("Message.Text", CLIENT_NICK, "Hello.", "CLIENT"),
    TranscriptLine("Notice.Left", AGENT_NICK, "has left the session", "AGENT"),
    None,
)


def chat_event(
    service_id: str,
    chat_session_id: str,
    position: int,
    line: TranscriptLine | None,
    started_at: datetime,
) -> JsonObject:
    """One Comet chat event as the seed shows it; no line means the chat was disconnected."""
    transcript: list[JsonValue] = (
        [] if line is None else [[line.kind, line.nick, line.text, str(position), line.party]]
    )
    # Deterministic event id (32 hex like the seed's) so a replayed event is recognisably the same.
    event_id = hashlib.md5(
        f"{chat_session_id}:{position}".encode(), usedforsecurity=False
    ).hexdigest()
    return {
        "data": {
            "message": {
                "startedAt": format_timestamp(started_at),
                "chatIxnState": "TRANSCRIPT" if line is not None else "DISCONNECTED",
                "chatSessionId": chat_session_id,
                "transcriptToShow": transcript,
                "transcriptPosition": str(position),
                "chatServiceMessage": CHAT_SERVICE_MESSAGE,
            },
            "id": event_id,
            "tag": f"service.chat.refresh.{service_id}",
        },
        "channel": COMET_CHANNEL,
    }


def chat_session_events(
    service_id: str,
    chat_session_id: str,
    started_at: datetime,
    script: Sequence[TranscriptLine | None] = CHAT_SESSION_SCRIPT,
) -> list[JsonObject]:
    # Position 1 is the chat's opening; the script's lines follow it.
    return [
        chat_event(service_id, chat_session_id, position, line, started_at)
        for position, line in enumerate(script, start=2)
    ]


def new_chat_session_id() -> str:
    """A chat session id shaped like the seed's 000FRa9NYM9A001K."""
    alphabet = string.ascii_letters + string.digits
    return "000" + "".join(secrets.choice(alphabet) for _ in range(13))


# The scenarios. Each creates its GMS service, pushes in order and returns what it sent.


async def _push_actions(
    pusher: CustomHttpPusher, options: ScenarioOptions, service_id: str, actions: Sequence[str]
) -> ScenarioRun:
    pushes = [
        await pusher.push(
            options.device_id,
            callback_message(service_id, action),
            message_as_string=options.message_as_string,
        )
        for action in actions
    ]
    return ScenarioRun(service_id, pushes)


async def callback_with_user_confirmation(
    pusher: CustomHttpPusher, gms: GmsSimulator, options: ScenarioOptions
) -> ScenarioRun:
    """_wait_for_agent, then _wait_for_user_confirm (both dialog variants), then the connect."""
    service = gms.create_service(
        "callback", gms_user=options.gms_user, connect_mode=options.connect_mode
    )
    actions = (
        "wait-for-agent",
        "get-dialog-user-confirmation-provide_code-true",
        "get-dialog-user-confirmation-provide_code-false",
        f"connect-{options.connect_mode}",
    )
    return await _push_actions(pusher, options, service.service_id, actions)


async def chat_delayed(
    pusher: CustomHttpPusher, gms: GmsSimulator, options: ScenarioOptions
) -> ScenarioRun:
    """A delayed chat: the agent is free, the app is told to open the chat."""
    service = gms.create_service("chat", gms_user=options.gms_user)
    return await _push_actions(pusher, options, service.service_id, ("get-dialog-start-chat",))


async def chat_session(
    pusher: CustomHttpPusher, gms: GmsSimulator, options: ScenarioOptions
) -> ScenarioRun:
    """Chat Server events through customhttp with push_notification_include_payload=true."""
    service = gms.create_service("chat", gms_user=options.gms_user)
    events = chat_session_events(service.service_id, new_chat_session_id(), datetime.now(UTC))
    pushes = [
        await pusher.push(options.device_id, event, message_as_string=options.message_as_string)
        for event in events
    ]
    return ScenarioRun(service.service_id, pushes)


Scenario = Callable[[CustomHttpPusher, GmsSimulator, ScenarioOptions], Awaitable[ScenarioRun]]

SCENARIOS: Mapping[str, Scenario] = {
    "callback-user-confirmation": callback_with_user_confirmation,
    "chat-delayed": chat_delayed,
    "chat-session": chat_session,
}
