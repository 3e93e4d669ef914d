"""Group controller: policy → real driver → emulated luminaires → lighting record."""

from __future__ import annotations

import time

import pytest

from agent.lighting.controller import GroupController, GroupTarget
from agent.lighting.dimming import DimmingPolicy, GroupSettings, TrafficFlow
from agent.lighting.envelope import EnvelopeSettings
from drivers.dali import SerialDaliBus
from drivers.modbus import ModbusLightingController, RegisterMap
from sim.dali import DaliEmulator, make_gear
from sim.modbus import ModbusEmulator
from tests.conftest import ROOT
from tests.test_dimming import HANOI, NIGHT_UTC, NOON_UTC

CARD = ROOT / "models" / "dimming.md"


def make_policy() -> DimmingPolicy:
    return DimmingPolicy(CARD, *HANOI, GroupSettings(3, 1200, EnvelopeSettings(
        floor_pct=30, ramp_down_pct_per_min=100)))


@pytest.fixture
def dali():
    emu = DaliEmulator(make_gear(3), "hat").start()
    for g in emu.gear:
        g.rated_w = 3600.0
    bus = SerialDaliBus(emu.path, "hat")
    yield emu, bus
    bus.close()
    emu.stop()


def test_dims_at_night_and_failsafe_on_camera_loss(dali) -> None:
    emu, bus = dali
    ctl = GroupController("street", make_policy(),
                          GroupTarget("dali", bus, "broadcast", (0, 1, 2)), 3600.0, 3)
    r1 = ctl.tick(TrafficFlow(40, 0.0, 0.2, 1000.0), wall=NIGHT_UTC, mono=1000.0)
    assert r1["mode"] == "model" and r1["target_level_pct"] <= 40 and r1["bus_error"] is None
    assert all(0 < g.level < 254 for g in emu.gear)                 # dimmed, on
    assert r1["actual_level_pct"] == pytest.approx(r1["target_level_pct"], abs=2)
    time.sleep(1.1)
    r2 = ctl.tick(None, wall=NIGHT_UTC + 600, mono=1600.0)        # camera lost
    assert r2["mode"] == "failsafe" and r2["target_level_pct"] == 100
    assert all(g.level == 254 for g in emu.gear)                  # full light on the street
    assert r2["energy_saved_source"] == "measured" and r2["energy_saved_wh"] > 0
    emu.gear[1].lamp_failure = True
    r3 = ctl.tick(TrafficFlow(40, 0, 0.2, 2200.0), wall=NIGHT_UTC + 1200, mono=2200.0)
    assert r3["lamp_failures"] == [{"address": 1, "failure": "lamp"}]


def test_day_off_and_dark_storm_at_noon_is_lit(dali) -> None:
    emu, bus = dali
    ctl = GroupController("street", make_policy(), GroupTarget("dali", bus, "group:0"), 100.0)
    assert ctl.tick(TrafficFlow(40, 0, 0, 10.0), wall=NOON_UTC, mono=10.0)["mode"] == "day"
    assert emu.gear[0].level == 0
    r = ctl.tick(TrafficFlow(40, 0, 0, 20.0), wall=NOON_UTC + 10, mono=20.0, ambient_lux=3.0)
    assert r["mode"] == "twilight" and emu.gear[0].level == 254   # storm: lamps on, undimmed
    night = GroupController("street", make_policy(), GroupTarget("dali", bus, "group:0"), 100.0)
    r = night.tick(TrafficFlow(40, 0, 0, 30.0), wall=NIGHT_UTC, mono=30.0, ambient_lux=900.0)
    # a sensor reading "bright" at night (faulty, or lit by a lamp) never switches lamps off
    assert r["mode"] == "model" and emu.gear[0].level > 0


def test_bus_fault_is_reported_and_lamps_keep_their_level(dali) -> None:
    emu, bus = dali
    ctl = GroupController("street", make_policy(), GroupTarget("dali", bus, "broadcast", (0,)),
                          100.0)
    ctl.tick(TrafficFlow(1100, 0, 0, 10.0), wall=NIGHT_UTC, mono=10.0)
    before = [g.level for g in emu.gear]
    emu.unplug()                                                   # the cable is cut
    r = ctl.tick(TrafficFlow(30, 0, 0, 70.0), wall=NIGHT_UTC + 60, mono=70.0)
    assert r["bus_error"] and ("BusDisconnected" in r["bus_error"]
                               or "BusTimeout" in r["bus_error"])
    assert [g.level for g in emu.gear] == before and before[0] == 254   # still fully lit
    assert ctl.last_level_pct == 100             # the controller knows what the lamps hold


def test_modbus_group_with_measured_energy() -> None:
    emu = ModbusEmulator(unit=2, rated_w=3600).start()
    ctl_bus = ModbusLightingController(emu.path, RegisterMap(unit=2))
    try:
        ctl = GroupController("cabinet", make_policy(), GroupTarget("modbus", ctl_bus), 3600.0)
        r1 = ctl.tick(TrafficFlow(1100, 0, 0, 0.0), wall=NIGHT_UTC, mono=0.0)
        assert r1["actual_level_pct"] == pytest.approx(r1["target_level_pct"], abs=0.1)
        time.sleep(2.2)
        r2 = ctl.tick(TrafficFlow(1100, 0, 0, 2.2), wall=NIGHT_UTC + 2.2, mono=2.2)
        assert r2["energy_saved_source"] == "measured" and r2["power_w"] > 0
    finally:
        ctl_bus.close()
        emu.stop()
