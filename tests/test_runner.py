"""Aggregates on the wall clock, and ``agent run`` end to end on a simulated camera."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.runner import Agent
from agent.settings.schema import load_config
from agent.vision.aggregates import IntervalAggregator, JsonLinesSink, interval_start
from agent.vision.counter import CountEvent
from tests.conftest import ROOT, SIMNET


def ev(line: str, d: str, cls: str) -> CountEvent:
    return CountEvent(line, d, cls, 1, 0, (0.0, 0.0))


def test_intervals_align_to_the_clock_and_roll() -> None:
    assert interval_start(1_700_000_059.9, 60) == 1_700_000_040
    agg = IntervalAggregator("p1", "s1", "cam", {"main": ("down", "up")}, ["z"], 60)
    t = 1_699_999_980 + 10.0  # 10 s into an interval starting on a minute edge
    agg.add_frame(t, True, 0.02)
    agg.add_frame(t + 1, False)
    agg.add_dropped(t + 1, 3)
    agg.add_late(t + 1, 2)
    agg.add_events(t + 2, [ev("main", "up", "motorbike"), ev("main", "up", "motorbike"),
                           ev("main", "down", "car"), ev("z", "inside", "bus")])
    assert agg.roll(t + 40) == []  # still inside the interval
    recs = agg.roll(t + 50.5)      # past its end
    assert len(recs) == 2
    main = next(r for r in recs if r.get("line") == "main")
    assert main["interval_start"] == "2023-11-14T22:13:00Z"
    assert main["interval_end"] == "2023-11-14T22:14:00Z"
    assert main["counts"] == {"down": {"car": 1}, "up": {"motorbike": 2}} and main["total"] == 3
    assert main["frames_analysed"] == 2 and main["frames_detected"] == 1
    assert main["frames_dropped"] == 3 and main["detector_latency_ms_mean"] == 20.0
    assert main["frames_late"] == 2
    assert main["partial"] is False and main["schema"].endswith("/1")
    zone = next(r for r in recs if r.get("zone") == "z")
    assert zone["counts"] == {"inside": {"bus": 1}}
    # next interval starts empty; a shutdown flush marks it partial
    agg.add_frame(t + 55, True, 0.01)
    (flushed, _) = agg.flush(t + 56)
    assert flushed["partial"] is True and flushed["total"] == 0 and flushed["frames_analysed"] == 1


def test_jsonl_sink_appends_durably(tmp_path: Path) -> None:
    sink = JsonLinesSink(tmp_path / "deep" / "agg.jsonl")
    sink.write([{"a": 1}])
    sink.write([{"a": 2}, {"a": 3}])
    lines = (tmp_path / "deep" / "agg.jsonl").read_text().splitlines()
    assert [json.loads(x)["a"] for x in lines] == [1, 2, 3] and sink.written == 3


def write_config(tmp_path: Path, video: Path, line: list[int], interval: int = 10,
                 realtime: bool = False) -> Path:
    x1, y1, x2, y2 = line
    cfg = tmp_path / "pole.yaml"
    cfg.write_text(f"""
device: {{id: test-pole, site: lab}}
cameras:
  - name: cam1
    source: {{kind: file, path: {video}, realtime: {str(realtime).lower()}}}
    detector: {{model: {SIMNET}}}
    gating: {{motion: false}}
    lines:
      - name: main
        points: [[{x1}, {y1}], [{x2}, {y2}]]
        directions: {{up: northbound, down: southbound}}
aggregates: {{interval_s: {interval}, path: {tmp_path / 'agg.jsonl'}}}
""")
    return cfg


def test_agent_counts_a_file_into_aggregates(sim_clip: tuple[Path, dict], tmp_path: Path) -> None:
    video, gt = sim_clip
    # one hour-long interval stays open through the run, so stop() must write it as partial
    # (with 10 s intervals, a tick could close the last one between the last frame and
    # stop(), leaving nothing open: a race, not a fault)
    agent = Agent(load_config(write_config(tmp_path, video, gt["line"], interval=3600)))
    agent.start()
    end = time.monotonic() + 120
    while not agent.all_ended() and time.monotonic() < end:
        agent.tick()
        time.sleep(0.2)
    agent.stop()
    recs = [json.loads(x) for x in (tmp_path / "agg.jsonl").read_text().splitlines()]
    assert recs and all(r["camera"] == "cam1" and r["line"] == "main" for r in recs)
    got = {"northbound": 0, "southbound": 0}
    for r in recs:
        for d, per in r["counts"].items():
            got[d] += sum(per.values())
    assert got == {"northbound": gt["totals"]["all_by_direction"]["up"],
                   "southbound": gt["totals"]["all_by_direction"]["down"]}
    assert sum(r["frames_analysed"] for r in recs) == gt["frame_count"]
    assert sum(r["frames_dropped"] for r in recs) == 0
    assert recs[-1]["partial"] is True


def test_agent_run_command_stops_cleanly_on_sigterm(sim_clip: tuple[Path, dict],
                                                     tmp_path: Path) -> None:
    video, gt = sim_clip
    cfg = write_config(tmp_path, video, gt["line"], realtime=True)
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(cfg)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen: list[str] = []
    end = time.monotonic() + 90
    # wait until it is really running (status lines), however slow the machine is today
    while time.monotonic() < end:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            break
        seen.append(line)
        if sum("[cam1 live frames" in x for x in seen) >= 3:
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=30)
    out = "".join(seen) + rest
    assert proc.returncode == 0, out
    assert "polelink agent: device test-pole" in out and "[cam1 live frames" in out
    assert "aggregate records in" in out
    recs = [json.loads(x) for x in (tmp_path / "agg.jsonl").read_text().splitlines()]
    assert recs[-1]["partial"] is True and recs[-1]["frames_analysed"] > 0


def test_agent_run_refuses_invalid_config(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("device: {id: x, site: y}\ncameras: []\n")
    r = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(cfg)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 1 and f"{cfg}:2:" in r.stderr and "not starting" in r.stderr
    assert not (tmp_path / "var").exists()


def test_snapshot_command(sim_clip: tuple[Path, dict], tmp_path: Path) -> None:
    import cv2

    video, gt = sim_clip
    cfg = write_config(tmp_path, video, gt["line"])
    out = tmp_path / "snap.png"
    r = subprocess.run([sys.executable, "-m", "agent", "snapshot", "--config", str(cfg),
                        "--camera", "cam1", "-o", str(out)], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "frame 640x360" in r.stdout and "lines: main" in r.stdout
    img = cv2.imread(str(out))
    assert img.shape == (360, 640, 3)
    y = gt["line"][1]
    row = img[y]
    assert ((row[:, 2] > 180) & (row[:, 1] > 180) & (row[:, 0] < 100)).sum() > 200  # the line
    r = subprocess.run([sys.executable, "-m", "agent", "snapshot", "--config", str(cfg),
                        "--camera", "nope", "-o", str(out)], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 1 and "no camera 'nope'; configured: cam1" in r.stderr
