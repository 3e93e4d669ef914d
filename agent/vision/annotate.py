"""Drawing of what the pipeline sees: lines with their direction names, zones, detections,
tracks with ids and classes, and running counts. Used by ``agent count --annotate`` and
``agent snapshot`` so a field crew can check where a line sits."""

from __future__ import annotations

import cv2
import numpy as np

from agent.vision.classes import ROAD_USER_CLASSES
from agent.vision.counter import Line, Zone
from agent.vision.detect.base import Detections
from agent.vision.tracker import Track

_COLOURS = [(0, 200, 255), (255, 160, 0), (0, 0, 255), (200, 0, 200), (0, 255, 0), (255, 255, 0)]


def _text(img: np.ndarray, text: str, org: tuple[int, int], colour: tuple[int, int, int],
          scale: float = 0.4) -> None:
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def draw_lines(img: np.ndarray, lines: list[Line], zones: list[Zone] | None = None) -> None:
    """Draw counting lines (with an arrow per direction name) and zones."""
    for z in zones or []:
        pts = np.array(z.polygon, np.int32).reshape(-1, 1, 2)
        cv2.polylines(img, [pts], True, (255, 200, 0), 1, cv2.LINE_AA)
        _text(img, z.name, tuple(pts[0, 0]), (255, 200, 0))
    for ln in lines:
        a = (int(ln.a[0]), int(ln.a[1]))
        b = (int(ln.b[0]), int(ln.b[1]))
        cv2.line(img, a, b, (0, 255, 255), 2, cv2.LINE_AA)
        mx, my = (a[0] + b[0]) / 2, (a[1] + b[1]) / 2
        dx, dy = b[0] - a[0], b[1] - a[1]
        norm = max(np.hypot(dx, dy), 1e-9)
        nx, ny = -dy / norm, dx / norm  # towards the right-hand side
        for sign, name in ((1, ln.names[0]), (-1, ln.names[1])):
            tip = (int(mx + sign * nx * 18), int(my + sign * ny * 18))
            cv2.arrowedLine(img, (int(mx), int(my)), tip, (0, 255, 255), 1, cv2.LINE_AA,
                            tipLength=0.35)
            _text(img, name, (tip[0] + 3, tip[1] + 4), (0, 255, 255))
        _text(img, ln.name, (a[0] + 3, a[1] - 5), (0, 255, 255))


def draw_overlay(img: np.ndarray, tracks: list[Track], lines: list[Line],
                 totals: dict[str, dict[str, dict[str, int]]] | None = None,
                 detections: Detections | None = None, zones: list[Zone] | None = None) -> None:
    """Draw everything onto ``img`` in place."""
    draw_lines(img, lines, zones)
    if detections is not None:
        for box in detections.boxes.astype(int):
            cv2.rectangle(img, (box[0], box[1]), (box[2], box[3]), (180, 180, 180), 1)
    for t in tracks:
        colour = _COLOURS[t.track_id % len(_COLOURS)] if t.confirmed else (128, 128, 128)
        x1, y1, x2, y2 = (int(v) for v in t.box)
        cv2.rectangle(img, (x1, y1), (x2, y2), colour, 2 if t.confirmed else 1)
        _text(img, f"#{t.track_id} {ROAD_USER_CLASSES[t.label]}", (x1, max(10, y1 - 3)), colour)
        cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
        cv2.circle(img, (cx, cy), 2, colour, -1)
    if totals:
        y = 14
        for name, by_dir in totals.items():
            parts = [f"{d} {sum(per.values())}" for d, per in by_dir.items()]
            _text(img, f"{name}: " + "  ".join(parts), (5, y), (255, 255, 255), 0.45)
            y += 16


def draw_detections(img: np.ndarray, dets: Detections) -> None:
    """Box and label raw detections (for snapshots)."""
    for box, score, label in zip(dets.boxes.astype(int), dets.scores, dets.labels, strict=False):
        colour = _COLOURS[int(label) % len(_COLOURS)]
        cv2.rectangle(img, (box[0], box[1]), (box[2], box[3]), colour, 2)
        _text(img, f"{ROAD_USER_CLASSES[int(label)]} {score:.2f}", (box[0], max(10, box[1] - 3)),
              colour)
