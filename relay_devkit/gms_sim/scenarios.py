"""Scenario scripts for `apns-relay gms-sim --scenario`: GMS services that push to the relay."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from relay_devkit.gms_sim.callback import CallbackOptions
from relay_devkit.gms_sim.chat import AGENT_NICK, TranscriptLine
from relay_devkit.gms_sim.push import callback_message
from relay_devkit.gms_sim.server import GmsSimulator, PushRecord


@dataclass(frozen=True, slots=True)
class ScenarioRun:
    service_id: str
    pushes: list[PushRecord]

    @property
    def failures(self) -> list[PushRecord]:
        return [push for push in self.pushes if push.error is not None]


@dataclass(frozen=True, slots=True)
class ScenarioOptions:
    device_id: str  # token hex, or "<app>:<token hex>"
    connect_mode: str = "outbound"  # callback: connect-outbound (GMS calls) or connect-inbound
    gms_user: str = ""


# What the agent does in the chat-session scenario, after the customer has joined.
AGENT_SCRIPT: tuple[TranscriptLine, ...] = (
    TranscriptLine("Notice.Joined", AGENT_NICK, "has joined the session", "AGENT"),
    TranscriptLine("Notice.TypingStarted", AGENT_NICK, "is typing", "AGENT"),
    TranscriptLine("Message.Text", AGENT_NICK, "Hello, how can I help you?", "AGENT"),
    TranscriptLine("Notice.Left", AGENT_NICK, "has left the session", "AGENT"),
)


def _run(gms: GmsSimulator, service_id: str) -> ScenarioRun:
    return ScenarioRun(service_id, gms.pushes_for(service_id))


async def callback_with_user_confirmation(
    gms: GmsSimulator, options: ScenarioOptions
) -> ScenarioRun:
    """A callback that waits for an agent: wait-for-agent, then (an agent is free) the
    confirmation push; the user's answer drives the rest through the simulator's dialogs."""
    service = await gms.create_callback(
        CallbackOptions(connect_mode=options.connect_mode),
        gms_user=options.gms_user,
        device_id=options.device_id,
    )
    await gms.agent_available(service.service_id)
    return _run(gms, service.service_id)


async def chat_delayed(gms: GmsSimulator, options: ScenarioOptions) -> ScenarioRun:
    """A delayed chat: the agent is free, the app is told to open the chat."""
    service = gms.create_chat_service(gms_user=options.gms_user, device_id=options.device_id)
    await gms.push(service, callback_message(service.service_id, "get-dialog-start-chat"))
    return _run(gms, service.service_id)


async def chat_session(gms: GmsSimulator, options: ScenarioOptions) -> ScenarioRun:
    """A chat with no Comet client listening: every event goes out as a customhttp push."""
    service = gms.create_chat_service(gms_user=options.gms_user, device_id=options.device_id)
    await gms.start_chat(service.service_id)
    for line in AGENT_SCRIPT:
        await gms.chat_line(service.service_id, line)
    await gms.end_chat(service.service_id)
    return _run(gms, service.service_id)


Scenario = Callable[[GmsSimulator, ScenarioOptions], Awaitable[ScenarioRun]]

SCENARIOS: Mapping[str, Scenario] = {
    "callback-user-confirmation": callback_with_user_confirmation,
    "chat-delayed": chat_delayed,
    "chat-session": chat_session,
}
