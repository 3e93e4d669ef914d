"""Secrets apart from provisioning files: references, the secrets file, and inline secrets.

A provisioning file never holds a secret. It refers to one:

- ``password: !secret mqtt_password``: the key ``mqtt_password`` of the secrets file;
- ``${NAME}`` inside any text value (``url: rtsp://cam:${CAM_PASSWORD}@192.0.2.10/s1``):
  the environment variable ``NAME`` or, when it is not set, the secrets file's key
  ``NAME``. ``$${`` is a literal ``${``.

The secrets file is, first found: ``--secrets FILE`` (the ``POLELINK_SECRETS``
environment variable), the ``secrets:`` key (relative to the file that writes it), or
``secrets.yaml`` beside the pole file. It is a YAML mapping of names to quoted text, read
only when a reference needs it. Its mode must not let the group or others read or write
it: ``agent run`` (and every command but ``validate``) **refuses** such a file, because a
secret readable by any other account on the pole is already leaked and a pole must not
start half-trusted; ``agent validate`` **warns** instead, since files checked out from git
on a crew's laptop are 0644 until ``chmod 600`` (which is what both messages say to do).

A secret written inline is an error that tells the crew where to move it: a value for a
field the schema marks secret (``json_schema_extra={"secret": True}``: ``mqtt.password``),
a key named like a secret (password, token, api_key, private_key, ...), a URL with a
password in it (``rtsp://user:pass@host``), a PEM private key. No message ever shows a
secret's value: locations that hold one are redacted (:class:`~agent.settings.yamlfile.Redact`).
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agent.settings.layers import Layered
from agent.settings.yamlfile import (
    SECRET_NAME,
    ConfigError,
    Loc,
    Problem,
    SecretRef,
    _dotted,
    _unwrap,
    load_yaml,
)

#: The environment variable that names the secrets file (what ``--secrets`` sets).
SECRETS_ENV = "POLELINK_SECRETS"
#: The secrets file looked for beside the pole file when nothing names one.
DEFAULT_SECRETS = "secrets.yaml"
#: ``${NAME}``, or a ``$${`` escape.
_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
#: Key names that hold a secret wherever they appear.
_SECRET_KEY = re.compile(r"(^|_)(password|passwd|passphrase|token|api_?key|private_?key|"
                         r"secret|credentials?)($|_)", re.IGNORECASE)
#: Keys of the provisioning file that name a file (not a secret), though they match above.
_NOT_SECRET_KEYS = {"secrets", "secrets_file"}
_URL_PASSWORD = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://([^/@?#\s]*):([^/@?#\s]*)@")
_PEM_KEY = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")


@dataclass
class Resolved:
    """What resolving references did: secret values (never to be shown) and where they
    went, the secrets file read (if any), and warnings."""

    values: list[str] = field(default_factory=list)
    locs: set[Loc] = field(default_factory=set)
    secrets_file: Path | None = None
    warnings: list[Problem] = field(default_factory=list)


def secret_fields(model: Any, data: Any, loc: Loc = ()) -> list[Loc]:
    """Locations in ``data`` of fields the schema marks secret."""
    tp = _unwrap(model, data)
    out: list[Loc] = []
    if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(data, dict):
        for key, value in data.items():
            f = tp.model_fields.get(key) if isinstance(key, str) else None
            if f is None:
                continue
            extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
            if extra.get("secret"):
                out.append((*loc, key))
            else:
                out += secret_fields(f.annotation, value, (*loc, key))
    elif isinstance(data, list):
        from typing import get_args
        args = get_args(tp)
        for i, value in enumerate(data):
            out += secret_fields(args[0] if args else None, value, (*loc, i))
    return out


def _is_reference(value: Any) -> bool:
    """Whether ``value`` is a reference as a whole (``!secret x`` or ``${X}``)."""
    if isinstance(value, SecretRef):
        return True
    return isinstance(value, str) and re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}",
                                                   value.strip()) is not None


def _leaves(data: Any, loc: Loc = ()) -> list[tuple[Loc, Any]]:
    if isinstance(data, dict):
        return [x for k, v in data.items() for x in _leaves(v, (*loc, k))]
    if isinstance(data, list):
        return [x for i, v in enumerate(data) for x in _leaves(v, (*loc, i))]
    return [(loc, data)]


def inline_secrets(layered: Layered, model: type[BaseModel]) -> tuple[list[Problem], set[Loc]]:
    """Secrets written inline (see the module docstring): one problem each, and the
    locations to redact. Runs on the data before references are resolved."""
    problems: list[Problem] = []
    locs: set[Loc] = set()
    marked = set(secret_fields(model, layered.data))
    move = "move it to the secrets file and refer to it"

    def add(loc: Loc, message: str) -> None:
        locs.add(loc)
        file, line, col = layered.where(loc)
        problems.append(Problem(file, line, col, _dotted(loc), message))

    for loc, value in _leaves(layered.data):
        if value is None or value == "" or _is_reference(value):
            continue
        key = loc[-1] if loc and isinstance(loc[-1], str) else ""
        if loc in marked or (key and key not in _NOT_SECRET_KEYS and _SECRET_KEY.search(key)):
            add(loc, f"a secret written inline: {move} (e.g. {key or 'value'}: "
                     f"!secret {'_'.join(str(p) for p in loc if isinstance(p, str))})")
        elif isinstance(value, str):
            m = _URL_PASSWORD.match(value)
            if m and not _is_reference(m.group(2)):
                add(loc, f"a URL with a password written inline: {move} as "
                         f"{value[:m.start(1)]}{m.group(1) or 'user'}:${{NAME}}@... with NAME in the "
                         f"secrets file (or the environment)")
            elif _PEM_KEY.search(value):
                add(loc, f"a private key written inline: {move}, or name a key file")
    return problems, locs


class _Secrets:
    """The secrets file, read on first use."""

    def __init__(self, path: Path | None, named_by: str, strict_mode: bool) -> None:
        self.path = path
        self.named_by = named_by
        self.strict_mode = strict_mode
        self.table: dict[str, str] | None = None
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []
        self.read = False
        self.unusable = ""          # why the file cannot be used, once read

    def get(self, name: str) -> tuple[str | None, str]:
        """The secret ``name``, or None and why not."""
        if not self.read:
            self._load()
        if self.table is None:
            return None, f"no usable secrets file: {self.path} ({self.named_by}) " \
                         f"{self.unusable or 'has problems (below)'}"
        if name in self.table:
            return self.table[name], ""
        names = ", ".join(sorted(self.table)[:20]) or "none"
        return None, f"{self.path} has no secret {name!r} (it has: {names})"

    def _load(self) -> None:
        self.read = True
        path = self.path
        if path is None:
            return
        file = str(path)
        try:
            mode = path.stat().st_mode
            if not stat.S_ISREG(mode):
                self.unusable = "is not a file"
                return
        except FileNotFoundError:
            self.unusable = "does not exist"
            return
        except OSError as e:
            self.unusable = f"cannot be read: {e.strerror}"
            return
        if stat.S_IMODE(mode) & 0o077:
            what = (f"is readable or writable by group or others (mode "
                    f"{stat.S_IMODE(mode):04o}): run chmod 600 {path}")
            if self.strict_mode:
                self.unusable = "is refused (below)"
                self.problems.append(Problem(file, 1, 1, "", f"refused: the secrets file {what}"
                                             f"; a secret others can read is leaked"))
                return
            self.warnings.append(Problem(file, 1, 1, "", f"WARNING: the secrets file {what}; "
                                         f"agent run refuses it as it is"))
        try:
            data, marks, _ = load_yaml(path)
        except ConfigError as e:
            # a located problem, never the text of a value ("cannot read the value '...'")
            self.problems += [p if "cannot read the value" not in p.message else
                              Problem(p.file, p.line, p.column, p.field,
                                      "a value YAML cannot read; quote it") for p in e.problems]
            return
        if data is None:
            data = {}
        if not isinstance(data, dict):
            self.problems.append(Problem(file, 1, 1, "", "the secrets file must be a YAML "
                                         "mapping of names to quoted text (name: 'value')"))
            return
        table: dict[str, str] = {}
        for k, v in data.items():
            line, col = marks.get((k,), (1, 1))
            if not isinstance(k, str) or not SECRET_NAME.match(k):
                self.problems.append(Problem(file, line, col, "", "a secret's name is letters, "
                                             "digits, '_', '.' and '-', starting with a letter "
                                             "or '_'"))
            elif not isinstance(v, str) or not v:
                self.problems.append(Problem(file, line, col, str(k), "a secret must be "
                                             "non-empty text: quote it (name: '0123')"))
            else:
                table[k] = v
        self.table = table


def choose_secrets_file(layered: Layered, given: Path | None) -> tuple[Path, str, bool]:
    """The secrets file to use, what named it, and whether it was named explicitly."""
    if given is None and os.environ.get(SECRETS_ENV):
        given = Path(os.environ[SECRETS_ENV])
    if given is not None:
        return Path(given), "--secrets / POLELINK_SECRETS", True
    key = layered.data.get("secrets") if isinstance(layered.data, dict) else None
    if isinstance(key, str) and key.strip():
        file, line, _ = layered.where(("secrets",))
        return Path(os.path.normpath(Path(layered.file_of(("secrets",))).parent / key)), \
            f"secrets: in {file}:{line}", True
    return layered.chain[0].parent / DEFAULT_SECRETS, "the default beside the pole file", False


def resolve_references(layered: Layered, given: Path | None = None, strict_mode: bool = True,
                       env: Mapping[str, str] | None = None) -> tuple[list[Problem], Resolved]:
    """Replace every ``!secret`` and ``${NAME}`` in ``layered.data`` with its value, in place.
    Returns the problems (unresolved or malformed references, an unusable secrets file)
    and what was resolved."""
    env = os.environ if env is None else env
    path, named_by, explicit = choose_secrets_file(layered, given)
    secrets = _Secrets(path, named_by, strict_mode)
    problems: list[Problem] = []
    out = Resolved()

    def problem(loc: Loc, message: str) -> None:
        file, line, col = layered.where(loc)
        problems.append(Problem(file, line, col, _dotted(loc), message))

    for loc, value in _leaves(layered.data):
        if isinstance(value, SecretRef):
            secret, why = secrets.get(value.name)
            if secret is None:
                problem(loc, f"!secret {value.name}: not resolved: {why}")
                continue
            _set(layered.data, loc, secret)
            out.values.append(secret)
            out.locs.add(loc)
        elif isinstance(value, str) and "${" in value:
            text, bad, used = _substitute(value, env, secrets)
            if bad:
                problem(loc, bad)
                continue
            _set(layered.data, loc, text)
            if used:
                out.values += used
                out.locs.add(loc)
    if explicit and not secrets.read:
        secrets.get("")  # a file named on purpose is checked even when nothing refers to it
        if secrets.table is None and secrets.unusable:
            if named_by.startswith("secrets:"):
                problem(("secrets",), f"the secrets file {path} {secrets.unusable}")
            else:
                problems.append(Problem(str(path), 1, 1, "", f"the secrets file (named by "
                                        f"{named_by}) {secrets.unusable}"))
    problems += secrets.problems
    out.warnings = secrets.warnings
    out.secrets_file = path if secrets.table is not None else None
    return problems, out


def _substitute(text: str, env: Mapping[str, str], secrets: _Secrets
                ) -> tuple[str, str, list[str]]:
    """``text`` with its ``${NAME}`` replaced; an error message ("" if none); the values used."""
    used: list[str] = []
    out: list[str] = []
    pos = 0
    for m in _REF.finditer(text):
        out.append(text[pos:m.start()])
        pos = m.end()
        token = m.group(0)
        if token == "$${":
            out.append("${")
            continue
        name = m.group(1)
        if name is None:
            return "", "'${' without a closing '}': write ${NAME}, or $${ for a literal ${", []
        if not _ENV_NAME.match(name):
            return "", ("a ${...} reference needs a name of letters, digits and '_' "
                        "(e.g. ${CAM_PASSWORD}); $${ is a literal ${"), []
        value = env.get(name)
        if value is None:
            value, why = secrets.get(name)
            if value is None:
                return "", f"${{{name}}}: not resolved: not in the environment, and {why}", []
        used.append(value)
        out.append(value)
    out.append(text[pos:])
    return "".join(out), "", used


def _set(data: Any, loc: Loc, value: Any) -> None:
    for part in loc[:-1]:
        data = data[part]
    data[loc[-1]] = value
