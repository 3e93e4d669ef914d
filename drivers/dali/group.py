"""A DALI address (short, group or broadcast) as a :class:`drivers.bus.LuminaireGroup`.

The group's members (short addresses) are found by :meth:`DaliGroup.discover`: the one
short address, or a scan of the bus (64 QueryControlGearPresent) narrowed to the group's
members with QueryGroups. Levels go to the group's own address (one frame for the whole
group); status, energy and diagnostics are read per member:

- status (fast, every status period): QueryStatus, QueryActualLevel, QueryLampFailure;
  a member that does not answer is ``no_answer``, one whose lamp failed ``lamp_failure``,
  one whose gear reports a fault ``gear_failure``;
- energy (D4i bank 202, slower): the active energy counters, each stepping in whole Wh
  at the scale the gear reports (1 Wh here), plus active power;
- diagnostics (banks 0, 1, 205, 206, slowest): temperatures, operating and on-time,
  failure counters, and inventory (GTIN, serial number, firmware, nominal power).
"""

from __future__ import annotations

from dali.address import GearBroadcast, GearShort
from dali.memory import energy
from dali.sequences import QueryGroups

from drivers.bus import (
    EnergyReading,
    GroupReading,
    LampStatus,
    LightingBus,
    LuminaireDiagnostics,
)
from drivers.dali import ops


class DaliGroup:
    """See the module docstring."""

    def __init__(self, name: str, bus: LightingBus, address: str) -> None:
        self.name = name
        self.bus = bus
        self.address = address
        self.addr = ops.parse_address(address)
        self.members: tuple[int, ...] = ()
        self._nominal: dict[int, float | None] = {}

    def discover(self) -> tuple[str, ...]:
        """Find the members (see the module docstring)."""
        if isinstance(self.addr, GearShort):
            found = [self.addr.address]
        else:
            found = ops.scan(self.bus)
            if not isinstance(self.addr, GearBroadcast):
                n = self.addr.group  # type: ignore[union-attr]
                found = [s for s in found
                         if n in self.bus.run_sequence(QueryGroups(GearShort(s)))]
        self.members = tuple(found)
        return tuple(f"short:{s}" for s in self.members)

    def set_level(self, percent: float) -> None:
        """DAPC to the group's address, on DALI's logarithmic curve."""
        ops.set_level(self.bus, self.addr, ops.percent_to_arc(percent))

    def read_status(self) -> GroupReading:
        """Each member's level and state; the mean level of those that answered."""
        lamps, levels = [], []
        for s in self.members:
            g = ops.query_gear(self.bus, s)
            if g is None:
                lamps.append(LampStatus(f"short:{s}", "no_answer"))
                continue
            pct = ops.arc_to_percent(g.level) if g.level is not None else None
            state = "lamp_failure" if g.lamp_failure else "gear_failure" if g.gear_failure \
                else "ok"
            lamps.append(LampStatus(f"short:{s}", state, None if pct is None else round(pct, 2)))
            if pct is not None:
                levels.append(pct)
        return GroupReading(round(sum(levels) / len(levels), 2) if levels else None, tuple(lamps))

    def read_energy(self) -> EnergyReading:
        """Sum of the members' D4i active energy counters (None unless every member has
        one: a partial sum would read as a saving) and their active power."""
        total, power, counters = 0.0, 0.0, 0
        for s in self.members:
            wh = ops._read(self.bus, energy.ActiveEnergy, GearShort(s))
            w = ops._read(self.bus, energy.ActivePower, GearShort(s))
            if wh is None:
                return EnergyReading(None, 0, 1.0, None)
            total += float(wh)
            power += float(w or 0)
            counters += 1
        if not counters:
            return EnergyReading(None, 0, 1.0, None)
        return EnergyReading(total, counters, 1.0, round(power, 2))

    def read_diagnostics(self) -> list[LuminaireDiagnostics]:
        """Per member: D4i diagnostics and inventory (None = not implemented by the gear)."""
        out = []
        for s in self.members:
            d4i = ops.read_d4i(self.bus, s)
            inv = ops.read_inventory(self.bus, s)
            self._nominal[s] = inv["nominal_power_w"]
            out.append(LuminaireDiagnostics(f"short:{s}", {
                "gearTemperatureC": d4i.gear_temperature_c,
                "lightSourceTemperatureC": d4i.light_source_temperature_c,
                "operatingTimeS": d4i.operating_time_s,
                "lightSourceOnTimeS": d4i.light_source_on_time_s,
                "overallFailureCount": d4i.overall_failure_count,
                "gtin": inv["gtin"], "serial": inv["serial"], "firmware": inv["firmware"],
                "nominalPowerW": inv["nominal_power_w"]}))
        return out

    def rated_power_w(self) -> float | None:
        """Sum of the members' nominal input power (bank 1), once every member declared it."""
        if not self.members or any(self._nominal.get(s) is None for s in self.members):
            return None
        return sum(self._nominal[s] or 0.0 for s in self.members)

    def ensure_failsafe(self, safe_pct: float, fade_s: float) -> list[str]:
        """Power-on and system failure level = ``safe_pct``, fade time ≈ ``fade_s``, per
        member (verified, set only where different); without known members, set through
        the group's address, unverified."""
        arc, fade = ops.percent_to_arc(safe_pct), ops.fade_code(fade_s)
        if not self.members:
            ops.set_failsafe(self.bus, self.addr, arc, fade)
            return [f"{self.address}: power-on/failure level {safe_pct:g} % and fade time set "
                    f"without read-back (no member answered)"]
        out: list[str] = []
        for s in self.members:
            out += ops.ensure_failsafe(self.bus, s, arc, fade)
        return out
