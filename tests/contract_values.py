"""Every value the agent and the lamp node can put in an enumerated contract field, read
from their source code, not from a hand-kept list.

A *field* (say node-lighting's ``source``) is written at a few *sinks*: a call's argument
(``self.event("clock_trusted", ...)``), a dict key (``{"source": src}``), an attribute
assignment (``d.mode = "adaptive"``), a function's return value. From each sink the
expression is followed back, statically, through the code that computes it: literals,
``a if c else b``, local variables and tuple unpacking, parameters (to every call of their
function), calls (to every ``return`` of the functions of that name), attributes (to every
assignment of that attribute, and every constructor call of a dataclass with that field),
module constants and ``for`` loops over literal tuples. What cannot be followed (a value
read from a file, an f-string) is a *problem*, reported at ``file:line``: the code must be
written so that its contract values can be enumerated, or the sink declared opaque, with
the reason, in ``tests/test_contract_values.py``.

The analysis over-approximates (a value that some path could reach counts), which is the
safe direction for a schema: a value that is listed but never sent costs nothing.

``python -m tests.contract_values`` prints every field's values and where each is made.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FuncNode = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass(frozen=True)
class Arg:
    """The argument at ``pos`` (or keyword ``kw``) of every call to a function, method or
    class named ``callee``; ``tuple_index``: the call's argument is a tuple (as in
    ``notices.append((name, severity, detail))``) and the value is its element."""

    callee: str
    pos: int | None = None
    kw: str | None = None
    tuple_index: int | None = None
    files: tuple[str, ...] = ()       # only calls in these files (globs); all when empty
    receiver: str | None = None       # only ``<...>.receiver.callee(...)`` calls


@dataclass(frozen=True)
class Key:
    """The value of every dict literal's ``key`` (``{"source": src}``) in ``files``."""

    key: str
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Attr:
    """Every value assigned to attribute ``attr`` (and dataclass fields of that name)."""

    attr: str


@dataclass(frozen=True)
class Returns:
    """What every function named ``func`` returns (element ``index`` of a returned tuple)."""

    func: str
    index: int | None = None


Sink = Arg | Key | Attr | Returns


@dataclass(frozen=True)
class Value:
    """One value and where it is written in the code."""

    value: object
    where: str


@dataclass
class Found:
    """What the analysis of one field found."""

    values: dict[object, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    sinks_seen: int = 0
    opaque_used: set[str] = field(default_factory=set)

    def add(self, v: Value) -> None:
        self.values.setdefault(v.value, [])
        if v.where not in self.values[v.value]:
            self.values[v.value].append(v.where)


@dataclass
class _Module:
    path: str                      # relative to the root
    text: str
    tree: ast.Module
    parents: dict[ast.AST, ast.AST]


def _files(root: Path, globs: Iterable[str]) -> list[Path]:
    out: list[Path] = []
    for g in globs:
        out.extend(p for p in sorted(root.glob(g)) if p.is_file() and p not in out)
    return out


class Code:
    """The parsed modules of one scope (the files that can produce a field's values)."""

    def __init__(self, globs: Iterable[str], root: Path = ROOT) -> None:
        self.modules: list[_Module] = []
        for p in _files(root, globs):
            text = p.read_text()
            tree = ast.parse(text, filename=str(p))
            parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
            self.modules.append(_Module(str(p.relative_to(root)), text, tree, parents))
        if not self.modules:
            raise FileNotFoundError(f"no source files match {list(globs)}")
        self.functions: dict[str, list[tuple[_Module, FuncNode]]] = {}
        self.dataclass_fields: dict[str, list[tuple[str, int]]] = {}   # field → [(class, pos)]
        self.constants: dict[tuple[str, str], ast.expr] = {}
        for m in self.modules:
            for node in ast.walk(m.tree):
                if isinstance(node, FuncNode):
                    self.functions.setdefault(node.name, []).append((m, node))
                elif isinstance(node, ast.ClassDef):
                    pos = 0
                    for stmt in node.body:
                        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                            self.dataclass_fields.setdefault(stmt.target.id, []).append(
                                (node.name, pos))
                            pos += 1
            for stmt in m.tree.body:
                if isinstance(stmt, ast.Assign):
                    for t in stmt.targets:
                        if isinstance(t, ast.Name):
                            self.constants[(m.path, t.id)] = stmt.value
                elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) \
                        and stmt.value is not None:
                    self.constants[(m.path, stmt.target.id)] = stmt.value

    # -- the sinks -------------------------------------------------------------------
    def calls(self, callee: str, files: tuple[str, ...] = (),
              receiver: str | None = None) -> Iterator[tuple[_Module, ast.Call]]:
        """Every call of a function, method or class named ``callee`` (in ``files``, on
        ``receiver``, when given)."""
        for m in self._in(files):
            for node in ast.walk(m.tree):
                if isinstance(node, ast.Call) and _callee_name(node) == callee and (
                        receiver is None or _receiver_name(node) == receiver):
                    yield m, node

    def _in(self, files: tuple[str, ...]) -> list[_Module]:
        if not files:
            return self.modules
        return [m for m in self.modules if any(Path(m.path).match(g) for g in files)]

    def sink_exprs(self, sink: Sink) -> Iterator[tuple[_Module, ast.expr, int | None]]:
        """``(module, expression, tuple index)`` for every place ``sink`` is written."""
        if isinstance(sink, Arg):
            for m, call in self.calls(sink.callee, sink.files, sink.receiver):
                e = _arg(call, sink.pos, sink.kw)
                if e is not None:
                    yield m, e, sink.tuple_index
        elif isinstance(sink, Key):
            for m in self._in(sink.files):
                for node in ast.walk(m.tree):
                    if isinstance(node, ast.Dict):
                        for k, v in zip(node.keys, node.values, strict=True):
                            if isinstance(k, ast.Constant) and k.value == sink.key:
                                yield m, v, None
        elif isinstance(sink, Attr):
            yield from self._attr_exprs(sink.attr)
        else:
            for m, fn in self.functions.get(sink.func, []):
                for r in _returns(fn):
                    if r.value is not None:
                        yield m, r.value, sink.index

    def _attr_exprs(self, attr: str) -> Iterator[tuple[_Module, ast.expr, int | None]]:
        for m in self.modules:
            for node in ast.walk(m.tree):
                if isinstance(node, ast.Assign):
                    for t in node.targets:
                        yield from ((m, e, i) for e, i in _assigned(t, node.value,
                                    lambda x: isinstance(x, ast.Attribute) and x.attr == attr))
                elif isinstance(node, ast.AnnAssign) and node.value is not None \
                        and isinstance(node.target, ast.Attribute) and node.target.attr == attr:
                    yield m, node.value, None
        for cls, pos in self.dataclass_fields.get(attr, []):
            for m, call in self.calls(cls):
                e = _arg(call, pos, attr)
                if e is not None:
                    yield m, e, None

    # -- following a value back ------------------------------------------------------
    def values(self, sinks: Iterable[Sink], opaque: Iterable[str] = ()) -> Found:
        """Every value the sinks can be given; ``opaque``: ``path:function:source`` of
        expressions known not to be enumerable (declared, with the reason, by the caller)."""
        found = Found()
        allowed = set(opaque)
        for sink in sinks:
            for m, e, idx in self.sink_exprs(sink):
                found.sinks_seen += 1
                self._resolve(m, e, idx, found, set(), allowed)
        found.problems = list(dict.fromkeys(found.problems))
        return found

    def _resolve(self, m: _Module, e: ast.expr, idx: int | None, found: Found,
                 seen: set, opaque: set[str]) -> None:
        key = (m.path, id(e), idx)
        if key in seen:
            return
        seen.add(key)
        where = f"{m.path}:{e.lineno}"
        src = ast.get_source_segment(m.text, e) or ast.dump(e)
        fn = _enclosing_function(m, e)
        here = f"{m.path}:{fn.name if fn else ''}:{src}"
        if here in opaque:
            found.opaque_used.add(here)
            return
        if idx is not None and isinstance(e, ast.Tuple | ast.List):
            if idx < len(e.elts) and not any(isinstance(x, ast.Starred) for x in e.elts):
                self._resolve(m, e.elts[idx], None, found, seen, opaque)
            else:
                found.problems.append(f"{where}: cannot take element {idx} of {src}")
            return
        if isinstance(e, ast.Constant):
            if idx is not None and e.value is not None:
                found.problems.append(f"{where}: element {idx} of a constant {src}")
            elif idx is None and e.value is not None:          # null is the schema's type, not a value
                found.add(Value(e.value, where))
        elif isinstance(e, ast.IfExp):
            checked = _checked_against(e) if idx is None else None
            if checked is None:
                self._resolve(m, e.body, idx, found, seen, opaque)
            for v in checked or ():
                found.add(Value(v, where))
            self._resolve(m, e.orelse, idx, found, seen, opaque)
        elif isinstance(e, ast.BoolOp):
            for v in e.values:
                self._resolve(m, v, idx, found, seen, opaque)
        elif isinstance(e, ast.Name):
            self._resolve_name(m, e, idx, found, seen, opaque)
        elif isinstance(e, ast.Call) and _callee_name(e) == "str" and len(e.args) == 1:
            self._resolve(m, e.args[0], idx, found, seen, opaque)
        elif isinstance(e, ast.Call):
            name = _callee_name(e)
            defs = self.functions.get(name or "", [])
            if name in self.dataclass_fields_classes():
                found.problems.append(f"{where}: {src} is an object, not a value")
            elif not defs:
                found.problems.append(f"{where}: {src}: no function {name!r} in scope to follow")
            for fm, fn in defs:
                for r in _returns(fn):
                    if r.value is None:
                        continue
                    self._resolve(fm, r.value, idx, found, seen, opaque)
        elif isinstance(e, ast.Attribute):
            exprs = list(self._attr_exprs(e.attr))
            if not exprs:
                found.problems.append(f"{where}: {src}: nothing in scope assigns .{e.attr}")
            for am, ae, ai in exprs:
                self._resolve(am, ae, idx if ai is None else ai, found, seen, opaque)
        elif isinstance(e, ast.For):
            found.problems.append(f"{where}: the loop variable of `for ... in "
                                  f"{ast.get_source_segment(m.text, e.iter)}`")
        else:
            found.problems.append(f"{where}: cannot enumerate the values of {src}")

    def dataclass_fields_classes(self) -> set[str]:
        """Names of the classes that declare annotated fields."""
        return {c for fields in self.dataclass_fields.values() for c, _ in fields}

    def _resolve_name(self, m: _Module, e: ast.Name, idx: int | None, found: Found,
                      seen: set, opaque: set[str]) -> None:
        fn = _enclosing_function(m, e)
        where = f"{m.path}:{e.lineno}"
        if fn is not None:
            assigned = list(_local_assignments(fn, e.id))
            if assigned:
                for ae, ai in assigned:
                    self._resolve(m, ae, _compose(ai, idx), found, seen, opaque)
                return
            params = _param_positions(fn, e.id)
            if params is not None:
                self._resolve_param(m, fn, e.id, params, idx, found, seen, opaque)
                return
        const = self.constants.get((m.path, e.id))
        if const is not None:
            self._resolve(m, const, idx, found, seen, opaque)
        else:
            found.problems.append(f"{where}: cannot follow the name {e.id!r}")

    def _resolve_param(self, m: _Module, fn: FuncNode, name: str, params: tuple[int, int],
                       idx: int | None, found: Found, seen: set, opaque: set[str]) -> None:
        pos, offset = params
        default = _default(fn, name)
        cls = _enclosing_class(m, fn)
        calls = [(cm, c) for cm, c in self.calls(fn.name)
                 if not _on_self(c) or (cm is m and _enclosing_class(cm, c) is cls)]
        for cm, call in calls:
            a = _arg(call, pos - offset if pos >= 0 else None, name)
            if a is None:
                if default is not None:
                    self._resolve(m, default, idx, found, seen, opaque)
                continue
            self._resolve(cm, a, idx, found, seen, opaque)
        if not calls:
            found.problems.append(f"{m.path}:{fn.lineno}: {fn.name}() is never called by name "
                                  f"here: its parameter {name!r} cannot be followed")


# -- small AST helpers -----------------------------------------------------------------

def _callee_name(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _receiver_name(call: ast.Call) -> str | None:
    """``notices`` for ``self.notices.append(...)``."""
    f = call.func
    if not isinstance(f, ast.Attribute):
        return None
    r = f.value
    return r.attr if isinstance(r, ast.Attribute) else r.id if isinstance(r, ast.Name) else None


def _arg(call: ast.Call, pos: int | None, kw: str | None) -> ast.expr | None:
    if kw is not None:
        for k in call.keywords:
            if k.arg == kw:
                return k.value
    if pos is not None and 0 <= pos < len(call.args) \
            and not any(isinstance(a, ast.Starred) for a in call.args[:pos + 1]):
        return call.args[pos]
    return None


def _returns(fn: FuncNode) -> Iterator[ast.Return]:
    """The function's own return statements (not those of functions nested in it)."""
    stack: list[ast.AST] = list(fn.body)
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Return):
            yield n
        if not isinstance(n, FuncNode | ast.ClassDef | ast.Lambda):
            stack.extend(ast.iter_child_nodes(n))


def _own_nodes(fn: FuncNode) -> Iterator[ast.AST]:
    stack: list[ast.AST] = list(fn.body)
    while stack:
        n = stack.pop()
        yield n
        if not isinstance(n, FuncNode | ast.ClassDef | ast.Lambda):
            stack.extend(ast.iter_child_nodes(n))


def _assigned(target: ast.expr, value: ast.expr, match) -> Iterator[tuple[ast.expr, int | None]]:
    """``(value, index)`` pairs for the parts of ``target`` that ``match``: a plain target
    gets the whole value; an element of a tuple target gets the value's element (directly
    when the value is a tuple literal, else as an index into what the value evaluates to)."""
    if match(target):
        yield value, None
    elif isinstance(target, ast.Tuple | ast.List):
        for i, t in enumerate(target.elts):
            if match(t):
                if isinstance(value, ast.Tuple | ast.List) and len(value.elts) == len(target.elts):
                    yield value.elts[i], None
                else:
                    yield value, i


def _local_assignments(fn: FuncNode, name: str) -> Iterator[tuple[ast.expr, int | None]]:
    def is_name(x: ast.AST) -> bool:
        return isinstance(x, ast.Name) and x.id == name
    for n in _own_nodes(fn):
        if isinstance(n, ast.Assign):
            for t in n.targets:
                yield from _assigned(t, n.value, is_name)
        elif isinstance(n, ast.AnnAssign | ast.NamedExpr) and n.value is not None \
                and is_name(n.target):
            yield n.value, None
        elif isinstance(n, ast.For):
            if isinstance(n.iter, ast.Tuple | ast.List):
                for elt in n.iter.elts:
                    yield from _assigned(n.target, elt, is_name)
            elif any(is_name(x) for x in ast.walk(n.target)):
                yield n, None  # an item of a computed sequence: reported as a problem


def _compose(first: int | None, then: int | None) -> int | None:
    """The index to follow for a name bound to element ``first`` of a value, when element
    ``then`` of the name is wanted (nested tuples are not followed: ``first`` wins)."""
    return first if first is not None else then


def _enclosing_function(m: _Module, node: ast.AST) -> FuncNode | None:
    n = m.parents.get(node)
    while n is not None and not isinstance(n, FuncNode):
        n = m.parents.get(n)
    return n


def _enclosing_class(m: _Module, node: ast.AST) -> ast.ClassDef | None:
    n = m.parents.get(node)
    while n is not None and not isinstance(n, ast.ClassDef):
        n = m.parents.get(n)
    return n


def _on_self(call: ast.Call) -> bool:
    """``self.f(...)``: a call of the caller's own class's method."""
    f = call.func
    return isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "self"


def _checked_against(e: ast.IfExp) -> list[object] | None:
    """The literals of ``x if x in ("a", "b") else ...``: ``x`` can only be one of them."""
    t = e.test
    if isinstance(t, ast.Compare) and len(t.ops) == 1 and isinstance(t.ops[0], ast.In) \
            and isinstance(t.comparators[0], ast.Tuple | ast.List | ast.Set) \
            and all(isinstance(x, ast.Constant) for x in t.comparators[0].elts) \
            and ast.dump(t.left) == ast.dump(e.body):
        return [x.value for x in t.comparators[0].elts]  # type: ignore[attr-defined]
    return None


def _param_positions(fn: FuncNode, name: str) -> tuple[int, int] | None:
    """``(position among all positional parameters, 1 for a method's self/cls else 0)``;
    position -1 for keyword-only; None when ``name`` is not a parameter."""
    a = fn.args
    positional = [p.arg for p in a.posonlyargs + a.args]
    offset = 1 if positional and positional[0] in ("self", "cls") else 0
    if name in positional:
        return positional.index(name), offset
    if name in [p.arg for p in a.kwonlyargs]:
        return -1, offset
    return None


def _default(fn: FuncNode, name: str) -> ast.expr | None:
    a = fn.args
    positional = a.posonlyargs + a.args
    for p, d in zip(positional[len(positional) - len(a.defaults):], a.defaults, strict=True):
        if p.arg == name:
            return d
    for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        if p.arg == name:
            return d
    return None


# -- the contract's enumerated fields and where the code writes them ----------------------

AGENT = ("agent/**/*.py", "drivers/**/*.py")
NODE = ("node/*.py", "agent/common/*.py")
CONTRACT = ("agent/uplink/contract.py",)
EVENT_SINKS_AGENT = (
    # (callee, files, receiver): the first two arguments are the event's name and severity
    ("EventRecord", (), None), ("_event", ("agent/lighting/service.py",), None),
    ("_notify", ("agent/uplink/outbox.py",), None), ("emit", ("agent/update/*.py",), None),
    ("record", ("agent/update/guard.py",), None))


@dataclass(frozen=True)
class ContractField:
    """An enumerated field of a message kind and where the code writes it."""

    kind: str                       # the schema file: ``agent/uplink/schemas/<kind>.schema.json``
    path: tuple[str, ...]           # the field's place in the schema's ``properties``
    scope: tuple[str, ...]          # the source files that can produce its values
    sinks: tuple[Sink, ...]
    producer: str                   # "agent" or "node"

    @property
    def name(self) -> str:
        """``node-lighting.source (node)``."""
        return f"{self.kind}.{'.'.join(self.path)} ({self.producer})"


def _event_field(pos: int, name: str) -> tuple[ContractField, ContractField]:
    agent = (*(Arg(c, pos, None, None, f, r) for c, f, r in EVENT_SINKS_AGENT),
             Arg("append", 0, tuple_index=pos, files=("agent/uplink/mqtt.py",),
                 receiver="notices"))
    node = (Arg("event", pos, files=("node/app.py",)),)
    return (ContractField("event", (name,), AGENT, agent, "agent"),
            ContractField("event", (name,), NODE, node, "node"))


FIELDS: tuple[ContractField, ...] = (
    *_event_field(0, "event"),
    *_event_field(1, "severity"),
    ContractField("lighting", ("lampActuator", "mode"),
                  ("agent/lighting/*.py", "agent/records.py", *CONTRACT),
                  (Key("mode", CONTRACT),), "agent"),
    ContractField("lighting", ("lampMonitor", "lamps", "items", "state"),
                  ("drivers/**/*.py", "agent/records.py", *CONTRACT),
                  (Key("state", CONTRACT),), "agent"),
    ContractField("lighting", ("energySavedSource",),
                  ("agent/lighting/energy.py", "agent/lighting/service.py", "agent/records.py",
                   *CONTRACT),
                  (Key("energySavedSource", CONTRACT),), "agent"),
    ContractField("health", ("lastExit", "reason"), ("agent/service/*.py",),
                  (Arg("write_exit", 1, "reason"), Key("reason", ("agent/service/runs.py",))),
                  "agent"),
    ContractField("status", ("state",), ("agent/uplink/mqtt.py",),
                  (Arg("_status", 0, "state"),), "agent"),
    ContractField("response", ("result",), CONTRACT, (Key("result", CONTRACT),), "agent"),
    ContractField("node-lighting", ("source",), NODE, (Key("source", ("node/app.py",)),),
                  "node"),
    ContractField("node-lighting", ("clock",), NODE, (Key("clock", ("node/app.py",)),), "node"),
    ContractField("status", ("state",), NODE, (Arg("status", 0, files=("node/app.py",)),),
                  "node"),
    ContractField("status", ("role",), NODE, (Key("role", ("node/app.py",)),), "node"),
    ContractField("response", ("result",), NODE, (Key("result", ("node/app.py",)),), "node"),
)


def field_values(f: ContractField, opaque: Iterable[str] = ()) -> Found:
    """What the code can write into ``f``."""
    return Code(f.scope).values(f.sinks, opaque)


def main() -> None:
    """Print every field's values and where each is written."""
    for f in FIELDS:
        found = field_values(f)
        print(f"{f.name}: {found.sinks_seen} sinks")
        for v, where in sorted(found.values.items(), key=lambda x: str(x[0])):
            print(f"  {v!r:28} {', '.join(where[:3])}{' …' if len(where) > 3 else ''}")
        for p in found.problems:
            print(f"  PROBLEM {p}")


if __name__ == "__main__":
    main()
