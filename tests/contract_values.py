"""Every value the agent and the lamp node can put in an enumerated contract field, read
from their source code, not from a hand-kept list.

A *field* (say node-lighting's ``source``) is written at a few *sinks*, where the message
is built: a dict key (``{"source": src}``, ``msg["source"] = src``), a call's argument (an
event journal's ``record("update_failed", ...)``), the items put into a list
(``notices.append((name, severity, detail))``). From each sink the expression is followed
back, statically, through the code that computes it:

- literals, ``a if c else b``, ``a or b``, ``str(x)``, ``x if x in ("a", "b") else ...``
  (only the listed literals), module constants, ``for`` loops over literal tuples;
- local variables, tuple unpacking, and parameters (to every call of their function by
  name, the parameter's default included, and to local reassignments);
- calls (to every ``return`` of the functions of that name);
- attributes (to every assignment of that attribute name, and, for each dataclass with a
  field of that name, every constructor call, ``dataclasses.replace(..., name=...)`` and
  the field's default).

What cannot be followed is a *problem*, reported at ``file:line``: a value read from a file,
an f-string, ``+=``, a starred argument, a loop over a computed sequence, a function passed
as a callback (never called by name). The code must be written so that its contract values
can be enumerated, or the problem declared, with the reason, in
``tests/test_contract_values.py`` (``OPAQUE``; a declaration excuses that one problem, the
rest of the path is still followed).

The analysis is a guard rail, not a proof. It matches attributes and functions by name, not
by type, so it over-approximates (a value some same-named attribute gets counts: safe for a
schema, at worst a value listed that is never sent). It does not see a value that reaches a
sink through a container it does not model (a dict filled by key elsewhere and passed
whole, a value read back from a file or the network, which the declared opaque reasons
then have to cover).

``python -m tests.contract_values`` prints every field's values and where each is made.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

FuncNode = ast.FunctionDef | ast.AsyncFunctionDef
Where = tuple["_Module", ast.expr, int | None]


@dataclass(frozen=True)
class Arg:
    """The argument at ``pos`` (or keyword ``kw``) of every call to a function, method or
    class named ``callee`` (in ``files``, on ``receiver`` as in ``x.receiver.callee()``,
    when given); ``tuple_index``: the argument is a tuple and the value is its element."""

    callee: str
    pos: int | None = None
    kw: str | None = None
    tuple_index: int | None = None
    files: tuple[str, ...] = ()
    receiver: str | None = None


@dataclass(frozen=True)
class Key:
    """Every value given to dict key ``key`` in ``files``: ``{"key": v}``, ``d["key"] = v``,
    ``dict(key=v)``."""

    key: str
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class Items:
    """Element ``tuple_index`` of every tuple put into a list named ``receiver`` in
    ``files``: ``.append(t)``, ``.insert(i, t)``, ``.extend([t, ...])``, ``+= [t, ...]``."""

    receiver: str
    tuple_index: int
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


Sink = Arg | Key | Items | Attr | Returns


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


@dataclass(frozen=True)
class _Field:
    """A dataclass field: its class, position among the fields, and default."""

    cls: str
    pos: int
    default: ast.expr | None
    module: _Module


def _files(root: Path, globs: Iterable[str]) -> list[Path]:
    out: list[Path] = []
    for g in globs:
        out.extend(p for p in sorted(root.glob(g)) if p.is_file() and p not in out)
    return out


class Code:
    """The parsed modules of one scope (the files that can produce a field's values)."""

    def __init__(self, globs: Iterable[str], root: Path = ROOT,
                 carriers: dict[str, tuple[str, ...]] | None = None) -> None:
        #: attribute → the (frozen) dataclasses that carry it: for these attributes only
        #: those classes' constructors, replace() and defaults are followed, not every
        #: assignment of a same-named attribute
        self.carriers = carriers or {}
        self.modules: list[_Module] = []
        for p in _files(root, globs):
            text = p.read_text()
            tree = ast.parse(text, filename=str(p))
            parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
            self.modules.append(_Module(str(p.relative_to(root)), text, tree, parents))
        if not self.modules:
            raise FileNotFoundError(f"no source files match {list(globs)}")
        self.functions: dict[str, list[tuple[_Module, FuncNode]]] = {}
        self.fields: dict[str, list[_Field]] = {}
        self.constants: dict[tuple[str, str], ast.expr] = {}
        for m in self.modules:
            for node in ast.walk(m.tree):
                if isinstance(node, FuncNode):
                    self.functions.setdefault(node.name, []).append((m, node))
                elif isinstance(node, ast.ClassDef):
                    pos = 0
                    for stmt in node.body:
                        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                            self.fields.setdefault(stmt.target.id, []).append(
                                _Field(node.name, pos, stmt.value, m))
                            pos += 1
            for stmt in m.tree.body:
                if isinstance(stmt, ast.Assign):
                    for t in stmt.targets:
                        if isinstance(t, ast.Name):
                            self.constants[(m.path, t.id)] = stmt.value
                elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) \
                        and stmt.value is not None:
                    self.constants[(m.path, stmt.target.id)] = stmt.value
        self.classes = {f.cls for fs in self.fields.values() for f in fs}

    # -- where the sinks are written -------------------------------------------------
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

    def sink_exprs(self, sink: Sink, found: Found) -> Iterator[Where]:
        """``(module, expression, tuple index)`` for every place ``sink`` is written; what
        cannot be taken apart (a starred argument) is a problem in ``found``."""
        if isinstance(sink, Arg):
            for m, call in self.calls(sink.callee, sink.files, sink.receiver):
                yield from self._arg_or_problem(m, call, sink.pos, sink.kw, sink.tuple_index,
                                                found)
        elif isinstance(sink, Key):
            for m in self._in(sink.files):
                yield from ((m, e, None) for e in _key_values(m.tree, sink.key))
        elif isinstance(sink, Items):
            for m in self._in(sink.files):
                yield from self._items(m, sink, found)
        elif isinstance(sink, Attr):
            yield from self._attr_exprs(sink.attr, found)
        else:
            for m, fn in self.functions.get(sink.func, []):
                for r in _returns(fn):
                    if r.value is not None:
                        yield m, r.value, sink.index

    def _arg_or_problem(self, m: _Module, call: ast.Call, pos: int | None, kw: str | None,
                        idx: int | None, found: Found) -> Iterator[Where]:
        e = _arg(call, pos, kw)
        if e is not None:
            yield m, e, idx
        elif _starred_before(call, pos) or any(k.arg is None for k in call.keywords):
            found.problems.append(f"{m.path}:{call.lineno}: a starred argument to "
                                  f"{_callee_name(call)}(): its values cannot be followed")

    def _items(self, m: _Module, sink: Items, found: Found) -> Iterator[Where]:
        def each(seq: ast.expr, line: int) -> Iterator[Where]:
            if isinstance(seq, ast.List | ast.Tuple) and \
                    not any(isinstance(x, ast.Starred) for x in seq.elts):
                yield from ((m, x, sink.tuple_index) for x in seq.elts)
            else:
                found.problems.append(f"{m.path}:{line}: items added to {sink.receiver} "
                                      "from a computed sequence cannot be followed")
        for node in ast.walk(m.tree):
            if isinstance(node, ast.Call) and _receiver_name(node) == sink.receiver:
                name = _callee_name(node)
                if name == "append" and node.args:
                    yield m, node.args[0], sink.tuple_index
                elif name == "insert" and len(node.args) == 2:
                    yield m, node.args[1], sink.tuple_index
                elif name == "extend" and node.args:
                    yield from each(node.args[0], node.lineno)
            elif isinstance(node, ast.AugAssign) and _target_name(node.target) == sink.receiver:
                yield from each(node.value, node.lineno)
            elif isinstance(node, ast.Assign):
                for t in node.targets:
                    if _target_name(t) == sink.receiver and not (
                            isinstance(node.value, ast.List | ast.Tuple) and not node.value.elts):
                        yield from each(node.value, node.lineno)

    def _attr_exprs(self, attr: str, found: Found) -> Iterator[Where]:
        """Everything that can give an object's attribute ``attr`` its value."""
        carriers = self.carriers.get(attr)
        for m in self.modules if carriers is None else ():
            for node in ast.walk(m.tree):
                if isinstance(node, ast.Assign):
                    for t in node.targets:
                        yield from ((m, e, i) for e, i in _assigned(t, node.value,
                                    lambda x: isinstance(x, ast.Attribute) and x.attr == attr))
                elif isinstance(node, ast.AnnAssign) and node.value is not None \
                        and isinstance(node.target, ast.Attribute) and node.target.attr == attr:
                    yield m, node.value, None
                elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Attribute) \
                        and node.target.attr == attr:
                    found.problems.append(f"{m.path}:{node.lineno}: .{attr} is changed in "
                                          "place (an augmented assignment)")
        for f in self.fields.get(attr, []):
            if carriers is not None and f.cls not in carriers:
                continue
            if f.default is not None:
                yield f.module, f.default, None
            for m, call in self.calls(f.cls):
                yield from self._arg_or_problem(m, call, f.pos, attr, None, found)
        if attr in self.fields:
            for m, call in self.calls("replace"):
                e = _arg(call, None, attr)
                if e is not None:
                    yield m, e, None

    # -- following a value back ------------------------------------------------------
    def values(self, sinks: Iterable[Sink], opaque: Iterable[str] = ()) -> Found:
        """Every value the sinks can be given; ``opaque``: problems declared by the caller
        (``path:function:what``, see :meth:`_problem`), each excusing that one problem."""
        found = Found()
        allowed = set(opaque)
        for sink in sinks:
            for m, e, idx in list(self.sink_exprs(sink, found)):
                found.sinks_seen += 1
                self._resolve(m, e, idx, found, set(), allowed)
        found.problems = list(dict.fromkeys(found.problems))
        return found

    def _problem(self, found: Found, m: _Module, node: ast.AST, what: str, message: str,
                 opaque: set[str]) -> None:
        """Report ``message`` at ``node`` unless ``path:function:what`` is declared."""
        fn = node if isinstance(node, FuncNode) else _enclosing_function(m, node)
        key = f"{m.path}:{fn.name if fn else ''}:{what}"
        if key in opaque:
            found.opaque_used.add(key)
        else:
            found.problems.append(f"{m.path}:{getattr(node, 'lineno', 0)}: {message} "
                                  f"[to declare: {key!r}]")

    def _resolve(self, m: _Module, e: ast.expr, idx: int | None, found: Found,
                 seen: set, opaque: set[str]) -> None:
        key = (m.path, id(e), idx)
        if key in seen:
            return
        seen.add(key)
        where = f"{m.path}:{e.lineno}"
        src = ast.get_source_segment(m.text, e) or ast.dump(e)
        if idx is not None and isinstance(e, ast.Tuple | ast.List):
            if idx < len(e.elts) and not any(isinstance(x, ast.Starred) for x in e.elts):
                self._resolve(m, e.elts[idx], None, found, seen, opaque)
            else:
                self._problem(found, m, e, src, f"cannot take element {idx} of {src}", opaque)
            return
        if isinstance(e, ast.Constant):
            if idx is not None and e.value is not None:
                self._problem(found, m, e, src, f"element {idx} of a constant {src}", opaque)
            elif idx is None and e.value is not None:   # null is the schema's type
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
            name = _callee_name(e) or ""
            defs = self.functions.get(name, [])
            if name in self.classes:
                self._problem(found, m, e, src, f"{src} is an object, not a value", opaque)
            elif not defs:
                self._problem(found, m, e, src, f"{src}: no function {name!r} in scope to "
                              "follow", opaque)
            for fm, fn in defs:
                for r in _returns(fn):
                    if r.value is not None:
                        self._resolve(fm, r.value, idx, found, seen, opaque)
        elif isinstance(e, ast.Attribute):
            exprs = list(self._attr_exprs(e.attr, found))
            if not exprs:
                self._problem(found, m, e, src, f"{src}: nothing in scope assigns .{e.attr}",
                              opaque)
            for am, ae, ai in exprs:
                self._resolve(am, ae, idx if ai is None else ai, found, seen, opaque)
        elif isinstance(e, ast.For):
            loop = f"for ... in {ast.get_source_segment(m.text, e.iter)}"
            self._problem(found, m, e, loop, f"the loop variable of `{loop}`", opaque)
        else:
            self._problem(found, m, e, src, f"cannot enumerate the values of {src}", opaque)

    def _resolve_name(self, m: _Module, e: ast.Name, idx: int | None, found: Found,
                      seen: set, opaque: set[str]) -> None:
        fn = _enclosing_function(m, e)
        if fn is not None:
            assigned = list(_local_assignments(fn, e.id))
            for n in _own_nodes(fn):
                if isinstance(n, ast.AugAssign) and _target_name(n.target) == e.id:
                    self._problem(found, m, n, f"{e.id} +=", f"{e.id} is changed in place "
                                  "(an augmented assignment)", opaque)
            for ae, ai in assigned:
                self._resolve(m, ae, _compose(ai, idx), found, seen, opaque)
            params = _param_positions(fn, e.id)
            if params is not None:
                self._resolve_param(m, fn, e.id, params, idx, found, seen, opaque)
            if assigned or params is not None:
                return
        const = self.constants.get((m.path, e.id))
        if const is not None:
            self._resolve(m, const, idx, found, seen, opaque)
        else:
            self._problem(found, m, e, e.id, f"cannot follow the name {e.id!r}", opaque)

    def _resolve_param(self, m: _Module, fn: FuncNode, name: str, params: tuple[int, int],
                       idx: int | None, found: Found, seen: set, opaque: set[str]) -> None:
        pos, offset = params
        default = _default(fn, name)
        cls = _enclosing_class(m, fn)
        calls = [(cm, c) for cm, c in self.calls(fn.name)
                 if not _on_self(c) or (cm is m and _enclosing_class(cm, c) is cls)]
        for cm, call in calls:
            a = _arg(call, pos - offset if pos >= 0 else None, name)
            if a is not None:
                self._resolve(cm, a, idx, found, seen, opaque)
            elif _starred_before(call, pos - offset if pos >= 0 else None) or \
                    any(k.arg is None for k in call.keywords):
                found.problems.append(f"{cm.path}:{call.lineno}: a starred argument to "
                                      f"{fn.name}(): its values cannot be followed")
            elif default is not None:
                self._resolve(m, default, idx, found, seen, opaque)
        if _referenced_not_called(self, fn.name):
            self._problem(found, m, fn, name, f"{fn.name}() is also passed as a callback: "
                          f"what its callers give {name!r} cannot be followed", opaque)
        elif not calls:
            self._problem(found, m, fn, name, f"{fn.name}() is never called by name here: "
                          f"its parameter {name!r} cannot be followed", opaque)


# -- small AST helpers -----------------------------------------------------------------

def _callee_name(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _receiver_name(call: ast.Call) -> str | None:
    """``notices`` for ``self.notices.append(...)``."""
    f = call.func
    return _target_name(f.value) if isinstance(f, ast.Attribute) else None


def _target_name(t: ast.AST) -> str | None:
    """``x`` for a name ``x`` or an attribute ``<...>.x``."""
    return t.attr if isinstance(t, ast.Attribute) else t.id if isinstance(t, ast.Name) else None


def _starred_before(call: ast.Call, pos: int | None) -> bool:
    return pos is not None and any(isinstance(a, ast.Starred) for a in call.args[:pos + 1])


def _arg(call: ast.Call, pos: int | None, kw: str | None) -> ast.expr | None:
    if kw is not None:
        for k in call.keywords:
            if k.arg == kw:
                return k.value
    if pos is not None and 0 <= pos < len(call.args) and not _starred_before(call, pos):
        return call.args[pos]
    return None


def _key_values(tree: ast.AST, key: str) -> Iterator[ast.expr]:
    """Values given to dict key ``key``: literals, ``d[key] = v``, ``dict(key=v)``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                if isinstance(k, ast.Constant) and k.value == key:
                    yield v
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Subscript) and isinstance(t.slice, ast.Constant) \
                        and t.slice.value == key:
                    yield node.value
        elif isinstance(node, ast.Call) and _callee_name(node) == "dict":
            yield from (k.value for k in node.keywords if k.arg == key)


def _referenced_not_called(code: Code, name: str) -> bool:
    """``name`` is used as a value (``self.name`` passed on), not only called."""
    for m in code.modules:
        for node in ast.walk(m.tree):
            if isinstance(node, ast.Attribute) and node.attr == name \
                    and isinstance(node.ctx, ast.Load):
                parent = m.parents.get(node)
                if not (isinstance(parent, ast.Call) and parent.func is node):
                    return True
    return False


def _returns(fn: FuncNode) -> Iterator[ast.Return]:
    """The function's own return statements (not those of functions nested in it)."""
    for n in _own_nodes(fn):
        if isinstance(n, ast.Return):
            yield n


def _own_nodes(fn: FuncNode) -> Iterator[ast.AST]:
    stack: list[ast.AST] = list(fn.body)
    while stack:
        n = stack.pop()
        yield n
        if not isinstance(n, FuncNode | ast.ClassDef | ast.Lambda):
            stack.extend(ast.iter_child_nodes(n))


def _assigned(target: ast.expr, value: ast.expr,
              match: Callable[[ast.AST], bool]) -> Iterator[tuple[ast.expr, int | None]]:
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


def _local_assignments(fn: FuncNode, name: str) -> Iterator[tuple[ast.AST, int | None]]:
    def is_name(x: ast.AST) -> bool:
        return isinstance(x, ast.Name) and x.id == name
    for n in _own_nodes(fn):
        if isinstance(n, ast.Assign):
            for t in n.targets:
                yield from _assigned(t, n.value, is_name)
        elif isinstance(n, ast.AnnAssign | ast.NamedExpr) and n.value is not None \
                and is_name(n.target):
            yield n.value, None
        elif isinstance(n, ast.For | ast.comprehension):
            if isinstance(n.iter, ast.Tuple | ast.List):
                for elt in n.iter.elts:
                    yield from _assigned(n.target, elt, is_name)
            elif any(is_name(x) for x in ast.walk(n.target)):
                yield (n if isinstance(n, ast.For) else n.iter), None  # reported when followed
        elif isinstance(n, ast.withitem) and n.optional_vars is not None \
                and any(is_name(x) for x in ast.walk(n.optional_vars)):
            yield n.context_expr, None            # what __enter__ gives: reported
        elif isinstance(n, ast.ExceptHandler) and n.name == name:
            yield n, None                         # an exception object: reported


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
NODE_APP = ("node/app.py",)

#: The message kinds each producer publishes (``agent/uplink/schemas/<kind>.schema.json``).
PUBLISHES = {
    "agent": ("status", "traffic", "lighting", "health", "event", "response", "diagnostics"),
    "node": ("status", "node-lighting", "node-health", "event", "response"),
}


@dataclass(frozen=True)
class ContractField:
    """An enumerated field of a message kind and where one producer's code writes it."""

    kind: str                       # the schema file: ``agent/uplink/schemas/<kind>.schema.json``
    path: tuple[str, ...]           # the field's place under ``properties`` (``items``: array)
    scope: tuple[str, ...]          # the source files that can produce its values
    sinks: tuple[Sink, ...]
    producer: str                   # "agent" or "node"
    optional: bool = False          # the producer may not write it at all (no sink found)
    carriers: tuple[tuple[str, tuple[str, ...]], ...] = ()   # see Code's ``carriers``
    #: ``module:NAME`` of the code's own tuple of the values that reach the field where the
    #: analysis cannot follow (a value read back from a file and checked against it)
    vocabulary: str = ""

    @property
    def name(self) -> str:
        """``node-lighting.source (node)``."""
        return f"{self.kind}.{'.'.join(self.path)} ({self.producer})"


def _event_fields(key: str, pos: int) -> tuple[ContractField, ContractField]:
    """The event name (``pos`` 0) or severity (1): where the message is built, plus the
    update steps' ``emit`` callback, the update journal (re-sent after a restart) and the
    uplink's notices (handed over in a loop), which reach the message only through code
    the analysis does not follow."""
    agent = (Key(key, CONTRACT),
             Arg("emit", pos, files=("agent/update/*.py",)),      # the update steps' callback
             Arg("record", pos, files=("agent/update/*.py",)),
             Items("notices", pos, files=("agent/uplink/mqtt.py",)))
    return (ContractField("event", (key,), AGENT, agent, "agent"),
            ContractField("event", (key,), NODE, (Key(key, NODE_APP),), "node"))


FIELDS: tuple[ContractField, ...] = (
    *_event_fields("event", 0),
    *_event_fields("severity", 1),
    ContractField("lighting", ("lampActuator", "mode"),
                  ("agent/lighting/*.py", "agent/records.py", *CONTRACT),
                  (Key("mode", CONTRACT),), "agent"),
    ContractField("lighting", ("lampMonitor", "lamps", "items", "state"),
                  ("drivers/**/*.py", "agent/lighting/*.py", "agent/records.py", *CONTRACT),
                  (Key("state", CONTRACT),), "agent", carriers=(("state", ("LampStatus",)),)),
    ContractField("lighting", ("energySavedSource",),
                  ("agent/lighting/energy.py", "agent/lighting/service.py", "agent/records.py",
                   *CONTRACT),
                  (Key("energySavedSource", CONTRACT),), "agent"),
    ContractField("health", ("lastExit", "reason"), ("agent/service/*.py",),
                  (Key("reason", ("agent/service/*.py",)),
                   Arg("write_exit", 1, "reason", files=("agent/service/*.py",))), "agent",
                  vocabulary="agent.service.runs:REASONS"),
    ContractField("status", ("state",), ("agent/uplink/mqtt.py",),
                  (Key("state", ("agent/uplink/mqtt.py",)),), "agent"),
    ContractField("health", ("uplink", "delivery"), ("agent/uplink/mqtt.py",),
                  (Key("delivery", ("agent/uplink/mqtt.py",)),), "agent"),
    ContractField("status", ("role",), ("agent/uplink/mqtt.py",),
                  (Key("role", ("agent/uplink/mqtt.py",)),), "agent", optional=True),
    ContractField("response", ("result",), CONTRACT, (Key("result", CONTRACT),), "agent"),
    ContractField("traffic", ("roadUserCounts", "items", "roadUserType"), AGENT,
                  (Key("roadUserType", CONTRACT),), "agent",
                  vocabulary="agent.vision.classes:ROAD_USER_CLASSES"),
    ContractField("traffic", ("quality", "grade"), ("agent/vision/quality.py",),
                  (Key("grade", ("agent/vision/quality.py",)),), "agent"),
    ContractField("traffic", ("quality", "scene"), ("agent/vision/quality.py",),
                  (Key("scene", ("agent/vision/quality.py",)),), "agent",
                  vocabulary="agent.vision.quality:SCENES"),
    ContractField("node-lighting", ("source",), NODE, (Key("source", NODE_APP),), "node"),
    ContractField("node-lighting", ("clock",), NODE, (Key("clock", NODE_APP),), "node"),
    *(ContractField(kind, ("role",), NODE, (Key("role", NODE_APP),), "node")
      for kind in ("status", "node-lighting", "node-health")),
    ContractField("status", ("state",), NODE, (Key("state", NODE_APP),), "node"),
    ContractField("response", ("result",), NODE, (Key("result", NODE_APP),), "node"),
)


#: Problems the analysis reports that are known not to hide a value, each with the reason.
#: Keyed ``path:function:what`` as the problem says; a declaration excuses that one problem
#: (the rest of the path is still followed), and one that no longer matches fails the test.
OPAQUE: dict[str, str] = {
    "agent/vision/quality.py:summary:max(SCENES, key=lambda k: self.scenes.get(k, 0))":
        "the interval's scene is the most frequent of SCENES (the field's vocabulary)",
    "agent/runner.py:update_event:event":
        "the update steps' emit callback (Updater, TrialWatch): every emit(...) call in "
        "agent/update is a sink of this field; calls of update_event by name are still "
        "followed",
    "agent/runner.py:update_event:severity": "as above",
    "agent/runner.py:_watch_uplink:for ... in self.uplink.take_notices()":
        "the uplink's notices: every tuple put into a notices list in agent/uplink/mqtt.py "
        "(append, insert, extend, +=, assignment) is a sink of this field (Items)",
    'agent/update/trial.py:publish_recorded:str(ev["event"])[:64]':
        "re-sends the events the update journal recorded before a restart: every "
        "record(...) call in agent/update is a sink of this field",
    'agent/service/runs.py:read_exit:rec.get("reason")':
        "read back from the run record and kept only when it is one of runs.REASONS (the "
        "field's vocabulary)",
    "agent/uplink/contract.py:traffic_message:sorted(per.items())":
        "classes are the keys of an interval's counts: the counter counts the classes a "
        "model card maps to, which the card's loader restricts to ROAD_USER_CLASSES (the "
        "field's vocabulary; test_model_cards_take_only_the_contracts_classes), and a "
        "checkpoint is read back only with those (tests/test_checkpoint.py)",
}


def schema_node(kind: str, path: tuple[str, ...]) -> dict[str, Any]:
    """A field of a schema, by its place under ``properties`` (``items``: an array's)."""
    node = json.loads((ROOT / "agent" / "uplink" / "schemas" / f"{kind}.schema.json")
                      .read_text())
    for part in path:
        node = node["items"] if part == "items" else node["properties"][part]
    return node


def schema_enum(kind: str, path: tuple[str, ...]) -> list[Any]:
    """The ``enum`` (or ``const``) of a field."""
    node = schema_node(kind, path)
    return node["enum"] if "enum" in node else [node["const"]]


def vocabulary(f: ContractField) -> dict[object, list[str]]:
    """The values of the field's code vocabulary (``module:NAME``), if it has one."""
    if not f.vocabulary:
        return {}
    import importlib

    module, name = f.vocabulary.split(":")
    return {v: [f.vocabulary] for v in getattr(importlib.import_module(module), name)}


def field_values(f: ContractField, opaque: Iterable[str] = ()) -> Found:
    """What the code can write into ``f``."""
    return Code(f.scope, carriers=dict(f.carriers)).values(f.sinks, opaque)


def main() -> None:
    """Print, for every field, each value the code can write into it, where, and whether
    the schema allows it; then what could not be followed (as the test sees it, with the
    declared OPAQUE problems left out)."""
    bad = 0
    for f in FIELDS:
        found = field_values(f, OPAQUE)
        allowed = schema_enum(f.kind, f.path)
        sinks = f"{found.sinks_seen} place{'s' if found.sinks_seen != 1 else ''}"
        print(f"{f.name}: written at {sinks}; the schema allows {allowed}")
        if not found.sinks_seen and f.optional:
            print("  (not written by this producer: allowed, optional)")
        values = {**vocabulary(f), **found.values}
        for v, where in sorted(values.items(), key=lambda x: str(x[0])):
            ok = v in allowed
            bad += not ok
            print(f"  {'ok ' if ok else 'NOT IN SCHEMA'} {v!r:28} {', '.join(where[:3])}"
                  f"{' …' if len(where) > 3 else ''}")
        for p in found.problems:
            bad += 1
            print(f"  PROBLEM {p}")
    print(f"{bad} problem{'s' if bad != 1 else ''}")


if __name__ == "__main__":
    main()
