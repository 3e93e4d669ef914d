"""Counting lines and zones: turns tracks into counts by class and direction.

Rules (the same as the hand-made ground truth in ``../shared/data``):

- **measured sides only.** For every line, a track remembers the side its anchor point
  (box centre by default) was on in its last *measured* frame (matched to a detection),
  when that side is known reliably (below). A crossing is a change of that side between
  two measured frames, with the crossing point on the line's segment. A track coasting on
  its predicted velocity (detection stride, a missed detection) can never count: the
  track's own measured history has to show the vehicle on both sides;
- a crossing is counted in the frame the anchor first was past the line, interpolated
  between the two measurements (so a detection stride does not delay the event);
- **born past the line, no count.** A track whose first reliable side is already past a
  line has not been seen crossing it, and does not count on it;
- **direction consistent with motion.** A side change against the track's own measured
  motion (a box that jumped backwards onto another vehicle, a lorry's box switching from
  the cab to the whole body) is not a crossing; the side is updated and nothing counted;
- jitter on the line cannot count twice: a track that has counted on a line never
  counts on it again, whatever it does afterwards;
- **real travel.** A crossing is held until the track is confirmed and has travelled half
  its own length across the line since it was first seen (a sign or a bollard detected
  as a motorbike, its box jittering on the line, never counts), then counted with the
  frame of the crossing; a track that goes back first drops it;
- the class of a counted road user is settled after the crossing: the event is emitted
  ``settle_frames`` measured frames later, or when the track ends (or at :meth:`flush`),
  with the track's class vote at that time, so a far, small view just before the line
  does not decide between car, truck and bus alone;
- a track that is lost and re-found as a new id near where it was lost inherits the
  old track's measured sides and counted lines: a vehicle lost before the line and
  re-found after it counts once, and one that counted before being lost does not count
  again (no double counts from ID switches near the line). Each such hand-over is
  recorded as an ID switch for the interval's quality figures. Only tracks lost inside
  the picture are candidates (one last seen at the border has left);
- **frame edges.** A box touching the frame border is truncated: its centre is not the
  vehicle's. Its side of a line is still known when

  * the vehicle was seen whole before: the cut edge is rebuilt from the whole size, on
    each cut axis that crosses the line (a bus whose box reaches the bottom edge still
    counts when its real centre crosses a line near that edge);
  * the border lies beyond the line on that side: the real centre is further out than
    the visible one, so a visible centre already past the line is past it (a vehicle
    entering over a line close to the border is seen before the line);
  * the cut runs along the direction of travel (a three-wheeler sliding past the line
    with its box on the right edge): cutting a strip off its side does not move its
    centre along the line's normal;

  otherwise (a vehicle leaving or entering through an edge beside the line, a track
  born truncated) the side is unknown: nothing is remembered, nothing counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agent.vision.classes import ROAD_USER_CLASSES
from agent.vision.geometry import (
    Point,
    crosses,
    image_directions,
    inside,
    signed_distance,
    unit_normal,
)
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


#: A crossing counts once the track has travelled this share of its own length across
#: the line since it was first seen (a static box jittering on the line never does).
MIN_TRAVEL = 0.5


@dataclass
class _State:
    last: Point  # centre when last measured, used for hand-over
    sides: dict[str, tuple[int, int, Point, float]] = field(default_factory=dict)
    # line → (side ±1, frame, anchor, signed distance) of the last reliable measurement
    counted: set[str] = field(default_factory=set)
    pending: dict[str, tuple[int, int, Point]] = field(default_factory=dict)
    origin: dict[str, float] = field(default_factory=dict)  # line → first reliable distance
    settling: list[tuple[str, int, int, Point, int]] = field(default_factory=list)
    track_id: int = 0
    zones: set[str] = field(default_factory=set)
    last_frame: int = 0
    seen_frame: int = 0  # last frame with a measurement
    at_edge: bool = False  # last measured box touched the frame border (leaving the scene)
    whole: tuple[float, float] | None = None  # width, height of the last whole box
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
        self.refused_backwards = 0
        self.frame_size: tuple[int, int] | None = None
        self._by_name = {ln.name: ln for ln in lines}

    def update(self, tracks: list[Track], frame: int,
               frame_size: tuple[int, int] | None = None) -> list[CountEvent]:
        """Feed the live tracks of one frame; returns the counts this frame produced.

        ``frame_size`` (width, height) enables the frame-edge rules.
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

    def side_of(self, track_id: int, line: str) -> int:
        """The last reliably measured side (±1) of a track for a line; 0 when unknown."""
        st = self.states.get(track_id)
        entry = st.sides.get(line) if st is not None else None
        return entry[0] if entry else 0

    def resolved(self, track_id: int, line: str) -> bool:
        """Whether a track has already counted on ``line``."""
        st = self.states.get(track_id)
        return st is not None and line in st.counted

    def has_pending(self) -> bool:
        """Whether some crossing waits for its track to be confirmed."""
        return any(st.pending and not st.confirmed for st in self.states.values())

    def _born(self, t: Track, frame: int) -> _State:
        """A new track id: hand over from a recently lost track nearby, if there is one."""
        box = t.box
        size = float(max(box[2] - box[0], box[3] - box[1], 1.0))
        here = anchor_point(box, "center")
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
            return _State(last=here, last_frame=frame, seen_frame=frame, box_size=size)
        old = self.lost.pop(best)
        self.id_switches += 1
        if any(self._near_line(old.last, here, ln, size) for ln in self.lines):
            self.id_switches_near_line += 1
        # continue from where the old track was last *measured*
        return _State(last=old.last, sides=dict(old.sides), counted=set(old.counted),
                      pending=dict(old.pending), origin=dict(old.origin),
                      zones=set(old.zones), last_frame=frame,
                      seen_frame=frame, box_size=size, whole=old.whole,
                      velocity=old.velocity, confirmed=old.confirmed)

    @staticmethod
    def _near_line(p: Point, q: Point, ln: Line, size: float) -> bool:
        return min(abs(signed_distance(ln.a, ln.b, pt)) for pt in (p, q)) < 2 * size

    def _emit(self, st: _State, frame: int = 0, force: bool = False) -> list[CountEvent]:
        out, keep = [], []
        for item in st.settling:
            name, sign, f, pt, due = item
            if force or frame >= due:
                ln = self._by_name[name]
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

    def _cuts(self, box: np.ndarray) -> list[tuple[float, float]]:
        """Outward directions of the frame borders a box touches (none: a whole box)."""
        if self.frame_size is None:
            return []
        w, h = self.frame_size
        m = 2.0
        out = []
        if box[0] <= m:
            out.append((-1.0, 0.0))
        if box[2] >= w - 1 - m:
            out.append((1.0, 0.0))
        if box[1] <= m:
            out.append((0.0, -1.0))
        if box[3] >= h - 1 - m:
            out.append((0.0, 1.0))
        return out

    def _measured_side(self, t: Track, st: _State, ln: Line, box: np.ndarray,
                       cuts: list[tuple[float, float]]) -> tuple[int, Point, float] | None:
        """(side, anchor, signed distance) of a measured box, or None when not reliable."""
        if not cuts:
            p = anchor_point(box, ln.anchor)
            d = _signed(ln, p)
            return (1 if d > 0 else -1, p, d) if d != 0 else None
        nx, ny = _normal(ln)
        rebuilt = np.array(box, float)
        vx, vy = t.velocity
        speed = float(np.hypot(vx, vy))
        for dx, dy in cuts:
            along_normal = nx * dx + ny * dy
            if abs(along_normal) < 0.35:
                # the cut runs across the line: it must also run along the motion (a strip
                # cut off the vehicle's side), not across it (entering or leaving)
                if not (t.hits >= 3 and speed > 0.3 and abs(vx * dx + vy * dy) < 0.5 * speed):
                    return None
                continue
            if st.whole is not None:
                ww, hh = st.whole
                if dx < 0:
                    rebuilt[0] = min(rebuilt[0], rebuilt[2] - ww)
                elif dx > 0:
                    rebuilt[2] = max(rebuilt[2], rebuilt[0] + ww)
                elif dy < 0:
                    rebuilt[1] = min(rebuilt[1], rebuilt[3] - hh)
                else:
                    rebuilt[3] = max(rebuilt[3], rebuilt[1] + hh)
        p = anchor_point(rebuilt, ln.anchor)
        d = _signed(ln, p)
        if d == 0:
            return None
        sign = 1 if d > 0 else -1
        if st.whole is None:
            # no whole size known: the real anchor lies further out than the visible one,
            # so only a visible anchor on the border's side of the line is reliable
            for dx, dy in cuts:
                along_normal = nx * dx + ny * dy
                if abs(along_normal) >= 0.35 and along_normal * sign <= 0:
                    return None
        return sign, p, d

    def _step(self, t: Track, st: _State, frame: int, events: list[CountEvent]) -> None:
        measured = t.missed == 0
        if measured:
            box = t.last_box if self.frame_size is not None else t.box
            cuts = self._cuts(box)
            if not cuts:
                box = t.box  # the filtered estimate of a whole box: steadier than the raw one
                st.whole = (float(box[2] - box[0]), float(box[3] - box[1]))
            for ln in self.lines:
                got = self._measured_side(t, st, ln, box, cuts)
                if got is not None:
                    self._observe(t, st, ln, frame, *got)
            self._resolve(t, st, frame)
            if t.confirmed:
                here = anchor_point(t.box, "center")
                for z in self.zones:
                    if z.name not in st.zones and inside(z.polygon, here) and not cuts:
                        st.zones.add(z.name)
                        events.append(CountEvent(z.name, "inside", ROAD_USER_CLASSES[t.label],
                                                 t.track_id, frame, here))
            st.last = anchor_point(t.box, "center")
            st.seen_frame = frame
            st.at_edge = bool(cuts)
        st.label = t.label
        st.track_id = t.track_id
        if measured:
            events.extend(self._emit(st, frame=frame))
        box = t.box
        st.last_frame = frame
        st.box_size = float(max(box[2] - box[0], box[3] - box[1], 1.0))
        st.velocity = t.velocity
        st.confirmed = t.confirmed

    def _resolve(self, t: Track, st: _State, frame: int) -> None:
        """Count the held crossings of a confirmed track that is still past its line and
        has really travelled (not a static box jittering on the line)."""
        for name, (sign, f, pt) in list(st.pending.items()):
            cur = st.sides.get(name)
            if cur is None or cur[0] != sign:
                del st.pending[name]
                continue
            if not t.confirmed:
                continue
            ln = self._by_name[name]
            nx, ny = _normal(ln)
            w, h = st.whole if st.whole is not None else (t.box[2] - t.box[0], t.box[3] - t.box[1])
            extent = abs(nx) * w + abs(ny) * h
            travel = (cur[3] - st.origin.get(name, cur[3])) * sign
            if travel >= MIN_TRAVEL * extent:
                del st.pending[name]
                st.counted.add(name)
                st.settling.append((name, sign, f, pt, frame + self.settle_frames))

    def _observe(self, t: Track, st: _State, ln: Line, frame: int, sign: int, p: Point,
                 d: float) -> None:
        """A reliable measured side of ``ln``: a crossing when it changed."""
        prev = st.sides.get(ln.name)
        st.sides[ln.name] = (sign, frame, p, d)
        st.origin.setdefault(ln.name, d)
        if prev is None or prev[0] == sign:
            if prev is not None and ln.name in st.pending and st.pending[ln.name][0] != sign:
                del st.pending[ln.name]
            return
        if ln.name in st.pending:
            del st.pending[ln.name]  # back where it came from before being confirmed
            return
        if ln.name in st.counted:
            return
        p0, d0, f0 = prev[2], prev[3], prev[1]
        if crosses(ln.a, ln.b, p0, p) == 0:
            return  # beside the segment
        # the track's own motion must agree: velocity along the normal, when it has one
        nx, ny = _normal(ln)
        vn = t.velocity[0] * nx + t.velocity[1] * ny
        size = float(max(t.box[2] - t.box[0], t.box[3] - t.box[1], 1.0))
        if t.hits >= 3 and vn * sign < 0 and abs(vn) > 0.02 * size:
            self.refused_backwards += 1
            return
        # first frame past the line, interpolated between the two measurements
        at = f0 + (frame - f0) * (abs(d0) / max(abs(d0) + abs(d), 1e-9))
        f = int(min(frame, max(f0 + 1, np.floor(at) + 1)))
        st.pending[ln.name] = (sign, f, p)



def _normal(ln: Line) -> tuple[float, float]:
    """Unit normal of a line pointing to its right-hand (positive) side."""
    nx, ny, _ = unit_normal(ln.a, ln.b)
    return nx, ny


def _signed(ln: Line, p: Point) -> float:
    """Signed distance of ``p`` from the line, in pixels (> 0 on the right-hand side)."""
    return signed_distance(ln.a, ln.b, p)
