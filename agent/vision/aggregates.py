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
- **Checkpoints.** :meth:`IntervalAggregator.checkpoint` snapshots the open interval (the
  runner writes it to disk every few seconds); :meth:`IntervalAggregator.restore` takes a
  checkpoint left by a run that did not stop cleanly (SIGKILL, power cut). If it is of the
  interval open now, its counts join the new run's and the record says ``partial`` with
  the unobserved gap in ``partial_reason``; if it is of an older interval, that interval
  is closed from the checkpoint, ``partial``, reason ``recovered …``. A crash loses at most
  the seconds since the last checkpoint, and says so.
- **Clock jumps.** When the wall clock jumps forward past several intervals, the open one
  closes at its end and the next begins at the current interval, ``partial`` (the skipped
  time has no record). When it jumps backwards, the open interval closes ``partial`` with
  the time it really covered (measured on the monotonic clock) and a new one begins now.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from agent.records import TrafficRecord
from agent.vision.counter import CountEvent
from agent.vision.quality import QualityTally


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
    reason: str = ""           # why partial
    quality: QualityTally = field(default_factory=QualityTally)

_FIGURES = ("frames_analysed", "frames_detected", "frames_dropped", "frames_late",
            "frames_good", "detector_s", "id_switches", "blinded_frames", "frozen_frames")


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
        self._bucket = _Bucket(interval_start(now, interval_s), now, mono, True,
                               reason="started")
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

    def add_quality(self, tally: QualityTally) -> None:
        """What the quality meter saw since the last add (``QualityMeter.take``)."""
        with self._lock:
            self._bucket.quality.add(tally)

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
                self._bucket = _Bucket(interval_start(now, self.interval_s), now, mono, True,
                                       reason="clock went back")
                b.reason = "clock went back"
                return self._records(b, camera_state, end=covered_end, partial=True)
            if now < end:
                return []
            if now < end + self.interval_s:                  # the usual case
                self._bucket = _Bucket(end, end, mono - (now - end), False)
            else:                                            # a jump (or a long stall) forward
                self._bucket = _Bucket(interval_start(now, self.interval_s), now, mono, True,
                                       reason="clock jumped forward")
            return self._records(b, camera_state, end=end, partial=b.partial)

    def flush(self, now: float, mono: float, camera_state: str) -> list[TrafficRecord]:
        """Close the open interval early (a stop or a swap); its records say ``partial``.
        The aggregator then starts a fresh partial interval, should it be used again."""
        with self._lock:
            b = self._bucket
            self._bucket = _Bucket(interval_start(now, self.interval_s), now, mono, True,
                                   reason="started")
            end = min(max(now, b.begin), b.start + self.interval_s)
            b.reason = "stopped" if not b.reason else f"{b.reason}; stopped"
            return self._records(b, camera_state, end=end, partial=True)

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint(self, now: float) -> dict:
        """The open interval as a JSON-able dict (for :meth:`restore` after a crash)."""
        with self._lock:
            b = self._bucket
            return {"camera": self.camera, "start": b.start, "begin": b.begin, "saved": now,
                    "partial": b.partial, "reason": b.reason, "counts": b.counts,
                    **{k: getattr(b, k) for k in _FIGURES},
                    "quality": vars(b.quality)}

    def restore(self, cp: dict, camera_state: str) -> list[TrafficRecord]:
        """Take a crashed run's checkpoint (see the module rules); returns the records of an
        older interval it closes (empty when it joined the open one)."""
        with self._lock:
            start, begin, saved = int(cp["start"]), float(cp["begin"]), float(cp["saved"])
            old = _Bucket(start, begin, 0.0, True, counts=cp["counts"],
                          **{k: type(getattr(self._bucket, k))(cp[k]) for k in _FIGURES},
                          quality=_tally(cp.get("quality")))
            b = self._bucket
            if start == b.start and begin <= b.begin:
                gap = max(0.0, b.begin - saved)
                for line, dirs in old.counts.items():
                    for d, per in dirs.items():
                        mine = b.counts.setdefault(line, {}).setdefault(d, {})
                        for cls, n in per.items():
                            mine[cls] = mine.get(cls, 0) + int(n)
                for k in _FIGURES:
                    setattr(b, k, getattr(b, k) + getattr(old, k))
                b.quality.add(old.quality)
                b.mono_begin -= b.begin - begin
                b.begin = begin
                b.reason = (f"restarted: counts up to {saved - begin:.0f} s recovered from a "
                            f"checkpoint, {gap:.0f} s not observed")
                return []
            if start >= b.start:
                return []                   # a checkpoint from the future: ignore it
            old.reason = "recovered after an unclean stop: closed from its last checkpoint"
            end = min(max(saved, begin), start + self.interval_s)
            return self._records(old, camera_state, end=end, partial=True)

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
            camera_frozen=b.frozen_frames > 0, camera_state=state,
            partial_reason=b.reason if partial else "", quality=b.quality.summary())
        out = []
        for name, dirs in self.lines.items():
            counts = {d: dict(sorted(b.counts.get(name, {}).get(d, {}).items())) for d in dirs}
            out.append(TrafficRecord(**common, counts=counts, line=name))  # type: ignore[arg-type]
        for name in self.zones:
            counts = {"inside": dict(sorted(b.counts.get(name, {}).get("inside", {}).items()))}
            out.append(TrafficRecord(**common, counts=counts, zone=name))  # type: ignore[arg-type]
        return out


def _tally(saved: object) -> QualityTally:
    """A checkpoint's quality tallies (none in an older checkpoint, or unreadable: empty)."""
    t = QualityTally()
    if isinstance(saved, dict):
        try:
            t.frames, t.poor_frames = int(saved["frames"]), int(saved["poor_frames"])
            t.episodes, t.explained = int(saved["episodes"]), int(saved["explained"])
            t.conf_sum, t.conf_n = float(saved["conf_sum"]), int(saved["conf_n"])
            t.scenes.update({k: int(saved["scenes"].get(k, 0)) for k in t.scenes})
            t.reasons = [str(r) for r in saved["reasons"]][:8]
        except (KeyError, TypeError, ValueError, AttributeError):
            return QualityTally()
        sane = (0 <= t.poor_frames <= t.frames and 0 <= t.explained <= t.episodes
                and t.conf_n >= 0 and math.isfinite(t.conf_sum) and 0 <= t.conf_sum <= t.conf_n
                and all(0 <= n <= t.frames for n in t.scenes.values()))
        if not sane:                                   # hand-edited or damaged: not believed
            return QualityTally()
    return t


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
