"""Update bundles: a versioned, signed tar of everything one release needs.

Members (a plain tar: wheels are already compressed)::

    manifest.json        format, version, created, agent_wheel, required_bytes, and the
                         size and sha256 of every other member
    manifest.json.sig    detached Ed25519 signature (64 raw bytes) over manifest.json's bytes
    wheels/*.whl         the wheelhouse: the agent's wheel and its dependencies
    models/...           model cards and weights (optional)

:func:`verify` checks the signature before it believes anything the manifest says, then
that the members are exactly those listed, regular files with safe names, of the listed
size and sha256. :func:`extract` does the same while writing, so what lands on disk is
what was signed. Any problem is a :class:`BundleError` naming the member.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent.settings.modelcard import sha256_file
from agent.update.guard import valid_version

FORMAT = "polelink-bundle/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.json.sig"
#: The most members a bundle may have, and the largest manifest read.
MAX_MEMBERS = 5000
MAX_MANIFEST_BYTES = 1 << 20
#: Member names: relative, under wheels/ or models/, no dot-dot, plain characters.
MEMBER_RE = re.compile(r"^(wheels/[A-Za-z0-9._+-]+\.whl|models/[A-Za-z0-9._+/-]{1,200})$")
#: What a venv takes beyond its wheels' size, as a default for ``required_bytes``.
VENV_OVERHEAD = 64 << 20
CHUNK = 1 << 20


class BundleError(ValueError):
    """The bundle is not one this pole may install (the message says which part)."""


@dataclass(frozen=True)
class Manifest:
    """A bundle's checked manifest."""

    version: str
    created: str
    agent_wheel: str
    required_bytes: int
    files: dict[str, tuple[int, str]]           # member → (size, sha256)
    raw: bytes

    @property
    def payload_bytes(self) -> int:
        """Sum of the members' sizes."""
        return sum(s for s, _ in self.files.values())


# -- reading ---------------------------------------------------------------------------------
def parse_manifest(raw: bytes) -> Manifest:
    """A manifest from its bytes (BundleError naming the field otherwise). Strict JSON."""
    from agent.uplink.commands import parse_strict

    try:
        d = parse_strict(raw)
    except ValueError as e:
        raise BundleError(f"{MANIFEST}: {e}") from None
    if not isinstance(d, dict):
        raise BundleError(f"{MANIFEST}: not a JSON object")
    if d.get("format") != FORMAT:
        raise BundleError(f"{MANIFEST}: format: expected {FORMAT!r}, got {d.get('format')!r:.80}")
    version = d.get("version")
    if not valid_version(version):
        raise BundleError(f"{MANIFEST}: version: {version!r:.80} is not a release name "
                          "(letters, digits, . _ + -; at most 64)")
    created = d.get("created")
    if not isinstance(created, str) or len(created) > 40:
        raise BundleError(f"{MANIFEST}: created: not a date-time")
    try:
        datetime.fromisoformat(created.replace("Z", "+00:00"))
    except ValueError:
        raise BundleError(f"{MANIFEST}: created: {created!r} is not ISO-8601") from None
    req = d.get("required_bytes")
    if not isinstance(req, int) or isinstance(req, bool) or not 0 <= req < 1 << 50:
        raise BundleError(f"{MANIFEST}: required_bytes: not a whole number of bytes")
    files = d.get("files")
    if not isinstance(files, dict) or len(files) > MAX_MEMBERS:
        raise BundleError(f"{MANIFEST}: files: expected an object of at most {MAX_MEMBERS} "
                          "members")
    out: dict[str, tuple[int, str]] = {}
    for name, info in files.items():
        if not MEMBER_RE.match(name) or "/../" in f"/{name}/" or "//" in name:
            raise BundleError(f"{MANIFEST}: files: {name!r:.120} is not an allowed member name "
                              "(wheels/<name>.whl or models/<path>)")
        if not isinstance(info, dict) or set(info) != {"size", "sha256"}:
            raise BundleError(f"{MANIFEST}: files.{name}: expected size and sha256")
        size, digest = info["size"], info["sha256"]
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 1 << 40:
            raise BundleError(f"{MANIFEST}: files.{name}.size: not a byte count")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise BundleError(f"{MANIFEST}: files.{name}.sha256: not 64 lower-case hex digits")
        out[name] = (size, digest)
    wheel = d.get("agent_wheel")
    if not isinstance(wheel, str) or wheel not in out or not wheel.startswith("wheels/"):
        raise BundleError(f"{MANIFEST}: agent_wheel: {wheel!r:.120} is not one of the bundle's "
                          "wheels")
    extra = set(d) - {"format", "version", "created", "agent_wheel", "required_bytes", "files"}
    if extra:
        raise BundleError(f"{MANIFEST}: unknown key(s): {', '.join(sorted(extra))[:200]}")
    return Manifest(version, created, wheel, req, out, raw)


def _open(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")
    except (OSError, tarfile.TarError) as e:
        raise BundleError(f"{path}: not a bundle (a tar file): {e}") from None


def _members(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """Every member by name: regular files with plain names only, none twice."""
    out: dict[str, tarfile.TarInfo] = {}
    try:
        for i, m in enumerate(tar):
            if i >= MAX_MEMBERS + 2:
                raise BundleError(f"more than {MAX_MEMBERS} members")
            if m.isdir():
                continue
            if not m.isreg():
                raise BundleError(f"member {m.name!r:.120}: not a regular file (links and "
                                  "devices are refused)")
            if m.name in out:
                raise BundleError(f"member {m.name!r:.120} appears twice")
            out[m.name] = m
    except (tarfile.TarError, EOFError, OSError) as e:
        raise BundleError(f"not a readable tar: {e}") from None
    return out


def _read_small(tar: tarfile.TarFile, m: tarfile.TarInfo, limit: int) -> bytes:
    if m.size > limit:
        raise BundleError(f"member {m.name}: {m.size} bytes, more than {limit}")
    f = tar.extractfile(m)
    assert f is not None
    return f.read(limit + 1)


def _signed_manifest(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo],
                     key: Any) -> Manifest:
    from cryptography.exceptions import InvalidSignature

    for need in (MANIFEST, SIGNATURE):
        if need not in members:
            raise BundleError(f"no {need} in the bundle")
    raw = _read_small(tar, members[MANIFEST], MAX_MANIFEST_BYTES)
    sig = _read_small(tar, members[SIGNATURE], 64)
    try:
        key.verify(sig, raw)
    except (InvalidSignature, ValueError):
        raise BundleError(f"{SIGNATURE}: the signature does not verify with the update key "
                          "(not signed by this site's key, or the manifest was changed)") from None
    man = parse_manifest(raw)
    listed, present = set(man.files), set(members) - {MANIFEST, SIGNATURE}
    if present - listed:
        raise BundleError(f"member {sorted(present - listed)[0]!r:.120} is not in the manifest")
    if listed - present:
        raise BundleError(f"member {sorted(listed - present)[0]!r:.120} is listed in the "
                          "manifest but missing")
    return man


def _copy_checked(tar: tarfile.TarFile, m: tarfile.TarInfo, size: int, digest: str,
                  out: Any | None) -> None:
    if m.size != size:
        raise BundleError(f"member {m.name}: {m.size} bytes, the manifest says {size}")
    f = tar.extractfile(m)
    assert f is not None
    h, n = hashlib.sha256(), 0
    while chunk := f.read(CHUNK):
        h.update(chunk)
        n += len(chunk)
        if out is not None:
            out.write(chunk)
    if n != size or h.hexdigest() != digest:
        raise BundleError(f"member {m.name}: sha256 {h.hexdigest()[:16]}… does not match the "
                          f"manifest's {digest[:16]}… (changed after signing)")


def verify(path: Path, key: Any) -> Manifest:
    """Check a bundle against an Ed25519 public ``key``: signature, member list, size and
    sha256 of every member. Returns the manifest; BundleError otherwise."""
    with _open(path) as tar:
        members = _members(tar)
        man = _signed_manifest(tar, members, key)
        for name, (size, digest) in man.files.items():
            _copy_checked(tar, members[name], size, digest, None)
    return man


def extract(path: Path, key: Any, dest: Path) -> Manifest:
    """Verify and write the members under ``dest`` (created; must not exist), the manifest
    and its signature too. On a problem BundleError, and what was written stays for the
    caller to remove."""
    with _open(path) as tar:
        members = _members(tar)
        man = _signed_manifest(tar, members, key)
        dest.mkdir(parents=True)
        for name, (size, digest) in sorted(man.files.items()):
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "xb") as out:
                _copy_checked(tar, members[name], size, digest, out)
        (dest / MANIFEST).write_bytes(man.raw)
        (dest / SIGNATURE).write_bytes(_read_small(tar, members[SIGNATURE], 64))
    return man


# -- building --------------------------------------------------------------------------------
def load_private_key(path: Path) -> Any:
    """An Ed25519 private key from a PEM file (ValueError with the reason otherwise); a
    password, if the file has one, comes from ``$POLELINK_BUNDLE_KEY_PASSWORD``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    pw = os.environ.get("POLELINK_BUNDLE_KEY_PASSWORD")
    try:
        key = load_pem_private_key(Path(path).read_bytes(), pw.encode() if pw else None)
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a usable PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def agent_wheel_version(name: str) -> str | None:
    """The version in a wheel's file name (``polelink-1.2.0-py3-none-any.whl``: ``1.2.0``)."""
    parts = name.removesuffix(".whl").split("-")
    return parts[1] if name.endswith(".whl") and len(parts) in (5, 6) and parts[1] else None


def _wheel_metadata(path: Path) -> dict[str, str]:
    """The Name and Version headers of a wheel's ``*.dist-info/METADATA``; ValueError when
    it is not a wheel (a zip with one METADATA)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            metas = [n for n in z.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
            if len(metas) != 1:
                raise ValueError(f"{path.name}: not a wheel (no single *.dist-info/METADATA)")
            text = z.read(metas[0]).decode("utf-8", "replace")
    except (OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path.name}: not a wheel (zip): {e}") from None
    head = text.split("\n\n", 1)[0]
    return {k: v.strip() for k, v in (ln.split(":", 1) for ln in head.splitlines() if ":" in ln)
            if k in ("Name", "Version")}


def _check_agent_wheel(path: Path, version: str) -> None:
    """The agent wheel is polelink's, at ``version`` exactly: its file name's version and its
    METADATA's (a release folder 0.5.0 holding agent 0.1.0 would mislead every rollback, and
    ``v0.5.0`` or ``0.05.0`` are other names for a folder than the agent's)."""
    meta = _wheel_metadata(path)
    name = meta.get("Name", "").lower().replace("_", "-").replace(".", "-")
    if name != "polelink":
        raise ValueError(f"{path.name}: not the agent's wheel (it is {meta.get('Name') or 'unnamed'}'s, "
                         "not polelink's)")
    in_name, in_meta = agent_wheel_version(path.name), meta.get("Version")
    if in_name != in_meta:
        raise ValueError(f"{path.name}: its name says version {in_name}, its METADATA {in_meta}: "
                         "a renamed wheel?")
    if version != in_name:
        raise ValueError(f"--version {version}: the agent wheel {path.name} is version {in_name}; a "
                         f"release is named by its agent's version, as written in the wheel: give "
                         f"--version {in_name}, or build the agent's wheel at {version} "
                         "(agent/__init__.py's __version__)")


def build(version: str, wheelhouse: Path, key: Any, out: Path, models: Path | None = None,
          agent_wheel: Path | None = None, required_bytes: int | None = None,
          progress: Any = None) -> Manifest:
    """Write a signed bundle of ``wheelhouse`` (every ``*.whl`` in it), the agent's wheel
    (``agent_wheel``, else the one ``polelink-*.whl`` in the wheelhouse) and ``models``.
    ``required_bytes`` defaults to twice the payload plus a venv's overhead. ValueError
    when an input is missing or ambiguous, or when ``version`` is not the agent wheel's
    (a release folder named 0.5.0 holding agent 0.1.0 would mislead every rollback)."""
    if not valid_version(version):
        raise ValueError(f"--version {version!r} is not a release name (letters, digits, "
                         ". _ + -; at most 64)")
    if not wheelhouse.is_dir():
        raise ValueError(f"--wheelhouse {wheelhouse}: not a folder")
    sources: dict[str, Path] = {f"wheels/{w.name}": w for w in sorted(wheelhouse.glob("*.whl"))}
    ours = [n for n in sources if Path(n).name.lower().startswith("polelink-")]
    if agent_wheel is not None:
        if not agent_wheel.is_file() or agent_wheel.suffix != ".whl":
            raise ValueError(f"--agent-wheel {agent_wheel}: not a wheel file")
        others = [Path(n).name for n in ours if Path(n).name != agent_wheel.name]
        if others:
            raise ValueError(f"--agent-wheel {agent_wheel.name}, and --wheelhouse {wheelhouse} holds "
                             f"another agent wheel ({', '.join(others)}): one agent per bundle")
        sources[f"wheels/{agent_wheel.name}"] = agent_wheel
        agent_name = f"wheels/{agent_wheel.name}"
    else:
        if len(ours) != 1:
            raise ValueError(f"--wheelhouse {wheelhouse}: expected one polelink-*.whl, found "
                             f"{len(ours)} (or give --agent-wheel)")
        agent_name = ours[0]
    _check_agent_wheel(sources[agent_name], version)
    if models is not None:
        if not models.is_dir():
            raise ValueError(f"--models {models}: not a folder")
        for p in sorted(models.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts:
                sources[f"models/{p.relative_to(models).as_posix()}"] = p
    for name in sources:
        if not MEMBER_RE.match(name):
            raise ValueError(f"{sources[name]}: file name not allowed in a bundle ({name!r}); "
                             "use letters, digits and . _ + - only")
    files: dict[str, dict[str, Any]] = {}
    for i, (name, p) in enumerate(sources.items(), 1):
        files[name] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
        if progress:
            progress(f"hashing {i}/{len(sources)} {name}")
    payload = sum(f["size"] for f in files.values())
    manifest = {"format": FORMAT, "version": version,
                "created": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                "agent_wheel": agent_name,
                "required_bytes": (2 * payload + VENV_OVERHEAD if required_bytes is None
                                   else required_bytes),
                "files": files}
    raw = json.dumps(manifest, indent=1, sort_keys=True).encode()
    sig = key.sign(raw)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((MANIFEST, raw), (SIGNATURE, sig)):
            _add_bytes(tar, name, data)
        for name, p in sources.items():
            info = tar.gettarinfo(str(p), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with open(p, "rb") as f:
                tar.addfile(info, f)
    os.replace(tmp, out)
    return parse_manifest(raw)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
    tar.addfile(info, io.BytesIO(data))
