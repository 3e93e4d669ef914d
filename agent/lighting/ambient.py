"""An optional ambient-light input: is it dark, whatever the sun's position says?

The reading comes from a file holding one number, the illuminance in lux, that a sensor
daemon (a BH1750/TSL2591 reader, a DALI-2 light sensor bridge, a photocell on a GPIO)
rewrites regularly: ``/run/polelink/lux`` by default. The lighting service reads it each
tick (only the first 64 bytes, and only from a regular file: a FIFO or a device would
block the lighting thread): dark below ``dark_below_lux``. A missing, unparsable,
negative or stale file (older than ``max_age_s``) gives no opinion, and the schedule
alone decides.

A sensor can only switch lamps *on* against the schedule (a storm at noon), never off at
night: a sensor that reads "bright" at night (failed, dirty, lit by the lamp itself) must
not darken the street (``agent.lighting.envelope`` rule 4).
"""

from __future__ import annotations

import math
from pathlib import Path

from agent.lighting.smallfile import read_regular


class AmbientFile:
    """See the module docstring."""

    def __init__(self, path: Path, dark_below_lux: float = 50.0, max_age_s: float = 120.0) -> None:
        self.path = Path(path)
        self.dark_below_lux = dark_below_lux
        self.max_age_s = max_age_s
        self.last_lux: float | None = None
        self.problem = ""

    def dark(self, wall: float) -> bool | None:
        """True (dark), False (bright) or None (no trustworthy reading) at wall time ``wall``."""
        try:
            raw, mtime = read_regular(self.path)    # never blocks the tick
            text = raw.decode("ascii", "replace").strip()
            lux = float(text)
        except (OSError, ValueError) as e:
            self.problem, self.last_lux = f"ambient light: {e}", None
            return None
        if not math.isfinite(lux) or lux < 0:
            self.problem, self.last_lux = f"ambient light: bad reading {text!r}", None
            return None
        if wall - mtime > self.max_age_s:
            self.problem = f"ambient light: reading is {wall - mtime:.0f} s old"
            self.last_lux = None
            return None
        self.problem, self.last_lux = "", lux
        return lux < self.dark_below_lux
