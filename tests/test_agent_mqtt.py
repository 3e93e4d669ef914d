"""The whole agent against a real mosquitto, a simulated camera and an emulated DALI bus:
every published message validates against the contract; commands work (posted to the main
loop and the lighting thread, never run on the MQTT thread) and bad ones change nothing."""

from __future__ import annotations

import json
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from agent.runner import Agent
from agent.settings.schema import load_config
from agent.uplink.commands import new_command
from agent.uplink.contract import errors, kind_of
from drivers.dali.ops import percent_to_arc
from sim.dali import DaliEmulator, make_gear
from tests.conftest import ROOT, SIMNET
from tests.helpers import NudgeClock, Running
from tests.mqtt_broker import Broker, Collector, wait_until
from tests.pole_rig import longitude_at


def config_text(tmp: Path, video: Path, line: list[int], port: int, dali: str) -> str:
    """A pole on the simulated clip, at 21° N and a longitude where it is 01:00 (night) now,
    whatever the hour the tests run: the lamps are lit and an override ramps."""
    x1, y1, x2, y2 = line
    return f"""
device: {{id: pole-7, site: lab}}
cameras:
  - name: cam1
    source: {{kind: file, path: {video}, loop: true, realtime: true}}
    detector: {{model: {SIMNET}}}
    lines: [{{name: main, points: [[{x1}, {y1}], [{x2}, {y2}]]}}]
aggregates: {{interval_s: 10, path: {tmp / 'agg.jsonl'}}}
clock: {{sources: [assume_synced]}}
lighting:
  model: {ROOT / 'models' / 'dimming.md'}
  latitude: 21.03
  longitude: {longitude_at(1.0)}
  tick_s: 0.5
  overrides_path: {tmp / 'overrides.json'}
  buses: [{{name: dali1, kind: dali, port: {dali}, codec: hat}}]
  groups: [{{name: street, bus: dali1, address: broadcast, cameras: [cam1]}}]
mqtt:
  port: {port}
  reconnect_min_s: 0.2
  outbox_path: {tmp / 'outbox.db'}
"""


@pytest.fixture
def rig(tmp_path: Path, sim_clip):
    broker = Broker(tmp_path).start()
    emu = DaliEmulator(make_gear(2), "hat").start()
    video, gt = sim_clip
    cfg_path = tmp_path / "pole.yaml"
    cfg_path.write_text(config_text(tmp_path, video, gt["line"], broker.port, emu.path))
    col = Collector(broker.port, "polelink/#")
    clock = NudgeClock()
    agent = Agent(load_config(cfg_path), cfg_path, clock)
    with Running(agent):
        assert agent.uplink is not None and agent.uplink.wait_connected(10)
        yield agent, emu, col, broker, clock
    col.close()
    emu.stop()
    broker.stop()


def command(port: int, body: bytes | dict) -> None:
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="platform")
    c.connect("127.0.0.1", port)
    c.loop_start()
    payload = body if isinstance(body, bytes) else json.dumps(fresh(body)).encode()
    c.publish("polelink/lab/pole-7/cmd", payload, qos=1).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def fresh(body: dict) -> dict:
    """A test's command with the schema version and expiry the pole requires."""
    return {**body, **new_command(body["command"], body.get("args"),
                                  correlation_id=body.get("correlation_id"))}


def responses(col: Collector) -> list[dict]:
    return col.where(lambda t, m, r: t.endswith("/cmd/response"))


@pytest.mark.slow
def test_interval_messages_validate_and_commands_work(rig, tmp_path: Path) -> None:
    agent, emu, col, broker, clock = rig
    w = agent.workers["cam1"]
    assert wait_until(lambda: w.pipeline is not None and w.pipeline.frames > 10, 30)
    clock.skip(10)                                # close the first interval now
    assert wait_until(lambda: col.where(lambda t, m, r: "/traffic/" in t), 15)
    assert wait_until(lambda: col.where(lambda t, m, r: "/lighting/" in t), 15)
    assert wait_until(lambda: col.where(lambda t, m, r: t.endswith("/health")), 15)
    assert wait_until(lambda: col.where(lambda t, m, r: "/diagnostics/" in t), 15)
    for topic, msg, _ in list(col.messages):
        if topic.endswith("/cmd"):
            continue                            # the platform's commands, not ours
        kind = kind_of(msg)
        assert kind is not None, (topic, msg)
        assert errors(kind, msg) == [], (topic, msg)
        assert topic.startswith(f"polelink/lab/pole-7/{'cmd/response' if kind == 'response' else kind}")
    light = col.where(lambda t, m, r: "/lighting/" in t)[-1]
    assert light["lampActuator"]["mode"] in ("adaptive", "schedule", "fallback", "failsafe")
    diag = col.where(lambda t, m, r: "/diagnostics/" in t)[-1]
    assert [d["address"] for d in diag["luminaires"]] == ["short:0", "short:1"]
    assert diag["luminaires"][0]["serial"] == 1000 and diag["luminaires"][0]["nominalPowerW"]

    [g.level for g in emu.gear]
    command(broker.port, {"schema": "polelink/command/2", "correlation_id": "c1",
                          "command": "set_override",
                          "args": {"group": "street", "level_pct": 40, "expires_in_s": 600}})
    assert wait_until(lambda: any(r["correlation_id"] == "c1" for r in responses(col)), 10)
    r = next(r for r in responses(col) if r["correlation_id"] == "c1")
    assert r["result"] == "ok" and errors("response", r) == [], r
    assert r["data"]["level_pct"] == 40 and r["data"]["priority"] == 5
    stored = json.loads((tmp_path / "overrides.json").read_text())["street"][0]
    assert stored["level_pct"] == 40 and stored["source"] == "c1"     # who asked
    # ramped towards 40 %, not jumped (no flicker): 10 %/min down
    street = agent.lighting.summary()["groups"]["street"]
    assert street["mode"] == "override" and 40 < street["commandedPct"] <= 100
    assert all(g.level > percent_to_arc(40) for g in emu.gear)
    [g.level for g in emu.gear]

    command(broker.port, {"schema": "polelink/command/2", "correlation_id": "c2",
                          "command": "set_override",
                          "args": {"group": "nope", "level_pct": 5, "expires_in_s": 600}})
    command(broker.port, b"\xff not json")
    command(broker.port, {"schema": "polelink/command/2", "correlation_id": "c3",
                          "command": "ping"})
    command(broker.port, {"schema": "polelink/command/2", "correlation_id": "c4",
                          "command": "request_snapshot"})
    assert wait_until(lambda: any(r["correlation_id"] == "c4" for r in responses(col)), 10)
    by_id = {r["correlation_id"]: r for r in responses(col)}
    assert by_id["c2"]["result"] == "error" and "no luminaire group 'nope'" in by_id["c2"]["error"]
    assert any(r["correlation_id"] is None and "not UTF-8" in r["error"]
               for r in responses(col))
    assert by_id["c3"]["result"] == "ok" and "pong" in by_id["c3"]["data"]
    snap = by_id["c4"]
    assert snap["result"] == "ok" and snap["data"]["width"] == 640, snap
    assert Path(snap["data"]["path"]).is_file()
    assert col.where(lambda t, m, r: m.get("event") == "command_rejected")
    for i in range(8):                           # snapshots are cleaned up: 5 are kept
        command(broker.port, {"schema": "polelink/command/2", "correlation_id": f"s{i}",
                              "command": "request_snapshot"})
        time.sleep(0.05)
    assert wait_until(lambda: sum(r["correlation_id"].startswith("s") for r in responses(col)
                                  if r["correlation_id"]) == 8, 15)
    assert len(list(Path(snap["data"]["path"]).parent.glob("cam1-*.png"))) <= 5


garbage = st.one_of(
    st.binary(max_size=300),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                 | st.text(max_size=20),
                 lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=10), ch,
                                                                         max_size=4),
                 max_leaves=10).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"schema": st.sampled_from(["polelink/command/2", "x"]),
                           "correlation_id": st.text(max_size=200),
                           "command": st.sampled_from(["set_override", "clear_override", "ping",
                                                       "reboot", "reload_config", ""]),
                           "args": st.dictionaries(st.sampled_from(
                               ["group", "level_pct", "expires_in_s", "x"]),
                               st.one_of(st.integers(-10, 10**6), st.text(max_size=5),
                                         st.floats(allow_nan=False)), max_size=4)})
    .filter(lambda d: not (d["schema"] == "polelink/command/2" and d["command"] == "set_override"
                           and isinstance(d["args"].get("level_pct"), int | float)
                           and 0 <= d["args"].get("level_pct", -1) <= 100
                           and isinstance(d["args"].get("expires_in_s"), int)
                           and 1 <= d["args"]["expires_in_s"] <= 86400))
    .map(lambda d: json.dumps(d).encode()))


def is_invalid(payload: bytes) -> bool:
    """Not JSON, or fails the command schema: the commands that must change nothing."""
    try:
        return bool(errors("command", json.loads(payload)))
    except (UnicodeDecodeError, ValueError):
        return True


@pytest.mark.slow
def test_a_thousand_malformed_commands_change_nothing(rig, tmp_path: Path) -> None:
    agent, emu, col, broker, _clock = rig
    assert agent.lighting is not None and agent.lighting.ticked.wait(30)  # the lamps are set
    levels = [g.level for g in emu.gear]
    seen: list[bytes] = []
    topic = agent.uplink.topic("cmd")  # type: ignore[union-attr]

    @settings(max_examples=1000, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(garbage.filter(is_invalid))
    def feed(payload: bytes) -> None:
        seen.append(payload)
        agent.on_command(topic, payload)
        while agent.commands.qsize() > agent.commands.maxsize // 2:   # (as the broker's
            time.sleep(0.01)                                          # back-pressure would)

    feed()
    assert wait_until(lambda: agent.commands.empty() and not agent.pending, 30)
    assert len(seen) >= 1000
    assert agent.dispatcher.accepted == 0
    assert agent.dispatcher.rejected >= 1000 and agent.commands_busy == 0
    assert [g.level for g in emu.gear] == levels
    assert not (tmp_path / "overrides.json").exists()
    # and a few through the real broker, to the real response topic
    n = len(responses(col))
    for i in range(20):
        command(broker.port, seen[i * 37 % len(seen)])
    assert wait_until(lambda: len(responses(col)) >= n + 20, 15)
    assert all(errors("response", r) == [] for r in responses(col))
