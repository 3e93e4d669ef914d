"""The lighting service on a manual clock against emulated buses on real ptys: a whole
night in seconds, bus faults, the gear's own fail-safe settings, overrides, energy."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from agent.clock import ManualClock
from agent.lighting.astro import event_time
from agent.lighting.flow import TrafficSample
from agent.lighting.overrides import Override
from agent.lighting.rule import rule_level_pct
from agent.lighting.service import CONFIRM_READS, LightingService
from agent.records import EventRecord, LightingRecord
from agent.settings.schema import load_config
from drivers.dali import ops
from sim.dali import DaliEmulator, make_gear
from sim.modbus import ModbusEmulator
from tests.conftest import ROOT, SIMNET

HANOI_TZ = ZoneInfo("Asia/Ho_Chi_Minh")
LAT, LON = 21.03, 105.85


def local(y: int, mo: int, d: int, h: int, mi: int = 0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=HANOI_TZ).timestamp()


ISSUE_PROGRAM = """
  timezone: Asia/Ho_Chi_Minh
  programs:
    standard:
      - {at: sunset, level: 100}
      - {at: "22:00", adaptive: {min: 50, max: 100}}
      - {at: "05:00", level: 100}
      - {at: sunrise, offset_min: -10, level: 0}
"""


def pole_config(tmp: Path, buses: str, groups: str, lighting_extra: str = "",
                clock: str = "{sources: [assume_synced]}") -> Path:
    video = tmp / "none.avi"
    video.write_bytes(b"")
    cfg = tmp / "pole.yaml"
    cfg.write_text(f"""
device: {{id: pole-1, site: lab}}
cameras:
  - name: cam1
    source: {{kind: file, path: {video}}}
    detector: {{model: {SIMNET}}}
    lines: [{{name: main, points: [[0, 100], [600, 100]]}}]
clock: {clock}
lighting:
  latitude: {LAT}
  longitude: {LON}
  model: {ROOT / 'models' / 'dimming.md'}
  overrides_path: {tmp / 'overrides.json'}
  camera_stale_s: 300
  traffic_min_coverage_s: 600
  tick_s: 60
  status_period_s: 300
  energy_period_s: 600
  diagnostics_period_s: 7200
{lighting_extra}
  buses: {buses}
  groups: {groups}
""")
    return cfg


class Recorder:
    def __init__(self) -> None:
        self.items: list = []

    def __call__(self, rec) -> None:
        self.items.append(rec)

    def events(self, name: str | None = None) -> list[EventRecord]:
        return [e for e in self.items if isinstance(e, EventRecord)
                and (name is None or e.event == name)]

    def lighting(self) -> list[LightingRecord]:
        return [r for r in self.items if isinstance(r, LightingRecord)]


def service(cfg_path: Path, clock: ManualClock, rec: Recorder, report_s: int = 600
            ) -> LightingService:
    cfg = load_config(cfg_path)
    assert cfg.lighting is not None
    return LightingService(cfg.lighting, cfg.clock, clock, rec, ["cam1"], report_s)


def level_pct(emu: DaliEmulator, i: int = 0) -> float:
    return round(ops.arc_to_percent(emu.gear[i].level), 1)


def dali_pole(tmp: Path, start: float, groups: str, extra: str = ISSUE_PROGRAM, gear: int = 1,
              report_s: int = 600, link: bool = False
              ) -> tuple[ManualClock, DaliEmulator, Recorder, Path, LightingService]:
    """A manual clock, the DALI emulator on it (gear on the same clock), a pole config for
    one bus ``d`` with ``groups``, and the lighting service (not ticked yet)."""
    clock = ManualClock(start)
    emu = DaliEmulator(make_gear(gear, clock=clock), "hat",
                       link=tmp / "dali0" if link else None).start()
    rec = Recorder()
    cfg = pole_config(tmp, f"[{{name: d, kind: dali, port: {emu.path}}}]", groups, extra)
    return clock, emu, rec, cfg, service(cfg, clock, rec, report_s)


def test_a_night_runs_in_seconds_and_the_lamps_follow_the_schedule(tmp_path: Path) -> None:
    """16:00 to 08:00 in Hanoi on the issue's example program, one tick a minute, with
    traffic that is busy in the evening and quiet after midnight."""
    clock, emu, rec, _, svc = dali_pole(
        tmp_path, local(2026, 11, 23, 16), "[{name: street, bus: d, address: broadcast, "
        "cameras: [cam1], design_peak_vph: 1200, ramp_down_pct_per_min: 5}]", gear=2)
    day = datetime(2026, 11, 23, tzinfo=UTC).timestamp()
    sunset = event_time("sunset", LAT, LON, day)
    sunrise = event_time("sunrise", LAT, LON, day + 86400)
    assert sunset is not None and sunrise is not None
    trace: list[tuple[float, float, str]] = []
    commanded: list[float] = []
    try:
        while clock.time() < local(2026, 11, 24, 8):
            t = clock.time()
            hour = datetime.fromtimestamp(t, HANOI_TZ).hour
            per_min = 12 if hour >= 17 or hour < 1 else 1       # 720 vph, then 60 vph
            svc.add_traffic([TrafficSample("cam1", clock.monotonic(), 60.0,
                                           {"car": per_min // 3, "motorbike": per_min
                                            - per_min // 3})])
            svc.camera_seen("cam1", clock.monotonic())
            svc.tick()
            trace.append((t, level_pct(emu), svc.groups["street"].decision.mode))
            commanded.append(svc.groups["street"].decision.level_pct)
            clock.advance(60)
    finally:
        svc.shutdown()
        emu.stop()

    def at(when: float) -> tuple[float, str]:
        lvl, mode = next((lv, m) for t, lv, m in trace if t >= when)
        return lvl, mode

    assert at(local(2026, 11, 23, 16, 30)) == (0.0, "schedule")          # day: off
    assert at(sunset - 120)[0] == 0.0
    assert at(sunset + 61) == (100.0, "schedule")                        # on at sunset
    assert at(local(2026, 11, 23, 21, 59))[0] == 100.0                  # 100 % until 22:00
    # 22:00-05:00 adaptive within 50-100 %, never below the rule for the hourly volume
    window = [(t, lv, m) for t, lv, m in trace
              if local(2026, 11, 23, 22, 2) <= t < local(2026, 11, 24, 5)]
    assert all(m == "adaptive" and 49.5 <= lv <= 100.5 for _, lv, m in window), window[:5]
    busy_rule = rule_level_pct(3, 720, 1200, 0.0, 8 / 12)
    assert all(lv >= busy_rule - 1 for t, lv, _ in window if t < local(2026, 11, 24, 0, 30))
    quiet_rule = rule_level_pct(3, 60, 1200, 0.0, 1.0)               # motorbikes: 2 steps
    assert quiet_rule == 50
    assert quiet_rule - 1 <= at(local(2026, 11, 24, 4, 30))[0] <= 60    # quiet: dimmed
    # the ramp: never more than 5 %/min down between two ticks; the gear follows the
    # commanded level within one arc step of DALI's logarithmic curve (2.8 % relative)
    for a, b in itertools.pairwise(commanded):
        assert b >= a - 5.001 or b == 0
    for (_, gear, _), want in zip(trace, commanded, strict=True):
        assert gear == pytest.approx(want, rel=0.03, abs=0.1)
    assert at(local(2026, 11, 24, 5, 1))[0] == 100.0                    # 100 % from 05:00
    assert at(sunrise - 11 * 60)[0] == 100.0
    assert at(sunrise - 9 * 60) == (0.0, "schedule")                     # off 10 min before
    assert not rec.events("failsafe_entered")
    assert len(rec.lighting()) >= 16 * 6 - 1                             # one per 10 min


def test_energy_saved_is_exact_within_the_counter_step(tmp_path: Path) -> None:
    clock = ManualClock(local(2026, 11, 24, 1))
    gear = make_gear(3, clock=clock)
    emu = DaliEmulator(gear, "hat").start()
    rec = Recorder()
    cfg = pole_config(tmp_path, f"[{{name: d, kind: dali, port: {emu.path}}}]",
                      "[{name: street, bus: d, cameras: [cam1], rated_power_w: 10, luminaires: 3}]",
                      ISSUE_PROGRAM)
    svc = service(cfg, clock, rec, report_s=60)
    try:
        svc.tick()                                   # opens, reads inventory and energy
        start = [g.energy_wh for g in gear]
        clock.advance(1)
        svc.set_override(["street"], Override(40, 5, clock.time() + 86400))
        for _ in range(3 * 60):                      # 3 h, a tick a minute, counters every 10 min
            clock.advance(60)
            svc.tick()
        clock.advance(600)
        svc.tick()                                   # a last counter reading
    finally:
        svc.shutdown()
        emu.stop()
    rated = sum(g.rated_w for g in gear)             # the gear declares it (bank 1)
    span = clock.monotonic() - svc.groups["street"].energy._base[1]   # since the baseline
    true_saved = rated * span / 3600 - sum(g.energy_wh - s for g, s in zip(gear, start,
                                                                             strict=True))
    figures = [r for r in rec.lighting() if not r.partial]
    total = figures[-1].energy_saved_total_wh
    assert figures[-1].energy_saved_source == "measured"
    assert figures[-1].energy_saved_uncertainty_wh == 3.0                # 1 Wh per counter
    assert abs(total - true_saved) <= 3.0, (total, true_saved)
    reported = sum(r.energy_saved_wh for r in figures)
    assert total - 3.0 <= reported <= total + 1e-6           # a deficit may be carried
    assert all(r.energy_saved_wh >= 0 for r in rec.lighting())
    assert true_saved > 100                                              # 60 % of 270 W, 3 h


def test_bus_unplugged_then_back_is_reopened_with_backoff_and_alarms_once(tmp_path: Path) -> None:
    clock, emu, rec, _, svc = dali_pole(tmp_path, local(2026, 11, 24, 1),
                                        "[{name: street, bus: d, cameras: [cam1]}]", gear=2,
                                        link=True)
    try:
        svc.tick()
        assert svc.buses["d"].state == "up" and level_pct(emu) == 100   # no traffic: fallback
        emu.unplug()
        for _ in range(20):                                    # 20 min unplugged
            clock.advance(60)
            svc.tick()
        assert svc.buses["d"].state == "down"
        assert len(rec.events("bus_fault")) == 1               # an alarm on the change only
        emu.gear[0].level = 0                                   # the lamps were reset meanwhile
        emu.replug()
        for _ in range(3):
            clock.advance(60)
            svc.tick()
        assert svc.buses["d"].state == "up" and len(rec.events("bus_restored")) == 1
        assert level_pct(emu) == 100                            # the level is sent again
        assert not rec.events("bus_fault")[0].detail.get("error", "").startswith("Traceback")
    finally:
        svc.shutdown()
        emu.stop()


def test_gear_is_made_safe_without_us_and_bus_power_loss_lights_the_road(tmp_path: Path) -> None:
    clock, emu, rec, _, svc = dali_pole(                       # noon: lamps off
        tmp_path, local(2026, 11, 24, 12), "[{name: street, bus: d, cameras: [cam1], "
        "safe_pct: 90}]", ISSUE_PROGRAM + "  fade_s: 2.8\n", gear=3)
    for g in emu.gear:
        g.power_on_level, g.system_failure_level = 0, 0      # factory set to "off": unsafe
    try:
        svc.tick()
        arc = ops.percent_to_arc(90)
        assert all((g.power_on_level, g.system_failure_level, g.fade_time) == (arc, arc, 5)
                   for g in emu.gear)
        changes = rec.events("gear_configured")[0].detail["changes"]
        assert len(changes) == 9 and "short:0 power-on level 0.0 % → 92.1 %" in changes[0]
        assert all(g.level == 0 for g in emu.gear)             # by day: off
        emu.fail_bus_power()                                    # the Pi and its HAT die
        assert all(g.level == arc for g in emu.gear)            # the gear lights the road
        emu.restore_bus_power()
        emu.mains_cycle()
        assert all(g.level == arc for g in emu.gear)
    finally:
        svc.shutdown()
        emu.stop()
    # a second start finds nothing to change
    emu2 = DaliEmulator(make_gear(1, clock=clock), "hat").start()
    emu2.gear[0].power_on_level = emu2.gear[0].system_failure_level = ops.percent_to_arc(90)
    emu2.gear[0].fade_time = 5
    rec2 = Recorder()
    cfg2 = pole_config(tmp_path, f"[{{name: d, kind: dali, port: {emu2.path}}}]",
                       "[{name: street, bus: d, cameras: [cam1], safe_pct: 90}]",
                       ISSUE_PROGRAM + "  fade_s: 2.8\n")
    svc2 = service(cfg2, clock, rec2)
    try:
        svc2.tick()
        assert not rec2.events("gear_configured")
    finally:
        svc2.shutdown()
        emu2.stop()


def test_modbus_controller_fallback_levels_and_lamp_failure(tmp_path: Path) -> None:
    clock = ManualClock(local(2026, 11, 24, 1))
    emu = ModbusEmulator(unit=2, rated_w=200, clock=clock, comm_timeout_s=30).start()
    emu.failsafe_raw = emu.power_on_raw = 0                  # the controller would go dark
    rec = Recorder()
    regs = "{status_register: 3, failsafe_level_register: 2, power_on_level_register: 3}"
    cfg = pole_config(tmp_path, f"[{{name: m, kind: modbus, port: {emu.path}, unit: 2, "
                                f"registers: {regs}}}]", "[{name: cab, bus: m, cameras: [cam1]}]",
                      ISSUE_PROGRAM)
    svc = service(cfg, clock, rec)
    try:
        svc.tick()
        assert (emu.failsafe_raw, emu.power_on_raw) == (1000, 1000)
        assert emu.level_percent == 100
        emu.lamp_failure = True
        for _ in range(CONFIRM_READS - 1):      # told once CONFIRM_READS reads agree
            clock.advance(300)
            svc.tick()
            assert not rec.events("lamp_failure")
        clock.advance(300)
        svc.tick()
        assert rec.events("lamp_failure")[0].subject == "cab/unit:2"
    finally:
        svc.shutdown()
        emu.stop()


def test_overrides_are_durable_rate_limited_and_expire(tmp_path: Path) -> None:
    clock, emu, rec, cfg, svc = dali_pole(tmp_path, local(2026, 11, 24, 1),
                                          "[{name: street, bus: d, cameras: [cam1]}]")
    try:
        svc.tick()
        assert level_pct(emu) == 100
        svc.set_override(["street"], Override(40, 5, clock.time() + 3600, "c1"))
        clock.advance(60)
        svc.tick()
        assert svc.groups["street"].decision.level_pct == 90   # 10 %/min down, not a jump
        assert 90 <= level_pct(emu) <= 92.2                     # (the arc step above 90 %)
    finally:
        svc.shutdown()
    svc2 = service(cfg, clock, rec)                            # a restart keeps it
    try:
        assert svc2.overrides.active("street", clock.time()) == Override(40, 5,
                                                                         clock.time() + 3540, "c1")
        clock.advance(3600)
        svc2.tick()
        assert svc2.overrides.active("street", clock.time()) is None    # expired
    finally:
        svc2.shutdown()
        emu.stop()
    (tmp_path / "overrides.json").write_text("{not json")
    svc3 = service(cfg, clock, rec)
    assert "unreadable" in svc3.overrides.problem
    assert (tmp_path / "overrides.json.corrupt").exists()
    svc3.shutdown()


def test_untrusted_clock_keeps_lamps_at_the_safe_level_by_day(tmp_path: Path) -> None:
    clock, emu, rec, _, svc = dali_pole(tmp_path, local(2026, 11, 24, 12),
                                        "[{name: street, bus: d, cameras: [cam1], "
                                        "safe_pct: 80}]")
    try:
        svc.tick()
        assert level_pct(emu) == 0                             # trusted: noon is off
        clock.set_wall(clock.time() + 8 * 3600)                # someone sets it 8 h on (night)
        clock.advance(60)
        svc.tick()
        assert svc.groups["street"].decision.mode == "failsafe"
        assert 80 <= level_pct(emu) <= 82.5                     # on, not dimmed, not off
        assert rec.events("clock_untrusted") and rec.events("failsafe_entered")
        assert "jumped +28800 s" in rec.events("clock_untrusted")[0].detail["reasons"][0]
    finally:
        svc.shutdown()
        emu.stop()
    assert 80 <= level_pct(emu) <= 82.5                         # stop: safe level


def test_config_refuses_unsafe_lighting(tmp_path: Path) -> None:
    from agent.settings.yamlfile import ConfigError

    cases = [
        ("[{name: s, bus: d, safe_pct: 20}]", "", "safe level (20 %) must not be below the "
         "class floor (30 %"),
        ("[{name: s, bus: d, floor_pct: 10}]", "", "darker than any level the adaptive rule"),
        ("[{name: s, bus: d}]", ISSUE_PROGRAM.replace("level: 100}", "level: 20}", 1),
         "20 % is below the class floor of group 's'"),
        ("[{name: s, bus: d}]", ISSUE_PROGRAM.replace("  timezone: Asia/Ho_Chi_Minh\n", ""),
         "needs lighting.timezone"),
        ("[{name: s, bus: d}]", "  timezone: Asia/Hanoi_City\n", "unknown time zone"),
        ("[{name: s, bus: d, program: nope}]", "", "no program 'nope'"),
        ("[{name: s, bus: d}]", ISSUE_PROGRAM.replace("{min: 50, max: 100}",
                                                      "{min: 50, max: 100, fallback: 1}"),
         "must lie between min (50) and max (100): losing the camera"),
        ("[{name: s, bus: d}]", ISSUE_PROGRAM.replace("{min: 50, max: 100}",
                                                      "{min: 0, max: 100, fallback: 20}"),
         "fallback: 20 % is below the class floor of group 's'"),
        ("[{name: s, bus: d}]", ISSUE_PROGRAM + '      - {at: "21:00", offset_min: 60, level: 0}\n',
         "starts at the same time as step 1 of program 'standard'"),
        ("[{name: s, bus: d}]", ISSUE_PROGRAM.replace('"05:00"', "5"),
         "got the number 5: write the time quoted"),
        ("[{name: s, bus: d}]", ISSUE_PROGRAM.replace('"22:00"', "22:00:00"),
         "got the number 79200"),
        ("[{name: s, bus: d}]", ISSUE_PROGRAM.replace('"05:00"', "yes"), "got True"),
        ("[{name: s, bus: d, design_class: M6, ceiling_pct: 80}]", "",
         "ceiling_pct (80 %) is below the floor (100 %, the class floor of M6)"),
        ("[{name: s, bus: d}]", ISSUE_PROGRAM + '  calendar: [{dates: ["02-30", "2026-13-01", '
         '"12-24"], program: standard}]\n', "not: '02-30', '2026-13-01'"),
        ("[{name: s, bus: d}]", ISSUE_PROGRAM + "  calendar: [{dates: [2026-02-30], "
         "program: standard}]\n", "cannot read the value '2026-02-30' (day is out of range"),
    ]
    for groups, extra, words in cases:
        cfg = pole_config(tmp_path, "[{name: d, kind: dali, port: /dev/null}]", groups, extra)
        with pytest.raises(ConfigError) as e:
            load_config(cfg)
        text = str(e.value)
        assert words in text, text
        assert f"{cfg}:" in text and ":1:1:" not in text       # located, not at the top
    assert timedelta(0) == timedelta(0)


def test_ambient_light_switches_on_in_a_storm_and_never_off_at_night(tmp_path: Path) -> None:
    import os

    lux = tmp_path / "lux"
    extra = ISSUE_PROGRAM + f"  ambient: {{path: {lux}, dark_below_lux: 50, max_age_s: 120}}\n"
    cfg = pole_config(tmp_path, "[{name: d, kind: dali, port: PORT}]",
                      "[{name: street, bus: d, cameras: [cam1]}]", extra)

    def run(start: float) -> tuple[ManualClock, DaliEmulator, LightingService]:
        clock = ManualClock(start)
        emu = DaliEmulator(make_gear(1, clock=clock), "hat").start()
        text = cfg.read_text().replace("port: PORT", f"port: {emu.path}")
        (tmp_path / "run.yaml").write_text(text)
        return clock, emu, service(tmp_path / "run.yaml", clock, Recorder())

    def reading(clock: ManualClock, value: str) -> None:
        lux.write_text(value)
        os.utime(lux, (clock.time(), clock.time()))       # written "now" on the agent's clock

    clock, emu, svc = run(local(2026, 11, 24, 12))
    try:
        reading(clock, "800")
        svc.tick()
        assert level_pct(emu) == 0                          # a bright noon: off
        reading(clock, "3")                                 # a storm at noon
        clock.advance(60)
        svc.tick()
        assert svc.groups["street"].decision.mode == "ambient" and level_pct(emu) == 100
        clock.advance(600)                                  # the sensor stops writing
        svc.tick()
        assert level_pct(emu) == 0 and "old" in svc.ambient.problem
        reading(clock, "-5")                                # nonsense is no reading
        clock.advance(60)
        svc.tick()
        assert level_pct(emu) == 0 and "bad reading" in svc.ambient.problem
        lux.unlink()
        os.mkfifo(lux)                                      # a FIFO with no writer: no hang
        clock.advance(60)
        svc.tick()
        assert "not a regular file" in svc.ambient.problem
        lux.unlink()
    finally:
        svc.shutdown()
        emu.stop()
    clock, emu, svc = run(local(2026, 11, 24, 23))
    try:
        reading(clock, "900")                               # "bright" at night: a failed sensor
        svc.tick()
        assert level_pct(emu) == 100                        # not off (fallback: no camera)
        assert svc.groups["street"].decision.mode == "fallback"
    finally:
        svc.shutdown()
        emu.stop()


def test_a_bus_silent_during_discovery_is_retried_and_new_gear_is_configured(tmp_path: Path
                                                                           ) -> None:
    from sim.dali import PoleGear

    clock, emu, rec, _, svc = dali_pole(tmp_path, local(2026, 11, 24, 1),
                                        "[{name: street, bus: d, cameras: [cam1], "
                                        "safe_pct: 90}]")      # diagnostics every 2 h
    try:
        emu.inject("silent")                         # the gateway answers nothing at first
        svc.tick()
        assert svc.buses["d"].state == "down" and rec.events("bus_fault")
        clock.advance(2)                             # past the first back-off (1 s)
        svc.tick()
        assert svc.buses["d"].state == "up" and rec.events("bus_restored")
        assert svc.groups["street"].members == ("short:0",)
        new = PoleGear(1, clock=clock, serial=77)    # a luminaire replaced / powered later
        new.power_on_level = new.system_failure_level = 0
        emu.gear.append(new)
        clock.advance(3600)
        svc.tick()
        assert svc.groups["street"].members == ("short:0",)     # not looked for yet
        clock.advance(3700)
        svc.tick()
        assert svc.groups["street"].members == ("short:0", "short:1")
        arc = ops.percent_to_arc(90)
        assert (new.power_on_level, new.system_failure_level) == (arc, arc)
        assert any("short:1" in c for e in rec.events("gear_configured")
                   for c in e.detail["changes"])
    finally:
        svc.shutdown()
        emu.stop()


def test_reloads_keep_driving_the_lamps_and_a_failed_one_changes_nothing(tmp_path: Path
                                                                       ) -> None:
    from drivers.bus import BusError
    from drivers.portlock import PortLock

    group = "[{name: street, bus: d, cameras: [cam1], ramp_down_pct_per_min: 100}]"
    clock, emu, _rec, cfg, svc = dali_pole(tmp_path, local(2026, 11, 24, 1), group)
    silent = DaliEmulator(make_gear(1, clock=clock), "hat").start()

    def reload(text: str) -> list[str]:
        (tmp_path / "new.yaml").write_text(text)
        new = load_config(tmp_path / "new.yaml")
        assert new.lighting is not None
        return svc.reload(new.lighting, ["cam1"])

    try:
        svc.tick()
        assert level_pct(emu) == 100                               # fallback: no camera
        base = cfg.read_text()
        reload(base.replace("ramp_down_pct_per_min: 100", "ramp_down_pct_per_min: 99"))
        svc.set_override(["street"], Override(40, 5, clock.time() + 3600))
        for _ in range(2):
            clock.advance(60)
            svc.tick()
        assert level_pct(emu) < 45                                 # still driven after it
        # a bus setting changed on the same port: the old port is freed, then reopened
        reload(base.replace("port: " + emu.path + "}", "port: " + emu.path + ", timeout_s: 0.15}"))
        assert svc.buses["d"].cfg.timeout_s == 0.15 and svc.buses["d"].state == "up"
        clock.advance(60)
        svc.tick()
        assert level_pct(emu) < 45
        # a new bus whose gateway never answers: refused as a whole
        silent.inject(*["silent"] * 200)
        before = svc.cfg
        broken = base.replace(f"[{{name: d, kind: dali, port: {emu.path}}}]",
                              f"[{{name: d, kind: dali, port: {emu.path}}}, {{name: d2, kind: "
                              f"dali, port: {silent.path}, timeout_s: 0.05}}]").replace(
            "[{name: street,", "[{name: side, bus: d2}, {name: street,")
        with pytest.raises(BusError, match="d2"):
            reload(broken)
        assert svc.cfg is before and list(svc.groups) == ["street"]
        PortLock(silent.path).release()                            # its port was let go
        emu.gear[0].level = 0                                      # still driven: repaired
        clock.advance(61)
        svc.tick()
        assert level_pct(emu) > 0
    finally:
        svc.shutdown()
        silent.stop()
    assert level_pct(emu) == 100                                   # stop: the safe level
    emu.stop()


@pytest.mark.parametrize("reads, want", [
    (["no_answer", "ok", "ok", "ok"], []),                          # one missed answer
    (["lamp_failure", "no_answer"] * 3, [("lamp_failure", "lamp_failure")]),
    (["lamp_failure"] * 3 + ["no_answer"] * 3, [("lamp_failure", "lamp_failure"),
                                                ("luminaire_unreachable", None)]),
    (["lamp_failure", "lamp_failure", "ok"] * 3, [("lamp_failure", "lamp_failure")]),
    (["lamp_failure"] * 3 + ["ok"] * 3, [("lamp_failure", "lamp_failure"),
                                         ("lamp_restored", None)]),
    (["ok", "no_answer", "no_answer", "no_answer"], [("luminaire_unreachable", None)]),
])
def test_lamp_alarms_follow_most_recent_reads(reads: list[str], want: list) -> None:
    """Status reads of one luminaire → events: one missed answer is no alarm; a failure seen
    in three of the last five reads is (an intermittent lamp too, and a gear that alternates
    failure kinds), the newest kind told, a change of kind without a false "restored";
    back to normal after three good reads running."""
    from types import SimpleNamespace

    from agent.lighting.service import GroupRuntime
    from drivers.bus import GroupReading, LampStatus
    events: list[tuple[str, object]] = []
    svc = SimpleNamespace(_event=lambda e, _sev, _subj, **d: events.append((e, d.get("failure"))))
    it = iter(reads)
    grp = SimpleNamespace(read_status=lambda: GroupReading(50.0, (LampStatus("short:0",
                                                                             next(it)),)))
    g = GroupRuntime(cfg=SimpleNamespace(name="street"), policy=None, group=grp)  # type: ignore[arg-type]
    for _ in reads:
        LightingService._read_status(svc, g)  # type: ignore[arg-type]
    assert events == want, events


def test_a_reload_to_and_from_a_lighting_only_pole_rebuilds_the_built_in_program(
        tmp_path: Path) -> None:
    """Reloading a pole's lighting with its cameras removed gives the schedule a fresh
    start gives (no adaptive step); adding a camera back brings the adaptive step back."""
    _clock, emu, _rec, cfg, svc = dali_pole(tmp_path, local(2026, 11, 24, 1),
                                          "[{name: street, bus: d, cameras: [cam1]}]", extra="")
    try:
        from agent.settings.schema import load_config
        lighting = load_config(cfg).lighting
        assert lighting is not None and not lighting.programs

        def steps() -> list[str]:
            g = next(iter(svc.groups.values()))
            return [s.describe() for p in g.policy.schedule.programs.values() for s in p]
        assert any("adaptive" in x for x in steps())
        svc.reload(lighting, [])
        assert not any("adaptive" in x for x in steps()), steps()
        svc.reload(lighting, ["cam1"])
        assert any("adaptive" in x for x in steps()), steps()
    finally:
        svc.shutdown()
        emu.stop()
