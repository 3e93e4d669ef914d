"""The whole agent against a real mosquitto, a simulated camera and an emulated DALI bus:
every published message validates against the contract; commands work and bad ones change
nothing."""

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
from agent.uplink.contract import errors, kind_of
from drivers.dali.ops import percent_to_arc
from sim.dali import DaliEmulator, make_gear
from tests.conftest import ROOT, SIMNET
from tests.mqtt_broker import Broker, Collector, wait_until


def config_text(tmp: Path, video: Path, line: list[int], port: int, dali: str) -> str:
    x1, y1, x2, y2 = line
    return f"""
device: {{id: pole-7, site: lab}}
cameras:
  - name: cam1
    source: {{kind: file, path: {video}, loop: true, realtime: true}}
    detector: {{model: {SIMNET}}}
    lines: [{{name: main, points: [[{x1}, {y1}], [{x2}, {y2}]]}}]
aggregates: {{interval_s: 10, path: {tmp / 'agg.jsonl'}}}
lighting:
  model: {ROOT / 'models' / 'dimming.md'}
  latitude: 21.03
  longitude: 105.85
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
    agent = Agent(load_config(cfg_path), cfg_path)
    agent.start()
    assert agent.city.uplink is not None and agent.city.uplink.wait_connected(10)
    yield agent, emu, col, broker
    agent.stop()
    col.close()
    emu.stop()
    broker.stop()


def command(port: int, body: bytes | dict) -> None:
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="platform")
    c.connect("127.0.0.1", port)
    c.loop_start()
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    c.publish("polelink/lab/pole-7/cmd", payload, qos=1).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def responses(col: Collector) -> list[dict]:
    return col.where(lambda t, m, r: t.endswith("/cmd/response"))


@pytest.mark.slow
def test_interval_messages_validate_and_commands_work(rig) -> None:
    agent, emu, col, broker = rig
    w = agent.workers[0]
    assert wait_until(lambda: w.pipeline is not None and w.pipeline.frames > 10, 30)
    assert agent.tick(time.time() + 10)        # close the first interval now
    assert wait_until(lambda: col.where(lambda t, m, r: "/lighting/" in t), 15)
    assert wait_until(lambda: col.where(lambda t, m, r: "/traffic/" in t), 5)
    assert wait_until(lambda: col.where(lambda t, m, r: t.endswith("/health")), 5)
    for topic, msg, _ in list(col.messages):
        if topic.endswith("/cmd"):
            continue                            # the platform's commands, not ours
        kind = kind_of(msg)
        assert kind is not None, (topic, msg)
        assert errors(kind, msg) == [], (topic, msg)
        assert topic.startswith(f"polelink/lab/pole-7/{'cmd/response' if kind == 'response' else kind}")
    light = col.where(lambda t, m, r: "/lighting/" in t)[-1]
    assert light["lampActuator"]["mode"] in ("model", "day", "twilight", "failsafe")

    command(broker.port, {"schema": "polelink/command/1", "correlation_id": "c1",
                          "command": "set_override",
                          "args": {"group": "street", "level_pct": 40, "expires_in_s": 600}})
    assert wait_until(lambda: any(r["correlation_id"] == "c1" for r in responses(col)), 10)
    r = next(r for r in responses(col) if r["correlation_id"] == "c1")
    assert r["result"] == "ok" and errors("response", r) == []
    assert all(g.level == percent_to_arc(40) for g in emu.gear)  # DALI log curve
    before = [g.level for g in emu.gear]

    command(broker.port, {"schema": "polelink/command/1", "correlation_id": "c2",
                          "command": "set_override",
                          "args": {"group": "nope", "level_pct": 5, "expires_in_s": 600}})
    command(broker.port, b"\xff not json")
    command(broker.port, {"schema": "polelink/command/1", "correlation_id": "c3",
                          "command": "ping"})
    assert wait_until(lambda: any(r["correlation_id"] == "c3" for r in responses(col)), 10)
    by_id = {r["correlation_id"]: r for r in responses(col)}
    assert by_id["c2"]["result"] == "error" and "no luminaire group 'nope'" in by_id["c2"]["error"]
    assert any(r["correlation_id"] is None and "not UTF-8 JSON" in r["error"]
               for r in responses(col))
    assert by_id["c3"]["result"] == "ok" and "pong" in by_id["c3"]["data"]
    assert [g.level for g in emu.gear] == before   # invalid commands changed nothing
    assert col.where(lambda t, m, r: m.get("event") == "command_rejected")


garbage = st.one_of(
    st.binary(max_size=300),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                 | st.text(max_size=20),
                 lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=10), ch,
                                                                         max_size=4),
                 max_leaves=10).map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"schema": st.sampled_from(["polelink/command/1", "x"]),
                           "correlation_id": st.text(max_size=200),
                           "command": st.sampled_from(["set_override", "clear_override", "ping",
                                                       "reboot", "reload_config", ""]),
                           "args": st.dictionaries(st.sampled_from(
                               ["group", "level_pct", "expires_in_s", "x"]),
                               st.one_of(st.integers(-10, 10**6), st.text(max_size=5),
                                         st.floats(allow_nan=False)), max_size=4)})
    .filter(lambda d: not (d["schema"] == "polelink/command/1" and d["command"] == "set_override"
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
def test_a_thousand_malformed_commands_change_nothing(rig) -> None:
    agent, emu, col, broker = rig
    levels = [g.level for g in emu.gear]
    overrides = dict(agent.city.overrides)
    seen: list[bytes] = []

    @settings(max_examples=1000, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(garbage.filter(is_invalid))
    def feed(payload: bytes) -> None:
        seen.append(payload)
        agent.city._on_command(agent.city.uplink.topic("cmd"), payload)  # type: ignore[union-attr]

    feed()
    assert len(seen) >= 1000
    assert agent.city.dispatcher.accepted == 0
    assert agent.city.dispatcher.rejected >= 1000
    assert not agent.reload_requested.is_set()
    assert [g.level for g in emu.gear] == levels
    assert agent.city.overrides == overrides
    # and a few through the real broker, to the real response topic
    for i in range(20):
        command(broker.port, seen[i * 37 % len(seen)])
    assert wait_until(lambda: len(responses(col)) >= 20, 15)
    assert all(errors("response", r) == [] for r in responses(col))
