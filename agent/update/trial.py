"""The running agent's side of an update: report what the guard recorded, commit a healthy
release on trial.

A release on trial commits itself once it is healthy: its birth was published (the
uplink connected at least once), it wrote its first interval record, and every lamp group
was commanded. Committing moves ``previous`` to the release it replaced, removes the trial
record, deletes releases that are neither current nor previous, and sends
``update_committed``. A release that never gets there is rolled back by the guard
(``agent.update.guard``), which does not depend on this code running at all.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.update.guard import Layout, valid_version

log = logging.getLogger(__name__)

Emit = Callable[[str, str, dict[str, Any]], None]


def running_release(layout: Layout, prefix: str | None = None) -> str | None:
    """The release this interpreter runs from (``<root>/releases/<v>/venv``), or None when
    the agent does not run from the release layout (a development checkout)."""
    try:
        env = Path(prefix or sys.prefix).resolve()
        releases = layout.releases.resolve()
    except OSError:
        return None
    if env.name != "venv" or env.parent.parent != releases:
        return None
    name = env.parent.name
    return name if valid_version(name) else None


class TrialWatch:
    """Checked from the agent's main loop; see the module docstring."""

    def __init__(self, layout: Layout, running: str | None, emit: Emit,
                 check_every_s: float = 1.0, journal_every_s: float = 5.0) -> None:
        self.layout = layout
        self.running = running
        self.emit = emit
        self.check_every_s = check_every_s
        self.journal_every_s = journal_every_s
        self._next_check = 0.0
        self._next_journal = 0.0
        self.started = time.monotonic()
        self.committed = False
        self.conditions: dict[str, bool] = {}

    def step(self, health: Callable[[], dict[str, bool]], mono: float | None = None) -> None:
        """Publish recorded events (every few seconds) and commit when on trial and healthy
        (checked every second). Never raises."""
        mono = time.monotonic() if mono is None else mono
        try:
            if self._next_journal == 0.0:
                self.remove_incomplete()
            if mono >= self._next_journal:
                self._next_journal = mono + self.journal_every_s
                self.publish_recorded()
            if mono >= self._next_check and not self.committed:
                self._next_check = mono + self.check_every_s
                self._maybe_commit(health)
        except Exception as e:                 # bookkeeping must never stop the agent
            log.error("update: %s: %s", type(e).__name__, e)

    def publish_recorded(self) -> int:
        """Send the events the guard (or a previous run) recorded; returns how many."""
        if not self.layout.journal.exists():
            return 0
        with self.layout.lock():
            events = self.layout.take_events()
        for ev in events:
            detail = dict(ev.get("detail") or {})
            if isinstance(ev.get("at"), int | float):
                from agent.records import iso

                detail["recordedAt"] = iso(float(ev["at"]))
            detail["runningNow"] = self.running
            sev = ev.get("severity") if ev.get("severity") in ("info", "warning",
                                                               "alarm") else "alarm"
            self.emit(str(ev["event"])[:64], str(sev), detail)
        return len(events)

    def _maybe_commit(self, health: Callable[[], dict[str, bool]]) -> None:
        trial = self.layout.read_trial()
        if trial is None or self.running is None or trial.to != self.running:
            return
        self.conditions = health()
        if not all(self.conditions.values()):
            return
        lay = self.layout
        with lay.lock():
            trial = lay.read_trial()
            if trial is None or trial.to != self.running \
                    or lay.target(lay.current) != self.running:
                return
            lay.point(lay.previous, trial.previous)
            lay.end_trial()
        self.committed = True
        removed = self._collect_garbage()
        log.info("update: release %s is healthy: committed (previous %s)", trial.to,
                 trial.previous)
        self.emit("update_committed", "info", {
            "version": trial.to, "previous": trial.previous, "starts": trial.starts,
            "correlationId": trial.via or None,
            "secondsToHealthy": round(time.time() - trial.started, 1),
            "checks": self.conditions, "removedReleases": removed})

    def remove_incomplete(self) -> list[str]:
        """Delete release folders an interrupted install left (marked ``.incomplete``),
        never the current or previous one."""
        lay = self.layout
        keep = {lay.target(lay.current), lay.target(lay.previous)}
        removed = []
        if lay.releases.is_dir():
            for d in lay.releases.iterdir():
                if d.name not in keep and (d / ".incomplete").exists():
                    shutil.rmtree(d, ignore_errors=True)
                    removed.append(d.name)
        if removed:
            log.warning("update: removed unfinished install(s): %s", ", ".join(removed))
        return removed

    def _collect_garbage(self) -> list[str]:
        """Delete releases other than current and previous (failed, rolled back, old)."""
        lay = self.layout
        keep = {lay.target(lay.current), lay.target(lay.previous)}
        removed = []
        if lay.releases.is_dir():
            for d in lay.releases.iterdir():
                if d.name not in keep and d.is_dir():
                    shutil.rmtree(d, ignore_errors=True)
                    removed.append(d.name)
        return sorted(removed)
