"""Modbus RTU lighting controller emulator (a 0-10 V / relay dimmer behind RS-485).

pymodbus's own RTU server holds the controller's registers; it sits at one end of a
virtual serial cable made of two pseudo-terminals bridged by a thread. The driver opens
the other end (:attr:`ModbusEmulator.path`). The bridge injects faults like a flaky RS-485
line: ``drop`` (the reply never arrives), ``garble`` (a corrupted reply byte: bad CRC),
``late`` (the reply arrives after ``late_s``, or sooner on :meth:`release_late`), and
:meth:`unplug`.

The emulated controller (register map = :data:`DEFAULT_MAP`; the first entries are the
agent's config defaults): holding register 0 = level in 0.1 % (0–1000), coil 0 = output
on, input register 0 = power in 0.1 W, input registers 1–2 = energy in Wh (32-bit, high
word first), input register 3 = status (bit 0: lamp failure), holding register 2 = the
level it falls back to by itself when the master falls silent for ``comm_timeout_s``
(its watchdog), holding register 3 = its level after a mains cycle (:meth:`mains_cycle`);
both default to 100 %. Power is ``rated_w x level`` while on (0 with a failed lamp);
energy grows with power x time on an injectable clock (``agent.clock``).

Command line::

    python -m sim.modbus --pty [--unit 1] [--rated-w 150] [--comm-timeout 60] [--link PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import select
import sys
import threading
import time
import tty
from collections import deque
from pathlib import Path

from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from agent.clock import Clock, SystemClock
from sim.serve import drop_link, point_link, serve_until_interrupted

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

DEFAULT_MAP = {"level_register": 0, "level_scale": 1000, "onoff_coil": 0,
               "power_register": 0, "power_scale_w": 0.1, "energy_register": 1,
               "energy_scale_wh": 1.0, "status_register": 3, "lamp_failure_bit": 0,
               "failsafe_level_register": 2, "power_on_level_register": 3}
FAULTS = ("drop", "garble", "late")


def _times_open(path: str) -> int:
    """How many of this process's descriptors are ``path`` (Linux /proc; elsewhere: 2
    after 0.3 s)."""
    target = os.path.realpath(path)
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        time.sleep(0.3)
        return 2
    n = 0
    for fd in fds:
        try:
            n += os.readlink(f"/proc/self/fd/{fd}") == target
        except OSError:
            continue
    return n


class ModbusEmulator:
    """A dimmer on a virtual RS-485 line with fault injection; see the module docstring."""

    def __init__(self, unit: int = 1, rated_w: float = 150.0, late_s: float = 0.6,
                 clock: Clock | None = None, comm_timeout_s: float | None = None,
                 link: Path | None = None) -> None:
        self.unit = unit
        self.rated_w = rated_w
        self.late_s = late_s
        self.clock = clock or SystemClock()
        self.comm_timeout_s = comm_timeout_s
        self.link = Path(link) if link else None
        self.level_raw = 0          # holding register 0, 0.1 % steps
        self.on = False             # coil 0
        self.failsafe_raw = 1000    # holding register 2
        self.power_on_raw = 1000    # holding register 3
        self.lamp_failure = False   # input register 3, bit 0
        self.watchdog_trips = 0
        self.energy_wh = 0.0
        self.script: deque[str] = deque()
        self._late_gate = threading.Event()
        self.late_replies_sent = 0
        self.faults_injected = 0
        self.requests = 0
        bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
        regs = [SimData(0, count=16, values=0, datatype=DataType.UINT16)]
        self.device = SimDevice(id=unit, simdata=(bits, list(bits), list(regs), list(regs)),
                                action=self._action)
        # two ptys: A (driver side) and B (server side), bridged master to master
        self._mb, self._sb = os.openpty()
        for fd in (self._mb, self._sb):
            tty.setraw(fd)
        self._server_path = os.ttyname(self._sb)
        self._open_driver_side()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ModbusSerialServer | None = None
        self._threads: list[threading.Thread] = []
        self._t = self.clock.monotonic()
        self._last_request = self._t

    def _open_driver_side(self) -> None:
        self._ma, self._sa = os.openpty()
        for fd in (self._ma, self._sa):
            tty.setraw(fd)
        self.pty = os.ttyname(self._sa)
        point_link(self.link, self.pty)
        self._bridge_stop = threading.Event()

    @property
    def path(self) -> str:
        """What the driver opens: the link when there is one, else the pty."""
        return str(self.link) if self.link is not None else self.pty

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> ModbusEmulator:
        """Start the RTU server and the bridge."""
        ready = threading.Event()

        async def serve_async() -> None:
            self._server = ModbusSerialServer(self.device, framer="rtu", port=self._server_path,
                                              baudrate=19200, timeout=0.05,
                                              ignore_missing_devices=True,
                                              # never reopen a path: ptys are recycled
                                              reconnect_delay=0)
            ready.set()
            await self._server.serve_forever()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
            with contextlib.suppress(Exception):  # stopping the loop ends serve_forever
                self._loop.run_until_complete(serve_async())

        for target in (serve, self._bridge, self._watchdog):
            t = threading.Thread(target=target, daemon=True, name=f"modbus-{target.__name__}")
            t.start()
            self._threads.append(t)
        ready.wait(5)
        # the server opens its port inside serve_forever(): wait until it holds it (a
        # fixed sleep here was a guess that a busy machine could outrun)
        end = time.monotonic() + 10
        while time.monotonic() < end and _times_open(self._server_path) < 2:  # ours + it
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop everything and close the ptys."""
        self._stop.set()
        self._bridge_stop.set()
        self._late_gate.set()
        if self._loop and self._server:
            fut = asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop)
            with contextlib.suppress(Exception):
                fut.result(timeout=3)
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._loop.stop)
        for t in self._threads:
            t.join(timeout=3)
        for fd in (self._ma, self._sa, self._mb, self._sb):
            with contextlib.suppress(OSError):
                os.close(fd)

    def unplug(self) -> None:
        """Cut the cable on the driver's side (the link, if any, dangles)."""
        self._bridge_stop.set()
        for fd in (self._ma, self._sa):
            with contextlib.suppress(OSError):
                os.close(fd)
        drop_link(self.link)

    def replug(self) -> None:
        """Plug the cable back in: a new driver-side pty (the link follows it)."""
        self.unplug()
        time.sleep(0.1)
        self._open_driver_side()
        t = threading.Thread(target=self._bridge, daemon=True, name="modbus-bridge")
        t.start()
        self._threads.append(t)

    def mains_cycle(self) -> None:
        """Mains off and on: the output comes back at the power-on level."""
        self._integrate()
        self.level_raw, self.on = self.power_on_raw, self.power_on_raw > 0

    def inject(self, *faults: str) -> None:
        """Queue faults for the next replies, in order."""
        for f in faults:
            if f not in FAULTS:
                raise ValueError(f"unknown fault {f!r}; choose from {', '.join(FAULTS)}")
        self.script.extend(faults)

    def release_late(self) -> None:
        """Let a reply held back by ``late`` go now (a test's way to make "late" mean
        after the driver gave up, at any machine speed)."""
        self._late_gate.set()

    # -- the controller ------------------------------------------------------------------
    @property
    def level_percent(self) -> float:
        """The dimmer's output level (0 when switched off)."""
        return self.level_raw / 10 if self.on else 0.0

    @property
    def power_w(self) -> float:
        """Electrical power drawn now."""
        if self.lamp_failure:
            return 0.0
        return self.rated_w * min(self.level_percent, 100.0) / 100

    def _integrate(self) -> None:
        now = self.clock.monotonic()
        self.energy_wh += self.power_w * (now - self._t) / 3600
        self._t = now

    def _watchdog(self) -> None:
        """The controller's own communication-loss watchdog."""
        while not self._stop.wait(0.05):
            if self.comm_timeout_s is None:
                continue
            if self.clock.monotonic() - self._last_request > self.comm_timeout_s \
                    and (self.level_raw, self.on) != (self.failsafe_raw, self.failsafe_raw > 0):
                self._integrate()
                self.level_raw, self.on = self.failsafe_raw, self.failsafe_raw > 0
                self.watchdog_trips += 1

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      current_registers: list, set_values: list | None) -> None:
        """pymodbus hook on every access: apply writes, fill in live values on reads."""
        self.requests += 1
        self._integrate()
        self._last_request = self.clock.monotonic()
        if set_values is not None:
            for i, v in enumerate(set_values):
                a = address + i
                if function_code in (5, 15) and a == 0:
                    self.on = bool(v)
                if function_code in (6, 16):
                    if a == 0:
                        self.level_raw = int(v)
                    elif a == 2:
                        self.failsafe_raw = int(v)
                    elif a == 3:
                        self.power_on_raw = int(v)
            return
        if function_code == 4:  # input registers: 0 power (0.1 W), 1-2 energy (Wh), 3 status
            wh = int(self.energy_wh)
            live = {0: round(self.power_w * 10) & 0xFFFF, 1: (wh >> 16) & 0xFFFF,
                    2: wh & 0xFFFF, 3: int(self.lamp_failure)}
        elif function_code == 3:
            live = {0: self.level_raw, 2: self.failsafe_raw, 3: self.power_on_raw}
        elif function_code == 1:
            live = {0: self.on}
        else:
            return
        for a, v in live.items():
            i = a - start_address
            if 0 <= i < len(current_registers):
                current_registers[i] = v

    def _bridge(self) -> None:
        stop, ma = self._bridge_stop, self._ma
        while not stop.is_set():
            try:
                ready, _, _ = select.select([ma, self._mb], [], [], 0.05)
            except (OSError, ValueError):
                return
            for fd in ready:
                try:
                    data = os.read(fd, 1024)
                except OSError:
                    return
                if fd == ma:  # request: driver → server
                    self._safe_write(self._mb, data)
                    continue
                fault = self.script.popleft() if self.script else None
                if fault:
                    self.faults_injected += 1
                if fault == "drop":
                    continue
                if fault == "garble":
                    data = data[:-1] + bytes([data[-1] ^ 0x5A])
                if fault == "late":
                    self._late_gate.wait(self.late_s)
                    self._late_gate.clear()
                self._safe_write(ma, data)
                if fault == "late":
                    self.late_replies_sent += 1

    @staticmethod
    def _safe_write(fd: int, data: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(fd, data)


def main(argv: list[str] | None = None) -> int:
    """``python -m sim.modbus --pty``: serve an emulated dimmer until interrupted."""
    p = argparse.ArgumentParser(prog="python -m sim.modbus", description=__doc__.split("\n\n")[0])
    p.add_argument("--pty", action="store_true", required=True)
    p.add_argument("--unit", type=int, default=1)
    p.add_argument("--rated-w", type=float, default=150.0)
    p.add_argument("--comm-timeout", type=float, help="watchdog: seconds without a request "
                   "before the output goes to its failsafe level (off)")
    p.add_argument("--link", type=Path, help="also make this symlink to the pty")
    a = p.parse_args(argv)
    emu = ModbusEmulator(a.unit, a.rated_w, comm_timeout_s=a.comm_timeout, link=a.link).start()
    return serve_until_interrupted(emu, f"Modbus RTU dimmer, unit {a.unit}")


if __name__ == "__main__":
    sys.exit(main())
