"""``agent run`` as a systemd service: readiness, status, watchdog and the run records.

:class:`Supervisor` is driven by the runner's main loop:

- :meth:`Supervisor.step` on every pass: the watchdog check (pings only while every
  part's heartbeat is fresh), ``READY=1`` once the parts are up (the config loaded, the
  workers, the uplink and the lighting started, and the lighting's first tick done: the
  lamps commanded at least once), and ``STATUS=`` whenever the one-line summary changes;
- :meth:`Supervisor.stopping` when shutdown begins (``STOPPING=1``);
- :meth:`Supervisor.finished` with the exit code, which records the exit reason.

Without ``NOTIFY_SOCKET`` (a technician's shell, the tests' plain runs) the notifications
do nothing; the run records are kept either way. The lamps never depend on any of it: the
pieces log and carry on (a bad record is moved aside, a bad variable turns its part off, a
socket nobody reads drops messages), and should one of them still fail while the run's
records are taken, that is logged in one line and the agent starts without figures.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from agent.service.heartbeat import Heartbeat
from agent.service.notify import Notifier, watchdog_interval
from agent.service.runs import RunLog
from agent.service.watchdog import Watchdog

log = logging.getLogger(__name__)


class Supervisor:
    """See the module docstring."""

    def __init__(self, state_dir: Path, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.notifier = Notifier(env)
        try:
            self.runs = RunLog(state_dir).begin()
        except Exception as e:            # last line of defence: the lamps come first
            log.error("cannot take the run records in %s (%s: %s): health shows no restarts",
                      state_dir, type(e).__name__, e)
            self.runs = RunLog(state_dir)
        interval = watchdog_interval(env)
        self.watchdog = Watchdog(self.notifier, interval, self.runs)
        self.ready = False
        self._status = ""
        if self.notifier.enabled:
            log.info("systemd: notifying %s%s", self.notifier.shown,
                     f", watchdog ping every {interval:g} s" if interval else "")

    def figures(self) -> dict[str, Any]:
        """``restarts`` and ``lastExit`` for health."""
        return self.runs.figures()

    def step(self, parts: Iterable[Heartbeat], up: Callable[[], bool],
             status: Callable[[], str]) -> None:
        """One pass: watchdog, readiness, status (see the module docstring)."""
        stuck = self.watchdog.check(parts)
        if stuck:
            self._status = "STUCK"      # the watchdog has said why; resend the summary after
            return
        if not self.ready and up():
            self.ready = True
            self._status = status()
            self.notifier.ready(self._status)
            log.info("ready: %s", self._status)
            return
        if self.ready:
            line = status()
            if line != self._status:
                self._status = line
                self.notifier.status(line)

    def stopping(self, why: str) -> None:
        """Shutdown has begun."""
        self.notifier.stopping(f"stopping: {why}")

    def finished(self, rc: int, why: str) -> None:
        """Record why the run ended: ``clean`` (exit 0), ``watchdog`` (stopped while a part
        was stuck: the record the watchdog wrote stays), else ``crash``."""
        if self.watchdog.withheld:
            return
        self.runs.end("clean" if rc == 0 else "crash", why)
        self.notifier.close()
