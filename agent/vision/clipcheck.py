"""``agent validate --clip VIDEO``: does a camera's model see road users in its footage?

A model fit for one view can be blind in another: COCO nano models see cars from an
elevated side view, not from directly above; the simulator's model sees nothing real.
Such a camera counts zero, quietly. This runs the camera's model, as configured (its
classes, its confidence), over frames spread evenly through a clip from that camera and
measures:

- the share of frames with at least one detection of a counted class at or above the
  camera's ``confidence`` (a detection that may start a track);
- the median best score of those frames.

Detections are *weak* when fewer than :data:`MIN_DETECTED_SHARE` of the frames have one,
or when their median best score is within :data:`MIN_SCORE_MARGIN` of the threshold
(the model only just sees them). That is a warning, not an error: a clip of an empty
road at night is weak too, so the figures are printed for a person to judge, with what
the model card says the model is for.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.vision.detect.base import Detector
from agent.vision.videofile import VideoReader

#: Fewer frames than this share with a counted detection: weak.
MIN_DETECTED_SHARE = 0.2
#: A median best score less than this above the confidence threshold: weak.
MIN_SCORE_MARGIN = 0.15
#: Frames taken from the clip, evenly spread (all of them when it is shorter).
DEFAULT_SAMPLE = 120


@dataclass
class ClipFigures:
    """What a camera's model saw in a clip."""

    camera: str
    model: str
    clip: str
    frames: int
    frames_with_detection: int
    median_best_score: float           # over the frames with a detection; 0 when none
    confidence: float
    classes: list[str]

    @property
    def share(self) -> float:
        """Share of the sampled frames with a counted detection."""
        return self.frames_with_detection / self.frames if self.frames else 0.0

    @property
    def weak(self) -> bool:
        """See the module docstring."""
        return (self.share < MIN_DETECTED_SHARE
                or self.median_best_score < self.confidence + MIN_SCORE_MARGIN)

    def summary(self) -> str:
        """One line of figures."""
        return (f"{self.frames_with_detection} of {self.frames} frames "
                f"({100 * self.share:.0f} %) have a {'/'.join(self.classes)} detection "
                f">= {self.confidence:g}; median best score {self.median_best_score:.2f}")


def _best_score(detector: Detector, frame: np.ndarray, floor: float) -> float:
    """The best counted-class score in a frame (0.0 when none reaches ``floor``), decoded
    as the pipeline decodes it."""
    tensor, geo = detector.prepare(frame)  # type: ignore[attr-defined]
    dets = detector.decode(detector.infer(tensor), geo, floor)  # type: ignore[attr-defined]
    return float(dets.scores.max()) if len(dets) else 0.0


def check_clip(detector: Detector, clip: Path, camera: str, confidence: float,
               classes: list[str], sample: int = DEFAULT_SAMPLE) -> ClipFigures:
    """Run ``detector`` over up to ``sample`` frames spread through ``clip``.

    Raises :class:`agent.vision.videofile.VideoError` for a file that is not a video.
    """
    reader = VideoReader(clip)
    best: list[float] = []
    try:
        n = reader.integrity.expected or 0
        step = max(1, -(-n // sample)) if n else 1
        for k, (_i, img) in enumerate(reader.frames()):
            if k % step == 0:
                best.append(_best_score(detector, img, confidence))
                if len(best) >= sample:
                    break
    finally:
        reader.release()
    seen = [s for s in best if s >= confidence]
    return ClipFigures(camera, getattr(detector.card, "name", "?"), str(clip), len(best),
                       len(seen), statistics.median(seen) if seen else 0.0, confidence,
                       list(classes))


def fit_note(card: object) -> str:
    """What the model card says the model is fit for (its ``view`` and intended use)."""
    parts = []
    view = getattr(card, "view", None)
    if view:
        parts.append(f"view: {view}")
    use = getattr(card, "intended_use", "")
    if use:
        parts.append(f"intended use: {use}")
    return "; ".join(parts) or "the card says nothing of the view it is fit for"


def warning(figures: ClipFigures, card: object, card_path: Path | str) -> str:
    """The warning for weak detections: camera, figures, and the card's intended view."""
    return (f"camera {figures.camera}: weak detections in {figures.clip}: {figures.summary()}. "
            f"Check that model {figures.model} fits this camera's view ({card_path}: "
            f"{fit_note(card)}), that the clip is from this camera, and its confidence.")
