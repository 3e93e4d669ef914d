"""GNSS receiver emulator on a pseudo-terminal: NMEA ``RMC`` and ``GGA`` once a second.

The time it reports comes from a clock (the agent's :mod:`agent.clock` kinds, so a test
on a scaled clock gets matching GNSS time) plus ``offset_s`` (a receiver that disagrees
with the pole's clock). ``fix`` switches between a valid (``A``) and a void (``V``) fix;
``garbage`` interleaves line noise and sentences with bad checksums.

Command line::

    python -m sim.gnss --pty [--offset 0] [--no-fix]

prints the device path and serves until interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import tty
from datetime import UTC, datetime

import pynmea2

from agent.clock import Clock, SystemClock
from sim.serve import serve_until_interrupted


def rmc(t: float, valid: bool, lat: float = 21.03, lon: float = 105.85) -> str:
    """An RMC sentence (with checksum) for UTC epoch ``t``."""
    d = datetime.fromtimestamp(t, UTC)
    la, lo = abs(lat), abs(lon)
    return str(pynmea2.RMC("GP", "RMC", (
        d.strftime("%H%M%S.") + f"{d.microsecond // 10000:02d}", "A" if valid else "V",
        f"{int(la):02d}{(la % 1) * 60:07.4f}", "N" if lat >= 0 else "S",
        f"{int(lo):03d}{(lo % 1) * 60:07.4f}", "E" if lon >= 0 else "W",
        "0.0", "0.0", d.strftime("%d%m%y"), "", "", "A" if valid else "N")))


def gga(t: float, valid: bool) -> str:
    """A GGA sentence (position fix data), which a time source must ignore."""
    d = datetime.fromtimestamp(t, UTC)
    return str(pynmea2.GGA("GP", "GGA", (
        d.strftime("%H%M%S.00"), "2101.800", "N", "10551.000", "E", "1" if valid else "0",
        "08", "0.9", "12.0", "M", "-28.0", "M", "", "")))


class GnssEmulator:
    """A receiver behind a pty; see the module docstring."""

    def __init__(self, clock: Clock | None = None, offset_s: float = 0.0, fix: bool = True,
                 period_s: float = 1.0) -> None:
        self.clock = clock or SystemClock()
        self.offset_s = offset_s
        self.fix = fix
        self.garbage = False
        self.period_s = period_s
        self.sent = 0
        self.master, self._slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gnss-emulator", daemon=True)

    def start(self) -> GnssEmulator:
        """Start sending."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and close the pty."""
        self._stop.set()
        self._thread.join(timeout=3)
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _run(self) -> None:
        while not self._stop.is_set():
            t = self.clock.time() + self.offset_s
            lines = [rmc(t, self.fix), gga(t, self.fix)]
            if self.garbage:
                lines = ["\x00\xffnoise", rmc(t, self.fix)[:-2] + "00", *lines]
            with contextlib.suppress(OSError):
                os.write(self.master, ("\r\n".join(lines) + "\r\n").encode("ascii", "replace"))
            self.sent += 1
            self._stop.wait(self.period_s)


def main(argv: list[str] | None = None) -> int:
    """``python -m sim.gnss --pty``: serve an emulated receiver until interrupted."""
    p = argparse.ArgumentParser(prog="python -m sim.gnss", description=__doc__.split("\n\n")[0])
    p.add_argument("--pty", action="store_true", required=True, help="serve on a new pty")
    p.add_argument("--offset", type=float, default=0.0, help="seconds added to the time (0)")
    p.add_argument("--no-fix", action="store_true", help="report a void (V) fix")
    a = p.parse_args(argv)
    emu = GnssEmulator(offset_s=a.offset, fix=not a.no_fix).start()
    return serve_until_interrupted(emu, "GNSS receiver (NMEA 0183, 9600 8N1)")


if __name__ == "__main__":
    sys.exit(main())
