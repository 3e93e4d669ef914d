"""DALI gateway emulator on a pseudo-terminal: the agent's driver talks to it unmodified.

The gateway side speaks the ATX LED HAT line protocol or the Foxtron DALI232 protocol
(see ``drivers.dali.codecs``); the bus side is python-dali's fake control gear
(``dali.tests.fakes.Gear``) with the D4i memory banks 202–206 of python-dali's own tests.
It is extended where the fakes are silent: QueryStatus, QueryLampFailure, and active
energy/power (bank 202) that grow with level × time from a rated power.

Configuration commands only take effect when the request says "send twice" (as real
gear ignores a single one). DT6/DT8 commands are decoded for the device type enabled by
the EnableDeviceType just before them.

Faults (for tests and demos), injected per request: ``collision`` (X), ``resend`` (Z),
``silent`` (no reply), ``garbled``, ``late`` (reply after ``late_s``), and :meth:`unplug`.

Command line::

    python -m sim.dali --pty [--codec hat|foxtron] [--gear 4] [--fault-rate 0.1]

prints the device path (e.g. ``/dev/pts/5``) and serves until interrupted.
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

from dali import address
from dali.command import Command
from dali.frame import ForwardFrame
from dali.gear.general import EnableDeviceType, QueryLampFailure, QueryStatus
from dali.tests import fakes
from dali.tests.test_memory import (
    FakeBank202,
    FakeBank203,
    FakeBank204,
    FakeBank205,
    FakeBank206,
)

from drivers.dali.codecs import CODECS, Reply
from sim.serve import serve_until_interrupted

FAULTS = ("collision", "resend", "silent", "garbled", "late")


def arc_power_fraction(level: int) -> float:
    """DALI's logarithmic dimming curve: arc level 1..254 → share of full light output."""
    if level <= 0:
        return 0.0
    return 10 ** ((level - 1) / (253 / 3) - 1) / 100


class PoleGear(fakes.Gear):
    """A D4i LED driver: python-dali's fake gear plus status, lamp failure and energy."""

    def __init__(self, shortaddr: int | None = None, rated_w: float = 100.0,
                 random_preload: list[int] | None = None, groups: set[int] | None = None,
                 devicetypes: list[int] | None = None) -> None:
        super().__init__(shortaddr, groups=set(groups or ()), devicetypes=devicetypes or [6],
                         random_preload=list(random_preload or []),
                         memory_banks=(fakes.FakeBank0, fakes.FakeBank1, FakeBank202, FakeBank203,
                                       FakeBank204, FakeBank205, FakeBank206))
        self.rated_w = rated_w
        self.lamp_failure = False
        self.energy_wh = 0.0
        self._t = time.monotonic()
        self._update_energy()

    def _update_energy(self) -> None:
        now = time.monotonic()
        power = self.rated_w * arc_power_fraction(self.level) if not self.lamp_failure else 0.0
        self.energy_wh += power * (now - self._t) / 3600
        self._t = now
        wh = int(self.energy_wh)
        bank = self.memory_banks[202]
        # scale 10^0: Wh and W (FakeBank202's layout: 0x04 scale, 0x05-0x0A energy,
        # 0x0B scale, 0x0C-0x0F power)
        bank.set_memory_data([None, None, None, None, 0x00, *wh.to_bytes(6, "big"), 0x00,
                              *round(power).to_bytes(4, "big")])

    def send(self, cmd: Command) -> int | None:
        """Handle one command like real gear would; returns the backward frame or None."""
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
        if self.level != before:
            self._update_energy()
        return r


@dataclass
class EmulatorStats:
    """What the emulator saw."""

    requests: int = 0
    malformed: int = 0
    single_config_ignored: int = 0
    faults_injected: int = 0
    commands: list[str] = field(default_factory=list)


class DaliEmulator:
    """A DALI gateway + bus of fake gear behind a pseudo-terminal."""

    def __init__(self, gear: list[fakes.Gear], codec: str = "hat", fault_rate: float = 0.0,
                 seed: int = 0, late_s: float = 0.5) -> None:
        self.gear = gear
        self.codec = CODECS[codec]()
        self.fault_rate = fault_rate
        self.rng = random.Random(seed)
        self.late_s = late_s
        self.script: deque[str] = deque()
        self.stats = EmulatorStats()
        self._dt = 0
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        tty.setraw(self.master)
        self.path = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._plugged = True
        self._thread = threading.Thread(target=self._run, name="dali-emulator", daemon=True)

    def start(self) -> DaliEmulator:
        """Start serving."""
        self._thread.start()
        return self

    def inject(self, *faults: str) -> None:
        """Queue faults for the next requests, in order (one per request)."""
        for f in faults:
            if f not in FAULTS:
                raise ValueError(f"unknown fault {f!r}; choose from {', '.join(FAULTS)}")
        self.script.extend(faults)

    def unplug(self) -> None:
        """Pull the cable: the pty goes away under the driver."""
        self._plugged = False
        self._stop.set()
        self._thread.join(timeout=2)
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    def stop(self) -> None:
        """Stop serving and close the pty."""
        if self._plugged:
            self.unplug()

    # -- serving ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.master], [], [], 0.05)
                if not ready:
                    continue
                data = os.read(self.master, 1024)
            except OSError:
                return
            for req in self.codec.feed_requests(data):
                self._serve(req)

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self.master, data)

    def _serve(self, req: tuple[int, int, bool] | None) -> None:
        self.stats.requests += 1
        if req is None:
            self.stats.malformed += 1
            self._write(b"?\n" if self.codec.name == "hat" else b"\x01GARBAGE\x17")
            return
        fault = self.script.popleft() if self.script else None
        if fault is None and self.fault_rate and self.rng.random() < self.fault_rate:
            fault = self.rng.choice(FAULTS)
        if fault:
            self.stats.faults_injected += 1
        if fault == "resend":  # the frame never reached the bus
            self._write(self.codec.encode_reply(Reply("resend")))
            return
        reply = self.handle(*req)
        if fault == "silent":
            return
        if fault == "garbled":
            self._write(b"J\x07Q\n" if self.codec.name == "hat" else b"\x01ZZ\x17")
            return
        if fault == "collision" and reply.kind == "backward":
            reply = Reply("collision")
        if fault == "late":
            time.sleep(self.late_s)
        self._write(self.codec.encode_reply(reply))

    def handle(self, bits: int, value: int, twice: bool) -> Reply:
        """Put one forward frame on the fake bus; return what the gateway reports."""
        if bits != 16:
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


def make_gear(n: int, seed: int = 0, addressed: bool = True) -> list[PoleGear]:
    """``n`` D4i drivers, short addresses 0..n-1 (or unaddressed), groups by parity."""
    rng = random.Random(seed)
    return [PoleGear(i if addressed else None, rated_w=rng.choice([60.0, 90.0, 120.0]),
                     groups={i % 2}) for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    """``python -m sim.dali --pty``: serve an emulated gateway until interrupted."""
    p = argparse.ArgumentParser(prog="python -m sim.dali", description=__doc__.split("\n\n")[0])
    p.add_argument("--pty", action="store_true", required=True, help="serve on a new pty")
    p.add_argument("--codec", choices=sorted(CODECS), default="hat")
    p.add_argument("--gear", type=int, default=4, help="number of control gear (4)")
    p.add_argument("--unaddressed", action="store_true", help="gear without short addresses")
    p.add_argument("--fault-rate", type=float, default=0.0, help="share of requests faulted")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    emu = DaliEmulator(make_gear(a.gear, a.seed, not a.unaddressed), a.codec, a.fault_rate,
                       a.seed).start()
    return serve_until_interrupted(emu, f"{a.codec} gateway with {a.gear} gear")


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["DaliEmulator", "PoleGear", "address", "make_gear"]
