"""Count accuracy per event, at stride 1 and in the CPU-saving mode, across frame rates.

    python bench/accuracy.py                       # the suite (below)
    python bench/accuracy.py --clip VIDEO GT.json  # one clip (model: --model, simnet by default)
    python bench/accuracy.py --quick               # shorter simulator clips, one fps less
    python bench/accuracy.py --only shared-25fps   # one clip of the suite

The suite:

- the shared real clip (``../shared/data``, YOLOX-Nano) at its native 25 fps and resampled
  to 15 and 10 fps by dropping frames (``sim.resample``; lossless, ground truth moved with
  it), when ``../shared`` is present;
- simulator clips (``sim.traffic``, the repo's simnet) at 30 and 15 fps: one with the line
  where vehicles coming up enter the picture (first seen close to, or already at, the line;
  long vehicles cross while their box still touches the bottom edge) and one with static
  occluders over the lanes at the line (vehicles disappear while they cross).

Each clip is counted by the real ``agent count`` twice: **stride 1** (detector on every
frame, no motion gating) and **CPU-saving** (motion gating on, detection stride at most
``max(2, round(fps / 5))``: about 5 detector runs a second when nothing needs more).
Events are scored by :mod:`sim.scoring` (matched / missed / extra / wrong direction, F1).
On the shared clip the CPU-saving frame rate is also given as a ratio to the model's raw
inference rate measured in the same run (``session.run`` alone, on one thread).

Targets, checked and printed: in the CPU-saving mode, on every clip, the total within ±1 of
stride 1's and F1 within 0.02 of stride 1's; on the shared clip, CPU-saving processing
≥ 2.5 × raw inference. The last line is one JSON object with every figure.
"""

from __future__ import annotations

import os

# as the agent does (agent/__init__.py), before numpy loads: an idle OpenBLAS thread spins
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.pipeline import raw_rate  # noqa: E402
from sim.resample import resample  # noqa: E402
from sim.scoring import score_events  # noqa: E402
from sim.traffic import SceneConfig, write_clip  # noqa: E402

SHARED = ROOT.parent / "shared"
SHARED_CLIP = SHARED / "data" / "motorway-cctv-320x240.avi"
YOLOX_CARD = ROOT / "models" / "yolox_nano.yaml"
SIMNET_CARD = ROOT / "models" / "simnet.yaml"
COUNTED = ("car", "motorbike", "bus", "truck")

#: Simulator scenes of the suite: name → (scene settings, seed).
SIM_SCENES: dict[str, tuple[dict, int]] = {
    "near-line": ({"line_y_frac": 0.86, "vehicles_per_minute": 50.0}, 11),
    "occluded": ({"vehicles_per_minute": 45.0,
                  "occluders": [(0.50, 0.47, 0.66, 0.60), (0.24, 0.50, 0.36, 0.58)]}, 12),
}


def saving_stride(fps: float) -> int:
    """The CPU-saving mode's maximum detection stride: about 5 runs a second."""
    return max(2, round(fps / 5))


def count(video: Path, gt: dict, card: Path, stride: int, motion: bool) -> dict:
    """Run ``agent count`` on ``video`` and return its JSON document."""
    x1, y1, x2, y2 = gt["line"]
    cmd = [sys.executable, "-m", "agent", "count", str(video), "--model", str(card),
           "--line", f"{x1},{y1},{x2},{y2},main", "--json", "-q", "--stride", str(stride),
           "--classes", ",".join(COUNTED), "--motion" if motion else "--no-motion"]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if run.returncode != 0:
        raise RuntimeError(f"agent count failed ({run.returncode}): {run.stderr.strip()}")
    return json.loads(run.stdout)


def raw_inference_rate(card: Path, video: Path, seconds: float = 4.0) -> float:
    """Frames/s of the model alone on pre-processed frames of ``video`` (one thread)."""
    import cv2

    from agent.vision.detect import load_detector

    det = load_detector(card, threads=1)
    cap = cv2.VideoCapture(str(video))
    frames = []
    while len(frames) < 50:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    return raw_rate(det, frames, seconds)

def evaluate(name: str, video: Path, gt_path: Path, card: Path, log) -> dict:
    """Count one clip in both modes and score each run per event."""
    gt = json.loads(gt_path.read_text())
    fps = float(gt["fps"])
    truth = [e for e in gt["events"] if e["class"] in COUNTED]
    modes = {"stride1": (1, False), "saving": (saving_stride(fps), True)}
    out: dict = {"clip": name, "fps": fps, "frames": gt["frame_count"], "model": card.stem}
    for mode, (stride, motion) in modes.items():
        log(f"  {name}: {mode} (stride {'≤' if stride > 1 else ''}{stride}, "
            f"motion {'on' if motion else 'off'}) …")
        doc = count(video, gt, card, stride, motion)
        s = score_events(truth, doc["events"])
        seconds = doc["frames"] / fps
        out[mode] = {**s.figures(), "stride_max": stride, "motion": motion,
                     "frames_detected": doc["frames_detected"],
                     "detector_runs_per_s": round(doc["frames_detected"] / seconds, 2),
                     "processing_fps": doc["processing_fps"],
                     "missed_at": [m["frame"] for m in s.missed],
                     "extra_at": [e["frame"] for e in s.extra],
                     "wrong_direction_at": [g["frame"] for g, _ in s.wrong_direction]}
    a, b = out["stride1"], out["saving"]
    out["total_delta"] = b["counted"] - a["counted"]
    out["f1_delta"] = round(b["f1"] - a["f1"], 4)
    out["target_met"] = abs(out["total_delta"]) <= 1 and out["f1_delta"] >= -0.02
    return out


def clips(work: Path, quick: bool, log) -> list[tuple[str, Path, Path, Path]]:
    """Build (or reuse) the suite's clips: ``(name, video, ground truth, card)``."""
    work.mkdir(parents=True, exist_ok=True)
    out = []
    if SHARED_CLIP.is_file():
        gt = SHARED_CLIP.with_suffix(".gt.json")
        out.append(("shared-25fps", SHARED_CLIP, gt, YOLOX_CARD))
        for fps in (15, 10):
            dst = work / f"shared-{fps}fps.avi"
            if not dst.is_file() or not dst.with_suffix(".gt.json").is_file():
                log(f"resampling the shared clip to {fps} fps …")
                resample(SHARED_CLIP, gt, fps, dst)
            out.append((f"shared-{fps}fps", dst, dst.with_suffix(".gt.json"), YOLOX_CARD))
    else:
        log(f"(no {SHARED_CLIP}: the real clip is left out)")
    seconds = 30.0 if quick else 60.0
    for scene, (kw, seed) in SIM_SCENES.items():
        for fps in ((30,) if quick else (30, 15)):
            dst = work / f"sim-{scene}-{fps}fps-{int(seconds)}s.avi"
            if not dst.is_file() or not dst.with_suffix(".gt.json").is_file():
                log(f"rendering simulator clip {dst.name} …")
                write_clip(dst, seconds, seed, SceneConfig(fps=float(fps), **kw))
            out.append((f"sim-{scene}-{fps}fps", dst, dst.with_suffix(".gt.json"), SIMNET_CARD))
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the suite (or one clip) and print the table and the JSON line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clip", nargs=2, type=Path, metavar=("VIDEO", "GT"),
                   help="score one clip instead of the suite")
    p.add_argument("--model", type=Path, help="model card for --clip (default: simnet)")
    p.add_argument("--work", type=Path, default=ROOT / "var" / "bench" / "accuracy",
                   help="where resampled and simulator clips are kept (reused)")
    p.add_argument("--quick", action="store_true", help="30 s simulator clips at 30 fps only")
    p.add_argument("--only", metavar="PREFIX", help="only the suite's clips whose name starts so "
                   "(e.g. shared-25fps)")
    a = p.parse_args(argv)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    if a.clip:
        suite = [(a.clip[0].stem, a.clip[0], a.clip[1], a.model or SIMNET_CARD)]
    else:
        suite = clips(a.work, a.quick, log)
        if a.only:
            suite = [c for c in suite if c[0].startswith(a.only)]
    results = []
    raw: dict[str, list[float]] = {}
    for name, video, gt, card in suite:
        raw.setdefault(str(card), []).append(raw_inference_rate(card, video))
        results.append(evaluate(name, video, gt, card, log))
        raw[str(card)].append(raw_inference_rate(card, video))
    print(f"{'clip':<22}{'mode':<9}{'gt':>4}{'count':>6}{'match':>6}{'miss':>5}{'extra':>6}"
          f"{'wrong':>6}{'F1':>7}{'det/s':>7}{'fps':>8}")
    for r in results:
        for mode in ("stride1", "saving"):
            m = r[mode]
            print(f"{r['clip']:<22}{mode:<9}{m['gt']:>4}{m['counted']:>6}{m['matched']:>6}"
                  f"{m['missed']:>5}{m['extra']:>6}{m['wrong_direction']:>6}{m['f1']:>7.3f}"
                  f"{m['detector_runs_per_s']:>7.1f}{m['processing_fps']:>8.1f}")
        print(f"{'':<22}CPU-saving vs stride 1: total {r['total_delta']:+d}, "
              f"F1 {r['f1_delta']:+.3f} -> {'OK' if r['target_met'] else 'MISSED'}")
    summary: dict = {"clips": results, "targets_met": all(r["target_met"] for r in results)}
    shared = next((r for r in results if r["clip"] == "shared-25fps"), None)
    if shared is not None:
        rate = statistics.median(raw[str(YOLOX_CARD)])
        ratio = shared["saving"]["processing_fps"] / rate
        summary["raw_inference_fps"] = round(rate, 1)
        summary["saving_vs_raw_inference"] = round(ratio, 2)
        summary["speed_target_met"] = ratio >= 2.5
        summary["targets_met"] = summary["targets_met"] and ratio >= 2.5
        print(f"shared clip, CPU-saving: {shared['saving']['processing_fps']:.1f} frames/s = "
              f"{ratio:.2f} x raw inference ({rate:.1f}/s, same run; target >= 2.5)")
    print("all targets met" if summary["targets_met"] else "TARGETS MISSED")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
