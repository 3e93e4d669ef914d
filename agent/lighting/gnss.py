"""A GNSS receiver as a time source: NMEA ``RMC`` sentences from a serial port.

A reader thread opens the port (exclusively), parses each line with pynmea2 and keeps
the latest ``RMC`` fix with the monotonic time it arrived. :meth:`GnssTime.vote` projects
that fix to now and compares it with the wall clock:

- a valid (``A``) fix younger than ``max_age_s`` within ``tolerance_s``: vouches;
- a valid, fresh fix further off: **contradicts** (the clock drifted or was set wrong);
- no fix, a void (``V``) fix, a stale one, or no receiver: no opinion.

Lines that are not NMEA, fail their checksum or are not ``RMC`` are counted and skipped;
a port that fails is reopened with back-off. Nothing here blocks the caller.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import pynmea2
import serial

from agent.clock import Clock, SystemClock
from agent.lighting.clocktrust import Vote

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fix:
    """One RMC fix: the receiver's UTC time and when we received it."""

    utc: float
    valid: bool
    received_mono: float


class GnssTime:
    """See the module docstring."""

    name = "gnss"
    independent = True

    def __init__(self, port: str, baudrate: int = 9600, tolerance_s: float = 2.0,
                 max_age_s: float = 10.0, clock: Clock | None = None) -> None:
        self.port = port
        self.baudrate = baudrate
        self.tolerance_s = tolerance_s
        self.max_age_s = max_age_s
        self.clock = clock or SystemClock()
        self.fix: Fix | None = None
        self.lines = self.rejected = 0
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gnss", daemon=True)
        self._thread.start()

    def vote(self, wall: float, mono: float) -> Vote:
        """Compare the latest fix, projected to now, with ``wall``."""
        f = self.fix
        if f is None:
            return Vote(None, f"gnss: no fix from {self.port}"
                              + (f" ({self.error})" if self.error else ""))
        age = mono - f.received_mono
        if age > self.max_age_s:
            return Vote(None, f"gnss: last fix is {age:.0f} s old")
        if not f.valid:
            return Vote(None, "gnss: receiver has no valid fix (status V)")
        diff = wall - (f.utc + age)
        if abs(diff) <= self.tolerance_s:
            return Vote(True, f"gnss: agrees ({diff:+.2f} s)")
        return Vote(False, f"gnss: wall clock is {diff:+.0f} s off GNSS time")

    def close(self) -> None:
        """Stop the reader and release the port."""
        self._stop.set()
        self._thread.join(timeout=3)

    def feed_line(self, line: str, mono: float) -> None:
        """Take one NMEA line received at monotonic time ``mono``."""
        self.lines += 1
        try:
            msg = pynmea2.parse(line.strip(), check=True)
        except (pynmea2.ParseError, ValueError, AttributeError, TypeError):
            self.rejected += 1
            return
        if not isinstance(msg, pynmea2.types.talker.RMC):
            return
        try:
            when = msg.datetime
        except (ValueError, TypeError, AttributeError):
            self.rejected += 1
            return
        if when is None:
            self.rejected += 1
            return
        self.fix = Fix(when.timestamp(), msg.status == "A", mono)

    def _run(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                port = serial.Serial(self.port, self.baudrate, timeout=0.5, exclusive=True)
            except (serial.SerialException, OSError, ValueError) as e:
                self.error = f"cannot open {self.port}: {e}"
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff, self.error = 1.0, ""
            try:
                buf = b""
                while not self._stop.is_set():
                    buf += port.read(max(1, port.in_waiting))
                    while b"\n" in buf:
                        raw, buf = buf.split(b"\n", 1)
                        self.feed_line(raw.decode("ascii", "replace"), self.clock.monotonic())
                    if len(buf) > 512:      # no newline in a long run: line noise
                        self.rejected += 1
                        buf = b""
            except (serial.SerialException, OSError) as e:
                self.error = f"{self.port}: {e}"
                log.warning("gnss: %s; reopening", self.error)
            finally:
                port.close()
