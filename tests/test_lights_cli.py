"""``agent lights`` end to end: a real subprocess talking to emulators through ptys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.dali.ops import percent_to_arc
from sim.dali import DaliEmulator, PoleGear, make_gear
from sim.modbus import ModbusEmulator
from tests.conftest import ROOT, SIMNET


def agent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", "lights", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


def pole_yaml(tmp: Path, lighting: str) -> Path:
    """A provisioning file with one camera and ``lighting`` (YAML lines under lighting:)."""
    cfg = tmp / "pole.yaml"
    cfg.write_text(f"""device: {{id: p1, site: lab}}
cameras:
  - name: cam
    source: {{kind: stream, url: "rtsp://127.0.0.1:1/x"}}
    detector: {{model: {SIMNET}}}
    lines: [{{name: main, points: [[0, 10], [100, 10]]}}]
lighting:
{lighting}""")
    return cfg


def test_scan_set_query_over_dali() -> None:
    emu = DaliEmulator(make_gear(3), "foxtron").start()
    try:
        r = agent("scan", "--port", emu.path, "--codec", "foxtron", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["addresses"] == [0, 1, 2]
        r = agent("set", "40", "--address", "short:2", "--port", emu.path, "--codec", "foxtron")
        assert r.returncode == 0 and "short:2" in r.stdout
        assert emu.gear[2].level == json.loads(agent(
            "query", "--port", emu.path, "--codec", "foxtron", "--address", "2", "--json",
            "--no-d4i").stdout)["gear"][0]["level"] > 0
        emu.gear[0].lamp_failure = True
        r = agent("query", "--port", emu.path, "--codec", "foxtron")
        assert r.returncode == 0 and "FAULT: lamp_failure" in r.stdout and "°C" in r.stdout
        assert agent("set", "120", "--port", emu.path).returncode == 2
        assert agent("set", "50", "--address", "short:99", "--port", emu.path).returncode == 2
    finally:
        emu.stop()


def test_commission_from_config_file(tmp_path: Path) -> None:
    gear = [PoleGear(None, random_preload=[0x111111 if i < 2 else 0x200000 + i, 0x300000 + i])
            for i in range(5)]
    emu = DaliEmulator(gear, "hat").start()
    cfg = pole_yaml(tmp_path, f"""  latitude: 21.0
  longitude: 105.8
  buses: [{{name: dali1, kind: dali, port: {emu.path}, codec: hat}}]
  groups: [{{name: street, bus: dali1, address: "group:0", safe_pct: 90}}]
""")
    try:
        r = agent("commission", "--config", str(cfg), "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["addresses"] == [0, 1, 2, 3, 4]
        assert sorted(g.shortaddr for g in gear) == [0, 1, 2, 3, 4]
        # the gear is made safe without the agent: power-on and failure level = safe_pct
        assert out["failsafe"]["safe_pct"] == 90 and len(out["failsafe"]["changes"]) == 15
        arc = percent_to_arc(90)
        assert all((g.power_on_level, g.system_failure_level, g.fade_time) == (arc, arc, 4)
                   for g in gear)
        r = agent("commission", "--config", str(cfg))
        assert r.returncode == 0 and "all set already" in r.stdout
        r = agent("scan", "--config", str(cfg), "--bus", "nope")
        assert r.returncode == 1 and "no bus 'nope'" in r.stderr
    finally:
        emu.stop()


def test_modbus_dimmer_and_unreachable_port() -> None:
    emu = ModbusEmulator(unit=4).start()
    try:
        r = agent("set", "65", "--port", emu.path, "--modbus", "--unit", "4", "--json")
        assert r.returncode == 0, r.stderr
        c = json.loads(r.stdout)["controller"]
        assert c["level_percent"] == 65 and c["on"] is True and emu.level_percent == 65
    finally:
        emu.stop()
    r = agent("scan", "--port", "/dev/does-not-exist")
    assert r.returncode == 3 and "bus error" in r.stderr


def test_schedule_preview(tmp_path: Path) -> None:
    cfg = pole_yaml(tmp_path, """  latitude: 21.03
  longitude: 105.85
  timezone: Asia/Ho_Chi_Minh
  buses: [{name: dali1, kind: dali, port: /dev/null}]
  groups: [{name: street, bus: dali1}]
  programs:
    standard:
      - {at: sunset, level: 100}
      - {at: "22:00", adaptive: {min: 50, max: 100}}
      - {at: "05:00", level: 100}
      - {at: sunrise, offset_min: -10, level: 0}
""")
    r = agent("schedule", "--config", str(cfg), "--date", "2026-11-23")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "night of 2026-11-23 (Asia/Ho_Chi_Minh)" in lines[0]
    steps = [ln.strip().split("  ")[1] for ln in lines[2:]]
    assert steps == ["sunset → 100 %", "22:00 → adaptive 50-100 %", "05:00 → 100 %",
                     "sunrise-10min → 0 %"], r.stdout
    assert "2026-11-23 17:14" in r.stdout and "2026-11-24 06:0" in r.stdout
    assert agent("schedule", "--config", str(cfg), "--date", "23/11").returncode == 2


@pytest.mark.parametrize("args, words", [
    (("set", "nan", "--arc"), "level must be a number"),
    (("set", "inf"), "level must be a number"),
    (("set", "150"), "level must be 0-100 %"),
    (("set", "300", "--arc"), "--arc takes a whole arc level 0-254"),
    (("set", "40.5", "--arc"), "--arc takes a whole arc level 0-254"),
    (("set", "50", "--address", "short:99"), "address must be short:0-63"),
    (("set", "50", "--modbus", "--arc"), "--arc is for DALI"),
    (("query", "--address", "99"), "--address takes a short address 0-63"),
    (("query", "--address", "-1"), "--address takes a short address 0-63"),
    (("commission", "--safe-pct", "0"), "--safe-pct must be 1-100"),
    (("commission", "--fade-s", "nan"), "--fade-s must be 0-90"),
    (("set", "50", "--modbus", "--unit", "0"), "--unit: Input should be greater than or equal to 1"),
])
def test_bad_arguments_are_refused_before_the_bus_is_touched(args: tuple[str, ...],
                                                             words: str) -> None:
    emu = DaliEmulator(make_gear(1), "hat").start()
    try:
        r = agent(*args, "--port", emu.path)
        assert r.returncode == 2, (r.stdout, r.stderr)
        assert words in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert emu.stats.requests == 0                     # nothing was sent on the bus
    finally:
        emu.stop()


def test_schedule_refuses_a_date_out_of_range(tmp_path: Path) -> None:
    cfg = pole_yaml(tmp_path, """  latitude: 21.03
  longitude: 105.85
  buses: [{name: dali1, kind: dali, port: /dev/null}]
  groups: [{name: street, bus: dali1}]
""")
    r = agent("schedule", "--config", str(cfg), "--date", "9999-12-31")
    assert r.returncode == 2 and "between 1971 and 2199" in r.stderr and "Traceback" not in r.stderr
