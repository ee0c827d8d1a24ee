"""The chat scenario: a chat over Comet (the agent joins, types, writes and leaves), each event
held to the seed's."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from relay_devkit.demo.flow import (
    GMS_USER,
    SEED_TIMESTAMP,
    FlowEnds,
    Marks,
    check_push_posted,
    check_seed_dialog,
    follow,
    has,
    wait_for,
)
from relay_devkit.demo.report import DemoReport
from relay_devkit.device_sim.app import (
    AlertShown,
    AppState,
    ChatEnded,
    ChatLineShown,
    ChatOpened,
    FlowClosed,
    PushAnswer,
    UrlPosted,
    entries_of,
)
from relay_devkit.gms_sim.chat import AGENT_NICK, TranscriptLine
from relay_devkit.gms_sim.dialogs import JsonObject

# The seed's three Comet chat events ("Push Notifications / Chat (Comet)"), repaired: the trailing
# commas after "chatServiceMessage" in "Party Joined/Left" and "Typing Started/Stopped" dropped.
SEED_CHAT_EVENTS: Mapping[str, JsonObject] = {
    "Message Receipt": {
        "data": {
            "message": {
                "startedAt": "2014-05-02T16:27:38Z",
                "chatIxnState": "TRANSCRIPT",
                "chatSessionId": "000FRa9NYM9A001K",
                "transcriptToShow": [["Message.Text", "Stan", "Hello.", "8", "CLIENT"]],
                "transcriptPosition": "2",
                "chatServiceMessage": "Chat service is available",
            },
            "id": "b2e607a0d21611e3000010932938a0ff",
            "tag": "service.chat.refresh.3SQIS3S1693JL9L3R00506T40C000UL4",
        },
        "channel": "/_genesys",
    },
    "Party Joined/Left": {
        "data": {
            "message": {
                "startedAt": "2014-05-02T16:27:38Z",
                "chatIxnState": "TRANSCRIPT",
                "chatSessionId": "000FRa9NYM9A001K",
                "transcriptToShow": [
                    ["Notice.Joined", "Kristi Sippola", "has joined the session", "17", "AGENT"]
                ],
                "transcriptPosition": "3",
                "chatServiceMessage": "Chat service is available",
            },
            "id": "b7dd6460d21611e3000010932938a0ff",
            "tag": "service.chat.refresh.3SQIS3S1693JL9L3R00506T40C000UL4",
        },
        "channel": "/_genesys",
    },
    "Typing Started/Stopped": {
        "data": {
            "message": {
                "startedAt": "2014-05-02T16:27:38Z",
                "chatIxnState": "TRANSCRIPT",
                "chatSessionId": "000FRa9NYM9A001K",
                "transcriptToShow": [
                    ["Notice.TypingStarted", "Kristi Sippola", "is typing", "20", "AGENT"]
                ],
                "transcriptPosition": "4",
                "chatServiceMessage": "Chat service is available",
            },
            "id": "b91bd7d0d21611e3000010932938a0ff",
            "tag": "service.chat.refresh.3SQIS3S1693JL9L3R00506T40C000UL4",
        },
        "channel": "/_genesys",
    },
}
_HEX32 = re.compile(r"[0-9a-f]{32}")


# ---- the chat scenario ----


def normalised_event(event: object) -> object:
    """A chat event with the values that differ per chat replaced by their names, so it can be
    compared with the seed's: startedAt, chatSessionId, the event id, the service id in the tag,
    and each line's 4th element."""
    if not isinstance(event, dict):
        return event
    copied = copy.deepcopy(event)
    data = copied.get("data")
    if isinstance(data, dict) and isinstance(data.get("message"), dict):
        message = data["message"]
        assert isinstance(message, dict)
        message["startedAt"] = "<startedAt>"
        message["chatSessionId"] = "<chatSessionId>"
        lines = message.get("transcriptToShow")
        for line in lines if isinstance(lines, list) else []:
            if isinstance(line, list) and len(line) == 5:
                line[3] = "<number>"
        data["id"] = "<id>"
        tag = data.get("tag")
        if isinstance(tag, str):
            data["tag"] = tag.rpartition(".")[0] + ".<service id>"
    return copied


def seed_left_event(received: object) -> object:
    """The seed's "Party Joined/Left" event with its line a Notice.Left, at the position (a
    per-chat value) `received` has."""
    event: Any = copy.deepcopy(SEED_CHAT_EVENTS["Party Joined/Left"])
    message = event["data"]["message"]
    message["transcriptToShow"][0][0] = "Notice.Left"
    message["transcriptToShow"][0][2] = "has left the session"
    data = received.get("data") if isinstance(received, dict) else None
    if isinstance(data, dict) and isinstance(data.get("message"), dict):
        message["transcriptPosition"] = data["message"].get("transcriptPosition")
    return event


def without_line_text(event: object) -> object:
    """normalised_event(), each line's text set aside too."""
    copied = normalised_event(event)
    data = copied.get("data") if isinstance(copied, dict) else None
    message = data.get("message") if isinstance(data, dict) else None
    lines = message.get("transcriptToShow") if isinstance(message, dict) else None
    for line in lines if isinstance(lines, list) else []:
        if isinstance(line, list) and len(line) == 5:
            line[2] = "<text>"
    return copied


def check_event_formats(report: DemoReport, event: object, service_id: str, name: str) -> None:
    """The per-chat values in the formats the seed's notes give."""
    data = event.get("data") if isinstance(event, dict) else None
    message = data.get("message") if isinstance(data, dict) else None
    ok = False
    if isinstance(data, dict) and isinstance(message, dict):
        lines = message.get("transcriptToShow")
        ok = (
            SEED_TIMESTAMP.fullmatch(str(message.get("startedAt"))) is not None
            and _HEX32.fullmatch(str(data.get("id"))) is not None
            and data.get("tag") == f"service.chat.refresh.{service_id}"
            and isinstance(lines, list)
            and all(isinstance(line, list) and str(line[3]).isdigit() for line in lines)
        )
    report.check(
        f"{name}: startedAt $(Timestamp), 32-hex id, tag service.chat.refresh.<_id>, a number",
        ok,
        repr(event),
        source="seed",
    )


async def chat(ends: FlowEnds, report: DemoReport) -> None:
    """get-dialog-start-chat; a chat over Comet in the foreground; in the background the relay's
    chat push, tapped: the app POSTs its _action and catches up; leaving ends the flow."""
    gms = ends.simulator
    service = gms.create_chat_service(gms_user=ends.gms_user, device_id=ends.device_id)
    sid = service.service_id
    report.section(f"chat: GMS chat service {sid}")
    ends.app.user.will(PushAnswer("accept"))
    marks = Marks.now(ends)
    start = "get-dialog-start-chat"
    entries = await follow(
        ends,
        report,
        lambda: gms.push(service, {"_id": sid, "_action": start}),
        lambda e: has(ChatOpened)(e) and ends.phone.comet_connected,
    )
    url = check_push_posted(ends, report, entries, sid, start, "alert dialog")
    dialog = check_seed_dialog(ends, report, marks, sid, start, url)
    start_url = dialog.get("_start_chat_url") if isinstance(dialog, dict) else None
    start_requests = gms.requests_to(f"{sid}/ixn/chat")
    report.check(
        "the app POSTed _start_chat_url with _user_header (gms_user) and _chat_parameters",
        [p.url for p in entries_of(entries, UrlPosted)][1:] == [start_url]
        and len(start_requests) == 1
        and start_requests[0].headers.get("gms_user") == GMS_USER
        and b"subject=None" in start_requests[0].body,
        repr(start_requests),
        source="inferred",
    )
    report.check(
        "the app holds a Comet session subscribed to the seed's /_genesys",
        [sorted(c.subscriptions) for c in gms.comet.clients.values()] == [["/_genesys"]],
        repr(gms.comet.clients),
        source="seed",
    )

    # Foreground: lines over Comet, the seed's three events in the seed's order.
    comet_mark = len(ends.phone.comet_messages)
    pushed_before_comet = len(gms.pushes_for(sid))
    steps: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("Message Receipt", lambda: ends.phone.say("Hello.")),
        (
            "Party Joined/Left",
            lambda: gms.chat_line(
                sid, TranscriptLine("Notice.Joined", AGENT_NICK, "has joined the session", "AGENT")
            ),
        ),
        (
            "Typing Started/Stopped",
            lambda: gms.chat_line(
                sid, TranscriptLine("Notice.TypingStarted", AGENT_NICK, "is typing", "AGENT")
            ),
        ),
    ]
    for count, (name, act) in enumerate(steps, start=1):
        expected = comet_mark + count
        await follow(
            ends,
            report,
            act,
            lambda e, expected=expected: (  # type: ignore[misc]
                len(ends.phone.comet_messages) >= expected and has(ChatLineShown)(e)
            ),
        )
        received = ends.phone.comet_messages[comet_mark + count - 1]
        report.check(
            f"Comet delivered the seed's {name} event verbatim (per-chat values aside)",
            normalised_event(received) == normalised_event(SEED_CHAT_EVENTS[name]),
            json.dumps(received),
            source="seed",
        )
        check_event_formats(report, received, sid, name)
    shown = [
        (line.position, line.number) for line in entries_of(ends.phone.transcript, ChatLineShown)
    ]
    report.check(
        "lines shown at positions 1-4, each with its own 4th element (seconds into the chat)",
        [position for position, _ in shown] == [1, 2, 3, 4]
        and all(number.isdigit() for _, number in shown),
        repr(shown),
        source="inferred",
    )
    report.check(
        "nothing was pushed while the Comet session was open (inferred notification mode)",
        gms.pushes_for(sid)[pushed_before_comet:] == [],
        repr(gms.pushes_for(sid)[pushed_before_comet:]),
        source="inferred",
    )

    # Background: Comet is gone; the agent's lines reach the phone as relay pushes.
    await follow(ends, report, ends.phone.to_background, has(AppState))
    await wait_for(lambda: not gms.comet.clients, "the phone's Comet session ending")
    report.check(
        "in the background the app left Comet (/meta/disconnect)",
        not gms.comet.clients,
        source="inferred",
    )
    ends.app.user.will(PushAnswer("accept"))

    async def agent_goes_on() -> None:
        await gms.chat_line(
            sid, TranscriptLine("Notice.TypingStopped", AGENT_NICK, "stopped typing", "AGENT")
        )
        await gms.chat_line(
            sid, TranscriptLine("Message.Text", AGENT_NICK, "How can I help you?", "AGENT")
        )

    marks = Marks.now(ends)
    entries = await follow(
        ends,
        report,
        agent_goes_on,
        lambda e: len(entries_of(e, ChatLineShown)) >= 2 and ends.phone.comet_connected,
    )
    alerts = entries_of(entries, AlertShown)
    action = ends.relay_app.chat.action
    report.check(
        "one push reached the phone: the agent's line (the relay drops typing by default)",
        [(a.presentation, a.title, a.body, a.action) for a in alerts]
        == [("notification", AGENT_NICK, "How can I help you?", action)],
        repr(alerts),
        source="relay",
    )
    refresh_url = check_push_posted(ends, report, entries, sid, action, "notification")
    report.check(
        "that POST is the chat's refresh: the seed's _start_chat_url + /refresh",
        refresh_url == f"{start_url}/refresh",
        refresh_url,
        source="inferred",
    )
    caught_up = [(x.position, x.kind, x.via) for x in entries_of(entries, ChatLineShown)]
    report.check(
        "the refresh answer caught the app up from position 5 (inferred answer shape)",
        caught_up == [(5, "Notice.TypingStopped", "answer"), (6, "Message.Text", "answer")],
        repr(caught_up),
        source="inferred",
    )
    report.check(
        "back in the foreground the app holds a Comet session again",
        len(gms.comet.clients) == 1,
        repr(gms.comet.clients),
        source="inferred",
    )

    # The agent leaves: Notice.Left, one of the seed's $(TranscriptType)s, over Comet.
    comet_mark = len(ends.phone.comet_messages)
    pushed_before_left = len(gms.pushes_for(sid))
    left = TranscriptLine("Notice.Left", AGENT_NICK, "has left the session", "AGENT")
    entries = await follow(
        ends,
        report,
        lambda: gms.chat_line(sid, left),
        lambda e: len(ends.phone.comet_messages) > comet_mark and has(ChatLineShown)(e),
    )
    received = ends.phone.comet_messages[comet_mark]
    report.check(
        "Notice.Left came over Comet in the seed's Party Joined/Left shape (its text aside)",
        without_line_text(received) == without_line_text(seed_left_event(received)),
        json.dumps(received),
        source="seed",
    )
    shown_left = [(x.kind, x.nick, x.text, x.via) for x in entries_of(entries, ChatLineShown)]
    report.check(
        'its text is "has left the session" (the seed shows only "has joined the session"); the '
        "phone showed it, and nothing was pushed while Comet listened",
        shown_left == [("Notice.Left", AGENT_NICK, "has left the session", "comet")]
        and gms.pushes_for(sid)[pushed_before_left:] == [],
        repr(shown_left),
        source="inferred",
    )

    # Leaving: ixn/chat/disconnect; DISCONNECTED over Comet; StartChat's exit:// closes the flow.
    entries = await follow(ends, report, ends.phone.leave_chat, has(FlowClosed))
    last = ends.phone.comet_messages[-1:]
    data = last[0].get("data") if last else None
    message = data.get("message") if isinstance(data, dict) else None
    report.check(
        "leaving: DISCONNECTED came over Comet, the app left Comet, exit:// closed the flow",
        has(ChatEnded)(entries)
        and isinstance(message, dict)
        and message.get("chatIxnState") == "DISCONNECTED"
        and not ends.phone.comet_connected
        and not gms.comet.clients,
        repr(last),
        source="inferred",
    )
