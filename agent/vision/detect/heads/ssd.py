"""SSD-style post-processed outputs: boxes ``[1, N, 4]`` (ymin, xmin, ymax, xmax, 0-1 of
the input), classes ``[1, N]``, scores ``[1, N]`` and count ``[1]`` (TFLite detection
post-processing, or any graph with builtin NMS that gives these four)."""

from __future__ import annotations

import numpy as np

from agent.vision.detect.heads.base import Candidates, Head
from agent.vision.detect.runtime import TensorInfo


class SsdHead(Head):
    """See the module docstring. Without ``outputs`` names the four outputs are taken in
    ``ssd_order`` (their indices in the model) when the model has exactly four."""

    format = "ssd"
    reads = 4

    def pick(self, outputs: list[TensorInfo]) -> list[TensorInfo]:
        """Named outputs, else the four in ``ssd_order``."""
        if self.card.output.outputs or len(outputs) != 4:
            return super().pick(outputs)
        order = self.card.output.ssd_order
        if sorted(order) != [0, 1, 2, 3]:
            raise self.fail(f"ssd_order {list(order)} must be a permutation of 0..3")
        return [outputs[i] for i in order]

    def check(self) -> None:
        """boxes [1, N, 4], classes [1, N], scores [1, N], count [1]."""
        b, c, s, n = (list(o.shape) for o in self.picked)
        if len(b) != 3 or b[2] not in (None, 4) or len(c) != 2 or len(s) != 2 \
                or n not in ([1], [], [None]):
            raise self.fail(f"outputs read as boxes, classes, scores, count "
                            f"({', '.join(repr(x) for x in self.names)}) should be [1, N, 4], "
                            f"[1, N], [1, N], [1]; they are {b}, {c}, {s}, {n}")

    def decode(self, raw: list[np.ndarray], wanted: np.ndarray, conf: float) -> Candidates:
        """The first ``count`` rows of wanted classes scoring ``>= conf``."""
        boxes, classes, scores, count = raw
        cnt = np.asarray(count).reshape(-1)
        n = int(cnt[0]) if cnt.size else scores.shape[-1]
        n = max(0, min(n, boxes.shape[1], classes.shape[-1], scores.shape[-1]))
        b = boxes[0, :n]
        c = np.rint(classes.reshape(-1)[:n]).astype(np.int64)
        s = self.maybe_sigmoid(scores.reshape(-1)[:n].astype(np.float32))
        ok = (c >= 0) & (c < self.card.num_classes)
        keep = np.zeros(n, bool)
        keep[ok] = np.isin(c[ok], wanted) & (s[ok] >= conf)
        if not keep.any():
            return Candidates.empty()
        b, c, s = b[keep], c[keep], s[keep]
        w, h = self.card.input.size
        xyxy = np.stack([b[:, 1] * w, b[:, 0] * h, b[:, 3] * w, b[:, 2] * h], 1)
        return Candidates(xyxy.astype(np.float32), s, c)

    def scores(self, raw: list[np.ndarray]) -> list[np.ndarray]:
        """The scores of the ``count`` valid rows."""
        cnt = np.asarray(raw[3]).reshape(-1)
        n = int(cnt[0]) if cnt.size else raw[2].shape[-1]
        return [self.maybe_sigmoid(raw[2].reshape(-1)[:max(0, n)].astype(np.float32))]
