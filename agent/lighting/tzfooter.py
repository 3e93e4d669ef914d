"""The POSIX TZ string of an IANA zone, read from its TZif file's footer (RFC 8536 §3.3).

The lamp node has no zone database, so its config takes a POSIX rule (``tz``); on the
laptop ``agent validate`` uses this to tell a crew that wrote ``"Europe/Berlin"`` what to
write instead. Zone files come from the ``tzdata`` package (a dependency, so this works
the same on every laptop) or the system's ``/usr/share/zoneinfo``; no downloads.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

SYSTEM_ZONEINFO = Path("/usr/share/zoneinfo")


def _zone_bytes(name: str) -> bytes | None:
    if not name or name.startswith(("/", ".")) or ".." in name.split("/") or "\\" in name:
        return None
    parts = name.split("/")
    try:
        res = importlib.resources.files("tzdata").joinpath("zoneinfo", *parts)
        if res.is_file():
            return res.read_bytes()
    except (ModuleNotFoundError, OSError, ValueError):
        pass
    p = SYSTEM_ZONEINFO.joinpath(*parts)
    try:
        return p.read_bytes() if p.is_file() else None
    except OSError:
        return None


def posix_rule(name: str) -> str | None:
    """The POSIX TZ string of IANA zone ``name`` (``"Europe/Berlin"`` →
    ``"CET-1CEST,M3.5.0,M10.5.0/3"``); None when no such zone file (or no footer) exists."""
    data = _zone_bytes(str(name))
    if not data or not data.startswith(b"TZif") or data[4:5] < b"2":
        return None
    if not data.endswith(b"\n"):
        return None
    footer = data[data.rfind(b"\n", 0, len(data) - 1) + 1:-1]   # between the last two \n
    if not footer:
        return None
    try:
        return footer.decode("ascii")
    except UnicodeDecodeError:
        return None
