"""What every head shares: the candidate type, output selection and shape checks."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from agent.settings.modelcard import ModelCard, ModelError
from agent.vision.detect.runtime import TensorInfo, describe_outputs, find_output


@dataclass
class Candidates:
    """A head's decoded boxes before NMS: ``boxes`` (N, 4) x1 y1 x2 y2 in input-tensor
    pixels, ``scores`` (N,), ``classes`` (N,) the model's class ids."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    @staticmethod
    def empty() -> Candidates:
        """No candidates."""
        return Candidates(np.zeros((0, 4), np.float32), np.zeros(0, np.float32),
                          np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.scores)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, float32."""
    return (1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))).astype(np.float32)


def cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    """Centre/size boxes → corner boxes."""
    return np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2,
                     b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)


def level_cells(card: ModelCard) -> list[tuple[int, int, int]]:
    """``(stride, cols, rows)`` of each stride level of the card's input size."""
    w, h = card.input.size
    return [(s, math.ceil(w / s), math.ceil(h / s)) for s in card.output.strides]


def grid(card: ModelCard) -> np.ndarray:
    """Anchor points of all levels, row-major per level: (N, 3) columns x, y, stride."""
    cells = []
    for s, cols, rows in level_cells(card):
        gy, gx = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        cells.append(np.stack([gx.ravel(), gy.ravel(), np.full(gx.size, s)], 1))
    return np.concatenate(cells).astype(np.float32)


def shape_text(shape: tuple[int | None, ...] | list) -> str:
    """``[1, 84, ?]``."""
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


class Head:
    """A model output format: which outputs it reads, how they become candidates.

    Subclasses set ``format`` and ``reads`` (how many outputs it reads without names) and
    implement :meth:`check`, :meth:`decode` and :meth:`scores`.
    """

    format = ""
    reads = 1

    def __init__(self, card: ModelCard, outputs: list[TensorInfo]) -> None:
        self.card = card
        self.all_outputs = outputs
        self.picked = self.pick(outputs)
        self.names = [o.name for o in self.picked]
        self.check()

    # -- load time ------------------------------------------------------------------------

    def fail(self, what: str) -> ModelError:
        """A ModelError for this card that lists every output of the model."""
        return ModelError(f"{self.card.card_path}: output format {self.format}: {what}; "
                          f"{describe_outputs(self.all_outputs)}")

    def pick(self, outputs: list[TensorInfo]) -> list[TensorInfo]:
        """The outputs this head reads: those the card names, else all of them when the
        model has exactly as many as the head reads (never a guess among several)."""
        names = self.card.output.outputs
        if names:
            flat = [n for o in names for n in ((o,) if isinstance(o, str) else o)]
            picked = []
            for n in flat:
                i = find_output(outputs, n)
                if i < 0:
                    raise self.fail(f"the card names output {n!r}, the model has no such "
                                    f"output")
                picked.append(outputs[i])
            return picked
        if len(outputs) != self.reads:
            raise self.fail(f"reads {self.reads} output{'s' if self.reads != 1 else ''} and "
                            f"the model has {len(outputs)}: name the one"
                            f"{'s' if self.reads != 1 else ''} to read with output.outputs")
        return list(outputs)

    def check(self) -> None:
        """Check the picked outputs' shapes against the card (raise via :meth:`fail`)."""

    def check_raw(self, raw: list[np.ndarray]) -> None:
        """Check the arrays a run returned against the shapes the model declared (dynamic
        dimensions are only known now)."""
        for a, info in zip(raw, self.picked, strict=True):
            bad = a.ndim != len(info.shape) or any(
                d is not None and d != g for d, g in zip(info.shape, a.shape, strict=True))
            if bad:
                raise self.fail(f"output {info.name!r} declared {shape_text(info.shape)} "
                                f"but gave {list(a.shape)}")

    # -- per frame ------------------------------------------------------------------------

    def decode(self, raw: list[np.ndarray], wanted: np.ndarray, conf: float) -> Candidates:
        """Raw outputs → candidates of the ``wanted`` model class ids scoring ``>= conf``."""
        raise NotImplementedError

    def scores(self, raw: list[np.ndarray]) -> list[np.ndarray]:
        """The score values this head reads (after ``sigmoid`` where the card asks), before
        any threshold: what ``--check-models`` checks lie in [0, 1]."""
        raise NotImplementedError

    def maybe_sigmoid(self, x: np.ndarray) -> np.ndarray:
        """Scores as probabilities: sigmoid when the card says the model gives logits."""
        return sigmoid(x) if self.card.output.sigmoid else x


def best_class(cls_scores: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best wanted class per row: (model class id, score)."""
    if not len(cls_scores) or not len(wanted):
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    sub = cls_scores[:, wanted]
    best = sub.argmax(1)
    return wanted[best], sub[np.arange(len(best)), best]


def batch_of_one(a: np.ndarray, rank: int) -> np.ndarray:
    """Drop a leading batch dimension of 1 from an array of ``rank`` dims."""
    if a.ndim == rank + 1:
        if a.shape[0] != 1:
            raise ValueError(f"batch of {a.shape[0]}, expected 1")
        return a[0]
    if a.ndim != rank:
        raise ValueError(f"expected {rank + 1} dims, got {list(a.shape)}")
    return a
