"""agent/common (sun + schedule core) under CPython AND the real MicroPython unix port,
with the same table of cases (tests/common/cases.json): one pytest test per case and
interpreter, so a failure names the case."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import cache

import pytest

from tests.conftest import ROOT, SHARED, need_shared

CASES = ROOT / "tests" / "common" / "cases.json"
RUNNER = ROOT / "tests" / "common" / "run_cases.py"
MICROPYTHON = SHARED / "bin" / "micropython"
N = len(json.loads(CASES.read_text())["cases"])


@cache
def results(interpreter: str) -> dict[int, str]:
    """Run the whole table once under ``interpreter``; case index → its output line."""
    env = dict(os.environ)
    if interpreter == "micropython":
        cmd = [str(MICROPYTHON)]
        env["MICROPYPATH"] = str(ROOT / "agent")
    else:
        cmd = [sys.executable]
        env["PYTHONPATH"] = str(ROOT / "agent")
    p = subprocess.run([*cmd, str(RUNNER), str(CASES)], capture_output=True, text=True,
                       env=env, timeout=120, cwd=ROOT)
    out = {}
    for line in p.stdout.splitlines():
        i, _, rest = line.partition(" ")
        out[int(i)] = rest
    assert out, f"runner printed nothing: {p.stderr[-2000:]}"
    return out


@pytest.mark.parametrize("interpreter", ["cpython", "micropython"])
@pytest.mark.parametrize("index", range(N))
def test_shared_case(interpreter: str, index: int) -> None:
    if interpreter == "micropython":
        need_shared(MICROPYTHON)
    line = results(interpreter).get(index)
    assert line is not None, f"case {index} not run"
    assert line.startswith("ok "), line


def test_agent_uses_the_shared_core() -> None:
    """The agent's astro functions are the shared ones (no second copy to drift)."""
    from agent.common import schedule, sun
    from agent.lighting import astro, overrides
    from agent.lighting import schedule as agent_schedule
    assert astro.event_time is sun.event_time and astro.elevation_at is sun.elevation_at
    assert agent_schedule.latest is schedule.latest
    assert overrides.winner is schedule.winner


def test_common_imports_nothing_micropython_lacks() -> None:
    """agent/common stays in the MicroPython subset: no datetime/dataclasses/typing."""
    for f in (ROOT / "agent" / "common").glob("*.py"):
        imports = [ln.split()[1] for ln in f.read_text().splitlines()
                   if ln.strip().startswith(("import ", "from "))]
        for name in imports:
            assert name.split(".")[0] in ("math", "agent", "common"), f"{f.name}: {name}"
