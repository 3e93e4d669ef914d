"""The vision data path for one camera, top to bottom.

    frame ──► scheduler + motion gate ──► detector (where counts are decided, and at
                   │            │            least every ``stride``-th moving frame)
      (no motion: tracks frozen)  (gap: tracks predicted)        │
                   ▼            ▼                                ▼
                                tracker ──► counter ──► count events (+ timings)

The detector runs on every frame while a track is near a counting line, young, or
waiting for a crossing to be confirmed (see :mod:`agent.vision.schedule`); elsewhere it
runs at most every ``stride`` frames, and not at all while nothing moves
(``schedule="fixed"`` keeps the plain every-``stride``-th-frame rule, for comparison).

:class:`CameraPipeline` is pure processing (no threads, no I/O) so the offline
``agent count`` command, the benchmarks, the tests and the live agent run exactly the
same code.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from agent.vision.counter import Counter, CountEvent, Line, Zone
from agent.vision.detect.base import Detections, Detector
from agent.vision.detect.runtime import RuntimeUnavailable
from agent.vision.motion import MotionGate
from agent.vision.quality import QualityMeter, QualitySettings
from agent.vision.schedule import DetectionScheduler
from agent.vision.tracker import Track, Tracker

STAGES = ("preprocess", "inference", "postprocess", "motion", "track", "count")


@dataclass
class PipelineSettings:
    """Everything the pipeline needs besides the detector (mirrors the camera config)."""

    lines: list[Line]
    zones: list[Zone] = field(default_factory=list)
    fps: float = 15.0
    confidence: float = 0.35
    low_confidence: float = 0.1
    motion: bool = True
    motion_threshold: float = 0.001
    motion_width: int = 160
    stride: int = 1
    schedule: str = "adaptive"
    keepalive_s: float = 2.0
    match_iou: float = 0.2
    lost_s: float = 1.0
    min_hits: int = 2
    class_settle_s: float = 1.0
    quality: QualitySettings = field(default_factory=QualitySettings)


@dataclass
class FrameResult:
    """What processing one frame produced."""

    index: int
    detected: bool
    detections: Detections | None
    tracks: list[Track]
    events: list[CountEvent]


@dataclass
class StageTimes:
    """Accumulated seconds per stage, and how many frames each stage ran on."""

    seconds: dict[str, float] = field(default_factory=lambda: {s: 0.0 for s in STAGES})
    calls: dict[str, int] = field(default_factory=lambda: {s: 0 for s in STAGES})

    def add(self, stage: str, dt: float) -> None:
        """Record ``dt`` seconds spent in ``stage``."""
        self.seconds[stage] += dt
        self.calls[stage] += 1

    def mean_ms(self) -> dict[str, float]:
        """Mean milliseconds per call of each stage."""
        return {s: round(1000 * self.seconds[s] / self.calls[s], 3) if self.calls[s] else 0.0
                for s in STAGES}


class CameraPipeline:
    """Frames in, tracks and count events out; see the module docstring."""

    def __init__(self, detector: Detector, settings: PipelineSettings) -> None:
        self.detector = detector
        self.s = settings
        fps = max(settings.fps, 1.0)
        self.gate = MotionGate(settings.motion_threshold, settings.motion_width) \
            if settings.motion else None
        self.tracker = Tracker(high=settings.confidence, low=settings.low_confidence,
                               match_iou=settings.match_iou,
                               lost_frames=max(round(settings.lost_s * fps),
                                               2 * settings.stride),
                               min_hits=settings.min_hits,
                               tentative_frames=max(2, settings.stride + 1))
        self.counter = Counter(settings.lines, settings.zones,
                               handover_frames=max(round(1.5 * fps), 3 * settings.stride),
                               settle_frames=round(settings.class_settle_s * fps))
        self.keepalive_frames = max(1, round(settings.keepalive_s * fps)) \
            if settings.keepalive_s > 0 else 0
        self.scheduler = DetectionScheduler(settings.lines, settings.stride)
        #: the counts' quality: motion at the lines against what the detector saw there
        self.quality = QualityMeter([(tuple(ln.a), tuple(ln.b)) for ln in settings.lines],
                                    fps, settings.quality)
        self._fresh_frames = settings.stride + 1
        self.frame_size: tuple[int, int] | None = None
        self._finished = 0
        self.times = StageTimes()
        self.frames = 0
        self.frames_detected = 0
        self.frames_skipped_motion = 0
        self.detect_seconds = 0.0
        self._since_detect = 10 ** 9
        self._stride_phase = 0

    # The frame's journey, in three steps. ``process`` runs them back to back;
    # ``process_overlapped`` runs ``infer`` for the next frame on a worker thread while
    # ``finish`` handles this one (onnxruntime and TFLite release the GIL), which keeps the
    # model busy: the pipeline then runs at nearly the model's own rate.

    def plan(self, image: np.ndarray) -> str:
        """Decide this frame's fate: ``"detect"``, ``"predict"`` (gap) or ``"still"``.

        The reason for each decision is tallied in ``self.scheduler.reasons``.
        """
        t0 = time.perf_counter()
        moving = True
        if self.gate is not None:
            moving = self.gate.moving(image)
            self.times.add("motion", time.perf_counter() - t0)
            # a tracked vehicle still on the move keeps the detector on, even when it is too
            # small or slow to register as motion on its own
            moving = moving or any(abs(t.velocity[0]) + abs(t.velocity[1]) > 0.5
                                   for t in self.tracker.tracks if t.confirmed)
        keepalive = self.keepalive_frames and self._since_detect >= self.keepalive_frames
        if self.s.schedule == "fixed":
            due = self._stride_phase % self.s.stride == 0
            self._stride_phase += 1
            reason = "stride" if due and (moving or keepalive) else ""
            if not reason and not moving:
                self._stride_phase = 0
        else:
            ahead = max(1, self.frames - self._finished)
            # a frame planned before this one is at the detector and not tracked yet
            in_flight = self._since_detect < ahead - 1
            reason = self.scheduler.urgent(self.tracker.tracks, self.counter, ahead,
                                           in_flight) if self.s.stride > 1 else ""
            stride = self.scheduler.effective_stride(self.frame_size)
            if not reason and self._since_detect + 1 >= stride:
                reason = "stride" if moving else "keepalive" if keepalive else ""
        if reason:
            self.scheduler.note(reason)
            self._since_detect = 0
            return "detect"
        self._since_detect += 1
        fate = "predict" if moving else "still"
        self.scheduler.note(fate)
        return fate

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, object, float]:
        """Pre-process a frame for the model: ``(tensor, geometry, seconds)``."""
        t0 = time.perf_counter()
        tensor, geo = self.detector.prepare(image)  # type: ignore[attr-defined]
        return tensor, geo, time.perf_counter() - t0

    def run_model(self, prepared: tuple[np.ndarray, object, float]
                  ) -> tuple[object, object, float, float]:
        """Run the model on a prepared tensor (thread-safe: touches only the model)."""
        tensor, geo, t_pre = prepared
        t1 = time.perf_counter()
        raw = self.detector.infer(tensor)  # type: ignore[attr-defined]
        return raw, geo, t_pre, time.perf_counter() - t1

    def infer(self, image: np.ndarray) -> tuple[object, object, float, float]:
        """Pre-process and run the model."""
        return self.run_model(self.prepare(image))

    def finish(self, image: np.ndarray, idx: int, fate: str,
               inferred: tuple[object, object, float, float] | None) -> FrameResult:
        """Decode detections, update the tracker and the counter."""
        size = (image.shape[1], image.shape[0])
        self.frame_size = size
        self._finished += 1
        dets: Detections | None = None
        if fate == "detect" and inferred is not None:
            raw, geo, t_pre, t_inf = inferred
            t2 = time.perf_counter()
            dets = self.detector.decode(raw, geo, self.s.low_confidence)  # type: ignore[attr-defined]
            t3 = time.perf_counter()
            self.times.add("preprocess", t_pre)
            self.times.add("inference", t_inf)
            self.times.add("postprocess", t3 - t2)
            self.frames_detected += 1
            self.detect_seconds += t_pre + t_inf + (t3 - t2)
            tracks = self.tracker.update(dets, size)
            self.scheduler.observe(tracks)
            self.times.add("track", time.perf_counter() - t3)
        elif fate in ("detect", "predict"):
            # stride gap: nothing measured, the tracks coast on their velocity
            t1 = time.perf_counter()
            tracks = self.tracker.predict(size)
            self.times.add("track", time.perf_counter() - t1)
        else:
            # nothing moves: the scene is still, so are the tracks
            tracks = self.tracker.tracks
            self.frames_skipped_motion += 1
        # what the detector vouches for on this frame: the detections it is confident of,
        # and the confirmed tracks a detection just matched (not those coasting on their
        # velocity without one: a blind detector's old tracks would explain new motion)
        fresh = [t.box for t in tracks if t.confirmed and t.missed <= self._fresh_frames]
        if dets is not None:
            keep = dets.scores >= self.s.confidence
            boxes = np.concatenate([dets.boxes[keep], np.array(fresh, np.float32).reshape(-1, 4)])
            self.quality.observe(image, idx, boxes, dets.scores[keep])
        else:
            self.quality.observe(image, idx, np.array(fresh, np.float32).reshape(-1, 4))
        t4 = time.perf_counter()
        events = self.counter.update(tracks, idx, size)
        self.times.add("count", time.perf_counter() - t4)
        return FrameResult(idx, dets is not None, dets, tracks, events)

    def process(self, image: np.ndarray, index: int | None = None) -> FrameResult:
        """Run one frame through gate → detector → tracker → counter."""
        idx = self.frames if index is None else index
        self.frames += 1
        fate = self.plan(image)
        return self.finish(image, idx, fate, self.infer(image) if fate == "detect" else None)

    def process_overlapped(self, frames: Iterable[tuple[int, np.ndarray]], depth: int = 1
                           ) -> Iterator[tuple[np.ndarray, FrameResult]]:
        """Like ``process`` over a stream of ``(index, frame)``, with inference running ahead
        of tracking and counting by up to ``depth`` frames (see :class:`Overlap`). Yields
        ``(frame, result)`` in order."""
        with Overlap(self, depth=depth) as overlap:
            for idx, image in frames:
                done = overlap.submit(image, idx)
                if done is not None:
                    yield done.image, done.result
            while overlap.pending:
                done = overlap.drain()
                yield done.image, done.result  # type: ignore[union-attr]

    def flush(self) -> list[CountEvent]:
        """End of stream: emit the counts still settling their class."""
        return self.counter.flush()

    @property
    def mean_detector_ms(self) -> float:
        """Mean time per detector run (pre-processing, inference and decoding), in ms."""
        return 1000 * self.detect_seconds / self.frames_detected if self.frames_detected else 0.0


@dataclass
class Finished:
    """A frame that went all the way through the pipeline, with what the caller attached."""

    image: np.ndarray
    result: FrameResult
    tag: object = None
    #: why the model did not run on this frame (its process is down), else None
    error: RuntimeUnavailable | None = None


class Overlap:
    """The one overlapped driver of a :class:`CameraPipeline`, offline and live.

    :meth:`submit` plans a frame, pre-processes it here and queues its inference on a
    worker thread, then finishes (decode, track, count) the oldest frame once more than
    ``depth`` are in flight, and returns that one. So the model works on frame k+1 while
    frame k is tracked (onnxruntime and TFLite release the GIL), and with ``depth`` > 1 the
    model keeps running while the tracker catches up with the frames between detections.
    The scheduler sees how far planning runs ahead of tracking (``CameraPipeline.plan``
    predicts tracks that many frames on). Frames come out in the order they went in;
    :meth:`drain` finishes the oldest one in flight (end of a stream, or a live camera with
    no newer frame yet). Call from one thread.
    """

    def __init__(self, pipeline: CameraPipeline, name: str = "infer", depth: int = 1) -> None:
        self.pipeline = pipeline
        self.depth = max(1, int(depth))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._pending: deque[tuple[np.ndarray, int, str, Future | None, object]] = deque()

    @property
    def pending(self) -> bool:
        """True while a submitted frame has not been finished."""
        return bool(self._pending)

    @property
    def busy(self) -> bool:
        """True while the model still runs on the oldest frame in flight."""
        fut = self._pending[0][3] if self._pending else None
        return fut is not None and not fut.done()

    def submit(self, image: np.ndarray, index: int, tag: object = None) -> Finished | None:
        """Start ``image``; once more than ``depth`` frames are in flight, finish and return
        the oldest."""
        p = self.pipeline
        p.frames += 1
        fate = p.plan(image)
        # pre-process here, so the worker thread does nothing but run the model
        fut = self._pool.submit(p.run_model, p.prepare(image)) if fate == "detect" else None
        self._pending.append((image, index, fate, fut, tag))
        return self.drain() if len(self._pending) > self.depth else None

    def drain(self) -> Finished | None:
        """Finish the oldest frame in flight (waiting for its inference), or None if there
        is none."""
        if not self._pending:
            return None
        image, index, fate, fut, tag = self._pending.popleft()
        try:
            inferred = fut.result() if fut else None
        except RuntimeUnavailable as e:  # the model process is down: the tracks coast
            return Finished(image, self.pipeline.finish(image, index, "predict", None), tag, e)
        return Finished(image, self.pipeline.finish(image, index, fate, inferred), tag)

    def close(self) -> None:
        """Stop the worker thread (a frame still in flight is dropped: drain first)."""
        self._pool.shutdown(wait=True)

    def __enter__(self) -> Overlap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
