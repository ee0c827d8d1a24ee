"""Group commit: concurrent requests' writes share one call, with no wait added to any of them.

An item that finds no write in flight is written at once, alone, by its own caller: one item at
a time costs what it did before grouping. Items that arrive while a write is in flight wait for
it to return, then go together as the next group (at most `group_max`, the rest in the groups
after), written by a task of their own, so that no caller's cancellation (a deadline, a client
gone) cuts another caller's write short. The write answers each item on its own: one item's
refusal is its own outcome, not its group's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


class GroupCommit(Generic[Item, Outcome]):
    """Items written by `write` (one outcome per item, in order): alone when nothing is in
    flight, else in the next group."""

    def __init__(
        self, write: Callable[[Sequence[Item]], Awaitable[Sequence[Outcome]]], group_max: int
    ) -> None:
        self._write = write
        self.group_max = group_max
        self._waiting: list[tuple[Item, asyncio.Future[Outcome]]] = []
        self._in_flight = False
        self._groups: set[asyncio.Task[None]] = set()  # referenced until done (asyncio's advice)

    async def submit(self, item: Item) -> Outcome:
        """`item`'s outcome, written alone or in a group; a write that raises raises here."""
        if self._in_flight:
            future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
            self._waiting.append((item, future))
            return await future
        self._in_flight = True
        try:
            (outcome,) = await self._write([item])
        finally:
            self._next_group()
        return outcome

    def _next_group(self) -> None:
        """Start writing what waited (callers that gave up meanwhile left out), or go idle."""
        waiting = [entry for entry in self._waiting if not entry[1].done()]
        group, self._waiting = waiting[: self.group_max], waiting[self.group_max :]
        if not group:
            self._in_flight = False
            return
        task = asyncio.create_task(self._write_group(group))
        self._groups.add(task)
        task.add_done_callback(self._groups.discard)

    async def _write_group(self, group: list[tuple[Item, asyncio.Future[Outcome]]]) -> None:
        try:
            outcomes = await self._write([item for item, _ in group])
            if len(outcomes) != len(group):
                raise RuntimeError(f"{len(outcomes)} outcomes for a group of {len(group)} items")
        except Exception as error:  # every caller of the group hears of it
            for _, future in group:
                if not future.done():
                    future.set_exception(error)
        else:
            for (_, future), outcome in zip(group, outcomes, strict=True):
                if not future.done():  # its caller may have given up (a deadline)
                    future.set_result(outcome)
        finally:
            self._next_group()
