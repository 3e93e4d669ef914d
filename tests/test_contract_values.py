"""Every value the agent or a lamp node can write into an enumerated contract field is in the
schema: the values are read from the code (``tests/contract_values.py`` follows each field
back from where the message is built), not from a list kept here. A node at dusk once sent
``source: "never-synced-dusk"``, which the schema did not list: every platform validating
against the published schema rejected it, every evening.

The analysis rules have their own tests below, on small made-up modules.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from agent.uplink.contract import KINDS, SCHEMA_DIR
from tests.contract_values import (
    FIELDS,
    Arg,
    Attr,
    Code,
    ContractField,
    Key,
    Returns,
    field_values,
)

#: Expressions the analysis cannot follow, each with why its values are still covered.
#: Keyed ``path:function:source``; a declaration that no longer matches fails the test.
OPAQUE: dict[str, str] = {
    "agent/runner.py:update_event:event":
        "the update steps' emit callback: their event names are the emit(...) sinks in "
        "agent/update (Updater, TrialWatch) and guard.record(...)",
    "agent/runner.py:update_event:severity": "as above",
    "agent/runner.py:_watch_uplink:event":
        "the uplink's notices: their names are the notices.append((...)) sink in "
        "agent/uplink/mqtt.py",
    "agent/runner.py:_watch_uplink:severity": "as above",
    'agent/update/trial.py:publish_recorded:str(ev["event"])[:64]':
        "re-sends the events agent/update/guard.py recorded before a restart: its "
        "record(...) calls are sinks of this field",
    'agent/service/runs.py:read_exit:rec.get("reason")':
        "read back from the run record and kept only when it is one of runs.REASONS, "
        "which test_code_vocabularies_are_in_the_schemas checks",
}


def schema_enum(kind: str, path: tuple[str, ...]) -> list[Any]:
    """The ``enum`` (or ``const``) of a field, by its place under ``properties``."""
    node = json.loads((SCHEMA_DIR / f"{kind}.schema.json").read_text())
    for part in path:
        node = node["items"] if part == "items" else node["properties"][part]
    return node["enum"] if "enum" in node else [node["const"]]


@pytest.mark.parametrize("f", FIELDS, ids=lambda f: f.name)
def test_every_value_the_code_writes_is_in_the_schema(f: ContractField) -> None:
    found = field_values(f, OPAQUE)
    assert found.sinks_seen > 0, f"no place in {f.scope} writes {f.name}: the sinks are stale"
    assert found.values, f"{f.name}: no value found"
    assert not found.problems, (
        f"{f.name}: values that cannot be enumerated (write them as literals, or declare "
        "the expression in OPAQUE with why its values are covered):\n  "
        + "\n  ".join(found.problems))
    allowed = schema_enum(f.kind, f.path)
    missing = {v: where for v, where in found.values.items() if v not in allowed}
    assert not missing, (
        f"{f.name}: the code can send values the schema "
        f"agent/uplink/schemas/{f.kind}.schema.json does not allow (add them, additively, "
        "and bump the contract's minor version):\n  "
        + "\n  ".join(f"{v!r} made at {', '.join(w)}" for v, w in missing.items()))


def test_every_opaque_declaration_is_still_needed() -> None:
    used: set[str] = set()
    for f in FIELDS:
        used |= field_values(f, OPAQUE).opaque_used
    assert set(OPAQUE) - used == set(), "stale OPAQUE entries: remove them"


def test_code_vocabularies_are_in_the_schemas() -> None:
    """Values the code keeps in named tuples (and checks what it reads against)."""
    from agent.service.runs import REASONS
    from agent.vision.classes import ROAD_USER_CLASSES
    from drivers.bus import LAMP_STATES

    assert set(ROAD_USER_CLASSES) <= set(
        schema_enum("traffic", ("roadUserCounts", "items", "roadUserType")))
    assert set(REASONS) <= set(schema_enum("health", ("lastExit", "reason")))
    assert set(LAMP_STATES) <= set(
        schema_enum("lighting", ("lampMonitor", "lamps", "items", "state")))


#: enumerated fields that no pole writes: what the platform sends, or the agent's own
#: legacy values kept valid for older poles
NOT_PRODUCED = {("command", ("command",)): "commands are the platform's"}
BY_VOCABULARY = {("traffic", ("roadUserCounts", "items", "roadUserType"))}


def _enum_fields(node: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    if isinstance(node, dict):
        if "enum" in node and path:
            out.append(path)
        for k, v in node.get("properties", {}).items():
            out += _enum_fields(v, (*path, k))
        if isinstance(node.get("items"), dict):
            out += _enum_fields(node["items"], (*path, "items"))
    return out


def test_every_enumerated_field_of_the_schemas_is_analysed() -> None:
    """A new enum in a schema needs its sinks in tests/contract_values.py (or a reason)."""
    covered = {(f.kind, f.path) for f in FIELDS} | set(NOT_PRODUCED) | BY_VOCABULARY
    for kind in KINDS:
        schema = json.loads((SCHEMA_DIR / f"{kind}.schema.json").read_text())
        for path in _enum_fields(schema):
            assert (kind, path) in covered, f"{kind}.{'.'.join(path)} is not analysed"


# -- the analysis rules, each on a small made-up module --------------------------------

def code(tmp_path: Path, **modules: str) -> Code:
    for name, text in modules.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
    return Code(["*.py"], root=tmp_path)


def test_literals_conditionals_and_locals(tmp_path: Path) -> None:
    c = code(tmp_path, m='''
        def f(x):
            src = "a" if x else "b"
            if x > 2:
                src = "c"
            return {"source": src}
    ''')
    found = c.values([Key("source")])
    assert set(found.values) == {"a", "b", "c"} and not found.problems


def test_tuple_returns_and_unpacking(tmp_path: Path) -> None:
    c = code(tmp_path, m='''
        def level(t):
            if t:
                return 1, "x", "p"
            return 2, "y", "never-synced-dusk" if t is None else "q"
        def tick(t):
            try:
                lvl, mode, src = level(t)
            except Exception:
                lvl, mode, src = 100, "fault", "fault"
            return {"source": src, "clock": mode}
    ''')
    assert set(c.values([Key("source")]).values) == {"p", "q", "never-synced-dusk", "fault"}
    assert set(c.values([Key("clock")]).values) == {"x", "y", "fault"}


def test_parameters_are_followed_to_every_call(tmp_path: Path) -> None:
    c = code(tmp_path, a='''
        class Svc:
            def _event(self, name, severity="info"):
                publish(Record(name, severity))
            def run(self):
                self._event("up")
                self._event("down", "alarm")
        class Other:
            def _event(self, r):
                pass
            def go(self):
                self._event(object())   # another class's method: not followed
    ''')
    found = c.values([Arg("Record", 0)])
    assert set(found.values) == {"up", "down"} and not found.problems
    assert set(c.values([Arg("Record", 1)]).values) == {"info", "alarm"}


def test_attributes_and_dataclass_fields(tmp_path: Path) -> None:
    c = code(tmp_path, m='''
        from dataclasses import dataclass
        @dataclass
        class Decision:
            level: float
            mode: str
        def decide(x):
            d = Decision(1.0, "schedule")
            if x:
                d.level, d.mode = 2.0, "adaptive"
            if x > 1:
                d.mode = "ambient"
            return Decision(level=0, mode="failsafe") if x < 0 else d
        def message(d):
            return {"mode": d.mode}
    ''')
    assert set(c.values([Key("mode")]).values) == {"schedule", "adaptive", "ambient", "failsafe"}
    assert set(c.values([Attr("mode")]).values) == {"schedule", "adaptive", "ambient", "failsafe"}


def test_loops_constants_checked_reads_and_calls(tmp_path: Path) -> None:
    c = code(tmp_path, m='''
        KIND = "k"
        def mode():
            return "trusted"
        def f(ev, items):
            for name in ("a", KIND):
                emit(name, ev.get("s") if ev.get("s") in ("info", "alarm") else "alarm")
            emit(mode(), str("x"))
            for name, sev in items:
                emit(name, sev)
    ''')
    found = c.values([Arg("emit", 0), Returns("mode")])
    assert set(found.values) == {"a", "k", "trusted"}
    assert found.problems == ["m.py:9: the loop variable of `for ... in items`"]
    assert set(c.values([Arg("emit", 1)]).values) == {"info", "alarm", "x"}


def test_what_cannot_be_followed_is_a_located_problem(tmp_path: Path) -> None:
    c = code(tmp_path, m='''
        def f(cfg, n):
            emit(f"step-{n}")
            emit(cfg["source"])
            emit(unknown_function())
    ''')
    found = c.values([Arg("emit", 0)])
    assert found.values == {}
    assert len(found.problems) == 3 and all(p.startswith("m.py:") for p in found.problems)
    assert "m.py:5: unknown_function(): no function 'unknown_function' in scope to follow" \
        in found.problems
    opaque = c.values([Arg("emit", 0)], ['m.py:f:cfg["source"]'])
    assert len(opaque.problems) == 2 and opaque.opaque_used == {'m.py:f:cfg["source"]'}


def test_sinks_restricted_to_files_and_receivers(tmp_path: Path) -> None:
    c = code(tmp_path, mqtt='''
        class U:
            def go(self):
                self.notices.append(("publish_refused", "alarm", {}))
                self.other.append(("not an event", 1, {}))
    ''', other='''
        def g(notices):
            notices.append(("elsewhere", "info", {}))
    ''')
    sink = Arg("append", 0, tuple_index=0, files=("mqtt.py",), receiver="notices")
    assert set(c.values([sink]).values) == {"publish_refused"}
