"""What a demo scenario works with: the parties it drives (GMS, the relay, the phone), following
a step and printing what happened, and what the seed says each step must look like."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp

from relay.config.schema import App
from relay_devkit.demo.report import DemoReport, Hop, transcript_hop
from relay_devkit.device_sim.app import (
    AlertShown,
    AppSettings,
    DeviceApp,
    Effect,
    HttpRequest,
    TranscriptEntry,
    UrlPosted,
    entries_of,
)
from relay_devkit.device_sim.dialogs import dialog_url
from relay_devkit.device_sim.extension import ReceiptExtension, ReceiptSent
from relay_devkit.device_sim.phone import Phone, register_device
from relay_devkit.gms_sim.dialogs import (
    SEED_DIALOGS,
    DialogContext,
    JsonObject,
    JsonValue,
    fill_placeholders,
)
from relay_devkit.gms_sim.push import CustomHttpPusher
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


async def relay_get(ends: FlowEnds, path: str) -> tuple[int, str]:
    async with ends.phone.session.get(
        ends.relay_url + path,
        headers={"Authorization": ends.authorization},
        timeout=aiohttp.ClientTimeout(total=STEP_TIMEOUT_S),
    ) as response:
        return response.status, await response.text()
