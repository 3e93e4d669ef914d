"""``agent run``: every configured camera, live, into wall-clock aggregates.

One worker thread per camera pulls the newest frame from its :class:`CameraSource`,
runs it through its :class:`CameraPipeline` and feeds the camera's
:class:`IntervalAggregator`. The main thread closes intervals on the clock, writes them
to the JSON-lines file, and shows a live status line. A camera that stalls only stalls
its own worker (which keeps waiting with a timeout); SIGINT/SIGTERM close the open
interval as ``partial`` and exit cleanly.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.city import CityLink
from agent.settings.schema import AgentConfig, CameraConfig, load_config
from agent.settings.yamlfile import ConfigError
from agent.uplink.commands import CommandError
from agent.vision.aggregates import IntervalAggregator, JsonLinesSink
from agent.vision.camera import CameraSource, describe
from agent.vision.counter import Line, Zone
from agent.vision.detect import ModelError, load_detector
from agent.vision.motion import CameraHealth
from agent.vision.pipeline import CameraPipeline, PipelineSettings
from drivers.bus import BusError

log = logging.getLogger(__name__)

#: A frame analysed more than this long after capture is counted as late.
LATE_AFTER_S = 0.5


def settings_for(cam: CameraConfig, fps: float) -> PipelineSettings:
    """Pipeline settings from a camera's config section."""
    lines = [Line.make(ln.name, ln.points, ln.directions, ln.anchor) for ln in cam.lines]
    zones = [Zone(z.name, list(z.polygon)) for z in cam.zones]
    g, t, d = cam.gating, cam.tracker, cam.detector
    return PipelineSettings(lines=lines, zones=zones, fps=fps, confidence=d.confidence,
                            low_confidence=d.low_confidence, motion=g.motion,
                            motion_threshold=g.motion_threshold, motion_width=g.motion_width,
                            stride=g.stride, keepalive_s=g.keepalive_s, match_iou=t.match_iou,
                            lost_s=t.lost_s, min_hits=t.min_hits,
                            class_settle_s=t.class_settle_s)


@dataclass
class CameraWorker:
    """One camera's source, pipeline and aggregator, run on a thread."""

    cfg: CameraConfig
    source: CameraSource
    aggregator: IntervalAggregator
    pipeline: CameraPipeline | None = None
    thread: threading.Thread | None = None
    totals: dict[str, dict[str, int]] | None = None  # line -> direction -> count since start
    health: CameraHealth = field(default_factory=CameraHealth)

    def run(self, stop: threading.Event, make_pipeline) -> None:
        """Consume frames until ``stop``; never blocks longer than half a second."""
        dropped_seen = 0
        self.totals = {}
        while not stop.is_set():
            frame = self.source.get(timeout=0.5)
            now = time.time()
            dropped = self.source.stats.frames_dropped
            self.aggregator.add_dropped(now, dropped - dropped_seen)
            dropped_seen = dropped
            if frame is None:
                if self.source.ended.is_set():
                    self._flush(now)
                    return
                continue
            if self.pipeline is None:
                self.pipeline = make_pipeline(self.cfg, self.source.stats.fps)
                self.aggregator.fps = self.cfg.fps_limit or self.source.stats.fps or None
            self.aggregator.add_health(now, *self.health.check(frame.image))
            if time.monotonic() - frame.monotonic > LATE_AFTER_S:
                self.aggregator.add_late(now, 1)
            switches = self.pipeline.counter.id_switches
            det_s = self.pipeline.detect_seconds
            res = self.pipeline.process(frame.image, frame.index)
            self.aggregator.add_frame(now, res.detected, self.pipeline.detect_seconds - det_s)
            self._events(now, res.events)
            self.aggregator.add_id_switches(now, self.pipeline.counter.id_switches - switches)
        self._flush(time.time())

    def _events(self, now: float, events: list) -> None:
        self.aggregator.add_events(now, events)
        for e in events:
            per = self.totals.setdefault(e.line, {}) if self.totals is not None else {}
            per[e.direction] = per.get(e.direction, 0) + 1

    def _flush(self, now: float) -> None:
        if self.pipeline is not None:
            self._events(now, self.pipeline.flush())


class Agent:
    """The running agent: workers, aggregation clock, sink."""

    def __init__(self, cfg: AgentConfig, config_path: Path | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.reload_requested = threading.Event()
        self.stop_event = threading.Event()
        self.sink = JsonLinesSink(cfg.aggregates.path)
        self.detectors = {}
        # load every model before starting anything: nothing starts half-configured
        for cam in cfg.cameras:
            d = cam.detector
            self.detectors[cam.name] = load_detector(d.model, set(d.classes), d.confidence,
                                                     d.nms_iou, d.merge_iou, d.threads)
        self.workers: list[CameraWorker] = []
        for cam in cfg.cameras:
            agg = IntervalAggregator(cfg.device.id, cfg.device.site, cam.name,
                                     {ln.name: Line.make(ln.name, ln.points, ln.directions).names
                                      for ln in cam.lines},
                                     [z.name for z in cam.zones], cfg.aggregates.interval_s)
            self.workers.append(CameraWorker(cam, CameraSource(cam.source, cam.name), agg))
        self.records: list[dict] = []
        # lighting buses and the uplink last: a bus that will not open stops the start here
        self.city = CityLink(cfg, self._reload, self._snapshot)

    def _reload(self) -> str:
        """The ``reload_config`` command: validate the file; the main loop restarts on it."""
        if self.config_path is None:
            raise CommandError("this agent was not started from a config file")
        try:
            load_config(self.config_path)
        except ConfigError as e:
            raise CommandError("config is invalid, nothing changed: "
                               + "; ".join(str(p) for p in e.problems[:5])) from None
        self.reload_requested.set()
        return "valid; restarting the pipelines with it"

    def _snapshot(self, camera: str | None) -> dict:
        """The ``request_snapshot`` command: an annotated frame written on the pole."""
        from agent.vision.snapshot import SnapshotError, take_snapshot

        if self.config_path is None:
            raise CommandError("this agent was not started from a config file")
        name = camera or self.cfg.cameras[0].name
        out = self.cfg.aggregates.path.parent / "snapshots" / f"{name}-{int(time.time())}.png"
        try:
            info = take_snapshot(self.config_path, name, out, timeout=10)
        except (SnapshotError, ConfigError) as e:
            raise CommandError(str(e)) from None
        return {"camera": name, "path": str(out), **info}

    def _make_pipeline(self, cam: CameraConfig, source_fps: float) -> CameraPipeline:
        fps = cam.fps_limit or source_fps or 15.0
        return CameraPipeline(self.detectors[cam.name], settings_for(cam, fps))

    def start(self) -> None:
        """Start every camera and its worker."""
        for w in self.workers:
            log.info("camera %s: %s", w.cfg.name, describe(w.cfg.source))
            w.source.start()
            w.thread = threading.Thread(target=w.run, args=(self.stop_event, self._make_pipeline),
                                        name=f"pipeline-{w.cfg.name}", daemon=True)
            w.thread.start()

    def tick(self, now: float | None = None) -> list[dict]:
        """Close finished intervals and write them; returns the records written."""
        now = time.time() if now is None else now
        out: list[dict] = []
        for w in self.workers:
            out.extend(w.aggregator.roll(now))
        self.sink.write(out)
        self.records.extend(out)
        if out:
            self.city.on_interval(out, self.camera_states())
        return out

    def camera_states(self) -> dict[str, str]:
        """Each camera's source state (live, reconnecting, ended, error...)."""
        return {w.cfg.name: w.source.stats.state for w in self.workers}

    def stop(self) -> list[dict]:
        """Stop cameras and workers; write the open interval as partial."""
        self.stop_event.set()
        for w in self.workers:
            w.source.stop()
            if w.thread:
                w.thread.join(timeout=5)
        now = time.time()
        out = self.tick(now)
        tail: list[dict] = []
        for w in self.workers:
            tail.extend(w.aggregator.flush(now))
        self.sink.write(tail)
        self.records.extend(tail)
        if tail:
            self.city.on_interval(tail, self.camera_states())
        if self.city.uplink is not None and self.city.outbox is not None:
            end = time.monotonic() + 3  # a short grace to send what is queued; the rest waits
            while len(self.city.outbox) and time.monotonic() < end:
                time.sleep(0.05)
        self.city.close()
        return out + tail

    def all_ended(self) -> bool:
        """True when every source has ended (files without loop)."""
        return all(w.source.ended.is_set() and not (w.thread and w.thread.is_alive())
                   for w in self.workers)

    def status_line(self) -> str:
        """One line: per camera, state, frames, detector latency and counts since start."""
        parts = []
        for w in self.workers:
            st = w.source.stats
            p = w.pipeline
            c = " ".join(f"{line}: " + " ".join(f"{d} {n}" for d, n in dirs.items())
                         for line, dirs in (w.totals or {}).items()) or "no crossings yet"
            lat = f"{p.mean_detector_ms:.0f}ms" if p and p.frames_detected else "-"
            parts.append(f"[{w.cfg.name} {st.state} frames {st.frames_read} drop {st.frames_dropped}"
                         f" det {lat}] {c}")
        for name, ctl in self.city.groups.items():
            lvl = ctl.last_level_pct
            parts.append(f"lamps {name} {'-' if lvl is None else f'{lvl:.0f}%'}"
                         f" {self.city._modes.get(name, '')}".rstrip())
        up = self.city.uplink
        if up is not None:
            q = len(self.city.outbox) if self.city.outbox else 0
            parts.append(f"mqtt {'up' if up.connected else 'DOWN'} queued {q}")
        return " | ".join(parts)


def run_agent(config: Path, duration: float | None = None, live: bool = True) -> int:
    """Load the config, run until stopped (or ``duration``), return an exit code."""
    try:
        cfg = load_config(config)
    except ConfigError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        print(f"{config}: INVALID, not starting", file=sys.stderr)
        return 1
    try:
        agent = Agent(cfg, config)
    except (ModelError, ConfigError, BusError) as e:
        print(f"agent: error: {e}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %s: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.start()
    t0 = time.monotonic()
    last_print = 0.0
    print(f"polelink agent: device {cfg.device.id} at {cfg.device.site}, "
          f"{len(cfg.cameras)} camera(s), {cfg.aggregates.interval_s} s intervals -> "
          f"{cfg.aggregates.path}", flush=True)
    try:
        while not stop.is_set():
            stop.wait(0.5)
            for r in agent.tick():
                where = r.get("line") or r.get("zone")
                print(f"\n{r['interval_start']} {r['camera']}/{where}: total {r['total']} "
                      f"{r['counts']} frames {r['frames_analysed']} dropped {r['frames_dropped']}",
                      flush=True)
            if live and time.monotonic() - last_print >= 1.0:
                last_print = time.monotonic()
                end = "\r" if sys.stdout.isatty() else "\n"
                print(agent.status_line()[:240].ljust(120), end=end, flush=True)
            if duration is not None and time.monotonic() - t0 >= duration:
                break
            if agent.all_ended():
                log.info("all sources ended")
                break
            if agent.reload_requested.is_set():
                log.info("reloading %s", config)
                agent.stop()
                cfg = load_config(config)
                agent = Agent(cfg, config)
                agent.start()
    finally:
        agent.stop()
        print(f"\nstopped; {agent.sink.written} aggregate records in {cfg.aggregates.path}")
    return 0
