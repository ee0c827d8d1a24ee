"""The check route's runs: one probe per app in flight at a time, a recent verdict answered from
memory, so that calling the route in a loop cannot turn into a flood of APNs connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from relay.credentials.check import Verdict

# A verdict is answered from memory this long after its probe: an operator re-running a check
# right after fixing something waits at most this long; a loop of calls costs one probe per app
# per interval.
VERDICT_FRESH_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class CheckedVerdict:
    verdict: Verdict
    checked_at_s: float  # on the run's monotonic clock


class CheckRuns:
    """Per app: the probe in flight (callers meanwhile share it) and the last verdict. Bounded
    by the configured apps: only a configured app's name gets here."""

    def __init__(
        self,
        fresh_for_s: float = VERDICT_FRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fresh_for_s = fresh_for_s
        self.clock = clock
        self.recent: dict[str, CheckedVerdict] = {}
        self.running: dict[str, asyncio.Future[CheckedVerdict]] = {}

    async def verdict(
        self, app: str, probe: Callable[[], Awaitable[Verdict]]
    ) -> tuple[CheckedVerdict, bool]:
        """The app's verdict and whether it came from memory (a probe of the last
        `fresh_for_s`); otherwise the probe running now, started by this call or an earlier one."""
        recent = self.recent.get(app)
        if recent is not None and self.clock() - recent.checked_at_s < self.fresh_for_s:
            return recent, True
        running = self.running.get(app)
        if running is None:
            running = self.running[app] = asyncio.ensure_future(self._run(app, probe))
        # A caller that goes away does not cancel the probe the others wait for.
        return await asyncio.shield(running), False

    def age_s(self, checked: CheckedVerdict) -> float:
        return max(0.0, self.clock() - checked.checked_at_s)

    async def _run(self, app: str, probe: Callable[[], Awaitable[Verdict]]) -> CheckedVerdict:
        try:
            checked = CheckedVerdict(await probe(), self.clock())
            self.recent[app] = checked
            return checked
        finally:
            del self.running[app]
