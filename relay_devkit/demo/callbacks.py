"""The callback scenarios: confirm; snooze; cancel; a confirmation that times out, and one that
expires at the relay while APNs is down; connect-inbound's DialNumber."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import replace

from relay_devkit.demo.flow import (
    APNS_OUTAGE,
    CANCEL,
    EXPIRED_METRIC,
    LATE_S,
    NO,
    SHORT_CONFIRM_TIMEOUT_S,
    SNOOZE_DELAY_S,
    STEP_TIMEOUT_S,
    YES,
    FlowEnds,
    Marks,
    answer_to,
    check_menu_expiry,
    check_push_posted,
    check_seed_dialog,
    follow,
    has,
    is_notice,
    print_since,
    relay_get,
    seed_item_url,
    wait_for,
)
from relay_devkit.demo.report import DemoReport
from relay_devkit.device_sim.app import (
    AlertShown,
    AppState,
    ConfirmationShown,
    DialogShown,
    DialRecorded,
    FlowClosed,
    GmsFailure,
    MenuAnswer,
    MenuChoice,
    MenuChoiceRefused,
    MenuDismissed,
    PushAnswer,
    TranscriptEntry,
    UrlPosted,
    UserReacted,
    entries_of,
)
from relay_devkit.gms_sim.callback import CallbackOptions, CallbackState
from relay_devkit.gms_sim.server import Service

# ---- the callback scenarios ----


async def new_callback(
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
    service, marks, entries = await new_callback(
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
    service, marks, entries = await new_callback(
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
    service, marks, entries = await new_callback(
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
    service, _, entries = await new_callback(
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
    service, _, entries = await new_callback(
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


async def _expired_count(ends: FlowEnds) -> float:
    """The relay's expired counter for the app, from its /metrics."""
    _, text = await relay_get(ends, "/metrics")
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
            code, text = await relay_get(ends, f"/v1/notifications/{notification_id}")
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
