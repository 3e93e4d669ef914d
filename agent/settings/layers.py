"""Site and pole files: ``extends:`` chains merged into one tree that remembers, for every
value, the file and line it came from.

A pole file may start with ``extends: site.yaml`` (relative to the pole file); the site
file may extend another file in turn (a city file, say), up to :data:`MAX_CHAIN` files.
The files are merged from the most general to the pole file:

- mappings are merged key by key, recursively (the pole file's ``mqtt.host`` replaces the
  site's and keeps the site's ``mqtt.port``);
- anything else, lists included, is replaced whole (a pole's ``cameras`` or a program's
  steps are never spliced with the site's);
- ``key: null`` replaces the value with null (``lighting: null``: no lighting section).

Every value keeps its own file and line (:class:`Layered`), so an error in a value the
site file gave points at the site file, and a relative path is relative to the folder of
the file that wrote it (:func:`rebase_paths`). A file that extends itself, directly or
through others, is refused with the chain; so is a missing file, at its ``extends:`` line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel

from agent.settings.paths import is_pkg_path
from agent.settings.yamlfile import ConfigError, Loc, Problem, _unwrap, load_yaml

#: The most files one ``extends`` chain may hold (the pole file included).
MAX_CHAIN = 8
#: The keys the loader itself reads (not settings of the agent).
EXTENDS = "extends"


@dataclass
class Layered:
    """Merged data, and for every location its value's (line, column), its key's
    (line, column) and its file."""

    data: Any
    marks: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    files: dict[Loc, str] = field(default_factory=dict)
    chain: list[Path] = field(default_factory=list)   # the pole file first

    def file_of(self, loc: Loc) -> str:
        """The file that gave the value at ``loc`` (or the nearest enclosing value)."""
        while loc not in self.files and loc:
            loc = loc[:-1]
        return self.files.get(loc, str(self.chain[0]) if self.chain else "")

    def where(self, loc: Loc) -> tuple[str, int, int]:
        """``(file, line, column)`` of the value at ``loc`` (or its nearest parent)."""
        probe = loc
        while probe not in self.marks and probe:
            probe = probe[:-1]
        return (self.file_of(probe), *self.marks.get(probe, (1, 1)))


def _single(path: Path) -> Layered:
    data, marks, key_marks = load_yaml(path, secret_tags=True)
    file = str(path)
    return Layered(data, marks, key_marks, dict.fromkeys(marks, file), [path])


def load_chain(path: Path) -> Layered:
    """Load ``path`` and every file it extends, merged (see the module docstring).

    Raises :class:`ConfigError` with located problems: syntax errors in any file, a missing
    or looping ``extends``, a chain longer than :data:`MAX_CHAIN`, a file that is not a
    mapping.
    """
    path = Path(path)
    layers: list[Layered] = []
    seen: list[Path] = []
    current = path
    while True:
        layer = _single(current)
        if layer.data is None:
            layer.data = {}
        if not isinstance(layer.data, dict):
            raise ConfigError([Problem(str(current), 1, 1, "", "the file must be a YAML "
                                       "mapping of sections (device:, cameras:, ...)")])
        layers.append(layer)
        seen.append(current.resolve())
        parent = layer.data.get(EXTENDS)
        if parent is None:
            break
        line, col = layer.marks.get((EXTENDS,), (1, 1))
        at = (str(current), line, col, EXTENDS)
        if not isinstance(parent, str) or not parent.strip():
            raise ConfigError([Problem(*at, "extends names one file (the site file), "
                                       "relative to this file, e.g. extends: site.yaml")])
        nxt = Path(os.path.normpath(current.parent / parent))
        try:
            real = nxt.resolve()
        except (OSError, ValueError, RuntimeError) as e:
            raise ConfigError([Problem(*at, f"{nxt} cannot be read: {e}")]) from None
        if real in seen:
            loop = " -> ".join(str(p) for p in [*seen, nxt])
            raise ConfigError([Problem(*at, f"the extends chain loops ({loop}); a site file "
                                       f"must not extend a file that extends it")])
        if len(seen) >= MAX_CHAIN:
            raise ConfigError([Problem(*at, f"more than {MAX_CHAIN} files in the extends "
                                       f"chain; a pole needs a site file, perhaps a city file")])
        try:
            if nxt.is_dir():
                raise ConfigError([Problem(*at, f"{nxt} is a directory; extends names a file")])
            if not nxt.is_file():
                raise ConfigError([Problem(*at, f"the file it extends, {nxt}, does not exist "
                                           f"(the path is relative to {current.parent})")])
        except (OSError, ValueError) as e:
            raise ConfigError([Problem(*at, f"{nxt} cannot be read: {e}")]) from None
        current = nxt
    merged = layers[-1]
    merged.data.pop(EXTENDS, None)
    for layer in reversed(layers[:-1]):
        layer.data.pop(EXTENDS, None)
        _merge_into(merged, layer, ())
    merged.chain = [la.chain[0] for la in layers]
    for table in (merged.marks, merged.key_marks, merged.files):
        table.pop((EXTENDS,), None)
    return merged


def _drop(table: dict[Loc, Any], loc: Loc) -> None:
    for k in [k for k in table if k[:len(loc)] == loc]:
        del table[k]


def _copy(dst: Layered, src: Layered, loc: Loc) -> None:
    for table_d, table_s in ((dst.marks, src.marks), (dst.key_marks, src.key_marks),
                             (dst.files, src.files)):
        _drop(table_d, loc)
        for k, v in table_s.items():
            if k[:len(loc)] == loc:
                table_d[k] = v


def _merge_into(base: Layered, over: Layered, loc: Loc) -> None:
    """Merge the mapping at ``loc`` of ``over`` into ``base`` (mappings deep, else replace)."""
    b = _at(base.data, loc)
    o = _at(over.data, loc)
    for key, value in o.items():
        sub = (*loc, key)
        if isinstance(value, dict) and isinstance(b.get(key), dict):
            _merge_into(base, over, sub)
            for table_d, table_s in ((base.marks, over.marks), (base.key_marks, over.key_marks),
                                     (base.files, over.files)):
                if sub in table_s:
                    table_d[sub] = table_s[sub]
        else:
            b[key] = value
            _copy(base, over, sub)


def _at(data: Any, loc: Loc) -> Any:
    for part in loc:
        data = data[part]
    return data


def path_locations(model: Any, data: Any, loc: Loc = ()) -> list[Loc]:
    """Every location in ``data`` whose field in ``model`` is a path (for :func:`rebase_paths`)."""
    tp = _unwrap(model, data)
    if tp is Path:
        return [loc]
    out: list[Loc] = []
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if isinstance(data, dict):
            for key, value in data.items():
                f = tp.model_fields.get(key) if isinstance(key, str) else None
                if f is not None:
                    out += path_locations(f.annotation, value, (*loc, key))
        return out
    origin, args = get_origin(tp), get_args(tp)
    if origin in (list, tuple) and isinstance(data, list) and args:
        for i, value in enumerate(data):
            item = args[i] if origin is tuple and args[-1] is not Ellipsis and i < len(args) \
                else args[0]
            out += path_locations(item, value, (*loc, i))
    elif origin is dict and isinstance(data, dict) and len(args) == 2:
        for key, value in data.items():
            out += path_locations(args[1], value, (*loc, key))
    return out


def rebase_paths(layered: Layered, model: type[BaseModel]) -> None:
    """Make relative paths written in an extended file (not the pole file) absolute,
    against that file's folder, so that each path is relative to the file that holds it."""
    root = str(layered.chain[0])
    for loc in path_locations(model, layered.data):
        value = _at(layered.data, loc)
        file = layered.file_of(loc)
        if not isinstance(value, str) or file == root or not value.strip() \
                or is_pkg_path(value) or Path(value).is_absolute():
            continue
        parent = _at(layered.data, loc[:-1])
        parent[loc[-1]] = str((Path(file).parent / value).resolve())
