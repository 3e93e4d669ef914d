"""Fuzzing the provisioning-file loader: whatever a file holds, ``load_config`` either returns a
config or raises :class:`ConfigError` whose every problem is located (file path and a line
number); never any other exception, and never a problem that blames a validator's bug.

Two kinds of hostile input, both grown from ``config/example-pole.yaml``:

- the YAML text: byte flips, inserted control characters, truncations, YAML fragments
  dropped at a line start, alias bombs and deep nesting;
- the parsed tree: values (or whole sections) replaced by arbitrary JSON-like values and
  dumped back to YAML, so that every field meets types and values it does not expect.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.settings.schema import load_config
from agent.settings.yamlfile import INTERNAL_ERROR, ConfigError
from tests.conftest import ROOT

#: The example with its relative paths made absolute, so that it loads from any folder.
EXAMPLE = (ROOT / "config" / "example-pole.yaml").read_text().replace(
    "../models/", f"{ROOT / 'models'}/")
EXAMPLE_TREE = yaml.safe_load(EXAMPLE)

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def check(path: Path) -> None:
    """The property: a config, or a ConfigError whose problems are all located."""
    try:
        load_config(path)
    except ConfigError as e:
        assert e.problems, "a ConfigError without problems"
        for p in e.problems:
            text = str(p)
            assert text.startswith(f"{path}:"), text
            m = re.match(r"(\d+):(\d+): ", text[len(str(path)) + 1:])
            assert m and int(m.group(1)) >= 1, f"no line number: {text}"
            assert INTERNAL_ERROR not in p.message, text


def test_the_example_itself_loads() -> None:
    # the fuzzers below start from it: it must be valid, or every case would be trivial
    assert EXAMPLE_TREE["device"]["id"]


# --- (a) the YAML text ------------------------------------------------------------------

CONTROL = st.sampled_from([*map(chr, range(0x20)), "\x7f", "\x85", "\x9b", "\ufffe", "\ufeff"])

FRAGMENTS = st.sampled_from([
    "&a", "*a", "*nope", "<<: *a", "<<: [*a, *a]", "!!python/object:os.system ''",
    "!!binary x", "!!timestamp 2026-02-30", "!!int x", "!!float x", "!!set {a}",
    "? [a, b]\n: c", "? {a: b}\n: c", "{", "[", "}", "]", "'", '"', ": :", "- -", "---",
    "...", "%YAML 1.1", "%TAG ! !foo", "2026-02-30", "1e99999", "-.inf", ".nan", "0x1F",
    "0o17", "1_000", "9" * 5000, "~", "null", "yes", "on", "=", "<<", "|", ">", "|-\n  x",
    "\t", "key: value", "device: {}", "cameras: []", "lighting: null", "mqtt: 5",
    "a: &x [1, 2]\nb: [*x, *x]",
])


def bomb(levels: int, fanout: int) -> str:
    out = [f"l0: &l0 [{', '.join(['lol'] * fanout)}]"]
    out += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fanout)}]" for i in range(1, levels)]
    return "\n".join(out) + "\n"


@st.composite
def mutated_text(draw: st.DrawFn) -> bytes:
    raw = EXAMPLE.encode()
    kind = draw(st.sampled_from(["flip", "control", "truncate", "fragment", "bomb", "deep",
                                 "text"]))
    if kind == "flip":
        b = bytearray(raw)
        for _ in range(draw(st.integers(1, 8))):
            b[draw(st.integers(0, len(b) - 1))] = draw(st.integers(0, 255))
        return bytes(b)
    if kind == "control":
        s = EXAMPLE
        at = draw(st.integers(0, len(s)))
        return (s[:at] + draw(CONTROL) + s[at:]).encode("utf-8", "surrogatepass")
    if kind == "truncate":
        return raw[:draw(st.integers(0, len(raw)))]
    lines = EXAMPLE.splitlines(keepends=True)
    at = draw(st.integers(0, len(lines)))
    indent = " " * draw(st.sampled_from([0, 2, 4, 6, 8]))
    if kind == "fragment":
        frag = draw(FRAGMENTS)
    elif kind == "bomb":
        frag = bomb(draw(st.integers(2, 9)), draw(st.integers(2, 12)))
        indent, at = "", len(lines)
    elif kind == "deep":
        n = draw(st.integers(50, 3000))
        frag = draw(st.sampled_from(["k: " + "[" * n + "]" * n,
                                     "k: " + "{a: " * n + "1" + "}" * n,
                                     "k: " + "[" * n,
                                     "".join("  " * i + f"k{i}:\n" for i in range(min(n, 200)))]))
        indent = ""
    else:
        frag = draw(st.text(max_size=40))
    body = "".join(indent + line + "\n" for line in frag.split("\n"))
    return "".join(lines[:at]).encode() + body.encode("utf-8", "surrogatepass") \
        + "".join(lines[at:]).encode()


@FUZZ
@given(raw=mutated_text())
def test_mutated_yaml_text_never_crashes(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "pole.yaml"
    path.write_bytes(raw)
    check(path)


# --- (b) the parsed tree ------------------------------------------------------------------

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | TEXT
    | st.sampled_from(["", " ", "car", "dali", "modbus", "stream", "file", "v4l2", "sunset",
                       "22:00", "1e3", "/", ".", "..", "/dev/null", "group:0", "M3", "true"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12)


def paths(tree: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in ``tree`` (mapping keys and list indices), parents before children."""
    out = [prefix] if prefix else []
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += paths(v, (*prefix, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += paths(v, (*prefix, i))
    return out


ALL_PATHS = paths(EXAMPLE_TREE)


def replaced(tree: Any, path: tuple[Any, ...], value: Any, delete: bool) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(tree, dict) and head in tree:
        out = dict(tree)
        if delete and not rest:
            del out[head]
        else:
            out[head] = replaced(tree[head], rest, value, delete)
        return out
    if isinstance(tree, list) and isinstance(head, int) and head < len(tree):
        out_l = list(tree)
        if delete and not rest:
            del out_l[head]
        else:
            out_l[head] = replaced(tree[head], rest, value, delete)
        return out_l
    return tree                       # an earlier change removed this path


@st.composite
def mutated_tree(draw: st.DrawFn) -> Any:
    tree = EXAMPLE_TREE
    for _ in range(draw(st.integers(1, 3))):
        tree = replaced(tree, draw(st.sampled_from(ALL_PATHS)), draw(JSONISH),
                        delete=draw(st.integers(0, 9)) == 0)
    return tree


@FUZZ
@given(tree=mutated_tree())
def test_mutated_values_never_crash(tmp_path: Path, tree: Any) -> None:
    path = tmp_path / "pole.yaml"
    path.write_text(yaml.safe_dump(tree, allow_unicode=True, sort_keys=False))
    check(path)


@pytest.mark.parametrize("value", [True, "1e3", float("inf"), float("nan"), "", [], {}, None])
def test_every_field_refuses_or_accepts_each_odd_value(tmp_path: Path, value: Any) -> None:
    # not random: every path of the example in turn, with values that were wrongly coerced
    path = tmp_path / "pole.yaml"
    for p in ALL_PATHS:
        path.write_text(yaml.safe_dump(replaced(EXAMPLE_TREE, p, value, False),
                                       allow_unicode=True, sort_keys=False))
        check(path)
