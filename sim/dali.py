"""DALI gateway emulator on a pseudo-terminal: the agent's driver talks to it unmodified.

The gateway side speaks the ATX LED HAT line protocol or the Foxtron DALI232 protocol as
``drivers.dali.codecs`` documents them: one answer per transmitted frame (two for a
send-twice request), the HAT's ``d`` (bus power) and ``v`` (version) queries, Foxtron's
``05`` events (bus power; checksum error and invalid command for malformed requests). The
bus side is python-dali's fake control gear (``dali.tests.fakes.Gear``) with the D4i
memory banks 202–206 of python-dali's own tests, extended where the fakes are silent:

- QueryStatus, QueryLampFailure;
- POWER ON LEVEL, SYSTEM FAILURE LEVEL and FADE TIME (set through DTR0, queried), which
  real gear applies on its own: :meth:`DaliEmulator.mains_cycle` (mains returns →
  power-on level) and :meth:`DaliEmulator.fail_bus_power` (the DALI bus loses power, as
  when the Pi and its HAT die → system failure level; the gear stops answering);
- active energy and power (bank 202) that grow with level × time from a rated power,
  integrated on an injectable clock (``agent.clock``) so a test can run hours in
  seconds and know the exact energy; bank 1's nominal input power = the rated power;
  bank 0's serial number differs per gear.

Configuration commands only take effect when the request says "send twice" (as real
gear ignores a single one). DT6/DT8 commands are decoded for the device type enabled by
the EnableDeviceType just before them.

Faults (for tests and demos), injected per request: ``collision`` (X), ``resend`` (Z,
HAT only), ``silent`` (no reply), ``garbled``, ``late`` (reply after ``late_s``). The
cable: :meth:`unplug` and :meth:`replug` (a new pty; with ``link`` set, a stable symlink
follows it, as udev's ``/dev/serial/by-id`` names do).

Command line::

    python -m sim.dali --pty [--codec hat|foxtron] [--gear 4] [--fault-rate 0.1] [--link PATH]

prints the device path (e.g. ``/dev/pts/5``, or the link) and serves until interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import select
import sys
import threading
import time
import tty
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from dali import address
from dali.command import Command
from dali.frame import ForwardFrame
from dali.gear.general import (
    EnableDeviceType,
    QueryFadeTimeFadeRate,
    QueryLampFailure,
    QueryPowerOnLevel,
    QueryStatus,
    QuerySystemFailureLevel,
    SetFadeTime,
    SetPowerOnLevel,
    SetSystemFailureLevel,
)
from dali.tests import fakes
from dali.tests.test_memory import (
    FakeBank202,
    FakeBank203,
    FakeBank204,
    FakeBank205,
    FakeBank206,
)

from agent.clock import Clock, SystemClock
from drivers.dali.codecs import CODECS, Reply
from sim.serve import drop_link, point_link, serve_until_interrupted

FAULTS = ("collision", "resend", "silent", "garbled", "late")


def arc_power_fraction(level: int) -> float:
    """DALI's logarithmic dimming curve: arc level 1..254 → share of full light output."""
    if level <= 0:
        return 0.0
    return 10 ** ((level - 1) / (253 / 3) - 1) / 100


class PoleGear(fakes.Gear):
    """A D4i LED driver: python-dali's fake gear plus status, lamp failure, fail-safe
    levels and energy (see the module docstring)."""

    def __init__(self, shortaddr: int | None = None, rated_w: float = 100.0,
                 random_preload: list[int] | None = None, groups: set[int] | None = None,
                 devicetypes: list[int] | None = None, clock: Clock | None = None,
                 serial: int = 1) -> None:
        super().__init__(shortaddr, groups=set(groups or ()), devicetypes=devicetypes or [6],
                         random_preload=list(random_preload or []),
                         memory_banks=(fakes.FakeBank0, fakes.FakeBank1, FakeBank202, FakeBank203,
                                       FakeBank204, FakeBank205, FakeBank206))
        self.clock = clock or SystemClock()
        self._rated_w = rated_w
        self.lamp_failure = False
        self.power_on_level = 254           # DALI's factory defaults
        self.system_failure_level = 254
        self.fade_time = 0
        self.energy_wh = 0.0                # exact, for tests; bank 202 holds whole Wh
        self.bus_powered = True
        #: ``(clock.time(), arc level)`` at each change of the output, newest last (at most
        #: 10,000): when each level was set, on the gear's own (possibly simulated) clock
        self.history: deque[tuple[float, int]] = deque(maxlen=10_000)
        self._t = self.clock.monotonic()
        self.memory_banks[0].set_memory_data([None] * 11 + list(serial.to_bytes(8, "big")))
        self.rated_w = rated_w
        self._update_energy()

    @property
    def rated_w(self) -> float:
        """Full-output input power (W); also bank 1's nominal input power."""
        return self._rated_w

    @rated_w.setter
    def rated_w(self, watts: float) -> None:
        self._update_energy()
        self._rated_w = watts
        self.memory_banks[1].set_memory_data([None] * 0x15 + list(
            min(65534, round(watts)).to_bytes(2, "big")))

    @property
    def power_w(self) -> float:
        """Input power now."""
        return 0.0 if self.lamp_failure else self._rated_w * arc_power_fraction(self.level)

    def _update_energy(self) -> None:
        now = self.clock.monotonic()
        if hasattr(self, "_rated_w"):
            self.energy_wh += self.power_w * (now - self._t) / 3600
        self._t = now
        bank = self.memory_banks[202]
        # scale 10^0: Wh and W (FakeBank202's layout: 0x04 scale, 0x05-0x0A energy,
        # 0x0B scale, 0x0C-0x0F power)
        bank.set_memory_data([None, None, None, None, 0x00, *int(self.energy_wh).to_bytes(6, "big"),
                              0x00, *round(self.power_w).to_bytes(4, "big")])

    def set_level_now(self, level: int) -> None:
        """Change the output by itself (mains return, bus power failure)."""
        self._update_energy()
        before = self.level
        if level != 255:            # MASK: keep the level
            self.level = max(0, min(level, self.level_max)) if level else 0
        self._update_energy()
        if self.level != before:
            self.history.append((self.clock.time(), self.level))

    def send(self, cmd: Command) -> int | None:
        """Handle one command like real gear would; returns the backward frame or None."""
        if not self.bus_powered:
            return None
        self._update_energy()
        before = self.level
        r = super().send(cmd)
        if self.valid_address(cmd):
            if isinstance(cmd, QueryStatus):
                status = 0
                status |= 0x02 if self.lamp_failure else 0
                status |= 0x04 if self.level > 0 and not self.lamp_failure else 0
                status |= 0x40 if self.shortaddr is None else 0
                return status
            if isinstance(cmd, QueryLampFailure):
                return 0xFF if self.lamp_failure else None
            if isinstance(cmd, SetPowerOnLevel):
                self.power_on_level = self.dtr0
            elif isinstance(cmd, SetSystemFailureLevel):
                self.system_failure_level = self.dtr0
            elif isinstance(cmd, SetFadeTime):
                self.fade_time = min(self.dtr0, 15)
            elif isinstance(cmd, QueryPowerOnLevel):
                return self.power_on_level
            elif isinstance(cmd, QuerySystemFailureLevel):
                return self.system_failure_level
            elif isinstance(cmd, QueryFadeTimeFadeRate):
                return (self.fade_time << 4) | 7
        if self.level != before:
            self._update_energy()
            self.history.append((self.clock.time(), self.level))
        return r


@dataclass
class EmulatorStats:
    """What the emulator saw."""

    requests: int = 0
    malformed: int = 0
    single_config_ignored: int = 0
    faults_injected: int = 0
    late_replies_sent: int = 0          # ``late`` replies written (after their delay)
    commands: list[str] = field(default_factory=list)


class DaliEmulator:
    """A DALI gateway + bus of fake gear behind a pseudo-terminal."""

    def __init__(self, gear: list[fakes.Gear], codec: str = "hat", fault_rate: float = 0.0,
                 seed: int = 0, late_s: float = 0.5, link: Path | None = None) -> None:
        self.gear = gear
        self.codec_name = codec
        self.fault_rate = fault_rate
        self.rng = random.Random(seed)
        self.late_s = late_s
        #: a slow gateway: every answer comes this late (± ``reply_jitter_s``, seeded)
        self.reply_delay_s = 0.0
        self.reply_jitter_s = 0.0
        self.script: deque[str] = deque()
        self.stats = EmulatorStats()
        self.link = Path(link) if link else None
        self.bus_powered = True
        self._dt = 0
        self._thread: threading.Thread | None = None
        self._plugged = False
        self._open_pty()

    def _open_pty(self) -> None:
        self.codec = CODECS[self.codec_name]()
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        tty.setraw(self.master)
        self.pty = os.ttyname(self._slave)
        point_link(self.link, self.pty)
        self._stop = threading.Event()

    @property
    def path(self) -> str:
        """What a driver opens: the link when there is one, else the pty."""
        return str(self.link) if self.link is not None else self.pty

    def start(self) -> DaliEmulator:
        """Start serving."""
        self._plugged = True
        self._thread = threading.Thread(target=self._run, name="dali-emulator", daemon=True)
        self._thread.start()
        return self

    def inject(self, *faults: str) -> None:
        """Queue faults for the next requests, in order (one per request)."""
        for f in faults:
            if f not in FAULTS:
                raise ValueError(f"unknown fault {f!r}; choose from {', '.join(FAULTS)}")
        self.script.extend(faults)

    def unplug(self) -> None:
        """Pull the cable: the pty goes away under the driver (the link dangles)."""
        self._plugged = False
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        drop_link(self.link)

    def replug(self) -> None:
        """Plug the cable back in: a new pty (the link, if any, now points at it)."""
        if self._plugged:
            self.unplug()
        self._open_pty()
        self.start()

    def stop(self) -> None:
        """Stop serving and close the pty."""
        if self._plugged:
            self.unplug()

    def fail_bus_power(self) -> None:
        """The DALI bus loses power: every gear goes to its system failure level and stops
        answering (the HAT reports ``D00``, the Foxtron converter sends event ``05 01``)."""
        self.bus_powered = False
        for g in self.gear:
            g.bus_powered = False
            if isinstance(g, PoleGear):
                g.set_level_now(g.system_failure_level)
        if self.codec_name == "foxtron":
            self._write(self.codec.encode_reply(Reply("event", 1)))

    def restore_bus_power(self) -> None:
        """Bus power returns; the gear answers again (and keeps its level)."""
        self.bus_powered = True
        for g in self.gear:
            g.bus_powered = True
        if self.codec_name == "foxtron":
            self._write(self.codec.encode_reply(Reply("event", 0)))

    def mains_cycle(self) -> None:
        """Mains power off and on: every gear comes back at its power-on level."""
        for g in self.gear:
            if isinstance(g, PoleGear):
                g.set_level_now(g.power_on_level)

    # -- serving ----------------------------------------------------------------------
    def _run(self) -> None:
        stop, master = self._stop, self.master
        while not stop.is_set():
            try:
                ready, _, _ = select.select([master], [], [], 0.05)
                if not ready:
                    continue
                data = os.read(master, 1024)
            except OSError:
                return
            for req in self.codec.feed_requests(data):
                self._serve(req)

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self.master, data)

    def _reply(self, reply: Reply, bits: int, value: int) -> bytes:
        if self.codec_name == "foxtron":
            return self.codec.encode_reply(reply, bits, value)  # type: ignore[call-arg]
        return self.codec.encode_reply(reply)

    def _serve(self, req: tuple[int, int, bool] | str | None) -> None:
        self.stats.requests += 1
        if req is None:
            self.stats.malformed += 1
            if self.codec_name == "foxtron":     # "checksum error / invalid command" event
                self._write(self.codec.encode_reply(Reply("event", 6)))
            return                               # the HAT: undocumented, stay silent
        if isinstance(req, str):                 # HAT d / v
            raw = (f"D{2 if self.bus_powered else 0:02X}" if req == "d" else "V0101").encode()
            self._write(raw + b"\n")
            return
        bits, value, twice = req
        fault = self.script.popleft() if self.script else None
        if fault is None and self.fault_rate and self.rng.random() < self.fault_rate:
            fault = self.rng.choice(FAULTS)
        if fault == "resend" and self.codec_name != "hat":
            fault = "silent"                     # Foxtron has no transmit-collision reply
        if fault:
            self.stats.faults_injected += 1
        if fault == "resend":  # the frame never reached the bus
            self._write(self.codec.encode_reply(Reply("resend")))
            return
        reply = self.handle(bits, value, twice)
        if fault == "silent":
            return
        if fault == "garbled":
            self._write(b"J\x07Q\n" if self.codec_name == "hat" else b"\x01ZZ\x17")
            return
        if fault == "collision" and reply.kind == "backward":
            reply = Reply("collision")
        if fault == "late":
            time.sleep(self.late_s)
        if self.reply_delay_s > 0:
            time.sleep(max(0.0, self.reply_delay_s + self.rng.uniform(-self.reply_jitter_s,
                                                                      self.reply_jitter_s)))
        out = self._reply(reply, bits, value)
        self._write(out * (2 if twice else 1))   # one answer per transmitted frame
        if fault == "late":
            self.stats.late_replies_sent += 1

    def handle(self, bits: int, value: int, twice: bool) -> Reply:
        """Put one forward frame on the fake bus; return what the gateway reports."""
        if bits != 16 or not self.bus_powered:
            self._dt = 0
            return Reply("none")  # control-device (24-bit) traffic: no devices here
        cmd = Command.from_frame(ForwardFrame(16, value), devicetype=self._dt)
        self.stats.commands.append(str(cmd))
        del self.stats.commands[:-200]
        if isinstance(cmd, EnableDeviceType):
            self._dt = cmd.param
            return Reply("none")
        self._dt = 0
        if cmd.sendtwice and not twice:
            self.stats.single_config_ignored += 1
            return Reply("none")
        answers = [r for r in (g.send(cmd) for g in self.gear) if r is not None]
        if not answers:
            return Reply("none")
        if len(answers) > 1:
            return Reply("collision")
        return Reply("backward", answers[0])


def make_gear(n: int, seed: int = 0, addressed: bool = True,
              clock: Clock | None = None) -> list[PoleGear]:
    """``n`` D4i drivers, short addresses 0..n-1 (or unaddressed), groups by parity."""
    rng = random.Random(seed)
    return [PoleGear(i if addressed else None, rated_w=rng.choice([60.0, 90.0, 120.0]),
                     groups={i % 2}, clock=clock, serial=1000 + i) for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    """``python -m sim.dali --pty``: serve an emulated gateway until interrupted."""
    p = argparse.ArgumentParser(prog="python -m sim.dali", description=__doc__.split("\n\n")[0])
    p.add_argument("--pty", action="store_true", required=True, help="serve on a new pty")
    p.add_argument("--codec", choices=sorted(CODECS), default="hat")
    p.add_argument("--gear", type=int, default=4, help="number of control gear (4)")
    p.add_argument("--unaddressed", action="store_true", help="gear without short addresses")
    p.add_argument("--fault-rate", type=float, default=0.0, help="share of requests faulted")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--link", type=Path, help="also make this symlink to the pty")
    a = p.parse_args(argv)
    if not 0 <= a.fault_rate <= 1 or not 0 <= a.gear <= 64:
        p.error("--fault-rate must be 0..1 and --gear 0..64")
    emu = DaliEmulator(make_gear(a.gear, a.seed, not a.unaddressed), a.codec, a.fault_rate,
                       a.seed, link=a.link).start()
    return serve_until_interrupted(emu, f"{a.codec} gateway with {a.gear} gear")


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["DaliEmulator", "PoleGear", "address", "make_gear"]
