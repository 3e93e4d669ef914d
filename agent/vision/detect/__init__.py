"""Detectors behind one interface: ``load_detector(card_path, ...)`` builds a
:class:`ModelDetector` from the model card: the card's ``backend`` picks the runtime
(onnxruntime or TFLite, ``detect.runtime``) and its ``output.format`` the head (YOLOX,
YOLOv5, YOLOv8/11, end-to-end, GFL/NanoDet, SSD; ``detect.heads``). Any head runs on any
runtime."""

from __future__ import annotations

from pathlib import Path

from agent.settings.modelcard import ModelError, load_card
from agent.vision.classes import DEFAULT_COUNTED
from agent.vision.detect.base import Detections, Detector
from agent.vision.detect.detector import ModelDetector
from agent.vision.detect.runtime import SharedRuntimes

__all__ = ["Detections", "Detector", "ModelDetector", "ModelError", "SharedRuntimes",
           "load_detector"]


def load_detector(card_path: Path, classes: set[str] | None = None, confidence: float = 0.35,
                  nms_iou: float = 0.5, merge_iou: float = 0.8, threads: int = 1,
                  shared: SharedRuntimes | None = None) -> ModelDetector:
    """Load the model a card describes, checked against the card, ready to ``detect``.

    With ``shared``, cameras that use the same card share one loaded model (see
    :class:`SharedRuntimes`)."""
    card = load_card(Path(card_path))
    wanted = set(classes or DEFAULT_COUNTED)
    runtime = shared.get(card, threads) if shared is not None else None
    return ModelDetector(card, wanted, confidence, nms_iou, merge_iou, threads, runtime)
