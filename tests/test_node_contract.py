"""The lamp node's part of the MQTT contract: the ``node`` role in the AsyncAPI document,
its schemas, and wrong node payloads rejected by the schemas and the platform store.
(``tests/test_node_e2e.py`` checks that what a real node publishes validates.)"""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from agent.uplink.contract import SCHEMA_DIR, errors, kind_of
from sim.platform.store import Store

LIGHTING = {"schema": "polelink/node-lighting/1", "device": "node-0042", "site": "harbour",
            "ts": "2026-12-15T17:00:00Z", "role": "node", "levelPct": 50, "clock": "trusted",
            "source": "schedule", "seq": 7, "msg_id": "node-0042:0a1b2c3d:7"}
HEALTH = {"schema": "polelink/node-health/1", "device": "node-0042", "site": "harbour",
          "ts": "2026-12-15T17:00:00Z", "role": "node", "memFree": 70000,
          "memAllocPeak": 46656, "outbox": 0, "outboxDropped": 0, "faults": 0, "uptimeS": 12,
          "seq": 8, "msg_id": "node-0042:0a1b2c3d:8"}
STATUS = {"schema": "polelink/status/1", "device": "node-0042", "site": "harbour",
          "ts": "2026-12-15T17:00:00Z", "state": "offline", "bdSeq": 3, "seq": 8,
          "role": "node", "msg_id": "node-0042:0a1b2c3d:bd3-offline"}


def test_the_asyncapi_document_has_a_node_role() -> None:
    doc = yaml.safe_load((SCHEMA_DIR / "asyncapi.yaml").read_text())
    assert doc["info"]["version"] == "2.10.0"
    assert "Changes in 2.4.0" in doc["info"]["description"]
    assert "Changes in 2.5.0" in doc["info"]["description"]
    assert "Changes in 2.6.0" in doc["info"]["description"]
    assert {t["name"] for t in doc["info"]["tags"]} == {"agent", "node"}
    node_ops = {n for n, op in doc["operations"].items()
                if {"name": "node"} in op.get("tags", [])}
    assert node_ops == {"publishStatus", "publishNodeLighting", "publishNodeHealth",
                        "receiveCommand", "publishResponse", "publishEvent"}
    msgs = doc["components"]["messages"]
    for name, file in (("nodeLighting", "node-lighting"), ("nodeHealth", "node-health")):
        assert msgs[name]["payload"]["schema"]["$ref"] == f"{file}.schema.json"
        schema = json.loads((SCHEMA_DIR / f"{file}.schema.json").read_text())
        assert schema["properties"]["schema"]["const"] == f"polelink/{file}/1"
    assert doc["channels"]["nodeLighting"]["address"] == "{prefix}/{site}/{device}/lighting"
    assert "nodeHealth" in doc["channels"]["health"]["messages"]


@pytest.mark.parametrize("msg", [LIGHTING, HEALTH, STATUS], ids=["lighting", "health", "status"])
def test_node_messages_validate(msg: dict) -> None:
    assert errors(kind_of(msg), msg) == []


@pytest.mark.parametrize("base,change,field", [
    (LIGHTING, {"levelPct": 150}, "levelPct"),
    (LIGHTING, {"clock": "maybe"}, "clock"),
    (LIGHTING, {"source": None}, "source"),
    (LIGHTING, {"role": "agent"}, "role"),
    (LIGHTING, {"extra": 1}, "(root)"),
    (LIGHTING, {"msg_id": "node-0042:7"}, "msg_id"),
    (HEALTH, {"memFree": -1}, "memFree"),
    (HEALTH, {"uptimeS": "12"}, "uptimeS"),
    (STATUS, {"role": "lamp"}, "role"),
    (STATUS, {"state": "asleep"}, "state"),
])
def test_wrong_node_payloads_are_rejected(base: dict, change: dict, field: str) -> None:
    msg = {**copy.deepcopy(base), **change}
    probs = errors(kind_of(msg), msg)
    assert probs and any(p.startswith(field + ":") for p in probs), probs


@pytest.mark.parametrize("missing", ["role", "levelPct", "clock", "seq"])
def test_node_lighting_without_a_required_field_is_rejected(missing: str) -> None:
    msg = {k: v for k, v in LIGHTING.items() if k != missing}
    assert any(f"'{missing}' is a required property" in p for p in errors("node-lighting", msg))


def test_a_node_payload_under_the_agents_schema_id_is_rejected() -> None:
    """The agent's lighting schema does not take a node's lighting form (and vice versa)."""
    msg = {**LIGHTING, "schema": "polelink/lighting/1"}
    assert errors(kind_of(msg), msg)


def test_the_platform_store_takes_node_messages_and_refuses_a_wrong_one() -> None:
    store = Store()
    base = "polelink/harbour/node-0042"
    assert store.add(base + "/lighting", json.dumps(LIGHTING).encode(), 1.0) == ("stored", [])
    assert store.add(base + "/health", json.dumps(HEALTH).encode(), 2.0) == ("stored", [])
    assert store.add(base + "/status", json.dumps(STATUS).encode(), 3.0) == ("stored", [])
    bad = {**LIGHTING, "levelPct": -5, "seq": 9, "msg_id": "node-0042:0a1b2c3d:9"}
    outcome, probs = store.add(base + "/lighting", json.dumps(bad).encode(), 4.0)
    assert outcome == "invalid" and any(p.startswith("levelPct:") for p in probs), probs
    s = store.summary()["node-0042"]
    assert s["invalid"] == 1 and s["gaps"] == 0 and s["status"] == "offline", s
    assert store.latest("node-lighting")[0]["levelPct"] == 50
