"""`apns-relay demo`: the whole GMS flow in one process, printed as a timed transcript of hops.

Nothing to configure: an embedded Valkey, the APNs simulator, the relay (api + worker), the GMS
simulator and one simulated phone start here, the GMS scenarios run through them, and every hop
(GMS → relay → APNs → phone → GMS → dialog → user choice) is printed with the milliseconds since
the start. Each step is checked against the seed as it happens; the exit status is 0 only if every
check passed.

Pacing: the relay lets a newer push for the same GMS service replace a queued older one, as it
should for a user who was away. A real callback flow is paced by the user, so a scenario sends each
callback push only once the phone has acted on the previous one. Chat events are sent as fast as
GMS would: chat pushes never replace one another, and the relay orders them by position.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import aiohttp

from relay.apns_sim.command import Simulator, SimulatorOptions
from relay.apns_sim.info import SimInfo
from relay.config import App, Settings
from relay.device_sim.app import (
    AlertShown,
    AppSettings,
    ChatOpened,
    ConfirmationDialog,
    DeviceApp,
    DialNumber,
    DialogShown,
    DisplayMenu,
    GmsFailure,
    MenuChoice,
    MenuDismissed,
    MenuItem,
    PostRequest,
    PushNotPosted,
    StartChat,
    TranscriptEntry,
    UnknownDialog,
    UrlPosted,
    dialog_url,
    entries_of,
    item_labelled,
)
from relay.device_sim.phone import Phone, register_device
from relay.embedded import EmbeddedServer
from relay.gms import CHAT_ACTION
from relay.gms_sim.dialogs import (
    SEED_DIALOGS,
    SNOOZE_DIALOG,
    DialogContext,
    JsonObject,
    JsonValue,
    fill_placeholders,
)
from relay.gms_sim.scenarios import (
    CHAT_SESSION_SCRIPT,
    CustomHttpPusher,
    TranscriptLine,
    basic_authorization,
    callback_message,
    chat_session_events,
    new_chat_session_id,
)
from relay.gms_sim.server import GmsSimServer, GmsSimulator
from relay.logs import configure_logging
from relay.service import run_relay, simulator_app

GMS_USER = "demo-user"
GMS_BASIC_USER = "gms"
STEP_TIMEOUT_S = 10.0  # how long one push may take to reach the phone and be acted on
SEED_TIMESTAMP = "%Y-%m-%dT%H:%M:%SZ"  # the seed's $(Timestamp)/$(Date) format

# The callback scenario: each seed action pushed in turn, and what the user taps in its menu.
# The follow-up a menu item leads to is the seed's connect-outbound dialog ("connect" of an
# outbound callback) or the simulator's snooze confirmation.
CALLBACK_STEPS: tuple[tuple[str, str | None], ...] = (
    ("wait-for-agent", None),
    ("get-dialog-user-confirmation-provide_code-true", "Yes, I'm ready to talk"),
    ("get-dialog-user-confirmation-provide_code-false", "No, try again in 5 minutes"),
    ("connect-outbound", None),
)
MENU_TARGET_DIALOGS: Mapping[str, JsonObject] = {
    "connect": SEED_DIALOGS["connect-outbound"],
    "snooze": SNOOZE_DIALOG,
}
REPLAYED_POSITION = 3  # the chat event GMS sends twice in the chat-session scenario


# ---- the transcript ----


@dataclass(frozen=True, slots=True)
class Hop:
    at: float  # epoch seconds
    route: str  # e.g. "GMS → relay"
    text: str


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
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
        """Hops come from several clocks' records (relay answer, APNs log, phone); print in time
        order."""
        for hop in sorted(hops, key=lambda h: h.at):
            self.hops.append(hop)
            elapsed_ms = (hop.at - self.started_at) * 1000
            self._print(f"   +{elapsed_ms:7.0f} ms  {hop.route:<13} {hop.text}")

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append(Check(name, ok, detail))
        self._print(f"      {'ok  ' if ok else 'FAIL'} {name}{'' if ok else f': {detail}'}")
        return ok


def _alert_text(title: str | None, body: str | None) -> str:
    return " / ".join(repr(part) for part in (title, body) if part is not None) or "(no alert)"


def _dialog_text(dialog: object) -> str:
    match dialog:
        case DisplayMenu(label=label, groups=groups):
            labels = [item.label for group in groups for item in group.items]
            return f"DisplayMenu {label!r}: {', '.join(repr(label) for label in labels)}"
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
        case AlertShown(at=at, title=title, body=body, service_id=service_id, action=action):
            message = f" (_id {service_id}, _action {action})" if action else ""
            return Hop(at, "APNs → phone", f"alert {_alert_text(title, body)}{message}")
        case PushNotPosted(at=at, reason=reason):
            return Hop(at, "phone", f"shown, nothing posted: {reason}")
        case UrlPosted(at=at, url=url):
            return Hop(at, "phone → GMS", f"POST {url}")
        case DialogShown(at=at, dialog=dialog):
            return Hop(at, "GMS → phone", _dialog_text(dialog))
        case MenuChoice(at=at, label=label, confirmation_text=confirmation):
            said = f", then shown {confirmation!r}" if confirmation else ""
            return Hop(at, "user", f"chose {label!r}{said}")
        case MenuDismissed(at=at):
            return Hop(at, "user", "dismissed the menu")
        case ChatOpened(at=at, answer=answer):
            return Hop(at, "GMS → phone", f"chat started, chatId {answer.get('chatId')}")
        case GmsFailure(at=at, url=url, status=status, detail=detail):
            return Hop(at, "GMS ✗ phone", f"{url}: {status} {detail}")
    raise TypeError(f"not a transcript entry: {entry!r}")


# ---- the parties a scenario drives ----


class ScriptedUser:
    """The person holding the phone: taps the menu item the scenario set, or dismisses the menu."""

    def __init__(self) -> None:
        self.next_choice: str | None = None

    def __call__(self, menu: DisplayMenu) -> MenuItem | None:
        choice, self.next_choice = self.next_choice, None
        return None if choice is None else item_labelled(choice)(menu)


@dataclass
class RecordingApp(DeviceApp):
    """The app, also keeping GMS's answers verbatim so they can be compared with the seed's JSON."""

    answers: list[tuple[str, int, bytes]] = field(default_factory=list)  # (url, status, body)

    def receive_answer(
        self, request: PostRequest, status: int, body: bytes, at: float
    ) -> list[PostRequest]:
        self.answers.append((request.url, status, body))
        return super().receive_answer(request, status, body, at)


@dataclass
class FlowEnds:
    """Both ends of the relay: GMS pushing and answering, the phone receiving and asking."""

    pusher: CustomHttpPusher
    gms: GmsSimServer
    phone: Phone
    app: RecordingApp
    user: ScriptedUser
    relay_app: App  # the relay's configuration of the app: its alert templates and chat settings
    device_id: str
    gms_user: str = GMS_USER

    @property
    def ext_url_base(self) -> str:
        """The seed's $(ExtURLBase) as the GMS simulator fills it in."""
        url_path = self.gms.simulator.url_path
        return self.gms.base_url + url_path.removesuffix("/1/service/")


def flow_ends(
    session: aiohttp.ClientSession,
    *,
    relay_url: str,
    authorization: str,
    control_url: str,
    relay_app: App,
    gms: GmsSimServer,
    token: str,
) -> FlowEnds:
    """`token`: the phone's device token, as the APNs simulator issued it (register_device)."""
    user = ScriptedUser()
    app = RecordingApp(
        AppSettings(
            server_url=gms.base_url,
            url_path=gms.simulator.url_path,
            gms_user=GMS_USER,
            menu_policy=user,
            start_chat=True,
        )
    )
    return FlowEnds(
        pusher=CustomHttpPusher(session, relay_url, authorization),
        gms=gms,
        phone=Phone(session, control_url, token, app),
        app=app,
        user=user,
        relay_app=relay_app,
        device_id=f"{relay_app.name}:{token}",
    )


# ---- one push, followed to its end ----


@dataclass(frozen=True, slots=True)
class FollowedPush:
    """What one push led to on the phone."""

    answer: JsonValue  # the relay's 200 body
    entries: list[TranscriptEntry]  # the phone's transcript from this push on
    answers: list[tuple[str, int, bytes]]  # GMS's answers to the POSTs it caused


async def push_and_follow(ends: FlowEnds, report: DemoReport, message: JsonObject) -> FollowedPush:
    """Push one callback message and wait until the phone has received it and done what follows."""
    transcript_mark, answers_mark = len(ends.phone.transcript), len(ends.app.answers)
    pushes_mark = len(ends.phone.pushes)
    pushed_at = time.time()
    sent = await ends.pusher.push(ends.device_id, message)
    try:
        await ends.phone.wait_for_pushes(ends.app.pushes_received + 1, STEP_TIMEOUT_S)
    finally:  # what did happen is printed even when the phone waited in vain
        entries = ends.phone.transcript[transcript_mark:]
        report.add_hops(
            [
                Hop(
                    pushed_at,
                    "GMS → relay",
                    f"POST /gms/push {json.dumps(message)} → {relay_answer_text(sent.answer)}",
                ),
                *(_apns_hop(record) for record in ends.phone.pushes[pushes_mark:]),
                *(transcript_hop(entry) for entry in entries),
            ]
        )
    return FollowedPush(sent.answer, entries, ends.app.answers[answers_mark:])


def relay_answer_text(answer: JsonValue) -> str:
    """The relay's 200 to a GMS push, said briefly."""
    if not isinstance(answer, dict):
        return f"200 {answer!r}"
    if answer.get("pushed") is not True:
        return "200, nothing to push"
    if answer.get("duplicate") is True:
        return f"200, a repeat of {answer.get('id')}: not queued again"
    return f"200, queued as {answer.get('id')}"


def _apns_hop(record: Mapping[str, object]) -> Hop:
    headers = record.get("headers")
    headers = headers if isinstance(headers, dict) else {}
    received_at = record.get("received_at")
    return Hop(
        float(received_at) if isinstance(received_at, int | float) else time.time(),
        "relay → APNs",
        f"accepted: apns-push-type {headers.get('apns-push-type')}, "
        f"apns-id {headers.get('apns-id')}",
    )


# ---- what the seed says each step must look like ----


def seed_placeholders(ends: FlowEnds, service_id: str, date: str) -> dict[str, str]:
    """$(...) values for one service; $(Date) is taken from the answer, then checked on its own."""
    context = DialogContext(ends.ext_url_base, service_id, ends.gms_user, datetime.now(UTC))
    return {**context.placeholder_values(), "Date": date}


def expected_dialog(
    template: JsonObject, ends: FlowEnds, service_id: str, answer: JsonValue
) -> JsonValue:
    date = answer.get("_expires") if isinstance(answer, dict) else None
    return fill_placeholders(
        template, seed_placeholders(ends, service_id, date if isinstance(date, str) else "")
    )


def _parsed(body: bytes) -> JsonValue:
    try:
        parsed: JsonValue = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")
    return parsed


def _check_expiry(report: DemoReport, answer: JsonValue) -> None:
    expires = answer.get("_expires") if isinstance(answer, dict) else None
    try:
        moment = datetime.strptime(str(expires), SEED_TIMESTAMP).replace(tzinfo=UTC)
    except ValueError:
        report.check("menu _expires is a YYYY-MM-DDTHH:MM:SSZ time", False, repr(expires))
        return
    report.check(
        "menu _expires is a YYYY-MM-DDTHH:MM:SSZ time still ahead",
        moment.timestamp() > time.time() - 1,
        repr(expires),
    )


def check_callback_push(
    ends: FlowEnds,
    report: DemoReport,
    service_id: str,
    action: str,
    followed: FollowedPush,
    *,
    template: JsonObject,
) -> None:
    """The alert, the POST URL and GMS's dialog of one callback push, as the seed says."""
    answer = followed.answer
    report.check(
        "relay queued the push (200, pushed)",
        isinstance(answer, dict) and answer.get("pushed") is True,
        repr(answer),
    )
    alerts = entries_of(followed.entries, AlertShown)
    expected = ends.relay_app.alert_template(action).render({"_id": service_id, "_action": action})
    shown = [(a.title, a.body, a.service_id, a.action) for a in alerts]
    report.check(
        f"phone showed the {action} alert with its _id/_action",
        shown == [(expected.title, expected.body, service_id, action)],
        repr(shown),
    )
    posts = [post.url for post in entries_of(followed.entries, UrlPosted)]
    seed_url = dialog_url(ends.gms.base_url, ends.gms.simulator.url_path, service_id, action)
    report.check(
        "app POSTed $(ServerURL)$(URLPath)$(_id)/$(_action)",
        posts[:1] == [seed_url],
        f"{posts[:1]} != {seed_url}",
    )
    first = followed.answers[:1]
    body = _parsed(first[0][2]) if first else None
    wanted = expected_dialog(template, ends, service_id, body)
    report.check(
        f"dialog is the seed's {action} JSON",
        first[:1] != [] and first[0][1] == 200 and body == wanted,
        f"got {body!r}",
    )
    if isinstance(template.get("_expires"), str):
        _check_expiry(report, body)


# ---- the scenarios ----


async def callback_user_confirmation(ends: FlowEnds, report: DemoReport) -> None:
    """wait-for-agent, both user-confirmation menus (the user taps Yes, then No), then connect."""
    service = ends.gms.simulator.create_service("callback", gms_user=ends.gms_user)
    report.section(f"callback-user-confirmation: GMS service {service.service_id}")
    for action, choice in CALLBACK_STEPS:
        ends.user.next_choice = choice
        followed = await push_and_follow(ends, report, callback_message(service.service_id, action))
        check_callback_push(
            ends, report, service.service_id, action, followed, template=SEED_DIALOGS[action]
        )
        check_menu_choice(ends, report, service.service_id, action, choice, followed)


def seed_menu_item_url(action: str, label: str) -> str | None:
    """The `_user_action_url` template of the seed menu item labelled `label` in `action`'s menu."""
    groups = SEED_DIALOGS[action].get("_content")
    for group in groups if isinstance(groups, list) else []:
        items = group.get("_group_content") if isinstance(group, dict) else None
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict) and item.get("_label") == label:
                url = item.get("_user_action_url")
                return url if isinstance(url, str) else None
    return None


def check_menu_choice(
    ends: FlowEnds,
    report: DemoReport,
    service_id: str,
    action: str,
    choice: str | None,
    followed: FollowedPush,
) -> None:
    """What the user's tap led to: the item's URL POSTed and the dialog GMS answered it with."""
    choices = [(entry.label, entry.url) for entry in entries_of(followed.entries, MenuChoice)]
    follow_ups = followed.answers[1:]
    if choice is None:
        report.check("no menu, no further POST", not choices and not follow_ups, repr(choices))
        return
    template = seed_menu_item_url(action, choice)
    url = (
        ""
        if template is None
        else str(fill_placeholders(template, seed_placeholders(ends, service_id, "")))
    )
    report.check(
        f"user chose {choice!r}; the app POSTed its _user_action_url",
        choices == [(choice, url)] and [posted for posted, _, _ in follow_ups] == [url],
        f"choices {choices}, then POSTs {[posted for posted, _, _ in follow_ups]}",
    )
    target = url.rpartition("/")[2]
    if target not in MENU_TARGET_DIALOGS or not follow_ups:
        return
    _, status, body = follow_ups[0]
    answer = _parsed(body)
    wanted = expected_dialog(MENU_TARGET_DIALOGS[target], ends, service_id, answer)
    report.check(
        f"{target} answered with its dialog",
        status == 200 and answer == wanted,
        f"{status} {answer!r}",
    )


async def chat_delayed(ends: FlowEnds, report: DemoReport) -> None:
    """The agent is free: the app is told to open the chat, and it starts it at GMS."""
    service = ends.gms.simulator.create_service("chat", gms_user=ends.gms_user)
    report.section(f"chat-delayed: GMS service {service.service_id}")
    action = "get-dialog-start-chat"
    followed = await push_and_follow(ends, report, callback_message(service.service_id, action))
    check_callback_push(
        ends, report, service.service_id, action, followed, template=SEED_DIALOGS[action]
    )
    start_url = f"{ends.ext_url_base}/1/service/{service.service_id}/ixn/chat"
    opened = entries_of(followed.entries, ChatOpened)
    report.check(
        "app started the chat at the dialog's _start_chat_url",
        [entry.url for entry in opened] == [start_url]
        and opened[0].answer.get("_id") == service.service_id
        and bool(opened[0].answer.get("chatId")),
        repr(opened),
    )


def _chat_event_text(event: JsonObject) -> str:
    data = event.get("data")
    message = data.get("message") if isinstance(data, dict) else None
    if not isinstance(message, dict):
        return "chat event"
    lines = message.get("transcriptToShow")
    line = json.dumps(lines[0]) if isinstance(lines, list) and lines else "DISCONNECTED"
    return f"chat event {message.get('transcriptPosition')} {line}"


def expected_chat_alerts(
    relay_app: App, script: Sequence[TranscriptLine | None]
) -> list[tuple[int, str | None, str | None]]:
    """(position, title, body) the phone must show for a chat script: nothing for the client's
    own lines, nothing for typing unless the app wants typing pushes (then a silent one)."""
    shown: list[tuple[int, str | None, str | None]] = []
    for position, line in enumerate(script, start=2):
        if line is None:
            shown.append((position, None, "Chat ended"))
        elif line.party == "CLIENT":
            continue
        elif line.kind.startswith("Notice.Typing"):
            if relay_app.chat.typing != "none":
                shown.append((position, None, None))
        elif line.kind == "Message.Text":
            shown.append((position, line.nick, line.text))
        else:
            verb = "joined" if line.kind == "Notice.Joined" else "left"
            shown.append((position, None, f"{line.nick} has {verb} the session"))
    return shown


def chat_alerts(entries: Sequence[TranscriptEntry]) -> list[tuple[int, str | None, str | None]]:
    """(position, title, body) of the chat pushes among the phone's transcript entries."""
    return [
        (int(str(alert.message_fields.get("transcriptPosition"))), alert.title, alert.body)
        for alert in entries_of(entries, AlertShown)
        if alert.action == CHAT_ACTION
    ]


async def chat_session(ends: FlowEnds, report: DemoReport) -> None:
    """A short chat as Chat Server events through customhttp, one of them sent twice."""
    service = ends.gms.simulator.create_service("chat", gms_user=ends.gms_user)
    session_id = new_chat_session_id()
    report.section(f"chat-session: GMS service {service.service_id}, chat {session_id}")
    events = chat_session_events(service.service_id, session_id, datetime.now(UTC))
    replay = events[REPLAYED_POSITION - 2]
    transcript_mark, pushes_mark = len(ends.phone.transcript), len(ends.phone.pushes)
    hops: list[Hop] = []
    answers: list[JsonValue] = []
    for event in [*events, replay]:
        pushed_at = time.time()
        sent = await ends.pusher.push(ends.device_id, event)
        answers.append(sent.answer)
        hops.append(
            Hop(
                pushed_at,
                "GMS → relay",
                f"{_chat_event_text(event)} → {relay_answer_text(sent.answer)}",
            )
        )
    expected = expected_chat_alerts(ends.relay_app, CHAT_SESSION_SCRIPT)
    try:
        await ends.phone.wait_for_pushes(ends.app.pushes_received + len(expected), STEP_TIMEOUT_S)
        late = await ends.phone.poll_once()  # a duplicate would follow the last line at once
    finally:
        entries = ends.phone.transcript[transcript_mark:]
        hops += [_apns_hop(record) for record in ends.phone.pushes[pushes_mark:]]
        report.add_hops([*hops, *(transcript_hop(entry) for entry in entries)])
    client_answers = [
        answer
        for line, answer in zip(CHAT_SESSION_SCRIPT, answers, strict=False)
        if line is not None and line.party == "CLIENT"
    ]
    report.check(
        "nothing pushed for the client's own line",
        client_answers == [{"id": None, "pushed": False}],
        repr(client_answers),
    )
    first, again = answers[REPLAYED_POSITION - 2], answers[-1]
    report.check(
        f"the repeated position {REPLAYED_POSITION} was recognised, not queued again",
        isinstance(first, dict)
        and isinstance(again, dict)
        and again.get("duplicate") is True
        and again.get("id") == first.get("id"),
        f"{first} then {again}",
    )
    shown = chat_alerts(entries)
    report.check(
        "chat alerts arrived in position order, each once",
        shown == expected and late == 0,
        f"{shown} (+{late} more), expected {expected}",
    )
    report.check(
        "chat pushes were shown, not POSTed to GMS",
        not entries_of(entries, UrlPosted),
        repr(entries_of(entries, UrlPosted)),
    )


Scenario = Callable[[FlowEnds, DemoReport], Awaitable[None]]

DEMO_SCENARIOS: Mapping[str, Scenario] = {
    "callback-user-confirmation": callback_user_confirmation,
    "chat-delayed": chat_delayed,
    "chat-session": chat_session,
}


# ---- the whole stack in this process ----


def demo_settings(redis_url: str, simulator: SimInfo, basic: str) -> Settings:
    app = simulator_app(simulator).model_dump(mode="json")
    return Settings.model_validate(
        {
            "redis": {"url": redis_url},
            "auth": {"basic": [basic]},
            "retry": {"base_ms": 20, "cap_ms": 500},
            "delivery": {"request_timeout_seconds": 2.0},
            "apps": [app],
        }
    )


@contextlib.asynccontextmanager
async def relay_in_loop(settings: Settings) -> AsyncIterator[str]:
    """The relay's api and worker in this event loop; yields the api's URL."""
    async with run_relay(settings, grace_s=2.0) as relay:
        yield relay.url


async def run_demo(scenarios: Sequence[str], state_dir: Path, out: TextIO | None) -> DemoReport:
    """Start everything, run `scenarios` in turn and return the transcript with its checks."""
    report = DemoReport(out=out)
    password = secrets.token_urlsafe(12)
    with EmbeddedServer(data_dir=state_dir / "valkey") as valkey:
        async with Simulator(SimulatorOptions(state_dir=state_dir / "apns-sim")) as simulator:
            info = SimInfo.from_document(simulator.info)
            settings = demo_settings(valkey.url, info, f"{GMS_BASIC_USER}:{password}")
            async with (
                relay_in_loop(settings) as relay_url,
                GmsSimServer(GmsSimulator()) as gms,
                aiohttp.ClientSession() as session,
            ):
                relay_app = settings.apps[0]
                token = await register_device(
                    session, info.control_url, relay_app.topic, relay_app.environment
                )
                ends = flow_ends(
                    session,
                    relay_url=relay_url,
                    authorization=basic_authorization(GMS_BASIC_USER, password),
                    control_url=info.control_url,
                    relay_app=relay_app,
                    gms=gms,
                    token=token,
                )
                report.note("apns-relay demo: the GMS flow end to end, times since the start")
                report.note(f"Valkey (embedded)  {valkey.url}")
                report.note(
                    f"APNs simulator     https://{info.host}:{info.port_of(relay_app.environment)}"
                    f" ({relay_app.environment})"
                )
                report.note(f"relay              {relay_url}  (GMS pushes to /gms/push)")
                report.note(f"GMS simulator      {gms.base_url}{gms.simulator.url_path}")
                report.note(f"phone              device token {token[:16]}... (registered)")
                for name in scenarios:
                    try:
                        await DEMO_SCENARIOS[name](ends, report)
                    except (TimeoutError, aiohttp.ClientError, RuntimeError) as error:
                        report.check(f"{name} ran to its end", False, str(error))
    return report


# ---- command line ----


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scenario",
        action="append",
        choices=sorted(DEMO_SCENARIOS),
        help="run only this scenario (repeatable; default: all three)",
    )
    parser.add_argument(
        "--state-dir",
        help="keep Valkey's and the simulator's files here (default: a temporary dir)",
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
        report = asyncio.run(run_demo(scenarios, state_dir.resolve(), sys.stdout))
    failures = report.failures
    print(
        f"\n{len(report.checks) - len(failures)} of {len(report.checks)} checks passed"
        f" over {len(report.hops)} hops: "
        + ("every step happened as the seed says" if not failures else "FAILED"),
        flush=True,
    )
    for failure in failures:
        print(f"  FAIL {failure.name}: {failure.detail}", file=sys.stderr)
    return 0 if not failures else 1
