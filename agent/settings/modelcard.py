"""Model cards: the YAML file next to each model that says what it is and how to feed it.

A card names the model file (relative to the card), its sha256, input size/layout/
normalisation, output format, the map from the model's class ids to polelink's
road-user classes, licence and source. :func:`load_card` validates the card;
each backend then checks it against the model's real input/output shapes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from agent.settings.yamlfile import ConfigError, Problem, validate_file
from agent.vision.classes import RoadUserClass


class ModelError(Exception):
    """A model could not be loaded or does not match its card."""


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


class OutputSpec(_Strict):
    """What the model's outputs mean.

    - ``yolox``: ``[1, N, 5 + C]``; ``decoded: false`` means raw grid offsets (decoded here
      with ``strides``).
    - ``yolov5``: ``[1, N, 5 + C]`` boxes in input pixels, objectness, class scores.
    - ``yolov8``: ``[1, 4 + C, N]`` (or its transpose) boxes in input pixels, class scores
      (also YOLOv11).
    - ``ssd``: four tensors: boxes ``[1, N, 4]`` (ymin, xmin, ymax, xmax, 0–1), classes,
      scores, count; ``ssd_order`` gives their output indices.
    """

    format: Literal["yolox", "yolov5", "yolov8", "ssd"]
    decoded: bool = True
    strides: tuple[int, ...] = (8, 16, 32)
    ssd_order: tuple[int, int, int, int] = (0, 1, 2, 3)


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
            raise ValueError(f"class_map ids {bad} are outside 0..{self.num_classes - 1}")
        if self.backend == "tflite" and self.output.format != "ssd":
            raise ValueError("the tflite backend reads SSD-style outputs: output.format must be 'ssd'")
        if self.backend == "onnxruntime" and self.output.format == "ssd":
            raise ValueError("output.format 'ssd' needs backend 'tflite'")
        return self


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


__all__ = ["ConfigError", "ModelCard", "ModelError", "Problem", "load_card", "sha256_file"]
