"""The phone's Live Activities: each activity's state as ActivityKit keeps it (pure), and the
shell that feeds it the liveactivity pushes the APNs simulator accepted for the phone's tokens.

As iOS behaves: a push-to-start push starts an activity, which then gets its own update token
(the app hands it to its server: `on_started`); an update or end whose timestamp is not newer
than the one shown is ignored; an ended activity stays on the Lock Screen until its
dismissal-date (Apple's default without one: four hours), then it is dismissed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

import aiohttp

DEFAULT_DISMISS_AFTER_S = 4 * 3600

Change: TypeAlias = Literal["started", "updated", "ended", "dismissed", "ignored"]


@dataclass(frozen=True, slots=True)
class ActivityShown:
    """What happened to a Live Activity on the Lock Screen (a transcript entry)."""

    at: float
    change: Change
    service_id: str
    stage: str | None = None
    label: str | None = None
    detail: str = ""


@dataclass
class ActivityView:
    service_id: str
    stage: str | None
    label: str | None
    timestamp: int
    ended: bool = False
    dismiss_at: float | None = None


def _text(state: Mapping[str, object], key: str) -> str | None:
    value = state.get(key)
    return value if isinstance(value, str) else None


@dataclass
class LiveActivities:
    """Every activity the phone shows, by service id, and which token updates which."""

    push_to_start_token: str | None = None
    update_tokens: dict[str, str] = field(default_factory=dict)  # token -> service id
    views: dict[str, ActivityView] = field(default_factory=dict)

    @property
    def tokens(self) -> set[str]:
        return set(self.update_tokens) | (
            {self.push_to_start_token} if self.push_to_start_token else set()
        )

    def track(self, token: str, service_id: str) -> None:
        """An activity's update token, as ActivityKit's pushTokenUpdates gives it to the app."""
        self.update_tokens[token] = service_id

    def receive(self, token: str, payload: Mapping[str, object], at: float) -> ActivityShown:
        aps = payload.get("aps")
        if not isinstance(aps, dict):
            raise ValueError(f"liveactivity push without aps: {payload!r}")
        state = aps.get("content-state")
        state = state if isinstance(state, dict) else {}
        stamp = aps["timestamp"]
        if aps["event"] == "start" and token == self.push_to_start_token:
            attributes = aps["attributes"]
            service_id = str(attributes.get("service_id"))
            started = ActivityView(service_id, _text(state, "stage"), _text(state, "label"), stamp)
            self.views[service_id] = started
            return ActivityShown(at, "started", service_id, started.stage, started.label)
        tracked = self.update_tokens.get(token)
        view = None if tracked is None else self.views.get(tracked)
        if tracked is None or view is None:
            return ActivityShown(at, "ignored", tracked or "?", detail="no such activity")
        service_id = tracked
        if view.ended or stamp <= view.timestamp:
            why = "already ended" if view.ended else f"timestamp {stamp} <= {view.timestamp}"
            return ActivityShown(at, "ignored", service_id, view.stage, view.label, why)
        view.timestamp = stamp
        view.stage, view.label = _text(state, "stage") or view.stage, _text(state, "label")
        if aps["event"] == "end":
            view.ended = True
            dismissal = aps.get("dismissal-date")
            view.dismiss_at = (
                float(dismissal) if isinstance(dismissal, int) else at + DEFAULT_DISMISS_AFTER_S
            )
            return ActivityShown(at, "ended", service_id, view.stage, view.label)
        return ActivityShown(at, "updated", service_id, view.stage, view.label)

    def start_locally(self, token: str, service_id: str, at: float) -> ActivityShown:
        """The app started the activity itself (Activity.request) when the customer asked for a
        callback, and got `token` to update it."""
        self.views[service_id] = ActivityView(service_id, None, None, 0)
        self.track(token, service_id)
        return ActivityShown(at, "started", service_id, detail="by the app")

    def tick(self, at: float) -> list[ActivityShown]:
        """Ended activities whose dismissal-date has come: off the Lock Screen."""
        gone = [
            view
            for view in self.views.values()
            if view.dismiss_at is not None and view.dismiss_at <= at
        ]
        for view in gone:
            del self.views[view.service_id]
        return [ActivityShown(at, "dismissed", v.service_id, v.stage, v.label) for v in gone]


@dataclass
class ActivityWatcher:
    """Feeds LiveActivities the simulator's accepted liveactivity pushes for its tokens."""

    session: aiohttp.ClientSession
    control_url: str
    activities: LiveActivities
    # A started activity's new update token, registered with the relay by the app: given the
    # service id, returns the token to watch.
    on_started: Callable[[str], Awaitable[str]] | None = None
    last_seq: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)  # the pushes it acted on

    async def poll_once(self, at: float) -> list[ActivityShown]:
        async with self.session.get(
            self.control_url.rstrip("/") + "/notifications",
            params={"since": str(self.last_seq)},
            timeout=aiohttp.ClientTimeout(total=5),
        ) as response:
            response.raise_for_status()
            listing = await response.json()
        shown: list[ActivityShown] = []
        for record in listing["notifications"]:
            self.last_seq = max(self.last_seq, int(record["seq"]))
            token = record["token"]
            if record["headers"].get("apns-push-type") != "liveactivity":
                continue
            if token not in self.activities.tokens:
                continue
            self.records.append(record)
            entry = self.activities.receive(token, record["payload"], at)
            shown.append(entry)
            if entry.change == "started" and self.on_started is not None:
                self.activities.track(await self.on_started(entry.service_id), entry.service_id)
        return shown + self.activities.tick(at)
