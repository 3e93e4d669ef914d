"""A night, dusk to dawn, through the real ``agent run`` process on a scaled clock
(POLELINK_SIM_CLOCK, 40 simulated minutes a second): the DALI emulator runs on the same
clock and records when each level was set, which must follow the schedule (astro steps,
fixed steps, an adaptive window whose fallback shows while no camera is there)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.clock import ScaledClock, ScaledClockSpec
from agent.lighting.astro import event_time
from drivers.dali.ops import arc_to_percent
from sim.dali import DaliEmulator, make_gear
from tests.pole_rig import PoleRig

pytestmark = pytest.mark.slow

TZ = ZoneInfo("Asia/Ho_Chi_Minh")
LAT, LON = 21.03, 105.85


def local(d: int, h: int, mi: int = 0) -> float:
    return datetime(2026, 11, d, h, mi, tzinfo=TZ).timestamp()


#: How late, in simulated time, the agent may set a step's level: a tick (60 s), the bus
#: round trip, and the agent process's pace on a busy machine (15 min = 0.375 s real).
SLACK = 15 * 60


def test_a_night_through_agent_run_follows_the_schedule(tmp_path: Path) -> None:
    """From 00:30 local time, so that the agent has about 25 s (real) to start before the
    first level it must set (sunset); each level is read from the emulated gear's own
    record of when it changed, on the same simulated clock."""
    spec = ScaledClockSpec(local(23, 0, 30), speed=2400.0, anchor=time.time() + 2.0)
    clock = ScaledClock(spec)
    rig = PoleRig(tmp_path, '{kind: stream, url: "rtsp://127.0.0.1:9/none"}', interval_s=300)
    rig.emu.stop()
    gear = make_gear(2, clock=clock)
    start_level = gear[0].level
    rig.emu = DaliEmulator(gear, "hat", link=tmp_path / "dali0").start()
    text = rig.cfg.read_text()
    text = text.replace("  latitude: 0.0\n", f"  latitude: {LAT}\n")
    text = text.replace(text[text.index("  longitude: "):text.index("\n", text.index(
        "  longitude: ")) + 1], f"  longitude: {LON}\n")
    text = text.replace("  tick_s: 0.5\n", """  tick_s: 60
  timezone: Asia/Ho_Chi_Minh
  programs:
    standard:
      - {at: sunset, level: 100}
      - {at: "22:00", adaptive: {min: 50, max: 100, fallback: 80}}
      - {at: "05:00", level: 100}
      - {at: sunrise, offset_min: -10, level: 0}
""").replace("  status_period_s: 2\n", "  status_period_s: 600\n").replace(
        "  energy_period_s: 5\n", "  energy_period_s: 1800\n").replace(
        "  camera_stale_s: 6\n", "  camera_stale_s: 300\n")
    text = text.replace("clock: {sources: [assume_synced]}", "clock: {sources: [kernel]}")
    rig.cfg.write_text(text)
    day = datetime(2026, 11, 23, tzinfo=UTC).timestamp()
    sunrise0 = event_time("sunrise", LAT, LON, day)
    sunset = event_time("sunset", LAT, LON, day)
    sunrise = event_time("sunrise", LAT, LON, day + 86400)
    assert sunrise0 is not None and sunset is not None and sunrise is not None
    t_online = None
    try:
        rig.start(env={"POLELINK_SIM_CLOCK": spec.to_env()})
        while clock.time() < local(24, 8):
            time.sleep(0.05)
            if t_online is None and rig.col.where(
                    lambda t, m, r: t.endswith("/status") and m.get("state") == "online"):
                t_online = clock.time()
            assert rig.alive(), rig.output()[-3000:]
        assert rig.signal() == 0
    finally:
        rig.close()
    assert t_online is not None and t_online < sunset - SLACK, \
        f"the agent came online at {datetime.fromtimestamp(t_online or 0, TZ)}: after sunset"
    changes = list(gear[0].history)

    def level_at(t: float) -> float:
        """The gear's level at simulated time ``t``, from its record of changes."""
        arc = start_level
        for when, lv in changes:
            if when > t:
                break
            arc = lv
        return round(arc_to_percent(arc), 1)

    def levels(a: float, b: float) -> set[float]:
        """Every level the gear held between a + SLACK and b - SLACK."""
        inside = {lv for when, lv in changes if a + SLACK <= when <= b - SLACK}
        return {level_at(a + SLACK)} | {round(arc_to_percent(lv), 1) for lv in inside}

    assert levels(max(sunrise0 - 600, t_online), sunset) == {0.0}   # day: off
    assert levels(sunset, local(23, 22)) == {100.0}                   # on at sunset, 100 %
    # 22:00-05:00 adaptive, no camera: the step's fallback 80 % (via the ramp down)
    window = levels(local(23, 22, 10), local(24, 5))
    assert window and all(80 <= v <= 82.5 for v in window), sorted(window)
    assert levels(local(24, 5), sunrise - 600) == {100.0}             # 100 % from 05:00
    assert levels(sunrise - 600, local(24, 8)) == {0.0}               # off 10 min before
    events = [m["event"] for m in rig.col.where(lambda t, m, r: t.endswith("/event"))]
    assert "clock_trusted" in events and "failsafe_entered" in events     # the fallback window
    assert "failsafe_left" in events                                       # 05:00
