"""``agent validate --check-models``: run a model once on a synthetic frame and check that
what its head reads makes sense for the card.

Shapes alone let a wrong card through (wrong format, strides or outputs, logits read as
scores), which then counts garbage. Here one deterministic frame goes through prepare →
infer → the full decode, and:

- every score the head reads (before any threshold) is finite and within [0, 1];
- every candidate box (threshold 0) is finite, and those scoring at least
  :data:`BOX_CHECK_SCORE` (boxes the tracker would see) lie inside the input, within a
  tolerance (real detectors place edge boxes a little outside);
- the pipeline's own decode runs.

Any failure is one :class:`ModelError` line naming the card.
"""

from __future__ import annotations

import cv2
import numpy as np

from agent.settings.modelcard import ModelError
from agent.vision.detect.detector import ModelDetector

#: how far (fraction of the input size) a good box may reach past the input's edge
BOX_TOLERANCE = 0.25
#: scores may exceed [0, 1] by this much (dequantisation, float rounding)
SCORE_TOLERANCE = 0.01
#: boxes of candidates scoring at least this are checked for lying inside the input (the
#: pipeline's default low confidence: the lowest score whose box reaches the tracker)
BOX_CHECK_SCORE = 0.1


def synthetic_frame(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A deterministic BGR test frame: grey noise with a road, and a few filled shapes."""
    rng = np.random.default_rng(seed)
    img = rng.integers(60, 200, (height, width, 3), dtype=np.uint8)
    img = cv2.GaussianBlur(img, (5, 5), 0)
    cv2.rectangle(img, (0, height // 3), (width - 1, 2 * height // 3), (70, 70, 70), -1)
    for _ in range(6):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(width // 12, width // 4)), int(rng.integers(height // 16,
                                                                            height // 6))
        color = tuple(int(v) for v in rng.integers(0, 256, 3))
        cv2.rectangle(img, (x, y), (x + w, y + h), color, -1)
        cv2.circle(img, (x + w // 4, y + h), max(2, h // 4), (20, 20, 20), -1)
    return img


def check_model(det: ModelDetector) -> str:
    """Run ``det`` on a synthetic frame and check its outputs (see the module docstring).

    Returns a one-line summary; raises :class:`ModelError` (one line) on any failure.
    """
    card = det.card
    w, h = card.input.size
    frame = synthetic_frame(w, h)
    tensor, geo = det.prepare(frame)
    raw = det.infer(tensor)
    where = f"{card.card_path}: check run ({card.output.format} head, outputs {det.head.names})"
    try:
        det.head.check_raw(raw)
        score_sets = det.head.scores(raw)
    except Exception as e:  # any failure reading the outputs is the card's fault
        raise det.error("cannot read the model's scores", e) from None
    lo = min((float(np.min(s)) for s in score_sets if s.size), default=0.0)
    hi = max((float(np.max(s)) for s in score_sets if s.size), default=0.0)
    if not all(np.isfinite(s).all() for s in score_sets):
        raise ModelError(f"{where}: scores are not finite (NaN or inf)")
    if lo < -SCORE_TOLERANCE or hi > 1 + SCORE_TOLERANCE:
        hint = " (logits? set output.sigmoid: true)" if lo < -SCORE_TOLERANCE else ""
        raise ModelError(f"{where}: scores range {lo:.3g}..{hi:.3g}, outside [0, 1]: wrong "
                         f"output.format or outputs{hint}")
    every = np.arange(card.num_classes)
    cand = det.candidates(raw, every, 0.0)
    if len(cand) and not np.isfinite(cand.boxes).all():
        raise ModelError(f"{where}: boxes are not finite (NaN or inf)")
    if (cand.scores >= BOX_CHECK_SCORE).any():
        b = cand.boxes[cand.scores >= BOX_CHECK_SCORE]
        tol = BOX_TOLERANCE * max(w, h)
        out = (b[:, [0, 2]].min() < -tol or b[:, [0, 2]].max() > w + tol
               or b[:, [1, 3]].min() < -tol or b[:, [1, 3]].max() > h + tol)
        if out:
            raise ModelError(f"{where}: boxes scoring >= {BOX_CHECK_SCORE} reach "
                             f"x {b[:, [0, 2]].min():.0f}..{b[:, [0, 2]].max():.0f}, "
                             f"y {b[:, [1, 3]].min():.0f}..{b[:, [1, 3]].max():.0f}, outside "
                             f"the {w}x{h} input: wrong output.format, coords or strides")
    dets = det.decode(raw, geo, det.confidence)
    return (f"ran a synthetic {w}x{h} frame: scores {lo:.2f}..{hi:.2f}, {len(cand)} candidates, "
            f"{len(dets)} detections at confidence {det.confidence}")
