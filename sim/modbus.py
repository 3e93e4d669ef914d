"""Modbus RTU lighting controller emulator (a 0-10 V / relay dimmer behind RS-485).

pymodbus's own RTU server holds the controller's registers; it sits at one end of a
virtual serial cable made of two pseudo-terminals bridged by a thread. The driver opens
the other end (:attr:`ModbusEmulator.path`). The bridge injects faults like a flaky RS-485
line: ``drop`` (the reply never arrives), ``garble`` (a corrupted reply byte: bad CRC),
``late`` (the reply arrives after ``late_s``), and :meth:`unplug`.

The emulated controller (register map = :data:`DEFAULT_MAP`, the same defaults as the
agent's config): holding register 0 = level in 0.1 % (0–1000), coil 0 = output on, input
register 0 = power in 0.1 W, input registers 1–2 = energy in Wh (32-bit, high word
first). Power is ``rated_w x level`` while on; energy grows with power x time.

Command line::

    python -m sim.modbus --pty [--unit 1] [--rated-w 150]
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

from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from sim.serve import serve_until_interrupted

logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

DEFAULT_MAP = {"level_register": 0, "level_scale": 1000, "onoff_coil": 0,
               "power_register": 0, "power_scale_w": 0.1, "energy_register": 1,
               "energy_scale_wh": 1.0}
FAULTS = ("drop", "garble", "late")


class ModbusEmulator:
    """A dimmer on a virtual RS-485 line with fault injection; see the module docstring."""

    def __init__(self, unit: int = 1, rated_w: float = 150.0, late_s: float = 0.6) -> None:
        self.unit = unit
        self.rated_w = rated_w
        self.late_s = late_s
        self.level_raw = 0          # holding register 0, 0.1 % steps
        self.on = False             # coil 0
        self.energy_wh = 0.0
        self.script: deque[str] = deque()
        self.faults_injected = 0
        self.requests = 0
        bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
        regs = [SimData(0, count=16, values=0, datatype=DataType.UINT16)]
        self.device = SimDevice(id=unit, simdata=(bits, list(bits), list(regs), list(regs)),
                                action=self._action)
        # two ptys: A (driver side) and B (server side), bridged master to master
        self._ma, self._sa = os.openpty()
        self._mb, self._sb = os.openpty()
        for fd in (self._ma, self._sa, self._mb, self._sb):
            tty.setraw(fd)
        self.path = os.ttyname(self._sa)
        self._server_path = os.ttyname(self._sb)
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: ModbusSerialServer | None = None
        self._threads: list[threading.Thread] = []
        self._t = time.monotonic()

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

        for target in (serve, self._bridge):
            t = threading.Thread(target=target, daemon=True, name=f"modbus-{target.__name__}")
            t.start()
            self._threads.append(t)
        ready.wait(5)
        time.sleep(0.3)  # let the server open its port
        return self

    def stop(self) -> None:
        """Stop everything and close the ptys."""
        self._stop.set()
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
        """Cut the cable on the driver's side."""
        self._stop.set()
        for fd in (self._ma, self._sa):
            with contextlib.suppress(OSError):
                os.close(fd)

    def inject(self, *faults: str) -> None:
        """Queue faults for the next replies, in order."""
        for f in faults:
            if f not in FAULTS:
                raise ValueError(f"unknown fault {f!r}; choose from {', '.join(FAULTS)}")
        self.script.extend(faults)

    # -- the controller ------------------------------------------------------------------
    @property
    def level_percent(self) -> float:
        """The dimmer's output level (0 when switched off)."""
        return self.level_raw / 10 if self.on else 0.0

    @property
    def power_w(self) -> float:
        """Electrical power drawn now."""
        return self.rated_w * min(self.level_percent, 100.0) / 100

    def _integrate(self) -> None:
        now = time.monotonic()
        self.energy_wh += self.power_w * (now - self._t) / 3600
        self._t = now

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      current_registers: list, set_values: list | None) -> None:
        """pymodbus hook on every access: apply writes, fill in live power/energy on reads."""
        self.requests += 1
        self._integrate()
        if set_values is not None:
            if function_code in (5, 15) and address <= 0 < address + len(set_values):
                self.on = bool(set_values[0 - address])
            if function_code in (6, 16) and address <= 0 < address + len(set_values):
                self.level_raw = int(set_values[0 - address])
            return
        if function_code == 4:  # input registers: 0 power (0.1 W), 1-2 energy (Wh)
            wh = int(self.energy_wh)
            live = {0: round(self.power_w * 10) & 0xFFFF, 1: (wh >> 16) & 0xFFFF,
                    2: wh & 0xFFFF}
            for a, v in live.items():
                i = a - start_address
                if 0 <= i < len(current_registers):
                    current_registers[i] = v

    def _bridge(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._ma, self._mb], [], [], 0.05)
            except (OSError, ValueError):
                return
            for fd in ready:
                try:
                    data = os.read(fd, 1024)
                except OSError:
                    return
                if fd == self._ma:  # request: driver → server
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
                    time.sleep(self.late_s)
                self._safe_write(self._ma, data)

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
    a = p.parse_args(argv)
    emu = ModbusEmulator(a.unit, a.rated_w).start()
    return serve_until_interrupted(emu, f"Modbus RTU dimmer, unit {a.unit}")


if __name__ == "__main__":
    sys.exit(main())
