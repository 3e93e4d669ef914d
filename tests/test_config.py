"""Provisioning-file validation: every error names file, line, field path and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agent.settings.schema import load_config
from agent.settings.yamlfile import ConfigError
from tests.conftest import ROOT

GOOD = """\
device:
  id: pole-1
  site: hanoi
cameras:
  - name: north
    source:
      kind: stream
      url: rtsp://127.0.0.1:8554/cam
    detector:
      model: {card}
    lines:
      - name: main
        points: [[0, 100], [320, 100]]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "pole.yaml"
    p.write_text(text.replace("{card}", str(ROOT / "models" / "simnet.yaml")))
    return p


def problems(tmp_path: Path, text: str) -> list:
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, text))
    return ei.value.problems


def test_good_config_loads_with_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    cam = cfg.camera("north")
    assert cam.source.kind == "stream"
    assert cam.gating.stride == 1 and cam.tracker.min_hits == 2
    assert cfg.aggregates.interval_s == 60
    assert cfg.aggregates.path.is_absolute()


def test_shipped_examples_are_valid() -> None:
    # sim-demo needs the rendered clip; the example pole must always validate
    load_config(ROOT / "config" / "example-pole.yaml")


def test_unknown_key_names_line_field_and_allowed_keys(tmp_path: Path) -> None:
    text = GOOD.replace("    detector:\n", "    detectr:\n      model: x\n    detector:\n")
    ps = problems(tmp_path, text)
    p = next(p for p in ps if "detectr" in p.field)
    assert p.line == 9 and p.field == "cameras[0].detectr"
    assert "did you mean 'detector'" in p.message
    assert "allowed keys here:" in p.message and "gating" in p.message
    assert str(p).startswith(f"{tmp_path / 'pole.yaml'}:9:")


def test_wrong_type_points_at_value_line(tmp_path: Path) -> None:
    text = GOOD.replace("site: hanoi", "site: hanoi\n").replace(
        "    lines:\n", "    gating:\n      stride: many\n    lines:\n")
    ps = problems(tmp_path, text)
    assert len(ps) == 1
    assert ps[0].field == "cameras[0].gating.stride"
    assert ps[0].line == 13
    assert "integer" in ps[0].message and "'many'" in ps[0].message


def test_out_of_range_value_says_the_bound(tmp_path: Path) -> None:
    text = GOOD.replace("    lines:\n", "    gating:\n      stride: 0\n    lines:\n")
    (p,) = problems(tmp_path, text)
    assert p.field == "cameras[0].gating.stride" and p.line == 12
    assert "greater than or equal to 1" in p.message


def test_missing_required_field_points_at_parent(tmp_path: Path) -> None:
    text = GOOD.replace("      model: {card}\n", "      confidence: 0.4\n")
    (p,) = problems(tmp_path, text)
    assert p.field == "cameras[0].detector.model"
    assert p.line == 9
    assert "required" in p.message


def test_bad_source_kind_lists_allowed_kinds(tmp_path: Path) -> None:
    (p,) = problems(tmp_path, GOOD.replace("kind: stream", "kind: webcam"))
    assert p.field == "cameras[0].source"
    assert p.line == 7
    assert "'file'" in p.message and "'stream'" in p.message and "'v4l2'" in p.message


def test_bad_url_and_missing_model_card(tmp_path: Path) -> None:
    text = GOOD.replace("rtsp://127.0.0.1:8554/cam", "ftp://cam").replace("{card}", "nope.yaml")
    ps = problems(tmp_path, text)
    fields = {p.field: p for p in ps}
    assert fields["cameras[0].source.url"].line == 8
    assert "rtsp://" in fields["cameras[0].source.url"].message
    assert fields["cameras[0].detector.model"].line == 10
    assert "does not exist" in fields["cameras[0].detector.model"].message


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    (p,) = problems(tmp_path, GOOD.replace("  site: hanoi\n", "  site: hanoi\n  id: pole-2\n"))
    assert p.line == 4 and p.field == "device.id"
    assert "duplicate key (first given on line 2)" in p.message


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    (p,) = problems(tmp_path, GOOD.replace("points: [[0, 100], [320, 100]]",
                                           "points: [[0, 100], [320, 100]"))
    assert p.line >= 14 and "YAML syntax error" in p.message


def test_direction_names_must_match_line_orientation(tmp_path: Path) -> None:
    text = GOOD + "        directions: {left: in}\n"
    (p,) = problems(tmp_path, text)
    assert p.field == "cameras[0].lines[0]" and p.line == 12
    assert "'down'" in p.message and "'up'" in p.message and "'left'" in p.message


def test_interval_must_divide_a_day_and_names_unique(tmp_path: Path) -> None:
    text = GOOD + "aggregates:\n  interval_s: 70\n"
    text = text.replace("      - name: main\n        points: [[0, 100], [320, 100]]\n",
                        "      - name: main\n        points: [[0, 100], [320, 100]]\n"
                        "      - name: main\n        points: [[0, 50], [320, 50]]\n")
    ps = problems(tmp_path, text)
    by_field = {p.field: p for p in ps}
    assert "divide a day" in by_field["aggregates.interval_s"].message
    assert by_field["aggregates.interval_s"].line == 17
    assert "unique" in by_field["cameras[0]"].message
    assert [p.line for p in ps] == sorted(p.line for p in ps)


def test_not_a_mapping_and_missing_file(tmp_path: Path) -> None:
    (p,) = problems(tmp_path, "- just\n- a list\n")
    assert "mapping" in p.message
    with pytest.raises(ConfigError) as ei:
        load_config(tmp_path / "absent.yaml")
    assert "file not found" in str(ei.value)


def test_validate_command_exit_codes(tmp_path: Path) -> None:
    good = write(tmp_path, GOOD)
    r = subprocess.run([sys.executable, "-m", "agent", "validate", str(good)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("{card}", str(ROOT / "models" / "simnet.yaml"))
                   .replace("  id: pole-1", "  id: Pole 1"))
    r = subprocess.run([sys.executable, "-m", "agent", "validate", str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 1
    assert f"{bad}:2:" in r.stderr and "device.id" in r.stderr and "INVALID" in r.stderr
