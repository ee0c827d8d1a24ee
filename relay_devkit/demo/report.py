"""The demo's transcript: every hop printed as it happens, every check labelled with what it
holds the flow to."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TextIO

from relay_devkit.device_sim.activities import ActivityShown
from relay_devkit.device_sim.app import (
    AlertShown,
    AppState,
    ChatEnded,
    ChatLineShown,
    ChatOpened,
    ConfirmationShown,
    DialogShown,
    DialRecorded,
    FlowClosed,
    GmsFailure,
    MenuChoice,
    MenuChoiceRefused,
    MenuDismissed,
    PushNotPosted,
    TranscriptEntry,
    UrlPosted,
    UserReacted,
)
from relay_devkit.device_sim.dialogs import (
    ConfirmationDialog,
    DialNumber,
    DisplayMenu,
    StartChat,
    UnknownDialog,
)

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
