"""Modbus RTU dimmer driver ↔ pymodbus RTU server, through a virtual serial cable (ptys)."""

from __future__ import annotations

import math
import time

import pytest

from drivers.bus import BusDisconnected, BusError, BusProtocolError, BusTimeout
from drivers.modbus import ModbusLightingController, RegisterMap
from sim.modbus import ModbusEmulator
from tests.helpers import SLACK_S, wait_until


@pytest.fixture
def rig():
    emu = ModbusEmulator(unit=3, rated_w=3600.0, late_s=0.5).start()
    ctl = ModbusLightingController(emu.path, RegisterMap(unit=3), timeout=0.25, retries=2)
    yield emu, ctl
    ctl.close()
    emu.stop()


def test_set_and_read_back_level_power_energy(rig) -> None:
    emu, ctl = rig
    ctl.set_level(40)
    assert emu.level_percent == 40 and emu.on
    r1 = ctl.read()
    assert r1.level_percent == 40 and r1.on is True
    assert r1.power_w == pytest.approx(1440, abs=0.1)        # 3600 W x 40 %
    ctl.set_level(100)                                        # 3600 W: 1 Wh per second
    t0 = time.monotonic()
    e1 = ctl.read().energy_wh
    t1 = time.monotonic()
    time.sleep(2.2)
    t2 = time.monotonic()
    e2 = ctl.read().energy_wh
    t3 = time.monotonic()
    assert e1 is not None and e2 is not None
    # whole Wh in the register: 1 Wh a second between the reads, however long they took
    assert math.floor(t2 - t1) <= e2 - e1 <= math.ceil(t3 - t0) and e2 - e1 >= 2
    ctl.set_level(0)
    r3 = ctl.read()
    assert r3.on is False and r3.power_w == 0 and emu.level_percent == 0
    with pytest.raises(ValueError):
        ctl.set_level(120)


def test_wrong_unit_id_is_a_typed_error(rig) -> None:
    _, ctl = rig
    ctl.map = RegisterMap(unit=9)       # a controller that is not on the line
    t0 = time.monotonic()
    with pytest.raises((BusTimeout, BusProtocolError)):
        ctl.read()
    assert time.monotonic() - t0 < 2 + SLACK_S


@pytest.mark.parametrize("fault", ["drop", "garble"])
def test_line_faults_retry_then_typed_error(rig, fault: str) -> None:
    emu, ctl = rig
    ctl.set_level(70)
    emu.inject(fault)                    # one bad reply: the driver's retry succeeds
    assert ctl.read().level_percent == 70
    emu.inject(*[fault] * 8)             # persistent: a typed error, bounded in time
    t0 = time.monotonic()
    with pytest.raises(BusError):
        ctl.read()
    assert time.monotonic() - t0 < 3 + SLACK_S
    time.sleep(0.3)
    emu.script.clear()
    assert ctl.read().level_percent == 70


def test_late_reply_is_a_typed_error_and_the_line_recovers(rig) -> None:
    """A reply that comes only after the driver gave up (held until then, whatever the
    machine's speed): a typed error; and once the stale reply has landed, the line works."""
    emu, ctl = rig
    ctl.set_level(55)
    emu.late_s = 60.0
    emu.inject("late")
    with pytest.raises(BusError):
        ctl.read()
    emu.release_late()
    assert wait_until(lambda: emu.late_replies_sent == 1, 5 + SLACK_S)
    deadline = time.monotonic() + 10 + SLACK_S
    while True:                          # a stale reply may cost one read its answer
        try:
            assert ctl.read().level_percent == 55
            break
        except BusError:
            assert time.monotonic() < deadline, "the line did not recover"


def test_unplugged_line(rig) -> None:
    emu, ctl = rig
    emu.unplug()
    t0 = time.monotonic()
    with pytest.raises(BusError):
        ctl.set_level(10)
    assert time.monotonic() - t0 < 3 + SLACK_S
    with pytest.raises(BusDisconnected):
        ModbusLightingController("/dev/does-not-exist")
