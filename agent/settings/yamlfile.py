"""Load a YAML file into a pydantic model, with errors that name file, line, field and remedy.

YAML was chosen over TOML for provisioning files because PyYAML's composer keeps the
line and column of every node, so each validation error can point at the exact line a
field crew has to fix; YAML also allows comments and is what crews already edit for
other street furniture. Duplicate keys (which PyYAML silently accepts, keeping the
last) are reported as errors here.

A provisioning file comes from a crew's laptop, a USB stick or a platform push, so nothing
in it may crash the loader: every failure is a located :class:`Problem`, never a traceback.
Before PyYAML builds a single value the file is bounded:

- at most :data:`MAX_BYTES` (1 MiB; a real pole file is a few KiB), UTF-8 only;
- no control characters (only tab, newline and carriage return), neither in the text nor
  produced by escapes in quoted strings: a NUL in a port or path is never meant;
- nesting at most :data:`MAX_DEPTH` levels (a pole file needs about eight), checked while
  composing, before Python's recursion limit can be reached;
- anchors and aliases are allowed (crews use them to share a detector section between
  cameras), but every alias is counted as the number of values it stands for, and the
  file is refused once aliases stand for more than :data:`MAX_ALIAS_VALUES` values in all.
  Bounding the expansion, rather than refusing aliases, keeps that legitimate use while a
  "billion laughs" file (each anchor aliasing the previous one ten times) is stopped at
  the alias that crosses the bound, with its line, before anything is expanded. An alias
  inside the node its anchor names (a recursive structure) is refused: no setting is
  infinite.

Provisioning files may also hold ``!secret name`` references (:class:`SecretRef`, read only
when ``load_yaml`` is asked for them); :func:`validate_data` validates data merged from
several files (a site file and a pole file) with each location's own file, and never shows
a value that came from a secret (see :class:`Redact`).
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

#: How a problem caused by a bug in a validator (not by the file) begins.
INTERNAL_ERROR = "internal error"
#: The largest provisioning file read, in bytes.
MAX_BYTES = 1 << 20
#: The deepest nesting of mappings and lists accepted.
MAX_DEPTH = 64
#: The most values all aliases of a file may stand for together (see the module docstring).
MAX_ALIAS_VALUES = 10_000
#: What PyYAML and we refuse: C0/C1 controls except tab, LF, CR (and NEL, which YAML treats
#: as a line break), DEL, surrogates and the non-characters U+FFFE/U+FFFF.
_CONTROL = re.compile("[^\x09\x0A\x0D\x20-\x7E\x85\xA0-\uD7FF\uE000-\uFFFD"
                      "\U00010000-\U0010FFFF]")


@dataclass(frozen=True)
class SecretRef:
    """A ``!secret name`` reference in a provisioning file, resolved from the secrets file
    (see :mod:`agent.settings.secrets`)."""

    name: str

    def __str__(self) -> str:
        return f"!secret {self.name}"


#: What a secret's name may be (a secrets-file key).
SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class Redact:
    """What a problem message must not show: the input at these locations (values that
    came from secrets, or secrets written inline) and these values wherever they appear."""

    locs: frozenset[tuple[Any, ...]] = frozenset()
    values: tuple[str, ...] = ()

    def hides(self, loc: tuple[Any, ...]) -> bool:
        """Whether the value at ``loc`` (or around it) must not be shown."""
        return any(loc[:i] in self.locs for i in range(len(loc) + 1)) or \
            any(x[:len(loc)] == loc for x in self.locs)

    def scrub(self, text: str) -> str:
        """``text`` with every secret value (of 4 characters or more) replaced by ``***``."""
        for v in sorted(self.values, key=len, reverse=True):
            if len(v) >= 4:
                text = text.replace(v, "***")
        return text


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


class _Refused(yaml.composer.ComposerError):
    """Well-formed YAML that a provisioning file may not contain (not a syntax error)."""


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing deep nesting, recursive aliases and alias bombs while
    it composes (see the module docstring); each refusal is a marked ``ComposerError``."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._open_anchors: set[str] = set()
        self._sizes: dict[int, int] = {}      # id(node) -> values it stands for, expanded
        self._alias_values = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open_anchors:
                raise _Refused(
                    None, None, f"alias *{event.anchor} is inside its own anchor "
                    f"&{event.anchor} (a recursive structure); aliases may only repeat a "
                    f"value defined before them", event.start_mark)
            node = super().compose_node(parent, index)
            self._alias_values += self._sizes.get(id(node), 1)
            if self._alias_values > MAX_ALIAS_VALUES:
                raise _Refused(
                    None, None, f"aliases stand for more than {MAX_ALIAS_VALUES} values in "
                    f"all (an alias bomb?); write the values out or use fewer aliases",
                    event.start_mark)
            return node
        if self._depth >= MAX_DEPTH:
            raise _Refused(
                None, None, f"nested deeper than {MAX_DEPTH} levels; a provisioning file "
                f"needs far fewer", event.start_mark)
        anchor = getattr(event, "anchor", None)
        self._depth += 1
        if anchor is not None:
            self._open_anchors.add(anchor)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            if anchor is not None:
                self._open_anchors.discard(anchor)
        if isinstance(node, yaml.SequenceNode):
            children: list[yaml.Node] = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for kv in node.value for n in kv]
        else:
            children = []
        self._sizes[id(node)] = 1 + sum(self._sizes.get(id(c), 1) for c in children)
        return node


class _SecretLoader(yaml.SafeLoader):
    """The safe loader plus the ``!secret name`` tag (a :class:`SecretRef`)."""


def _construct_secret(loader: yaml.SafeLoader, node: yaml.Node) -> SecretRef:
    if not isinstance(node, yaml.ScalarNode):
        raise yaml.constructor.ConstructorError(
            None, None, "!secret takes the name of a secret (a plain word), not a list or "
            "mapping", node.start_mark)
    name = node.value.strip()
    if not SECRET_NAME.match(name):  # the "name" may be a pasted password: never shown
        raise yaml.constructor.ConstructorError(
            None, None, "!secret needs the name of a secret in the secrets file: letters, "
            "digits, '_', '.' and '-', starting with a letter or '_' (the value itself goes "
            "in the secrets file)", node.start_mark)
    return SecretRef(name)


_SecretLoader.add_constructor("!secret", _construct_secret)


def _located(file: str, mark: Any, message: str) -> Problem:
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    return Problem(file, line, col, "", message)


def _text_of(raw: bytes, file: str) -> str:
    """``raw`` as text, or a located :class:`ConfigError` for bytes that are not UTF-8 or
    for control characters."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError([Problem(file, line, col, "", f"not UTF-8 text (byte "
                                   f"0x{raw[e.start]:02x}); save the file as UTF-8")]) from None
    bad = _CONTROL.search(text)
    if bad:
        line = text.count("\n", 0, bad.start()) + 1
        col = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        raise ConfigError([Problem(file, line, col, "", f"control character "
                                   f"U+{ord(bad.group()):04X} is not allowed (only tab, newline "
                                   f"and carriage return); remove it")])
    return text


def _walk(node: yaml.Node, path: Loc, marks: dict[Loc, tuple[int, int]],
          key_marks: dict[Loc, tuple[int, int]], file: str, problems: list[Problem]) -> None:
    marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.ScalarNode):
        bad = _CONTROL.search(node.value)
        if bad:
            problems.append(Problem(file, *marks[path], _dotted(path),
                                    f"control character U+{ord(bad.group()):04X} (from an "
                                    f"escape) is not allowed in a value"))
    elif isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                problems.append(Problem(file, knode.start_mark.line + 1,
                                        knode.start_mark.column + 1, _dotted(path),
                                        "a key must be a plain name, not a list or mapping"))
                continue
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


def _unconstructable(root: yaml.Node, loader: type[yaml.SafeLoader] = yaml.SafeLoader
                     ) -> yaml.ScalarNode | None:
    """The first scalar PyYAML cannot turn into a value (e.g. an impossible date)."""
    stack = [root]
    seen: set[int] = set()
    while stack:
        n = stack.pop(0)
        if id(n) in seen:
            continue
        seen.add(id(n))
        if isinstance(n, yaml.ScalarNode):
            try:
                loader("").construct_object(n, deep=True)
            except Exception:  # any failure names this scalar
                return n
        elif isinstance(n, yaml.MappingNode):
            stack = [x for kv in n.value for x in kv] + stack
        elif isinstance(n, yaml.SequenceNode):
            stack = list(n.value) + stack
    return None


def load_yaml(path: Path, secret_tags: bool = False
              ) -> tuple[Any, dict[Loc, tuple[int, int]], dict[Loc, tuple[int, int]]]:
    """Parse ``path``; return ``(data, value marks, key marks)`` or raise :class:`ConfigError`.

    Nothing PyYAML raises escapes as anything but a located :class:`ConfigError`. With
    ``secret_tags``, ``!secret name`` scalars become :class:`SecretRef` (otherwise the tag
    is an error, as any unknown tag).
    """
    file = str(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError([Problem(file, 0, 0, "", "file not found")]) from None
    except OSError as e:
        raise ConfigError([Problem(file, 0, 0, "", f"cannot read file: {e}")]) from None
    if len(raw) > MAX_BYTES:
        raise ConfigError([Problem(file, 1, 1, "", f"file is larger than {MAX_BYTES} bytes; "
                                   f"a provisioning file is a few kilobytes")])
    text = _text_of(raw, file)
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = "" if isinstance(e, _Refused) else "YAML syntax error: "
        raise ConfigError([_located(file, mark, f"{what}{e.problem}"
                                    + (f" ({e.context})" if e.context else ""))]) from None
    except Exception as e:  # ReaderError, RecursionError, anything: located
        raise ConfigError([_located(file, loader.get_mark(),
                                    f"YAML syntax error: {e}")]) from None
    finally:
        loader.dispose()
    marks: dict[Loc, tuple[int, int]] = {}
    key_marks: dict[Loc, tuple[int, int]] = {}
    problems: list[Problem] = []
    if node is None:
        return None, marks, key_marks
    _walk(node, (), marks, key_marks, file, problems)
    if problems:
        raise ConfigError(problems)
    try:
        constructor = _SecretLoader if secret_tags else yaml.SafeLoader
        data = constructor("").construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise ConfigError([_located(file, mark, f"YAML error: {e.problem}"
                                    + (f" ({e.context})" if e.context else ""))]) from None
    except Exception as e:
        # PyYAML's constructors raise without a mark (an unquoted 2026-02-30 is read as a
        # date that does not exist): find the scalar that fails, for its line
        bad = _unconstructable(node, constructor)
        what = f"{bad.value!r} " if bad is not None else ""
        raise ConfigError([_located(file, bad.start_mark if bad is not None else None,
                                    f"cannot read the value {what}({e}); quote it if it is "
                                    f"meant as text")]) from None
    return data, marks, key_marks


def validate_file(path: Path, model: type[M], context: dict[str, Any] | None = None) -> M:
    """Load and validate ``path`` into ``model``; every error becomes a located :class:`Problem`."""
    data, marks, key_marks = load_yaml(path)
    return validate_data(data, model, marks, key_marks, str(path), context)


def validate_data(data: Any, model: type[M], marks: dict[Loc, tuple[int, int]],
                  key_marks: dict[Loc, tuple[int, int]], file: str,
                  context: dict[str, Any] | None = None, files: dict[Loc, str] | None = None,
                  redact: Redact | None = None) -> M:
    """Validate loaded ``data`` into ``model``; every error becomes a :class:`Problem` at
    its value's line, in ``files[location]`` (data merged from several files) or ``file``.
    Nothing ``redact`` names is shown."""
    redact = redact or Redact()
    if not isinstance(data, dict):
        raise ConfigError([Problem(file, 1, 1, "", "the file must be a YAML mapping of sections "
                                   f"({', '.join(model.model_fields)})")])
    try:
        return model.model_validate(data, context=context)
    except ValidationError as e:
        raise ConfigError(_problems(e, model, data, marks, key_marks, file, files,
                                    redact)) from None
    except Exception as e:  # a validator's bug must not become a traceback
        raise ConfigError([Problem(file, 1, 1, "", redact.scrub(
            f"{INTERNAL_ERROR} while validating ({type(e).__name__}: {e}); please report "
            f"this file"))]) from None


def _problems(e: ValidationError, model: type[BaseModel], data: Any,
              marks: dict[Loc, tuple[int, int]], key_marks: dict[Loc, tuple[int, int]],
              file: str, files: dict[Loc, str] | None = None,
              redact: Redact | None = None) -> list[Problem]:
    """Each pydantic error as a located :class:`Problem`, in file order."""
    redact = redact or Redact()
    files = files or {}
    problems = []
    for err in e.errors(include_url=False):
        loc = _data_path(data, tuple(err["loc"]) + _deeper(err))
        if err["type"] == "extra_forbidden" and loc in key_marks:
            line, col = key_marks[loc]
            where = files.get(loc, file)
        else:
            probe = loc
            while probe not in marks and probe:
                probe = probe[:-1]
            line, col = key_marks.get(probe, marks.get(probe, (1, 1))) \
                if err["type"] == "missing" else marks.get(probe, (1, 1))
            where = files.get(probe, file)
        if redact.hides(loc):
            err = {**err, "input": None}
        problems.append(Problem(where, line, col, _dotted(loc),
                                redact.scrub(_explain(err, model, data, loc))))
    problems.sort(key=lambda p: (p.file != file, p.file, p.line, p.column))
    return problems
