"""Snapshots: one annotated frame from a camera.

What a crew uses to check a pole's set-up: the frame as the camera sees it, with the
counting lines (and their direction names), zones, and the detector's boxes drawn.
``agent snapshot`` opens the camera itself (:func:`take_snapshot`); the running agent's
``request_snapshot`` command annotates its running camera's last frame instead
(:func:`annotate` + :class:`SnapshotStore`, which keeps only the newest few files).
"""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np

from agent.settings.schema import CameraConfig, FileSource, load_config
from agent.vision.annotate import draw_detections, draw_lines
from agent.vision.camera import CameraSource, describe
from agent.vision.counter import Line, Zone
from agent.vision.detect import ModelError, load_detector
from agent.vision.detect.base import Detections


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
    except ModelError as e:  # the model is missing or does not match its card
        raise SnapshotError(str(e).splitlines()[0]) from None
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
    try:
        dets = det.detect(frame.image)
    except ModelError as e:  # decode-time: the model's outputs do not fit its card
        raise SnapshotError(str(e).splitlines()[0]) from None
    img, info = annotate(frame.image, cam, dets)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), img):
        raise SnapshotError(f"cannot write {out} (use a .png or .jpg name)", 1)
    return info


def annotate(image: np.ndarray, cam: CameraConfig, dets: Detections | None) -> tuple[np.ndarray, dict]:
    """A copy of ``image`` with the camera's lines, zones and ``dets`` drawn, and points
    outside the frame flagged; plus ``{width, height, detections, lines}``."""
    img = image.copy()
    lines = [Line.make(ln.name, ln.points, ln.directions, ln.anchor) for ln in cam.lines]
    draw_lines(img, lines, [Zone(z.name, list(z.polygon)) for z in cam.zones])
    if dets is not None:
        draw_detections(img, dets)
    h, w = img.shape[:2]
    for ln in cam.lines:
        for x, y in ln.points:
            if not (0 <= x < w and 0 <= y < h):
                cv2.putText(img, f"line {ln.name} point ({x:g},{y:g}) is outside {w}x{h}",
                            (5, h - 8), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 255), 1)
    return img, {"width": w, "height": h, "detections": 0 if dets is None else len(dets),
                 "lines": [ln.name for ln in cam.lines]}


class SnapshotStore:
    """Writes live snapshots to a folder and keeps only the newest ``keep`` per camera."""

    def __init__(self, folder: Path, keep: int = 5) -> None:
        self.folder = Path(folder)
        self.keep = keep

    def save(self, camera: str, image: np.ndarray, wall: float) -> Path:
        """Write ``image`` as a PNG (OSError when the disk refuses), then prune."""
        self.folder.mkdir(parents=True, exist_ok=True)
        out = self.folder / f"{camera}-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(wall))}" \
                            f"-{int(wall * 1000) % 1000:03d}.png"
        ok, data = cv2.imencode(".png", image)
        if not ok:
            raise OSError(f"cannot encode a snapshot of {camera}")
        tmp = out.with_suffix(".tmp")
        try:
            tmp.write_bytes(data.tobytes())
            tmp.replace(out)
        finally:
            tmp.unlink(missing_ok=True)
        for old in sorted(self.folder.glob(f"{camera}-*.png"))[:-self.keep]:
            old.unlink(missing_ok=True)
        return out
