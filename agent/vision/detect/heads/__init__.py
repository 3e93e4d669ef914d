"""Heads: how a model's output tensors become boxes, scores and classes.

The registry maps a card's ``output.format`` to its head; every head works on every
runtime (``agent.vision.detect.runtime``), which hands it float32 arrays.
"""

from __future__ import annotations

from agent.settings.modelcard import ModelCard
from agent.vision.detect.heads.base import Candidates, Head
from agent.vision.detect.heads.e2e import E2eHead
from agent.vision.detect.heads.gfl import GflHead
from agent.vision.detect.heads.ssd import SsdHead
from agent.vision.detect.heads.yolo import ObjectnessHead, Yolov8Head, YoloxHead
from agent.vision.detect.runtime import TensorInfo

#: card ``output.format`` → head
HEADS: dict[str, type[Head]] = {
    "yolox": YoloxHead,
    "yolov5": ObjectnessHead,
    "yolov8": Yolov8Head,
    "e2e": E2eHead,
    "gfl": GflHead,
    "ssd": SsdHead,
}


def make_head(card: ModelCard, outputs: list[TensorInfo]) -> Head:
    """The card's head, bound to the model's outputs and checked against their shapes."""
    return HEADS[card.output.format](card, outputs)


__all__ = ["HEADS", "Candidates", "Head", "make_head"]
