"""Count quality from a signal the detector cannot fool: motion at the counting lines.

A detector that sees nothing looks exactly like an empty road, and an empty road at night
is what adaptive dimming dims. So the counts are checked against something that needs no
model: **what moves across each counting line**. Every frame is shrunk to a thumbnail
(``width`` px wide), turned grey and blurred, and compared with the one before; a pixel
changed when it moved by more than a noise-adaptive step (as the motion gate's). Each
line has a *band* around it (``band`` of the frame's height on either side). A band in
which enough pixels changed is *active*; a run of active frames (gaps up to ``gap_s``,
lasting ``min_s`` or more, cut every ``max_s`` so that dense traffic that keeps a band busy
makes one episode per ``max_s``) is an **episode**: something crossed or moved on the line,
a vehicle, or at night its lamps. A frame in which much of the whole picture changed
(``global_share``: the camera shook, the exposure or a light changed) is no evidence either
way and is left out. An episode is **explained** when a box the detector vouches for
overlapped the *moving pixels* of the band during it (a parked car's box on the band does
not explain a vehicle passing beside it): the detections it is confident of, and the
confirmed tracks a detection has just matched (not tracks coasting without one, which a
blind detector would leave behind). Vehicles the
detector sees explain their own motion; a picture the detector cannot read (washed out,
high-gain night CCTV, glare) leaves episodes unexplained.

The verdict weighs **episodes, not seconds**, so that a quiet road at night (a vehicle
every few minutes, where dimming matters) is judged as surely as a busy one. It is poor when:

- of the last ``window_episodes`` episodes (none older than ``window_s``), ``min_missed``
  or more were unexplained and they are at least ``max_missed`` of them (motion crosses the
  line and no detection does); it then stays poor until the last ``recover_episodes``
  episodes were all explained: a blind detector never proves itself, so its counts are
  never trusted again on their own (the lamps do not hunt); or
- the picture was blinded (black, uniform or glaring: grey mean < 8 or > 247, standard
  deviation < 4, or more than ``glare`` of the pixels saturated) on half the frames of the
  last ``blind_s``, and for ``recover_s`` after.

An empty road with a good picture is good: no motion, nothing missed.

Each frame is also labelled by what the picture is: ``blinded``, ``ir`` (grey: an infrared
or high-gain monochrome picture, colour saturation < 12), ``night`` (grey mean < 60) or
``day``. :meth:`QualityMeter.take` hands the tallies since the last call to the interval
being closed. Pure and deterministic (the time base is the frame index over the frame rate),
so ``agent count``, the benchmarks and the live agent measure the same. About 0.55 ms a
frame at 640×360 on the development machine.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

SCENES = ("day", "night", "ir", "blinded")


@dataclass(frozen=True)
class QualitySettings:
    """The meter's knobs (``quality:`` in a camera's config; the defaults suit 10–30 fps)."""

    window_s: float = 3600.0
    window_episodes: int = 12
    recover_episodes: int = 3
    recover_s: float = 60.0
    min_missed: int = 2
    max_missed: float = 0.5
    global_share: float = 0.25
    band: float = 0.05
    active: float = 0.01
    gap_s: float = 0.4
    min_s: float = 0.2
    max_s: float = 2.0
    blind_s: float = 10.0
    glare: float = 0.3
    width: int = 160


@dataclass(frozen=True)
class Verdict:
    """Whether the counts can be trusted now, and if not, why."""

    good: bool
    reasons: tuple[str, ...] = ()


@dataclass
class _Episode:
    start: float
    last: float
    explained: bool = False


@dataclass
class QualityTally:
    """What one interval saw (see :meth:`QualityMeter.take`)."""

    frames: int = 0
    poor_frames: int = 0
    episodes: int = 0
    explained: int = 0
    conf_sum: float = 0.0
    conf_n: int = 0
    scenes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SCENES, 0))
    reasons: list[str] = field(default_factory=list)

    def add(self, other: QualityTally) -> None:
        """Fold another tally into this one."""
        self.frames += other.frames
        self.poor_frames += other.poor_frames
        self.episodes += other.episodes
        self.explained += other.explained
        self.conf_sum += other.conf_sum
        self.conf_n += other.conf_n
        for k, n in other.scenes.items():
            self.scenes[k] = self.scenes.get(k, 0) + n
        self.reasons += [r for r in other.reasons if r not in self.reasons]

    def summary(self) -> dict:
        """The interval's quality, as records and the contract carry it."""
        scene = max(SCENES, key=lambda k: self.scenes.get(k, 0)) if self.frames else None
        return {"grade": "poor" if self.poor_frames else "good",
                "reasons": list(self.reasons[:4]),
                "poorShare": round(self.poor_frames / self.frames, 3) if self.frames else None,
                "motionEpisodes": self.episodes, "episodesExplained": self.explained,
                "agreement": round(self.explained / self.episodes, 3) if self.episodes else None,
                "meanConfidence": round(self.conf_sum / self.conf_n, 3) if self.conf_n else None,
                "blindedShare": round(self.scenes.get("blinded", 0) / self.frames, 3)
                if self.frames else None,
                "scene": scene}


class QualityMeter:
    """See the module docstring. ``lines``: each counting line's two end points (frame
    pixels); ``fps``: the frame rate the frame indices count in."""

    def __init__(self, lines: list[tuple[tuple[float, float], tuple[float, float]]],
                 fps: float, settings: QualitySettings | None = None) -> None:
        self.s = settings or QualitySettings()
        self.lines = lines
        self.fps = max(1.0, fps)
        self._size: tuple[int, int] | None = None
        self._scale = 1.0
        self._bands: list[np.ndarray] = []
        self._prev: np.ndarray | None = None
        self._open: list[_Episode | None] = []
        self._episodes: deque[tuple[float, bool]] = deque(          # (end, explained)
            maxlen=max(self.s.window_episodes, self.s.recover_episodes))
        self._blind: deque[tuple[float, bool]] = deque()
        self._blind_until = -1.0
        self._missing = False                 # poor for unexplained motion, until proven
        self._reasons: tuple[str, ...] = ()
        self._tally = QualityTally()

    # -- per frame ------------------------------------------------------------------------
    def observe(self, image: np.ndarray, index: int, boxes: np.ndarray,
                scores: np.ndarray | None = None) -> Verdict:
        """One analysed frame (``index`` in frames at ``fps``), with the boxes the detector
        or the tracker put on it (``N×4`` x1, y1, x2, y2) and, when the detector ran, its
        scores. Returns the verdict after it."""
        t = index / self.fps
        grey, small = self._thumb(image)
        scene = self._scene(grey, small)
        blinded = scene == "blinded"
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        boxes = boxes[np.isfinite(boxes).all(axis=1)]          # a NaN or inf box is no box
        moving = self._moving(grey) if not blinded else [None] * len(self._bands)
        on_motion = self._boxes_on(boxes, moving)
        for i, mask in enumerate(moving):
            self._step_episode(i, t, mask is not None, on_motion[i])
        self._blind.append((t, blinded))
        while self._blind and self._blind[0][0] < t - self.s.blind_s:
            self._blind.popleft()
        while self._episodes and self._episodes[0][0] < t - self.s.window_s:
            self._episodes.popleft()
        verdict = self._judge(t)
        tl = self._tally
        tl.frames += 1
        tl.scenes[scene] += 1
        if not verdict.good:
            tl.poor_frames += 1
            kinds = [r.split(":")[0] for r in verdict.reasons]   # the kind, not its figures
            tl.reasons += [k for k in kinds if k not in tl.reasons]
        if scores is not None and len(scores):
            tl.conf_sum += float(np.sum(scores))
            tl.conf_n += len(scores)
        return verdict

    def verdict(self) -> Verdict:
        """The verdict after the last frame observed."""
        return Verdict(not self._reasons, self._reasons)

    def take(self) -> QualityTally:
        """The tallies since the last call (for the interval being closed), then afresh."""
        out, self._tally = self._tally, QualityTally()
        return out

    # -- the parts --------------------------------------------------------------------------
    def _thumb(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = image.shape[:2]
        if self._size != (w, h):
            self._layout(w, h)
        tw, th = self.s.width, max(1, round(h * self._scale))
        small = cv2.resize(image, (tw, th), interpolation=cv2.INTER_AREA)
        grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
        return grey, small

    def _layout(self, w: int, h: int) -> None:
        """The bands at thumbnail scale, for a frame of ``w``×``h`` (again on a new size)."""
        self._size = (w, h)
        self._scale = self.s.width / w
        th = max(1, round(h * self._scale))
        half = max(2, round(self.s.band * th))
        self._bands = []
        for (x1, y1), (x2, y2) in self.lines:
            mask = np.zeros((th, self.s.width), np.uint8)
            pts = np.array([[x1, y1], [x2, y2]], np.float32) * self._scale
            cv2.line(mask, tuple(np.round(pts[0]).astype(int)), tuple(np.round(pts[1]).astype(int)),
                     1, thickness=2 * half + 1)
            self._bands.append(mask.astype(bool))
        self._open = [None] * len(self._bands)
        self._prev = None

    def _scene(self, grey: np.ndarray, small: np.ndarray) -> str:
        mean, std = float(grey.mean()), float(grey.std())
        saturated = float(np.count_nonzero(grey >= 250)) / grey.size
        if std < 4.0 or mean < 8.0 or mean > 247.0 or saturated > self.s.glare:
            return "blinded"
        if small.ndim == 3:
            sat = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)[..., 1]
            if float(sat.mean()) < 12.0:
                return "ir"
        else:
            return "ir"
        return "night" if mean < 60.0 else "day"

    def _moving(self, grey: np.ndarray) -> list[np.ndarray | None]:
        """Each band's moving pixels when it is active, else None."""
        blur = cv2.GaussianBlur(grey, (5, 5), 0)
        prev, self._prev = self._prev, blur
        if prev is None or prev.shape != blur.shape:
            return [None] * len(self._bands)
        diff = cv2.absdiff(blur, prev)
        # noise-adaptive, as the motion gate: a noisy picture raises the median difference
        changed = diff > max(6, 3 * int(np.median(diff)))
        if np.count_nonzero(changed) > self.s.global_share * changed.size:
            return [None] * len(self._bands)       # the whole picture moved: no evidence
        out: list[np.ndarray | None] = []
        for band in self._bands:
            moving = changed & band
            area = np.count_nonzero(band)
            out.append(moving if area and np.count_nonzero(moving) >= self.s.active * area
                       else None)
        return out

    def _boxes_on(self, boxes: np.ndarray, masks: list[np.ndarray | None]) -> list[bool]:
        """For each mask (thumbnail scale), whether a box overlaps one of its pixels."""
        out = []
        for mask in masks:
            hit = False
            if mask is None:
                out.append(False)
                continue
            th, tw = mask.shape
            for x1, y1, x2, y2 in np.clip(boxes * self._scale, -1.0, 1e5):
                xa, ya = max(0, int(x1)), max(0, int(y1))
                xb, yb = min(tw, int(np.ceil(x2)) + 1), min(th, int(np.ceil(y2)) + 1)
                if xa < xb and ya < yb and mask[ya:yb, xa:xb].any():
                    hit = True
                    break
            out.append(hit)
        return out

    def _step_episode(self, i: int, t: float, on: bool, boxed: bool) -> None:
        ep = self._open[i]
        if ep is not None and on and t - ep.start >= self.s.max_s:   # a busy band: cut it
            self._close(i, ep)
            ep = None
        if ep is not None and (on or t - ep.last <= self.s.gap_s):
            if on:
                ep.last = t
            ep.explained = ep.explained or boxed
            return
        if ep is not None:
            self._close(i, ep)
        if on:
            self._open[i] = _Episode(t, t, boxed)

    def _close(self, i: int, ep: _Episode) -> None:
        """An episode ended: kept if it lasted ``min_s``."""
        if ep.last - ep.start >= self.s.min_s:
            self._episodes.append((ep.last, ep.explained))
            self._tally.episodes += 1
            self._tally.explained += int(ep.explained)
        self._open[i] = None

    def _judge(self, t: float) -> Verdict:
        recent = list(self._episodes)[-self.s.window_episodes:]
        missed = sum(1 for _, explained in recent if not explained)
        if not self._missing and missed >= self.s.min_missed \
                and missed >= self.s.max_missed * len(recent):
            self._missing = True
        elif self._missing:                        # proven again: the latest all explained
            last = recent[-self.s.recover_episodes:]
            if len(last) >= self.s.recover_episodes and all(e for _, e in last):
                self._missing = False              # judged afresh from here on
                self._episodes.clear()
                self._episodes.extend(last)
        reasons = []
        if self._missing:
            reasons.append(f"motion at the line, no vehicle detected: {missed} of the last "
                           f"{len(recent)} episodes")
        blind = sum(1 for _, b in self._blind if b)
        if self._blind and blind >= 0.5 * len(self._blind):
            self._blind_until = t + self.s.recover_s
            reasons.append(f"picture blinded (black, uniform or glaring): {blind} of the "
                           f"last {len(self._blind)} frames")
        elif t < self._blind_until:
            reasons.append("picture blinded: recovering")
        self._reasons = tuple(reasons)
        return self.verdict()
