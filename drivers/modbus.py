"""Modbus RTU lighting controllers (0-10 V / relay dimmers behind RS-485), with pymodbus.

The register map comes from the config (:class:`RegisterMap`): level holding register and
its full-scale value, optional on/off coil, optional power and energy input registers with
their scales, and, where the controller has them, a status input register with a lamp
failure bit and holding registers for the level the controller falls back to by itself
(on losing the Modbus master: ``failsafe_level_register``; after a mains cycle:
``power_on_level_register``). Transport faults become the same typed errors as the DALI
driver's (:mod:`drivers.bus`); every call has a deadline. The port is held exclusively
(:class:`drivers.portlock.PortLock`).

:class:`ModbusGroup` is the controller as a :class:`drivers.bus.LuminaireGroup`.
"""

from __future__ import annotations

import logging
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

from pymodbus.client import ModbusSerialClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from drivers.bus import (
    BusDisconnected,
    BusProtocolError,
    BusTimeout,
    EnergyReading,
    GroupReading,
    LampStatus,
    LuminaireDiagnostics,
)
from drivers.portlock import PortLock, in_use, lock_holder

# pymodbus logs every retry and packet; the driver reports faults as typed errors instead
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class RegisterMap:
    """Where a controller keeps its level, switch, power and energy."""

    unit: int = 1
    level_register: int = 0
    level_scale: int = 1000          # register value at 100 %
    onoff_coil: int | None = 0
    power_register: int | None = 0   # input register
    power_scale_w: float = 0.1       # W per count
    energy_register: int | None = 1  # two input registers, high word first
    energy_scale_wh: float = 1.0     # Wh per count
    status_register: int | None = None          # input register with a lamp-failure bit
    lamp_failure_bit: int = 0
    failsafe_level_register: int | None = None  # holding: level on losing the master
    power_on_level_register: int | None = None  # holding: level after a mains cycle


@dataclass
class ControllerReading:
    """What a controller reports."""

    level_percent: float
    on: bool | None
    power_w: float | None
    energy_wh: float | None
    lamp_failure: bool | None = None


def _lockable(port: str) -> bool:
    """True when nobody holds ``port`` (we could lock it)."""
    try:
        PortLock(port).release()
    except BusDisconnected:
        return False
    return True


class ModbusLightingController:
    """One Modbus RTU dimmer; thread-safe."""

    def __init__(self, port: str, regmap: RegisterMap | None = None, baudrate: int = 19200,
                 timeout: float = 0.3, retries: int = 2) -> None:
        self.map = regmap or RegisterMap()
        self.port = port
        self._lock = threading.Lock()
        # pymodbus opens the port with pyserial's exclusive=True: the same flock the DALI
        # driver's PortLock takes, so the two refuse each other's port too
        self.client = ModbusSerialClient(port, framer="rtu", baudrate=baudrate, timeout=timeout,
                                         retries=retries, reconnect_delay=0)
        if not self.client.connect():
            if lock_holder(port) or (Path(port).exists() and not _lockable(port)):
                raise in_use(port)
            raise BusDisconnected(f"cannot open {port}")

    def close(self) -> None:
        """Release the port."""
        self.client.close()

    def __enter__(self) -> ModbusLightingController:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, fn, *args, **kw):
        with self._lock:
            try:
                rr = fn(*args, device_id=self.map.unit, **kw)
            except ConnectionException as e:
                raise BusDisconnected(f"{self.port}: {e}") from None
            except ModbusIOException as e:
                raise BusTimeout(f"{self.port}: no valid reply to {what}: {e}") from None
            except ModbusException as e:
                raise BusProtocolError(f"{self.port}: {what}: {e}") from None
            except OSError as e:
                raise BusDisconnected(f"{self.port}: {e}") from None
            except (IndexError, ValueError, struct.error) as e:
                # a stale (late) reply decoded against the wrong request
                raise BusProtocolError(f"{self.port}: malformed reply to {what}: {e!r}") from None
            if rr.isError():
                raise BusProtocolError(f"{self.port}: controller refused {what}: {rr}")
            return rr

    def set_level(self, percent: float) -> None:
        """Set the output level in percent (0 switches the output off)."""
        if not 0 <= percent <= 100:
            raise ValueError(f"level must be 0..100 %, got {percent}")
        m = self.map
        self._call("level write", self.client.write_register, m.level_register,
                   round(percent / 100 * m.level_scale))
        if m.onoff_coil is not None:
            self._call("on/off write", self.client.write_coil, m.onoff_coil, percent > 0)

    def _registers(self, what: str, fn, address: int, count: int) -> list[int]:
        regs = list(self._call(what, fn, address, count=count).registers)
        if len(regs) != count:  # e.g. a stale reply to an earlier request
            raise BusProtocolError(f"{self.port}: {what}: expected {count} registers, "
                                   f"got {len(regs)}")
        return regs

    def read(self) -> ControllerReading:
        """Level, switch, power and energy as the controller reports them."""
        m = self.map
        (lvl,) = self._registers("level read", self.client.read_holding_registers,
                                 m.level_register, 1)
        on = None
        if m.onoff_coil is not None:
            bits = list(self._call("on/off read", self.client.read_coils, m.onoff_coil,
                                   count=1).bits)
            if not bits:
                raise BusProtocolError(f"{self.port}: on/off read: empty reply")
            on = bool(bits[0])
        power = energy = None
        if m.power_register is not None:
            (p,) = self._registers("power read", self.client.read_input_registers,
                                   m.power_register, 1)
            power = p * m.power_scale_w
        if m.energy_register is not None:
            hi, lo = self._registers("energy read", self.client.read_input_registers,
                                     m.energy_register, 2)
            energy = ((hi << 16) | lo) * m.energy_scale_wh
        failed = None
        if m.status_register is not None:
            (st,) = self._registers("status read", self.client.read_input_registers,
                                    m.status_register, 1)
            failed = bool(st >> m.lamp_failure_bit & 1)
        return ControllerReading(100 * lvl / m.level_scale, on, power, energy, failed)

    def ensure_levels(self, percent: float) -> list[str]:
        """The controller's own fallback levels (failsafe, power-on) = ``percent``, where the
        register map names them; writes only what differs. Returns what changed, and what
        the map cannot do."""
        m = self.map
        want = round(percent / 100 * m.level_scale)
        out = []
        for what, reg in (("failsafe level", m.failsafe_level_register),
                          ("power-on level", m.power_on_level_register)):
            if reg is None:
                out.append(f"unit:{m.unit} {what}: not in the register map (the controller's "
                           f"own default applies)")
                continue
            (have,) = self._registers(f"{what} read", self.client.read_holding_registers, reg, 1)
            if have != want:
                self._call(f"{what} write", self.client.write_register, reg, want)
                out.append(f"unit:{m.unit} {what} {100 * have / m.level_scale:g} % → "
                           f"{percent:g} %")
        return out


class ModbusGroup:
    """A Modbus controller's output as a :class:`drivers.bus.LuminaireGroup`."""

    def __init__(self, name: str, controller: ModbusLightingController) -> None:
        self.name = name
        self.controller = controller
        self.address = f"unit:{controller.map.unit}"

    def discover(self) -> tuple[str, ...]:
        """The controller is the one luminaire output; reading it proves it answers."""
        self.controller.read()
        return (self.address,)

    def set_level(self, percent: float) -> None:
        """Command the output."""
        self.controller.set_level(min(100.0, max(0.0, percent)))

    def read_status(self) -> GroupReading:
        """Level, lamp failure (where the map has a status register) and power."""
        r = self.controller.read()
        state = "lamp_failure" if r.lamp_failure else "ok"
        return GroupReading(r.level_percent if r.on is not False else 0.0,
                            (LampStatus(self.address, state, r.level_percent),), r.power_w)

    def read_energy(self) -> EnergyReading:
        """The energy register (one counter, stepping by the map's scale)."""
        r = self.controller.read()
        return EnergyReading(r.energy_wh, 1 if r.energy_wh is not None else 0,
                             self.controller.map.energy_scale_wh)

    def read_diagnostics(self) -> list[LuminaireDiagnostics]:
        """A plain dimmer has no diagnostics registers in its map."""
        return []

    def rated_power_w(self) -> float | None:
        """Not declared by a Modbus dimmer."""
        return None

    def ensure_failsafe(self, safe_pct: float, fade_s: float) -> list[str]:
        """See :meth:`ModbusLightingController.ensure_levels` (no fade time on Modbus)."""
        return self.controller.ensure_levels(safe_pct)
