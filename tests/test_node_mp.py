"""The node's outbox, command rules and clock rules inside the real MicroPython unix port
(tests/node_mp/unit.py): one pytest test per case."""

from __future__ import annotations

import os
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest

from tests.conftest import ROOT, SHARED, need_shared

MICROPYTHON = SHARED / "bin" / "micropython"
UNIT = ROOT / "tests" / "node_mp" / "unit.py"
NAMES = re.findall(r'case\("([a-z_]+)"', UNIT.read_text()) + [
    f"override_refuses_{n}" for n in ("level_high", "prio_zero", "ttl_missing", "level_bool")]


@cache
def results(tmp: str) -> dict[str, str]:
    p = subprocess.run([str(MICROPYTHON), str(UNIT), tmp], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "MICROPYPATH": f"{ROOT / 'node'}:"
                                        f"{ROOT / 'agent'}"})
    out = {ln.split(" ", 1)[0]: ln for ln in p.stdout.splitlines()}
    assert out, p.stdout + p.stderr
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("node-unit")


@pytest.mark.parametrize("name", [n for n in NAMES if not n.endswith("_")])
def test_node_unit_case(run_dir: Path, name: str) -> None:
    need_shared(MICROPYTHON)
    line = results(str(run_dir)).get(name)
    assert line is not None, f"{name} did not run"
    assert line.split(" ")[1] == "ok", line
