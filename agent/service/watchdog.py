"""``WATCHDOG=1`` only while every part the agent needs is alive and running its loop.

The main loop calls :meth:`Watchdog.check` on every pass with the parts' heartbeats. While
they are all fresh it pings at half of ``WATCHDOG_USEC``. When one is dead or stuck it
stops pinging (systemd then kills and restarts the agent after ``WatchdogSec``), says why
in the log and in ``STATUS=``, and records ``watchdog`` as the provisional exit reason,
since the kill leaves the agent no chance to. A part that recovers before systemd acts
resumes the pings and the provisional record is dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from agent.service.heartbeat import Heartbeat, problems
from agent.service.notify import Notifier
from agent.service.runs import RunLog

log = logging.getLogger(__name__)


class Watchdog:
    """See the module docstring."""

    def __init__(self, notifier: Notifier, interval_s: float | None,
                 runs: RunLog | None = None) -> None:
        self.notifier = notifier
        self.interval_s = interval_s
        self.runs = runs
        self.pings = 0
        self.withheld: list[str] = []
        self._next = 0.0

    def check(self, parts: Iterable[Heartbeat], now: float | None = None) -> list[str]:
        """Ping when due and every part is healthy; returns the problems (empty: healthy)."""
        now = time.monotonic() if now is None else now
        found = problems(parts, now)
        if found:
            if _parts(found) != _parts(self.withheld):      # new news, not a new age
                log.error("watchdog: %s; not pinging: systemd restarts the agent after "
                          "WatchdogSec", "; ".join(found))
                self.notifier.status("STUCK: " + "; ".join(found))
                if self.runs is not None:
                    self.runs.end("watchdog", "; ".join(found))
            self.withheld = found
            return found
        if self.withheld:
            log.warning("watchdog: every part is running again; pinging")
            if self.runs is not None:
                self.runs.clear_end()
            self.withheld = []
        if self.interval_s is not None and now >= self._next:
            if self.notifier.watchdog():
                self.pings += 1
            self._next = now + self.interval_s
        return found


def _parts(found: list[str]) -> list[str]:
    """The parts named in problem lines (``name: why``)."""
    return [p.split(":", 1)[0] for p in found]
