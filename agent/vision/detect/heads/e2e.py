"""End-to-end detections ``[1, N, 6]``: x1, y1, x2, y2, score, class (YOLOv10-style and
NMS-included exports); boxes in input pixels or normalised 0-1 (``coords``)."""

from __future__ import annotations

import numpy as np

from agent.vision.detect.heads.base import Candidates, Head, batch_of_one, shape_text


class E2eHead(Head):
    """See the module docstring; rows with a class id outside the card's are padding."""

    format = "e2e"

    def check(self) -> None:
        """Rank 3 (or 2) with 6 values per detection."""
        (o,) = self.picked
        if len(o.shape) not in (2, 3) or o.shape[-1] not in (None, 6):
            raise self.fail(f"expects [1, N, 6] (x1, y1, x2, y2, score, class), output "
                            f"{o.name!r} is {shape_text(o.shape)}")

    def rows(self, raw: list[np.ndarray]) -> np.ndarray:
        """The ``(N, 6)`` rows."""
        rows = batch_of_one(raw[0], 2)
        if rows.shape[1] != 6:
            raise self.fail(f"expects [1, N, 6], output {self.names[0]!r} gave "
                            f"{list(raw[0].shape)}")
        return rows

    def decode(self, raw: list[np.ndarray], wanted: np.ndarray, conf: float) -> Candidates:
        """Rows of wanted classes scoring ``>= conf``, boxes in input pixels."""
        rows = self.rows(raw)
        score = self.maybe_sigmoid(rows[:, 4])
        cls = np.rint(rows[:, 5]).astype(np.int64)
        ok = (cls >= 0) & (cls < self.card.num_classes)
        keep = np.zeros(len(rows), bool)
        keep[ok] = np.isin(cls[ok], wanted) & (score[ok] >= conf)
        m = np.flatnonzero(keep)
        if not len(m):
            return Candidates.empty()
        boxes = rows[m, :4].astype(np.float32)
        if self.card.output.coords == "normalized":
            w, h = self.card.input.size
            boxes = boxes * np.array([w, h, w, h], np.float32)
        return Candidates(boxes, score[m].astype(np.float32), cls[m])

    def scores(self, raw: list[np.ndarray]) -> list[np.ndarray]:
        """The score column."""
        return [self.maybe_sigmoid(self.rows(raw)[:, 4])]
