"""``agent validate NODE.json``: a lamp node's config checked on the laptop with the node's
own rules (``node/nodecfg.py``, imported under CPython), each problem at its file and line.

A file ending in ``.json`` is a node config (pole configs are YAML). JSON syntax errors
come from :mod:`json`'s own positions; a field error is placed at the line of the key it
names (or of the nearest enclosing key that exists, e.g. the object a missing key belongs
in). Duplicate keys, ``NaN``/``Infinity`` and files over 8 KiB or nested deeper than 8
levels are refused too (the node's own limits): the device
would silently take the last duplicate, and its ``json`` does not read the constants.
"""

from __future__ import annotations

import importlib.util
import json
import re
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from agent.lighting.tzfooter import posix_rule

#: The node's own limits (``node/nodecfg.py``: MAX_CONFIG_BYTES, MAX_CONFIG_DEPTH): it checks
#: size and nesting before parsing, so a larger file would be refused on the device.
MAX_BYTES = 8192
MAX_DEPTH = 8
NODECFG = Path(__file__).resolve().parents[2] / "node" / "nodecfg.py"
_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_WS = " \t\n\r"


def is_node_config(path: str) -> bool:
    """Whether ``agent validate`` treats ``path`` as a lamp node's config (``.json``)."""
    return path.lower().endswith(".json")


@cache
def nodecfg() -> ModuleType:
    """``node/nodecfg.py``: the validator the node itself runs (MicroPython-compatible)."""
    spec = importlib.util.spec_from_file_location("polelink_nodecfg", NODECFG)
    if spec is None or spec.loader is None or not NODECFG.is_file():
        raise OSError(f"the node's validator {NODECFG} is missing (agent validate needs a "
                      "polelink checkout for node configs)")
    import sys
    if str(NODECFG.parent) not in sys.path:      # its own small modules (b64, strictjson)
        sys.path.append(str(NODECFG.parent))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _printable(text: str) -> str:
    """``text`` with every unprintable character escaped (a key may hold a newline: one
    problem stays one line)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _where(text: str, i: int) -> str:
    """``LINE:COL`` (1-based) of character offset ``i``."""
    return f"{text.count(chr(10), 0, i) + 1}:{i - text.rfind(chr(10), 0, i)}"


class _Dup(ValueError):
    pass


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for k, v in pairs:
        if k in seen:
            raise _Dup(k)
        seen[k] = v
    return seen


def _constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON (the node cannot read it)")


def _skip(s: str, i: int) -> int:
    while i < len(s) and s[i] in _WS:
        i += 1
    return i


def positions(text: str) -> dict[tuple[str | int, ...], int]:
    """Offset of every key (for object members) or value (for list items and the root) by
    path, in a document already known to be valid JSON."""
    dec = json.JSONDecoder()
    out: dict[tuple[str | int, ...], int] = {}

    def value(i: int, path: tuple[str | int, ...]) -> int:
        i = _skip(text, i)
        out.setdefault(path, i)
        if text[i] == "{":
            i = _skip(text, i + 1)
            if text[i] == "}":
                return i + 1
            while True:
                key_at = _skip(text, i)
                key, i = json.decoder.scanstring(text, key_at + 1)
                out[(*path, key)] = key_at
                i = _skip(text, i) + 1                  # the ':'
                i = _skip(text, value(i, (*path, key)))
                if text[i] == "}":
                    return i + 1
                i += 1                                  # the ','
        if text[i] == "[":
            i = _skip(text, i + 1)
            if text[i] == "]":
                return i + 1
            n = 0
            while True:
                i = _skip(text, value(i, (*path, n)))
                n += 1
                if text[i] == "]":
                    return i + 1
                i += 1
        return dec.raw_decode(text, i)[1]

    value(0, ())
    return out


def _path_of(field: str) -> tuple[str | int, ...]:
    return tuple(int(m[2]) if m[2] else m[1] for m in _PART.finditer(field))


def _depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` outside strings (before parsing: no recursion)."""
    depth = deepest = 0
    in_str = esc = False
    for c in text:
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def _zone_hint(field: str, cfg: Any) -> str:
    """For a ``tz`` that names an IANA zone (``Europe/Berlin``): the POSIX rule to write
    instead, from the zone's TZif footer on this laptop (the node has no zone files)."""
    if field != "tz" or not isinstance(cfg, dict) or not isinstance(cfg.get("tz"), str):
        return ""
    rule = posix_rule(cfg["tz"])
    if rule is None:
        return ""
    return f"; {_printable(cfg['tz'])} is an IANA zone name: write \"tz\": {json.dumps(rule)}"


def check(path: str) -> tuple[list[str], dict[str, Any] | None]:
    """Problems of the node config at ``path``, each ``FILE:LINE:COL: field: message``
    (empty when valid), and the config when it parsed."""
    p = Path(path)
    try:
        if p.is_dir():
            return [f"{path}: is a directory, not a node config"], None
        raw = p.read_bytes()[:MAX_BYTES + 1]
    except OSError as e:
        return [f"{path}: cannot read ({e.strerror or e})"], None
    if len(raw) > MAX_BYTES:
        return [f"{path}: over {MAX_BYTES} bytes: the node refuses a larger config"], None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        before = raw[:e.start].decode("utf-8", "replace")
        where = _where(before, len(before))
        return [f"{path}:{where}: not UTF-8 (byte 0x{raw[e.start]:02x})"], None
    if text.startswith("\ufeff"):
        return [f"{path}:1:1: starts with a byte-order mark; save as UTF-8 without BOM"], None
    if _depth(text) > MAX_DEPTH:
        return [f"{path}:1:1: nested deeper than {MAX_DEPTH} levels"], None
    try:
        cfg = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant)
    except json.JSONDecodeError as e:
        return [f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}"], None
    except _Dup as e:
        key = str(e)
        pos = [m.start() for m in re.finditer(re.escape(json.dumps(key)) + r"\s*:", text)]
        where = _where(text, pos[-1]) if pos else "1:1"
        return [f"{path}:{where}: {_printable(key[:80])}: duplicate key (the device would keep only "
                "the last)"], None
    except ValueError as e:
        m = re.search(r"\b(NaN|-?Infinity)\b", text)
        return [f"{path}:{_where(text, m.start() if m else 0)}: {e}"], None
    pos = positions(text)
    problems = []
    for err in nodecfg().validate(cfg):
        field = err.split(": ", 1)[0]
        parts = _path_of(field) if field != "(root)" else ()
        while parts and parts not in pos:
            parts = parts[:-1]
        problems.append(f"{path}:{_where(text, pos.get(parts, _skip(text, 0)))}: "
                        f"{_printable(err)}{_zone_hint(field, cfg)}")
    return problems, cfg
