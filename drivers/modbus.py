"""Modbus RTU lighting controllers (0-10 V / relay dimmers behind RS-485), with pymodbus.

The register map comes from the config (:class:`RegisterMap`): level holding register and
its full-scale value, optional on/off coil, optional power and energy input registers with
their scales. Transport faults become the same typed errors as the DALI driver's
(:mod:`drivers.bus`); every call has a deadline.
"""

from __future__ import annotations

import logging
import struct
import threading
from dataclasses import dataclass

from pymodbus.client import ModbusSerialClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from drivers.bus import BusDisconnected, BusProtocolError, BusTimeout

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


@dataclass
class ControllerReading:
    """What a controller reports."""

    level_percent: float
    on: bool | None
    power_w: float | None
    energy_wh: float | None


class ModbusLightingController:
    """One Modbus RTU dimmer; thread-safe."""

    def __init__(self, port: str, regmap: RegisterMap | None = None, baudrate: int = 19200,
                 timeout: float = 0.3, retries: int = 2) -> None:
        self.map = regmap or RegisterMap()
        self.port = port
        self._lock = threading.Lock()
        self.client = ModbusSerialClient(port, framer="rtu", baudrate=baudrate, timeout=timeout,
                                         retries=retries, reconnect_delay=0)
        if not self.client.connect():
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
        return ControllerReading(100 * lvl / m.level_scale, on, power, energy)
