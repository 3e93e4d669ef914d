"""Which time the node may trust, and so which schedule it follows (docs/lighting: the
fail-safe chain).

- ``trusted``: synchronised by NTP this boot (``ntptime`` when online), or the RTC was
  synchronised less than ``rtc_trust_s`` ago (it keeps time across a reset) → the
  configured program, astro steps included.
- ``never-synced``: the clock reads a plausible time but was never synchronised (the node has
  never been online) → ``fixed_program`` (fixed times only), raised to full output while its
  own clock reading puts the sun below ``DUSK_ELEVATION`` (:func:`never_synced_level`): a
  fixed program written for one season must not leave the road dark after an earlier
  sunset (Hamburg in December: sunset 15:00 UTC, a 17:00 local "on" step).
- ``untrusted``: the clock reads before the build date, or earlier than a time already seen
  (it went backwards), or the RTC's last sync is too old → full output (100 %): the node
  cannot tell day from night, so it keeps the road lit.
"""

import json
import time

from common import sun

#: 2026-11-01T00:00Z: a clock reading earlier than this is not plausible.
BUILD_EPOCH = 1793491200
#: Sun elevation (degrees) below which a never-synchronised node is lit whatever its fixed
#: program says: civil dusk plus a margin for a clock a little off.
DUSK_ELEVATION = 6.0
#: Seconds between 1970 and 2000, for ports whose time.time() counts from 2000.
_EPOCH_2000 = 946684800


def _unix_offset():
    try:
        return _EPOCH_2000 if time.gmtime(0)[0] == 2000 else 0
    except Exception:
        return 0


class SystemClock:
    """The device clock; ``sync()`` tries NTP once (``ntptime`` where present)."""

    def __init__(self):
        self.offset = _unix_offset()

    def now(self):
        """POSIX epoch seconds."""
        return time.time() + self.offset

    def sync(self):
        """True when NTP set the clock."""
        try:
            import ntptime
            ntptime.settime()
            return True
        except Exception:
            return False


class FileClock:
    """An injected time source for tests and simulations: JSON ``{"epoch": E, "rate": R,
    "synced": bool}`` in a file, re-read when it changes; time runs ``R`` times fast from E."""

    def __init__(self, path):
        self.path = path
        self._raw = None
        self._load()

    def _load(self):
        with open(self.path) as f:
            raw = f.read()
        if raw != self._raw:
            d = json.loads(raw)
            self._raw = raw
            self.base = float(d["epoch"])
            self.rate = float(d.get("rate", 1))
            self.synced = bool(d.get("synced", True))
            self.t0 = time.ticks_ms()

    def now(self):
        """Simulated epoch seconds."""
        try:  # noqa: SIM105
            self._load()
        except (OSError, ValueError, KeyError):
            pass
        return self.base + time.ticks_diff(time.ticks_ms(), self.t0) / 1000 * self.rate

    def sync(self):
        """True when the file says the time came from NTP."""
        return self.synced


class Trust:
    """Applies the rules above; ``state`` (a dict persisted by the caller) holds
    ``synced_at`` and ``last_seen``."""

    def __init__(self, clock, state, rtc_trust_s):
        self.clock = clock
        self.state = state
        self.rtc_trust_s = rtc_trust_s
        self.synced_now = False
        self.reason = ""

    def try_sync(self):
        """Ask the clock to synchronise (NTP); remember when it worked."""
        if self.clock.sync():
            self.synced_now = True
            self.state["synced_at"] = self.clock.now()
            self.state["last_seen"] = self.state["synced_at"]
        return self.synced_now

    def mode(self, now):
        """``trusted``, ``never-synced`` or ``untrusted`` at clock reading ``now``;
        ``reason`` says why it is untrusted."""
        self.reason = ""
        if now < BUILD_EPOCH:
            self.reason = "before the build date"
            return "untrusted"
        if now < self.state.get("last_seen", 0) - 300:
            self.reason = "ran backwards"
            return "untrusted"
        self.state["last_seen"] = max(now, self.state.get("last_seen", 0))
        synced_at = self.state.get("synced_at")
        if self.synced_now:
            return "trusted"
        if synced_at is None:
            return "never-synced"
        if now - synced_at <= self.rtc_trust_s:
            return "trusted"
        self.reason = "not synchronised for more than rtc_trust_s"
        return "untrusted"


def never_synced_level(fixed_level, lat, lon, now, full=100):
    """The level of a never-synchronised node: ``fixed_level`` (the fixed program's), but
    ``full`` while the sun, by this clock reading, is below ``DUSK_ELEVATION`` or when the
    fixed program gives no level."""
    if fixed_level is None or sun.elevation_at(lat, lon, now) < DUSK_ELEVATION:
        return full
    return fixed_level
