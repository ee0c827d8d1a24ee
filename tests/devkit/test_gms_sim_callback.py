"""The GMS simulator's callback state machine, input by input (no I/O, no clock)."""

from __future__ import annotations

import pytest
from seed_actions import CONFIRM

from relay_devkit.gms_sim.callback import (
    DEFAULT_MAX_CONFIRMATION_ATTEMPTS,
    DEFAULT_SNOOZE_DELAY_S,
    DEFAULT_USER_CONFIRM_TIMEOUT_S,
    Answer,
    Callback,
    CallbackOptions,
    CallbackState,
    agent_available,
    request,
    start,
    timer,
)

S = CallbackState
OPTIONS = CallbackOptions()
FALSE_MENU = CONFIRM
T0 = 1_000.0


def confirming(attempts: int = 1, deadline: float = T0 + 30) -> Callback:
    return Callback(OPTIONS, S.CONFIRMING, attempts, deadline)


def test_gms_defaults_are_the_documented_ones() -> None:
    assert DEFAULT_USER_CONFIRM_TIMEOUT_S == 30.0
    assert DEFAULT_MAX_CONFIRMATION_ATTEMPTS == 3
    assert DEFAULT_SNOOZE_DELAY_S == 300.0  # the seed's "try again in 5 minutes"


@pytest.mark.parametrize(
    ("options", "state", "pushes"),
    [
        (CallbackOptions(), S.WAITING_FOR_AGENT, ("wait-for-agent",)),
        (CallbackOptions(wait_for_agent=False), S.CONFIRMING, (FALSE_MENU,)),
        (
            CallbackOptions(wait_for_agent=False, provide_code=True),
            S.CONFIRMING,
            ("get-dialog-user-confirmation-provide_code-true",),
        ),
        (
            CallbackOptions(wait_for_agent=False, wait_for_user_confirm=False),
            S.CONNECTED,
            ("connect-outbound",),
        ),
        (
            CallbackOptions(
                wait_for_agent=False, wait_for_user_confirm=False, connect_mode="inbound"
            ),
            S.CONNECTED,
            ("connect-inbound",),
        ),
    ],
)
def test_start(options: CallbackOptions, state: CallbackState, pushes: tuple[str, ...]) -> None:
    step = start(options, T0)
    assert (step.callback.state, step.pushes, step.answer) == (state, pushes, None)


def test_agent_available_asks_for_confirmation_with_a_deadline() -> None:
    step = agent_available(Callback(OPTIONS), T0)
    assert step.callback == confirming(1, T0 + 30)
    assert step.pushes == (FALSE_MENU,)
    # Only a waiting callback is asked: an agent freed again changes nothing.
    for callback in (confirming(), Callback(OPTIONS, S.SNOOZED, 1, T0 + 300)):
        assert agent_available(callback, T0) == agent_available(callback, T0)
        assert agent_available(callback, T0).pushes == ()
        assert agent_available(callback, T0).callback == callback


# (callback, POSTed target, _dialog_id, at) -> (state after, answer status, dialog, attempts)
REQUESTS = [
    # The open menu, pushed action or _resource_url, until its deadline.
    (confirming(), FALSE_MENU, None, T0 + 29, S.CONFIRMING, 200, FALSE_MENU, 1),
    (
        confirming(),
        "get-dialog-user-confirmation",
        None,
        T0,
        S.CONFIRMING,
        200,
        FALSE_MENU,
        1,
    ),
    # A confirmation POSTed after its timeout is useless.
    (confirming(), FALSE_MENU, None, T0 + 30, S.WAITING_FOR_AGENT, 410, None, 1),
    (confirming(), "connect", "1", T0 + 31, S.WAITING_FOR_AGENT, 410, None, 1),
    (confirming(3), FALSE_MENU, None, T0 + 31, S.GAVE_UP, 410, None, 3),
    # Yes / No / Cancel in time.
    (confirming(), "connect", "1", T0 + 1, S.CONNECTED, 200, "connect-outbound", 1),
    (confirming(), "snooze", "2", T0 + 1, S.SNOOZED, 200, "snooze", 1),
    (confirming(), "snooze", "3", T0 + 1, S.CANCELLED, 200, "cancel", 1),
    (confirming(3), "snooze", "2", T0 + 1, S.GAVE_UP, 200, "gave-up", 3),
    # Nothing to confirm: answered, state unchanged.
    (Callback(OPTIONS), "connect", "1", T0, S.WAITING_FOR_AGENT, 410, None, 0),
    (Callback(OPTIONS, S.CONNECTED, 1), "snooze", "2", T0, S.CONNECTED, 410, None, 1),
    # The seed's other dialogs are shown in any state.
    (
        Callback(OPTIONS, S.CANCELLED, 1),
        "wait-for-agent",
        None,
        T0,
        S.CANCELLED,
        200,
        "wait-for-agent",
        1,
    ),
]


@pytest.mark.parametrize(
    ("callback", "target", "dialog_id", "at", "state", "status", "dialog", "attempts"), REQUESTS
)
def test_request(
    callback: Callback,
    target: str,
    dialog_id: str | None,
    at: float,
    state: CallbackState,
    status: int,
    dialog: str | None,
    attempts: int,
) -> None:
    step = request(callback, target, dialog_id, at)
    assert step.answer is not None
    assert (step.callback.state, step.answer.status, step.answer.dialog) == (state, status, dialog)
    assert step.callback.attempts == attempts
    assert step.pushes == ()
    if status == 410:
        assert "no confirmation is open" in step.answer.detail


def test_the_menu_answer_carries_the_deadline_as_its_expiry() -> None:
    step = request(confirming(deadline=T0 + 30), FALSE_MENU, None, T0)
    assert step.answer == Answer(200, FALSE_MENU, expires_at=T0 + 30)


def test_snooze_re_offers_the_agent_only_after_its_delay() -> None:
    snoozed = request(confirming(), "snooze", "2", T0 + 5).callback
    assert (snoozed.state, snoozed.deadline) == (S.SNOOZED, T0 + 5 + 300)
    assert timer(snoozed, T0 + 304) == timer(snoozed, T0 + 304)
    assert timer(snoozed, T0 + 304).callback == snoozed  # not yet
    again = timer(snoozed, T0 + 305)
    assert again.pushes == (FALSE_MENU,)
    assert again.callback == confirming(2, T0 + 305 + 30)


def test_a_timed_out_confirmation_uses_an_attempt_until_none_is_left() -> None:
    callback = Callback(OPTIONS)
    now = T0
    for attempt in range(1, 4):
        step = agent_available(callback, now)
        assert step.pushes == (FALSE_MENU,)
        assert step.callback.attempts == attempt
        now += 30
        callback = timer(step.callback, now).callback
    assert callback.state is S.GAVE_UP
    assert callback.deadline is None
    assert agent_available(callback, now).pushes == ()


def test_timers_without_a_deadline_change_nothing() -> None:
    for callback in (Callback(OPTIONS), Callback(OPTIONS, S.CONNECTED, 1)):
        assert timer(callback, T0 + 10_000).callback == callback


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"user_confirm_timeout_s": 0}, "user_confirm_timeout_s"),
        ({"snooze_delay_s": -1}, "snooze_delay_s"),
        ({"max_confirmation_attempts": 0}, "max_confirmation_attempts"),
        ({"connect_mode": "sideways"}, "connect_mode"),
    ],
)
def test_options_are_checked(options: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        # Values of the wrong kind on purpose: the options check them at run time.
        CallbackOptions(**options)  # type: ignore[arg-type]
