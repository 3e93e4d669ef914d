"""Multi-object tracking for counting: ByteTrack-style association, constant-velocity Kalman.

Per frame with detections (:meth:`Tracker.update`):

1. every track's Kalman filter predicts its box;
2. high-confidence detections are matched to tracks by IoU (Hungarian assignment);
3. remaining tracks are matched to low-confidence detections (ByteTrack's second pass,
   which keeps tracks alive through partial occlusion), then to any leftover detection by
   centre distance from the prediction, scaled by box size (fast motorbikes at low frame
   rates can move further than their own length between frames, where IoU is zero). A
   young track, whose velocity is still unknown, may jump up to ``max_distance`` sizes;
   an established one (3+ hits) only ``settled_distance``; a young track's reach grows
   with the frames since its last measurement (detection stride), up to four times;
4. tracks still unmatched take a leftover detection *nested* with their predicted box
   (a fragment inside it, or a whole box around it): the detector switching between a
   lorry's cab and its whole body, or seeing only the part of a vehicle not hidden, is
   the same vehicle. A fragment moves the track by the edges it shares with the
   prediction, keeping the track's size; a whole box replaces the size, keeping the
   velocity (a change of box is not motion), but only for a moving track: a vehicle
   driving over a static false detection is not that detection's whole box;
5. tracks whose predicted centre has left the frame are dropped (they must not take a
   newcomer's detection at the edge); unmatched high-confidence detections start
   tentative tracks, unless they sit on a live track (centre inside its box, IoU above
   ``duplicate_iou``, or nested with a recently measured track): a second box on the
   same vehicle must not become a second count; tracks unmatched for longer than
   ``lost_frames`` are removed (tentative ones after ``tentative_frames``).

**Implausible jumps are refused** in every pass: an established track (3+ measurements,
so its velocity is known) takes a detection only when the detection's centre lies within
the Kalman filter's own uncertainty of the predicted centre (Mahalanobis distance below
the 99.9 % chi-square gate; the gate widens by itself while a track coasts) and its area
is within a factor of four of the track's (nested boxes excepted, see 4). A static false
detection (a lane mark, a sign) therefore cannot jump onto a passing vehicle, and a
track cannot swap to a vehicle in the next lane.

Frames without detections (detection stride, motion gating) call :meth:`Tracker.predict`,
which moves every track along its velocity so counting lines are still crossed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agent.vision.assignment import linear_sum_assignment
from agent.vision.detect.base import Detections, iou_matrix

#: 99.9 % quantile of chi-square with 2 degrees of freedom: the centre gate.
GATE_CHI2 = 13.8
#: Measurements before a track's velocity is trusted for gating.
ESTABLISHED_HITS = 3

_Q_SCALE = np.array([0.05] * 4 + [0.1] * 2 + [0.01] * 2) ** 2
_R_SCALE = np.array([0.05] * 4) ** 2
_DIAG8 = np.diag_indices(8)
_I8 = np.eye(8)


class KalmanBox:
    """Constant-velocity Kalman filter on (cx, cy, w, h) with noise scaled by box size."""

    def __init__(self, box: np.ndarray) -> None:
        cx, cy, w, h = _xywh(box)
        self.x = np.array([cx, cy, w, h, 0, 0, 0, 0], float)
        s = max(w, h)
        self.P = np.diag([(0.1 * s) ** 2] * 4 + [(0.5 * s) ** 2] * 2 + [(0.05 * s) ** 2] * 2)
        self._box: np.ndarray | None = None

    def predict(self) -> None:
        """Advance one frame."""
        s = max(self.x[2], self.x[3], 1.0)
        x = self.x
        x[:4] += x[4:]
        np.maximum(x[2:4], 1.0, out=x[2:4])
        cov = self.P  # F P F^T with F = [[I, I], [0, I]], in place: rows, then columns
        cov[:4, :] += cov[4:, :]
        cov[:, :4] += cov[:, 4:]
        cov[_DIAG8] += _Q_SCALE * (s * s)
        self._box = None

    def update(self, box: np.ndarray) -> None:
        """Correct with a measured box."""
        z = np.array(_xywh(box))
        s = max(self.x[2], self.x[3], 1.0)
        y = z - self.x[:4]
        pht = self.P[:, :4]                      # P @ H.T with H = [I 0]
        cov = self.P[:4, :4] + np.diag(_R_SCALE * (s * s))
        k = np.linalg.solve(cov, pht.T).T        # P H^T S^-1 (S is symmetric)
        self.x = self.x + k @ y
        self.P = self.P - k @ self.P[:4, :]
        self._box = None

    def box(self) -> np.ndarray:
        """Current x1 y1 x2 y2 estimate."""
        if self._box is None:
            cx, cy, w, h = self.x[:4]
            self._box = np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        return self._box


def _containment(a: np.ndarray, b: np.ndarray) -> float:
    """Share of the smaller of two boxes that lies inside the other."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return float(iw * ih / max(small, 1e-9))


def _nesting(det: np.ndarray, track_box: np.ndarray) -> str:
    """``"fragment"`` when ``det`` lies (85 %+) inside ``track_box`` and is under 60 % of
    its area, ``"whole"`` for the reverse, else ``""``."""
    area_d = (det[2] - det[0]) * (det[3] - det[1])
    area_t = (track_box[2] - track_box[0]) * (track_box[3] - track_box[1])
    if area_d <= 0 or area_t <= 0 or _containment(det, track_box) < 0.85:
        return ""
    if area_d < 0.6 * area_t:
        return "fragment"
    if area_t < 0.6 * area_d:
        return "whole"
    return ""


def _moving(t: Track) -> bool:
    """An established track that moves (2 %+ of its size per frame). A static one may be
    a false detection (a sign, a tree): a vehicle driving over it is not its whole box."""
    s = max(t.kf.x[2], t.kf.x[3], 1.0)
    return t.hits >= ESTABLISHED_HITS and float(np.hypot(t.kf.x[4], t.kf.x[5])) >= 0.02 * s


def _aligned(fragment: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """The predicted box moved so it shares, on each axis, the fragment's edge nearest
    to its own (the visible part's outer edge is the vehicle's)."""
    out = np.array(predicted, float)
    for lo, hi in ((0, 2), (1, 3)):
        d_lo, d_hi = fragment[lo] - predicted[lo], fragment[hi] - predicted[hi]
        shift = d_lo if abs(d_lo) <= abs(d_hi) else d_hi
        out[lo] += shift
        out[hi] += shift
    return out


def _xywh(b: np.ndarray) -> tuple[float, float, float, float]:
    return ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2, b[2] - b[0], b[3] - b[1])


@dataclass
class Track:
    """A tracked road user."""

    track_id: int
    kf: KalmanBox
    label: int
    score: float
    hits: int = 1
    missed: int = 0
    confirmed: bool = False
    votes: dict[int, float] = field(default_factory=dict)
    last_box: np.ndarray = field(default_factory=lambda: np.zeros(4))

    @property
    def box(self) -> np.ndarray:
        """Box estimate (x1 y1 x2 y2) for the current frame."""
        return self.kf.box()

    @property
    def velocity(self) -> tuple[float, float]:
        """Estimated centre motion in pixels per frame."""
        return float(self.kf.x[4]), float(self.kf.x[5])

    def vote(self, label: int, weight: float) -> None:
        """Add a class observation; the track's class is the weighted majority."""
        self.votes[label] = self.votes.get(label, 0.0) + weight
        self.label = max(self.votes, key=self.votes.__getitem__)


class Tracker:
    """ByteTrack-style tracker; see the module docstring."""

    def __init__(self, high: float = 0.35, low: float = 0.1, match_iou: float = 0.2,
                 lost_frames: int = 15, min_hits: int = 2, max_distance: float = 1.5,
                 tentative_frames: int = 2, duplicate_iou: float = 0.3,
                 settled_distance: float = 0.75) -> None:
        self.high = high
        self.duplicate_iou = duplicate_iou
        self.tentative_frames = tentative_frames
        self.low = low
        self.match_iou = match_iou
        self.lost_frames = lost_frames
        self.min_hits = min_hits
        self.max_distance = max_distance
        self.settled_distance = settled_distance
        self.frame_size: tuple[int, int] | None = None
        self.tracks: list[Track] = []
        self._next_id = 1

    def predict(self, frame_size: tuple[int, int] | None = None) -> list[Track]:
        """Advance every track one frame without measurements; returns the live tracks."""
        self.frame_size = frame_size or self.frame_size
        for t in self.tracks:
            t.kf.predict()
            t.missed += 1
        self._drop_outside()
        return self._prune()

    def update(self, dets: Detections,
               frame_size: tuple[int, int] | None = None) -> list[Track]:
        """Advance one frame and associate ``dets``; returns the live tracks.

        ``frame_size`` (width, height) lets tracks that left the picture be dropped.
        """
        self.frame_size = frame_size or self.frame_size
        for t in self.tracks:
            t.kf.predict()
        self._drop_outside()
        high = np.flatnonzero(dets.scores >= self.high)
        low = np.flatnonzero((dets.scores >= self.low) & (dets.scores < self.high))
        tracks = list(range(len(self.tracks)))
        matched_t: set[int] = set()
        # confirmed tracks get the first pick of the strong detections
        order = sorted(tracks, key=lambda i: (not self.tracks[i].confirmed, self.tracks[i].missed))
        rest_high, rest_t = self._match_iou(order, high, dets, self.match_iou, matched_t)
        _, rest_t = self._match_iou(rest_t, low, dets, 0.5 * self.match_iou, matched_t)
        rest_high, rest_t = self._match_distance(rest_t, rest_high, dets, matched_t)
        rest_high, rest_t = self._match_nested(rest_t, rest_high, dets, matched_t)
        for i, t in enumerate(self.tracks):
            if i not in matched_t:
                t.missed += 1
        for d in rest_high:
            self._start(dets, int(d))
        return self._prune()

    def _apply(self, ti: int, di: int, dets: Detections, matched_t: set[int]) -> None:
        t = self.tracks[ti]
        box = dets.boxes[di]
        nest = _nesting(box, t.box) if t.hits >= ESTABLISHED_HITS else ""
        if nest == "fragment":
            t.kf.update(_aligned(box, t.box))
        elif nest == "whole":
            velocity = t.kf.x[4:].copy()
            t.kf.update(box)
            t.kf.x[4:] = velocity
        else:
            t.kf.update(box)
        t.last_box = dets.boxes[di].copy()
        t.score = float(dets.scores[di])
        t.vote(int(dets.labels[di]), self._vote_weight(dets, di))
        t.hits += 1
        t.missed = 0
        if t.hits >= self.min_hits:
            t.confirmed = True
        matched_t.add(ti)

    def _match_iou(self, tis: list[int], dis: np.ndarray, dets: Detections, thresh: float,
                   matched_t: set[int]) -> tuple[list[int], list[int]]:
        if not tis or not len(dis):
            return list(dis), tis
        tb = np.array([self.tracks[i].box for i in tis])
        iou = iou_matrix(tb, dets.boxes[dis])
        iou = np.where(self._plausible(tis, dets.boxes[dis]), iou, 0.0)
        rows, cols = linear_sum_assignment(-iou)
        used_t, used_d = set(), set()
        for r, c in zip(rows, cols, strict=False):
            if iou[r, c] >= thresh:
                self._apply(tis[r], int(dis[c]), dets, matched_t)
                used_t.add(r)
                used_d.add(c)
        return ([int(d) for k, d in enumerate(dis) if k not in used_d],
                [t for k, t in enumerate(tis) if k not in used_t])

    def _match_distance(self, tis: list[int], dis: list[int], dets: Detections,
                        matched_t: set[int]) -> tuple[list[int], list[int]]:
        if not tis or not dis:
            return dis, tis
        tb = np.array([self.tracks[i].box for i in tis])
        db = dets.boxes[dis]
        tc = (tb[:, :2] + tb[:, 2:]) / 2
        dc = (db[:, :2] + db[:, 2:]) / 2
        tsize = np.maximum(tb[:, 2] - tb[:, 0], tb[:, 3] - tb[:, 1])
        dsize = np.maximum(db[:, 2] - db[:, 0], db[:, 3] - db[:, 1])
        dist = np.linalg.norm(tc[:, None] - dc[None], axis=2) / np.maximum(tsize[:, None], 1.0)
        ratio = np.maximum(tsize[:, None], dsize[None]) / np.maximum(
            np.minimum(tsize[:, None], dsize[None]), 1.0)
        cost = dist + np.where(ratio > 2.0, 100.0, 0.0) \
            + np.where(self._plausible(tis, db), 0.0, 100.0)
        # an established track's prediction already carries its velocity across a stride
        # gap; a young track's velocity is unknown, so its reach grows with the gap
        limit = np.array([self.settled_distance if self.tracks[i].hits >= 3 else
                          self.max_distance * min(4.0, max(1.0, (self.tracks[i].missed + 1) / 2))
                          for i in tis])
        rows, cols = linear_sum_assignment(cost)
        used_t, used_d = set(), set()
        for r, c in zip(rows, cols, strict=True):
            if cost[r, c] <= limit[r]:
                self._apply(tis[r], dis[c], dets, matched_t)
                used_t.add(r)
                used_d.add(c)
        return ([d for k, d in enumerate(dis) if k not in used_d],
                [t for k, t in enumerate(tis) if k not in used_t])

    def _plausible(self, tis: list[int], boxes: np.ndarray) -> np.ndarray:
        """(len(tis), len(boxes)) mask: may each track take each detection? See the module
        docstring: centre within the Kalman gate, area within a factor of four, for
        established tracks; nested boxes are always plausible."""
        ok = np.ones((len(tis), len(boxes)), bool)
        if not len(boxes):
            return ok
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        areas = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1.0)
        for r, ti in enumerate(tis):
            t = self.tracks[ti]
            if t.hits < ESTABLISHED_HITS:
                continue
            kf = t.kf
            s = max(kf.x[2], kf.x[3], 1.0)
            r2 = _R_SCALE[0] * s * s
            a, b, d = kf.P[0, 0] + r2, kf.P[0, 1], kf.P[1, 1] + r2  # 2x2 centre covariance
            dx, dy = centres[:, 0] - kf.x[0], centres[:, 1] - kf.x[1]
            maha = (d * dx * dx - 2 * b * dx * dy + a * dy * dy) / max(a * d - b * b, 1e-12)
            tb = t.box
            area_t = max((tb[2] - tb[0]) * (tb[3] - tb[1]), 1.0)
            ratio = np.maximum(areas, area_t) / np.minimum(areas, area_t)
            for c in np.flatnonzero((maha > GATE_CHI2) | (ratio > 4.0)):
                if not _nesting(boxes[c], tb):
                    ok[r, c] = False
        return ok

    def _match_nested(self, tis: list[int], dis: list[int], dets: Detections,
                      matched_t: set[int]) -> tuple[list[int], list[int]]:
        """Established tracks take a leftover detection nested with their box (best
        containment first)."""
        pairs = []
        for ti in tis:
            t = self.tracks[ti]
            if t.hits < ESTABLISHED_HITS:
                continue
            for di in dis:
                nest = _nesting(dets.boxes[di], t.box)
                if nest == "fragment" or (nest == "whole" and _moving(t)):
                    pairs.append((-_containment(dets.boxes[di], t.box), ti, di))
        used_t, used_d = set(), set()
        for _, ti, di in sorted(pairs):
            if ti in used_t or di in used_d:
                continue
            self._apply(ti, di, dets, matched_t)
            used_t.add(ti)
            used_d.add(di)
        return [d for d in dis if d not in used_d], [t for t in tis if t not in used_t]

    def _start(self, dets: Detections, di: int) -> None:
        box = dets.boxes[di]
        # a detection sitting on a live track (its centre inside the track's box, a large
        # overlap, or nested with a recently measured one) is a duplicate of that road
        # user, not a new one
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        for t in self.tracks:
            tb = t.box
            if (tb[0] <= cx <= tb[2] and tb[1] <= cy <= tb[3] and t.missed == 0) \
                    or iou_matrix(box[None], tb[None])[0, 0] > self.duplicate_iou \
                    or (t.missed <= 2 and t.hits >= ESTABLISHED_HITS
                        and _nesting(box, tb) in (("fragment", "whole") if _moving(t)
                                                  else ("fragment",))):
                return
        t = Track(self._next_id, KalmanBox(box), int(dets.labels[di]), float(dets.scores[di]),
                  confirmed=self.min_hits <= 1, last_box=box.copy())
        t.vote(int(dets.labels[di]), self._vote_weight(dets, di))
        self._next_id += 1
        self.tracks.append(t)

    def _vote_weight(self, dets: Detections, di: int) -> float:
        """Class-vote weight: score x sqrt(area), so close, whole views count most; a box cut by
        the frame border (a half-visible bus looks like a car) counts a tenth."""
        b = dets.boxes[di]
        w = float(dets.scores[di]) * float(np.sqrt(max((b[2] - b[0]) * (b[3] - b[1]), 1.0)))
        if self.frame_size is not None:
            fw, fh = self.frame_size
            if b[0] <= 2 or b[1] <= 2 or b[2] >= fw - 3 or b[3] >= fh - 3:
                w *= 0.1
        return w

    def _drop_outside(self) -> None:
        if self.frame_size is None:
            return
        w, h = self.frame_size
        keep = []
        for t in self.tracks:
            cx, cy = t.kf.x[0], t.kf.x[1]
            if -0.5 <= cx <= w - 0.5 and -0.5 <= cy <= h - 0.5:
                keep.append(t)
        self.tracks = keep

    def _prune(self) -> list[Track]:
        keep = []
        for t in self.tracks:
            limit = self.lost_frames if t.confirmed else min(self.tentative_frames, self.lost_frames)
            if t.missed <= limit:
                keep.append(t)
        self.tracks = keep
        return keep
