"""One camera, live: source → pipeline → aggregator, on a thread of its own.

:class:`CameraWorker` pulls the newest frame from its :class:`CameraSource`, checks the
camera's health (blinded, frozen), runs the frame through its :class:`CameraPipeline`
and feeds its :class:`IntervalAggregator`. It never blocks longer than half a second (or one
inference), so a stalled camera only stalls itself.

Frames go through :class:`agent.vision.pipeline.Overlap`, as in ``agent count``: the
model runs on the newest frame on a second thread while the previous one is tracked and
counted. A camera that delivers every frame (an unpaced file) always has the next frame
ready, so the pipeline runs at about the model's own rate. A live camera only overlaps
when a newer frame arrives while the model is still busy; otherwise the frame in flight
is finished at once, so overlapping adds no latency (nor late frames) to a camera the
detector keeps up with. It keeps what others ask about, each readable from any
thread: the source's state, the monotonic time of the last *good* frame (the lighting
service's camera liveness), the last frame and its detections (live snapshots), and the
counts since the start (the status line).

A camera whose model failed to load still gets a worker: its source is not started, its
state is ``model_error``, and its intervals close with ``frames_analysed: 0``, so the
camera is reported, not the pole. A model whose process crashed or hung
(``agent.vision.detect.isolated``) makes the camera ``model_down``: its frames are read
(the camera stays live) but not analysed until the process is back, after its back-off;
the first frame analysed again ends ``model_down``.

The worker's loop stamps :attr:`CameraWorker.heartbeat` on every pass (at least every
half second, or one inference), for the service watchdog.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from agent.clock import Clock
from agent.service.heartbeat import Heartbeat
from agent.settings.modelcard import ModelError
from agent.settings.schema import CameraConfig
from agent.vision.aggregates import IntervalAggregator
from agent.vision.camera import CameraSource, Frame
from agent.vision.counter import Line, Zone
from agent.vision.detect.base import Detections, Detector
from agent.vision.detect.runtime import RuntimeUnavailable
from agent.vision.motion import CameraHealth
from agent.vision.pipeline import CameraPipeline, Finished, Overlap, PipelineSettings
from agent.vision.quality import QualitySettings

log = logging.getLogger(__name__)

#: A frame analysed more than this long after capture is counted as late.
LATE_AFTER_S = 0.5
#: The longest one pass of a worker's loop may take (a frame's wait, one inference and
#: its tracking, on the slowest pole) before the worker counts as stuck.
WORKER_BOUND_S = 60.0


def settings_for(cam: CameraConfig, fps: float) -> PipelineSettings:
    """Pipeline settings from a camera's config section."""
    lines = [Line.make(ln.name, ln.points, ln.directions, ln.anchor) for ln in cam.lines]
    zones = [Zone(z.name, list(z.polygon)) for z in cam.zones]
    g, t, d, q = cam.gating, cam.tracker, cam.detector, cam.quality
    return PipelineSettings(lines=lines, zones=zones, fps=fps, confidence=d.confidence,
                            low_confidence=d.low_confidence, motion=g.motion,
                            motion_threshold=g.motion_threshold, motion_width=g.motion_width,
                            stride=g.stride, schedule=g.schedule, keepalive_s=g.keepalive_s,
                            match_iou=t.match_iou,
                            lost_s=t.lost_s, min_hits=t.min_hits,
                            class_settle_s=t.class_settle_s,
                            quality=QualitySettings(
                                window_s=q.window_s, window_episodes=q.window_episodes,
                                recover_episodes=q.recover_episodes, recover_s=q.recover_s,
                                min_missed=q.min_missed, max_missed=q.max_missed, band=q.band,
                                active=q.active))


@dataclass
class LastFrame:
    """The newest analysed frame and what the detector saw in it (for snapshots)."""

    image: np.ndarray
    wall: float
    detections: Detections | None


@dataclass
class CameraWorker:
    """See the module docstring."""

    cfg: CameraConfig
    source: CameraSource
    aggregator: IntervalAggregator
    clock: Clock
    detector: Detector | None = None
    model_error: str = ""
    #: why the model process cannot run now ("" while it can)
    model_down: str = ""
    pipeline: CameraPipeline | None = None
    thread: threading.Thread | None = None
    totals: dict[str, dict[str, int]] = field(default_factory=dict)  # line → dir → since start
    health: CameraHealth = field(default_factory=CameraHealth)
    last_good_mono: float | None = None
    last: LastFrame | None = None
    overlap: bool = True          # False: one frame at a time (to measure what overlap gives)
    heartbeat: Heartbeat = field(default_factory=lambda: Heartbeat("", WORKER_BOUND_S))
    _inflight: Overlap | None = field(default=None, init=False, repr=False)
    _det_seen: float = field(default=0.0, init=False, repr=False)
    _switches_seen: int = field(default=0, init=False, repr=False)
    _retry_at: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        self.heartbeat.name = f"camera {self.cfg.name} pipeline"

    @property
    def name(self) -> str:
        """The camera's name."""
        return self.cfg.name

    @property
    def state(self) -> str:
        """``model_error``, ``model_down``, or the source's state (live, reconnecting,
        error, ended…)."""
        if self.detector is None or self.model_error:
            return "model_error"
        return "model_down" if self.model_down else self.source.stats.state

    def start(self, stop: threading.Event) -> None:
        """Start the source and this worker's thread (not for a camera without a model)."""
        if self.detector is None:
            return
        self.heartbeat.arm()
        self.source.start()
        self.thread = threading.Thread(target=self.run, args=(stop,),
                                       name=f"pipeline-{self.cfg.name}", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        """Stop the source and wait for the thread."""
        self.source.stop()
        if self.thread is not None:
            self.thread.join(timeout=5)

    def run(self, stop: threading.Event) -> None:
        """Consume frames until ``stop`` or the source ends; never blocks long."""
        dropped_seen = 0
        ended = False               # on purpose (not an exception): the heartbeat retires
        try:
            while not stop.is_set():
                self.heartbeat.beat()
                frame = self._next_frame()
                dropped = self.source.stats.frames_dropped
                self.aggregator.add_dropped(dropped - dropped_seen)
                dropped_seen = dropped
                if frame is None:
                    # nothing new for half a second: finish the frame in flight now
                    self._complete(self._inflight.drain() if self._inflight else None)
                    if self.source.ended.is_set():
                        break
                    continue
                self.process(frame.image, frame.index, frame.monotonic)
            ended = True
        except ModelError as e:  # the model's outputs do not fit its card: stop this camera
            self.model_error = str(e).splitlines()[0]
            log.error("camera %s: model failed, camera stopped: %s", self.name, self.model_error)
            self.source.stop()
            ended = True
        finally:
            if ended:
                self.heartbeat.retire()
            with contextlib.suppress(ModelError):  # already reported: the camera is stopped
                self._flush()

    def _next_frame(self) -> Frame | None:
        """The next frame within 0.5 s. With a frame in flight on a live camera, a newer
        frame is awaited only while the model still runs; then the one in flight is
        finished first (see the module docstring)."""
        ov = self._inflight
        if ov is not None and ov.pending and getattr(self.source, "live", False):
            end = time.monotonic() + 0.5
            while ov.busy and time.monotonic() < end:
                frame = self.source.get(timeout=0.005)
                if frame is not None:
                    return frame
            self._complete(ov.drain())
        return self.source.get(timeout=0.5)

    def process(self, image: np.ndarray, index: int, captured_mono: float) -> None:
        """One frame: health, lateness, then the pipeline; the aggregator gets the frame
        when it is finished, here or (overlapped) with the next one (``captured_mono``:
        ``time.monotonic`` at capture, for lateness)."""
        if self.pipeline is None:
            assert self.detector is not None
            fps = self.cfg.fps_limit or self.source.stats.fps or 15.0
            self.pipeline = CameraPipeline(self.detector, settings_for(self.cfg, fps))
            self.aggregator.fps = self.cfg.fps_limit or self.source.stats.fps or None
        if self.overlap and self._inflight is None:
            self._inflight = Overlap(self.pipeline, f"infer-{self.cfg.name}")
        blinded, frozen = self.health.check(image)
        self.aggregator.add_health(blinded, frozen)
        if time.monotonic() - captured_mono > LATE_AFTER_S:
            self.aggregator.add_late(1)
        # a good frame's tag is when it was captured, on the agent's clock: liveness is
        # the camera's, not the pipeline's (frames still queued after the camera died must
        # not keep it fresh: the lamps went back to their fallback 10 s late)
        good = None if blinded or frozen else \
            self.clock.monotonic() - max(0.0, time.monotonic() - captured_mono)
        if self.model_down and time.monotonic() < self._retry_at:
            return                      # the model process is down: not analysed
        if self._inflight is not None:
            self._complete(self._inflight.submit(image, index, good))
            return
        try:
            self._complete(Finished(image, self.pipeline.process(image, index), good))
        except RuntimeUnavailable as e:
            self._model_failed(e)

    def _model_failed(self, e: RuntimeUnavailable) -> None:
        """The model process is down: wait out its back-off (reported once)."""
        if not self.model_down:
            log.error("camera %s: %s; frames are not analysed until it is back",
                      self.name, e)
        self.model_down = str(e).splitlines()[0] if str(e) else "model process down"
        self._retry_at = time.monotonic() + e.retry_in_s

    def _complete(self, done: Finished | None) -> None:
        """A finished frame: aggregator, counts, liveness and the last frame."""
        if done is None or self.pipeline is None:
            return
        p, res = self.pipeline, done.result
        if done.error is not None:
            self._model_failed(done.error)
        elif res.detected and self.model_down:
            log.warning("camera %s: the model process is back; frames are analysed again",
                        self.name)
            self.model_down = ""
        captured = done.tag if isinstance(done.tag, float) and done.error is None else None
        good = captured is not None
        # only ``finish`` moves these, so the change since the last frame is this frame's
        det_s, switches = p.detect_seconds, p.counter.id_switches
        self.aggregator.add_frame(res.detected, det_s - self._det_seen, good)
        self.aggregator.add_quality(p.quality.take())
        self._count(res.events)
        self.aggregator.add_id_switches(switches - self._switches_seen)
        self._det_seen, self._switches_seen = det_s, switches
        if captured is not None:
            self.last_good_mono = max(self.last_good_mono or captured, captured)
        self.last = LastFrame(done.image, self.clock.time(),
                              res.detections if res.detections is not None
                              else self.last.detections if self.last else None)

    @property
    def quality(self) -> tuple[str, ...]:
        """Why the counts cannot be trusted now (empty while they can; readable from any
        thread): the quality meter's verdict on the frames analysed so far."""
        return self.pipeline.quality.verdict().reasons if self.pipeline is not None else ()

    def _count(self, events: list) -> None:
        self.aggregator.add_events(events)
        for e in events:
            per = self.totals.setdefault(e.line, {})
            per[e.direction] = per.get(e.direction, 0) + 1

    def _flush(self) -> None:
        """End of the camera: finish the frame in flight, then the counts still settling."""
        ov, self._inflight = self._inflight, None
        if ov is not None:
            try:
                self._complete(ov.drain())
            finally:
                ov.close()
        if self.pipeline is not None:
            self._count(self.pipeline.flush())

    def status(self) -> str:
        """``[name state frames drop det] counts`` for the status line."""
        st, p = self.source.stats, self.pipeline
        c = " ".join(f"{line}: " + " ".join(f"{d} {n}" for d, n in dirs.items())
                     for line, dirs in self.totals.items()) or "no crossings yet"
        lat = f"{p.mean_detector_ms:.0f}ms" if p and p.frames_detected else "-"
        return f"[{self.name} {self.state} frames {st.frames_read} drop {st.frames_dropped} " \
               f"det {lat}] {c}"


WorkerFactory = Callable[[CameraConfig], CameraWorker]
