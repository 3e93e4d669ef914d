"""onnxruntime backend for YOLO-family exports: YOLOX, YOLOv5 and YOLOv8/v11 heads."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from agent.settings.modelcard import ModelCard, ModelError
from agent.vision.detect.base import (
    Detections,
    Geometry,
    Letterbox,
    class_aware_nms,
    map_classes,
    to_frame,
)


class OnnxYoloDetector:
    """Runs a YOLO-family ONNX model on CPU and returns road-user detections."""

    def __init__(self, card: ModelCard, classes: set[str], confidence: float = 0.35,
                 nms_iou: float = 0.5, merge_iou: float = 0.8, threads: int = 1) -> None:
        self.card = card
        self.confidence = confidence
        self.nms_iou = nms_iou
        self.merge_iou = merge_iou
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(card.file), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"{card.card_path}: cannot load {card.file} with onnxruntime: "
                             f"{str(e).splitlines()[0]}") from None
        self._check_shapes()
        self.table = map_classes(card, classes)
        self.wanted = np.flatnonzero(self.table >= 0)  # model ids we keep
        self._grid: np.ndarray | None = None
        self._letterbox = Letterbox(card.input)

    def _check_shapes(self) -> None:
        card = self.card
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"{card.card_path}: model has {len(inputs)} inputs, expected 1")
        inp = inputs[0]
        self.input_name = inp.name
        if card.input.name and card.input.name != inp.name:
            raise ModelError(f"{card.card_path}: card says input {card.input.name!r}, "
                             f"model's input is {inp.name!r}")
        w, h = card.input.size
        want = [1, 3, h, w] if card.input.layout == "NCHW" else [1, h, w, 3]
        got = inp.shape
        if len(got) != 4 or any(isinstance(g, int) and g != x for g, x in zip(got, want, strict=False)):
            raise ModelError(f"{card.card_path}: card says input {card.input.layout} {want}, "
                             f"model's input {inp.name!r} is {got}")
        outs = self.session.get_outputs()
        shape = outs[0].shape
        c = card.num_classes
        fmt = card.output.format
        ok = len(shape) == 3
        if ok and fmt in ("yolox", "yolov5"):
            ok = shape[2] == 5 + c
        elif ok and fmt == "yolov8":
            ok = 4 + c in (shape[1], shape[2])
        if not ok:
            expect = {"yolox": f"[1, N, {5 + c}]", "yolov5": f"[1, N, {5 + c}]",
                      "yolov8": f"[1, {4 + c}, N]"}[fmt]
            raise ModelError(f"{card.card_path}: output format {fmt} with {c} classes expects "
                             f"{expect}, model's output {outs[0].name!r} is {shape}")
        self.output_name = outs[0].name

    def _yolox_grid(self, n: int) -> np.ndarray:
        if self._grid is None or len(self._grid) != n:
            w, h = self.card.input.size
            cells = []
            for s in self.card.output.strides:
                gy, gx = np.meshgrid(np.arange(h // s), np.arange(w // s), indexing="ij")
                cells.append(np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, s)], 1))
            grid = np.concatenate(cells).astype(np.float32)
            if len(grid) != n:
                raise ModelError(f"{self.card.card_path}: strides {self.card.output.strides} at "
                                 f"{w}x{h} give {len(grid)} anchors, model outputs {n}")
            self._grid = grid
        return self._grid

    def infer(self, tensor: np.ndarray) -> np.ndarray:
        """Run the model on a pre-processed tensor; returns its raw first output."""
        return self.session.run([self.output_name], {self.input_name: tensor})[0]

    def prepare(self, frame: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """Frame → input tensor (and how to map boxes back)."""
        return self._letterbox(frame)

    def decode(self, raw: np.ndarray, geo: Geometry, confidence: float | None = None
               ) -> Detections:
        """Raw model output → filtered, NMS'd detections in frame pixels."""
        conf = self.confidence if confidence is None else confidence
        fmt = self.card.output.format
        out = raw[0]
        c = self.card.num_classes
        wanted = self.wanted
        if fmt == "yolov8":
            if out.shape[0] == 4 + c and out.shape[1] != 4 + c:
                out = out.T
            cls_scores = out[:, 4:][:, wanted]
            best = cls_scores.argmax(1)
            score = cls_scores[np.arange(len(best)), best]
            m = np.flatnonzero(score >= conf)
            boxes_c, score, best = out[m, :4], score[m], best[m]
        else:
            # score = objectness x class score <= objectness: filter on it first (cheap)
            m = np.flatnonzero(out[:, 4] >= conf)
            rows = out[m]
            cls_scores = rows[:, 5:][:, wanted] * rows[:, 4:5]
            best = cls_scores.argmax(1) if len(rows) else np.zeros(0, np.int64)
            score = cls_scores[np.arange(len(best)), best]
            keep = score >= conf
            m, rows, score, best = m[keep], rows[keep], score[keep], best[keep]
            boxes_c = rows[:, :4]
            if fmt == "yolox" and not self.card.output.decoded:
                grid = self._yolox_grid(len(out))[m]
                boxes_c = np.concatenate([(boxes_c[:, :2] + grid[:, :2]) * grid[:, 2:3],
                                          np.exp(np.clip(boxes_c[:, 2:4], -10, 10))
                                          * grid[:, 2:3]], 1)
        if not len(score):
            return Detections.empty()
        bc, mid = boxes_c, self.wanted[best]
        xyxy = np.stack([bc[:, 0] - bc[:, 2] / 2, bc[:, 1] - bc[:, 3] / 2,
                         bc[:, 0] + bc[:, 2] / 2, bc[:, 1] + bc[:, 3] / 2], 1)
        labels = self.table[mid]
        keep = class_aware_nms(xyxy, score, labels, self.nms_iou, self.merge_iou)
        boxes = to_frame(xyxy[keep], geo)
        good = (boxes[:, 2] - boxes[:, 0] >= 2) & (boxes[:, 3] - boxes[:, 1] >= 2)
        return Detections(boxes[good], score[keep][good].astype(np.float32), labels[keep][good])

    def detect(self, frame: np.ndarray, confidence: float | None = None) -> Detections:
        """Detect road users in a BGR frame."""
        tensor, geo = self.prepare(frame)
        return self.decode(self.infer(tensor), geo, confidence)
