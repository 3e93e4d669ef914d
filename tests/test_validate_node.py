"""``agent validate NODE.json``: a lamp node's config checked on the laptop with the node's
own rules (node/nodecfg.py), each problem at ``FILE:LINE:COL``; never a traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.cli import nodecheck
from tests.conftest import ROOT, SHARED, need_shared

EXAMPLE = ROOT / "node" / "config.example.json"
BAD = """{
  "device": "node-0042",
  "site": "harbour",
  "latitude": 95,
  "longitude": 9.99,
  "mqtt": {"host": "192.168.1.10"},
  "output": {"kind": "pwm", "pin": 4},
  "program": [
    {"at": "sunset", "level": 100},
    {"at": "25:00", "level": 50}
  ],
  "colour": "blue"
}
"""


def agent(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", "validate", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_the_example_node_config_is_valid() -> None:
    p = agent(str(EXAMPLE))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith(f"{EXAMPLE}: OK: lamp node node-0042 at harbour")


def test_a_bad_field_is_named_at_its_line(tmp_path: Path) -> None:
    f = tmp_path / "node-0042.json"
    f.write_text(BAD)
    p = agent(str(f))
    assert p.returncode == 1
    lines = p.stderr.splitlines()
    assert f"{f}:4:3: latitude: expected a number in -90..90, got 95" in lines
    assert any(ln.startswith(f"{f}:10:6: program[1].at: expected 'HH:MM'") for ln in lines)
    assert f"{f}:12:3: colour: unknown key" in lines
    assert lines[-1] == f"{f}: INVALID (3 problems)"
    assert "Traceback" not in p.stderr


def _with_tz(tmp_path: Path, tz: object, **extra: object) -> tuple[Path, list[str], int]:
    """The example config with ``"tz": tz`` on line 6 (and ``extra``), through ``agent
    validate``: the file, its stderr lines, its exit code."""
    text = EXAMPLE.read_text().replace('"tz": "CET-1CEST,M3.5.0,M10.5.0/3"',
                                       json.dumps("tz") + ": " + json.dumps(tz)
                                       + "".join(f", {json.dumps(k)}: {json.dumps(v)}"
                                                 for k, v in extra.items()))
    f = tmp_path / "node-0042.json"
    f.write_text(text)
    p = agent(str(f))
    assert "Traceback" not in p.stderr
    return f, p.stderr.splitlines(), p.returncode


def test_a_bad_tz_rule_is_named_at_its_line(tmp_path: Path) -> None:
    f, lines, rc = _with_tz(tmp_path, "CET-1CEST,M13.5.0,M10.5.0/3")
    assert rc == 1
    assert lines[0].startswith(f"{f}:6:3: tz: expected a POSIX TZ rule like "), lines
    assert "month must be 1..12 at character 12" in lines[0]


def test_an_iana_zone_name_gets_its_posix_rule_suggested(tmp_path: Path) -> None:
    f, lines, rc = _with_tz(tmp_path, "Australia/Sydney")
    assert rc == 1
    assert lines[0].startswith(f"{f}:6:3: tz: "), lines
    assert lines[0].endswith('Australia/Sydney is an IANA zone name: write "tz": '
                             '"AEST-10AEDT,M10.1.0,M4.1.0/3"'), lines[0]
    _, lines, rc = _with_tz(tmp_path, "Mars/Olympus_Mons")       # no such zone: no hint
    assert rc == 1 and "IANA" not in lines[0] and lines[0].startswith(f"{f}:6:3: tz: ")


def test_tz_and_tz_offset_min_are_exclusive(tmp_path: Path) -> None:
    f, lines, rc = _with_tz(tmp_path, "UTC0", tz_offset_min=0)
    assert rc == 1
    assert lines[0] == (f"{f}:6:3: tz: give tz or tz_offset_min, not both (tz_offset_min is "
                        "for old configs: a fixed offset with no daylight-saving change)")


def test_a_missing_key_points_at_the_object_it_belongs_in(tmp_path: Path) -> None:
    f = tmp_path / "n.json"
    cfg = json.loads(EXAMPLE.read_text())
    del cfg["output"]["pin"], cfg["site"]
    f.write_text(json.dumps(cfg, indent=2))
    out_line = 1 + f.read_text().splitlines().index('  "output": {')
    problems, _ = nodecheck.check(str(f))
    assert f"{f}:1:1: site: missing" in problems
    assert any(p.startswith(f"{f}:{out_line}:3: output.pin:") for p in problems), problems


def test_broken_json_gives_line_and_column(tmp_path: Path) -> None:
    f = tmp_path / "n.json"
    f.write_text('{\n  "device": "node-1",\n  "site": ,\n}\n')
    p = agent(str(f))
    assert p.returncode == 1
    assert p.stderr.splitlines()[0] == f"{f}:3:11: not valid JSON: Expecting value"


def test_duplicate_keys_nan_and_binary_are_located_errors(tmp_path: Path) -> None:
    cases = {'{"device": "a",\n "device": "b"}': ":2:2: device: duplicate key",
             '{"latitude": NaN}': ":1:14: NaN is not JSON",
             '{"a": "\xff"}': ":1:8: not UTF-8"}
    for i, (text, want) in enumerate(cases.items()):
        f = tmp_path / f"c{i}.json"
        f.write_bytes(text.encode("latin-1"))
        problems, _ = nodecheck.check(str(f))
        assert len(problems) == 1 and problems[0].startswith(f"{f}{want}"), problems


def test_the_laptop_and_the_device_report_the_same_problems(tmp_path: Path) -> None:
    """The same node/nodecfg.py rules, run by MicroPython on the node and by the agent."""
    mp = SHARED / "bin" / "micropython"
    need_shared(mp)
    f = tmp_path / "node.json"
    f.write_text(BAD)
    dev = subprocess.Popen([str(mp), str(ROOT / "node" / "main.py"), str(f)], text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           env={**os.environ, "MICROPYPATH": f"{ROOT / 'node'}:{ROOT / 'agent'}"})
    lines = []
    try:                        # the node never exits: it prints, then holds the lamp
        assert dev.stdout is not None
        for ln in dev.stdout:
            if "no usable config" in ln:
                break
            lines.append(ln.rstrip("\n"))
    finally:
        dev.kill()
        dev.wait()
    on_device = [ln.removeprefix(f"{f}: ") for ln in lines]
    laptop = [re.sub(r"^.*?:\d+:\d+: ", "", p) for p in nodecheck.check(str(f))[0]]
    assert on_device == laptop and len(laptop) == 3


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                    | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=4)
                    | st.dictionaries(st.sampled_from(
                        ["device", "site", "latitude", "mqtt", "output", "program", "at",
                         "level", "kind", "pin", "host", "fixed_program", "tick_s", "tz", "x"])
                        | st.text(max_size=6), c, max_size=6), max_leaves=25)
LOCATED = re.compile(r"^.+?(:\d+:\d+)?: \S")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=JSON, indent=st.sampled_from([None, 0, 2]), cut=st.integers(0, 400))
def test_fuzz_random_json_never_tracebacks(doc: object, indent: int | None, cut: int) -> None:
    text = json.dumps(doc, indent=indent, ensure_ascii=False)
    with tempfile.TemporaryDirectory() as d:
        for body in (text, text[:cut]):             # whole documents and truncated ones
            f = Path(d) / "n.json"
            f.write_text(body, encoding="utf-8")
            problems, cfg = nodecheck.check(str(f))
            assert all(p.startswith(f"{f}:") and LOCATED.match(p) for p in problems), problems
            assert problems or isinstance(cfg, dict)


def test_command_key_is_checked_and_shown(tmp_path: Path) -> None:
    """The key is the middle line of the site's ``.pub.pem`` (``agent bundle keygen``);
    anything else is a located error that says what is expected."""
    keys = tmp_path / "keys"
    keys.mkdir()
    gen = subprocess.run([sys.executable, "-m", "agent", "bundle", "keygen", "--out",
                          str(keys / "site.pem")],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert gen.returncode == 0, gen.stderr
    line = (keys / "site.pub.pem").read_text().splitlines()[1]
    cfg = json.loads(EXAMPLE.read_text())
    f = tmp_path / "node-0042.json"
    f.write_text(json.dumps({**cfg, "command_key": line}, indent=2))
    p = agent(str(f))
    assert p.returncode == 0, p.stderr
    assert p.stdout.rstrip().endswith("commands signed only (command_key)")
    f.write_text(json.dumps({**cfg, "command_key": "-----BEGIN PUBLIC KEY-----"}, indent=2))
    p = agent(str(f))
    assert p.returncode == 1
    row = next(i for i, ln in enumerate(f.read_text().splitlines(), 1) if "command_key" in ln)
    assert re.search(rf"^{re.escape(str(f))}:{row}:\d+: command_key: expected base64 \(the "
                     r"middle line of the site's \.pub\.pem\)$", p.stderr, re.M), p.stderr
    f.write_text(json.dumps({**cfg, "command_key": "AAAA"}, indent=2))
    p = agent(str(f))
    assert "command_key: expected an Ed25519 public key (32 bytes, or its 44-byte DER), got 3 " \
           "bytes" in p.stderr, p.stderr
