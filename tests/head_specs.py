"""Small detection models with a known answer, one per head layout, described in numpy only
so that both builders make the same model: ``tests/test_heads.py`` with ``onnx.helper``
and ``tests/tflite_models.py`` with TensorFlow's TFLite converter (run by another
interpreter, so this module imports nothing from the project).

Every model has a real graph: per output and stride level a patchify convolution of the
input (kernel = stride = level stride, random weights), plus a constant map, then per
channel group a sigmoid or nothing, concatenated over groups, reshaped to rows (one per
cell, row-major), concatenated over levels and laid out as the head expects. On an
all-black frame (input 0) every output is exactly act(constant map), so the constant maps
encode the boxes and scores the decode must find (:attr:`Case.expected`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

SIZE = 64                  # input width = height
CLASSES = ("car", "motorbike")
BACKGROUND = -6.0          # score logit of empty cells: sigmoid 0.0025


def logit(p: float) -> float:
    """Inverse sigmoid."""
    return float(np.log(p / (1 - p)))


@dataclass
class Group:
    """``n`` consecutive channels with one activation: ``linear`` or ``sigmoid``."""

    n: int
    act: str


@dataclass
class Output:
    """One model output: channel groups per level; ``layout`` ``rows`` [1, N, ch],
    ``channels_first`` [1, ch, N], ``flat`` [1, N] (ch = 1), or ``count`` (``count_of``:
    [1], how many values of that flat output exceed 0.5)."""

    name: str
    groups: list[Group]
    pre: list[np.ndarray]           # per level (h, w, ch) pre-activation constant map
    strides: list[int]
    layout: str = "rows"
    count_of: str = ""

    @property
    def channels(self) -> int:
        """Channels per cell."""
        return sum(g.n for g in self.groups)


@dataclass
class Case:
    """A model, the card's ``output:`` section for it, and the detections it must give:
    ``(class, [x1, y1, x2, y2] input pixels, score)``."""

    name: str
    outputs: list[Output]
    card_output: str
    expected: list[tuple[str, list[float], float]]
    onnx_order: list[int] = field(default_factory=list)  # output order in the ONNX graph


def kernels(case: Case) -> list[list[list[np.ndarray]]]:
    """Random conv weights [output][level][group], ONNX layout (out, in, k, k); small, so
    that on any frame (0-255) the outputs stay near the constant maps' (a sane model)."""
    rng = np.random.default_rng(zlib.crc32(case.name.encode()))
    return [[[(rng.normal(0, 2e-4, (g.n, 3, s, s)) / s).astype(np.float32)
              for g in o.groups] for s in o.strides] for o in case.outputs]


def _maps(strides: list[int], ch: int, fill: list[float]) -> list[np.ndarray]:
    return [np.tile(np.array(fill, np.float32), (SIZE // s, SIZE // s, 1)).reshape(
        SIZE // s, SIZE // s, ch) for s in strides]


def _yolox(name: str, decoded: bool) -> Case:
    strides = [8, 16, 32]
    pre = _maps(strides, 4 + 1 + 2, [0, 0, 0, 0, BACKGROUND, BACKGROUND, BACKGROUND])
    if decoded:   # boxes already in pixels: cx, cy, w, h
        pre[1][2, 1] = [24, 36, 32, 16, logit(0.9), logit(0.95), BACKGROUND]
        pre[0][1, 6] = [52, 12, 12, 12, logit(0.8), BACKGROUND, logit(0.9)]
        card = "format: yolox\n  decoded: true"
    else:         # raw: centre = (offset + cell) * stride, size = exp(raw) * stride
        pre[1][2, 1] = [0.5, 0.25, np.log(2.0), 0.0, logit(0.9), logit(0.95), BACKGROUND]
        pre[0][1, 6] = [0.5, 0.5, np.log(1.5), np.log(1.5), logit(0.8), BACKGROUND, logit(0.9)]
        card = "format: yolox\n  decoded: false\n  strides: [8, 16, 32]"
    out = Output("output", [Group(4, "linear"), Group(3, "sigmoid")], pre, strides)
    return Case(name, [out], card, [("car", [8, 28, 40, 44], 0.855),
                                    ("motorbike", [46, 6, 58, 18], 0.72)])


def _yolov5() -> Case:
    strides = [8]
    pre = _maps(strides, 7, [0, 0, 0, 0, BACKGROUND, BACKGROUND, BACKGROUND])
    pre[0][4, 3] = [24, 36, 32, 16, logit(0.9), logit(0.95), BACKGROUND]
    pre[0][4, 4] = [25, 36, 32, 16, logit(0.9), logit(0.8), BACKGROUND]  # duplicate: NMS
    pre[0][1, 6] = [52, 12, 12, 12, logit(0.8), BACKGROUND, logit(0.9)]
    pre[0][6, 6] = [52, 52, 12, 12, logit(0.2), BACKGROUND, logit(0.9)]  # 0.18: too low
    out = Output("output", [Group(4, "linear"), Group(3, "sigmoid")], pre, strides)
    return Case("yolov5", [out], "format: yolov5",
                [("car", [8, 28, 40, 44], 0.855), ("motorbike", [46, 6, 58, 18], 0.72)])


def _yolov8(transposed: bool) -> Case:
    strides = [8, 16]
    pre = _maps(strides, 6, [0, 0, 0, 0, BACKGROUND, BACKGROUND])
    pre[1][2, 1] = [24, 36, 32, 16, logit(0.85), BACKGROUND]
    pre[0][1, 6] = [52, 12, 12, 12, logit(0.1), logit(0.7)]
    out = Output("output0", [Group(4, "linear"), Group(2, "sigmoid")], pre, strides,
                 "rows" if transposed else "channels_first")
    return Case("yolov8_rows" if transposed else "yolov8", [out], "format: yolov8",
                [("car", [8, 28, 40, 44], 0.85), ("motorbike", [46, 6, 58, 18], 0.7)])


def _e2e(normalized: bool) -> Case:
    strides = [16]                  # 16 rows
    pre = _maps(strides, 6, [0, 0, 0, 0, BACKGROUND, 0])
    k = 1 / SIZE if normalized else 1.0
    pre[0][0, 0] = [8 * k, 28 * k, 40 * k, 44 * k, logit(0.85), 0]
    pre[0][0, 1] = [46 * k, 6 * k, 58 * k, 18 * k, logit(0.7), 1]
    pre[0][0, 2] = [10 * k, 10 * k, 20 * k, 20 * k, logit(0.9), 7]   # class 7: not a class
    pre[0][0, 3] = [30 * k, 30 * k, 50 * k, 50 * k, logit(0.1), 0]   # below the threshold
    out = Output("dets", [Group(4, "linear"), Group(1, "sigmoid"), Group(1, "linear")],
                 pre, strides)
    coords = "normalized" if normalized else "pixels"
    return Case(f"e2e_{coords}", [out], f"format: e2e\n  coords: {coords}\n  outputs: [dets]",
                [("car", [8, 28, 40, 44], 0.85), ("motorbike", [46, 6, 58, 18], 0.7)])


def _dist(*sides: tuple[int, float]) -> list[float]:
    """Box-distribution logits (reg_max 7) for sides given as (bin, weight of bin + 1)."""
    out = []
    for b, frac in sides:
        lg = [-20.0] * 8
        if frac == 0:
            lg[b] = 10.0
        else:                       # two bins: expectation b + frac
            lg[b], lg[b + 1] = 0.0, float(np.log(frac / (1 - frac)))
        out += lg
    return out


def _gfl(single: bool) -> Case:
    strides = [8, 16, 32]
    bins = 4 * 8
    cls_pre = _maps(strides, 2, [BACKGROUND, BACKGROUND])
    reg_pre = _maps(strides, bins, [0.0] * bins)
    # single (NanoDet-Plus) anchors at cell * stride, multi-level (GFL) at (cell + 0.5) * stride
    if single:   # level 16 cell (2, 2): (32, 32); level 8 cell (6, 1): (48, 8)
        a, b = (1, 2, 2), (0, 1, 6)
        boxes = [[16, 24, 48, 40], [42, 2, 54, 14]]
    else:        # level 16 cell (1, 2): (24, 40); level 8 cell (6, 1): (52, 12)
        a, b = (1, 2, 1), (0, 1, 6)
        boxes = [[8, 32, 40, 48], [46, 6, 58, 18]]
    # level 16: l = r = 1 (16 px), t = b = 0.5 (8 px); level 8: all sides 0.75 (6 px)
    cls_pre[a[0]][a[1], a[2]] = [logit(0.85), BACKGROUND]
    reg_pre[a[0]][a[1], a[2]] = _dist((1, 0), (0, 0.5), (1, 0), (0, 0.5))
    cls_pre[b[0]][b[1], b[2]] = [BACKGROUND, logit(0.7)]
    reg_pre[b[0]][b[1], b[2]] = _dist((0, 0.75), (0, 0.75), (0, 0.75), (0, 0.75))
    expected = [("car", boxes[0], 0.85), ("motorbike", boxes[1], 0.7)]
    if single:
        pre = [np.concatenate([c, r], -1) for c, r in zip(cls_pre, reg_pre, strict=True)]
        out = Output("output", [Group(2, "sigmoid"), Group(bins, "linear")], pre, strides)
        return Case("nanodet_plus", [out], "format: gfl\n  reg_max: 7\n  outputs: [output]",
                    expected)
    outs = []
    for i, s in enumerate(strides):
        outs.append(Output(f"cls_{s}", [Group(2, "sigmoid")], [cls_pre[i]], [s]))
        outs.append(Output(f"reg_{s}", [Group(bins, "linear")], [reg_pre[i]], [s]))
    pairs = ", ".join(f"[cls_{s}, reg_{s}]" for s in strides)
    return Case("gfl", outs, f"format: gfl\n  reg_max: 7\n  outputs: [{pairs}]", expected,
                onnx_order=[5, 0, 3, 1, 4, 2])


def _ssd() -> Case:
    strides = [16]                  # 16 rows, valid ones first
    boxes = _maps(strides, 4, [logit(0.01)] * 4)
    classes = _maps(strides, 1, [0.0])
    scores = _maps(strides, 1, [BACKGROUND])
    norm = [logit(v / SIZE) for v in (28, 8, 44, 40)]          # ymin, xmin, ymax, xmax
    boxes[0][0, 0], classes[0][0, 0], scores[0][0, 0] = norm, [0], [logit(0.85)]
    norm = [logit(v / SIZE) for v in (6, 46, 18, 58)]
    boxes[0][0, 1], classes[0][0, 1], scores[0][0, 1] = norm, [1], [logit(0.7)]
    outs = [Output("boxes", [Group(4, "sigmoid")], boxes, strides),
            Output("classes", [Group(1, "linear")], classes, strides, "flat"),
            Output("scores", [Group(1, "sigmoid")], scores, strides, "flat"),
            Output("count", [], [], strides, "count", count_of="scores")]
    return Case("ssd", outs, "format: ssd\n  outputs: [boxes, classes, scores, count]",
                [("car", [8, 28, 40, 44], 0.85), ("motorbike", [46, 6, 58, 18], 0.7)],
                onnx_order=[2, 0, 3, 1])


def cases() -> list[Case]:
    """Every head layout the detector supports."""
    return [_yolox("yolox_raw", False), _yolox("yolox_decoded", True), _yolov5(),
            _yolov8(False), _yolov8(True), _e2e(False), _e2e(True), _gfl(False), _gfl(True),
            _ssd()]
