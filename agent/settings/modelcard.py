"""Model cards: the YAML file next to each model that says what it is and how to feed it.

A card names the model file (relative to the card), its sha256, input size/layout/
normalisation, output format, the map from the model's class ids to polelink's
road-user classes, licence, source and the view the model is fit for (``view``).
:func:`load_card` validates the card; the detector then checks it against the model's
real input/output shapes (``agent.vision.detect``).
"""

from __future__ import annotations

import hashlib
import math
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

    name: str | None = Field(None, description=(
        "the model's input tensor by name; without it the model's first input"))
    size: tuple[Annotated[int, Field(ge=16)], Annotated[int, Field(ge=16)]] = Field(
        description="[width, height] of the input in pixels, as the model was exported "
                    "(checked against the model's input shape at load)")
    layout: Literal["NCHW", "NHWC"] = Field("NCHW", description=(
        "NCHW: [1, 3, height, width] (ONNX exports); NHWC: [1, height, width, 3] (TFLite)"))
    channels: Literal["BGR", "RGB"] = Field("BGR", description=(
        "the channel order the model was trained on; frames arrive BGR (OpenCV) and are "
        "reordered for RGB before mean and std are applied"))
    dtype: Literal["float32", "uint8"] = Field("float32", description=(
        "float32: the pixels (0-255) minus mean, divided by std; uint8: the pixels as they "
        "are, only for a model whose input is uint8 (no mean or std allowed). A quantised "
        "int8/uint8 input with a scale takes float32 here: the runtime quantises it"))
    resize: Literal["letterbox", "stretch"] = Field("letterbox", description=(
        "letterbox: scaled to fit with the aspect ratio kept, padded with pad_value "
        "(YOLO exports); stretch: scaled to the input size (SSD exports)"))
    pad_value: Annotated[int, Field(ge=0, le=255)] = Field(114, description=(
        "the grey level (0-255) of the letterbox padding, before mean and std"))
    mean: tuple[float, float, float] = Field((0.0, 0.0, 0.0), description=(
        "subtracted from each channel's 0-255 value, in the card's channel order (for "
        "channels: RGB, the R mean first); ImageNet's is [123.675, 116.28, 103.53]"))
    std: tuple[float, float, float] = Field((1.0, 1.0, 1.0), description=(
        "then each channel is divided by it, in the card's channel order; a model that "
        "wants 0-1 input has std [255, 255, 255]"))

    @model_validator(mode="after")
    def _normalisation_is_usable(self) -> InputSpec:
        if not all(math.isfinite(v) for v in self.mean):
            raise ValueError("@mean: every value must be a finite number")
        bad = [v for v in self.std if not math.isfinite(v) or abs(v) < 1e-6]
        if bad:
            raise ValueError(f"@std: every value must be a finite number at least 1e-6 away "
                             f"from 0 (the pixels are divided by it), not {bad[0]}")
        return self


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


#: The output keys only some heads read; any other head refuses them (see OutputSpec).
READ_BY: dict[str, tuple[str, ...]] = {
    "decoded": ("yolox",),
    "strides": ("yolox", "gfl"),
    "ssd_order": ("ssd",),
    "coords": ("e2e",),
    "reg_max": ("gfl",),
    "center_offset": ("gfl",),
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
    A key only other heads read (``decoded``, ``strides``, ``ssd_order``, ``coords``,
    ``reg_max``, ``center_offset``) is refused, never silently ignored.
    """

    format: Literal["yolox", "yolov5", "yolov8", "e2e", "gfl", "ssd"] = Field(description=(
        "the head: how the outputs are read (docs/models/heads.md has a card for each)"))
    outputs: tuple[str | tuple[str, str], ...] | None = Field(None, description=(
        "the output(s) the head reads, by name: one name (yolox, yolov5, yolov8, e2e, "
        "NanoDet-Plus), four for ssd (boxes, classes, scores, count), or one [cls, reg] "
        "pair per stride for gfl; without it the model must have exactly that many outputs"))
    decoded: bool = Field(True, description=(
        "yolox: false for raw grid offsets (decoded here with strides), true for boxes "
        "already in input pixels"))
    strides: tuple[Annotated[int, Field(ge=1)], ...] = Field((8, 16, 32), description=(
        "yolox (decoded: false) and gfl: the feature strides, in the order of the outputs"))
    ssd_order: tuple[int, int, int, int] = Field((0, 1, 2, 3), description=(
        "ssd without outputs: the indices of boxes, classes, scores and count"))
    coords: Literal["pixels", "normalized"] = Field("pixels", description=(
        "e2e: boxes in input pixels, or normalized 0-1"))
    reg_max: Annotated[int, Field(ge=0, le=64)] = Field(7, description=(
        "gfl: the distribution's last bin; a box output has 4 x (reg_max + 1) values"))
    center_offset: float | None = Field(None, description=(
        "gfl: the anchor point's offset in its cell; default 0.5 for per-level outputs "
        "(NanoDet, GFL), 0 for NanoDet-Plus's single output"))
    sigmoid: bool = Field(False, description=(
        "apply a sigmoid to the scores (exports that give logits)"))

    @model_validator(mode="after")
    def _outputs_fit_format(self) -> OutputSpec:
        ignored = [k for k in sorted(self.model_fields_set)
                   if k in READ_BY and self.format not in READ_BY[k]]
        if ignored:  # a key the head would silently ignore is a card that misleads
            k = ignored[0]
            raise ValueError(f"format {self.format} does not read {k} (only "
                             f"{', '.join(READ_BY[k])} {'does' if len(READ_BY[k]) == 1 else 'do'}"
                             f"): remove it"
                             + (f"; also not read: {', '.join(ignored[1:])}" if ignored[1:] else ""))
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

    name: str = Field(description="the model's name in logs, records and `agent validate`")
    file: Path = Field(description="the model file (.onnx or .tflite), relative to the card's "
                                   "folder")
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] = Field(description=(
        "the model file's sha256 (lower-case hex), checked at every load: `sha256sum FILE`"))
    backend: Literal["onnxruntime", "tflite"] = Field(description=(
        "the runtime: onnxruntime for .onnx, tflite (tflite-runtime or ai-edge-litert) for "
        ".tflite; every head runs on both"))
    input: InputSpec = Field(description="how a frame becomes the model's input tensor")
    output: OutputSpec = Field(description="what the model's outputs mean: the head")
    num_classes: Annotated[int, Field(ge=1, le=10000)] = Field(description=(
        "C: the number of classes the model scores (80 for COCO)"))
    class_map: dict[int, RoadUserClass] = Field(description=(
        "the model's class ids that polelink counts, each to a road-user class; ids not "
        "listed are ignored (COCO: 1 bicycle, 2 car, 3 motorcycle, 5 bus, 7 truck)"),
        json_schema_extra={"propertyNames": {"pattern": "^[0-9]+$"}})
    licence: str = Field(description="the model's licence (SPDX id or words)")
    source: str = Field(description="where the model comes from (a URL, a training recipe)")
    intended_use: str = Field("", description="what the model is for, in words")
    view: tuple[Literal["elevated_side", "top_down", "simulator_top_down"], ...] = Field(
        (), description="the camera views the model is fit for (see below); "
                        "`agent validate` prints them")
    card_path: Path = Field(Path("."), exclude=True, description="set by the loader")

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
