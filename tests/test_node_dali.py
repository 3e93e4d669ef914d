"""The node's DALI output through the project's DALI gateway emulator behind a real pty:
the node's own code, inside MicroPython, writes the HAT's and the Foxtron's framing, and the
emulated gear takes the level. The same gear and codecs the Pi's drivers are tested with."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from sim.dali import DaliEmulator, arc_power_fraction, make_gear
from tests.conftest import ROOT, SHARED, need_shared

MICROPYTHON = SHARED / "bin" / "micropython"


def node_sets(port: str, codec: str, address: int | None, levels: list[int]) -> str:
    """Run node/output.py inside MicroPython: a dali output on ``port`` set to each level."""
    cfg = {"kind": "dali", "port": port, "codec": codec, "address": address}
    code = ("import output, time\n"
            f"o = output.make({json.dumps(cfg).replace('null', 'None')})\n"
            f"for lv in {levels!r}:\n    o.set(lv)\n    time.sleep_ms(150)\n"
            "print('arc', output.arc_level(o.level))\n")
    p = subprocess.run([str(MICROPYTHON), "-c", code], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "MICROPYPATH": f"{ROOT / 'node'}:{ROOT / 'agent'}"})
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def wait_level(gear: object, arc: int, timeout: float = 5.0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end and gear.level != arc:  # type: ignore[attr-defined]
        time.sleep(0.05)
    return gear.level  # type: ignore[attr-defined]


@pytest.mark.parametrize("codec", ["hat", "foxtron"])
def test_node_drives_emulated_dali_gear(codec: str) -> None:
    need_shared(MICROPYTHON)
    gear = make_gear(3)
    emu = DaliEmulator(gear, codec=codec).start()
    try:
        out = node_sets(emu.path, codec, None, [100, 50])
        arc = int(out.split()[-1])
        assert all(wait_level(g, arc) == arc for g in gear)          # broadcast: all three
        assert abs(arc_power_fraction(arc) - 0.5) < 0.02             # 50 % of light output
        node_sets(emu.path, codec, 1, [10])                          # one short address
        arc10 = [g.level for g in gear]
        assert wait_level(gear[1], 171) in range(169, 174)
        assert arc10[0] == arc and arc10[2] == arc                    # the others untouched
    finally:
        emu.stop()


def test_arc_curve_matches_the_emulators() -> None:
    """The node's percent → arc mapping inverts the DALI curve the emulator (and the Pi) use."""
    need_shared(MICROPYTHON)
    code = "import output\nprint([output.arc_level(p) for p in (0, 1, 10, 50, 100)])"
    p = subprocess.run([str(MICROPYTHON), "-c", code], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "MICROPYPATH": f"{ROOT / 'node'}"})
    arcs = json.loads(p.stdout)
    assert arcs[0] == 0 and arcs[-1] == 254
    for pct, arc in zip((1, 10, 50), arcs[1:4], strict=True):
        assert abs(arc_power_fraction(arc) * 100 - pct) / pct < 0.03
