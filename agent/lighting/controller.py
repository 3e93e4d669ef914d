"""One luminaire group, each interval: decide → apply → read back → lighting record.

:class:`GroupController` ties a :class:`DimmingPolicy` to a lighting bus (DALI address or
Modbus dimmer). ``tick`` returns the interval's lighting record: the decision (mode,
reasons), the level sent, what the luminaires report (level, lamp failures, power,
energy) and the energy saved against full power (from D4i or controller energy readings
where present, else rated power × level).

A bus fault never propagates: it is reported in the record, and the luminaires keep the
last level they were given. DALI gear holds its level, so a software or bus fault never
switches a street dark.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from agent.lighting.dimming import DimmingPolicy, TrafficFlow, energy_saved_wh
from agent.vision.aggregates import iso
from drivers.bus import BusError

log = logging.getLogger(__name__)

LIGHTING_SCHEMA = "polelink/lighting-state/1"


@dataclass
class GroupTarget:
    """Where a group's luminaires are: a DALI bus and address, or a Modbus controller."""

    kind: str                  # "dali" | "modbus"
    bus: Any                   # SerialDaliBus | ModbusLightingController
    address: str = "broadcast"
    shorts: tuple[int, ...] = ()  # DALI short addresses to read back (empty: none)


class GroupController:
    """Runs one group's dimming each interval; see the module docstring."""

    def __init__(self, name: str, policy: DimmingPolicy, target: GroupTarget,
                 rated_power_w: float, luminaires: int = 1) -> None:
        self.name = name
        self.policy = policy
        self.target = target
        self.rated_w = rated_power_w * luminaires
        self._energy_wh: float | None = None
        self._last_t: float | None = None
        self.last_level_pct: float | None = None

    def tick(self, flow: TrafficFlow | None, wall: float | None = None, mono: float | None = None,
             override_pct: float | None = None,
             override_until_monotonic: float | None = None,
             ambient_lux: float | None = None) -> dict[str, Any]:
        """Decide, apply and read back; returns the lighting record for this interval."""
        wall = time.time() if wall is None else wall
        mono = time.monotonic() if mono is None else mono
        d = self.policy.decide(flow, wall, mono, override_pct, override_until_monotonic,
                               ambient_lux)
        rec: dict[str, Any] = {"schema": LIGHTING_SCHEMA, "group": self.name, "time": iso(wall),
                               "mode": d.mode, "reasons": d.reasons,
                               "target_level_pct": d.level_pct, "bus_error": None}
        try:
            self._apply(d.level_pct)
            rec.update(self._read())
        except BusError as e:
            log.error("group %s: %s (luminaires keep their last level)", self.name, e)
            rec["bus_error"] = f"{type(e).__name__}: {e}"
        seconds = 0.0 if self._last_t is None else max(0.0, mono - self._last_t)
        measured = None
        energy_now = rec.get("energy_wh")
        if energy_now is not None and self._energy_wh is not None:
            measured = max(0.0, energy_now - self._energy_wh)
        level_for_energy = self.last_level_pct if self.last_level_pct is not None else d.level_pct
        rec["interval_s"] = round(seconds, 3)
        rec["energy_saved_wh"] = round(energy_saved_wh(self.rated_w, level_for_energy, seconds,
                                                       measured), 4)
        rec["energy_saved_source"] = "measured" if measured is not None else "rated_x_level"
        if energy_now is not None:
            self._energy_wh = energy_now
        self._last_t = mono
        if rec["bus_error"] is None:
            self.last_level_pct = d.level_pct
        return rec

    def _apply(self, level_pct: float) -> None:
        t = self.target
        if t.kind == "modbus":
            t.bus.set_level(level_pct)
            return
        from drivers.dali import ops

        ops.set_level(t.bus, ops.parse_address(t.address), ops.percent_to_arc(level_pct))

    def _read(self) -> dict[str, Any]:
        t = self.target
        if t.kind == "modbus":
            r = t.bus.read()
            return {"actual_level_pct": r.level_percent, "lamp_failures": [],
                    "power_w": r.power_w, "energy_wh": r.energy_wh}
        from drivers.dali import ops

        levels, failures, power, energy = [], [], 0.0, 0.0
        have_energy = bool(t.shorts)
        for s in t.shorts:
            g = ops.query_gear(t.bus, s)
            if g is None:
                failures.append({"address": s, "failure": "no answer"})
                continue
            if g.lamp_failure or g.gear_failure:
                failures.append({"address": s, "failure": "lamp" if g.lamp_failure else "gear"})
            if g.level is not None:
                levels.append(ops.arc_to_percent(g.level))
            d4i = ops.read_d4i(t.bus, s)
            power += d4i.active_power_w or 0.0
            if d4i.active_energy_wh is None:
                have_energy = False
            else:
                energy += d4i.active_energy_wh
        return {"actual_level_pct": round(sum(levels) / len(levels), 2) if levels else None,
                "lamp_failures": failures, "power_w": round(power, 2) if t.shorts else None,
                "energy_wh": energy if have_energy else None}
