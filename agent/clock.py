"""One injectable clock for the whole agent: wall time, monotonic time, and waiting.

Every part that reads the time or waits takes a :class:`Clock` instead of calling
``time.time()`` / ``time.monotonic()`` / ``Event.wait()`` itself, so that:

- the live agent runs on :class:`SystemClock`;
- unit tests step a :class:`ManualClock` by hand (a night in microseconds, exact);
- whole-process tests and demos run ``agent run`` on a :class:`ScaledClock` (a night in a
  minute). Its mapping from real time is a pure function of its spec, so two processes
  given the same spec (the agent, and the test's bus emulators) agree on the time, and
  the emulators' energy integration matches the agent's.

``POLELINK_SIM_CLOCK`` selects a scaled clock for ``agent run`` (tests and demos only)::

    POLELINK_SIM_CLOCK="start=2026-11-23T10:00:00Z,speed=600,anchor=1763891000.0,synced=1"

``start`` is the simulated wall time at real epoch time ``anchor`` (default: now), ``speed``
the number of simulated seconds per real second, ``synced`` whether the simulated clock
vouches for itself as a time source (``agent.lighting.clocktrust``), and ``jump=R:+S``
(repeatable, ``;``-separated) makes the simulated wall clock jump by ``S`` seconds once
``R`` real seconds have passed since ``anchor``.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

ENV_VAR = "POLELINK_SIM_CLOCK"


class Clock(Protocol):
    """What the agent needs of time."""

    def time(self) -> float:
        """Wall-clock time, seconds since the Unix epoch (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (only differences mean anything)."""
        ...

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait up to ``seconds`` of this clock's time for ``event``; True if it is set."""
        ...


class SystemClock:
    """The machine's clocks."""

    name = "system"

    def time(self) -> float:
        """``time.time()``."""
        return time.time()

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """``event.wait(seconds)``."""
        return event.wait(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when told to (unit tests). ``wait`` advances it."""

    name = "manual"

    def __init__(self, wall: float, monotonic: float = 1000.0) -> None:
        self._wall = float(wall)
        self._mono = float(monotonic)
        self._lock = threading.Lock()

    def time(self) -> float:
        """The current simulated wall time."""
        with self._lock:
            return self._wall

    def monotonic(self) -> float:
        """The current simulated monotonic time."""
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass (both clocks)."""
        with self._lock:
            self._wall += seconds
            self._mono += seconds

    def set_wall(self, wall: float) -> None:
        """Jump the wall clock only (someone set the time); monotonic time goes on."""
        with self._lock:
            self._wall = float(wall)

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Returns at once: the time passes as if waited for."""
        if event.is_set():
            return True
        self.advance(max(0.0, seconds))
        return event.is_set()


@dataclass(frozen=True)
class ScaledClockSpec:
    """Everything that defines a :class:`ScaledClock` (see the module docstring)."""

    start: float                       # simulated wall time at the anchor
    speed: float = 1.0                 # simulated seconds per real second
    anchor: float = field(default_factory=time.time)   # real epoch seconds
    synced: bool = True
    jumps: tuple[tuple[float, float], ...] = ()        # (real seconds after anchor, +s)

    def to_env(self) -> str:
        """The ``POLELINK_SIM_CLOCK`` value for this spec."""
        parts = [f"start={datetime.fromtimestamp(self.start, UTC).isoformat()}",
                 f"speed={self.speed:g}", f"anchor={self.anchor:.6f}",
                 f"synced={int(self.synced)}"]
        if self.jumps:
            parts.append("jump=" + ";".join(f"{r:g}:{s:+g}" for r, s in self.jumps))
        return ",".join(parts)

    @staticmethod
    def parse(text: str) -> ScaledClockSpec:
        """Parse a ``POLELINK_SIM_CLOCK`` value; ValueError naming what is wrong."""
        fields: dict[str, str] = {}
        for part in text.split(","):
            key, sep, value = part.strip().partition("=")
            if not sep or key not in ("start", "speed", "anchor", "synced", "jump"):
                raise ValueError(f"{ENV_VAR}: expected key=value with keys start, speed, "
                                 f"anchor, synced, jump; got {part.strip()!r}")
            fields[key] = value.strip()
        if "start" not in fields:
            raise ValueError(f"{ENV_VAR}: 'start' (an ISO-8601 UTC time) is required")
        try:
            start = datetime.fromisoformat(fields["start"].replace("Z", "+00:00"))
        except (ValueError, OverflowError):
            raise ValueError(f"{ENV_VAR}: start={fields['start']!r} is not an ISO-8601 "
                             f"time such as 2026-11-23T10:00:00Z") from None
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        try:
            speed = float(fields.get("speed", "1"))
            anchor = float(fields["anchor"]) if "anchor" in fields else time.time()
            jumps = tuple((float(r), float(s)) for r, s in
                          (j.split(":", 1) for j in fields["jump"].split(";") if j)) \
                if fields.get("jump") else ()
        except ValueError:
            raise ValueError(f"{ENV_VAR}: speed, anchor and jump=R:+S need numbers "
                             f"(got {text!r})") from None
        if not 0 < speed <= 100_000:
            raise ValueError(f"{ENV_VAR}: speed must be in (0, 100000], got {speed:g}")
        if not 1971 <= start.year <= 2199:
            raise ValueError(f"{ENV_VAR}: start must be between 1971 and 2199, got "
                             f"{fields['start']!r}")
        century = 100 * 365.25 * 86400
        if not (math.isfinite(anchor) and abs(anchor - time.time()) <= century):
            raise ValueError(f"{ENV_VAR}: anchor must be a real epoch time within a century of "
                             f"now, got {fields.get('anchor')!r}")
        for r, j in jumps:
            if not (math.isfinite(r) and r >= 0 and math.isfinite(j) and abs(j) <= century):
                raise ValueError(f"{ENV_VAR}: jump=R:+S needs R >= 0 real seconds and "
                                 f"|S| <= a century, got {r:g}:{j:+g}")
        synced = fields.get("synced", "1")
        if synced not in ("0", "1"):
            raise ValueError(f"{ENV_VAR}: synced must be 0 or 1, got {synced!r}")
        return ScaledClockSpec(start.timestamp(), speed, anchor, synced == "1", jumps)


class ScaledClock:
    """Simulated time running ``speed`` times faster than real time (see the module docstring)."""

    name = "scaled"

    def __init__(self, spec: ScaledClockSpec) -> None:
        self.spec = spec
        # monotonic time: this process's real monotonic clock, scaled, started at the
        # simulated time elapsed since the anchor (so both clocks advance together)
        self._mono0 = time.monotonic()
        self._elapsed0 = time.time() - spec.anchor

    @property
    def synced(self) -> bool:
        """Whether this clock vouches for itself as a time source."""
        return self.spec.synced

    def _real_elapsed(self) -> float:
        return self._elapsed0 + (time.monotonic() - self._mono0)

    def time(self) -> float:
        """Simulated wall time, including any scheduled jumps that have happened."""
        r = self._real_elapsed()
        jumped = sum(s for at, s in self.spec.jumps if r >= at)
        return self.spec.start + r * self.spec.speed + jumped

    def monotonic(self) -> float:
        """Simulated monotonic time (never jumps)."""
        return 1000.0 + self._real_elapsed() * self.spec.speed

    def wait(self, event: threading.Event, seconds: float) -> bool:
        """Wait ``seconds`` of simulated time (``seconds / speed`` of real time)."""
        return event.wait(max(0.0, seconds) / self.spec.speed)


def from_environment(env: dict[str, str] | None = None) -> SystemClock | ScaledClock:
    """The clock ``agent run`` uses: scaled when ``POLELINK_SIM_CLOCK`` is set (ValueError
    when it is malformed), else the system's."""
    value = (os.environ if env is None else env).get(ENV_VAR, "").strip()
    return ScaledClock(ScaledClockSpec.parse(value)) if value else SystemClock()
