"""Fixed-interval traffic aggregates per camera and line, aligned to the wall clock.

Intervals are ``[start, start + interval_s)`` with ``start`` a multiple of ``interval_s``
seconds since the Unix epoch (60 s intervals start on the minute). The main loop calls
:meth:`IntervalAggregator.roll` on the clock; each closed interval yields one
:class:`agent.records.TrafficRecord` per line (and per zone) **whether or not the camera
delivered frames**: a dead camera shows as ``frames_analysed: 0`` and its state, so an
outage is visible as data, not silence.

Rules:

- **One open interval.** The camera worker's adds always go to the interval that is open
  now; only :meth:`roll` opens the next one. An add stamped just before a roll lands in
  the open interval, so no interval is ever emitted twice.
- **Honest coverage.** The first interval after a start (or after a swap of pipelines)
  begins when the agent did, not on the boundary, and says ``partial: true``; a stop
  closes the open interval as ``partial`` at the stop. Two runs never give overlapping
  records. ``frames_expected`` counts from the interval's real beginning.
- **Clock jumps.** When the wall clock jumps forward past several intervals, the open one
  closes at its end and the next begins at the current interval, ``partial`` (the skipped
  time has no record). When it jumps backwards, the open interval closes ``partial`` with
  the time it really covered (measured on the monotonic clock) and a new one begins now.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from agent.records import TrafficRecord
from agent.vision.counter import CountEvent


def interval_start(t: float, interval_s: int) -> int:
    """Start (epoch seconds) of the interval containing ``t``."""
    return int(t // interval_s) * interval_s


@dataclass
class _Bucket:
    start: int                 # the aligned boundary
    begin: float               # when this record's coverage really began
    mono_begin: float
    partial: bool
    counts: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)  # line→dir→cls
    frames_analysed: int = 0
    frames_detected: int = 0
    frames_dropped: int = 0
    frames_late: int = 0
    frames_good: int = 0
    detector_s: float = 0.0
    id_switches: int = 0
    blinded_frames: int = 0
    frozen_frames: int = 0


class IntervalAggregator:
    """Collects one camera's counts and frame figures into wall-clock intervals."""

    def __init__(self, device: str, site: str, camera: str,
                 lines: dict[str, tuple[str, str]], zones: list[str], interval_s: int,
                 now: float, mono: float) -> None:
        self.device, self.site, self.camera = device, site, camera
        self.lines = lines
        self.zones = zones
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._bucket = _Bucket(interval_start(now, interval_s), now, mono, True)
        self.fps: float | None = None  # the source's frame rate, for frames expected

    # -- adds (the camera worker) -----------------------------------------------------------
    def add_frame(self, detected: bool, detector_s: float = 0.0, good: bool = True) -> None:
        """One frame went through the pipeline (``detected``: the detector ran on it;
        ``good``: neither blinded nor frozen)."""
        with self._lock:
            b = self._bucket
            b.frames_analysed += 1
            b.frames_good += int(good)
            if detected:
                b.frames_detected += 1
                b.detector_s += detector_s

    def add_dropped(self, n: int) -> None:
        """``n`` frames were captured but never analysed (the queue kept newer ones)."""
        if n > 0:
            with self._lock:
                self._bucket.frames_dropped += n

    def add_health(self, blinded: bool, frozen: bool) -> None:
        """One analysed frame's camera health."""
        if blinded or frozen:
            with self._lock:
                self._bucket.blinded_frames += int(blinded)
                self._bucket.frozen_frames += int(frozen)

    def add_late(self, n: int) -> None:
        """``n`` frames reached the pipeline late (long after capture)."""
        if n > 0:
            with self._lock:
                self._bucket.frames_late += n

    def add_id_switches(self, n: int) -> None:
        """Track hand-overs (ID switches) seen by the counter."""
        if n > 0:
            with self._lock:
                self._bucket.id_switches += n

    def add_events(self, events: list[CountEvent]) -> None:
        """Count events from the counter."""
        if not events:
            return
        with self._lock:
            b = self._bucket
            for e in events:
                per = b.counts.setdefault(e.line, {}).setdefault(e.direction, {})
                per[e.cls] = per.get(e.cls, 0) + 1

    # -- closing (the main loop) ------------------------------------------------------------
    def roll(self, now: float, mono: float, camera_state: str) -> list[TrafficRecord]:
        """Close the open interval if the clock has passed its end (see the module rules)."""
        with self._lock:
            b = self._bucket
            end = b.start + self.interval_s
            if now < b.begin - 1.0:                          # the wall clock went back
                covered_end = b.begin + max(0.0, mono - b.mono_begin)
                self._bucket = _Bucket(interval_start(now, self.interval_s), now, mono, True)
                return self._records(b, camera_state, end=covered_end, partial=True)
            if now < end:
                return []
            if now < end + self.interval_s:                  # the usual case
                self._bucket = _Bucket(end, end, mono - (now - end), False)
            else:                                            # a jump (or a long stall) forward
                self._bucket = _Bucket(interval_start(now, self.interval_s), now, mono, True)
            return self._records(b, camera_state, end=end, partial=b.partial)

    def flush(self, now: float, mono: float, camera_state: str) -> list[TrafficRecord]:
        """Close the open interval early (a stop or a swap); its records say ``partial``.
        The aggregator then starts a fresh partial interval, should it be used again."""
        with self._lock:
            b = self._bucket
            self._bucket = _Bucket(interval_start(now, self.interval_s), now, mono, True)
            end = min(max(now, b.begin), b.start + self.interval_s)
            return self._records(b, camera_state, end=end, partial=True)

    def _records(self, b: _Bucket, state: str, end: float, partial: bool) -> list[TrafficRecord]:
        expected = max(0, round(self.fps * (end - b.begin))) if self.fps else None
        common = dict(
            device=self.device, site=self.site, camera=self.camera, start=b.begin, end=end,
            interval_s=self.interval_s, partial=partial, frames_analysed=b.frames_analysed,
            frames_detected=b.frames_detected, frames_dropped=b.frames_dropped,
            frames_late=b.frames_late, frames_expected=expected, frames_good=b.frames_good,
            detector_latency_ms_mean=round(1000 * b.detector_s / b.frames_detected, 2)
            if b.frames_detected else None,
            id_switches=b.id_switches,
            camera_blinded=b.blinded_frames > b.frames_analysed / 2 if b.frames_analysed
            else False,
            camera_frozen=b.frozen_frames > 0, camera_state=state)
        out = []
        for name, dirs in self.lines.items():
            counts = {d: dict(sorted(b.counts.get(name, {}).get(d, {}).items())) for d in dirs}
            out.append(TrafficRecord(**common, counts=counts, line=name))  # type: ignore[arg-type]
        for name in self.zones:
            counts = {"inside": dict(sorted(b.counts.get(name, {}).get("inside", {}).items()))}
            out.append(TrafficRecord(**common, counts=counts, zone=name))  # type: ignore[arg-type]
        return out


class JsonLinesSink:
    """Appends records to a JSON-lines file, durably (flush + fsync per batch); OSError
    (a full or read-only disk) reaches the caller, who reports it and goes on. A batch that
    fails is taken back whole, so the file never holds a torn line."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.written = 0

    def write(self, records: list[TrafficRecord]) -> None:
        """Append ``records`` (one JSON object per line)."""
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = "".join(json.dumps(r.to_json(), separators=(",", ":")) + "\n"
                       for r in records).encode()
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            if start and os.pread(fd, 1, start - 1) != b"\n":
                data = b"\n" + data                 # a line torn by a power cut before us
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except OSError:
                # a full disk: take back what part of the batch got in (unbuffered, so
                # nothing is pending), so the file holds whole lines only
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)
        self.written += len(records)
