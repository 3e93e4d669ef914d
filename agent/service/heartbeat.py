"""Heartbeats: how the main loop knows every thread it needs is alive *and* running its loop.

Each long-running part (a camera's reader and pipeline, the lighting service, the uplink)
holds a :class:`Heartbeat` and calls :meth:`Heartbeat.beat` once per pass of its own loop,
and :meth:`Heartbeat.wait` instead of a plain ``Event.wait`` for its sleeps (it beats
while it waits, so a long back-off is not taken for a hang). A part that ends on purpose
(a file played to its end, a camera stopped by a model error, the agent stopping) calls
:meth:`Heartbeat.retire`; starting a part calls :meth:`Heartbeat.arm`.

:func:`problems` is the check: a part whose thread died without retiring, or
whose last beat is older than its own ``bound_s`` (the longest one pass of its loop may
legitimately take: a camera's open and read timeouts, a bus's slowest transaction), is a
problem. A camera that cannot connect is *not* one: its loop still runs (it waits and
retries); only a thread blocked where no timeout reaches it is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

#: The longest single wait :meth:`Heartbeat.wait` makes between beats.
BEAT_SLICE_S = 1.0


@dataclass
class Heartbeat:
    """One part's heartbeat; see the module docstring."""

    name: str
    bound_s: float
    last: float = field(default_factory=time.monotonic)
    thread: threading.Thread | None = None
    retired: bool = False

    def arm(self) -> None:
        """The part is being started: checked from now on, its thread not known yet."""
        self.thread, self.retired, self.last = None, False, time.monotonic()

    def beat(self) -> None:
        """This part's loop ran one more pass (and runs on the calling thread)."""
        self.thread = threading.current_thread()
        self.retired = False
        self.last = time.monotonic()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """``event.wait(seconds)``, beating at least every :data:`BEAT_SLICE_S`; True when
        the event was set."""
        end = time.monotonic() + seconds
        while True:
            self.beat()
            left = end - time.monotonic()
            if left <= 0:
                return event.is_set()
            if event.wait(min(left, BEAT_SLICE_S)):
                self.beat()
                return True

    def retire(self) -> None:
        """This part ended on purpose: no longer checked (until it beats again)."""
        self.retired = True

    def problem(self, now: float) -> str | None:
        """Why this part is not healthy at monotonic ``now`` (None: it is)."""
        if self.retired:
            return None
        if self.thread is not None and not self.thread.is_alive():
            return f"{self.name}: thread {self.thread.name} died"
        age = now - self.last
        if age > self.bound_s:
            what = "has not started its loop" if self.thread is None else \
                f"thread {self.thread.name} stuck"
            return f"{self.name}: {what} for {age:.0f} s (bound {self.bound_s:g} s)"
        return None


def problems(parts: Iterable[Heartbeat], now: float | None = None) -> list[str]:
    """Every part that is dead or stuck, one line each (empty: all healthy)."""
    now = time.monotonic() if now is None else now
    return [p for p in (hb.problem(now) for hb in parts) if p]
