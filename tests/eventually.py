"""`eventually()`: wait for a condition with a deadline, the one polling loop of the tests.

`eventually_blocking()` is the same wait for code that runs outside an event loop (a process or a
topology started by a synchronous fixture)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

DEFAULT_TIMEOUT_S = 20.0  # generous: the suite runs on a loaded 2-core machine
INTERVAL_S = 0.02


# Two signatures so that a condition returning `X | None`, or an awaitable of it, gives back X (an
# async condition's value is what it awaits to, not the coroutine). When X holds an explicit Any,
# both signatures match and mypy gives Any: annotate the result where precision matters.
@overload
async def eventually(
    condition: Callable[[], Awaitable[T | None]],
    *,
    timeout_s: float = ...,
    interval_s: float = ...,
    what: str = ...,
) -> T: ...
@overload
async def eventually(
    condition: Callable[[], T | None],
    *,
    timeout_s: float = ...,
    interval_s: float = ...,
    what: str = ...,
) -> T: ...
async def eventually(
    condition: Callable[[], Awaitable[T | None] | T | None],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = INTERVAL_S,
    what: str = "",
) -> T:
    """The condition's first truthy value, polled every `interval_s`; AssertionError naming
    `what` and the last value seen when none came within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not within {timeout_s} s: {what or condition!r} (last value {value!r})"
            )
        await asyncio.sleep(interval_s)


def eventually_blocking(
    condition: Callable[[], T | None],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = INTERVAL_S,
    what: str = "",
) -> T:
    """`eventually` outside an event loop: the condition's first truthy value, polled every
    `interval_s` (blocking the thread meanwhile); AssertionError naming `what` and the last value
    seen when none came within `timeout_s`. A condition raises to stop the wait at once (a
    process that exited will never answer)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(
                f"not within {timeout_s} s: {what or condition!r} (last value {value!r})"
            )
        time.sleep(interval_s)
