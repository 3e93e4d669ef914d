"""tflite-runtime backend for SSD-style models (boxes, classes, scores, count outputs)."""

from __future__ import annotations

import numpy as np

from agent.settings.modelcard import ModelCard, ModelError
from agent.vision.detect.base import (
    Detections,
    Geometry,
    class_aware_nms,
    map_classes,
    preprocess,
    to_frame,
)


def _interpreter(path: str, threads: int):
    try:
        from tflite_runtime.interpreter import Interpreter
    except ImportError:  # pragma: no cover - depends on the platform's wheel
        try:
            from ai_edge_litert.interpreter import Interpreter  # type: ignore[no-redef]
        except ImportError:
            raise ModelError("no TFLite runtime installed: pip install tflite-runtime "
                             "(or ai-edge-litert where tflite-runtime has no wheel)") from None
    return Interpreter(model_path=path, num_threads=threads)


class TfliteSsdDetector:
    """Runs an SSD-style TFLite model whose graph already does box decoding and NMS."""

    def __init__(self, card: ModelCard, classes: set[str], confidence: float = 0.35,
                 nms_iou: float = 0.5, merge_iou: float = 0.8, threads: int = 1) -> None:
        self.card = card
        self.confidence = confidence
        self.nms_iou = nms_iou
        self.merge_iou = merge_iou
        try:
            self.interp = _interpreter(str(card.file), threads)
            self.interp.allocate_tensors()
        except ModelError:
            raise
        except Exception as e:
            raise ModelError(f"{card.card_path}: cannot load {card.file} with the TFLite "
                             f"runtime: {e}") from None
        self.table = map_classes(card, classes)
        self._check_shapes()

    def _check_shapes(self) -> None:
        card = self.card
        inp = self.interp.get_input_details()
        if len(inp) != 1:
            raise ModelError(f"{card.card_path}: model has {len(inp)} inputs, expected 1")
        w, h = card.input.size
        want = [1, 3, h, w] if card.input.layout == "NCHW" else [1, h, w, 3]
        if list(inp[0]["shape"]) != want:
            raise ModelError(f"{card.card_path}: card says input {card.input.layout} {want}, "
                             f"model's input is {list(inp[0]['shape'])}")
        dtype = np.dtype(inp[0]["dtype"]).name
        if dtype != card.input.dtype:
            raise ModelError(f"{card.card_path}: card says input dtype {card.input.dtype}, "
                             f"model's is {dtype}")
        self.input_index = inp[0]["index"]
        outs = self.interp.get_output_details()
        if len(outs) != 4:
            raise ModelError(f"{card.card_path}: SSD format expects 4 outputs (boxes, classes, "
                             f"scores, count), model has {len(outs)}")
        ib, ic, isc, icnt = card.output.ssd_order
        shapes = [list(o["shape"]) for o in outs]
        if len(shapes[ib]) != 3 or shapes[ib][2] != 4 or len(shapes[ic]) != 2 \
                or len(shapes[isc]) != 2 or shapes[icnt] not in ([1], []):
            raise ModelError(f"{card.card_path}: with ssd_order {card.output.ssd_order} the "
                             f"outputs should be boxes [1,N,4], classes [1,N], scores [1,N], "
                             f"count [1]; model gives {shapes}")
        self.out_index = [outs[i]["index"] for i in (ib, ic, isc, icnt)]

    def prepare(self, frame: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """Frame → input tensor (and how to map boxes back)."""
        return preprocess(frame, self.card.input)

    def infer(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Run the model; returns boxes, classes, scores, count."""
        self.interp.set_tensor(self.input_index, tensor)
        self.interp.invoke()
        return [self.interp.get_tensor(i) for i in self.out_index]

    def decode(self, raw: list[np.ndarray], geo: Geometry, confidence: float | None = None
               ) -> Detections:
        """SSD outputs → detections in frame pixels (filtered by class and score)."""
        conf = self.confidence if confidence is None else confidence
        boxes, classes, scores, count = raw
        n = int(np.asarray(count).reshape(-1)[0]) if np.asarray(count).size else len(scores[0])
        n = max(0, min(n, boxes.shape[1]))
        b, c, s = boxes[0, :n], classes[0, :n].astype(np.int64), scores[0, :n].astype(np.float32)
        valid = (c >= 0) & (c < self.card.num_classes)
        b, c, s = b[valid], c[valid], s[valid]
        labels = self.table[c]
        m = (labels >= 0) & (s >= conf)
        if not m.any():
            return Detections.empty()
        b, s, labels = b[m], s[m], labels[m]
        w, h = self.card.input.size
        xyxy = np.stack([b[:, 1] * w, b[:, 0] * h, b[:, 3] * w, b[:, 2] * h], 1)
        keep = class_aware_nms(xyxy, s, labels, self.nms_iou, self.merge_iou)
        return Detections(to_frame(xyxy[keep], geo), s[keep], labels[keep])

    def detect(self, frame: np.ndarray, confidence: float | None = None) -> Detections:
        """Detect road users in a BGR frame."""
        tensor, geo = self.prepare(frame)
        return self.decode(self.infer(tensor), geo, confidence)
