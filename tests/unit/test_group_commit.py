"""The group commit alone (no Redis): who writes, in which groups, and who hears of what."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from eventually import eventually

from relay.ingest.group_commit import GroupCommit


class GatedWrite:
    """Each call is one write, answered `done:<item>` once the test opens its gate; an item
    named `boom` makes its whole write raise."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.writers: list[asyncio.Task[object] | None] = []
        self.gates: list[asyncio.Event] = []

    async def __call__(self, items: Sequence[str]) -> list[str]:
        self.calls.append(list(items))
        self.writers.append(asyncio.current_task())
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        if "boom" in items:
            raise ConnectionError("Redis went away")
        return [f"done:{item}" for item in items]

    async def open(self, call: int) -> None:
        await eventually(lambda: len(self.gates) > call, timeout_s=5, what=f"write {call}")
        self.gates[call].set()


async def test_an_item_alone_is_written_at_once_by_its_own_caller() -> None:
    write = GatedWrite()
    commit = GroupCommit(write, group_max=10)
    task = asyncio.create_task(commit.submit("a"))
    await write.open(0)
    assert await task == "done:a"
    assert write.calls == [["a"]]
    assert write.writers == [task]  # no task of its own: alone costs what it did before
    second = asyncio.create_task(commit.submit("b"))
    await write.open(1)
    assert await second == "done:b"
    assert write.calls == [["a"], ["b"]]


async def test_what_arrives_during_a_write_goes_as_the_next_groups_bounded() -> None:
    write = GatedWrite()
    commit = GroupCommit(write, group_max=3)
    first = asyncio.create_task(commit.submit("a"))
    await eventually(lambda: write.calls, timeout_s=5, what="the first write")
    rest = [asyncio.create_task(commit.submit(item)) for item in "bcdef"]
    await asyncio.sleep(0)  # the behaviour under test: they wait, no write of theirs starts
    assert write.calls == [["a"]]
    await write.open(0)
    await write.open(1)
    await write.open(2)
    assert await first == "done:a"
    assert [await task for task in rest] == [f"done:{item}" for item in "bcdef"]
    assert write.calls == [["a"], ["b", "c", "d"], ["e", "f"]]


async def test_a_failed_write_fails_its_own_group_only() -> None:
    write = GatedWrite()
    commit = GroupCommit(write, group_max=2)
    first = asyncio.create_task(commit.submit("a"))
    await eventually(lambda: write.calls, timeout_s=5, what="the first write")
    doomed = [asyncio.create_task(commit.submit(item)) for item in ("b", "boom")]
    later = asyncio.create_task(commit.submit("c"))
    for call in range(3):
        await write.open(call)
    assert await first == "done:a"
    for task in doomed:
        with pytest.raises(ConnectionError):
            await task
    assert await later == "done:c"
    assert write.calls == [["a"], ["b", "boom"], ["c"]]


async def test_a_caller_that_gives_up_is_left_out_and_its_leaving_stops_no_one() -> None:
    write = GatedWrite()
    commit = GroupCommit(write, group_max=10)
    first = asyncio.create_task(commit.submit("a"))
    await eventually(lambda: write.calls, timeout_s=5, what="the first write")
    gone = asyncio.create_task(commit.submit("gone"))
    stays = asyncio.create_task(commit.submit("b"))
    await asyncio.sleep(0)
    gone.cancel()
    first.cancel()  # the writer of a group of one gives up: the next group is written all the same
    await write.open(1)
    assert await stays == "done:b"
    assert write.calls == [["a"], ["b"]]
    assert gone.cancelled()
    assert first.cancelled()
