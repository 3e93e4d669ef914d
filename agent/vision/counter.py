"""Counting lines and zones: turns tracks into counts by class and direction.

Rules (the same as the hand-made ground truth in ``../shared/data``):

- a track is counted once per line, in the first frame its anchor point (box centre by
  default) is strictly past the line, and only while the crossing point lies on the
  line's segment;
- jitter on the line cannot count twice: a track that has counted on a line never
  counts on it again, whatever it does afterwards;
- a crossing is held pending until it is confirmed by a measurement: the track must be
  confirmed and matched to a detection in a frame where its anchor is still past the
  line. A track coasting on its predicted velocity (detection stride, a missed
  detection) can find a crossing but not count it alone, and a track that wobbles back
  before the next detection drops it. The event keeps the frame of the crossing itself;
- the class of a counted road user is settled after the crossing: the event is emitted
  ``settle_frames`` measured frames later, or when the track ends (or at :meth:`flush`),
  with the track's class vote at that time, so a far, small view just before the line
  does not decide between car, truck and bus alone;
- a track that is lost and re-found as a new id near where it was lost inherits the
  old track's last position and counted lines: a vehicle lost before the line and
  re-found after it counts once, and one that counted before being lost does not count
  again (no double counts from ID switches near the line). Each such hand-over is
  recorded as an ID switch for the interval's quality figures. Only tracks lost inside
  the picture are candidates (one last seen at the border has left), and the new track
  continues from the old one's last *measured* position, never a coasted guess;
- a box that touches the frame border is truncated, so its centre is not the vehicle's
  centre: such positions are neither tested for crossings nor remembered, and the next
  whole box is compared with the last whole one (a vehicle leaving the frame beside the
  line does not count; one that crosses while whole does).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agent.vision.classes import ROAD_USER_CLASSES
from agent.vision.geometry import Point, crosses, image_directions, inside, side
from agent.vision.tracker import Track


@dataclass(frozen=True)
class CountEvent:
    """One road user crossing one line."""

    line: str
    direction: str
    cls: str
    track_id: int
    frame: int
    point: Point


@dataclass
class Line:
    """A counting line with its direction names."""

    name: str
    a: Point
    b: Point
    names: tuple[str, str]  # (crossing to the right-hand side, to the left-hand side)
    anchor: str = "center"

    @staticmethod
    def make(name: str, points: tuple[Point, Point], rename: dict[str, str] | None = None,
             anchor: str = "center") -> Line:
        """Build a line; ``rename`` maps image-term directions (up/down/left/right) to names."""
        pos, neg = image_directions(points)
        rename = rename or {}
        return Line(name, tuple(points[0]), tuple(points[1]),  # type: ignore[arg-type]
                    (rename.get(pos, pos), rename.get(neg, neg)), anchor)


@dataclass
class Zone:
    """A polygon; distinct tracks whose anchor enters it are counted by class."""

    name: str
    polygon: list[Point]


@dataclass
class _State:
    last: Point  # centre when last measured (not coasting), used for hand-over
    anchors: dict[str, Point] = field(default_factory=dict)  # last point per anchor kind
    seen_anchors: dict[str, Point] = field(default_factory=dict)  # ... when last measured
    counted: set[str] = field(default_factory=set)
    pending: dict[str, tuple[int, int, Point]] = field(default_factory=dict)
    settling: list[tuple[str, int, int, Point, int]] = field(default_factory=list)
    track_id: int = 0
    zones: set[str] = field(default_factory=set)
    last_frame: int = 0
    seen_frame: int = 0  # last frame with a measurement
    at_edge: bool = False  # last measured box touched the frame border (leaving the scene)
    box_size: float = 1.0
    velocity: tuple[float, float] = (0.0, 0.0)
    label: int = 0
    confirmed: bool = False


def anchor_point(box: np.ndarray, anchor: str) -> Point:
    """The point of a box that must cross a line: centre or bottom-centre."""
    x = float(box[0] + box[2]) / 2
    y = float(box[3]) if anchor == "bottom_center" else float(box[1] + box[3]) / 2
    return (x, y)


class Counter:
    """Counts tracks crossing lines and entering zones; see the module docstring."""

    def __init__(self, lines: list[Line], zones: list[Zone] | None = None,
                 handover_frames: int = 30, handover_distance: float = 0.6,
                 settle_frames: int = 0) -> None:
        self.lines = lines
        self.zones = zones or []
        self.handover_frames = handover_frames
        self.handover_distance = handover_distance
        self.settle_frames = settle_frames
        self.states: dict[int, _State] = {}
        self.lost: dict[int, _State] = {}
        self.id_switches = 0
        self.id_switches_near_line = 0
        self.frame_size: tuple[int, int] | None = None

    def _anchor(self, t: Track, line: Line | None = None) -> Point:
        return anchor_point(t.box, line.anchor if line else "center")

    def update(self, tracks: list[Track], frame: int,
               frame_size: tuple[int, int] | None = None) -> list[CountEvent]:
        """Feed the live tracks of one frame; returns the counts this frame produced.

        ``frame_size`` (width, height) enables the truncated-box rule.
        """
        self.frame_size = frame_size
        events: list[CountEvent] = []
        live = set()
        for t in tracks:
            live.add(t.track_id)
            st = self.states.get(t.track_id)
            if st is None:
                st = self._born(t, frame)
                self.states[t.track_id] = st
            self._step(t, st, frame, events)
        for tid in [k for k in self.states if k not in live]:
            st = self.states.pop(tid)
            events.extend(self._emit(st, force=True))
            # only a track lost inside the picture (occlusion, missed detections) may be
            # re-found; one last seen at the border has left the scene
            if st.confirmed and not st.at_edge:
                self.lost[tid] = st
        for tid in [k for k, s in self.lost.items() if frame - s.last_frame > self.handover_frames]:
            del self.lost[tid]
        return events

    def _born(self, t: Track, frame: int) -> _State:
        """A new track id: hand over from a recently lost track nearby, if there is one."""
        box = t.box
        size = float(max(box[2] - box[0], box[3] - box[1], 1.0))
        here = self._anchor(t)
        best, best_d = None, self.handover_distance
        for tid, s in self.lost.items():
            gap = frame - s.seen_frame
            guess = (s.last[0] + s.velocity[0] * gap, s.last[1] + s.velocity[1] * gap)
            # near where it was predicted to be, or where it was last seen (it may have
            # stopped: that is often why it was lost)
            d = min(np.hypot(here[0] - guess[0], here[1] - guess[1]),
                    np.hypot(here[0] - s.last[0], here[1] - s.last[1])) / max(size, s.box_size)
            ratio = max(size, s.box_size) / max(min(size, s.box_size), 1.0)
            if d < best_d and ratio < 1.8:
                best, best_d = tid, d
        if best is None:
            return _State(last=here, anchors=self._anchors(t), last_frame=frame, seen_frame=frame,
                          box_size=size)
        old = self.lost.pop(best)
        self.id_switches += 1
        if any(self._near_line(old.last, here, ln, size) for ln in self.lines):
            self.id_switches_near_line += 1
        # continue from where the old track was last *measured*: where it coasted to since
        # is a guess, and a guess must not become half of a crossing
        return _State(last=old.last, anchors=dict(old.seen_anchors or old.anchors),
                      seen_anchors=dict(old.seen_anchors), counted=set(old.counted),
                      pending=dict(old.pending), zones=set(old.zones), last_frame=frame,
                      seen_frame=frame, box_size=size,
                      confirmed=old.confirmed)

    @staticmethod
    def _anchors(t: Track) -> dict[str, Point]:
        box = t.box
        return {"center": anchor_point(box, "center"),
                "bottom_center": anchor_point(box, "bottom_center")}

    @staticmethod
    def _near_line(p: Point, q: Point, ln: Line, size: float) -> bool:
        ax, ay = ln.a
        bx, by = ln.b
        length = max(np.hypot(bx - ax, by - ay), 1e-9)
        dist = [abs((bx - ax) * (pt[1] - ay) - (by - ay) * (pt[0] - ax)) / length for pt in (p, q)]
        return min(dist) < 2 * size

    def _emit(self, st: _State, frame: int = 0, force: bool = False) -> list[CountEvent]:
        out, keep = [], []
        for item in st.settling:
            name, sign, f, pt, due = item
            if force or frame >= due:
                ln = next(x for x in self.lines if x.name == name)
                out.append(CountEvent(name, ln.names[0] if sign > 0 else ln.names[1],
                                      ROAD_USER_CLASSES[st.label], st.track_id, f, pt))
            else:
                keep.append(item)
        st.settling = keep
        return out

    def flush(self) -> list[CountEvent]:
        """Emit every count still settling its class (end of stream, shutdown)."""
        out: list[CountEvent] = []
        for st in list(self.states.values()) + list(self.lost.values()):
            out.extend(self._emit(st, force=True))
        return out

    def _truncated(self, box: np.ndarray) -> bool:
        if self.frame_size is None:
            return False
        w, h = self.frame_size
        m = 2.0
        return bool(box[0] <= m or box[1] <= m or box[2] >= w - 1 - m or box[3] >= h - 1 - m)

    def _step(self, t: Track, st: _State, frame: int, events: list[CountEvent]) -> None:
        cls = ROAD_USER_CLASSES[t.label]
        whole = not (self._truncated(t.box) or self._truncated(t.last_box))
        for ln in self.lines if whole else ():
            if ln.name in st.counted:
                continue
            cur = anchor_point(t.box, ln.anchor)
            prev = st.anchors.get(ln.anchor, cur)
            sign = crosses(ln.a, ln.b, prev, cur)
            if sign and ln.name not in st.pending:
                st.pending[ln.name] = (sign, frame, cur)
            elif ln.name in st.pending and side(ln.a, ln.b, cur) * st.pending[ln.name][0] < 0:
                del st.pending[ln.name]  # back on the side it came from: jitter, not a crossing
        if t.confirmed and t.missed == 0 and whole:
            for name, (sign, f, pt) in list(st.pending.items()):
                ln = next(x for x in self.lines if x.name == name)
                if side(ln.a, ln.b, anchor_point(t.box, ln.anchor)) * sign <= 0:
                    continue
                st.counted.add(name)
                del st.pending[name]
                st.settling.append((name, sign, f, pt, frame + self.settle_frames))
            here = self._anchor(t)
            for z in self.zones:
                if z.name not in st.zones and inside(z.polygon, here):
                    st.zones.add(z.name)
                    events.append(CountEvent(z.name, "inside", cls, t.track_id, frame, here))
        st.label = t.label
        st.track_id = t.track_id
        if t.missed == 0:
            events.extend(self._emit(st, frame=frame))
        box = t.box
        if whole or not st.anchors:
            st.anchors = self._anchors(t)
        if t.missed == 0:
            st.last = self._anchor(t)
            st.seen_frame = frame
            st.at_edge = not whole
            if whole:
                st.seen_anchors = self._anchors(t)
        st.last_frame = frame
        st.box_size = float(max(box[2] - box[0], box[3] - box[1], 1.0))
        st.velocity = t.velocity
        st.label = t.label
        st.confirmed = t.confirmed
