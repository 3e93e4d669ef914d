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
from tests.conftest import ROOT
from tests.contract_values import (
    FIELDS,
    OPAQUE,
    PUBLISHES,
    Arg,
    Attr,
    Code,
    ContractField,
    Items,
    Key,
    Returns,
    field_values,
    schema_enum,
    vocabulary,
)


@pytest.mark.parametrize("f", FIELDS, ids=lambda f: f.name)
def test_every_value_the_code_writes_is_in_the_schema(f: ContractField) -> None:
    found = field_values(f, OPAQUE)
    assert found.sinks_seen > 0 or f.optional, \
        f"no place in {f.scope} writes {f.name}: the sinks are stale"
    values = {**vocabulary(f), **found.values}
    assert values or f.optional, f"{f.name}: no value found"
    assert not found.problems, (
        f"{f.name}: values that cannot be enumerated (write them so that they can be "
        "followed, or declare the problem in OPAQUE with why its values are covered):\n  "
        + "\n  ".join(found.problems))
    allowed = schema_enum(f.kind, f.path)
    missing = {v: where for v, where in values.items() if v not in allowed}
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


def test_carriers_are_frozen_dataclasses() -> None:
    """A carrier's attribute is followed only through its constructor, replace() and
    default: that holds only if nothing can assign it later."""
    import dataclasses

    import drivers.bus

    for f in FIELDS:
        for _attr, classes in f.carriers:
            for name in classes:
                cls = getattr(drivers.bus, name)
                assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, name


def test_code_vocabularies_are_in_the_schemas() -> None:
    """Values the code keeps in named tuples (and checks what it reads against)."""
    from drivers.bus import LAMP_STATES

    assert set(LAMP_STATES) <= set(
        schema_enum("lighting", ("lampMonitor", "lamps", "items", "state")))


def test_model_cards_take_only_the_contracts_classes(tmp_path: Path) -> None:
    """A card mapping a model class to a name the contract does not know is refused: the
    counter then counts only ROAD_USER_CLASSES (the roadUserType vocabulary)."""
    from agent.settings.modelcard import ConfigError, load_card

    card = tmp_path / "m.yaml"
    text = (ROOT / "models" / "simnet.yaml").read_text()
    assert "motorbike" in text
    card.write_text(text.replace("motorbike", "scooter", 1))
    (tmp_path / "simnet.onnx").symlink_to(ROOT / "models" / "simnet.onnx")
    with pytest.raises(ConfigError, match="scooter"):
        load_card(card)
    from typing import get_args

    from agent.vision.classes import ROAD_USER_CLASSES, RoadUserClass
    assert get_args(RoadUserClass) == ROAD_USER_CLASSES       # the card's type is the tuple


def _enum_fields(node: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every field with an enum or const, wherever it is nested: properties, items,
    additionalProperties, patternProperties, allOf/anyOf/oneOf, if/then/else, $defs."""
    out: list[tuple[str, ...]] = []
    if isinstance(node, dict):
        if ("enum" in node or "const" in node) and path:
            out.append(path)
        for k, v in node.get("properties", {}).items():
            out += _enum_fields(v, (*path, k))
        for k in ("items", "additionalProperties"):
            if isinstance(node.get(k), dict):
                out += _enum_fields(node[k], (*path, k))
        for k, v in node.get("patternProperties", {}).items():
            out += _enum_fields(v, (*path, f"patternProperties:{k}"))
        for k in ("allOf", "anyOf", "oneOf"):
            for i, v in enumerate(node.get(k, [])):
                out += _enum_fields(v, (*path, f"{k}[{i}]"))
        for k in ("if", "then", "else", "not"):
            if isinstance(node.get(k), dict):
                out += _enum_fields(node[k], (*path, k))
        for k, v in {**node.get("$defs", {}), **node.get("definitions", {})}.items():
            out += _enum_fields(v, (*path, f"$defs:{k}"))
    return out


def test_every_enumerated_field_each_producer_publishes_is_analysed() -> None:
    """A new enum or const in a kind the agent or the node publishes needs its sinks in
    tests/contract_values.py."""
    covered = {(f.producer, f.kind, f.path) for f in FIELDS}
    for producer, kinds in PUBLISHES.items():
        for kind in kinds:
            schema = json.loads((SCHEMA_DIR / f"{kind}.schema.json").read_text())
            for path in _enum_fields(schema):
                if path == ("schema",):
                    continue                    # the schema id: one constant per builder
                assert (producer, kind, path) in covered, \
                    f"{kind}.{'.'.join(path)} ({producer}) is not analysed"
    # the platform's own kinds: command, and ack (what it stored)
    assert set(PUBLISHES["agent"]) | set(PUBLISHES["node"]) | {"command", "ack"} == set(KINDS)


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
    assert [p.split(" [")[0] for p in found.problems] == \
        ["m.py:9: the loop variable of `for ... in items`"]
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
    assert "m.py:5: unknown_function(): no function 'unknown_function' in scope to follow " \
        "[to declare: 'm.py:f:unknown_function()']" in found.problems
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


def test_keys_assigned_by_subscript_or_dict_are_sinks(tmp_path: Path) -> None:
    c = code(tmp_path, m='''
        def answer(err):
            resp = {"result": "error" if err else "ok"}
            resp["result"] = "duplicate"
            return dict(resp, result="refused")
    ''')
    assert set(c.values([Key("result")]).values) == {"ok", "error", "duplicate", "refused"}


def test_a_value_changed_where_the_message_is_built_is_seen(tmp_path: Path) -> None:
    """Sinks are where the message is built: a change inside the builder is followed back
    to the builder's callers and to its own reassignments."""
    c = code(tmp_path, m='''
        class Up:
            def _status(self, state):
                if self.refused:
                    state = "refused"
                return {"state": state}
            def go(self):
                self._status("online")
                self._status(state="offline")
    ''')
    found = c.values([Key("state")])
    assert set(found.values) == {"online", "offline", "refused"} and not found.problems


def test_in_place_changes_and_starred_arguments_are_problems(tmp_path: Path) -> None:
    c = code(tmp_path, m='''
        def level(ev):
            src = "fixed-program"
            src += "-dusk"
            event(*ev)
            return {"source": src}
        def event(name, severity):
            return {"event": name}
    ''')
    src = c.values([Key("source")])
    assert set(src.values) == {"fixed-program"}
    assert any("src is changed in place" in p for p in src.problems)
    assert any("a starred argument to event()" in p for p in c.values([Key("event")]).problems)


def test_dataclass_defaults_and_replace_are_followed(tmp_path: Path) -> None:
    c = code(tmp_path, m='''
        from dataclasses import dataclass, replace
        @dataclass(frozen=True)
        class LampStatus:
            address: str
            state: str = "unmonitored"
        def read():
            a = LampStatus("u:1")
            return replace(a, state="off"), LampStatus("u:2", "ok")
        def message(lamp):
            return {"state": lamp.state}
    ''')
    assert set(c.values([Key("state")]).values) == {"unmonitored", "off", "ok"}


def test_carriers_restrict_an_attribute_to_its_dataclass(tmp_path: Path) -> None:
    """With ``state`` carried by LampStatus, a bus's unrelated ``self.state`` is not taken
    for a lamp's (it would force junk into the schema); LampStatus built anywhere is."""
    c = code(tmp_path, m='''
        from dataclasses import dataclass
        @dataclass(frozen=True)
        class LampStatus:
            address: str
            state: str
        class Bus:
            def fail(self):
                self.state = "powered-down"
                return LampStatus("a", "bus_down")
        def message(lamp):
            return {"state": lamp.state}
    ''')
    assert set(c.values([Key("state")]).values) == {"powered-down", "bus_down"}
    narrow = Code(["*.py"], root=tmp_path, carriers={"state": ("LampStatus",)})
    assert set(narrow.values([Key("state")]).values) == {"bus_down"}


def test_a_callback_is_a_problem_but_direct_calls_are_still_followed(tmp_path: Path) -> None:
    c = code(tmp_path, m='''
        class Runner:
            def update_event(self, event):
                publish({"event": event})
            def start(self):
                Updater(self.update_event)
            def restart(self):
                self.update_event("update_restarting")
    ''')
    declared = "m.py:update_event:event"
    found = c.values([Key("event")], [declared])
    assert set(found.values) == {"update_restarting"} and found.opaque_used == {declared}
    assert any("passed as a callback" in p for p in c.values([Key("event")]).problems)


def test_items_put_into_a_list_every_way(tmp_path: Path) -> None:
    c = code(tmp_path, mqtt='''
        class U:
            def go(self, extra):
                self.notices = []
                self.notices.append(("publish_refused", "alarm", {}))
                self.notices.insert(0, ("connection_refused", "alarm", {}))
                self.notices.extend([("a", "info", {}), ("b", "info", {})])
                self.notices += [("c", "info", {})]
                self.notices.extend(extra)
    ''')
    found = c.values([Items("notices", 0)])
    assert set(found.values) == {"publish_refused", "connection_refused", "a", "b", "c"}
    assert any("from a computed sequence" in p for p in found.problems)
