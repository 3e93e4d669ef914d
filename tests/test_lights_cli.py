"""``agent lights`` end to end: a real subprocess talking to emulators through ptys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sim.dali import DaliEmulator, PoleGear, make_gear
from sim.modbus import ModbusEmulator
from tests.conftest import ROOT, SIMNET


def agent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", "lights", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)


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
    cfg = tmp_path / "pole.yaml"
    cfg.write_text(f"""device: {{id: p1, site: lab}}
cameras:
  - name: cam
    source: {{kind: stream, url: "rtsp://127.0.0.1:1/x"}}
    detector: {{model: {SIMNET}}}
    lines: [{{name: main, points: [[0, 10], [100, 10]]}}]
lighting:
  latitude: 21.0
  longitude: 105.8
  buses: [{{name: dali1, kind: dali, port: {emu.path}, codec: hat}}]
  groups: [{{name: street, bus: dali1, address: "group:0"}}]
""")
    try:
        r = agent("commission", "--config", str(cfg), "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["addresses"] == [0, 1, 2, 3, 4]
        assert sorted(g.shortaddr for g in gear) == [0, 1, 2, 3, 4]
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
