"""When to run the detector: densely where counts are decided, sparsely elsewhere.

A fixed detection stride loses vehicles exactly where it matters: a track coasting over
a counting line between detections has no measurement past it to confirm the crossing,
and a vehicle that enters close to a line may be first seen already past it. The
:class:`DetectionScheduler` looks at every track's *predicted* position for the frame
being planned and asks for a detection when

- ``unconfirmed``: a crossing is waiting for its track to be confirmed;
- ``near_line``: a moving track is predicted past a line it has not counted on (its
  last measured side differs) or right on it: this measurement decides the count (one
  or two detector runs per vehicle and line when its velocity is right, more when not);
- ``young``: a track with fewer than three measurements (its velocity, hence every
  prediction, is not known yet: a new vehicle entering) that could reach a line before
  the next planned detection at the fastest speed measured here;
- ``stride``: the frames since the last detection reached the effective maximum stride.

The maximum stride is the configured ``stride``, lowered where a line lies close to a
frame border: a vehicle entering there must be measured before its anchor reaches the
line, so the stride is at most ``distance to the border / (2 × fast speed)``, with the
fast speed the 90th percentile of the speeds (pixels per frame across each line) it has
measured on recent tracks. At a lower frame rate vehicles move further per frame, so the
same rule gives a smaller stride: the schedule adapts to frame rate and traffic.

Pure: no threads, no I/O; :class:`agent.vision.pipeline.CameraPipeline` calls it.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections import deque

import numpy as np

from agent.vision.counter import Counter, Line, anchor_point
from agent.vision.geometry import unit_normal
from agent.vision.tracker import Track

#: Tracks with fewer measurements than this are young (velocity still unknown).
YOUNG_HITS = 3


class DetectionScheduler:
    """Decides per frame whether the detector runs; see the module docstring."""

    def __init__(self, lines: list[Line], max_stride: int, speeds_kept: int = 200) -> None:
        self.lines = lines
        self.max_stride = max(1, int(max_stride))
        self._normals = [unit_normal(ln.a, ln.b) for ln in lines]
        self._speeds: deque[float] = deque(maxlen=speeds_kept)
        self._fast: float | None = None  # 90th percentile of _speeds, once there are 5
        self._entry: float | None = None  # px from the nearest border to a line, along its normal
        self.reasons: Tally[str] = Tally()

    def effective_stride(self, frame_size: tuple[int, int] | None) -> int:
        """The maximum stride for now: the configured one, lowered near frame borders."""
        if self.max_stride == 1 or frame_size is None or not self.lines:
            return self.max_stride
        if self._entry is None:
            self._entry = min(self._border_distance(ln, n, frame_size)
                              for ln, n in zip(self.lines, self._normals, strict=True))
        if self._fast is None or self._fast <= 0:
            return self.max_stride
        return int(max(1, min(self.max_stride, self._entry // (2 * self._fast))))

    @staticmethod
    def _border_distance(ln: Line, n: tuple[float, float, float],
                         frame_size: tuple[int, int]) -> float:
        """Distance from the line to the frame border along its normal (either way),
        measured from the line's ends and middle (the shortest)."""
        w, h = frame_size
        nx, ny, _ = n
        best = float("inf")
        (ax, ay), (bx, by) = ln.a, ln.b
        for px, py in ((ax, ay), (bx, by), ((ax + bx) / 2, (ay + by) / 2)):
            for sx, sy in ((nx, ny), (-nx, -ny)):
                ts = []
                if sx > 1e-9:
                    ts.append((w - 1 - px) / sx)
                elif sx < -1e-9:
                    ts.append(-px / sx)
                if sy > 1e-9:
                    ts.append((h - 1 - py) / sy)
                elif sy < -1e-9:
                    ts.append(-py / sy)
                if ts:
                    best = min(best, max(0.0, min(ts)))
        return best

    def observe(self, tracks: list[Track]) -> None:
        """Learn the speeds across the lines from tracks just measured."""
        for t in tracks:
            if t.missed or t.hits < YOUNG_HITS:
                continue
            vx, vy = t.velocity
            speed = max((abs(vx * nx + vy * ny) for nx, ny, _ in self._normals), default=0.0)
            if speed > 0.2:
                self._speeds.append(speed)
        if len(self._speeds) >= 5:
            self._fast = float(np.percentile(self._speeds, 90))

    def urgent(self, tracks: list[Track], counter: Counter, ahead: int,
               in_flight: bool = False) -> str:
        """The reason the next frame needs the detector regardless of stride, or ``""``.

        ``ahead``: frames between the tracks' current state and the frame being planned
        (1 when frames are processed one by one, 2 when inference overlaps tracking).
        ``in_flight``: the frame just before this one is being detected and its result is
        not in the tracks yet. That measurement is the one ``unconfirmed`` and
        ``near_line`` ask for, so they wait for it rather than ask again on the same
        information (it costs at most one frame's delay, and the crossing frame is
        interpolated anyway). ``young`` does not wait: a new vehicle's velocity is
        unknown, and measuring it on consecutive frames is what makes it known.
        """
        if counter.has_pending() and not in_flight:
            return "unconfirmed"
        fast = self._fast
        reason = ""
        for t in tracks:
            young = t.hits < YOUNG_HITS
            if young and t.missed >= YOUNG_HITS:
                continue
            vx, vy = t.velocity
            box = t.box
            for ln, (nx, ny, length) in zip(self.lines, self._normals, strict=True):
                if counter.resolved(t.track_id, ln.name):
                    continue
                extent = abs(nx) * (box[2] - box[0]) + abs(ny) * (box[3] - box[1])
                ax, ay = anchor_point(box, ln.anchor)
                if young:
                    # velocity unknown: detect while it could reach the line before the
                    # next planned detection (at the fastest speed measured here)
                    d = abs((ax - ln.a[0]) * nx + (ay - ln.a[1]) * ny)
                    reach = (fast if fast is not None else 0.25 * max(extent, 1.0)) \
                        * (self.max_stride + ahead)
                    if d <= reach + extent:
                        reason = "young"
                    continue
                vn = vx * nx + vy * ny
                if abs(vn) < 0.01 * max(extent, 1.0):
                    continue  # standing still: nothing will change by looking again
                px, py = ax + vx * ahead, ay + vy * ahead
                # beside the segment (with a margin of the box size): not this line's business
                along = (px - ln.a[0]) * ny - (py - ln.a[1]) * nx
                if along < -extent or along > length + extent:
                    continue
                d = (px - ln.a[0]) * nx + (py - ln.a[1]) * ny
                last = counter.side_of(t.track_id, ln.name)
                if ((last and d * last < 0) or abs(d) <= 0.5 * abs(vn)) and not in_flight:
                    return "near_line"  # predicted past, or right on it: measure now
        return reason

    def note(self, reason: str) -> None:
        """Record why a frame was (or was not) detected, for the figures."""
        self.reasons[reason] += 1
