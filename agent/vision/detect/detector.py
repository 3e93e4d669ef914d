"""A detector is a runtime × a head: the runtime runs the model file, the head turns its
outputs into candidates; this class adds pre-processing, class filtering, NMS and the
mapping back to frame pixels, and turns any decode-time failure into one-line
:class:`ModelError`."""

from __future__ import annotations

import numpy as np

from agent.settings.modelcard import ModelCard, ModelError
from agent.vision.detect.base import (
    Detections,
    Geometry,
    Letterbox,
    class_aware_nms,
    map_classes,
    to_frame,
)
from agent.vision.detect.heads import Candidates, make_head
from agent.vision.detect.runtime import (
    Runtime,
    RuntimeUnavailable,
    TensorInfo,
    open_runtime,
    to_input,
)

#: exceptions a head's numpy code raises on arrays that do not fit the card
DECODE_ERRORS = (ValueError, IndexError, TypeError, ArithmeticError, KeyError, AssertionError)


def one_line(e: BaseException) -> str:
    """An exception as one line: its type where the text alone is unclear."""
    text = (str(e).strip().splitlines() or [""])[0]
    return text if isinstance(e, ModelError) else f"{type(e).__name__}: {text}"


def check_input(card: ModelCard, inputs: list[TensorInfo]) -> TensorInfo:
    """The model's single input, checked against the card's name, layout, size and dtype."""
    if len(inputs) != 1:
        raise ModelError(f"{card.card_path}: model has {len(inputs)} inputs, expected 1")
    inp = inputs[0]
    if card.input.name and card.input.name != inp.name and card.input.name not in inp.aliases:
        raise ModelError(f"{card.card_path}: card says input {card.input.name!r}, "
                         f"model's input is {inp.name!r}")
    w, h = card.input.size
    want = [1, 3, h, w] if card.input.layout == "NCHW" else [1, h, w, 3]
    got = list(inp.shape)
    if len(got) != 4 or any(g is not None and g != x for g, x in zip(got, want, strict=True)):
        dims = [("?" if g is None else g) for g in got]
        raise ModelError(f"{card.card_path}: card says input {card.input.layout} {want}, "
                         f"model's input {inp.name!r} is {dims}")
    if card.input.dtype == "uint8" and inp.dtype in ("float32", "float16"):
        raise ModelError(f"{card.card_path}: card says input dtype uint8, model's input "
                         f"{inp.name!r} is {inp.dtype}: set input.dtype: float32 (with the "
                         f"mean and std the model was trained with)")
    if inp.dtype not in ("float32", "float16") and not inp.quantised \
            and inp.dtype != card.input.dtype:
        raise ModelError(f"{card.card_path}: card says input dtype {card.input.dtype}, "
                         f"model's input {inp.name!r} is {inp.dtype}")
    return inp


class ModelDetector:
    """Runs a model through its runtime and head; returns road-user detections.

    The pipeline calls :meth:`prepare`, :meth:`infer` (possibly on another thread, while
    :meth:`decode` handles the previous frame) and :meth:`decode` separately.
    """

    def __init__(self, card: ModelCard, classes: set[str], confidence: float = 0.35,
                 nms_iou: float = 0.5, merge_iou: float = 0.8, threads: int = 1,
                 runtime: Runtime | None = None) -> None:
        self.card = card
        self.confidence = confidence
        self.nms_iou = nms_iou
        self.merge_iou = merge_iou
        self.runtime = runtime or open_runtime(card, threads)
        self.input = check_input(card, self.runtime.inputs)
        self.head = make_head(card, self.runtime.outputs)
        self.runtime.bind(self.head.names)
        self.table = map_classes(card, classes)
        self.wanted = np.flatnonzero(self.table >= 0)  # model ids we keep
        self._letterbox = Letterbox(card.input)

    def error(self, what: str, e: BaseException) -> ModelError:
        """A one-line ModelError about this model (what failed, and why)."""
        if isinstance(e, ModelError):
            return e
        return ModelError(f"{self.card.card_path}: {what} ({self.card.output.format} head, "
                          f"outputs {self.head.names}): {one_line(e)}")

    def prepare(self, frame: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """Frame → input tensor in the model's dtype (and how to map boxes back)."""
        tensor, geo = self._letterbox(frame)
        return to_input(tensor, self.input), geo

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Run the model on a prepared tensor; the head's outputs as float32 arrays.
        Thread-safe with respect to :meth:`decode` of another frame."""
        try:
            return self.runtime.run(tensor)
        except RuntimeUnavailable:  # the model process is down: not the model's fault
            raise
        except Exception as e:  # any other runtime failure is a model error
            raise self.error("the model failed to run", e) from None

    def candidates(self, raw: list[np.ndarray], wanted: np.ndarray, conf: float) -> Candidates:
        """The head's candidates, every failure a one-line ModelError."""
        try:
            self.head.check_raw(raw)
            return self.head.decode(raw, wanted, conf)
        except (*DECODE_ERRORS, ModelError) as e:
            raise self.error("cannot decode the model's output", e) from None

    def decode(self, raw: list[np.ndarray], geo: Geometry, confidence: float | None = None
               ) -> Detections:
        """Raw outputs → filtered, NMS'd detections in frame pixels."""
        conf = self.confidence if confidence is None else confidence
        c = self.candidates(raw, self.wanted, conf)
        if not len(c):
            return Detections.empty()
        try:
            labels = self.table[c.classes]
            keep = class_aware_nms(c.boxes, c.scores, labels, self.nms_iou, self.merge_iou)
            boxes = to_frame(c.boxes[keep], geo)
        except DECODE_ERRORS as e:
            raise self.error("cannot decode the model's output", e) from None
        good = (boxes[:, 2] - boxes[:, 0] >= 2) & (boxes[:, 3] - boxes[:, 1] >= 2)
        return Detections(boxes[good], c.scores[keep][good].astype(np.float32),
                          labels[keep][good])

    def detect(self, frame: np.ndarray, confidence: float | None = None) -> Detections:
        """Detect road users in a BGR frame."""
        tensor, geo = self.prepare(frame)
        return self.decode(self.infer(tensor), geo, confidence)
