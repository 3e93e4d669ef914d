"""``agent snapshot``: one annotated frame from a configured camera.

What a crew uses to check a pole's set-up: the frame as the camera sees it, with the
counting lines (and their direction names), zones, and the detector's boxes drawn.
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2

from agent.settings.schema import FileSource, load_config
from agent.vision.annotate import draw_detections, draw_lines
from agent.vision.camera import CameraSource, describe
from agent.vision.counter import Line, Zone
from agent.vision.detect import ModelError, load_detector


class SnapshotError(Exception):
    """The snapshot could not be taken; ``exit_code`` says why (1 input, 3 runtime)."""

    def __init__(self, msg: str, exit_code: int = 3) -> None:
        super().__init__(msg)
        self.exit_code = exit_code


def take_snapshot(config: Path, camera: str, out: Path, timeout: float = 15.0) -> dict:
    """Grab one frame from ``camera``, annotate it and write it to ``out`` (PNG/JPEG)."""
    cfg = load_config(config)
    try:
        cam = cfg.camera(camera)
    except KeyError as e:
        raise SnapshotError(str(e.args[0]), 1) from None
    try:
        det = load_detector(cam.detector.model, set(cam.detector.classes), cam.detector.confidence,
                            cam.detector.nms_iou, cam.detector.merge_iou, cam.detector.threads)
    except ModelError as e:
        raise SnapshotError(str(e), 1) from None
    src_cfg = cam.source
    if isinstance(src_cfg, FileSource):  # a snapshot needs one frame, not real-time pacing
        src_cfg = src_cfg.model_copy(update={"realtime": False, "loop": False})
    src = CameraSource(src_cfg, cam.name).start()
    try:
        end = time.monotonic() + timeout
        frame = None
        while frame is None and time.monotonic() < end:
            frame = src.get(timeout=min(0.5, max(0.01, end - time.monotonic())))
            if frame is None and src.ended.is_set():
                break
    finally:
        src.stop()
    if frame is None:
        raise SnapshotError(f"no frame from camera {camera} ({describe(cam.source)}) within "
                            f"{timeout:g} s; last state {src.stats.state}"
                            + (f": {src.stats.last_error}" if src.stats.last_error else ""))
    img = frame.image.copy()
    dets = det.detect(img)
    lines = [Line.make(ln.name, ln.points, ln.directions, ln.anchor) for ln in cam.lines]
    draw_lines(img, lines, [Zone(z.name, list(z.polygon)) for z in cam.zones])
    draw_detections(img, dets)
    h, w = img.shape[:2]
    for ln in cam.lines:
        for x, y in ln.points:
            if not (0 <= x < w and 0 <= y < h):
                cv2.putText(img, f"line {ln.name} point ({x:g},{y:g}) is outside {w}x{h}",
                            (5, h - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 255), 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), img):
        raise SnapshotError(f"cannot write {out} (use a .png or .jpg name)", 1)
    return {"width": w, "height": h, "detections": len(dets),
            "lines": [ln.name for ln in cam.lines]}
