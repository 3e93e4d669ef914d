"""The pipeline's counts on simulated clips must equal the simulator's ground truth exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.vision.detect import load_detector
from agent.vision.offline import count_video, lines_from_args
from agent.vision.pipeline import PipelineSettings
from sim.traffic import SceneConfig, ground_truth, run_scene
from tests.conftest import ROOT, SIMNET

SIMNET_SSD = ROOT / "models" / "simnet_ssd.yaml"


def counts(video: Path, gt: dict, card: Path = SIMNET, **kw: object) -> dict:
    x1, y1, x2, y2 = gt["line"]
    settings = PipelineSettings(lines=lines_from_args([f"{x1},{y1},{x2},{y2},main"]), **kw)
    res = count_video(video, load_detector(card), settings)
    return res.totals["main"]


def gt_totals(gt: dict) -> dict:
    return {d: {c: n for c, n in gt["totals"][d].items() if n} for d in ("down", "up")}


def test_simulator_is_deterministic_and_motorbike_heavy() -> None:
    cfg = SceneConfig(vehicles_per_minute=60)
    a = [e for _, ev in run_scene(cfg, 3, 300) for e in ev]
    b = [e for _, ev in run_scene(cfg, 3, 300) for e in ev]
    assert a == b and len(a) > 5
    gt = ground_truth(cfg, 3, 300, a, "x")
    moto = sum(gt["totals"][d]["motorbike"] for d in ("up", "down"))
    assert moto / gt["totals"]["all"] > 0.35
    assert gt["totals"]["all_by_direction"]["up"] > 0 and gt["totals"]["all_by_direction"]["down"] > 0


def test_exact_counts_onnx(sim_clip: tuple[Path, dict]) -> None:
    video, gt = sim_clip
    assert counts(video, gt, motion=False) == gt_totals(gt)


def test_exact_counts_tflite(sim_clip: tuple[Path, dict]) -> None:
    video, gt = sim_clip
    assert counts(video, gt, SIMNET_SSD, motion=False) == gt_totals(gt)


def test_exact_counts_at_5fps(sim_clip_5fps: tuple[Path, dict]) -> None:
    video, gt = sim_clip_5fps
    assert counts(video, gt, motion=False) == gt_totals(gt)


@pytest.mark.parametrize("stride", [2, 3])
def test_gating_and_stride_keep_counts(sim_clip: tuple[Path, dict], stride: int) -> None:
    video, gt = sim_clip
    got = counts(video, gt, motion=True, stride=stride)
    total = sum(sum(v.values()) for v in got.values())
    # gating/stride may lose a crossing at the very end of the clip (nothing left to
    # confirm it), never more than one, and never invent one
    assert gt["totals"]["all"] - 1 <= total <= gt["totals"]["all"]


def test_count_command_json(sim_clip: tuple[Path, dict], tmp_path: Path) -> None:
    video, gt = sim_clip
    x1, y1, x2, y2 = gt["line"]
    out = tmp_path / "annotated.avi"
    r = subprocess.run([sys.executable, "-m", "agent", "count", str(video), "--model", str(SIMNET),
                        "--line", f"{x1},{y1},{x2},{y2},main", "--json", "--annotate", str(out),
                        "--max-frames", "150"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["frames"] == 150 and doc["model"] == "simnet"
    assert set(doc["stage_ms"]) >= {"decode", "preprocess", "inference", "postprocess", "track",
                                    "count"}
    assert doc["stage_ms"]["inference"] > 0
    early = [e for e in gt["events"] if e["frame"] < 147]
    assert doc["lines"]["main"]["total"] == len(early)
    assert doc["lines"]["main"]["by_direction"].keys() == {"down", "up"}
    import cv2
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 150
    ok, frame = cap.read()
    assert ok and frame.shape[:2] == (360, 640)
    # the counting line is drawn in yellow across the road
    row = frame[int(y1)]
    assert ((row[:, 2] > 180) & (row[:, 1] > 180) & (row[:, 0] < 100)).sum() > 200


def test_count_command_errors(tmp_path: Path) -> None:
    def agent(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True,
                              text=True, cwd=ROOT)

    r = agent("count", str(tmp_path / "none.mp4"), "--model", str(SIMNET), "--line", "0,1,2,3")
    assert r.returncode == 1 and "not found" in r.stderr
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00garbage" * 100)
    r = agent("count", str(bad), "--model", str(SIMNET), "--line", "0,1,2,3")
    assert r.returncode == 1 and "cannot open video" in r.stderr
    r = agent("count", str(bad), "--model", str(SIMNET), "--line", "0,1,2")
    assert r.returncode == 2 and "x1,y1,x2,y2" in r.stderr
    r = agent("count", str(bad), "--model", str(tmp_path / "card.yaml"), "--line", "0,1,2,3")
    assert r.returncode == 1 and "file not found" in r.stderr
