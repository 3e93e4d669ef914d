"""Config crews cannot get wrong: site files (``extends:``), secrets apart, ``agent schema``,
the example files, ``agent validate --simulate`` and the models shipped in the wheel.

Real files, real ``python -m agent`` processes, a real wheel; fuzzing of the new parsing
paths (extends chains, ``!secret`` and ``${NAME}`` references) with hypothesis.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import cv2
import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.settings.paths import models_dir, path_from_text
from agent.settings.schema import load_config, load_config_report
from agent.settings.yamlfile import INTERNAL_ERROR, ConfigError
from tests.conftest import ROOT, SIMNET

SITE = """\
device:
  site: hanoi
aggregates:
  interval_s: 300
  path: data/aggregates.jsonl
mqtt:
  host: broker.site.example
  port: 1883
  password: !secret mqtt_password
lighting:
  latitude: 21.0
  longitude: 105.8
  timezone: Asia/Ho_Chi_Minh
  programs:
    standard:
      - {at: sunset, level: 100}
      - {at: "22:00", level: 60}
      - {at: sunrise, level: 0}
  buses: [{name: d, kind: dali, port: /dev/ttyS0}]
  groups:
    - {name: site-group, bus: d}
"""

POLE = """\
extends: site.yaml
device:
  id: pole-1
cameras:
  - name: north
    source: {kind: stream, url: "rtsp://127.0.0.1:8554/cam"}
    detector: {model: pkg:models/simnet.yaml}
    lines:
      - {name: main, points: [[0, 100], [320, 100]]}
mqtt:
  host: broker.pole.example
lighting:
  groups:
    - {name: street, bus: d, luminaires: 2}
"""


def files(tmp: Path, site: str = SITE, pole: str = POLE,
          secrets: str | None = "mqtt_password: 's3cret-mqtt-pw'\n", mode: int = 0o600) -> Path:
    """Write site.yaml, pole.yaml and secrets.yaml (mode ``mode``) into ``tmp``."""
    (tmp / "site.yaml").write_text(site)
    (tmp / "pole.yaml").write_text(pole)
    if secrets is not None:
        (tmp / "secrets.yaml").write_text(secrets)
        (tmp / "secrets.yaml").chmod(mode)
    return tmp / "pole.yaml"


def problems_of(path: Path, **kw: Any) -> list:
    with pytest.raises(ConfigError) as ei:
        load_config_report(path, **kw)
    return ei.value.problems


def agent(*args: str, cwd: Path | None = None, env: dict | None = None,
          timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout)


# --- extends: site + pole ----------------------------------------------------------------

def test_pole_extends_site_mappings_merge_lists_replace(tmp_path: Path) -> None:
    cfg = load_config(files(tmp_path))
    assert cfg.device.site == "hanoi" and cfg.device.id == "pole-1"      # merged mapping
    assert cfg.mqtt.host == "broker.pole.example" and cfg.mqtt.port == 1883
    assert cfg.aggregates.interval_s == 300
    assert [g.name for g in cfg.lighting.groups] == ["street"]          # list replaced whole
    assert cfg.lighting.latitude == 21.0 and "standard" in cfg.lighting.programs
    assert cfg.extends is None
    assert cfg.mqtt.password.get_secret_value() == "s3cret-mqtt-pw"


def test_null_in_the_pole_file_removes_a_site_section(tmp_path: Path) -> None:
    cfg = load_config(files(tmp_path, pole=POLE.replace("mqtt:\n  host: broker.pole.example\n",
                                                        "mqtt: null\n")))
    assert cfg.mqtt is None


def test_an_error_in_a_site_value_names_the_site_file_and_line(tmp_path: Path) -> None:
    site = SITE.replace("interval_s: 300", "interval_s: 70")
    pole = POLE.replace("id: pole-1", "id: Pole 1")
    ps = problems_of(files(tmp_path, site=site, pole=pole))
    by_field = {p.field: p for p in ps}
    assert by_field["aggregates.interval_s"].file == str(tmp_path / "site.yaml")
    assert by_field["aggregates.interval_s"].line == 4
    assert "divide a day" in by_field["aggregates.interval_s"].message
    assert by_field["device.id"].file == str(tmp_path / "pole.yaml")
    assert by_field["device.id"].line == 3
    assert ps[0].file == str(tmp_path / "pole.yaml")  # the pole file's problems come first


def test_an_unknown_key_in_the_site_is_located_in_the_site(tmp_path: Path) -> None:
    site = SITE.replace("  port: 1883\n", "  port: 1883\n  hots: x\n")
    (p,) = problems_of(files(tmp_path, site=site))
    assert (p.file, p.line, p.field) == (str(tmp_path / "site.yaml"), 9, "mqtt.hots")
    assert "did you mean 'host'" in p.message


def test_relative_paths_are_relative_to_the_file_that_writes_them(tmp_path: Path) -> None:
    (tmp_path / "sites").mkdir()
    (tmp_path / "poles").mkdir()
    (tmp_path / "sites" / "site.yaml").write_text(SITE)
    (tmp_path / "secrets.yaml").write_text("mqtt_password: 'x-long-pw'\n")
    (tmp_path / "secrets.yaml").chmod(0o600)
    pole = POLE.replace("extends: site.yaml", "extends: ../sites/site.yaml\n"
                        "secrets: ../secrets.yaml")
    (tmp_path / "poles" / "pole.yaml").write_text(pole)
    cfg = load_config(tmp_path / "poles" / "pole.yaml")
    assert cfg.aggregates.path == tmp_path / "sites" / "data" / "aggregates.jsonl"
    assert cfg.lighting.overrides_path == tmp_path / "poles" / "var" / "overrides.json"  # default
    assert cfg.cameras[0].detector.model == models_dir() / "simnet.yaml"


def test_chains_of_three_files_and_loops_refused(tmp_path: Path) -> None:
    (tmp_path / "city.yaml").write_text("aggregates: {interval_s: 900}\nclock: {max_error_s: 2}\n")
    site = "extends: city.yaml\n" + SITE.replace("aggregates:\n  interval_s: 300\n",
                                                 "aggregates:\n")
    cfg = load_config(files(tmp_path, site=site))
    assert cfg.aggregates.interval_s == 900 and cfg.clock.max_error_s == 2
    # city extends the pole: a loop, refused at the extends line that closes it
    (tmp_path / "city.yaml").write_text("extends: pole.yaml\n")
    (p,) = problems_of(tmp_path / "pole.yaml")
    assert p.file == str(tmp_path / "city.yaml") and p.line == 1 and p.field == "extends"
    assert "loops" in p.message and "pole.yaml -> " in p.message
    # a file extending itself
    (tmp_path / "self.yaml").write_text("device: {id: a, site: b}\nextends: self.yaml\n")
    (p,) = problems_of(tmp_path / "self.yaml")
    assert p.line == 2 and "loops" in p.message


def test_extends_missing_or_not_a_name_is_located(tmp_path: Path) -> None:
    (p,) = problems_of(files(tmp_path, pole=POLE.replace("extends: site.yaml",
                                                         "extends: nowhere.yaml")))
    assert (p.file, p.line, p.field) == (str(tmp_path / "pole.yaml"), 1, "extends")
    assert "does not exist" in p.message and "nowhere.yaml" in p.message
    (p,) = problems_of(files(tmp_path, pole=POLE.replace("extends: site.yaml",
                                                         "extends: [a, b]")))
    assert p.line == 1 and "names one file" in p.message
    (p,) = problems_of(files(tmp_path, pole=POLE.replace("extends: site.yaml", "extends: .")))
    assert "directory" in p.message
    (tmp_path / "list.yaml").write_text("- a\n")
    (p,) = problems_of(files(tmp_path, pole=POLE.replace("extends: site.yaml",
                                                         "extends: list.yaml")))
    assert p.file == str(tmp_path / "list.yaml") and "mapping" in p.message


# --- secrets -------------------------------------------------------------------------------

def test_secret_and_env_references_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pole = POLE.replace('url: "rtsp://127.0.0.1:8554/cam"',
                        'url: "rtsp://viewer:${CAM_PASSWORD}@127.0.0.1:8554/cam"')
    text = pole.replace("  host: broker.pole.example\n",
                        "  host: broker.pole.example\n  username: ${POLE_USER}\n")
    path = files(tmp_path, pole=text,
                 secrets="mqtt_password: 's3cret-mqtt-pw'\nCAM_PASSWORD: 'cam-pw-123'\n")
    monkeypatch.setenv("POLE_USER", "pole-1-account")
    monkeypatch.setenv("CAM_PASSWORD", "from-the-environment")     # the environment wins
    loaded = load_config_report(path)
    cfg = loaded.config
    assert cfg.cameras[0].source.url == "rtsp://viewer:from-the-environment@127.0.0.1:8554/cam"
    assert cfg.mqtt.username == "pole-1-account"
    assert loaded.secrets_file == tmp_path / "secrets.yaml"
    assert "s3cret" not in repr(cfg)                                  # SecretStr in reprs
    monkeypatch.delenv("CAM_PASSWORD")
    cfg = load_config(path)                                           # then the secrets file
    assert cfg.cameras[0].source.url == "rtsp://viewer:cam-pw-123@127.0.0.1:8554/cam"
    # $${ is a literal ${
    path.write_text(text.replace("id: pole-1", "id: pole-1\n  site: \"x$${y\""))
    with pytest.raises(ConfigError) as ei:   # "x${y" is not a valid site name: but no ref error
        load_config(path)
    assert "'x${y'" in str(ei.value) and "not resolved" not in str(ei.value)


def test_unresolved_references_are_located_and_name_no_value(tmp_path: Path) -> None:
    pole = POLE.replace('url: "rtsp://127.0.0.1:8554/cam"',
                        'url: "rtsp://viewer:${NO_SUCH_VAR_XYZ}@127.0.0.1/cam"')
    ps = problems_of(files(tmp_path, pole=pole, secrets="other: 'value-not-shown'\n"))
    by_field = {p.field: p for p in ps}
    url = by_field["cameras[0].source.url"]
    assert url.file == str(tmp_path / "pole.yaml") and url.line == 6
    assert "${NO_SUCH_VAR_XYZ}" in url.message and "not in the environment" in url.message
    pw = by_field["mqtt.password"]
    assert pw.file == str(tmp_path / "site.yaml") and pw.line == 9
    assert "!secret mqtt_password" in pw.message and "it has: other" in pw.message
    assert all("value-not-shown" not in str(p) for p in ps)
    assert len([p for p in ps if p.field == "mqtt.password"]) == 1  # no second "type" error
    # no secrets file at all
    (tmp_path / "secrets.yaml").unlink()
    ps = problems_of(tmp_path / "pole.yaml")
    assert any("secrets.yaml" in p.message and "does not exist" in p.message for p in ps)


@pytest.mark.parametrize("line, field", [
    ("  password: hunter2-inline", "mqtt.password"),
    ("  password: 123456789", "mqtt.password"),
    ("  api_token: hunter2-inline", "mqtt.api_token"),
])
def test_inline_secrets_are_errors_that_never_show_the_value(tmp_path: Path, line: str,
                                                             field: str) -> None:
    pole = POLE.replace("  host: broker.pole.example\n", f"  host: broker.pole.example\n{line}\n")
    ps = problems_of(files(tmp_path, pole=pole))
    inline = [p for p in ps if p.field == field and "inline" in p.message]
    assert inline and inline[0].file == str(tmp_path / "pole.yaml") and inline[0].line == 12
    assert "secrets file" in inline[0].message
    value = line.split(": ", 1)[1]
    assert all(value not in str(p) for p in ps), ps


def test_url_credentials_and_private_keys_inline_are_errors(tmp_path: Path) -> None:
    pole = POLE.replace('url: "rtsp://127.0.0.1:8554/cam"',
                        'url: "rtsp://admin:pa55word@192.0.2.7/cam"')
    ps = problems_of(files(tmp_path, pole=pole))
    (p,) = [p for p in ps if p.field == "cameras[0].source.url"]
    assert "password written inline" in p.message and "pa55word" not in str(p)
    assert "${NAME}" in p.message
    key = "-----BEGIN PRIVATE KEY-----\\nMIIEv...\\n-----END PRIVATE KEY-----"
    pole = POLE.replace("id: pole-1", f'id: "{key}"')
    ps = problems_of(files(tmp_path, pole=pole))
    assert any("private key written inline" in p.message and p.field == "device.id" for p in ps)
    assert all("MIIEv" not in str(p) for p in ps)


def test_a_value_from_a_secret_is_never_shown_in_an_error(tmp_path: Path) -> None:
    site = SITE.replace("  port: 1883", "  port: !secret mqtt_port")
    pole = POLE.replace('url: "rtsp://127.0.0.1:8554/cam"', 'url: "${CAM_URL}"')
    ps = problems_of(files(tmp_path, site=site, pole=pole,
                           secrets="mqtt_password: 'pw-000001'\nmqtt_port: 'port-secret-77'\n"
                                   "CAM_URL: 'ftp://leaky-host-name/cam'\n"))
    text = "\n".join(map(str, ps))
    assert "port-secret-77" not in text and "leaky-host-name" not in text
    assert "mqtt.port" in text and "cameras[0].source.url" in text


def test_secrets_file_mode_refused_by_run_warned_by_validate(tmp_path: Path) -> None:
    path = files(tmp_path, mode=0o644)
    ps = problems_of(path)
    assert any(p.file == str(tmp_path / "secrets.yaml") and "refused" in p.message
               and "chmod 600" in p.message for p in ps)
    r = agent("validate", str(path), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "WARNING" in r.stderr and "chmod 600" in r.stderr and "s3cret" not in r.stderr
    r = agent("run", "--config", str(path), "--duration", "1", "-q", cwd=tmp_path)
    assert r.returncode == 1 and "refused" in r.stderr and "s3cret" not in r.stderr + r.stdout


def test_secrets_file_choice_flag_then_key_then_default(tmp_path: Path) -> None:
    path = files(tmp_path)
    (tmp_path / "by-key.yaml").write_text("mqtt_password: 'from-key'\n")
    (tmp_path / "by-flag.yaml").write_text("mqtt_password: 'from-flag'\n")
    for f in ("by-key.yaml", "by-flag.yaml"):
        (tmp_path / f).chmod(0o600)
    assert load_config(path).mqtt.password.get_secret_value() == "s3cret-mqtt-pw"
    path.write_text(POLE + "secrets: by-key.yaml\n")
    assert load_config(path).mqtt.password.get_secret_value() == "from-key"
    assert load_config(path, tmp_path / "by-flag.yaml").mqtt.password.get_secret_value() \
        == "from-flag"
    path.write_text(POLE + "secrets: missing.yaml\n")
    ps = problems_of(path)
    assert any("missing.yaml" in p.message and "pole.yaml:15" in p.message
               and "does not exist" in p.message for p in ps)
    # named on purpose and nothing refers to it: still checked, at its key
    path.write_text(POLE.replace("  password: !secret mqtt_password\n", "")
                    + "secrets: missing.yaml\n")
    (tmp_path / "site.yaml").write_text(SITE.replace("  password: !secret mqtt_password\n", ""))
    (p,) = problems_of(path)
    assert (p.field, p.line) == ("secrets", 15) and "does not exist" in p.message


def test_secrets_file_problems_are_located_without_values(tmp_path: Path) -> None:
    ps = problems_of(files(tmp_path, secrets="mqtt_password: 20260230\nbad name: 'zzz-val'\n"))
    text = "\n".join(map(str, ps))
    assert f"{tmp_path / 'secrets.yaml'}:1:" in text and "quote it" in text
    assert "20260230" not in text and "zzz-val" not in text


def test_the_runner_takes_the_password_from_the_config(tmp_path: Path) -> None:
    from agent.uplink.mqtt import credentials

    cfg = load_config(files(tmp_path))
    assert credentials(None, "acct", cfg.mqtt.password.get_secret_value()) == \
        ("acct", "s3cret-mqtt-pw")


# --- agent schema and the example files ------------------------------------------------------

def _schema_paths(schema: dict) -> set[tuple[str, ...]]:
    """Every key path of the schema ('*' for a free mapping key)."""
    defs = schema.get("$defs", {})
    out: set[tuple[str, ...]] = set()

    def walk(node: Any, path: tuple[str, ...], depth: int = 0) -> None:
        if not isinstance(node, dict) or depth > 30:
            return
        if "$ref" in node:
            walk(defs[node["$ref"].split("/")[-1]], path, depth + 1)
        for k in ("anyOf", "oneOf", "allOf"):
            for sub in node.get(k, []):
                walk(sub, path, depth + 1)
        for name, sub in node.get("properties", {}).items():
            out.add((*path, name))
            walk(sub, (*path, name), depth + 1)
        if isinstance(node.get("items"), dict):
            walk(node["items"], path, depth + 1)
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], (*path, "*"), depth + 1)

    walk(schema, ())
    return out


_KEY_LINE = re.compile(r"^(\s*)(#\s?)?(\s*)(- )?([A-Za-z_][A-Za-z0-9_]*):(\s.*)?$")
_ITEM_FLOW = re.compile(r"^(\s*)(#\s?)?(\s*)- (\{.*\})\s*(#.*)?$")


def _shown_paths(text: str) -> set[tuple[str, ...]]:
    """Key paths an example file shows, commented-out keys included (a ``# key: value``
    line counts at the column of its '#'), with the keys of inline {flow} mappings."""
    out: set[tuple[str, ...]] = set()
    stack: list[tuple[int, str]] = []

    def flow(value: str, path: tuple[str, ...]) -> None:
        value = value.strip()
        if not value.startswith(("{", "[")):
            return
        try:
            data = yaml.safe_load(value)
        except yaml.YAMLError:
            data = yaml.safe_load(value.split(" #")[0]) if " #" in value else None
        for item in data if isinstance(data, list) else [data]:
            if isinstance(item, dict):
                for k, v in item.items():
                    out.add((*path, str(k)))
                    flow(json.dumps(v) if isinstance(v, dict | list) else "", (*path, str(k)))

    for line in text.splitlines():
        m = _ITEM_FLOW.match(line) or _KEY_LINE.match(line)
        if not m:
            continue
        col = len(m.group(1)) + len(m.group(3) or "")
        if m.re is _ITEM_FLOW:
            while stack and stack[-1][0] >= col:
                stack.pop()
            flow(m.group(4), tuple(k for _, k in stack))
            continue
        col += 2 if m.group(4) else 0
        while stack and stack[-1][0] >= col:
            stack.pop()
        path = (*(k for _, k in stack), m.group(5))
        out.add(path)
        stack.append((col, m.group(5)))
        value = (m.group(6) or "").strip()
        if value.startswith(("{", "[")):
            end = value.find(" #")
            flow(value if end < 0 else value[:end], path)
    return out


def _generalise(paths: set[tuple[str, ...]], schema_paths: set[tuple[str, ...]]
                ) -> set[tuple[str, ...]]:
    """Shown paths with free mapping keys (program names) as '*'."""
    out = set()
    for p in paths:
        g: tuple[str, ...] = ()
        for part in p:
            g = (*g, part) if any(s[:len(g) + 1] == (*g, part) for s in schema_paths) \
                else (*g, "*")
        out.add(g)
    return out


def test_schema_command_prints_the_provisioning_schema() -> None:
    r = agent("schema")
    assert r.returncode == 0, r.stderr
    schema = json.loads(r.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    jsonschema.Draft202012Validator.check_schema(schema)
    assert set(schema["required"]) == {"device", "cameras"}
    pw = schema["$defs"]["MqttConfig"]["properties"]["password"]["anyOf"][0]
    assert pw.get("writeOnly") is True
    assert schema["$defs"]["MqttConfig"]["properties"]["password"]["secret"] is True
    # the example (its YAML as written) is valid against the schema an editor would use
    example = yaml.safe_load((ROOT / "config" / "example-pole.yaml").read_text())
    jsonschema.validate(example, schema)
    bad = {**example, "aggregates": {"interval_s": "often"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    site = json.loads(agent("schema", "--site").stdout)
    assert "required" not in json.dumps(site)
    jsonschema.validate(yaml.safe_load((ROOT / "config" / "example-site.yaml").read_text()
                                       .replace("!secret ", "")), site)


def test_the_example_pole_file_shows_every_schema_key() -> None:
    from agent.settings.editor_schema import provisioning_schema

    schema_paths = _schema_paths(provisioning_schema())
    shown = _generalise(_shown_paths((ROOT / "config" / "example-pole.yaml").read_text()),
                        schema_paths)
    missing = sorted(".".join(p) for p in schema_paths if p not in shown)
    assert not missing, f"config/example-pole.yaml does not show: {', '.join(missing)}"
    assert ("mqtt", "password") in shown and ("mqtt", "host") in shown


def test_the_example_files_load(tmp_path: Path) -> None:
    # in a copy, with the secrets file made private as a crew would (git checks it out 0644)
    for name in ("example-pole.yaml", "example-site.yaml", "example-pole-0042.yaml",
                 "example.secrets.yaml"):
        shutil.copy(ROOT / "config" / name, tmp_path / name)
    (tmp_path / "example.secrets.yaml").chmod(0o600)
    cfg = load_config(tmp_path / "example-pole.yaml")
    assert cfg.mqtt is not None and cfg.cameras[0].detector.model == models_dir() / "yolox_nano.yaml"
    loaded = load_config_report(tmp_path / "example-pole-0042.yaml")
    cfg = loaded.config
    assert loaded.files == [tmp_path / "example-pole-0042.yaml", tmp_path / "example-site.yaml"]
    assert cfg.device.site == "hanoi-d1" and cfg.aggregates.interval_s == 300
    assert cfg.mqtt.username == "pole-hn-0042" and cfg.mqtt.password is not None
    assert "${" not in cfg.cameras[0].source.url and "viewer:" in cfg.cameras[0].source.url
    assert [g.name for g in cfg.lighting.groups] == ["street"] and cfg.lighting.latitude == 21.0301
    # as git checks it out (0644): validate warns and passes, the loader for run refuses
    (tmp_path / "example.secrets.yaml").chmod(0o644)
    r = agent("validate", str(tmp_path / "example-pole-0042.yaml"))
    assert r.returncode == 0 and "chmod 600" in r.stderr and "OK" in r.stdout
    with pytest.raises(ConfigError, match="refused"):
        load_config(tmp_path / "example-pole-0042.yaml")


# --- models shipped with the package ---------------------------------------------------------

def test_pkg_paths_name_shipped_files_only() -> None:
    assert path_from_text("pkg:models/simnet.yaml") == models_dir() / "simnet.yaml"
    assert (models_dir() / "dimming.md").is_file() and (models_dir() / "simnet.onnx").is_file()
    for bad in ("pkg:simnet.yaml", "pkg:models/", "pkg:models/../setup.cfg", "pkg:other/x"):
        with pytest.raises(ValueError, match="pkg:models/<file>"):
            path_from_text(bad)


def test_pkg_path_errors_are_located(tmp_path: Path) -> None:
    pole = POLE.replace("pkg:models/simnet.yaml", "pkg:models/nothing.yaml")
    ps = problems_of(files(tmp_path, pole=pole))
    (p,) = [p for p in ps if p.field == "cameras[0].detector.model"]
    assert p.line == 7 and "does not exist" in p.message


@pytest.mark.slow
def test_an_installed_wheel_ships_the_models_and_resolves_pkg_paths(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                        "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    (wheel,) = (tmp_path / "dist").glob("polelink-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in ("dimming.md", "dimming.onnx", "simnet.yaml", "simnet.onnx", "simnet_ssd.yaml",
              "simnet_ssd.tflite", "yolox_nano.yaml"):
        assert f"agent/models/{f}" in names, f
    assert "agent/uplink/schemas/traffic.schema.json" in names
    site = tmp_path / "site-packages"
    zipfile.ZipFile(wheel).extractall(site)
    pole = tmp_path / "pole.yaml"
    pole.write_text(POLE.replace("extends: site.yaml\n", "").replace(
        "id: pole-1", "id: pole-1\n  site: hanoi").replace(
        "mqtt:\n  host: broker.pole.example\n", "").replace(
        "lighting:\n", "lighting:\n  latitude: 21.0\n  longitude: 105.8\n"
        "  buses: [{name: d, kind: dali}]\n"))
    # the extracted wheel first on the path, run from a folder without the source tree
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import agent; "
            "assert agent.__file__.startswith(sys.argv[1]), agent.__file__; "
            "from agent.settings.schema import load_config; "
            "from agent.settings.modelcard import load_card; "
            "c = load_config(sys.argv[2]); "
            "assert str(c.lighting.model).startswith(sys.argv[1]), c.lighting.model; "
            "card = load_card(c.cameras[0].detector.model); "
            "assert str(card.file).startswith(sys.argv[1]); "
            "load_card(c.lighting.model) if c.lighting.model.suffix == '.yaml' else None; "
            "from agent.cli import main; sys.exit(main(['validate', '--check-models', sys.argv[2]]))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code, str(site), str(pole)], capture_output=True,
                       text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "model simnet" in r.stdout and "OK" in r.stdout


# --- agent validate --simulate -------------------------------------------------------------

SIM_POLE = """\
device: {{id: pole-sim, site: sim-city}}
cameras:
  - name: sim
    source: {{kind: file, path: {clip}}}
    detector: {{model: {card}}}
    gating: {{motion: false}}
    lines:
{lines}
lighting:
  latitude: 21.0285
  longitude: 105.8542
  timezone: Asia/Ho_Chi_Minh
  programs:
    standard:
      - {{at: sunset, level: 100}}
      - {{at: "22:00", adaptive: {{min: 50, max: 100}}}}
      - {{at: sunrise, offset_min: -10, level: 0}}
  buses: [{{name: d, kind: dali}}]
  groups: [{{name: street, bus: d}}]
"""
MAIN = "      - {name: main, points: [[115, 198], [524, 198]], directions: {up: north, down: south}}"


def sim_pole(tmp_path: Path, clip: Path, *lines: str) -> Path:
    p = tmp_path / "pole.yaml"
    p.write_text(SIM_POLE.format(clip=clip, card=SIMNET, lines="\n".join(lines)))
    return p


def test_simulate_prints_tonight_at_the_pole(tmp_path: Path, sim_clip: tuple[Path, dict]) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from agent.lighting.astro import event_time

    clip, _ = sim_clip
    pole = sim_pole(tmp_path, clip, MAIN)
    pole.write_text(pole.read_text().replace(f"{{kind: file, path: {clip}}}",
                                             "{kind: stream, url: 'rtsp://127.0.0.1/x'}"))
    r = agent("validate", "--simulate", "--date", "2026-06-21", str(pole))
    assert r.returncode == 0, r.stdout + r.stderr
    tz = ZoneInfo("Asia/Ho_Chi_Minh")
    day0 = datetime(2026, 6, 21, tzinfo=ZoneInfo("UTC")).timestamp()
    sunset = datetime.fromtimestamp(event_time("sunset", 21.0285, 105.8542, day0), tz)
    assert f"sunset {sunset:%H:%M}" in r.stdout
    assert f"Sun {sunset:%H:%M}  sunset → 100 %  [standard]" in r.stdout
    assert "Sun 22:00  22:00 → adaptive 50-100 %" in r.stdout
    r = agent("validate", "--simulate", "--date", "2026-02-30", str(pole))
    assert r.returncode == 2 and "--date" in r.stderr


def test_simulate_checks_lines_against_the_frame(tmp_path: Path,
                                                 sim_clip: tuple[Path, dict]) -> None:
    clip, _ = sim_clip
    outside = "      - {name: far, points: [[100, 200], [1279, 200]]}"
    r = agent("validate", "--simulate", "-q", "--max-frames", "2", "--snapshots",
              str(tmp_path), str(sim_pole(tmp_path, clip, MAIN, outside)))
    assert r.returncode == 1
    assert "line far: point(s) (1279,200) lie outside the 640x360 frame" in r.stderr
    edge = "      - {name: top, points: [[0, 4], [639, 4]]}"
    r = agent("validate", "--simulate", "-q", "--max-frames", "2", "--snapshots",
              str(tmp_path), str(sim_pole(tmp_path, clip, MAIN, edge)))
    assert r.returncode == 5, r.stderr
    assert "line top" in r.stderr and "top or bottom edge" in r.stderr and "WARNING" in r.stderr
    assert "frame 640x360 from its video file" in r.stdout
    # a stream camera without a clip: says what it could check
    stream = sim_pole(tmp_path, clip, MAIN)
    stream.write_text(stream.read_text().replace(f"{{kind: file, path: {clip}}}",
                                                 "{kind: stream, url: 'rtsp://127.0.0.1/x'}"))
    r = agent("validate", "--simulate", str(stream))
    assert r.returncode == 0, r.stderr
    assert "frame size unknown" in r.stdout and "--clip" in r.stdout


@pytest.mark.slow
def test_simulate_replays_the_clip_and_each_line_fires(tmp_path: Path,
                                                       sim_clip: tuple[Path, dict]) -> None:
    clip, gt = sim_clip
    unused = "      - {name: verge, points: [[600, 100], [600, 300]]}"
    pole = sim_pole(tmp_path, clip, MAIN, unused)
    stream = pole.read_text().replace(f"{{kind: file, path: {clip}}}",
                                      "{kind: stream, url: 'rtsp://127.0.0.1/x'}")
    pole.write_text(stream)  # the clip comes from --clip CAMERA=FILE
    snaps = tmp_path / "snaps"
    r = agent("validate", "--simulate", "-q", "--snapshots", str(snaps), "--clip",
              f"sim={clip}", str(pole))
    assert r.returncode == 5, r.stdout + r.stderr           # the verge line never fires
    up, down = gt["totals"]["all_by_direction"]["up"], gt["totals"]["all_by_direction"]["down"]
    m = re.search(r"line main: (\d+) \(south (\d+), north (\d+)\)", r.stdout)
    assert m, r.stdout
    assert abs(int(m.group(3)) - up) <= max(1, up // 10), r.stdout
    assert abs(int(m.group(2)) - down) <= max(1, down // 10), r.stdout
    assert "line verge: 0 (left 0, right 0)" in r.stdout
    assert "line verge never fired" in r.stderr
    img = cv2.imread(str(snaps / "sim.png"))
    assert img is not None and img.shape[:2] == (360, 640)
    # the one-clip form and an unknown camera
    r = agent("validate", "--clip", "nosuch=x.avi", str(pole))
    assert r.returncode == 2 and "no camera 'nosuch'" in r.stderr


# --- fuzzing the new parsing paths -------------------------------------------------------------

FUZZ = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

SECRET_VALUES = ["s3cret-AAAA", "s3cret-BBBB", "s3cret-CCCC"]


def _check(path: Path, all_files: set[str], secrets: Path | None = None) -> None:
    """The property: a config or located problems; no traceback, no secret value shown."""
    try:
        load_config_report(path, secrets)
    except ConfigError as e:
        assert e.problems
        for p in e.problems:
            assert p.file in all_files, (p, all_files)
            assert p.line >= 1, str(p)
            assert INTERNAL_ERROR not in p.message, str(p)
            assert not any(v in str(p) for v in SECRET_VALUES), str(p)


_names = st.sampled_from(["a.yaml", "b.yaml", "c.yaml", "pole.yaml", "missing.yaml", ".",
                          "../x.yaml", ""])
_values = st.one_of(st.none(), st.integers(-5, 5000), st.text(max_size=12), st.booleans(),
                    st.lists(st.integers(0, 9), max_size=3))
_sections = st.sampled_from(["device", "aggregates", "mqtt", "clock", "lighting", "cameras"])
_keys = st.sampled_from(["id", "site", "interval_s", "host", "port", "sources", "latitude",
                         "password", "extends", "secrets", "path", "x"])


@FUZZ
@given(links=st.dictionaries(st.sampled_from(["a.yaml", "b.yaml", "c.yaml", "pole.yaml"]),
                             st.one_of(_names, st.integers(), st.none()), max_size=4),
       overrides=st.lists(st.tuples(st.sampled_from(["a.yaml", "b.yaml", "c.yaml", "pole.yaml"]),
                                    _sections, _keys, _values), max_size=10))
def test_fuzz_extends_chains(tmp_path: Path, links: dict, overrides: list) -> None:
    base = yaml.safe_load(POLE.replace("extends: site.yaml\n", ""))
    base["lighting"] = yaml.safe_load(SITE.replace("!secret ", ""))["lighting"]
    trees: dict[str, dict] = {n: {} for n in ("a.yaml", "b.yaml", "c.yaml")}
    trees["pole.yaml"] = base
    for name, target in links.items():
        trees[name]["extends"] = target
    for name, section, key, value in overrides:
        sec = trees[name].setdefault(section, {})
        if isinstance(sec, dict):
            sec[key] = value
        else:
            trees[name][section] = {key: value}
    for name, tree in trees.items():
        (tmp_path / name).write_text(yaml.safe_dump(tree, sort_keys=False))
    (tmp_path / "secrets.yaml").write_text(
        "".join(f"k{i}: '{v}'\n" for i, v in enumerate(SECRET_VALUES)))
    (tmp_path / "secrets.yaml").chmod(0o600)
    known = {str(tmp_path / n) for n in trees} | {str(tmp_path / "secrets.yaml"),
                                                  str(tmp_path / "missing.yaml")}
    _check(tmp_path / "pole.yaml", known)


def _plain(tmp: Path, text: str) -> Path:
    (tmp / "plain.yaml").write_text(text)
    return tmp / "plain.yaml"


_ref_text = st.text(alphabet=st.sampled_from(list("${}ABk012_-:@/ $$")), max_size=20)


@FUZZ
@given(where=st.sampled_from([("device", "id"), ("mqtt", "host"), ("mqtt", "password"),
                              ("mqtt", "port"), ("aggregates", "path"), ("mqtt", "username")]),
       ref=st.one_of(_ref_text.map(lambda t: json.dumps(t)),
                     st.sampled_from(["!secret k0", "!secret k1", "!secret nope", "!secret",
                                      "!secret [a]", "!secret 'a b'", "!secret ${X}",
                                      '"${k0}"', '"rtsp://u:${k2}@h/x"', '"${k0}${k1}"',
                                      '"$${k0}"', '"${"', '"${9bad}"', '"a:b@c"'])),
       secrets=st.one_of(st.just("".join(f"k{i}: '{v}'\n" for i, v in enumerate(SECRET_VALUES))),
                         st.text(max_size=40), st.just("- list\n"), st.just("k0: 5\n")),
       mode=st.sampled_from([0o600, 0o640, 0o400]),
       env=st.dictionaries(st.sampled_from(["k0", "X", "k2"]), st.sampled_from(SECRET_VALUES),
                           max_size=2))
def test_fuzz_secret_and_env_references(tmp_path: Path, where: tuple[str, str], ref: str,
                                        secrets: str, mode: int, env: dict) -> None:
    tree_text = POLE.replace("extends: site.yaml\n", "").replace(
        "id: pole-1", "id: pole-1\n  site: hanoi").replace(
        "lighting:\n", "lighting:\n  latitude: 21.0\n  longitude: 105.8\n"
        "  buses: [{name: d, kind: dali}]\n") + "aggregates:\n  path: x.jsonl\n"
    load_config(_plain(tmp_path, tree_text))  # the base is valid: each case is the reference
    section, key = where
    lines = tree_text.splitlines()
    out, done = [], False
    for line in lines:
        out.append(line)
        if line == f"{section}:" and not done:
            out.append(f"  {key}: {ref}")
            done = True
    text = "\n".join(out) + "\n"
    # a key given twice is its own (located) error; keep only the injected one
    text = re.sub(rf"(\n  {key}: {re.escape(ref)}\n)((?:  .*\n)*?)  {key}: [^\n]*\n",
                  r"\1\2", text)
    pole = tmp_path / "pole.yaml"
    pole.write_text(text)
    sec = tmp_path / "secrets.yaml"
    sec.write_text(secrets)
    sec.chmod(mode)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        _check(pole, {str(pole), str(sec)})
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
