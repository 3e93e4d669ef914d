"""Detectors behind one interface: ``load_detector(card_path, ...)`` builds a
:class:`ModelDetector` from the model card: the card's ``backend`` picks the runtime
(onnxruntime or TFLite, ``detect.runtime``) and its ``output.format`` the head (YOLOX,
YOLOv5, YOLOv8/11, end-to-end, GFL/NanoDet, SSD; ``detect.heads``). Any head runs on any
runtime."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from agent.settings.modelerror import ModelError

if TYPE_CHECKING:
    from agent.vision.detect.base import Detections, Detector
    from agent.vision.detect.detector import ModelDetector
    from agent.vision.detect.isolated import ModelHosts
    from agent.vision.detect.runtime import SharedRuntimes

__all__ = ["Detections", "Detector", "ModelDetector", "ModelError", "SharedRuntimes",
           "load_detector"]

#: names this package gives, imported on first use: the model process
#: (``detect.host``) imports a runtime from here without OpenCV and the card schema
_LAZY = {"Detections": "base", "Detector": "base", "ModelDetector": "detector",
         "SharedRuntimes": "runtime"}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_detector(card_path: Path, classes: set[str] | None = None, confidence: float = 0.35,
                  nms_iou: float = 0.5, merge_iou: float = 0.8, threads: int = 1,
                  shared: SharedRuntimes | ModelHosts | None = None,
                  run_timeout_s: float | None = None) -> ModelDetector:
    """Load the model a card describes, checked against the card, ready to ``detect``.

    With ``shared``, cameras that use the same card share one loaded model (see
    :class:`SharedRuntimes`); with :class:`~agent.vision.detect.isolated.ModelHosts`, in
    a process of its own (``run_timeout_s``: its deadline for one inference)."""
    from agent.settings.modelcard import load_card
    from agent.vision.classes import DEFAULT_COUNTED
    from agent.vision.detect.detector import ModelDetector

    card = load_card(Path(card_path))
    wanted = set(classes or DEFAULT_COUNTED)
    if shared is None:
        runtime = None
    elif run_timeout_s is not None:
        runtime = shared.get(card, threads, run_timeout_s)  # type: ignore[call-arg]
    else:
        runtime = shared.get(card, threads)
    return ModelDetector(card, wanted, confidence, nms_iou, merge_iou, threads, runtime)
