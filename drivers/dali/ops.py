"""DALI operations the agent and technicians need, as python-dali commands and sequences.

Addresses are given as ``"short:5"``, ``"group:2"`` or ``"broadcast"`` (see
:func:`parse_address`). Levels are DALI arc power levels 0–254; :func:`percent_to_arc`
and :func:`arc_to_percent` convert with DALI's logarithmic dimming curve.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from dali.address import GearBroadcast, GearGroup, GearShort
from dali.gear.general import (
    DAPC,
    DTR0,
    GoToScene,
    QueryActualLevel,
    QueryControlGearPresent,
    QueryFadeTimeFadeRate,
    QueryLampFailure,
    QueryPowerOnLevel,
    QueryStatus,
    QuerySystemFailureLevel,
    SetFadeTime,
    SetPowerOnLevel,
    SetScene,
    SetSystemFailureLevel,
)
from dali.memory import diagnostics, energy, info, oem
from dali.sequences import Commissioning

from drivers.bus import BusError, LightingBus

Address = GearShort | GearGroup | GearBroadcast


def parse_address(text: str) -> Address:
    """``short:N`` (0–63), ``group:N`` (0–15) or ``broadcast`` → a python-dali address."""
    t = text.strip().lower()
    if t in ("broadcast", "all", "bc"):
        return GearBroadcast()
    kind, _, num = t.partition(":")
    try:
        n = int(num)
    except ValueError:
        raise ValueError(f"address must be short:N, group:N or broadcast (got {text!r})") from None
    if kind in ("short", "s") and 0 <= n <= 63:
        return GearShort(n)
    if kind in ("group", "g") and 0 <= n <= 15:
        return GearGroup(n)
    raise ValueError(f"address must be short:0-63, group:0-15 or broadcast (got {text!r})")


def percent_to_arc(percent: float) -> int:
    """Light output in percent → the lowest arc power level giving at least that much
    (logarithmic curve; 0 % → 0 = off)."""
    if percent <= 0:
        return 0
    p = min(100.0, max(0.1, percent))
    # rounded up: the light is never darker than asked (a safe level stays safe)
    return max(1, min(254, math.ceil(1 + (253 / 3) * (math.log10(p) + 1) - 1e-9)))


def arc_to_percent(level: int) -> float:
    """Arc power level → light output in percent."""
    return 0.0 if level <= 0 else 10 ** ((level - 1) / (253 / 3) - 1)


def set_level(bus: LightingBus, addr: Address, level: int) -> None:
    """Direct arc power control (DAPC) to ``level`` (0–254)."""
    if not 0 <= level <= 254:
        raise ValueError(f"level must be 0..254, got {level}")
    bus.send(DAPC(addr, level))


def go_to_scene(bus: LightingBus, addr: Address, scene: int) -> None:
    """Recall scene 0–15."""
    bus.send(GoToScene(addr, scene))


def store_scene(bus: LightingBus, addr: Address, scene: int, level: int) -> None:
    """Store ``level`` as scene ``scene`` (DTR0, then SetScene sent twice)."""
    bus.run_sequence(_store_scene(addr, scene, level))


def _store_scene(addr: Address, scene: int, level: int):
    yield DTR0(level)
    yield SetScene(addr, scene)


@dataclass
class GearState:
    """What one control gear reports."""

    address: int
    level: int | None
    lamp_on: bool
    lamp_failure: bool
    gear_failure: bool
    missing_short_address: bool


def query_gear(bus: LightingBus, short: int) -> GearState | None:
    """Level and status of one gear; None when no gear answers at that address."""
    addr = GearShort(short)
    status = bus.send(QueryStatus(addr))
    if status is None or status.raw_value is None:
        return None
    lvl = bus.send(QueryActualLevel(addr))
    failure = bus.send(QueryLampFailure(addr))
    return GearState(short, lvl.value if lvl is not None and lvl.raw_value is not None else None,
                     bool(status.arc_power_on), bool(status.lamp_failure or failure.value),
                     bool(status.ballast_status), bool(status.missing_short_address))


def scan(bus: LightingBus) -> list[int]:
    """Short addresses that answer QueryControlGearPresent."""
    found = []
    for a in range(64):
        r = bus.send(QueryControlGearPresent(GearShort(a)))
        if r is not None and r.value:
            found.append(a)
    return found


@dataclass
class D4iReadings:
    """D4i / DALI-2 memory-bank figures of one gear (None where not implemented)."""

    active_energy_wh: float | None
    active_power_w: float | None
    operating_time_s: int | None
    gear_temperature_c: float | None
    light_source_temperature_c: float | None
    overall_failure_count: int | None
    light_source_on_time_s: int | None


def _read(bus: LightingBus, value_class: Any, addr: GearShort, text: bool = False) -> Any:
    try:
        v = bus.run_sequence(value_class.read(addr))
    except BusError:
        raise
    except Exception:  # MemoryLocationNotImplemented, ResponseError: bank not there
        return None
    if isinstance(v, Decimal | int | float) or (text and isinstance(v, str)):
        return v
    return None  # a FlagValue (MASK, TMASK, Invalid): no reading


def read_d4i(bus: LightingBus, short: int) -> D4iReadings:
    """Read banks 202 (energy), 205 (gear diagnostics) and 206 (light source) via dali.memory."""
    a = GearShort(short)

    def num(v: Any, conv: Callable[[Any], Any] = float) -> Any:
        return None if v is None else conv(v)

    return D4iReadings(
        active_energy_wh=num(_read(bus, energy.ActiveEnergy, a)),
        active_power_w=num(_read(bus, energy.ActivePower, a)),
        operating_time_s=num(_read(bus, diagnostics.ControlGearOperatingTime, a), int),
        gear_temperature_c=num(_read(bus, diagnostics.ControlGearTemperature, a)),
        light_source_temperature_c=num(_read(bus, diagnostics.LightSourceTemperature, a)),
        overall_failure_count=num(_read(bus, diagnostics.ControlGearOverallFailureConditionCounter,
                                        a), int),
        light_source_on_time_s=num(_read(bus, diagnostics.LightSourceOnTime, a), int),
    )


def read_inventory(bus: LightingBus, short: int) -> dict[str, Any]:
    """Bank 0 (GTIN, serial number, firmware) and bank 1 (nominal input power) of one gear."""
    a = GearShort(short)
    gtin, serial = _read(bus, info.GTIN, a), _read(bus, info.IdentificationNumber, a)
    power = _read(bus, oem.InputPowerNominal, a)
    return {"gtin": None if gtin is None else int(gtin),
            "serial": None if serial is None else int(serial),
            "firmware": _read(bus, info.FirmwareVersion, a, text=True),
            "nominal_power_w": None if power is None else float(power)}


def fade_code(seconds: float) -> int:
    """DALI FADE TIME code (0-15) nearest ``seconds``: T = 0.5·√(2ⁿ) s, 0 = no fade."""
    if seconds <= 0.35:
        return 0
    return min(range(1, 16), key=lambda n: abs(0.5 * math.sqrt(2 ** n) - seconds))


def fade_seconds(code: int) -> float:
    """Seconds of a FADE TIME code."""
    return 0.0 if code <= 0 else round(0.5 * math.sqrt(2 ** code), 2)


def _failsafe_settings(safe_arc: int, fade: int) -> tuple[tuple[str, Any, Any, int], ...]:
    """``(what, query, store command, wanted value)`` of each fail-safe setting."""
    return (("power-on level", QueryPowerOnLevel, SetPowerOnLevel, safe_arc),
            ("system failure level", QuerySystemFailureLevel, SetSystemFailureLevel, safe_arc),
            ("fade time", QueryFadeTimeFadeRate, SetFadeTime, fade))


def set_failsafe(bus: LightingBus, addr: Address, safe_arc: int, fade: int) -> None:
    """Write the fail-safe settings to ``addr`` (a group or broadcast) without reading back."""
    for _what, _query, store, value in _failsafe_settings(safe_arc, fade):
        bus.send(DTR0(value))
        bus.send(store(addr))


def ensure_failsafe(bus: LightingBus, short: int, safe_arc: int, fade: int) -> list[str]:
    """Make one gear safe without us: POWER ON LEVEL and SYSTEM FAILURE LEVEL = ``safe_arc``,
    FADE TIME = ``fade``. Reads each first and writes only what differs (configuration
    commands go out sent twice); returns what changed. None answered → nothing to do."""
    a = GearShort(short)
    changes = []
    for what, query, store, want in _failsafe_settings(safe_arc, fade):
        r = bus.send(query(a))
        if r is None or r.raw_value is None:
            continue                             # gear not there (reported by status reads)
        have = r.raw_value.as_integer >> 4 if query is QueryFadeTimeFadeRate \
            else r.raw_value.as_integer
        if have != want:
            bus.send(DTR0(want))
            bus.send(store(a))
            shown = (f"{fade_seconds(have)} s → {fade_seconds(want)} s" if what == "fade time"
                     else f"{round(arc_to_percent(have), 1) if have != 255 else 'MASK'} % → "
                          f"{round(arc_to_percent(want), 1)} %")
            changes.append(f"short:{short} {what} {shown}")
    return changes


def commission(bus: LightingBus, readdress: bool = False,
               on_progress: Callable[[Any], None] | None = None) -> list[int]:
    """Random-address allocation: give every gear without a short address a free one.

    ``readdress`` clears all short addresses first. Returns the addresses in use after.
    """
    seq = Commissioning(readdress=readdress)
    run = bus.run_sequence
    try:
        run(seq, on_progress=on_progress)
    except TypeError:  # a bus whose run_sequence takes no progress callback
        run(Commissioning(readdress=readdress))
    return scan(bus)
