"""GFL / NanoDet: class scores plus a distribution box head.

Per anchor point, the box head gives ``4 * (reg_max + 1)`` logits: for each side (left,
top, right, bottom) a distribution over ``0..reg_max``; the distance is the softmax's
expectation × the level's stride, measured from the point ``(cell + center_offset) ×
stride``. Two layouts:

- per stride level a class-score output ``[1, HW, C]`` and a box output
  ``[1, HW, 4 * (reg_max + 1)]`` (NanoDet, six outputs for three strides; the card lists
  ``[cls, reg]`` pairs in stride order; ``center_offset`` defaults to 0.5);
- one output ``[1, N, C + 4 * (reg_max + 1)]`` over all levels (NanoDet-Plus;
  ``center_offset`` defaults to 0).
"""

from __future__ import annotations

import numpy as np

from agent.vision.detect.heads.base import Candidates, Head, best_class, grid, level_cells, shape_text


class GflHead(Head):
    """See the module docstring."""

    format = "gfl"

    def check(self) -> None:
        """Each output's rank, width and anchor count against the card."""
        c, bins = self.card.num_classes, 4 * (self.card.output.reg_max + 1)
        cells = [cols * rows for _, cols, rows in level_cells(self.card)]
        self.single = len(self.picked) == 1
        if not self.single and len(self.picked) != 2 * len(cells):
            raise self.fail(f"reads one [cls, reg] pair per stride "
                            f"({len(cells)} strides), or one NanoDet-Plus output")
        off = self.card.output.center_offset
        self.offset = (0.0 if self.single else 0.5) if off is None else off
        self._grid = grid(self.card)
        self._grid[:, :2] = (self._grid[:, :2] + self.offset) * self._grid[:, 2:3]
        if self.single:
            want = [(sum(cells), c + bins, "")]
        else:
            want = [x for n in cells for x in ((n, c, "class scores "), (n, bins, "boxes "))]
        for o, (n, k, what) in zip(self.picked, want, strict=True):
            if len(o.shape) not in (2, 3) or o.shape[-1] not in (None, k) \
                    or o.shape[-2] not in (None, n):
                raise self.fail(f"{what}output {o.name!r} is {shape_text(o.shape)}, expected "
                                f"[1, {n}, {k}] ({self.card.num_classes} classes, reg_max "
                                f"{self.card.output.reg_max}, strides "
                                f"{list(self.card.output.strides)} at "
                                f"{self.card.input.size[0]}x{self.card.input.size[1]})")
        self._want = want

    def split(self, raw: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """All levels' class scores ``(N, C)`` and box logits ``(N, 4 * (reg_max + 1))``."""
        arrays = [a.reshape(a.shape[-2:]) if a.ndim == 3 and a.shape[0] == 1 else a
                  for a in raw]
        for a, (n, k, _), name in zip(arrays, self._want, self.names, strict=True):
            if a.shape != (n, k):
                raise self.fail(f"output {name!r} gave {list(a.shape)}, expected [1, {n}, {k}]")
        if self.single:
            c = self.card.num_classes
            return arrays[0][:, :c], arrays[0][:, c:]
        return np.concatenate(arrays[0::2]), np.concatenate(arrays[1::2])

    def decode(self, raw: list[np.ndarray], wanted: np.ndarray, conf: float) -> Candidates:
        """Best wanted class per point, thresholded; then the integral of the box
        distributions of the points kept."""
        cls_all, reg = self.split(raw)
        cls, score = best_class(self.maybe_sigmoid(cls_all), wanted)
        m = np.flatnonzero(score >= conf)
        if not len(m):
            return Candidates.empty()
        bins = self.card.output.reg_max + 1
        logits = reg[m].reshape(len(m), 4, bins).astype(np.float32)
        p = np.exp(logits - logits.max(-1, keepdims=True))
        dist = (p / p.sum(-1, keepdims=True)) @ np.arange(bins, dtype=np.float32)
        g = self._grid[m]
        d = dist * g[:, 2:3]
        boxes = np.stack([g[:, 0] - d[:, 0], g[:, 1] - d[:, 1],
                          g[:, 0] + d[:, 2], g[:, 1] + d[:, 3]], 1)
        return Candidates(boxes, score[m], cls[m])

    def scores(self, raw: list[np.ndarray]) -> list[np.ndarray]:
        """Class scores of every level."""
        return [self.maybe_sigmoid(self.split(raw)[0])]
