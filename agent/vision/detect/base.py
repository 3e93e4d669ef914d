"""What every detector backend shares: the result type, pre-processing and NMS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

from agent.settings.modelcard import InputSpec, ModelCard
from agent.vision.classes import ROAD_USER_CLASSES


@dataclass
class Detections:
    """Detections in frame pixels: ``boxes`` (N, 4) x1 y1 x2 y2, ``scores`` (N,), ``labels``
    (N,) indices into :data:`agent.vision.classes.ROAD_USER_CLASSES`."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    @staticmethod
    def empty() -> Detections:
        """No detections."""
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                          np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.scores)

    def class_names(self) -> list[str]:
        """Class name of each detection."""
        return [ROAD_USER_CLASSES[i] for i in self.labels]


class Detector(Protocol):
    """A vehicle detector: frames in, detections out."""

    card: ModelCard

    def detect(self, frame: np.ndarray) -> Detections:
        """Detect road users in a BGR frame."""
        ...


@dataclass
class Geometry:
    """How a frame was mapped to the input tensor (to map boxes back)."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    width: int
    height: int


def check_frame(frame: np.ndarray) -> None:
    """Refuse anything that is not a HxWx3 frame (ValueError)."""
    if frame is None or frame.ndim != 3 or frame.shape[2] != 3 or frame.size == 0:
        raise ValueError(f"expected a HxWx3 BGR frame, got shape "
                         f"{getattr(frame, 'shape', None)}")


def placement(w: int, h: int, spec: InputSpec) -> tuple[Geometry, int, int, int, int]:
    """Where a w x h frame goes in the card's input: its geometry and its picture area
    (left, top, width, height): centred at the largest scale that fits for a letterbox,
    the whole input for a stretch."""
    tw, th = spec.size
    if spec.resize == "letterbox":
        r = min(tw / w, th / h)
        nw, nh = round(w * r), round(h * r)
        left, top = (tw - nw) // 2, (th - nh) // 2
        return Geometry(r, r, left, top, w, h), left, top, nw, nh
    return Geometry(tw / w, th / h, 0.0, 0.0, w, h), 0, 0, tw, th


def preprocess(frame: np.ndarray, spec: InputSpec, buf: np.ndarray | None = None
               ) -> tuple[np.ndarray, Geometry]:
    """Resize (letterbox or stretch), reorder channels, normalise and lay out a frame.

    Returns a batch-of-one tensor in the card's layout and dtype.
    """
    check_frame(frame)
    h, w = frame.shape[:2]
    tw, th = spec.size
    geo, left, top, nw, nh = placement(w, h, spec)
    if spec.resize == "letterbox":
        img = np.full((th, tw, 3), spec.pad_value, np.uint8) if buf is None else buf
        if buf is not None:
            img[:] = spec.pad_value
        img[top:top + nh, left:left + nw] = cv2.resize(frame, (nw, nh),
                                                       interpolation=cv2.INTER_LINEAR)
    else:
        img = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
    if spec.channels == "RGB":
        img = img[:, :, ::-1]
    if spec.dtype == "uint8":
        x = np.ascontiguousarray(img)
    else:
        x = img.astype(np.float32)
        if spec.mean != (0.0, 0.0, 0.0) or spec.std != (1.0, 1.0, 1.0):
            x = (x - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    if spec.layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None]), geo


class Letterbox:
    """:func:`preprocess` for a stream of same-sized frames, fast for every card.

    The padded canvas is filled once per frame size (only the picture area changes); the
    frame is resized into it in place (letterbox: its picture area; stretch: all of it),
    then made the card's tensor in one or two passes: for float NCHW, OpenCV's
    ``blobFromImage`` (channel swap, mean, scale and layout at once), with a per-channel
    std as one multiply per plane; for NHWC, the channels swapped in place and the
    normalisation ``(v - mean) / std`` of each channel as one table lookup per pixel
    (``cv2.LUT``: a uint8 value has 256 possible results per channel, computed once). The
    result equals :func:`preprocess`'s to float32 rounding; each call returns a new
    array, so a tensor handed on is never overwritten by the next frame. One instance
    keeps a canvas: it serves one thread (one per detector, called from the thread that
    submits its frames).
    """

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        tw, th = spec.size
        self.canvas = np.full((th, tw, 3), spec.pad_value, np.uint8)
        self.swapped = np.empty_like(self.canvas)
        self._key: tuple[int, int] | None = None
        self._geo: Geometry | None = None
        # the card's std is finite and never near 0 (InputSpec checks it)
        values = np.arange(256, dtype=np.float32)[:, None]
        self._lut = ((values - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
                     ).astype(np.float32).reshape(256, 1, 3)
        uniform = len(set(spec.std)) == 1
        self._scale = 1.0 / spec.std[0] if uniform else 1.0
        self._planes = None if uniform else (1.0 / np.array(spec.std, np.float32)).reshape(3, 1, 1)

    def _place(self, frame: np.ndarray) -> None:
        """Resize the frame into the canvas (only its picture area changes)."""
        h, w = frame.shape[:2]
        if self._key != (w, h):
            self._geo, left, top, nw, nh = placement(w, h, self.spec)
            self.canvas[:] = self.spec.pad_value
            self._roi = (slice(top, top + nh), slice(left, left + nw), (nw, nh))
            self._key = (w, h)
        ys, xs, size = self._roi
        if size == (w, h):
            self.canvas[ys, xs] = frame
        else:
            cv2.resize(frame, size, dst=self.canvas[ys, xs], interpolation=cv2.INTER_LINEAR)

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, Geometry]:
        """Frame → batch-of-one input tensor and its geometry."""
        spec = self.spec
        check_frame(frame)
        if frame.dtype != np.uint8:
            return preprocess(frame, spec)           # not a camera's frame
        self._place(frame)
        if spec.layout == "NCHW" and spec.dtype == "float32":
            # OpenCV's blob: channel swap, mean, one scale and the layout in one pass (a
            # table lookup, then a copy per plane, measured slower); a per-channel std is
            # one multiply per plane
            blob = cv2.dnn.blobFromImage(self.canvas, self._scale, mean=spec.mean,
                                         swapRB=spec.channels == "RGB", crop=False)
            if self._planes is not None:
                blob[0] *= self._planes
            return blob, self._geo  # type: ignore[return-value]
        img = self.canvas
        if spec.channels == "RGB":
            img = cv2.cvtColor(self.canvas, cv2.COLOR_BGR2RGB, dst=self.swapped)
        hwc = img.copy() if spec.dtype == "uint8" else cv2.LUT(img, self._lut)
        if spec.layout == "NHWC":
            return hwc[None], self._geo  # type: ignore[return-value]
        return np.ascontiguousarray(hwc.transpose(2, 0, 1))[None], self._geo  # type: ignore[return-value]


def to_frame(boxes: np.ndarray, geo: Geometry) -> np.ndarray:
    """Map x1 y1 x2 y2 boxes from input-tensor pixels back to frame pixels, clipped."""
    out = boxes.astype(np.float32).copy()
    out[:, [0, 2]] = (out[:, [0, 2]] - geo.pad_x) / geo.scale_x
    out[:, [1, 3]] = (out[:, [1, 3]] - geo.pad_y) / geo.scale_y
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, geo.width - 1)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, geo.height - 1)
    return out


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of x1 y1 x2 y2 boxes: (len(a), len(b))."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best first.

    Runs in OpenCV (C++); the result is the same as the textbook greedy loop.
    """
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    xywh = np.column_stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0],
                            boxes[:, 3] - boxes[:, 1]]).astype(np.float64)
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), scores.astype(np.float64).tolist(), 0.0, float(iou))
    keep = np.asarray(keep, np.int64).reshape(-1)
    return keep[np.argsort(-scores[keep], kind="stable")]


def class_aware_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou: float,
                    merge_iou: float = 1.0) -> np.ndarray:
    """NMS within each class, then drop cross-class duplicates above ``merge_iou``.

    The second step stops one vehicle scored both "car" and "truck" from becoming two
    tracks (and two counts); it keeps the higher-scoring class.
    """
    if len(boxes) == 0:
        return np.zeros(0, np.int64)
    offset = (labels.astype(np.float32) * (float(boxes.max()) + 1.0))[:, None]
    keep = nms(boxes + offset, scores, iou)
    if merge_iou < 1.0 and len(keep) > 1:
        keep = keep[nms(boxes[keep], scores[keep], merge_iou)]
    return keep


def map_classes(card: ModelCard, wanted: set[str]) -> np.ndarray:
    """Lookup table model class id → road-user index, -1 where not wanted."""
    table = np.full(card.num_classes, -1, np.int64)
    for mid, name in card.class_map.items():
        if name in wanted:
            table[mid] = ROAD_USER_CLASSES.index(name)
    return table
