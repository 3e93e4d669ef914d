"""Offline counting of a video file: the ``agent count`` command's engine.

Decodes every frame of the file in order (no drops) on a reader thread, as the live
agent's camera thread does, so decoding overlaps inference; runs it through the same
:class:`agent.vision.pipeline.CameraPipeline` as the live agent, and returns totals per line,
class and direction with frame counts, rates and per-stage timings. Optionally writes
an annotated video (boxes, track ids, lines, running counts). A file damaged on the way
is read to its end and its lost frames are reported (:mod:`agent.vision.videofile`),
never taken for a whole file.
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from agent.vision.annotate import draw_overlay
from agent.vision.counter import CountEvent, Line
from agent.vision.detect.base import Detector
from agent.vision.pipeline import CameraPipeline, FrameResult, PipelineSettings
from agent.vision.videofile import Integrity, VideoError, VideoReader

__all__ = ["CountResult", "VideoError", "count_video", "lines_from_args", "parse_line",
           "stderr_progress"]


@dataclass
class CountResult:
    """Totals of an offline run."""

    video: str
    frames: int
    frames_detected: int
    frames_skipped_motion: int
    video_fps: float
    processing_fps: float
    wall_s: float
    totals: dict[str, dict[str, dict[str, int]]]
    events: list[CountEvent]
    stage_ms: dict[str, float]
    id_switches: int
    frames_corrupt: int = 0
    meta: dict = field(default_factory=dict)
    integrity: Integrity | None = None

    def to_json(self) -> dict:
        """The ``--json`` document."""
        lines = {}
        for name, by_dir in self.totals.items():
            by_class: dict[str, dict[str, int]] = {}
            for d, per in by_dir.items():
                for c, n in per.items():
                    by_class.setdefault(c, {})[d] = n
            lines[name] = {"total": sum(sum(v.values()) for v in by_dir.values()),
                           "by_direction": {d: sum(v.values()) for d, v in by_dir.items()},
                           "by_class": by_class}
        return {"video": self.video, "frames": self.frames, "frames_detected": self.frames_detected,
                "frames_skipped_motion": self.frames_skipped_motion,
                "frames_corrupt": self.frames_corrupt, "video_fps": self.video_fps,
                "processing_fps": round(self.processing_fps, 2), "wall_s": round(self.wall_s, 3),
                "lines": lines, "id_switches": self.id_switches, "stage_ms": self.stage_ms,
                "integrity": self.integrity.to_json() if self.integrity else None,
                "events": [{"frame": e.frame, "line": e.line, "direction": e.direction,
                            "class": e.cls, "track": e.track_id, "x": round(e.point[0], 1),
                            "y": round(e.point[1], 1)} for e in self.events],
                **self.meta}


def lookahead_for(stride: int) -> int:
    """How many frames the detector may run ahead of tracking for a detection ``stride``:
    ``stride - 1`` (at least 1). Between two stride detections the tracker has
    ``stride - 1`` frames to predict: planning them ahead lets the model start on the next
    detection while the tracker catches up, and tracks go no staler than the stride
    already lets them (at a low frame rate the stride, and so the lookahead, is short)."""
    return max(1, int(stride) - 1)


def count_video(video: Path, detector: Detector, settings: PipelineSettings,
                annotate: Path | None = None, max_frames: int | None = None,
                progress: Callable[[int, int], None] | None = None,
                overlap: bool = True, depth: int = 1,
                on_frame: Callable[[np.ndarray, FrameResult], None] | None = None) -> CountResult:
    """Count road users crossing ``settings.lines`` in ``video``.

    ``on_frame`` sees every frame and its result (before any drawing), e.g. to keep one
    for a snapshot.

    ``overlap`` runs inference ahead of tracking and counting, by up to ``depth`` frames
    (higher throughput; see :class:`agent.vision.pipeline.Overlap` and
    :func:`lookahead_for`).
    """
    reader = VideoReader(video)
    fps = reader.fps
    n_total = reader.integrity.expected or 0
    if fps > 0 and abs(settings.fps - fps) > 1e-6:
        settings = replace(settings, fps=fps)
    pipe = CameraPipeline(detector, settings)
    writer = None
    totals: dict[str, dict[str, dict[str, int]]] = {
        ln.name: {d: {} for d in ln.names} for ln in settings.lines}
    events: list[CountEvent] = []
    t_start = time.perf_counter()
    i = 0

    def add(new: list[CountEvent]) -> None:
        for e in new:
            events.append(e)
            if e.line in totals:
                per = totals[e.line].setdefault(e.direction, {})
                per[e.cls] = per.get(e.cls, 0) + 1

    frames: queue.Queue = queue.Queue(maxsize=8)
    stop = threading.Event()

    def read() -> None:
        for item in reader.frames(max_frames):
            if stop.is_set():
                break
            frames.put(item)
        frames.put(None)

    thread = threading.Thread(target=read, name="count-reader", daemon=True)
    thread.start()

    def valid_frames() -> Iterator[tuple[int, np.ndarray]]:
        while (item := frames.get()) is not None:
            yield item

    results = pipe.process_overlapped(valid_frames(), depth) if overlap else \
        ((img, pipe.process(img, k)) for k, img in valid_frames())
    try:
        for frame, res in results:
            add(res.events)
            if on_frame is not None:
                on_frame(frame, res)
            if annotate is not None:
                if writer is None:
                    h, w = frame.shape[:2]
                    writer = cv2.VideoWriter(str(annotate), cv2.VideoWriter_fourcc(*(
                        "MJPG" if annotate.suffix.lower() == ".avi" else "mp4v")),
                        fps or settings.fps, (w, h))
                    if not writer.isOpened():
                        raise VideoError(f"cannot write {annotate} (use a .mp4 or .avi name)")
                draw_overlay(frame, res.tracks, settings.lines, totals, res.detections,
                             zones=settings.zones)
                writer.write(frame)
            i += 1
            if progress is not None:
                progress(i, n_total)
    finally:
        stop.set()
        while thread.is_alive():
            try:
                frames.get_nowait()
            except queue.Empty:
                thread.join(0.05)
        reader.release()
        if writer is not None:
            writer.release()
    add(pipe.flush())
    events.sort(key=lambda e: e.frame)
    wall = time.perf_counter() - t_start
    stage = pipe.times.mean_ms()
    stage["decode"] = round(1000 * reader.decode_s / i, 3) if i else 0.0
    stage["detector_total"] = round(pipe.mean_detector_ms, 3)
    integ = reader.integrity
    return CountResult(str(video), i, pipe.frames_detected,
                       pipe.frames_skipped_motion, fps, i / wall if wall > 0 else 0.0, wall,
                       totals, events, stage, pipe.counter.id_switches, integ.corrupt,
                       integrity=integ,
                       meta={"detector_reasons": dict(sorted(pipe.scheduler.reasons.items())),
                             "count_quality": pipe.quality.take().summary()})


def stderr_progress(every: int = 50) -> Callable[[int, int], None]:
    """A progress callback printing ``frames done/total`` to stderr every ``every`` frames."""
    t0 = time.monotonic()

    def report(done: int, total: int) -> None:
        if done % every and done != total:
            return
        rate = done / max(time.monotonic() - t0, 1e-9)
        of = f"/{total}" if total else ""
        print(f"\r{done}{of} frames, {rate:.1f} fps", end="" if done != total else "\n",
              file=sys.stderr, flush=True)

    return report


def parse_line(text: str, index: int = 0) -> tuple[str, tuple[tuple[float, float], tuple[float, float]]]:
    """Parse ``x1,y1,x2,y2[,name]`` (the ``--line`` option)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (4, 5):
        raise ValueError(f"--line expects x1,y1,x2,y2[,name], got {text!r}")
    try:
        x1, y1, x2, y2 = (float(v) for v in parts[:4])
    except ValueError:
        raise ValueError(f"--line coordinates must be numbers, got {text!r}") from None
    if (x1, y1) == (x2, y2):
        raise ValueError(f"--line needs two different points, got {text!r}")
    name = parts[4] if len(parts) == 5 and parts[4] else f"line{index + 1}"
    return name, ((x1, y1), (x2, y2))


def lines_from_args(specs: list[str]) -> list[Line]:
    """Build :class:`Line` objects from ``--line`` options."""
    out = []
    for i, spec in enumerate(specs):
        name, pts = parse_line(spec, i)
        out.append(Line.make(name, pts))
    names = [ln.name for ln in out]
    if len(set(names)) != len(names):
        raise ValueError(f"--line names must be unique, got {names}")
    return out
