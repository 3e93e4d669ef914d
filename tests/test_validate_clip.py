"""``agent validate --clip``: a camera whose model sees little in its footage is warned
about (exit 0, with the figures and the model card's intended use); one that sees is not."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np

from tests.conftest import MOTORWAY, ROOT, SIMNET, YOLOX, need_shared


def config(tmp_path: Path, model: Path = SIMNET) -> Path:
    cfg = tmp_path / "pole.yaml"
    cfg.write_text(f"""
device: {{id: test-pole, site: lab}}
cameras:
  - name: north
    source: {{kind: stream, url: "http://127.0.0.1:9/stream.mjpg"}}
    detector: {{model: {model}}}
    lines:
      - name: main
        points: [[0, 180], [639, 180]]
""")
    return cfg


def validate(cfg: Path, clip: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", "validate", str(cfg), "--clip",
                           str(clip), "--clip-frames", "40"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def write_video(path: Path, frames: list[np.ndarray]) -> Path:
    h, w = frames[0].shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, (w, h))
    for f in frames:
        out.write(f)
    out.release()
    return path


def seen_of(stdout: str, camera: str) -> tuple[int, int]:
    """``(frames with a detection, frames)`` from the camera's figures line."""
    line = next(x for x in stdout.splitlines() if f"camera {camera}, model" in x)
    m = re.search(r"(\d+) of (\d+) frames", line)
    assert m, line
    return int(m[1]), int(m[2])


def test_a_clip_the_model_cannot_see_is_a_warning(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "blank.avi",
                       [np.full((360, 640, 3), 128, np.uint8) for _ in range(30)])
    r = validate(config(tmp_path), clip)
    assert r.returncode == 0, r.stderr
    assert "WARNING: camera north: weak detections" in r.stderr
    assert "0 of 30 frames (0 %)" in r.stderr and "median best score 0.00" in r.stderr
    assert "Demo, tests and benchmarks on the built-in traffic simulator only" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_clip_the_model_sees_passes_quietly(sim_clip: tuple[Path, dict],
                                              tmp_path: Path) -> None:
    video, _gt = sim_clip
    r = validate(config(tmp_path), video)
    assert r.returncode == 0, r.stderr
    assert "WARNING" not in r.stderr
    seen, of = seen_of(r.stdout, "north")
    assert of == 40 and seen >= 0.5 * of


def test_a_coco_model_on_a_top_down_view_is_warned_about(sim_clip: tuple[Path, dict],
                                                          tmp_path: Path) -> None:
    """YOLOX-Nano (COCO) sees real cars from the side, not the simulator's from above."""
    need_shared(MOTORWAY, ROOT.parent / "shared" / "models" / "yolox_nano.onnx")
    video, _gt = sim_clip
    cfg = config(tmp_path, YOLOX)
    r = validate(cfg, video)
    assert r.returncode == 0, r.stderr
    assert "WARNING: camera north: weak detections" in r.stderr
    assert "model yolox_nano" in r.stderr and "intended use:" in r.stderr
    r = validate(cfg, MOTORWAY)                        # real footage: it sees
    assert r.returncode == 0 and "WARNING" not in r.stderr, r.stderr
    seen, of = seen_of(r.stdout, "north")
    assert seen >= 0.5 * of


def test_a_clip_that_is_not_a_video_is_an_error(tmp_path: Path) -> None:
    still = tmp_path / "still.png"
    cv2.imwrite(str(still), np.full((36, 64, 3), 128, np.uint8))
    r = validate(config(tmp_path), still)
    assert r.returncode == 1 and "is a still image (PNG)" in r.stderr
    assert "Traceback" not in r.stderr
