"""The live camera worker runs the same overlapped path as ``agent count``: same counts on
the same clip, inference of the next frame overlapping the tracking of this one, and no
added latency on a live camera the detector keeps up with."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from agent.runner import Agent
from agent.settings.schema import load_config
from agent.vision.camera import CameraStats, Frame
from agent.vision.detect import load_detector
from agent.vision.offline import count_video
from agent.vision.worker import CameraWorker, settings_for
from sim.traffic import SceneConfig, write_clip
from tests.conftest import SIMNET
from tests.helpers import SLACK_S


def pole_config(tmp_path: Path, video: Path, line: list[int], gating: str) -> Path:
    """One unpaced file camera (every frame, as fast as the pipeline goes)."""
    x1, y1, x2, y2 = line
    cfg = tmp_path / "pole.yaml"
    cfg.write_text(f"""
device: {{id: test-pole, site: lab}}
cameras:
  - name: cam1
    source: {{kind: file, path: {video}}}
    detector: {{model: {SIMNET}}}
    gating: {gating}
    lines:
      - name: main
        points: [[{x1}, {y1}], [{x2}, {y2}]]
        directions: {{up: northbound, down: southbound}}
aggregates: {{interval_s: 3600, path: {tmp_path / 'agg.jsonl'}}}
""")
    return cfg


def run_to_end(agent: Agent, timeout: float = 120) -> list[dict]:
    agent.start()
    end = time.monotonic() + timeout
    while not agent.all_ended() and time.monotonic() < end:
        agent.step()
        time.sleep(0.1)
    agent.stop()
    path = agent.cfg.aggregates.path
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.parametrize("gating", ["{motion: false}", "{motion: true, stride: 2}"])
def test_live_worker_counts_what_agent_count_counts(sim_clip: tuple[Path, dict],
                                                   tmp_path: Path, gating: str) -> None:
    video, gt = sim_clip
    cfg = load_config(pole_config(tmp_path, video, gt["line"], gating))
    recs = run_to_end(Agent(cfg))
    live: dict[str, dict[str, int]] = {}
    for r in recs:
        for d, per in r["counts"].items():
            for c, n in per.items():
                live.setdefault(d, {})[c] = live.get(d, {}).get(c, 0) + n
    cam = cfg.cameras[0]
    res = count_video(video, load_detector(SIMNET), settings_for(cam, 15.0))
    offline = {d: {c: n for c, n in per.items() if n} for d, per in res.totals["main"].items()}
    assert live == {d: per for d, per in offline.items() if per}
    assert sum(r["frames_analysed"] for r in recs) == res.frames == gt["frame_count"]
    assert sum(r["frames_detected"] for r in recs) == res.frames_detected


class SlowDetector:
    """A real detector whose model run and whose decoding each take ``delay`` longer: the
    model run happens on the inference thread, decoding while the frame is finished."""

    def __init__(self, inner: object, delay: float) -> None:
        self.inner, self.delay = inner, delay
        self.spans: dict[str, list[tuple[float, float]]] = {"infer": [], "decode": []}

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def infer(self, tensor: np.ndarray) -> object:
        t0 = time.monotonic()
        time.sleep(self.delay)
        out = self.inner.infer(tensor)  # type: ignore[attr-defined]
        self.spans["infer"].append((t0, time.monotonic()))
        return out

    def decode(self, *args: object) -> object:
        t0 = time.monotonic()
        time.sleep(self.delay)
        out = self.inner.decode(*args)  # type: ignore[attr-defined]
        self.spans["decode"].append((t0, time.monotonic()))
        return out

    def overlapping(self) -> int:
        """Model runs that happened while a frame was being finished (decoded)."""
        return sum(any(a < d1 and d0 < b for d0, d1 in self.spans["decode"])
                   for a, b in self.spans["infer"])


def test_inference_overlaps_tracking(tmp_path: Path) -> None:
    """Model and finish each take ~60 ms: one at a time a frame costs their sum, overlapped
    about the larger one. Checked by when each ran, not by the wall time of the run (which
    a busy machine stretches): overlapped, the next frame's model run happens while the
    last frame is finished; one at a time, never. (The wall time fell 1.86 x in one run on
    this 2-core machine under load: seen, not asserted.)"""
    video = tmp_path / "short.avi"
    gt = write_clip(video, 3, seed=3, cfg=SceneConfig())
    cfg = load_config(pole_config(tmp_path, video, gt["line"], "{motion: false}"))

    def run(overlap: bool) -> tuple[int, int, dict]:
        agent = Agent(cfg)
        w: CameraWorker = agent.workers["cam1"]
        slow = SlowDetector(w.detector, 0.06)
        w.detector = slow  # type: ignore[assignment]
        w.overlap = overlap
        stop = threading.Event()
        w.start(stop)
        assert w.thread is not None
        w.thread.join(timeout=60 + 10 * SLACK_S)
        w.stop()
        assert w.pipeline is not None
        return slow.overlapping(), w.pipeline.frames, w.totals

    serial, overlapped = run(False), run(True)
    assert serial[1] == overlapped[1] == gt["frame_count"]
    assert serial[2] == overlapped[2]                      # same counts either way
    print(f"model runs overlapping a finish: {serial[0]} one at a time, {overlapped[0]} "
          f"overlapped, of {gt['frame_count']} frames")
    assert serial[0] == 0
    assert overlapped[0] >= gt["frame_count"] // 3, overlapped[0]


class ScriptedSource:
    """A camera source that gives the frames it holds, then nothing; it notes, at each
    half-second wait, whether the worker had already finished the frame in flight."""

    def __init__(self, frames: list[np.ndarray], live: bool) -> None:
        self.live = live
        self.frames = [Frame(i, f, time.monotonic(), time.time()) for i, f in enumerate(frames)]
        self.stats = CameraStats(state="live", fps=15.0)
        self.ended = threading.Event()
        self.worker: CameraWorker | None = None
        self.finished_at_long_wait: list[bool] = []

    def start(self) -> ScriptedSource:
        return self

    def stop(self) -> None:
        self.ended.set()

    def get(self, timeout: float = 0.5) -> Frame | None:
        if self.frames:
            return self.frames.pop(0)
        if timeout >= 0.5:
            assert self.worker is not None and self.worker.pipeline is not None
            self.finished_at_long_wait.append(self.worker.last is not None)
            self.ended.set()
            return None
        time.sleep(timeout)
        return None


@pytest.mark.parametrize("live", [True, False])
def test_a_live_camera_gets_no_added_latency(sim_clip: tuple[Path, dict], tmp_path: Path,
                                             live: bool) -> None:
    """A live camera's frame is finished as soon as its inference is, not when the next
    frame comes; a file camera keeps it in flight until the next frame (or the end)."""
    video, gt = sim_clip
    cfg = load_config(pole_config(tmp_path, video, gt["line"], "{motion: false}"))
    agent = Agent(cfg)
    w = agent.workers["cam1"]
    frame = np.full((360, 640, 3), 90, np.uint8)
    src = ScriptedSource([frame], live)
    src.worker, w.source = w, src  # type: ignore[assignment]
    w.run(threading.Event())
    assert src.finished_at_long_wait == [live]
    assert w.last is not None and w.pipeline is not None and w.pipeline.frames == 1


@pytest.mark.parametrize("overlap", [True, False])
def test_liveness_is_when_the_frame_was_captured_not_processed(sim_clip: tuple[Path, dict],
                                                               tmp_path: Path,
                                                               overlap: bool) -> None:
    """Frames captured 8 s ago and still queued when the camera died: processing them must
    not make the camera look alive now (the lamps went back to their fallback 10 s after
    camera_lost, past the 6.5 s bound). Liveness is the newest good frame's capture time."""
    video, gt = sim_clip
    cfg = load_config(pole_config(tmp_path, video, gt["line"], "{motion: false}"))
    agent = Agent(cfg)
    w = agent.workers["cam1"]
    w.overlap = overlap
    src = ScriptedSource([np.random.default_rng(i).integers(0, 255, (360, 640, 3), np.uint8)
                          for i in range(3)], True)
    for f in src.frames:
        f.monotonic -= 8.0                         # waited 8 s in the queue
    src.worker, w.source = w, src  # type: ignore[assignment]
    w.run(threading.Event())
    assert w.pipeline is not None and w.pipeline.frames == 3
    assert w.last_good_mono is not None
    age = w.clock.monotonic() - w.last_good_mono
    assert 8.0 <= age < 8.0 + 30, age
