"""Operator overrides (TALQ-style: a level, a priority and an expiry), kept across restarts.

Each luminaire group holds at most one override per priority (1 lowest … 9 highest); the
highest-priority unexpired one wins. Overrides are written to a small JSON file (write to
a temporary file, fsync, rename) on every change, so a restart keeps them until they
expire (expiry is wall-clock time). A corrupt or unreadable file is set aside as
``<name>.corrupt`` and reported; the agent then starts with no overrides (the schedule
applies), never with a half-read one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.common.schedule import winner

log = logging.getLogger(__name__)

PRIORITIES = range(1, 10)


@dataclass(frozen=True)
class Override:
    """One override of one group."""

    level_pct: float
    priority: int
    until: float                    # wall-clock epoch seconds
    source: str = ""                # who asked (a correlation id, "cli"...)
    maintenance: bool = False       # a signed crew exception: may go below the floor


class OverrideStore:
    """See the module docstring."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.problem = ""
        self._by_group: dict[str, dict[int, Override]] = {}
        self._load()

    def _load(self) -> None:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
            for group, items in raw.items():
                for item in items:
                    o = Override(float(item["level_pct"]), int(item["priority"]),
                                 float(item["until"]), str(item.get("source", "")),
                                 item.get("maintenance", False) is True)
                    if not (0 <= o.level_pct <= 100 and o.priority in PRIORITIES
                            and math.isfinite(o.until)):
                        raise ValueError(f"bad override {item!r}")
                    self._by_group.setdefault(str(group), {})[o.priority] = o
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
            self._by_group = {}
            self.problem = f"overrides file {self.path} unreadable ({e}); starting without"
            log.error("%s", self.problem)
            with contextlib.suppress(OSError):
                self.path.replace(self.path.with_name(self.path.name + ".corrupt"))

    def _save(self) -> None:
        data = {g: [asdict(o) for o in sorted(ov.values(), key=lambda o: o.priority)]
                for g, ov in self._by_group.items() if ov}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            with tmp.open("w", encoding="utf-8") as f:
                json.dump(data, f, allow_nan=False)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.path)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def set(self, groups: list[str], o: Override) -> None:
        """Set ``o`` on every group (replacing the same priority); durable on return
        (OSError when the file cannot be written, ValueError for a level that is not a
        finite 0-100 or a priority outside 1-9: nothing changed then)."""
        if not (math.isfinite(o.level_pct) and 0 <= o.level_pct <= 100
                and o.priority in PRIORITIES and math.isfinite(o.until)):
            raise ValueError(f"invalid override {o}")
        before = {g: dict(v) for g, v in self._by_group.items()}
        for g in groups:
            self._by_group.setdefault(g, {})[o.priority] = o
        try:
            self._save()
        except OSError:
            self._by_group = before
            raise

    def clear(self, groups: list[str], priority: int | None = None) -> int:
        """Remove the groups' overrides (of one priority, or all); returns how many."""
        before = {g: dict(v) for g, v in self._by_group.items()}
        n = 0
        for g in groups:
            ov = self._by_group.get(g, {})
            for p in [priority] if priority is not None else list(ov):
                n += ov.pop(p, None) is not None
        try:
            self._save()
        except OSError:
            self._by_group = before
            raise
        return n

    def active(self, group: str, now: float) -> Override | None:
        """The winning unexpired override of ``group`` at wall time ``now``."""
        return winner(self._by_group.get(group, {}).values(), now)

    def expire(self, now: float) -> list[tuple[str, Override]]:
        """Drop expired overrides (saved when any went); returns them."""
        gone = [(g, o) for g, ov in self._by_group.items() for o in ov.values() if o.until <= now]
        for g, o in gone:
            self._by_group[g].pop(o.priority, None)
        if gone:
            with contextlib.suppress(OSError):
                self._save()
        return gone
