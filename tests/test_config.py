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


# --- a hostile file never crashes the loader, and nothing is silently coerced ----------------

MQTT = "mqtt:\n"                                                           # line 14
LIGHTING = """\
lighting:
  latitude: 21.0
  longitude: 105.8
  buses: [{name: d, kind: dali, port: /dev/ttyS0}]
  groups:
    - {name: g, bus: d}
"""                                                                        # lines 14-19


def one(tmp_path: Path, text: str, field: str) -> object:
    """The single problem of ``text``; it must name ``field`` and start with the file path."""
    (p,) = problems(tmp_path, text)
    assert p.field == field, str(p)
    assert str(p).startswith(f"{tmp_path / 'pole.yaml'}:{p.line}:{p.column}: "), str(p)
    return p


def test_nul_and_control_characters_are_located(tmp_path: Path) -> None:
    (p,) = problems(tmp_path, GOOD.replace("site: hanoi", "site: han\x00oi"))
    assert (p.line, p.column) == (3, 12) and "control character U+0000" in p.message
    (p,) = problems(tmp_path, GOOD.replace("site: hanoi", "site: han\x1boi"))
    assert p.line == 3 and "U+001B" in p.message
    # an escape in a quoted string that makes a control character is refused too
    p = one(tmp_path, GOOD.replace("site: hanoi", 'site: "han\\x07oi"'), "device.site")
    assert p.line == 3 and "U+0007" in p.message
    # tab, newline and carriage return stay allowed
    load_config(write(tmp_path, GOOD.replace("\n", "\r\n").replace("site: hanoi", "site: hanoi  # a\ttab")))


def test_bytes_that_are_not_utf8_are_located(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    path.write_bytes(path.read_bytes().replace(b"hanoi", b"han\xffoi"))
    with pytest.raises(ConfigError) as ei:
        load_config(path)
    (p,) = ei.value.problems
    assert (p.line, p.column) == (3, 12) and "not UTF-8" in p.message


def test_oversized_file_is_refused_before_parsing(tmp_path: Path) -> None:
    (p,) = problems(tmp_path, GOOD + "#" * (1 << 20) + "\n")
    assert p.line == 1 and "larger than 1048576 bytes" in p.message


def test_alias_bomb_is_refused_at_the_alias(tmp_path: Path) -> None:
    lines = ["lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"lol{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]
    (p,) = problems(tmp_path, GOOD + "\n".join(lines) + "\n")
    assert p.line == 14 + 3 and "alias bomb" in p.message and "10000 values" in p.message


def test_small_aliases_still_work(tmp_path: Path) -> None:
    text = GOOD.replace("    detector:\n      model: {card}\n",
                        "    detector: &det\n      model: {card}\n")
    text += ("  - name: south\n    source: {kind: v4l2, index: 1}\n    detector: *det\n"
             "    lines: [{name: main, points: [[0, 1], [9, 1]]}]\n")
    cfg = load_config(write(tmp_path, text))
    assert cfg.cameras[1].detector == cfg.cameras[0].detector


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    (p,) = problems(tmp_path, GOOD + "extra: &x {a: [1, *x]}\n")
    assert (p.line, p.column) == (14, 19) and "recursive" in p.message


def test_deep_nesting_is_refused_with_its_line(tmp_path: Path) -> None:
    (p,) = problems(tmp_path, GOOD + "deep: " + "[" * 1000 + "]" * 1000 + "\n")
    assert p.line == 14 and "nested deeper than 64 levels" in p.message
    (p,) = problems(tmp_path, GOOD + "deep:\n" + "".join("  " * i + f"k{i}:\n"
                                                           for i in range(1, 100)))
    assert 14 + 63 <= p.line <= 14 + 64 and "nested deeper" in p.message


def test_list_as_a_key_is_an_error_not_a_crash(tmp_path: Path) -> None:
    (p,) = problems(tmp_path, GOOD + "? [a, b]\n: 1\n")
    assert p.line == 14 and "key must be a plain name" in p.message


@pytest.mark.parametrize("host", ['""', '"  "', "tcp://broker", "broker:1883", "-bad.example",
                                  "1.2.3.999", "'[::1]'", "exa mple.net"])
def test_mqtt_host_must_be_a_hostname_or_ip(tmp_path: Path, host: str) -> None:
    p = one(tmp_path, GOOD + MQTT + f"  host: {host}\n", "mqtt.host")
    assert p.line == 15 and "host name" in p.message and "IP address" in p.message


@pytest.mark.parametrize("host", ["broker", "mqtt.city.example.net", "192.0.2.1", "2001:db8::1",
                                  "broker_1.lan"])
def test_mqtt_host_accepts_names_and_ip_literals(tmp_path: Path, host: str) -> None:
    assert load_config(write(tmp_path, GOOD + MQTT + f"  host: '{host}'\n")).mqtt.host == host


def test_booleans_are_never_numbers(tmp_path: Path) -> None:
    p = one(tmp_path, GOOD + MQTT + "  port: true\n", "mqtt.port")
    assert p.line == 15 and "valid integer" in p.message and "True" in p.message
    p = one(tmp_path, GOOD + LIGHTING.replace("{name: g, bus: d}",
                                              "{name: g, bus: d, luminaires: true}"),
            "lighting.groups[0].luminaires")
    assert p.line == 19 and "valid integer" in p.message
    p = one(tmp_path, GOOD + LIGHTING + "  tick_s: false\n", "lighting.tick_s")
    assert p.line == 20 and "valid number" in p.message


def test_quoted_numbers_are_text_not_numbers(tmp_path: Path) -> None:
    p = one(tmp_path, GOOD + LIGHTING + "  tick_s: '1e3'\n", "lighting.tick_s")
    assert p.line == 20 and "valid number" in p.message and "'1e3'" in p.message
    p = one(tmp_path, GOOD + MQTT + "  port: '1883'\n", "mqtt.port")
    assert p.line == 15 and "valid integer" in p.message


def test_whole_numbers_stay_valid_for_decimal_fields(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD + LIGHTING + "  tick_s: 5\n"))
    assert cfg.lighting.tick_s == 5.0 and isinstance(cfg.lighting.tick_s, float)


def test_infinite_and_nan_numbers_are_refused(tmp_path: Path) -> None:
    p = one(tmp_path, GOOD.replace("[[0, 100], [320, 100]]", "[[0, .inf], [320, 100]]"),
            "cameras[0].lines[0].points[0][1]")
    assert p.line == 13 and "finite number" in p.message
    p = one(tmp_path, GOOD + LIGHTING.replace("latitude: 21.0", "latitude: .nan"),
            "lighting.latitude")
    assert p.line == 15 and "finite number" in p.message
    p = one(tmp_path, GOOD + LIGHTING + "  camera_stale_s: .inf\n", "lighting.camera_stale_s")
    assert p.line == 20 and "finite number" in p.message


@pytest.mark.parametrize("prefix", ["a//b", "a/"])
def test_mqtt_prefix_has_no_empty_levels(tmp_path: Path, prefix: str) -> None:
    p = one(tmp_path, GOOD + MQTT + f"  prefix: {prefix}\n", "mqtt.prefix")
    assert p.line == 15 and "empty topic level" in p.message and "city/polelink" in p.message


def test_mqtt_prefix_may_have_levels(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, GOOD + MQTT + "  prefix: city/poles\n")).mqtt.prefix \
        == "city/poles"


def test_reconnect_maximum_not_below_minimum(tmp_path: Path) -> None:
    p = one(tmp_path, GOOD + MQTT + "  reconnect_min_s: 10\n  reconnect_max_s: 5\n",
            "mqtt.reconnect_max_s")
    assert p.line == 16 and "must not be shorter than reconnect_min_s (10 s)" in p.message
    p = one(tmp_path, GOOD.replace("      url: rtsp://127.0.0.1:8554/cam\n",
                                   "      url: rtsp://127.0.0.1:8554/cam\n"
                                   "      reconnect_initial_s: 20\n      reconnect_max_s: 2\n"),
            "cameras[0].source.reconnect_max_s")
    assert p.line == 10 and "reconnect_initial_s (20 s)" in p.message


def test_directory_where_a_file_is_needed_is_named(tmp_path: Path) -> None:
    d = tmp_path / "adir"
    d.mkdir()
    p = one(tmp_path, GOOD.replace("{card}", str(d)), "cameras[0].detector.model")
    assert p.line == 10 and f"model card {d} is a directory, not a file" in p.message
    p = one(tmp_path, GOOD.replace("kind: stream\n      url: rtsp://127.0.0.1:8554/cam",
                                   "kind: file\n      path: adir"), "cameras[0].source.path")
    assert p.line == 8 and f"video file {d} is a directory" in p.message
    p = one(tmp_path, GOOD + MQTT + "  secrets_file: adir\n", "mqtt.secrets_file")
    assert p.line == 15 and "is a directory" in p.message
    p = one(tmp_path, GOOD + MQTT + "  tls: {ca: adir}\n", "mqtt.tls.ca")
    assert p.line == 15 and "is a directory" in p.message
    p = one(tmp_path, GOOD + MQTT + "  commands: {verify_key: adir}\n",
            "mqtt.commands.verify_key")
    assert p.line == 15 and "is a directory" in p.message
    p = one(tmp_path, GOOD + LIGHTING + "  model: adir\n", "lighting.model")
    assert p.line == 20 and "is a directory" in p.message
    p = one(tmp_path, GOOD + MQTT + "  outbox_path: adir\n", "mqtt.outbox_path")
    assert p.line == 15 and "is a directory, not a file: give a file name" in p.message
    p = one(tmp_path, GOOD + "aggregates:\n  path: adir\n", "aggregates.path")
    assert p.line == 15 and "is a directory" in p.message


def test_missing_secrets_file_and_empty_path_are_errors(tmp_path: Path) -> None:
    p = one(tmp_path, GOOD + MQTT + "  secrets_file: nope.yaml\n", "mqtt.secrets_file")
    assert p.line == 15 and "does not exist" in p.message
    p = one(tmp_path, GOOD + MQTT + "  outbox_path: ''\n", "mqtt.outbox_path")
    assert p.line == 15 and "must not be empty" in p.message


def test_two_directions_of_a_line_need_two_names(tmp_path: Path) -> None:
    p = one(tmp_path, GOOD + "        directions: {up: city, down: city}\n",
            "cameras[0].lines[0].directions")
    assert p.line == 14 and "both directions are called 'city'" in p.message


def test_self_intersecting_zone_is_refused(tmp_path: Path) -> None:
    text = GOOD + "    zones:\n      - name: bow\n        polygon: [[0, 0], [10, 10], [10, 0], [0, 10]]\n"
    p = one(tmp_path, text, "cameras[0].zones[0].polygon")
    assert p.line == 16 and "crosses itself" in p.message and "in order around" in p.message
    text = GOOD + "    zones:\n      - name: flat\n        polygon: [[0, 0], [5, 0], [10, 0]]\n"
    assert "no area" in one(tmp_path, text, "cameras[0].zones[0].polygon").message
    ok = GOOD + "    zones:\n      - name: box\n        polygon: [[0, 0], [10, 0], [10, 10], [0, 10]]\n"
    assert len(load_config(write(tmp_path, ok)).cameras[0].zones[0].polygon) == 4


def test_duplicate_classes_are_refused_even_200000_of_them(tmp_path: Path) -> None:
    p = one(tmp_path, GOOD.replace("      model: {card}\n",
                                   "      model: {card}\n      classes: [car, bus, car]\n"),
            "cameras[0].detector.classes")
    assert p.line == 11 and "repeated: 'car'" in p.message
    many = "[" + ", ".join(["car"] * 200_000) + "]"
    p = one(tmp_path, GOOD.replace("      model: {card}\n",
                                   f"      model: {{card}}\n      classes: {many}\n"),
            "cameras[0].detector.classes")
    assert p.line == 11 and "at most 6 items" in p.message


def test_adaptive_minimum_above_the_group_ceiling(tmp_path: Path) -> None:
    text = GOOD + LIGHTING.replace("{name: g, bus: d}", "{name: g, bus: d, ceiling_pct: 60}") \
        + "  programs:\n    night:\n      - {at: dusk, adaptive: {min: 80, max: 100}}\n"
    p = one(tmp_path, text, "lighting.programs.night[0].adaptive.min")
    assert p.line == 22 and "above the ceiling of group 'g' (60 %)" in p.message
    p = one(tmp_path, GOOD + LIGHTING.replace(
        "{name: g, bus: d}", "{name: g, bus: d, floor_pct: 50, ceiling_pct: 40}"),
        "lighting.groups[0].floor_pct")
    assert p.line == 19 and "below the floor" in p.message


def test_traffic_coverage_fits_its_window(tmp_path: Path) -> None:
    p = one(tmp_path, GOOD + LIGHTING + "  traffic_window_s: 600\n  traffic_min_coverage_s: 900\n",
            "lighting.traffic_min_coverage_s")
    assert p.line == 21 and "at most" in p.message


@pytest.mark.parametrize("port", ['""', "' '", "'/dev/tty S0'"])
def test_serial_port_must_not_be_empty(tmp_path: Path, port: str) -> None:
    p = one(tmp_path, GOOD + LIGHTING.replace("port: /dev/ttyS0", f"port: {port}"),
            "lighting.buses[0].port")
    assert p.line == 17 and "/dev/ttyS0" in p.message


def test_time_zone_that_is_a_folder_is_an_error_not_a_crash(tmp_path: Path) -> None:
    p = one(tmp_path, GOOD + LIGHTING + "  timezone: Asia\n", "lighting.timezone")
    assert p.line == 20 and "unknown time zone 'Asia'" in p.message
