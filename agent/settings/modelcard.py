"""Model cards: the YAML file next to each model that says what it is and how to feed it.

A card names the model file (relative to the card), its sha256, input size/layout/
normalisation, output format, the map from the model's class ids to polelink's
road-user classes, licence, source and the view the model is fit for (``view``).
:func:`load_card` validates the card; the detector then checks it against the model's
real input/output shapes (``agent.vision.detect``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from agent.settings.modelerror import ModelError
from agent.settings.yamlfile import ConfigError, Problem, validate_file
from agent.vision.classes import RoadUserClass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """How a frame becomes the model's input tensor."""

    name: str | None = None
    size: tuple[Annotated[int, Field(ge=16)], Annotated[int, Field(ge=16)]]  # width, height
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    channels: Literal["BGR", "RGB"] = "BGR"
    dtype: Literal["float32", "uint8"] = "float32"
    resize: Literal["letterbox", "stretch"] = "letterbox"
    pad_value: Annotated[int, Field(ge=0, le=255)] = 114
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)


#: Output formats (heads) a card can name; see :class:`OutputSpec`.
FORMATS = ("yolox", "yolov5", "yolov8", "e2e", "gfl", "ssd")

#: Views a model can be fit for (the card's ``view`` list).
VIEWS = {
    "elevated_side": "an elevated side or oblique view of the road, as from a pole or gantry "
                     "camera looking along or across it; does not see vehicles from directly "
                     "above",
    "top_down": "a camera looking straight down at the road",
    "simulator_top_down": "the built-in simulator's synthetic top-down frames only; "
                          "never saw a real camera image",
}


class OutputSpec(_Strict):
    """What the model's outputs mean (the *head*); any head runs on any backend.

    - ``yolox``: ``[1, N, 5 + C]``; ``decoded: false`` means raw grid offsets (decoded here
      with ``strides``).
    - ``yolov5``: ``[1, N, 5 + C]`` boxes (cx, cy, w, h) in input pixels, objectness, class
      scores.
    - ``yolov8``: ``[1, 4 + C, N]`` (or its transpose) boxes in input pixels, class scores
      (also YOLOv11).
    - ``e2e``: end-to-end detections ``[1, N, 6]``: x1, y1, x2, y2, score, class; ``coords``
      says whether boxes are input pixels or normalised 0-1 (YOLOv10-style and
      NMS-included exports).
    - ``gfl``: GFL/NanoDet: per stride level a class-score output ``[1, HW, C]`` and a
      distribution box output ``[1, HW, 4 * (reg_max + 1)]`` (``outputs`` lists
      ``[cls, reg]`` pairs, one per stride), or NanoDet-Plus's single output
      ``[1, N, C + 4 * (reg_max + 1)]``.
    - ``ssd``: four tensors: boxes ``[1, N, 4]`` (ymin, xmin, ymax, xmax, 0-1), classes,
      scores, count; ``outputs`` names them in that order, else ``ssd_order`` gives their
      output indices.

    ``outputs`` names the output(s) the head reads; without it a model must have exactly
    the number of outputs the head reads (SSD: four, taken in ``ssd_order``).
    ``sigmoid: true`` applies a sigmoid to the score values (exports that give logits).
    """

    format: Literal["yolox", "yolov5", "yolov8", "e2e", "gfl", "ssd"]
    outputs: tuple[str | tuple[str, str], ...] | None = None
    decoded: bool = True
    strides: tuple[Annotated[int, Field(ge=1)], ...] = (8, 16, 32)
    ssd_order: tuple[int, int, int, int] = (0, 1, 2, 3)
    coords: Literal["pixels", "normalized"] = "pixels"
    reg_max: Annotated[int, Field(ge=0, le=64)] = 7
    center_offset: float | None = None
    sigmoid: bool = False

    @model_validator(mode="after")
    def _outputs_fit_format(self) -> OutputSpec:
        outs = self.outputs
        if outs is None:
            return self
        if not outs:
            raise ValueError("outputs must name at least one output (or leave it out)")
        pairs = [o for o in outs if not isinstance(o, str)]
        if self.format == "gfl":
            if len(outs) == 1 and not pairs:
                return self
            if len(pairs) != len(outs) or len(outs) != len(self.strides):
                raise ValueError(f"gfl outputs: one [cls, reg] pair per stride "
                                 f"({len(self.strides)} strides: {list(self.strides)}), or one "
                                 f"name for a single NanoDet-Plus output")
            return self
        if pairs:
            raise ValueError(f"format {self.format} reads outputs by name: a list of names")
        want = 4 if self.format == "ssd" else 1
        if len(outs) != want:
            raise ValueError(f"format {self.format} reads {want} output"
                             f"{'s (boxes, classes, scores, count)' if want == 4 else ''}, "
                             f"the card names {len(outs)}")
        return self


class ModelCard(_Strict):
    """A validated model card; ``path`` is the model file resolved against the card's folder."""

    name: str
    file: Path
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    backend: Literal["onnxruntime", "tflite"]
    input: InputSpec
    output: OutputSpec
    num_classes: Annotated[int, Field(ge=1, le=10000)]
    class_map: dict[int, RoadUserClass]
    licence: str
    source: str
    intended_use: str = ""
    view: tuple[Literal["elevated_side", "top_down", "simulator_top_down"], ...] = ()
    card_path: Path = Path(".")

    @field_validator("file")
    @classmethod
    def _rel(cls, v: Path, info: ValidationInfo) -> Path:
        base = (info.context or {}).get("base_dir")
        return v if v.is_absolute() or base is None else Path(base) / v

    @model_validator(mode="after")
    def _ids(self) -> ModelCard:
        bad = [i for i in self.class_map if not 0 <= i < self.num_classes]
        if bad:
            raise ValueError(f"@class_map[{bad[0]}]: class id {bad[0]} is outside "
                             f"0..{self.num_classes - 1} (num_classes: {self.num_classes})"
                             + (f"; also outside: {', '.join(map(str, bad[1:]))}"
                                if bad[1:] else ""))
        i = self.input
        if i.dtype == "uint8" and (i.mean != (0.0, 0.0, 0.0) or i.std != (1.0, 1.0, 1.0)):
            raise ValueError("@input.dtype: uint8 input takes the pixels as they are, so the "
                             "card's mean and std would be ignored: use dtype float32 with "
                             "them, or remove mean and std")
        return self

    def view_text(self) -> str:
        """What view the model is fit for, in words (``not stated`` without ``view``)."""
        if not self.view:
            return "view not stated on the card"
        return "; ".join(f"{v} ({VIEWS[v]})" for v in self.view)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_card(path: Path, verify_hash: bool = True) -> ModelCard:
    """Validate a card and check that its model file exists and matches its sha256.

    Raises :class:`ConfigError` for a bad card and :class:`ModelError` for a missing or
    altered model file.
    """
    path = Path(path)
    card = validate_file(path, ModelCard, context={"base_dir": path.resolve().parent})
    card = card.model_copy(update={"card_path": path})
    if not card.file.is_file():
        raise ModelError(f"{path}: model file {card.file} not found (the card's 'file' is "
                         f"relative to the card's folder)")
    if verify_hash:
        digest = sha256_file(card.file)
        if digest != card.sha256:
            raise ModelError(f"{path}: model file {card.file} has sha256 {digest}, the card says "
                             f"{card.sha256}: wrong or corrupt file")
    return card


__all__ = ["FORMATS", "VIEWS", "ConfigError", "ModelCard", "ModelError", "Problem", "load_card",
           "sha256_file"]
