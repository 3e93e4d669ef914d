"""Detectors behind one interface: ``load_detector(card_path, ...)`` picks the backend from
the model card (onnxruntime for YOLO-family exports, tflite-runtime for SSD-style models)."""

from __future__ import annotations

from pathlib import Path

from agent.settings.modelcard import ModelError, load_card
from agent.vision.classes import DEFAULT_COUNTED
from agent.vision.detect.base import Detections, Detector

__all__ = ["Detections", "Detector", "ModelError", "load_detector"]


def load_detector(card_path: Path, classes: set[str] | None = None, confidence: float = 0.35,
                  nms_iou: float = 0.5, merge_iou: float = 0.8, threads: int = 1) -> Detector:
    """Load the model a card describes, checked against the card, ready to ``detect``."""
    card = load_card(Path(card_path))
    wanted = set(classes or DEFAULT_COUNTED)
    if card.backend == "onnxruntime":
        from agent.vision.detect.onnx_yolo import OnnxYoloDetector

        return OnnxYoloDetector(card, wanted, confidence, nms_iou, merge_iou, threads)
    from agent.vision.detect.tflite_ssd import TfliteSsdDetector

    return TfliteSsdDetector(card, wanted, confidence, nms_iou, merge_iou, threads)
