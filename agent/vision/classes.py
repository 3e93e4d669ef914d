"""The road-user classes polelink counts, shared by detectors, tracker, counter and reports."""

from __future__ import annotations

from typing import Literal

#: Every class a detector may map its own ids to, in a fixed order (index = label id).
ROAD_USER_CLASSES: tuple[str, ...] = ("car", "motorbike", "bus", "truck", "bicycle", "person")

#: Counted unless a camera's ``detector.classes`` says otherwise.
DEFAULT_COUNTED: tuple[str, ...] = ("car", "motorbike", "bus", "truck", "bicycle")

RoadUserClass = Literal["car", "motorbike", "bus", "truck", "bicycle", "person"]


def class_id(name: str) -> int:
    """Index of ``name`` in :data:`ROAD_USER_CLASSES` (ValueError if unknown)."""
    return ROAD_USER_CLASSES.index(name)
