"""Resample a clip to a lower frame rate by dropping frames, ground truth with it.

Real cameras give 10–30 fps; a counter tuned at one rate must be checked at the others.
Frame ``k`` of the output is frame ``ceil(k × native / target)`` of the input (evenly spread
drops, no blending, so every kept frame is a real camera frame). The output is lossless
(FFV1 in AVI) so the detector sees exactly the original pixels. A ground-truth event in
input frame ``f`` (the first frame past the line) moves to the first kept frame at or
after ``f``.

Command line::

    python -m sim.resample IN.avi IN.gt.json --fps 15 --out OUT.avi   # + OUT.gt.json
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import sys
from pathlib import Path

import cv2


def kept_frames(n_frames: int, native: float, target: float) -> list[int]:
    """Input frame indices kept when going from ``native`` to ``target`` fps."""
    if not 0 < target <= native:
        raise ValueError(f"target fps must be in (0, {native}], got {target}")
    step = native / target
    out: list[int] = []
    k = 0
    while True:
        i = math.ceil(k * step - 1e-9)
        if i >= n_frames:
            return out
        out.append(i)
        k += 1


def resample_truth(gt: dict, kept: list[int], target: float) -> dict:
    """The ground-truth document for the resampled clip."""
    out = dict(gt)
    events = []
    for e in gt.get("events", []):
        k = bisect.bisect_left(kept, int(e["frame"]))
        if k < len(kept):
            events.append({**e, "frame": k, "source_frame": e["frame"]})
    out["events"] = events
    out["fps"] = target
    out["frame_count"] = len(kept)
    out["frame_range"] = [0, len(kept) - 1]
    out["resampled_from"] = {"fps": gt.get("fps"), "frame_count": gt.get("frame_count"),
                             "rule": "output frame k = input frame ceil(k * native / target)"}
    return out


def resample(video: Path, gt_path: Path, target: float, out: Path) -> dict:
    """Write ``out`` (and ``out.gt.json``) at ``target`` fps; returns the new ground truth."""
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise ValueError(f"cannot open video {video}")
    gt = json.loads(Path(gt_path).read_text())
    native = float(gt.get("fps") or cap.get(cv2.CAP_PROP_FPS))
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    if not frames:
        raise ValueError(f"{video}: no frames")
    kept = kept_frames(len(frames), native, target)
    h, w = frames[0].shape[:2]
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"FFV1"), target, (w, h))
    if not writer.isOpened():
        raise ValueError(f"cannot write {out} (use an .avi name)")
    for i in kept:
        writer.write(frames[i])
    writer.release()
    new = resample_truth(gt, kept, target)
    new["clip"] = out.name
    out.with_suffix(".gt.json").write_text(json.dumps(new, indent=1))
    return new


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m sim.resample",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("video", type=Path)
    p.add_argument("gt", type=Path)
    p.add_argument("--fps", type=float, required=True, help="target frame rate")
    p.add_argument("--out", type=Path, required=True, help="output .avi (FFV1, lossless)")
    a = p.parse_args(argv)
    try:
        new = resample(a.video, a.gt, a.fps, a.out)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {a.out} ({new['frame_count']} frames at {a.fps:g} fps, "
          f"{len(new['events'])} events) and {a.out.with_suffix('.gt.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
