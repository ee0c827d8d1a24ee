"""The Live Activity scenario: a callback shown on the phone's Lock Screen, started by
push-to-start, ended by the connect push, dismissed at its dismissal-date."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp

from relay_devkit.demo.callbacks import new_callback
from relay_devkit.demo.flow import STEP_TIMEOUT_S, FlowEnds, follow, has
from relay_devkit.demo.report import DemoReport
from relay_devkit.device_sim.activities import ActivityShown, ActivityWatcher, LiveActivities
from relay_devkit.device_sim.app import (
    AlertShown,
    entries_of,
)
from relay_devkit.device_sim.phone import register_device
from relay_devkit.gms_sim.callback import CallbackOptions


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
        service, _, started = await new_callback(
            ends, report, "callback-live-activity", options, has(ActivityShown)
        )
        # The connect alert and the activity's end go to two tokens, each in its own order:
        # either may be shown first, so both are waited for.
        ended = await follow(
            ends,
            report,
            lambda: ends.simulator.agent_available(service.service_id),
            lambda t: (
                any(a.change == "ended" for a in entries_of(t, ActivityShown))
                and any(a.action == options.connect_action for a in entries_of(t, AlertShown))
            ),
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
