"""Count quality (``agent.vision.quality``): how often the counts are judged poor on clips
whose picture is clear (they should never be: a needless fallback costs energy) and on the
same clips washed out like a high-gain night CCTV (``sim.traffic.washout``: grey, flat,
noisy; the detector misses vehicles that still move, and the counts should turn poor).

    python bench/quality.py            # the shared clip (yolox_nano) and three simulator scenes
    python bench/quality.py --quick    # one short simulator scene (the test suite's run)

For each clip and picture: the detections kept, the share of frames with a poor verdict, the
share of 10 s intervals graded poor, the motion episodes and how many the detector explained.
The clear pictures are the baseline measured in the same run: the washed-out rows are read
against them. Ends with one JSON line. The shared clip (``../shared``, 30 s, looped twice) is
used when present.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from agent.vision.counter import Line  # noqa: E402
from agent.vision.detect import load_detector  # noqa: E402
from agent.vision.pipeline import CameraPipeline, PipelineSettings  # noqa: E402
from sim.traffic import SceneConfig, washout, write_clip  # noqa: E402

SHARED_CLIP = ROOT.parent / "shared" / "data" / "motorway-cctv-320x240.avi"
COUNTED = {"car", "motorbike", "bus", "truck"}
INTERVAL_S = 10.0


def frames(path: Path):
    """The clip's frames, in order."""
    cap = cv2.VideoCapture(str(path))
    try:
        while True:
            ok, img = cap.read()
            if not ok:
                return
            yield img
    finally:
        cap.release()


def measure(clip: Path, card: Path, line: tuple, fps: float, washed: bool, loops: int = 1) -> dict:
    """One clip, clear or washed out, through the real pipeline (the detector in process)."""
    det = load_detector(card, COUNTED)
    p = CameraPipeline(det, PipelineSettings(lines=[Line.make("main", line)], fps=fps))
    rng = np.random.default_rng(1)
    per_interval = max(1, round(INTERVAL_S * fps))
    i = poor = kept = 0
    intervals: list[str] = []
    episodes = explained = 0
    t0 = time.perf_counter()
    for _ in range(loops):
        for img in frames(clip):
            r = p.process(washout(img, rng) if washed else img, i)
            poor += not p.quality.verdict().good
            if r.detections is not None:
                kept += int((r.detections.scores >= p.s.confidence).sum())
            i += 1
            if i % per_interval == 0:
                tally = p.quality.take()
                intervals.append(tally.summary()["grade"])
                episodes, explained = episodes + tally.episodes, explained + tally.explained
    tally = p.quality.take()
    if tally.frames:
        intervals.append(tally.summary()["grade"])
        episodes, explained = episodes + tally.episodes, explained + tally.explained
    return {"clip": clip.name, "picture": "washed out" if washed else "clear", "frames": i,
            "detections": kept, "poor_frames": round(poor / max(1, i), 3),
            "intervals": len(intervals), "poor_intervals": intervals.count("poor"),
            "episodes": episodes, "explained": explained,
            "ms_per_frame": round(1000 * (time.perf_counter() - t0) / max(1, i), 1)}


def clips(work: Path, quick: bool) -> list[tuple[Path, Path, tuple, float, int]]:
    """(clip, card, line, fps, loops) for the run."""
    out = []
    if SHARED_CLIP.exists() and not quick:
        out.append((SHARED_CLIP, ROOT / "models" / "yolox_nano.yaml", ((0, 144), (319, 144)), 25.0, 2))
    scenes = [(40.0, 4, 40.0)] if quick else [(15.0, 3, 120.0), (40.0, 4, 120.0), (90.0, 5, 120.0)]
    for density, seed, seconds in scenes:
        cfg = SceneConfig(vehicles_per_minute=density)
        clip = work / f"sim-{density:g}-per-min.avi"
        write_clip(clip, seconds, seed, cfg)
        y = round(cfg.height * cfg.line_y_frac)
        out.append((clip, ROOT / "models" / "simnet.yaml", ((0, y), (cfg.width - 1, y)), cfg.fps, 1))
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the measurement; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one 40 s simulator scene only")
    a = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for clip, card, line, fps, loops in clips(Path(tmp), a.quick):
            for washed in (False, True):
                row = measure(clip, card, line, fps, washed, loops)
                rows.append(row)
                print(f"{row['clip']:32s} {row['picture']:10s} detections {row['detections']:6d}  "
                      f"poor frames {100 * row['poor_frames']:5.1f} %  poor intervals "
                      f"{row['poor_intervals']:2d}/{row['intervals']:2d}  episodes explained "
                      f"{row['explained']}/{row['episodes']}  {row['ms_per_frame']} ms/frame",
                      flush=True)
    clear = [r for r in rows if r["picture"] == "clear"]
    washed = [r for r in rows if r["picture"] != "clear"]
    good_share = 1 - sum(r["poor_intervals"] for r in clear) / max(1, sum(r["intervals"] for r in clear))
    caught = sum(1 for r in washed if r["poor_intervals"]) / max(1, len(washed))
    print(json.dumps({"bench": "quality", "clear_intervals_good": round(good_share, 4),
                      "washed_clips_caught": round(caught, 3), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
