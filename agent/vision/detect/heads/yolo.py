"""YOLO-family heads: YOLOX (raw grid or decoded), YOLOv5 ``[1, N, 5 + C]`` and
YOLOv8/v11 ``[1, 4 + C, N]`` or its transpose."""

from __future__ import annotations

import numpy as np

from agent.vision.detect.heads.base import (
    Candidates,
    Head,
    batch_of_one,
    best_class,
    cxcywh_to_xyxy,
    grid,
    shape_text,
)


class ObjectnessHead(Head):
    """``[1, N, 5 + C]``: cx, cy, w, h, objectness, C class scores; score = obj × class."""

    format = "yolov5"

    def check(self) -> None:
        """Rank 3 (or 2), last dimension 5 + C."""
        (o,) = self.picked
        c = self.card.num_classes
        if len(o.shape) not in (2, 3) or o.shape[-1] not in (None, 5 + c):
            raise self.fail(f"with {c} classes expects [1, N, {5 + c}], output {o.name!r} is "
                            f"{shape_text(o.shape)}")

    def rows(self, raw: list[np.ndarray]) -> np.ndarray:
        """The ``(N, 5 + C)`` rows of the output."""
        rows = batch_of_one(raw[0], 2)
        if rows.shape[1] != 5 + self.card.num_classes:
            raise self.fail(f"expects rows of {5 + self.card.num_classes} values, output "
                            f"{self.names[0]!r} gave {list(raw[0].shape)}")
        return rows

    def boxes(self, rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """cx, cy, w, h of rows ``idx`` in input pixels."""
        return rows[idx, :4]

    def decode(self, raw: list[np.ndarray], wanted: np.ndarray, conf: float) -> Candidates:
        """Filter on objectness first (score = obj × class <= obj), then on the score."""
        rows = self.rows(raw)
        obj = self.maybe_sigmoid(rows[:, 4])
        m = np.flatnonzero(obj >= conf)
        cls, score = best_class(self.maybe_sigmoid(rows[m, 5:]) * obj[m, None], wanted)
        keep = score >= conf
        m, cls, score = m[keep], cls[keep], score[keep]
        if not len(m):
            return Candidates.empty()
        return Candidates(cxcywh_to_xyxy(self.boxes(rows, m)), score, cls)

    def scores(self, raw: list[np.ndarray]) -> list[np.ndarray]:
        """Objectness and class scores."""
        rows = self.rows(raw)
        return [self.maybe_sigmoid(rows[:, 4]), self.maybe_sigmoid(rows[:, 5:])]


class YoloxHead(ObjectnessHead):
    """YOLOX: as YOLOv5, but with ``decoded: false`` the boxes are raw grid offsets:
    centre = (offset + cell) × stride, size = exp(raw) × stride."""

    format = "yolox"

    def check(self) -> None:
        """As YOLOv5, and for raw offsets N must match the strides' anchor count."""
        super().check()
        self._grid = grid(self.card) if not self.card.output.decoded else None
        n = self.picked[0].shape[-2] if len(self.picked[0].shape) >= 2 else None
        if self._grid is not None and n is not None and n != len(self._grid):
            raise self.fail(self._anchor_text(n))

    def _anchor_text(self, n: int) -> str:
        w, h = self.card.input.size
        return (f"strides {list(self.card.output.strides)} at {w}x{h} give "
                f"{len(self._grid)} anchor points, output {self.names[0]!r} has {n}")

    def rows(self, raw: list[np.ndarray]) -> np.ndarray:
        """The rows, checked against the anchor grid."""
        rows = super().rows(raw)
        if self._grid is not None and len(rows) != len(self._grid):
            raise self.fail(self._anchor_text(len(rows)))
        return rows

    def boxes(self, rows: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """Decode raw grid offsets of rows ``idx`` (or take decoded boxes as they are)."""
        if self._grid is None:
            return rows[idx, :4]
        g = self._grid[idx]
        b = rows[idx, :4]
        return np.concatenate([(b[:, :2] + g[:, :2]) * g[:, 2:3],
                               np.exp(np.clip(b[:, 2:4], -10, 10)) * g[:, 2:3]], 1)


class Yolov8Head(Head):
    """YOLOv8/v11: ``[1, 4 + C, N]`` (or ``[1, N, 4 + C]``): cx, cy, w, h, C class scores,
    no objectness. Where both dimensions are 4 + C the channel-first layout is taken."""

    format = "yolov8"

    def check(self) -> None:
        """Rank 3 with one of the last two dimensions 4 + C."""
        (o,) = self.picked
        k = 4 + self.card.num_classes
        if len(o.shape) != 3 or not ({None, k} & {o.shape[1], o.shape[2]}):
            raise self.fail(f"with {self.card.num_classes} classes expects [1, {k}, N] or "
                            f"[1, N, {k}], output {o.name!r} is {shape_text(o.shape)}")

    def rows(self, raw: list[np.ndarray]) -> np.ndarray:
        """The ``(N, 4 + C)`` rows, whichever way round the model gives them."""
        out = batch_of_one(raw[0], 2)
        k = 4 + self.card.num_classes
        if out.shape[0] == k:
            return out.T
        if out.shape[1] == k:
            return out
        raise self.fail(f"expects [1, {k}, N] or [1, N, {k}], output {self.names[0]!r} gave "
                        f"{list(raw[0].shape)}")

    def decode(self, raw: list[np.ndarray], wanted: np.ndarray, conf: float) -> Candidates:
        """Best wanted class per anchor, thresholded."""
        rows = self.rows(raw)
        cls, score = best_class(self.maybe_sigmoid(rows[:, 4:]), wanted)
        m = np.flatnonzero(score >= conf)
        if not len(m):
            return Candidates.empty()
        return Candidates(cxcywh_to_xyxy(rows[m, :4]), score[m], cls[m])

    def scores(self, raw: list[np.ndarray]) -> list[np.ndarray]:
        """Class scores."""
        return [self.maybe_sigmoid(self.rows(raw)[:, 4:])]
