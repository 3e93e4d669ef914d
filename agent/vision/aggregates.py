"""Fixed-interval traffic aggregates per camera and line, aligned to the wall clock.

Each interval ``[start, start + interval_s)`` with ``start`` a multiple of ``interval_s``
seconds since the Unix epoch (so 60 s intervals start on the minute) yields one record
per camera and line (and per zone): counts by class and direction, frames analysed,
frames dropped (captured but replaced by newer ones before analysis), frames late
(analysed more than 0.5 s after capture), mean detector latency, ID switches. Records are kept in memory and
appended to a JSON-lines file, one object per line, flushed and fsynced when written
(the MQTT outbox will take them from there).
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from agent.vision.counter import CountEvent

SCHEMA = "polelink/traffic-aggregate/1"


def interval_start(t: float, interval_s: int) -> int:
    """Start (epoch seconds) of the interval containing ``t``."""
    return int(t // interval_s) * interval_s


def iso(t: float) -> str:
    """UTC ISO-8601 time with a Z suffix."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Bucket:
    start: int
    counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # line→dir→cls
    frames_analysed: int = 0
    frames_detected: int = 0
    frames_dropped: int = 0
    frames_late: int = 0
    detector_s: float = 0.0
    id_switches: int = 0
    blinded_frames: int = 0
    frozen_frames: int = 0
    first_frame_wall: float | None = None


class IntervalAggregator:
    """Collects one camera's counts and frame figures into wall-clock intervals."""

    def __init__(self, device: str, site: str, camera: str,
                 lines: dict[str, tuple[str, str]], zones: list[str], interval_s: int = 60) -> None:
        self.device, self.site, self.camera = device, site, camera
        self.lines = lines
        self.zones = zones
        self.interval_s = interval_s
        self._bucket: _Bucket | None = None
        self._lock = threading.Lock()
        self.fps: float | None = None  # the source's frame rate, for frames expected

    def _current(self, now: float) -> _Bucket:
        start = interval_start(now, self.interval_s)
        if self._bucket is None:
            self._bucket = _Bucket(start)
        return self._bucket

    def add_frame(self, now: float, detected: bool, detector_s: float = 0.0) -> None:
        """One frame went through the pipeline (``detected``: the detector ran on it)."""
        with self._lock:
            b = self._current(now)
            b.frames_analysed += 1
            if b.first_frame_wall is None:
                b.first_frame_wall = now
            if detected:
                b.frames_detected += 1
                b.detector_s += detector_s

    def add_dropped(self, now: float, n: int) -> None:
        """``n`` frames were captured but never analysed (the queue kept newer ones)."""
        if n > 0:
            with self._lock:
                self._current(now).frames_dropped += n

    def add_health(self, now: float, blinded: bool, frozen: bool) -> None:
        """One analysed frame's camera health."""
        if blinded or frozen:
            with self._lock:
                b = self._current(now)
                b.blinded_frames += int(blinded)
                b.frozen_frames += int(frozen)

    def add_late(self, now: float, n: int) -> None:
        """``n`` frames reached the pipeline late (long after capture)."""
        if n > 0:
            with self._lock:
                self._current(now).frames_late += n

    def add_id_switches(self, now: float, n: int) -> None:
        """Track hand-overs (ID switches) seen by the counter."""
        if n > 0:
            with self._lock:
                self._current(now).id_switches += n

    def add_events(self, now: float, events: list[CountEvent]) -> None:
        """Count events from the counter."""
        if not events:
            return
        with self._lock:
            b = self._current(now)
            for e in events:
                per = b.counts.setdefault(e.line, {}).setdefault(e.direction, {})
                per[e.cls] = per.get(e.cls, 0) + 1

    def roll(self, now: float) -> list[dict]:
        """Close the current interval if ``now`` is past its end; returns its records."""
        with self._lock:
            b = self._bucket
            if b is None or now < b.start + self.interval_s:
                return []
            self._bucket = None
            return self._records(b, partial=False)

    def flush(self, now: float) -> list[dict]:
        """Close the current interval early (shutdown); its records say ``partial: true``."""
        with self._lock:
            b, self._bucket = self._bucket, None
            return self._records(b, partial=True, end=now) if b else []

    def _expected(self, b: _Bucket, end: float | None) -> int | None:
        """Frames the source should have delivered in the part of the interval the agent ran."""
        if not self.fps:
            return None
        stop = b.start + self.interval_s if end is None else min(end, b.start + self.interval_s)
        begin = max(b.start, b.first_frame_wall or b.start)
        return max(0, round(self.fps * (stop - begin)))

    def _records(self, b: _Bucket, partial: bool, end: float | None = None) -> list[dict]:
        common = {
            "schema": SCHEMA,
            "device": self.device,
            "site": self.site,
            "camera": self.camera,
            "interval_start": iso(b.start),
            "interval_end": iso(b.start + self.interval_s if end is None else end),
            "interval_s": self.interval_s,
            "partial": partial,
            "frames_analysed": b.frames_analysed,
            "frames_detected": b.frames_detected,
            "frames_dropped": b.frames_dropped,
            "frames_late": b.frames_late,
            "detector_latency_ms_mean": round(1000 * b.detector_s / b.frames_detected, 2)
            if b.frames_detected else None,
            "id_switches": b.id_switches,
            "frames_expected": self._expected(b, end),
            "camera_blinded": b.blinded_frames > b.frames_analysed / 2,
            "camera_frozen": b.frozen_frames > 0,
        }
        out = []
        for name, dirs in self.lines.items():
            counts = {d: dict(sorted(b.counts.get(name, {}).get(d, {}).items())) for d in dirs}
            out.append({**common, "line": name, "counts": counts,
                        "total": sum(sum(v.values()) for v in counts.values())})
        for name in self.zones:
            counts = {"inside": dict(sorted(b.counts.get(name, {}).get("inside", {}).items()))}
            out.append({**common, "zone": name, "counts": counts,
                        "total": sum(counts["inside"].values())})
        return out


class JsonLinesSink:
    """Appends records to a JSON-lines file, durably (flush + fsync per batch)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.written = 0

    def write(self, records: list[dict]) -> None:
        """Append ``records`` (one JSON object per line)."""
        if not records:
            return
        with self.path.open("a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, separators=(",", ":")) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.written += len(records)
