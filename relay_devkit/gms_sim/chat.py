"""A GMS chat session as data: its transcript and the seed's Comet event for each line.

From the seed ("Push Notifications / Chat (Comet)"): the event shape `{"data": {"message":
{startedAt, chatIxnState, chatSessionId, transcriptToShow, transcriptPosition,
chatServiceMessage}, "id", "tag": "service.chat.refresh.<service id>"}, "channel": "/_genesys"}`,
the line `[type, nick, text, <number>, party]`, the types (Message.Text, Notice.Joined,
Notice.Left, Notice.TypingStarted, Notice.TypingStopped), the states (TRANSCRIPT, DISCONNECTED),
"Chat service is available", the nicks Stan (CLIENT) and Kristi Sippola (AGENT).

Inferred:
- A line's fourth element is not its position: the seed pairs "8" with position "2", "17" with
  "3", "20" with "4", all under one startedAt. Read as whole seconds since startedAt (Stan says
  "Hello." 8 s in, the agent joins at 17 s and types at 20 s); that is what is written here.
- Position 1 is the customer joining (the seed's first shown line, Stan's "Hello.", is at 2).
- The answer to `ixn/chat/refresh` is the event's `message` object, its transcriptToShow holding
  every line from the position asked for (the event's tag names this refresh).
- The event id is 32 hex digits like the seed's; here it is derived from the session and the
  position, so a line published twice has the same id.
"""

from __future__ import annotations

import hashlib
import secrets
import string
from dataclasses import dataclass, field
from datetime import datetime

from relay_devkit.gms_sim.dialogs import JsonObject, JsonValue, format_timestamp

COMET_CHANNEL = "/_genesys"
CHAT_SERVICE_MESSAGE = "Chat service is available"
CHAT_TAG_PREFIX = "service.chat.refresh."
AGENT_NICK = "Kristi Sippola"  # the seed's agent
CLIENT_NICK = "Stan"  # the seed's customer
TRANSCRIPT = "TRANSCRIPT"
DISCONNECTED = "DISCONNECTED"


@dataclass(frozen=True, slots=True)
class TranscriptLine:
    kind: str  # Message.Text, Notice.Joined, Notice.Left, Notice.TypingStarted, ...
    nick: str
    text: str
    party: str  # AGENT, CLIENT


@dataclass(frozen=True, slots=True)
class PlacedLine:
    """A line in the transcript: its position and its own number (the seed's 4th element)."""

    position: int
    number: int
    line: TranscriptLine

    def shown(self) -> list[JsonValue]:
        """The seed's [type, nick, text, number, party], numbers as decimal strings."""
        line = self.line
        return [line.kind, line.nick, line.text, str(self.number), line.party]


def new_chat_session_id() -> str:
    """A chat session id shaped like the seed's 000FRa9NYM9A001K."""
    alphabet = string.ascii_letters + string.digits
    return "000" + "".join(secrets.choice(alphabet) for _ in range(13))


@dataclass
class ChatSession:
    service_id: str
    started_at: datetime
    chat_session_id: str = field(default_factory=new_chat_session_id)
    lines: list[PlacedLine] = field(default_factory=list)
    state: str = TRANSCRIPT
    subject: str = ""  # from StartChat's _chat_parameters

    @property
    def tag(self) -> str:
        return f"{CHAT_TAG_PREFIX}{self.service_id}"

    @property
    def last_position(self) -> int:
        return self.lines[-1].position if self.lines else 0

    def add(self, line: TranscriptLine, now: datetime) -> JsonObject:
        """Append a line; returns its Comet event."""
        if self.state == DISCONNECTED:
            raise ValueError(f"chat {self.chat_session_id} is disconnected: no more lines")
        number = max(0, int((now - self.started_at).total_seconds()))
        placed = PlacedLine(self.last_position + 1, number, line)
        self.lines.append(placed)
        return self.event([placed], placed.position)

    def disconnect(self) -> JsonObject:
        """End the chat; returns the DISCONNECTED event (no line, the last position)."""
        self.state = DISCONNECTED
        return self.event([], self.last_position)

    def message(self, lines: list[PlacedLine], position: int) -> JsonObject:
        """The seed's `data.message` object."""
        return {
            "startedAt": format_timestamp(self.started_at),
            "chatIxnState": self.state,
            "chatSessionId": self.chat_session_id,
            "transcriptToShow": [placed.shown() for placed in lines],
            "transcriptPosition": str(position),
            "chatServiceMessage": CHAT_SERVICE_MESSAGE,
        }

    def event(self, lines: list[PlacedLine], position: int) -> JsonObject:
        """One Comet chat event as the seed shows it."""
        event_id = hashlib.md5(
            f"{self.chat_session_id}:{position}:{self.state}".encode(), usedforsecurity=False
        ).hexdigest()
        return {
            "data": {"message": self.message(lines, position), "id": event_id, "tag": self.tag},
            "channel": COMET_CHANNEL,
        }

    def refresh(self, from_position: int) -> JsonObject:
        """The answer to ixn/chat/refresh: every line from `from_position` on (inferred)."""
        lines = [placed for placed in self.lines if placed.position >= from_position]
        return self.message(lines, self.last_position)
