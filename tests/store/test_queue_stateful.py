"""The queue as a state machine against a model: enqueue (plain, superseding, chat lines by
transcript position), claim, settle, release and lease expiry in any order, on the real Valkey.

The model is what the queue's contract says (RelayQueue.enqueue, claim, settle, release), written
apart from the Lua: per device the pending ids in send order, each one's state, attempts and claim
number, whether it was possibly sent, when the device is due and until when it is leased. After
every step the store must agree with it, notification by notification and in its totals; every
claim must hand out exactly the model's heads.

Invariant 12, possibly sent keeps its place, is the model's own rule: a notification whose lease
ran out, whose attempt was settled, or that was released after its request went out may have
reached the phone, so nothing supersedes it and no chat line goes before it. The last test runs
this machine against deliberately broken scripts and expects it to fail."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from redis.exceptions import OutOfMemoryError

from relay.core.model import (
    FINAL_STATES,
    Delivered,
    DeliveryOutcome,
    DeliveryState,
    Failed,
    Notification,
    Retry,
)
from relay.store import queue as queue_module
from relay.store.queue import RelayQueue
from relay.store.records import LeasedNotification, QueueLimits
from relay.store.scripts import LUA_DIR, LuaScript, build_library

T0 = 1_700_000_000_000
APP = "com.example.chat"
DEVICES = ("a1" * 32, "b2" * 32, "c3" * 32)
# Roomy caps and a long time to live: refusals and expiry are test_queue_properties.py's, here
# every enqueue is accepted and every notification stays sendable for the whole run.
LIMITS = QueueLimits(shards=2, max_per_device=100, max_pending=10_000, lease_ms=1_000)
TTL_S = 3_600
GROUPS = ("chat-1", "chat-2")

Result = TypeVar("Result")


@dataclass
class Line:
    """One accepted notification as the model sees it."""

    id: str
    device: str
    service_id: str | None
    group: str | None
    position: int | None
    # The same group's lines that were still queued (never sent) when this one was accepted: the
    # only ones it may go out before.
    passable: frozenset[str]
    state: DeliveryState = DeliveryState.QUEUED
    attempts: int = 0
    claim_no: int = 0
    # It may have reached the phone: a settled attempt, a lease that ran out, a release after its
    # request went out. From then on it keeps its place (invariant 12).
    possibly_sent: bool = False

    @property
    def may_be_passed(self) -> bool:
        """Whether a newer notification may supersede it or a chat line go before it: only
        while it is waiting and was never possibly sent."""
        waiting = self.state not in FINAL_STATES and self.state is not DeliveryState.SENDING
        return waiting and not self.possibly_sent


@dataclass
class Model:
    now_ms: int = T0
    lines: dict[str, Line] = field(default_factory=dict)
    queues: dict[str, list[str]] = field(default_factory=lambda: {d: [] for d in DEVICES})
    due_ms: dict[str, int] = field(default_factory=dict)  # devices with a head, not leased
    leased_until: dict[str, int] = field(default_factory=dict)
    latest_by_service: dict[tuple[str, str], str] = field(default_factory=dict)
    delivered: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # by device, group
    retried: int = 0

    def unsent_state(self, line: Line) -> DeliveryState:
        return DeliveryState.RETRYING if line.possibly_sent else DeliveryState.QUEUED

    def rearm(self, device: str, due_ms: int) -> None:
        """The device's claim ended or its head changed: its head (if any) is due at `due_ms`."""
        self.leased_until.pop(device, None)
        self.due_ms.pop(device, None)
        if self.queues[device]:
            self.due_ms[device] = due_ms

    def finalise(self, line: Line, state: DeliveryState) -> None:
        line.state = state
        self.queues[line.device].remove(line.id)
        slot = (line.device, line.service_id or "")
        if self.latest_by_service.get(slot) == line.id:
            del self.latest_by_service[slot]

    def reap_run_out_leases(self) -> None:
        """What every claim does first: a lease past its deadline is given up, the head due now.
        The store cannot tell whether the vanished holder sent it, so it is possibly sent: it is
        retrying (attempts unchanged), never superseded, never passed by a chat line."""
        for device, until in list(self.leased_until.items()):
            if until <= self.now_ms:
                head = self.lines[self.queues[device][0]]
                head.possibly_sent = True
                head.state = self.unsent_state(head)
                self.rearm(device, self.now_ms)

    def stands(self, claim: LeasedNotification) -> bool:
        """Whether a claim's result still counts: no later claim or unsent end, still the head."""
        line = self.lines[claim.id]
        return (
            line.claim_no == claim.claim_no
            and line.state not in FINAL_STATES
            and self.queues[line.device][0] == line.id
        )

    def count(self, state: DeliveryState) -> int:
        return sum(line.state is state for line in self.lines.values())


class QueueMachine(RuleBasedStateMachine):
    def __init__(self, redis_url: str) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.redis = aioredis.Redis.from_url(redis_url)
        self.run(self.redis.flushall())
        self.queue = RelayQueue(self.redis, LIMITS)
        self.model = Model()
        self.held: list[LeasedNotification] = []  # claims handed out, not yet settled or released

    def run(self, awaitable: Awaitable[Result]) -> Result:
        return self.loop.run_until_complete(awaitable)

    def teardown(self) -> None:
        self.run(self.redis.aclose())
        self.loop.close()

    # ---- rules ----

    @rule(
        device=st.sampled_from(DEVICES),
        service_id=st.sampled_from([None, "s0", "s1"]),
        chat=st.none() | st.tuples(st.sampled_from(GROUPS), st.integers(0, 9)),
    )
    def enqueue(self, device: str, service_id: str | None, chat: tuple[str, int] | None) -> None:
        model = self.model
        group, position = chat or (None, None)
        notification = Notification(
            app=APP,
            device_token=device,
            payload=f'{{"aps":{{"alert":"{len(model.lines)}"}}}}'.encode(),
            push_type="alert",
            priority=10,
            expires_at=model.now_ms // 1000 + TTL_S,
            service_id=service_id,
            order_group=group,
            order=position,
        )
        accepted = self.run(self.queue.enqueue(notification, now_ms=model.now_ms))
        assert not accepted.duplicate
        queue = model.queues[device]
        newly_due = not queue
        # Supersede: the latest one of the same service id, unless it is or was possibly sent.
        older = model.latest_by_service.get((device, service_id)) if service_id else None
        if older and not model.lines[older].may_be_passed:
            older = None
        assert accepted.superseded == older
        if older:
            newly_due = queue[0] == older
            model.finalise(model.lines[older], DeliveryState.SUPERSEDED)
        # A chat line goes before the first line of its group with a higher position that was
        # never possibly sent, else at the tail.
        passable = [
            line
            for line in map(model.lines.__getitem__, queue)
            if chat and line.group == group and line.may_be_passed
        ]
        successor = next(
            (line.id for line in passable if chat and (line.position or 0) > chat[1]), None
        )
        queue.insert(queue.index(successor) if successor else len(queue), accepted.id)
        model.lines[accepted.id] = Line(
            accepted.id,
            device,
            service_id,
            group,
            position,
            passable=frozenset(line.id for line in passable),
        )
        if service_id:
            model.latest_by_service[(device, service_id)] = accepted.id
        if newly_due:
            model.rearm(device, model.now_ms)

    @rule(limit=st.integers(1, 4))
    def claim(self, limit: int) -> None:
        self.claim_and_check(limit)

    @rule(
        which=st.integers(0, 3),
        kind=st.sampled_from(["delivered", "delivered", "retry", "failed"]),
        delay_ms=st.sampled_from([0, 700, 3_000]),
    )
    def settle(self, which: int, kind: str, delay_ms: int) -> None:
        if not self.held:
            return
        model = self.model
        claim = self.held.pop(-1 - which % len(self.held))  # the newest first: mostly standing
        outcomes: dict[str, DeliveryOutcome] = {
            "delivered": Delivered(f"apns-{model.now_ms}"),
            "retry": Retry("TooManyRequests", delay_ms, 429),
            "failed": Failed("BadTopic", 400),
        }
        outcome = outcomes[kind]
        self.run(self.queue.settle([(claim, outcome)], now_ms=model.now_ms))
        if not model.stands(claim):
            return  # a stale result: the store must have ignored it (the invariants check)
        line = model.lines[claim.id]
        line.attempts += 1
        line.possibly_sent = True
        if kind == "retry":
            line.claim_no += 1
            line.state = DeliveryState.RETRYING
            model.retried += 1
            model.rearm(line.device, model.now_ms + delay_ms)
            return
        if kind == "delivered":
            self.check_chat_order(line)
        model.finalise(line, DeliveryState(kind))
        model.rearm(line.device, model.now_ms)

    @rule(which=st.integers(0, 3), delay_ms=st.sampled_from([0, 500]), went_out=st.booleans())
    def release(self, which: int, delay_ms: int, went_out: bool) -> None:
        if not self.held:
            return
        model = self.model
        claim = self.held.pop(-1 - which % len(self.held))
        self.run(
            self.queue.release(
                [claim], delay_ms=delay_ms, possibly_sent=went_out, now_ms=model.now_ms
            )
        )
        if model.stands(claim):
            line = model.lines[claim.id]
            line.possibly_sent |= went_out
            line.claim_no += 1
            line.state = model.unsent_state(line)
            model.rearm(line.device, model.now_ms + delay_ms)

    @rule(ms=st.sampled_from([1, 200, 400, 1_500]))
    def advance(self, ms: int) -> None:
        self.model.now_ms += ms

    @rule()
    def workers_gone_until_every_lease_ran_out(self) -> None:
        """Every holder vanished: once the leases and delays ran out, one claim takes every device
        with anything pending (nothing stays claimed or waiting forever)."""
        model = self.model
        model.now_ms = max([model.now_ms, *model.leased_until.values(), *model.due_ms.values()])
        claimed = self.claim_and_check(100)
        assert claimed == {device for device in DEVICES if model.queues[device]}

    # ---- checks ----

    def claim_and_check(self, limit: int) -> set[str]:
        """Claim; every claim must be the model's head of a due, unleased device, one per device,
        and all of them when the limit allows. Returns the devices claimed."""
        model = self.model
        model.reap_run_out_leases()
        due = {d for d, at in model.due_ms.items() if at <= model.now_ms}
        batch = self.run(self.queue.claim(limit, now_ms=model.now_ms))
        assert batch.expired == []
        devices = [claim.notification.device_token for claim in batch.claimed]
        assert len(devices) == len(set(devices)) <= limit, devices
        assert set(devices) <= due, f"claimed {set(devices) - due}, not due or leased"
        if limit >= len(due):
            assert set(devices) == due, f"left due devices unclaimed: {due - set(devices)}"
        for claim in batch.claimed:
            assert isinstance(claim, LeasedNotification)
            line = model.lines[claim.id]
            earlier = model.queues[line.device][: model.queues[line.device].index(claim.id)]
            assert not earlier, f"{claim.id} sent before {earlier} were final"
            assert claim.attempts == line.attempts
            line.claim_no += 1
            assert claim.claim_no == line.claim_no
            line.state = DeliveryState.SENDING
            model.due_ms.pop(line.device)
            model.leased_until[line.device] = model.now_ms + LIMITS.lease_ms
            self.held.append(claim)
        return set(devices)

    def check_chat_order(self, line: Line) -> None:
        """A chat line goes out after a line of its group with a higher position only if that one
        had been sent (was no longer queued) before this one was accepted."""
        if line.group is None or line.position is None:
            return
        sent = self.model.delivered.setdefault((line.device, line.group), [])
        for earlier in map(self.model.lines.__getitem__, sent):
            if earlier.position is not None and earlier.position > line.position:
                assert earlier.id not in line.passable, (
                    f"position {line.position} delivered after {earlier.position}, which was"
                    " still queued when it was accepted"
                )
        sent.append(line.id)

    @invariant()
    def every_notification_is_where_the_model_has_it(self) -> None:
        for line in self.model.lines.values():
            status = self.run(self.queue.get(line.id))
            assert status is not None, f"{line.id} was lost"
            assert (status.state, status.attempts) == (line.state, line.attempts), line

    @invariant()
    def devices_and_totals_agree(self) -> None:
        model = self.model
        for device in DEVICES:
            status = self.run(self.queue.device(APP, device))
            assert status.pending == len(model.queues[device])
            assert status.in_flight == (device in model.leased_until)
        totals = self.run(self.queue.totals(now_ms=model.now_ms))
        assert totals.enqueued == len(model.lines)
        assert totals.pending == sum(map(len, model.queues.values()))
        assert totals.devices_pending == sum(bool(queue) for queue in model.queues.values())
        assert totals.leased == len(model.leased_until)
        assert totals.retried == model.retried
        for state in FINAL_STATES:
            assert getattr(totals, state.value) == model.count(state), state


SETTINGS = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Against a broken script only "does it fail" matters: no shrinking, nothing saved for replay,
# and the same sequences every run (derandomized), so a catch is not left to luck.
BREAK_SETTINGS = settings(
    SETTINGS,
    max_examples=300,
    phases=[Phase.explicit, Phase.generate],
    database=None,
    derandomize=True,
)


def run_machine(redis_url: str, machine_settings: settings) -> None:
    class OnThisServer(QueueMachine):
        def __init__(self) -> None:
            super().__init__(redis_url)

    run_state_machine_as_test(OnThisServer, settings=machine_settings)


def test_the_queue_behaves_as_its_model_under_any_sequence_of_operations(redis_url: str) -> None:
    run_machine(redis_url, SETTINGS)


# Deliberate breaks of invariant 12, each as the scripts were (or could easily become): the model
# must catch every one. (script name, shared.lua helpers too, the text replaced, its replacement)
BREAKS = {
    "a run-out lease is queued again when no attempt was settled": (
        "claim",
        "n.possibly_sent, n.updated_at_ms = 1, now\n",
        "n.updated_at_ms = now\n",
    ),
    "a retrying notification may be superseded": (
        "enqueue",
        "if string.byte(start, 2) == HISTORY_STATE[STATE.QUEUED] then",
        "if string.byte(start, 2) ~= HISTORY_STATE[STATE.SENDING] then",
    ),
    "a chat line may go before one whose request went out and was released": (
        "release",
        "if ARGV[i + 3] == '1' then",
        "if false then",
    ),
}


def broken(name: str, text: str, replacement: str) -> LuaScript:
    body = (LUA_DIR / f"{name}.lua").read_text()
    assert body.count(text) == 1, f"{name}.lua changed: the break no longer applies"
    return build_library({name: body.replace(text, replacement)}).script(name)


@pytest.mark.parametrize("break_name", BREAKS)
def test_the_model_catches_a_deliberate_break_of_possibly_sent_keeps_its_place(
    redis_url: str, break_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, text, replacement = BREAKS[break_name]
    monkeypatch.setattr(queue_module, name.upper(), broken(name, text, replacement))
    with pytest.raises(AssertionError):
        run_machine(redis_url, BREAK_SETTINGS)


class AtMaxmemory(QueueMachine):
    """The same machine, with Redis filling up and getting room again between any two steps
    (noeviction): while it is full an enqueue is refused having changed nothing, and claim,
    settle, release and lease expiry go on exactly as the model says (the scripts that drain
    run at maxmemory)."""

    full = False

    @rule()
    def redis_fills_up(self) -> None:
        self.run(self.redis.config_set("maxmemory", 1))  # anything stored is over it
        self.full = True

    @rule()
    def redis_has_room_again(self) -> None:
        self.run(self.redis.config_set("maxmemory", 0))
        self.full = False

    @rule(
        device=st.sampled_from(DEVICES),
        service_id=st.sampled_from([None, "s0", "s1"]),
        chat=st.none() | st.tuples(st.sampled_from(GROUPS), st.integers(0, 9)),
    )
    def enqueue(self, device: str, service_id: str | None, chat: tuple[str, int] | None) -> None:
        if not self.full:
            super().enqueue(device, service_id, chat)
            return
        group, position = chat or (None, None)
        refused = Notification(
            app=APP,
            device_token=device,
            payload=b'{"aps":{"alert":"refused"}}',
            push_type="alert",
            priority=10,
            expires_at=self.model.now_ms // 1000 + TTL_S,
            service_id=service_id,
            order_group=group,
            order=position,
        )
        with pytest.raises(OutOfMemoryError):
            self.run(self.queue.enqueue(refused, now_ms=self.model.now_ms))
        # The model is unchanged: the invariants check that the store is too.

    def teardown(self) -> None:
        self.run(self.redis.config_set("maxmemory", 0))
        super().teardown()


def test_at_maxmemory_the_queue_refuses_new_work_whole_and_drains_as_its_model(
    redis_url: str,
) -> None:
    class OnThisServer(AtMaxmemory):
        def __init__(self) -> None:
            super().__init__(redis_url)

    run_state_machine_as_test(OnThisServer, settings=settings(SETTINGS, max_examples=60))
