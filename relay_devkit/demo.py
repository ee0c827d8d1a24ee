"""`apns-relay demo`: the whole GMS flow in one process, printed as a timed transcript of hops.

Nothing to configure: an embedded Valkey, the APNs simulator, the relay (api + worker), the GMS
simulator and one simulated phone start here, and the scenarios run through them: callbacks
through the GMS simulator's state machine (confirm; snooze, after leaving the menu and fetching its
_resource_url again; cancel; a confirmation that times out, and one that expires at the relay while
APNs is down; connect-inbound's DialNumber), a chat over Comet (the agent joining, typing and
leaving), and a Live Activity. Every hop (GMS → relay → APNs → phone → GMS, Comet) is printed with
the milliseconds since the start, and every check is labelled with what it holds the flow to:
[seed] the seed's text (its dialogs, its Comet events, its URL formula), [inferred] an inference
the README's GMS section lists, [relay] the relay's own rules (lifetimes, metrics, Apple's). The
exit status is 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import random
import re
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TextIO

import aiohttp

from relay.commands.dev_state import DEV_AUTH_CHOICES
from relay.config.schema import App, Settings
from relay.runtime import run_relay
from relay.telemetry.logs import configure_logging
from relay_devkit.apns_sim.command import Simulator, SimulatorOptions
from relay_devkit.apns_sim.info import SimInfo
from relay_devkit.dev_mode import simulator_app
from relay_devkit.device_sim.activities import ActivityShown, ActivityWatcher, LiveActivities
from relay_devkit.device_sim.app import (
    AlertShown,
    AppSettings,
    AppState,
    ChatEnded,
    ChatLineShown,
    ChatOpened,
    ConfirmationShown,
    DeviceApp,
    DialogShown,
    DialRecorded,
    Effect,
    FlowClosed,
    GmsFailure,
    HttpRequest,
    MenuAnswer,
    MenuChoice,
    MenuChoiceRefused,
    MenuDismissed,
    PushAnswer,
    PushNotPosted,
    TranscriptEntry,
    UrlPosted,
    UserReacted,
    entries_of,
)
from relay_devkit.device_sim.dialogs import (
    ConfirmationDialog,
    DialNumber,
    DisplayMenu,
    StartChat,
    UnknownDialog,
    dialog_url,
)
from relay_devkit.device_sim.extension import ReceiptExtension, ReceiptSent
from relay_devkit.device_sim.phone import Phone, register_device
from relay_devkit.embedded import EmbeddedServer
from relay_devkit.gms_sim.callback import CallbackOptions, CallbackState
from relay_devkit.gms_sim.chat import AGENT_NICK, TranscriptLine
from relay_devkit.gms_sim.dialogs import (
    SEED_DIALOGS,
    DialogContext,
    JsonObject,
    JsonValue,
    fill_placeholders,
)
from relay_devkit.gms_sim.push import CustomHttpPusher, basic_authorization
from relay_devkit.gms_sim.server import GmsSimServer, GmsSimulator, Service

GMS_USER = "demo-user"
GMS_BASIC_USER = "gms"
STEP_TIMEOUT_S = 15.0  # how long one step may take to reach the phone and be acted on
SEED_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")  # the seed's $(Timestamp)
YES = "Yes, I'm ready to talk"
NO = "No, try again in 5 minutes"
CANCEL = "Cancel, my problem has been solved"
# Short timers so the demo runs in seconds; the defaults are GMS's (30 s, 3 attempts, 5 minutes).
SNOOZE_DELAY_S = 1.0
SHORT_CONFIRM_TIMEOUT_S = 2.5  # ample for a push to arrive on a loaded machine
LATE_S = 3.0  # how long the user takes when they are too late for SHORT_CONFIRM_TIMEOUT_S
# The relay's lifetime for a confirmation follows GMS's _user_confirm_timeout (30 s by default);
# with the demo's short timeout, the demo's relay shortens it to match (whole seconds).
CONFIRM_LIFETIME_S = 3
CONFIRMATION_ACTIONS = (
    "get-dialog-user-confirmation-provide_code-true",
    "get-dialog-user-confirmation-provide_code-false",
)
# What the demo's relay app sets beyond the simulator's app (the tests' relays use it too).
DEMO_APP: Mapping[str, object] = {
    "ttl_by_action": dict.fromkeys(CONFIRMATION_ACTIONS, CONFIRM_LIFETIME_S)
}
# Delivery receipts (docs/receipts.md): how long the phone's extension takes to post one, and
# the seed of which ones it loses (--receipt-loss).
RECEIPT_DELAY_S = 0.02
RECEIPT_SEED = 26
# An APNs outage in a scenario opens the route's circuit; probe again soon once it is over.
DEMO_CIRCUIT: Mapping[str, int] = {"probe_min_ms": 200, "probe_max_ms": 1_000}
APNS_OUTAGE = {"error": {"probability": 1.0, "status": 503, "reason": "ServiceUnavailable"}}
EXPIRED_METRIC = "apns_relay_notifications_expired_total"

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

# ---- the transcript ----


@dataclass(frozen=True, slots=True)
class Hop:
    at: float  # epoch seconds
    route: str  # e.g. "GMS → relay"
    text: str


# What a check holds the flow to: the seed's own text ("seed"), an inference the README's GMS
# section labels ("inferred"), or the relay's own rules and Apple's ("relay").
Source = Literal["seed", "inferred", "relay"]
SOURCE_LABELS: Mapping[Source, str] = {
    "seed": "the seed's text",
    "inferred": "a labelled inference",
    "relay": "the relay's own rule",
}


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    source: Source
    detail: str = ""


@dataclass
class DemoReport:
    """The timed transcript and the checks; printed as it grows when `out` is given."""

    started_at: float = field(default_factory=time.time)
    out: TextIO | None = None
    hops: list[Hop] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def failures(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]

    def _print(self, line: str) -> None:
        if self.out is not None:
            print(line, file=self.out, flush=True)

    def section(self, title: str) -> None:
        self._print(f"\n== {title} ==")

    def note(self, text: str) -> None:
        self._print(f"   {text}")

    def add_hops(self, hops: Sequence[Hop]) -> None:
        """Hops come from several records (GMS, the APNs log, the phone); print in time order."""
        for hop in sorted(hops, key=lambda h: h.at):
            self.hops.append(hop)
            elapsed_ms = (hop.at - self.started_at) * 1000
            self._print(f"   +{elapsed_ms:7.0f} ms  {hop.route:<13} {hop.text}")

    def check(self, name: str, ok: bool, detail: str = "", *, source: Source) -> bool:
        self.checks.append(Check(name, ok, source, detail))
        verdict = "ok  " if ok else "FAIL"
        self._print(f"      {verdict} [{source}] {name}{'' if ok else f': {detail}'}")
        return ok

    def by_source(self) -> dict[Source, int]:
        """How many checks hold the flow to each source."""
        counts: dict[Source, int] = dict.fromkeys(SOURCE_LABELS, 0)
        for check in self.checks:
            counts[check.source] += 1
        return counts


def _alert_text(title: str | None, body: str | None) -> str:
    return " / ".join(repr(part) for part in (title, body) if part is not None) or "(no alert)"


def _dialog_text(dialog: object) -> str:
    match dialog:
        case DisplayMenu(label=label):
            return f"DisplayMenu {label!r}: {', '.join(repr(x) for x in dialog.labels)}"
        case ConfirmationDialog(text=text):
            return f"ConfirmationDialog {text!r}"
        case StartChat(label=label, start_chat_url=url):
            return f"StartChat {label!r} ({url})"
        case DialNumber(label=label, tel_url=tel):
            return f"DialNumber {label!r} ({tel})"
        case UnknownDialog(action=action):
            return f"unknown dialog {action!r}"
    return repr(dialog)


def transcript_hop(entry: TranscriptEntry) -> Hop:
    """How one of the phone's transcript entries reads as a hop."""
    match entry:
        case AlertShown(at=at, presentation=shown, title=title, body=body, action=action):
            message = f" (_action {action})" if action else ""
            return Hop(at, "APNs → phone", f"{shown}: {_alert_text(title, body)}{message}")
        case UserReacted(at=at, reaction=reaction, to=to):
            return Hop(at, "user", f"{reaction}s the {to}")
        case PushNotPosted(at=at, reason=reason):
            return Hop(at, "phone", f"nothing posted: {reason}")
        case AppState(at=at, foreground=foreground):
            return Hop(at, "phone", "app in the foreground" if foreground else "app in background")
        case UrlPosted(at=at, url=url, method=method):
            return Hop(at, "phone → GMS", f"{method} {url}")
        case DialogShown(at=at, dialog=dialog):
            return Hop(at, "GMS → phone", _dialog_text(dialog))
        case MenuChoice(at=at, label=label):
            return Hop(at, "user", f"chose {label!r}")
        case MenuChoiceRefused(at=at, label=label):
            return Hop(at, "phone", f"refused {label!r}: chosen after the menu's _expires")
        case MenuDismissed(at=at):
            return Hop(at, "user", "left the menu")
        case ConfirmationShown(at=at, text=text, dialog_type=kind, dismissed_at=gone):
            return Hop(at, "phone", f"{kind} {text!r}, dismissed after {gone - at:.1f} s")
        case FlowClosed(at=at, via=via):
            return Hop(at, "phone", f"flow closed ({via})")
        case DialRecorded(at=at, tel_url=tel, access_code=code, number=number):
            dials = f"would dial {number}" if number else "nothing to dial"
            return Hop(at, "phone", f"DialNumber _tel_url {tel!r} _access_code {code!r}: {dials}")
        case ChatOpened(at=at, chat_session_id=chat_id, comet_url=comet):
            return Hop(at, "GMS → phone", f"chat {chat_id} open, Comet at {comet}")
        case ChatLineShown(at=at, position=position, kind=kind, nick=nick, text=text, via=via):
            return Hop(
                at,
                f"{'Comet' if via == 'comet' else 'GMS'} → phone",
                f"line {position} {kind} {nick}: {text!r}",
            )
        case ChatEnded(at=at):
            return Hop(at, "phone", "chat ended")
        case GmsFailure(at=at, url=url, status=status, detail=detail):
            return Hop(at, "GMS ✗ phone", f"{url}: {status} {detail}")
        case ActivityShown(at=at, change=change, stage=stage, label=label, detail=detail):
            shown = f"{stage or '-'} {label!r}" if label else (stage or "")
            why = f" ({detail})" if detail else ""
            return Hop(at, "Lock Screen", f"Live Activity {change}: {shown}{why}".rstrip())
    raise TypeError(f"not a transcript entry: {entry!r}")


# ---- the parties a scenario drives ----


@dataclass
class RecordingApp(DeviceApp):
    """The app, also keeping GMS's answers verbatim so they can be compared with the seed's JSON."""

    answers: list[tuple[str, int, bytes]] = field(default_factory=list)  # (url, status, body)

    def receive_answer(
        self, request: HttpRequest, status: int, body: bytes, at: float
    ) -> list[Effect]:
        self.answers.append((request.url, status, body))
        return super().receive_answer(request, status, body, at)


@dataclass
class FlowEnds:
    """Both ends of the relay: GMS pushing and answering, the phone receiving and asking."""

    gms: GmsSimServer
    phone: Phone
    app: RecordingApp
    relay_app: App  # the relay's configuration of the app: its alert templates and chat settings
    device_id: str
    gms_user: str = GMS_USER
    relay_url: str = ""  # where the app registers its Live Activity tokens
    authorization: str = ""

    @property
    def simulator(self) -> GmsSimulator:
        return self.gms.simulator

    @property
    def ext_url_base(self) -> str:
        """The seed's $(ExtURLBase) as the GMS simulator fills it in."""
        return self.gms.base_url + self.simulator.url_path.removesuffix("/1/service/")

    def seed_url(self, service_id: str, action: str) -> str:
        return dialog_url(self.gms.base_url, self.simulator.url_path, service_id, action)


async def flow_ends(
    session: aiohttp.ClientSession,
    *,
    relay_url: str,
    authorization: str,
    control_url: str,
    relay_app: App,
    gms: GmsSimServer,
    receipt_loss: float = 0.0,
) -> FlowEnds:
    # The phone registers with APNs (the simulator) for the app's topic and environment.
    token = await register_device(session, control_url, relay_app.topic, relay_app.environment)
    app = RecordingApp(AppSettings(server_url=gms.base_url, url_path=gms.simulator.url_path))
    gms.simulator.pusher = CustomHttpPusher(session, relay_url, authorization)
    # The app's Notification Service Extension posts each shown alert's receipt; the seeded
    # loss stands for phones offline or extensions killed before their call.
    extension = ReceiptExtension(
        session,
        relay_url + "/v1/receipts",
        loss=receipt_loss,
        delay_s=RECEIPT_DELAY_S,
        rng=random.Random(RECEIPT_SEED),
    )
    return FlowEnds(
        gms=gms,
        phone=Phone(session, control_url, token, app, extension=extension),
        app=app,
        relay_app=relay_app,
        device_id=f"{relay_app.name}:{token}",
        relay_url=relay_url,
        authorization=authorization,
    )


# ---- following a step and printing what happened ----


@dataclass
class Marks:
    transcript: int
    answers: int
    apns: int
    gms_pushes: int
    receipts: int = 0

    @classmethod
    def now(cls, ends: FlowEnds) -> Marks:
        extension = ends.phone.extension
        return cls(
            len(ends.phone.transcript),
            len(ends.app.answers),
            len(ends.phone.pushes),
            len(ends.simulator.pushes),
            len(extension.sent) if extension is not None else 0,
        )


def _gms_push_text(message: JsonObject) -> str:
    data = message.get("data")
    if isinstance(data, dict) and isinstance(data.get("message"), dict):
        chat = data["message"]
        assert isinstance(chat, dict)
        lines = chat.get("transcriptToShow")
        line = (
            json.dumps(lines[0]) if isinstance(lines, list) and lines else chat.get("chatIxnState")
        )
        return f"POST /gms/push chat event {chat.get('transcriptPosition')} {line}"
    return f"POST /gms/push {json.dumps(message)}"


def _apns_hop(record: Mapping[str, object]) -> Hop:
    headers = record.get("headers")
    headers = headers if isinstance(headers, dict) else {}
    received_at = record.get("received_at")
    return Hop(
        float(received_at) if isinstance(received_at, int | float) else time.time(),
        "relay → APNs",
        f"accepted: apns-push-type {headers.get('apns-push-type')}",
    )


def print_since(ends: FlowEnds, report: DemoReport, marks: Marks) -> list[TranscriptEntry]:
    """Print every hop since `marks`; returns the phone's new transcript entries."""
    entries = ends.phone.transcript[marks.transcript :]
    pushes = ends.simulator.pushes[marks.gms_pushes :]
    report.add_hops(
        [
            *(
                Hop(
                    p.at,
                    "GMS → relay",
                    _gms_push_text(p.message) + (f" ✗ {p.error}" if p.error else " → 200"),
                )
                for p in pushes
            ),
            *(_apns_hop(record) for record in ends.phone.pushes[marks.apns :]),
            *(transcript_hop(entry) for entry in entries),
            *(_receipt_hop(sent) for sent in receipts_since(ends, marks)),
        ]
    )
    return entries


def receipts_since(ends: FlowEnds, marks: Marks) -> list[ReceiptSent]:
    extension = ends.phone.extension
    return [] if extension is None else extension.sent[marks.receipts :]


def _receipt_hop(sent: ReceiptSent) -> Hop:
    if sent.status == 204:
        text = f"receipt {sent.notification_id}: confirmed on the phone"
    elif sent.status is None:
        text = f"receipt {sent.notification_id}: lost (the phone was offline)"
    else:
        text = f"receipt {sent.notification_id}: refused ({sent.status})"
    return Hop(sent.at, "phone → relay", text)


async def follow(
    ends: FlowEnds,
    report: DemoReport,
    trigger: Callable[[], Awaitable[object]],
    done: Callable[[list[TranscriptEntry]], bool],
) -> list[TranscriptEntry]:
    """Run `trigger` (GMS or the user acts), then the phone until `done(new entries)` holds."""
    marks = Marks.now(ends)
    try:
        await trigger()
        await ends.phone.run_until(lambda t: done(t[marks.transcript :]), STEP_TIMEOUT_S)
    finally:  # what did happen is printed even when the phone waited in vain
        if ends.phone.extension is not None:
            await ends.phone.extension.drain()
        entries = print_since(ends, report, marks)
    return entries


def has(kind: type[TranscriptEntry], count: int = 1) -> Callable[[list[TranscriptEntry]], bool]:
    return lambda entries: len(entries_of(entries, kind)) >= count


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Wait for a condition on the simulators' state, with a deadline."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while not condition():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not after {STEP_TIMEOUT_S} s")
        await asyncio.sleep(0.02)


# ---- what the seed says each step must look like ----


def seed_values(ends: FlowEnds, service_id: str, date: str = "") -> dict[str, str]:
    """$(...) values for one service; $(Date) is taken from the answer, then checked on its own."""
    context = DialogContext(ends.ext_url_base, service_id, ends.gms_user, _epoch(0))
    return {**context.placeholder_values(), "Date": date}


def _epoch(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def answer_to(ends: FlowEnds, marks: Marks, url: str) -> tuple[int, JsonValue] | None:
    for answered_url, status, body in ends.app.answers[marks.answers :]:
        if answered_url == url:
            try:
                return status, json.loads(body)
            except ValueError:
                return status, body.decode(errors="replace")
    return None


def check_seed_dialog(
    ends: FlowEnds, report: DemoReport, marks: Marks, service_id: str, action: str, url: str
) -> JsonValue:
    """GMS's answer to `url` is the seed's `action` dialog with its placeholders filled."""
    answered = answer_to(ends, marks, url)
    body = None if answered is None else answered[1]
    date = body.get("_expires") if isinstance(body, dict) else None
    wanted = fill_placeholders(
        SEED_DIALOGS[action], seed_values(ends, service_id, date if isinstance(date, str) else "")
    )
    report.check(
        f"GMS answered with the seed's {action} dialog",
        answered is not None and answered[0] == 200 and body == wanted,
        f"got {answered!r}",
        source="seed",
    )
    return body


def check_push_posted(
    ends: FlowEnds,
    report: DemoReport,
    entries: list[TranscriptEntry],
    service_id: str,
    action: str,
    presentation: str,
) -> str:
    """The push came with its `_id`/`_action`, shown as `presentation`; accepted, it was POSTed
    to the seed's $(ServerURL)$(URLPath)$(_id)/$(_action)."""
    alerts = [(a.presentation, a.service_id, a.action) for a in entries_of(entries, AlertShown)]
    report.check(
        f"phone showed the {action} push as {presentation}, with its _id and _action",
        alerts[:1] == [(presentation, service_id, action)],
        repr(alerts),
        source="seed",
    )
    url = ends.seed_url(service_id, action)
    posted = [(p.method, p.url) for p in entries_of(entries, UrlPosted)]
    report.check(
        "the user accepted; the app POSTed $(ServerURL)$(URLPath)$(_id)/$(_action)",
        posted[:1] == [("POST", url)],
        f"{posted[:1]} != {url}",
        source="seed",
    )
    return url


def is_notice(answered: tuple[int, JsonValue] | None, service_id: str, saying: str) -> bool:
    """An inferred answer: a 200 ConfirmationDialog shaped like the seed's wait-for-agent (same
    keys, `_id` the service) whose text says `saying`."""
    if answered is None or answered[0] != 200 or not isinstance(answered[1], dict):
        return False
    dialog = answered[1]
    text = dialog.get("_text")
    return (
        list(dialog) == list(SEED_DIALOGS["wait-for-agent"])
        and dialog.get("_action") == "ConfirmationDialog"
        and dialog.get("_id") == service_id
        and isinstance(text, str)
        and saying in text
    )


def check_menu_expiry(report: DemoReport, menu: JsonValue, service: Service) -> None:
    """_expires is the seed's $(Date) format and is the callback's confirmation deadline
    (_user_confirm_timeout after the push)."""
    expires = menu.get("_expires") if isinstance(menu, dict) else None
    callback = service.callback
    deadline = callback.deadline if callback is not None else None
    ok = isinstance(expires, str) and SEED_TIMESTAMP.fullmatch(expires) is not None
    if ok and deadline is not None:
        expected = _epoch(deadline).strftime("%Y-%m-%dT%H:%M:%SZ")
        ok = expires == expected
    report.check(
        "menu _expires is a YYYY-MM-DDTHH:MM:SSZ time: the confirmation's deadline",
        ok,
        f"{expires!r}, deadline {deadline}",
        source="inferred",
    )


def seed_item_url(ends: FlowEnds, service_id: str, action: str, label: str) -> str:
    """The seed's `_user_action_url` of the menu item labelled `label`, filled for the service."""
    groups = SEED_DIALOGS[action].get("_content")
    for group in groups if isinstance(groups, list) else []:
        items = group.get("_group_content") if isinstance(group, dict) else None
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and item.get("_label") == label:
                url = fill_placeholders(item.get("_user_action_url"), seed_values(ends, service_id))
                return str(url)
    raise KeyError(f"{action} has no item {label!r}")


# ---- the callback scenarios ----


async def _new_callback(
    ends: FlowEnds,
    report: DemoReport,
    title: str,
    options: CallbackOptions,
    until: Callable[[list[TranscriptEntry]], bool],
) -> tuple[Service, Marks, list[TranscriptEntry]]:
    """GMS creates a callback (and pushes its first action); the phone acts until `until`."""
    marks = Marks.now(ends)
    service = await ends.simulator.create_callback(
        options, gms_user=ends.gms_user, device_id=ends.device_id
    )
    report.section(f"{title}: GMS callback service {service.service_id}")
    try:
        await ends.phone.run_until(lambda t: until(t[marks.transcript :]), STEP_TIMEOUT_S)
    finally:
        entries = print_since(ends, report, marks)
    return service, marks, entries


async def _confirmation_push(
    ends: FlowEnds,
    report: DemoReport,
    service: Service,
    until: Callable[[list[TranscriptEntry]], bool],
) -> tuple[Marks, list[TranscriptEntry]]:
    """An agent is free: GMS pushes the confirmation; the phone and its user act on it."""
    marks = Marks.now(ends)
    entries = await follow(
        ends, report, lambda: ends.simulator.agent_available(service.service_id), until
    )
    return marks, entries


async def callback_confirm(ends: FlowEnds, report: DemoReport) -> None:
    """wait-for-agent in the foreground; the confirmation in the background, tapped; "Yes"."""
    ends.app.user.will(PushAnswer("accept"))
    options = CallbackOptions(provide_code=True)
    service, marks, entries = await _new_callback(
        ends, report, "callback-confirm", options, has(DialogShown)
    )
    sid = service.service_id
    url = check_push_posted(ends, report, entries, sid, "wait-for-agent", "alert dialog")
    check_seed_dialog(ends, report, marks, sid, "wait-for-agent", url)

    await follow(ends, report, ends.phone.to_background, has(AppState))
    ends.app.user.will(PushAnswer("accept"), MenuAnswer(YES))
    action = options.confirmation_action
    marks, entries = await _confirmation_push(ends, report, service, has(FlowClosed))
    url = check_push_posted(ends, report, entries, sid, action, "notification")
    menu = check_seed_dialog(ends, report, marks, sid, action, url)
    check_menu_expiry(report, menu, service)
    confirmations = entries_of(entries, ConfirmationShown)
    report.check(
        "the item's confirmation_dialog was shown as a Notification, gone after _dismiss_timeout 2",
        [(c.dialog_type, round(c.dismissed_at - c.at, 3)) for c in confirmations]
        == [("Notification", 2.0)],
        repr(confirmations),
        source="inferred",
    )
    connect_url = seed_item_url(ends, sid, action, YES)
    posted = [(p.method, p.url, p.at) for p in entries_of(entries, UrlPosted)]
    report.check(
        "then the item's _user_action_url with its _method (POST), once the dialog was gone",
        len(posted) == 2
        and posted[1][:2] == ("POST", connect_url)
        and bool(confirmations)
        and posted[1][2] >= confirmations[0].dismissed_at,
        repr(posted),
        source="seed",
    )
    check_seed_dialog(ends, report, marks, sid, "connect-outbound", connect_url)
    report.check(
        "_id_to_jump_before exit:// closed the flow",
        has(FlowClosed)(entries),
        repr(entries[-1:]),
        source="inferred",
    )
    actions = [p.message.get("_action") for p in ends.simulator.pushes_for(sid)]
    report.check(
        "GMS connected the callback and asked nothing more (inferred state machine)",
        service.callback is not None
        and service.callback.state is CallbackState.CONNECTED
        and actions == ["wait-for-agent", action],
        f"{service.callback}, pushes {actions}",
        source="inferred",
    )
    await ends.phone.to_foreground()


async def callback_inbound(ends: FlowEnds, report: DemoReport) -> None:
    """A callback the customer dials (`_call_direction` USERORIGINATED): "Yes" is answered with
    the seed's connect-inbound DialNumber, and the phone records the dial it would make."""
    options = CallbackOptions(wait_for_agent=False, connect_mode="inbound")
    ends.app.user.will(PushAnswer("accept"), MenuAnswer(YES))
    service, marks, entries = await _new_callback(
        ends, report, "callback-inbound", options, has(FlowClosed)
    )
    sid = service.service_id
    action = options.confirmation_action
    url = check_push_posted(ends, report, entries, sid, action, "alert dialog")
    check_seed_dialog(ends, report, marks, sid, action, url)
    connect_url = seed_item_url(ends, sid, action, YES)
    dialog = check_seed_dialog(ends, report, marks, sid, "connect-inbound", connect_url)
    dials = [(d.tel_url, d.access_code, d.number) for d in entries_of(entries, DialRecorded)]
    wanted = (
        [(dialog.get("_tel_url"), dialog.get("_access_code"), None)]
        if isinstance(dialog, dict)
        else []
    )
    report.check(
        "DialNumber: the phone recorded the dial it would make from _tel_url and _access_code "
        '(the seed\'s "n/a": no number, so nothing dialled)',
        dials == wanted and dials != [],
        repr(dials),
        source="inferred",
    )
    report.check(
        "GMS connected the callback (inferred state machine)",
        service.callback is not None and service.callback.state is CallbackState.CONNECTED,
        repr(service.callback),
        source="inferred",
    )


async def callback_snooze(ends: FlowEnds, report: DemoReport) -> None:
    """ "No, try again in 5 minutes": GMS asks again once the snooze delay has passed."""
    options = CallbackOptions(wait_for_agent=False, snooze_delay_s=SNOOZE_DELAY_S)
    # The user leaves the menu and comes back to it before choosing "No".
    leave = MenuAnswer(None, after_s=0.2, reopen=True)
    ends.app.user.will(PushAnswer("accept"), leave, MenuAnswer(NO))
    service, marks, entries = await _new_callback(
        ends, report, "callback-snooze", options, has(FlowClosed)
    )
    sid = service.service_id
    action = options.confirmation_action
    url = check_push_posted(ends, report, entries, sid, action, "alert dialog")
    menu = check_seed_dialog(ends, report, marks, sid, action, url)
    resource_url = menu.get("_resource_url") if isinstance(menu, dict) else None
    posted = [(p.method, p.url) for p in entries_of(entries, UrlPosted)]
    report.check(
        "the menu's _resource_url is the seed's …/get-dialog-user-confirmation, _method POST",
        resource_url == ends.seed_url(sid, "get-dialog-user-confirmation")
        and isinstance(menu, dict)
        and menu.get("_method") == "POST",
        repr(resource_url),
        source="seed",
    )
    report.check(
        "the user left the menu and came back: the app fetched _resource_url again (POST)",
        bool(entries_of(entries, MenuDismissed)) and posted[1:2] == [("POST", resource_url)],
        repr(posted),
        source="inferred",
    )
    if isinstance(resource_url, str):
        check_seed_dialog(ends, report, marks, sid, action, resource_url)
    snooze_url = seed_item_url(ends, sid, action, NO)
    report.check(
        "snooze answered a ConfirmationDialog saying the delay (inferred answer)",
        is_notice(answer_to(ends, marks, snooze_url), sid, f"again in {SNOOZE_DELAY_S:g} second"),
        repr(answer_to(ends, marks, snooze_url)),
        source="inferred",
    )
    snoozed_at = entries_of(entries, MenuChoice)[0].at if entries_of(entries, MenuChoice) else 0.0
    ends.app.user.will(PushAnswer("accept"), MenuAnswer(YES))
    marks = Marks.now(ends)
    await ends.phone.run_until(lambda t: has(FlowClosed)(t[marks.transcript :]), STEP_TIMEOUT_S)
    entries = print_since(ends, report, marks)
    again = entries_of(entries, AlertShown)
    report.check(
        f"GMS asked again only after the snooze delay ({SNOOZE_DELAY_S:g} s)",
        bool(again) and again[0].action == action and again[0].at - snoozed_at >= SNOOZE_DELAY_S,
        f"{[(a.action, round(a.at - snoozed_at, 3)) for a in again]}",
        source="inferred",
    )
    report.check(
        "the second confirmation was accepted: connected, two attempts used",
        service.callback is not None
        and service.callback.state is CallbackState.CONNECTED
        and service.callback.attempts == 2,
        repr(service.callback),
        source="inferred",
    )


async def callback_cancel(ends: FlowEnds, report: DemoReport) -> None:
    """The user dismisses wait-for-agent, then chooses "Cancel, my problem has been solved"."""
    ends.app.user.will(PushAnswer("decline"))
    options = CallbackOptions(snooze_delay_s=SNOOZE_DELAY_S)
    service, _, entries = await _new_callback(
        ends, report, "callback-cancel", options, has(UserReacted)
    )
    sid = service.service_id
    reactions = entries_of(entries, UserReacted)
    report.check(
        "the user declined the wait-for-agent alert: nothing was POSTed",
        [r.reaction for r in reactions] == ["decline"]
        and not ends.simulator.requests_to(f"{sid}/wait-for-agent"),
        repr(reactions),
        source="inferred",
    )
    ends.app.user.will(PushAnswer("accept"), MenuAnswer(CANCEL))
    action = options.confirmation_action
    marks, entries = await _confirmation_push(ends, report, service, has(FlowClosed))
    check_push_posted(ends, report, entries, sid, action, "alert dialog")
    cancel_url = seed_item_url(ends, sid, action, CANCEL)
    posted = [p.url for p in entries_of(entries, UrlPosted)]
    report.check(
        "Cancel POSTed the seed's URL for it (…/snooze, like No)",
        posted[1:] == [cancel_url] and cancel_url.endswith("/snooze"),
        repr(posted),
        source="seed",
    )
    answered = answer_to(ends, marks, cancel_url)
    report.check(
        "GMS told it from No by its _dialog_id 3 and cancelled the callback (inferred)",
        is_notice(answered, sid, "cancelled")
        and service.callback is not None
        and service.callback.state is CallbackState.CANCELLED
        and service.timer is None,
        f"{answered!r}, {service.callback}",
        source="inferred",
    )


async def callback_timeout(ends: FlowEnds, report: DemoReport) -> None:
    """_user_confirm_timeout passes: an ignored push, a menu choice after _expires (refused by
    the phone) and a push tapped after its timeout (useless: GMS has moved on)."""
    options = CallbackOptions(wait_for_agent=False, user_confirm_timeout_s=SHORT_CONFIRM_TIMEOUT_S)
    ends.app.user.will(PushAnswer("ignore"))
    service, _, entries = await _new_callback(
        ends, report, "callback-timeout", options, has(UserReacted)
    )
    sid = service.service_id
    await wait_for(
        lambda: (
            service.callback is not None
            and service.callback.attempts == 1
            and service.callback.state is CallbackState.WAITING_FOR_AGENT
        ),
        "the first confirmation timing out",
    )
    report.check(
        "1: the user ignored the push; at its timeout GMS used up the attempt and waits again",
        [r.reaction for r in entries_of(entries, UserReacted)] == ["ignore"]
        and not entries_of(entries, UrlPosted),
        f"{entries_of(entries, UserReacted)}, {service.callback}",
        source="inferred",
    )

    ends.app.user.will(PushAnswer("accept"), MenuAnswer(YES, after_s=LATE_S))
    _, entries = await _confirmation_push(ends, report, service, has(MenuChoiceRefused))
    refused = entries_of(entries, MenuChoiceRefused)
    report.check(
        f'2: the menu was shown in time; "Yes" chosen {LATE_S:g} s later, after _expires, '
        "was refused by the phone and nothing was POSTed",
        len(refused) == 1
        and refused[0].at > refused[0].expires_at
        and len(entries_of(entries, UrlPosted)) == 1
        and not ends.simulator.requests_to(f"{sid}/connect"),
        repr(refused),
        source="inferred",
    )
    await wait_for(
        lambda: (
            service.callback is not None
            and service.callback.attempts == 2
            and service.callback.state is CallbackState.WAITING_FOR_AGENT
        ),
        "the second confirmation timing out",
    )

    ends.app.user.will(PushAnswer("accept", after_s=LATE_S))
    action = options.confirmation_action
    _, entries = await _confirmation_push(ends, report, service, has(GmsFailure))
    url = ends.seed_url(sid, action)
    failures = [(f.url, f.status) for f in entries_of(entries, GmsFailure)]
    report.check(
        f"3: tapped {LATE_S:g} s after it came, the push was useless: GMS answered 410 (inferred)",
        failures == [(url, 410)] and not entries_of(entries, DialogShown),
        repr(failures),
        source="inferred",
    )
    report.check(
        "after its last attempt the callback ended (_max_number_of_user_availability_"
        "confirmation_attempts 3)",
        service.callback is not None
        and service.callback.state is CallbackState.GAVE_UP
        and service.callback.attempts == 3,
        repr(service.callback),
        source="inferred",
    )

    await late_confirmation_expires_at_the_relay(ends, report, options)


async def _relay_get(ends: FlowEnds, path: str) -> tuple[int, str]:
    async with ends.phone.session.get(
        ends.relay_url + path,
        headers={"Authorization": ends.authorization},
        timeout=aiohttp.ClientTimeout(total=STEP_TIMEOUT_S),
    ) as response:
        return response.status, await response.text()


async def _expired_count(ends: FlowEnds) -> float:
    """The relay's expired counter for the app, from its /metrics."""
    _, text = await _relay_get(ends, "/metrics")
    pattern = rf'^{EXPIRED_METRIC}\{{app="{re.escape(ends.relay_app.name)}"\}} (\S+)$'
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def _apns_faults(ends: FlowEnds, faults: Mapping[str, object] | None) -> None:
    """Set (or, with None, clear) the APNs simulator's faults."""
    method, body = ("DELETE", None) if faults is None else ("PUT", faults)
    async with ends.phone.session.request(
        method, ends.phone.control_url + "/faults", json=body
    ) as response:
        if response.status != 200:
            raise RuntimeError(f"{method} /faults: {response.status} {await response.text()}")


async def late_confirmation_expires_at_the_relay(
    ends: FlowEnds, report: DemoReport, options: CallbackOptions
) -> None:
    """4: APNs is unreachable (503 to every request) when GMS asks again: the relay keeps the
    confirmation only for its lifetime (GMS's _user_confirm_timeout), then it expires there and
    never reaches the phone, where it would ask about a callback GMS has moved on from."""
    action = options.confirmation_action
    lifetime = ends.relay_app.ttl_by_action.get(action)
    expired_before = await _expired_count(ends)
    await _apns_faults(ends, APNS_OUTAGE)
    marks = Marks.now(ends)
    try:
        service = await ends.simulator.create_callback(
            replace(options, wait_for_agent=False),
            gms_user=ends.gms_user,
            device_id=ends.device_id,
        )
        report.section(f"callback-timeout, APNs down: GMS callback service {service.service_id}")
        answers = [p.answer for p in ends.simulator.pushes_for(service.service_id)]
        notification_id = answers[0].get("id") if answers and isinstance(answers[0], dict) else None
        status: dict[str, object] = {}

        async def settled() -> bool:
            nonlocal status
            code, text = await _relay_get(ends, f"/v1/notifications/{notification_id}")
            status = json.loads(text) if code == 200 else {}
            return status.get("state") in ("delivered", "failed", "expired", "superseded")

        deadline = time.monotonic() + STEP_TIMEOUT_S
        while notification_id is not None and not await settled():
            if time.monotonic() >= deadline:
                raise TimeoutError(f"the confirmation to expire: not after {STEP_TIMEOUT_S} s")
            await asyncio.sleep(0.05)
    finally:
        await _apns_faults(ends, None)
    await ends.phone.poll_once()
    print_since(ends, report, marks)
    accepted_at_ms, expires_at = status.get("accepted_at_ms"), status.get("expires_at")
    lived = (
        expires_at - accepted_at_ms // 1000
        if isinstance(accepted_at_ms, int) and isinstance(expires_at, int)
        else None
    )
    report.note(f"relay: notification {notification_id} {status.get('state')}, {status}")
    report.check(
        f"4: with APNs down, the relay kept the confirmation only its lifetime ({lifetime} s: "
        f"ttl_by_action, GMS's _user_confirm_timeout), then it expired at the relay",
        status.get("state") == "expired"
        and lifetime is not None
        and lived in (lifetime - 1, lifetime, lifetime + 1)
        and isinstance(status.get("attempts"), int)
        and int(str(status.get("attempts"))) >= 1,
        repr(status),
        source="relay",
    )
    expired_after = await _expired_count(ends)
    report.check(
        f"the expiry was counted in {EXPIRED_METRIC}",
        expired_after == expired_before + 1,
        f"{expired_before} -> {expired_after}",
        source="relay",
    )
    shown = [
        a
        for a in entries_of(ends.phone.transcript, AlertShown)
        if a.service_id == service.service_id
    ]
    report.check(
        "the phone never saw the late confirmation", shown == [], repr(shown), source="relay"
    )


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


async def _relay_call(
    ends: FlowEnds, method: str, path: str, body: Mapping[str, str] | None
) -> None:
    """The app calling the relay's API (registering a Live Activity token)."""
    async with ends.phone.session.request(
        method,
        ends.relay_url + path,
        json=body,
        headers={"Authorization": ends.authorization},
        timeout=aiohttp.ClientTimeout(total=STEP_TIMEOUT_S),
    ) as response:
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: {response.status} {await response.text()}")


async def callback_live_activity(ends: FlowEnds, report: DemoReport) -> None:
    """A callback on the Lock Screen: wait-for-agent starts a Live Activity by push-to-start
    (iOS 17.2+), the connect push ends it, and it is dismissed at its dismissal-date. Without
    _wait_for_user_confirm GMS pushes the connect itself (with it, the connect is the answer to
    the user's "Yes", which the app shows itself)."""
    app, phone = ends.relay_app, ends.phone
    base = f"/v1/devices/{app.name}/{phone.token}/push-to-start"
    if app.live_activity is None:
        report.section("callback-live-activity: GMS callbacks drive no Live Activity here")
        refused = None
        try:
            await _relay_call(ends, "PUT", base, {"push_to_start_token": phone.token})
        except RuntimeError as error:
            refused = str(error)
        report.check(
            "without live_activity (certificate auth: Apple refuses Live Activity pushes) the "
            "relay refuses the registration",
            refused is not None and "404" in refused,
            repr(refused),
            source="relay",
        )
        return

    async def new_token() -> str:  # ActivityKit's tokens come from APNs too
        return await register_device(phone.session, phone.control_url, app.topic, app.environment)

    push_to_start = await new_token()
    await _relay_call(ends, "PUT", base, {"push_to_start_token": push_to_start})

    async def register_update_token(service_id: str) -> str:
        # Activity.pushTokenUpdates: the started activity's own token, handed to the relay.
        token = await new_token()
        body = {"activity_token": token, "device_token": phone.token}
        await _relay_call(ends, "PUT", f"/v1/activities/{app.name}/{service_id}", body)
        return token

    watcher = phone.activity_watcher = ActivityWatcher(
        phone.session,
        phone.control_url,
        LiveActivities(push_to_start_token=push_to_start),
        on_started=register_update_token,
    )
    try:
        options = CallbackOptions(wait_for_user_confirm=False)
        service, _, started = await _new_callback(
            ends, report, "callback-live-activity", options, has(ActivityShown)
        )
        ended = await follow(
            ends,
            report,
            lambda: ends.simulator.agent_available(service.service_id),
            lambda t: any(a.change == "ended" for a in entries_of(t, ActivityShown)),
        )
        gone = await follow(
            ends,
            report,
            lambda: asyncio.sleep(0),  # nothing to do: the dismissal-date comes
            lambda t: any(a.change == "dismissed" for a in entries_of(t, ActivityShown)),
        )
    finally:
        phone.activity_watcher = None
        await _relay_call(ends, "DELETE", base, None)
    shown = [(a.change, a.stage) for a in entries_of(started + ended + gone, ActivityShown)]
    report.check(
        "the Lock Screen showed the callback waiting, then connecting, then it went away",
        shown == [("started", "waiting"), ("ended", "connecting"), ("dismissed", "connecting")],
        repr(shown),
        source="relay",
    )
    topics = {(r["topic"], r["headers"]["apns-push-type"]) for r in watcher.records}
    report.check(
        "Live Activity pushes went to <bundle id>.push-type.liveactivity as liveactivity",
        topics == {(f"{app.topic}.push-type.liveactivity", "liveactivity")},
        repr(topics),
        source="relay",
    )
    sent = [
        (r["payload"]["aps"]["event"], r["headers"]["apns-priority"], r["payload"]["aps"])
        for r in watcher.records
    ]
    stamps = [aps["timestamp"] for _, _, aps in sent]
    report.check(
        "start at priority 5, end at 10 with a dismissal-date; timestamps strictly increase",
        [(event, priority) for event, priority, _ in sent] == [("start", "5"), ("end", "10")]
        and "dismissal-date" in sent[-1][2]
        and stamps == sorted(set(stamps)),
        repr(sent),
        source="relay",
    )
    alerts = [a.action for a in entries_of(started + ended, AlertShown)]
    report.check(
        "the alerts came as before, next to the activity",
        alerts == ["wait-for-agent", options.connect_action],
        repr(alerts),
        source="relay",
    )


Scenario = Callable[[FlowEnds, DemoReport], Awaitable[None]]

DEMO_SCENARIOS: Mapping[str, Scenario] = {
    "callback-confirm": callback_confirm,
    "callback-snooze": callback_snooze,
    "callback-cancel": callback_cancel,
    "callback-timeout": callback_timeout,
    "callback-inbound": callback_inbound,
    "chat": chat,
    "callback-live-activity": callback_live_activity,
}


# ---- delivery receipts: what the phone confirmed ----


async def report_receipts(ends: FlowEnds, report: DemoReport) -> None:
    """The confirmed ratio (receipts the relay recorded / alert pushes the phone got with one),
    and the relay's status of a confirmed push showing when the phone had it."""
    extension = ends.phone.extension
    if extension is None:
        return
    await extension.drain()
    report.section("Delivery receipts")
    confirmed = extension.confirmed()
    carried = len(extension.sent)
    lost = sum(1 for sent in extension.sent if sent.status is None)
    ratio = len(confirmed) / carried if carried else 0.0
    report.note(
        f"confirmed ratio: {len(confirmed)} of {carried} alert pushes confirmed on the phone"
        f" ({ratio:.0%}); {lost} receipts lost on the way"
    )
    refused = [s for s in extension.sent if s.status not in (204, None)]
    report.check(
        "every receipt the phone posted was recorded",
        not refused,
        f"refused: {refused}",
        source="relay",
    )
    if confirmed:
        sample = sorted(confirmed)[0]
        status, body = await _relay_get(ends, f"/v1/notifications/{sample}")
        shown = json.loads(body) if status == 200 else {}
        latency = shown.get("device_latency_ms")
        report.note(f"status of {sample}: received_at_ms set, device_latency_ms {latency}")
        report.check(
            "the status API shows when the phone had it",
            isinstance(shown.get("received_at_ms"), int) and isinstance(latency, int),
            f"{status} {body}",
            source="relay",
        )


# ---- the whole stack in this process ----


def demo_settings(redis_url: str, simulator: SimInfo, basic: str, auth: str = "token") -> Settings:
    app = simulator_app(simulator, auth).model_dump(mode="json")
    app.update(DEMO_APP)
    app["receipts"] = {"secret": secrets.token_hex(32)}
    if auth == "token":  # Apple takes Live Activity pushes only from token auth
        app["live_activity"] = {"dismiss_after_s": 2}  # dismissed within the demo's step
    return Settings.model_validate(
        {
            "redis": {"url": redis_url},
            "auth": {"basic": [basic]},
            "retry": {"base_ms": 20, "cap_ms": 500},
            "delivery": {"request_timeout_seconds": 2.0},
            "circuit": dict(DEMO_CIRCUIT),
            "apps": [app],
        }
    )


@contextlib.asynccontextmanager
async def relay_in_loop(settings: Settings) -> AsyncIterator[str]:
    """The relay's api and worker in this event loop; yields the api's URL."""
    async with run_relay(settings, grace_s=2.0) as relay:
        yield relay.url


async def run_demo(
    scenarios: Sequence[str],
    state_dir: Path,
    out: TextIO | None,
    auth: str = "token",
    receipt_loss: float = 0.0,
) -> DemoReport:
    """Start everything, run `scenarios` in turn and return the transcript with its checks."""
    report = DemoReport(out=out)
    password = secrets.token_urlsafe(12)
    with EmbeddedServer(data_dir=state_dir / "valkey") as valkey:
        async with Simulator(SimulatorOptions(state_dir=state_dir / "apns-sim")) as simulator:
            info = SimInfo.from_document(simulator.info)
            settings = demo_settings(valkey.url, info, f"{GMS_BASIC_USER}:{password}", auth)
            async with (
                relay_in_loop(settings) as relay_url,
                GmsSimServer(GmsSimulator()) as gms,
                aiohttp.ClientSession() as session,
            ):
                relay_app = settings.apps[0]
                ends = await flow_ends(
                    session,
                    relay_url=relay_url,
                    authorization=basic_authorization(GMS_BASIC_USER, password),
                    control_url=info.control_url,
                    relay_app=relay_app,
                    gms=gms,
                    receipt_loss=receipt_loss,
                )
                report.note("apns-relay demo: the GMS flow end to end, times since the start")
                report.note(f"Valkey (embedded)  {valkey.url}")
                environment = relay_app.environment
                report.note(
                    f"APNs simulator     https://{info.host}:{info.port_of(environment)}"
                    f"  {environment} ({auth} auth)"
                )
                report.note(f"relay              {relay_url}  (GMS pushes to /gms/push)")
                report.note(f"GMS simulator      {gms.base_url}{gms.simulator.url_path}")
                token = ends.phone.token
                report.note(f"phone              device token {token[:16]}... (registered)")
                try:
                    for name in scenarios:
                        try:
                            await DEMO_SCENARIOS[name](ends, report)
                        except (TimeoutError, aiohttp.ClientError, RuntimeError) as error:
                            report.check(
                                f"{name} ran to its end", False, str(error), source="relay"
                            )
                    await report_receipts(ends, report)
                finally:
                    await ends.phone.close()
    return report


# ---- command line ----


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(DEMO_SCENARIOS),
        help="run only this scenario (repeatable; default: all of them)",
    )
    parser.add_argument(
        "--state-dir",
        help="keep Valkey's and the simulator's files here (default: a temporary dir)",
    )
    parser.add_argument(
        "--receipt-loss",
        type=float,
        default=0.0,
        help="share of delivery receipts the phone never posts, 0 to 1 (default: 0)",
    )
    parser.add_argument(
        "--auth",
        choices=DEV_AUTH_CHOICES,
        default="token",
        help="the relay's APNs credentials: a .p8 token key or a push certificate (.pem)",
    )


def run(args: argparse.Namespace) -> int:
    configure_logging("auto", "warning")
    scenarios = args.scenario or list(DEMO_SCENARIOS)
    with contextlib.ExitStack() as stack:
        state_dir = (
            Path(args.state_dir)
            if args.state_dir
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="apns-relay-demo-")))
        )
        report = asyncio.run(
            run_demo(scenarios, state_dir.resolve(), sys.stdout, args.auth, args.receipt_loss)
        )
    failures = report.failures
    print(
        f"\n{len(report.checks) - len(failures)} of {len(report.checks)} checks passed"
        f" over {len(report.hops)} hops: " + ("every check held" if not failures else "FAILED"),
        flush=True,
    )
    for source, count in report.by_source().items():
        print(f"  [{source}] {count} checks against {SOURCE_LABELS[source]}", flush=True)
    for failure in failures:
        print(f"  FAIL {failure.name}: {failure.detail}", file=sys.stderr)
    return 0 if not failures else 1
