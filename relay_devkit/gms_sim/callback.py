"""A GMS callback as a pure state machine: agent availability, the user's confirmation, timers.

What is from GMS's documentation (Genesys Callback Services API, docs.genesys.com): the options
`_wait_for_agent`, `_wait_for_user_confirm` (push asking the customer to confirm readiness),
`_user_confirm_timeout` (default 30 s), `_max_number_of_user_availability_confirmation_attempts`
(default 3); so a confirmation push arriving after its timeout is useless (GMS has moved on).
From the seed: the actions pushed (wait-for-agent, get-dialog-user-confirmation-provide_code-true/
false, connect-inbound/outbound),
the menu's items and their URLs (`connect`, `snooze`, and `snooze` again for "Cancel, my problem
has been solved"), "No, try again in 5 minutes".

Inferred (no public source shows it), each marked where it is decided below:
- a new callback that waits for an agent pushes wait-for-agent first;
- the menu's "Cancel" item POSTs `snooze` like "No" (the seed's URL); GMS tells them apart by the
  chosen item's `_dialog_id`, which the app sends in the POST's form body;
- an unanswered confirmation, a snooze and a timed-out one each use up one attempt; when none is
  left the callback ends;
- after a timeout or a snooze the callback waits for the agent again; a snooze's delay (the
  seed's "5 minutes", an option here) re-offers the agent once it has passed;
- a POST for a confirmation that is no longer open is answered 410 Gone.

No I/O and no clock: every input carries `now` (epoch seconds); the server is a thin shell that
feeds requests and timers in and sends the pushes that come out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

DEFAULT_USER_CONFIRM_TIMEOUT_S = 30.0  # GMS's _user_confirm_timeout default
DEFAULT_MAX_CONFIRMATION_ATTEMPTS = 3  # _max_number_of_user_availability_confirmation_attempts
DEFAULT_SNOOZE_DELAY_S = 300.0  # the seed's "No, try again in 5 minutes"
CANCEL_DIALOG_ID = "3"  # the seed's "Cancel, my problem has been solved"
CONFIRMATION_ACTION_PREFIX = "get-dialog-user-confirmation"


class CallbackState(StrEnum):
    WAITING_FOR_AGENT = "waiting for agent"
    CONFIRMING = "asking the user to confirm"
    SNOOZED = "snoozed"
    CONNECTED = "connected"
    CANCELLED = "cancelled by the user"
    GAVE_UP = "no confirmation after every attempt"

    @property
    def ended(self) -> bool:
        return self in (CallbackState.CONNECTED, CallbackState.CANCELLED, CallbackState.GAVE_UP)


@dataclass(frozen=True, slots=True)
class CallbackOptions:
    """The GMS callback service options that drive its pushes (names as GMS spells them)."""

    wait_for_agent: bool = True  # _wait_for_agent
    wait_for_user_confirm: bool = True  # _wait_for_user_confirm
    user_confirm_timeout_s: float = DEFAULT_USER_CONFIRM_TIMEOUT_S  # _user_confirm_timeout
    # _max_number_of_user_availability_confirmation_attempts
    max_confirmation_attempts: int = DEFAULT_MAX_CONFIRMATION_ATTEMPTS
    snooze_delay_s: float = DEFAULT_SNOOZE_DELAY_S
    provide_code: bool = False  # which of the seed's two confirmation menus is pushed
    connect_mode: str = "outbound"  # connect-outbound (GMS calls) or connect-inbound (user dials)

    def __post_init__(self) -> None:
        if self.user_confirm_timeout_s <= 0 or self.snooze_delay_s < 0:
            raise ValueError("user_confirm_timeout_s must be > 0 and snooze_delay_s >= 0")
        if self.max_confirmation_attempts < 1:
            raise ValueError("max_confirmation_attempts must be at least 1")
        if self.connect_mode not in ("outbound", "inbound"):
            raise ValueError(f"connect_mode: {self.connect_mode!r} is not outbound or inbound")

    @property
    def confirmation_action(self) -> str:
        flag = "true" if self.provide_code else "false"
        return f"{CONFIRMATION_ACTION_PREFIX}-provide_code-{flag}"

    @property
    def connect_action(self) -> str:
        return f"connect-{self.connect_mode}"


@dataclass(frozen=True, slots=True)
class Callback:
    """One callback's state. `deadline` is when the open confirmation expires (CONFIRMING) or
    when the snooze is over (SNOOZED); None otherwise."""

    options: CallbackOptions
    state: CallbackState = CallbackState.WAITING_FOR_AGENT
    attempts: int = 0  # confirmations asked so far
    deadline: float | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """What GMS answers the app's POST: a named dialog (see dialogs.py) or a refusal."""

    status: int
    dialog: str | None  # a seed action, "snooze", "cancel", "gave-up", or None (a refusal)
    detail: str = ""
    expires_at: float | None = None  # the confirmation menu's $(Date)


@dataclass(frozen=True, slots=True)
class Step:
    """The callback after an input, the actions to push to the phone, and the answer (if the
    input was a request)."""

    callback: Callback
    pushes: tuple[str, ...] = ()
    answer: Answer | None = None


def start(options: CallbackOptions, now: float) -> Step:
    """A new callback. Inferred: one that waits for an agent tells the user so first."""
    callback = Callback(options)
    if options.wait_for_agent:
        return Step(callback, ("wait-for-agent",))
    return agent_available(callback, now)


def agent_available(callback: Callback, now: float) -> Step:
    """An agent is free for this callback: ask the user to confirm, or connect at once."""
    if callback.state is not CallbackState.WAITING_FOR_AGENT:
        return Step(callback)  # already asked, snoozed or ended: nothing new to tell the user
    options = callback.options
    if not options.wait_for_user_confirm:
        return Step(replace(callback, state=CallbackState.CONNECTED), (options.connect_action,))
    asked = replace(
        callback,
        state=CallbackState.CONFIRMING,
        attempts=callback.attempts + 1,
        deadline=now + options.user_confirm_timeout_s,
    )
    return Step(asked, (options.confirmation_action,))


def _attempt_used(callback: Callback, state: CallbackState, deadline: float | None) -> Callback:
    """After a timeout or a snooze: wait again, or give up when no attempt is left (inferred)."""
    if callback.attempts >= callback.options.max_confirmation_attempts:
        return replace(callback, state=CallbackState.GAVE_UP, deadline=None)
    return replace(callback, state=state, deadline=deadline)


def timer(callback: Callback, now: float) -> Step:
    """Time has passed: a confirmation expires, a snooze ends (and the agent is offered again)."""
    if callback.deadline is None or now < callback.deadline:
        return Step(callback)
    if callback.state is CallbackState.CONFIRMING:
        return Step(_attempt_used(callback, CallbackState.WAITING_FOR_AGENT, None))
    if callback.state is CallbackState.SNOOZED:
        waiting = replace(callback, state=CallbackState.WAITING_FOR_AGENT, deadline=None)
        return agent_available(waiting, now)
    return Step(callback)


def _confirmation_open(callback: Callback, now: float) -> bool:
    return (
        callback.state is CallbackState.CONFIRMING
        and callback.deadline is not None
        and now < callback.deadline
    )


def _gone(callback: Callback) -> Answer:
    return Answer(410, None, f"no confirmation is open: the callback is {callback.state.value}")


def request(callback: Callback, target: str, dialog_id: str | None, now: float) -> Step:
    """The app POSTs `target` (the URL's last part after the service id) at `now`."""
    callback = timer(callback, now).callback  # a deadline may have passed since the last tick
    if target.startswith(CONFIRMATION_ACTION_PREFIX):
        # The pushed action and the menu's _resource_url both show the open menu.
        if not _confirmation_open(callback, now):
            return Step(callback, answer=_gone(callback))
        menu = (
            target if target != CONFIRMATION_ACTION_PREFIX else callback.options.confirmation_action
        )
        return Step(callback, answer=Answer(200, menu, expires_at=callback.deadline))
    if target in ("connect", "snooze"):
        if not _confirmation_open(callback, now):
            return Step(callback, answer=_gone(callback))
        if target == "connect":
            connected = replace(callback, state=CallbackState.CONNECTED, deadline=None)
            return Step(connected, answer=Answer(200, callback.options.connect_action))
        if dialog_id == CANCEL_DIALOG_ID:
            cancelled = replace(callback, state=CallbackState.CANCELLED, deadline=None)
            return Step(cancelled, answer=Answer(200, "cancel"))
        snoozed = _attempt_used(
            callback, CallbackState.SNOOZED, now + callback.options.snooze_delay_s
        )
        dialog = "snooze" if snoozed.state is CallbackState.SNOOZED else "gave-up"
        return Step(snoozed, answer=Answer(200, dialog))
    # The seed's other dialogs (wait-for-agent, connect-*) are shown whatever the state.
    return Step(callback, answer=Answer(200, target))
