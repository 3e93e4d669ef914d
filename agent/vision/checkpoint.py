"""Checkpoints of the open traffic intervals, so that a crash loses seconds, not an interval.

The runner saves each camera's open interval (``IntervalAggregator.checkpoint``) to
``<aggregates folder>/checkpoints/<camera>.json`` every :data:`CHECKPOINT_S` seconds and
whenever an interval closes (write to a temporary file, fsync, rename: a file is whole or
absent). A clean stop removes them. At start, a checkpoint left behind means the last run
did not stop cleanly; :func:`pending` returns it unless the JSON-lines file already holds
that interval (a crash between writing the record and the next checkpoint), so nothing is
counted twice. A checkpoint that cannot be read is moved aside (``.bad``) and reported.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from agent.records import iso

log = logging.getLogger(__name__)

#: Seconds between checkpoints: the most a crash can lose.
CHECKPOINT_S = 5.0


class Checkpoints:
    """One small JSON file per camera; see the module docstring."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.error = ""

    def path(self, camera: str) -> Path:
        """Where ``camera``'s checkpoint lives."""
        return self.folder / f"{camera}.json"

    def save(self, camera: str, data: dict[str, Any]) -> None:
        """Write atomically; a failure (full disk) is remembered and logged once."""
        p = self.path(camera)
        tmp = p.with_suffix(".tmp")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, json.dumps(data, separators=(",", ":")).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, p)
            self.error = ""
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            if not self.error:
                log.error("cannot checkpoint camera %s: %s", camera, e)
            self.error = str(e)

    def remove(self, camera: str) -> None:
        """Forget ``camera``'s checkpoint (its interval was closed cleanly)."""
        with contextlib.suppress(OSError):
            self.path(camera).unlink()

    def pending(self, camera: str, sink: Path) -> dict[str, Any] | None:
        """A crashed run's checkpoint for ``camera`` not yet in ``sink``, else None."""
        p = self.path(camera)
        if not p.exists():
            return None
        try:
            cp = json.loads(p.read_bytes())
            if not isinstance(cp, dict) or cp.get("camera") != camera:
                raise ValueError("not a checkpoint of this camera")
            float(cp["begin"]), float(cp["saved"]), int(cp["start"])
            _check_counts(cp.get("counts"))
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
            bad = p.with_suffix(".bad")
            with contextlib.suppress(OSError):
                os.replace(p, bad)
            log.error("checkpoint %s unreadable (%s): kept as %s", p, e, bad)
            return None
        if _in_sink(sink, camera, iso(float(cp["begin"]))):
            self.remove(camera)
            return None
        return cp


def _check_counts(counts: Any) -> None:
    """ValueError unless ``counts`` is ``{line: {direction: {class: n}}}`` with every class
    one the contract knows (``ROAD_USER_CLASSES``) and every ``n`` a whole number >= 0: a
    damaged file must not put a class the platform's schema rejects into a record."""
    from agent.vision.classes import ROAD_USER_CLASSES

    if not isinstance(counts, dict):
        raise ValueError("counts is not an object")
    for line, dirs in counts.items():
        if not isinstance(dirs, dict):
            raise ValueError(f"counts of line {str(line)[:40]!r} are not an object")
        for d, per in dirs.items():
            if not isinstance(d, str) or not isinstance(per, dict):
                raise ValueError(f"counts of line {str(line)[:40]!r} are not by direction")
            for cls, n in per.items():
                if cls not in ROAD_USER_CLASSES:
                    raise ValueError(f"unknown class {str(cls)[:40]!r} (one of "
                                     f"{', '.join(ROAD_USER_CLASSES)})")
                if type(n) is not int or n < 0:
                    raise ValueError(f"count of {cls} is not a whole number >= 0")


def _in_sink(sink: Path, camera: str, begin: str) -> bool:
    """The JSON-lines file's tail already holds ``camera``'s record starting at ``begin``."""
    try:
        with open(sink, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * 1024))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return False
    for line in reversed(tail):
        with contextlib.suppress(ValueError):
            r = json.loads(line)
            if isinstance(r, dict) and r.get("camera") == camera \
                    and r.get("interval_start") == begin:
                return True
    return False
