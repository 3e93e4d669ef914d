"""Whether the wall clock can be trusted to tell night from day.

A wrong clock can switch lamps off at night, so the agent trusts the wall clock only when
all of these hold (checked every lighting tick by :meth:`ClockTrust.check`):

1. **Plausible:** not before this software was built (:data:`agent.BUILD_DATE`), and not
   more than 30 years after it. An unset RTC reads 1970 or the image's date.
2. **Vouched for:** at least one configured time source vouches for the current time,
   and none contradicts it:

   - ``kernel``: the kernel's NTP state (``adjtimex``) says synchronised, with a maximum
     error of at most ``max_error_s``. ``date -s``, fake-hwclock and an RTC loaded at
     boot all leave the kernel *unsynchronised* until an NTP (or PTP/GNSS) daemon
     disciplines the clock, so a plausible but wrong clock from boot is not trusted;
     a clock that stopped being disciplined drifts, its maximum error grows (500 ppm)
     and it stops vouching.
   - ``gnss``: a GNSS receiver's NMEA ``RMC`` sentences (serial port) with a valid fix,
     fresh, within ``tolerance_s`` of the wall clock. A valid fix that disagrees
     *contradicts* the clock (drift or a wrong setting is noticed).
   - ``rtc``: a battery-backed RTC (``/sys/class/rtc/rtc0/since_epoch``) set at
     commissioning; agreement within ``tolerance_s`` vouches, disagreement contradicts.
   - ``assume_synced``: always vouches. For benches and demos without NTP, never a pole.
3. **No unexplained jump:** the wall clock moved against the monotonic clock by more than
   ``max_jump_s`` between two checks. After a jump the clock stays untrusted until a
   source vouches for the new time: GNSS or RTC agreement at once; the kernel once it
   has been seen unsynchronised and synchronised again (a daemon re-disciplined it), or
   after ``kernel_rejoin_s`` of uninterrupted synchronisation; ``assume_synced`` never.

When the clock is not trusted the lamps burn at the safe level, by day too: a day-burner
is a cost, a dark road is a danger.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from agent.lighting.smallfile import read_regular

log = logging.getLogger(__name__)

#: adjtimex's return value when the clock is not synchronised, and the status bit.
TIME_ERROR = 5
STA_UNSYNC = 0x0040


@dataclass(frozen=True)
class Vote:
    """One source's view of the wall clock: ``True`` vouches, ``False`` contradicts,
    ``None`` has no opinion (no fix, not synchronised, unreadable)."""

    verdict: bool | None
    detail: str


class TimeSource(Protocol):
    """Something that can vouch for (or contradict) the wall clock."""

    name: str
    #: True when a vouch is an independent measurement of the current time (it settles
    #: a jump at once); False when it only reports someone else's discipline.
    independent: bool

    def vote(self, wall: float, mono: float) -> Vote:
        """This source's opinion of ``wall`` now."""
        ...

    def close(self) -> None:
        """Release whatever the source holds open."""
        ...


class _Timex(ctypes.Structure):
    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long),
                ("status", ctypes.c_int), ("constant", ctypes.c_long),
                ("precision", ctypes.c_long), ("tolerance", ctypes.c_long),
                ("time_sec", ctypes.c_long), ("time_usec", ctypes.c_long),
                ("tick", ctypes.c_long), ("ppsfreq", ctypes.c_long), ("jitter", ctypes.c_long),
                ("shift", ctypes.c_int), ("stabil", ctypes.c_long), ("jitcnt", ctypes.c_long),
                ("calcnt", ctypes.c_long), ("errcnt", ctypes.c_long), ("stbcnt", ctypes.c_long),
                ("tai", ctypes.c_int), ("_pad", ctypes.c_int * 11)]


def kernel_sync_state() -> tuple[int, int, float] | None:
    """``(adjtimex return value, status bits, max error in seconds)``, read-only (modes 0);
    None where the call is not available."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        tx = _Timex()
        rc = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if rc < 0:
        return None
    return rc, tx.status, tx.maxerror / 1e6


class KernelSync:
    """The kernel's NTP discipline state (see the module docstring)."""

    name = "kernel"
    independent = False

    def __init__(self, max_error_s: float = 5.0, read=kernel_sync_state) -> None:
        self.max_error_s = max_error_s
        self._read = read

    def vote(self, wall: float, mono: float) -> Vote:
        """Synchronised with a small enough error: vouch; otherwise no opinion."""
        state = self._read()
        if state is None:
            return Vote(None, "kernel: adjtimex unavailable")
        rc, status, maxerror = state
        if rc == TIME_ERROR or status & STA_UNSYNC:
            return Vote(None, "kernel: clock not synchronised (no NTP discipline)")
        if maxerror > self.max_error_s:
            return Vote(None, f"kernel: maximum error {maxerror:.1f} s exceeds "
                              f"{self.max_error_s:g} s (NTP stopped disciplining it)")
        return Vote(True, f"kernel: synchronised (max error {maxerror:.3f} s)")

    def close(self) -> None:
        """Nothing to release."""


class AssumeSynced:
    """Always vouches: for benches and demos without NTP, never a pole."""

    name = "assume_synced"
    independent = False

    def vote(self, wall: float, mono: float) -> Vote:
        """Always True."""
        return Vote(True, "assume_synced: configured to trust the clock")

    def close(self) -> None:
        """Nothing to release."""


class SimulatedSync:
    """A :class:`agent.clock.ScaledClock`'s own word (``synced=1`` in its spec)."""

    name = "simulated"
    independent = False

    def __init__(self, clock: object) -> None:
        self.clock = clock

    def vote(self, wall: float, mono: float) -> Vote:
        """The simulated clock's ``synced`` flag."""
        if getattr(self.clock, "synced", False):
            return Vote(True, "simulated clock: synchronised")
        return Vote(None, "simulated clock: not synchronised")

    def close(self) -> None:
        """Nothing to release."""


class RtcSource:
    """A battery-backed RTC read through sysfs (``since_epoch``: whole seconds)."""

    name = "rtc"
    independent = True

    def __init__(self, path: Path = Path("/sys/class/rtc/rtc0/since_epoch"),
                 tolerance_s: float = 5.0) -> None:
        self.path = Path(path)
        self.tolerance_s = tolerance_s

    def vote(self, wall: float, mono: float) -> Vote:
        """Agreement within the tolerance vouches; disagreement contradicts."""
        try:
            rtc = float(read_regular(self.path)[0].decode("ascii", "replace").strip())
        except (OSError, ValueError) as e:
            return Vote(None, f"rtc: cannot read {self.path}: {e}")
        diff = wall - rtc
        if abs(diff) <= self.tolerance_s + 1.0:   # the RTC counts whole seconds
            return Vote(True, f"rtc: agrees ({diff:+.1f} s)")
        return Vote(False, f"rtc: wall clock is {diff:+.0f} s off the RTC")

    def close(self) -> None:
        """Nothing to release."""


@dataclass
class TrustState:
    """The verdict of one check."""

    trusted: bool
    reasons: list[str] = field(default_factory=list)   # why not (empty when trusted)
    votes: dict[str, str] = field(default_factory=dict)


class ClockTrust:
    """Applies the rules of the module docstring; call :meth:`check` every tick."""

    def __init__(self, sources: list[TimeSource], build_date: datetime,
                 max_jump_s: float = 120.0, kernel_rejoin_s: float = 3600.0) -> None:
        self.sources = sources
        self.build_epoch = build_date.timestamp()
        self.max_jump_s = max_jump_s
        self.kernel_rejoin_s = kernel_rejoin_s
        self._offset: float | None = None        # wall - mono at the last check
        self._jump: str | None = None            # the unexplained jump still standing
        self._jump_mono = -math.inf
        self._seen_unvouched: set[str] = set()   # sources seen not vouching since the jump
        self._vouched_since: dict[str, float] = {}
        self.state = TrustState(False, ["not checked yet"])

    def check(self, wall: float, mono: float) -> TrustState:
        """Apply every rule to ``wall`` at monotonic time ``mono``."""
        reasons: list[str] = []
        offset = wall - mono
        if self._offset is not None and abs(offset - self._offset) > self.max_jump_s:
            jump = offset - self._offset
            if self._jump is None:       # a jump on top of an unsettled one keeps its start
                self._jump_mono = mono
                self._seen_unvouched = set()
                self._vouched_since = {}
            self._jump = f"wall clock jumped {jump:+.0f} s against the monotonic clock"
            log.warning("clock: %s; untrusted until a time source vouches for it", self._jump)
        self._offset = offset
        votes = {s.name: s.vote(wall, mono) for s in self.sources}
        if wall < self.build_epoch - 86400:
            reasons.append(f"clock reads {_iso(wall)}, before this software was built "
                           f"({_iso(self.build_epoch)[:10]})")
        elif wall > self.build_epoch + 30 * 365.25 * 86400:
            reasons.append(f"clock reads {_iso(wall)}, implausibly far in the future")
        reasons += [v.detail for v in votes.values() if v.verdict is False]
        vouching = [s for s in self.sources if votes[s.name].verdict is True]
        for s in self.sources:
            if votes[s.name].verdict is True:
                self._vouched_since.setdefault(s.name, mono)
            else:
                self._seen_unvouched.add(s.name)
                self._vouched_since.pop(s.name, None)
        if not vouching:
            reasons.append("no time source vouches for the clock: "
                           + "; ".join(v.detail for v in votes.values()))
        elif self._jump is not None:
            if any(self._settles_jump(s, mono) for s in vouching):
                log.info("clock: the jump is vouched for; trusted again")
                self._jump = None
            else:
                reasons.append(self._jump + "; waiting for a time source to vouch for it")
        self.state = TrustState(not reasons, reasons,
                                {n: v.detail for n, v in votes.items()})
        return self.state

    def _settles_jump(self, s: TimeSource, mono: float) -> bool:
        if mono <= self._jump_mono:
            return s.independent
        if s.independent:
            return True
        if s.name == "kernel":
            since = self._vouched_since.get(s.name, mono)
            return s.name in self._seen_unvouched or mono - since >= self.kernel_rejoin_s
        return s.name in self._seen_unvouched  # e.g. a simulated clock that re-synced

    def close(self) -> None:
        """Release every source."""
        for s in self.sources:
            s.close()


def _iso(t: float) -> str:
    try:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{t:.0f} s since 1970"
