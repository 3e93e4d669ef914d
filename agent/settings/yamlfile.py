"""Load a YAML file into a pydantic model, with errors that name file, line, field and remedy.

YAML was chosen over TOML for provisioning files because PyYAML's composer keeps the
line and column of every node, so each validation error can point at the exact line a
field crew has to fix; YAML also allows comments and is what crews already edit for
other street furniture. Duplicate keys (which PyYAML silently accepts, keeping the
last) are reported as errors here.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
Loc = tuple[Any, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a file: where it is and what would be valid."""

    file: str
    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ConfigError(Exception):
    """A file failed to load or validate; ``problems`` lists every error found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _walk(node: yaml.Node, path: Loc, marks: dict[Loc, tuple[int, int]],
          key_marks: dict[Loc, tuple[int, int]], file: str, problems: list[Problem]) -> None:
    marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for knode, vnode in node.value:
            key = knode.value
            if key in seen:
                problems.append(Problem(file, knode.start_mark.line + 1, knode.start_mark.column + 1,
                                        _dotted((*path, key)),
                                        f"duplicate key (first given on line {seen[key]})"))
            seen[key] = knode.start_mark.line + 1
            key_marks[(*path, key)] = (knode.start_mark.line + 1, knode.start_mark.column + 1)
            _walk(vnode, (*path, key), marks, key_marks, file, problems)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), marks, key_marks, file, problems)


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _data_path(data: Any, loc: Loc) -> Loc:
    """Keep only the parts of a pydantic ``loc`` that exist in the data (drops union tags)."""
    out: list[Any] = []
    cur = data
    for part in loc:
        if isinstance(cur, dict) and part not in cur and part == cur.get("kind"):
            continue  # a discriminated union's tag, not a key
        in_dict = isinstance(cur, dict) and part in cur
        in_list = isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur)
        if in_dict or in_list:
            out.append(part)
            cur = cur[part]
        elif isinstance(cur, dict | list):
            # a missing key: keep it (it names the field) and stop descending
            if not isinstance(part, int) and not _is_tag(part):
                out.append(part)
                cur = None
        else:
            break
    return tuple(out)


def _is_tag(part: Any) -> bool:
    return isinstance(part, str) and (part.startswith("function-") or "[" in part)


def _model_at(model: type[BaseModel], loc: Loc, data: Any) -> type[BaseModel] | None:
    """The pydantic model class that validates the mapping at ``loc`` (for allowed-key hints)."""
    cur: Any = model
    node = data
    for part in loc:
        cur = _unwrap(cur, node)
        if isinstance(cur, type) and issubclass(cur, BaseModel):
            field = cur.model_fields.get(part)
            if field is None:
                return None
            cur = field.annotation
            node = node.get(part) if isinstance(node, dict) else None
        elif isinstance(part, int):
            args = typing.get_args(cur)
            cur = args[0] if args else None
            node = node[part] if isinstance(node, list) and part < len(node) else None
        else:
            return None
    cur = _unwrap(cur, node)
    return cur if isinstance(cur, type) and issubclass(cur, BaseModel) else None


def _unwrap(tp: Any, node: Any) -> Any:
    """Strip Optional/Annotated, and pick the union member whose ``kind`` tag matches ``node``."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            members = [a for a in typing.get_args(tp) if a is not type(None)]
            chosen = members[0] if len(members) == 1 else None
            for m in members:
                if isinstance(m, type) and issubclass(m, BaseModel) and isinstance(node, dict):
                    kind = m.model_fields.get("kind")
                    if kind is not None and node.get("kind") in typing.get_args(kind.annotation):
                        chosen = m
            if chosen is None:
                return tp
            tp = chosen
        else:
            return tp


#: A validator that checks several fields together names the one at fault by starting its
#: message with ``@relative.path: `` (e.g. ``@programs.standard[1].level: …``).
_DEEPER = re.compile(r"^(?:Value error, )?@([A-Za-z0-9_.\[\]-]+): ")


def _deeper(err: dict[str, Any]) -> Loc:
    """The relative location a validator named in its message (see :data:`_DEEPER`)."""
    m = _DEEPER.match(str(err.get("msg", "")))
    if not m:
        return ()
    parts: list[Any] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", m.group(1)):
        parts.append(int(index) if index else name)
    return tuple(parts)


def _explain(err: dict[str, Any], model: type[BaseModel], data: Any, loc: Loc) -> str:
    etype = err["type"]
    msg = str(err["msg"])
    if etype == "extra_forbidden":
        parent = _model_at(model, loc[:-1], data)
        allowed = sorted(parent.model_fields) if parent else []
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        text = f"unknown key {loc[-1]!r}"
        if hint:
            text += f" (did you mean {hint[0]!r}?)"
        if allowed:
            text += f"; allowed keys here: {', '.join(allowed)}"
        return text
    if etype == "missing":
        return "required field is missing"
    if etype.startswith("union_tag"):
        return msg.replace("Input tag", "kind")
    given = err.get("input")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    msg = _DEEPER.sub("", msg)
    if given is not None and not isinstance(given, dict | list) and etype != "value_error":
        return f"{msg} (got {given!r})"
    return msg


def _unconstructable(text: str) -> yaml.ScalarNode | None:
    """The first scalar PyYAML cannot turn into a value (e.g. an impossible date)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    stack = [root] if root is not None else []
    while stack:
        n = stack.pop(0)
        if isinstance(n, yaml.ScalarNode):
            try:
                yaml.SafeLoader("").construct_object(n, deep=True)
            except (ValueError, OverflowError, yaml.YAMLError):
                return n
        elif isinstance(n, yaml.MappingNode):
            stack = [x for kv in n.value for x in kv] + stack
        elif isinstance(n, yaml.SequenceNode):
            stack = list(n.value) + stack
    return None


def load_yaml(path: Path) -> tuple[Any, dict[Loc, tuple[int, int]], dict[Loc, tuple[int, int]]]:
    """Parse ``path``; return ``(data, value marks, key marks)`` or raise :class:`ConfigError`."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(file, 0, 0, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([Problem(file, 0, 0, "", f"cannot read file: {e}")]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        raise ConfigError([Problem(file, line, col, "", f"YAML syntax error: {e.problem}"
                                   + (f" ({e.context})" if e.context else ""))]) from None
    except (ValueError, OverflowError, RecursionError) as e:
        # PyYAML's constructors raise without a mark (an unquoted 2026-02-30 is read as a
        # date that does not exist): find the scalar that fails, for its line
        bad = _unconstructable(text)
        line, col = (bad.start_mark.line + 1, bad.start_mark.column + 1) if bad else (0, 0)
        what = f"{bad.value!r} " if bad is not None else ""
        raise ConfigError([Problem(file, line, col, "", f"cannot read the value {what}({e}); "
                                   f"quote it if it is meant as text")]) from None
    marks: dict[Loc, tuple[int, int]] = {}
    key_marks: dict[Loc, tuple[int, int]] = {}
    problems: list[Problem] = []
    if node is not None:
        _walk(node, (), marks, key_marks, file, problems)
    if problems:
        raise ConfigError(problems)
    return data, marks, key_marks


def validate_file(path: Path, model: type[M], context: dict[str, Any] | None = None) -> M:
    """Load and validate ``path`` into ``model``; every error becomes a located :class:`Problem`."""
    data, marks, key_marks = load_yaml(path)
    file = str(path)
    if not isinstance(data, dict):
        raise ConfigError([Problem(file, 1, 1, "", "the file must be a YAML mapping of sections "
                                   f"({', '.join(model.model_fields)})")])
    try:
        return model.model_validate(data, context=context)
    except ValidationError as e:
        problems = []
        for err in e.errors(include_url=False):
            loc = _data_path(data, tuple(err["loc"]) + _deeper(err))
            if err["type"] == "extra_forbidden" and loc in key_marks:
                line, col = key_marks[loc]
            else:
                probe = loc
                while probe not in marks and probe:
                    probe = probe[:-1]
                line, col = key_marks.get(probe, marks.get(probe, (1, 1))) \
                    if err["type"] == "missing" else marks.get(probe, (1, 1))
            problems.append(Problem(file, line, col, _dotted(loc),
                                    _explain(err, model, data, loc)))
        problems.sort(key=lambda p: (p.line, p.column))
        raise ConfigError(problems) from None
