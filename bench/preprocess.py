"""Pre-processing cost per card layout, as ratios to the YOLOX path, measured in one run.

    python bench/preprocess.py [--frames 300] [--repeats 3] [--size 1280x720]

A detector's input is made from each camera frame by ``agent.vision.detect.base.Letterbox``
(resize into a padded canvas, channel order, normalisation, layout). This times it per
frame for the input specs of common cards, all at 416x416 so that the layouts and
normalisations are compared, not the sizes (YOLOX: NCHW, BGR, 0-255; NanoDet: per-channel
mean and std; YOLOv8: RGB 0-1; CenterNet: RGB, ImageNet mean and std; float TFLite exports:
NHWC; an SSD TFLite export: NHWC uint8, stretched; a uint8 NCHW model), on
frames of a real clip when ``../shared`` is there (else the simulator's), interleaved
``--repeats`` times so that machine noise hits every card alike. Baselines in the same run:
what each card took before issue 26 (``before``: the OpenCV ``blobFromImage`` path for
float NCHW letterboxed cards with one std, like YOLOX's and YOLOv8's, the plain
``preprocess()`` for every other card), and ``preprocess()`` itself. Target (issue 26):
every card within 1.5x of the YOLOX path. Prints a table, then one JSON line.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.settings.modelcard import InputSpec  # noqa: E402
from agent.vision.detect.base import Letterbox, preprocess  # noqa: E402

CLIP = ROOT.parent / "shared" / "data" / "motorway-cctv-320x240.avi"
SIZE = 416   # every card at YOLOX-Nano's input size: the layouts are compared, not the sizes
IMAGENET_BGR = ((103.53, 116.28, 123.675), (57.375, 57.12, 58.395))
IMAGENET_RGB = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))

CARDS = {
    "yolox (NCHW BGR 0-255)": InputSpec(size=(SIZE, SIZE)),
    "nanodet (NCHW BGR mean/std)": InputSpec(size=(SIZE, SIZE), mean=IMAGENET_BGR[0],
                                             std=IMAGENET_BGR[1]),
    "yolov8 (NCHW RGB 0-1)": InputSpec(size=(SIZE, SIZE), channels="RGB",
                                       std=(255, 255, 255)),
    "centernet (NCHW RGB mean/std)": InputSpec(size=(SIZE, SIZE), channels="RGB",
                                               mean=IMAGENET_RGB[0], std=IMAGENET_RGB[1]),
    "tflite float (NHWC RGB -1..1)": InputSpec(size=(SIZE, SIZE), layout="NHWC",
                                               channels="RGB", mean=(127.5,) * 3,
                                               std=(127.5,) * 3),
    "tflite float (NHWC BGR mean/std)": InputSpec(size=(SIZE, SIZE), layout="NHWC",
                                                  mean=IMAGENET_BGR[0], std=IMAGENET_BGR[1]),
    "ssd tflite (NHWC RGB uint8 stretch)": InputSpec(size=(SIZE, SIZE), layout="NHWC",
                                                     channels="RGB", dtype="uint8",
                                                     resize="stretch"),
    "uint8 NCHW (BGR)": InputSpec(size=(SIZE, SIZE), dtype="uint8"),
}
YOLOX = "yolox (NCHW BGR 0-255)"


def frames_of(n: int, size: tuple[int, int]) -> tuple[list[np.ndarray], str]:
    """``n`` frames at ``size``: the shared clip's, scaled (a camera's frame size), or the
    simulator's."""
    out: list[np.ndarray] = []
    if CLIP.exists():
        cap = cv2.VideoCapture(str(CLIP))
        while len(out) < n:
            ok, f = cap.read()
            if not ok:
                break
            out.append(cv2.resize(f, size))
        cap.release()
        source = f"{CLIP.name} scaled to {size[0]}x{size[1]}"
    if not out:
        from sim.traffic import random_training_frame

        rng = np.random.default_rng(1)
        out = [cv2.resize(random_training_frame(rng)[0], size) for _ in range(n)]
        source = f"simulator frames at {size[0]}x{size[1]}"
    return out, source


def blob_path(spec: InputSpec):
    """The YOLOX card's path before issue 26: letterbox into a canvas, then OpenCV's
    blobFromImage (uniform std only)."""
    lb = Letterbox(spec)

    def run(frame: np.ndarray) -> np.ndarray:
        lb._place(frame)
        return cv2.dnn.blobFromImage(lb.canvas, 1.0 / spec.std[0], mean=spec.mean,
                                     swapRB=spec.channels == "RGB", crop=False)
    return run


def before_path(spec: InputSpec):
    """What this card took before issue 26: the blob path when it was float NCHW,
    letterboxed, with one std for all channels (YOLOX's, YOLOv8's), else ``preprocess()``."""
    if (spec.layout == "NCHW" and spec.dtype == "float32" and spec.resize == "letterbox"
            and len(set(spec.std)) == 1):
        return blob_path(spec)
    return lambda f: preprocess(f, spec)


def time_ms(fn, frames: list[np.ndarray]) -> float:
    """Mean milliseconds per frame."""
    fn(frames[0])
    t0 = time.perf_counter()
    for f in frames:
        fn(f)
    return (time.perf_counter() - t0) / len(frames) * 1000


def main(argv: list[str] | None = None) -> int:
    """Time every card's pre-processing; print a table and one JSON line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", default="1280x720", help="camera frame size (1280x720)")
    a = p.parse_args(argv)
    w, h = (int(v) for v in a.size.split("x"))
    cv2.setNumThreads(1)                       # one Pi core
    frames, source = frames_of(a.frames, (w, h))
    fast = {name: Letterbox(spec) for name, spec in CARDS.items()}
    runs: dict[str, list[float]] = {}
    for _ in range(a.repeats):
        for name, spec in CARDS.items():
            runs.setdefault(f"{name}|fast", []).append(time_ms(fast[name], frames))
            runs.setdefault(f"{name}|plain", []).append(
                time_ms(lambda f, s=spec: preprocess(f, s), frames))
            runs.setdefault(f"{name}|before", []).append(time_ms(before_path(spec), frames))
        runs.setdefault("yolox|blob", []).append(time_ms(blob_path(CARDS[YOLOX]), frames))
    best = {k: min(v) for k, v in runs.items()}
    yolox = best[f"{YOLOX}|fast"]
    blob = best["yolox|blob"]
    print(f"pre-processing per frame, {source}, {len(frames)} frames x {a.repeats}, best run, "
          f"one OpenCV thread ({platform.processor() or platform.machine()})")
    print(f"{'card input':40s} {'fast ms':>8s} {'before ms':>9s} {'before/fast':>11s} "
          f"{'preprocess()':>12s} {'fast/yolox':>10s} {'fast/yolox-before':>17s}")
    rows = {}
    for name in CARDS:
        f, pl, bf = best[f"{name}|fast"], best[f"{name}|plain"], best[f"{name}|before"]
        rows[name] = {"fast_ms": round(f, 3), "before_ms": round(bf, 3),
                      "plain_ms": round(pl, 3), "speedup": round(bf / f, 2),
                      "vs_yolox": round(f / yolox, 2), "vs_yolox_blob": round(f / blob, 2)}
        print(f"{name:40s} {f:8.3f} {bf:9.3f} {bf / f:11.2f} {pl:12.3f} {f / yolox:10.2f} "
              f"{f / blob:17.2f}")
    print(f"{'yolox before (blobFromImage)':40s} {blob:8.3f}")
    worst = max(r["vs_yolox_blob"] for r in rows.values())
    ok = worst <= 1.5
    print(f"target: every card within 1.5x of the YOLOX path before it: worst {worst:.2f} "
          f"({'met' if ok else 'NOT met'})")
    print(json.dumps({"bench": "preprocess", "source": source, "frames": len(frames),
                      "repeats": a.repeats, "yolox_blob_ms": round(blob, 3),
                      "yolox_fast_ms": round(yolox, 3), "cards": rows,
                      "worst_vs_yolox_blob": worst, "target_met": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
