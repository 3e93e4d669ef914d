"""Pipeline throughput as ratios to raw model inference, measured in one run.

    python bench/pipeline.py [--video V --model CARD --line x1,y1,x2,y2] [--repeats 3]
                             [--agent-cameras 1,2,4] [--agent-seconds 35]

Default: ``../shared/data/motorway-cctv-320x240.avi`` with YOLOX-Nano, onnxruntime on
one thread (``intra_op_num_threads=1``, like one Raspberry Pi core); without
``../shared`` it falls back to a simulated clip with the repo's simnet (and says so).

Measures, interleaved ``--repeats`` times so that machine noise hits every mode alike:

- raw: frames/s of ``session.run`` alone on frames pre-processed beforehand;
- full: decode → pre-process → detect → track → count on every frame;
- gated: the same with motion gating and detection stride 2, 3 and 5 (at 25 fps,
  stride 5 still runs the detector 5 times a second);

and prints each rate as a ratio to raw (targets: full ≥ 0.9 × raw, gated ≥ 3 × raw),
with inference running ahead of tracking (by up to stride - 1 frames,
``lookahead_for``), and decoding on a reader thread, as in ``agent count`` (so the
pipeline may use a second core; the model one),
the count each mode produced (accuracy effect; against ground truth when there is one)
and the process's peak RSS.

Then ``agent run`` itself (``bench/agent_run.py``): the real agent process on 1, 2 and 4
unpaced file cameras all reading the video (``--agent-cameras``; empty skips it), each run
``--agent-seconds`` long, with frames/s per camera and in all read from the agent's own
aggregate records, as ratios to the same raw rate, and memory: the agent process's peak
RSS (``VmHWM``), its model processes', and the peak sum of ``Pss`` over all of them
(target ≤ 250 MB). Each count runs with the models apart (as shipped) and then in the
agent's process (``POLELINK_MODELS_IN_PROCESS=1``), the baseline of what the split costs;
``raw_isolated`` and ``full_isolated`` measure the same in this process. The last line is
one JSON object with every figure.
"""

from __future__ import annotations

import os

# as the agent does (agent/__init__.py), before numpy loads: an idle OpenBLAS thread spins
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.vision.detect import load_detector  # noqa: E402
from agent.vision.detect.isolated import ModelHosts  # noqa: E402
from agent.vision.offline import count_video, lines_from_args, lookahead_for  # noqa: E402
from agent.vision.pipeline import PipelineSettings  # noqa: E402
from bench.agent_run import RSS_TARGET_MB, measure_agent_run  # noqa: E402

SHARED_VIDEO = ROOT.parent / "shared" / "data" / "motorway-cctv-320x240.avi"
SHARED_MODEL = ROOT.parent / "shared" / "models" / "yolox_nano.onnx"


def raw_rate(det, frames: list, seconds: float = 6.0) -> float:
    """Frames/s of the model's session.run alone, on already pre-processed frames."""
    tensors = [det.prepare(f)[0] for f in frames]
    det.infer(tensors[0])  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        det.infer(tensors[n % len(tensors)])
        n += 1
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table and the JSON line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", type=Path)
    p.add_argument("--model", type=Path)
    p.add_argument("--line")
    p.add_argument("--gt", type=Path)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--agent-cameras", default="1,2,4",
                   help="camera counts for the agent run measurement (empty: skip it)")
    p.add_argument("--agent-seconds", type=float, default=35.0,
                   help="length of each agent run (at least 25 s: whole 10 s intervals)")
    a = p.parse_args(argv)
    source = "given"
    if a.video is None:
        if SHARED_VIDEO.exists() and SHARED_MODEL.exists():
            a.video, a.model, a.line = SHARED_VIDEO, ROOT / "models" / "yolox_nano.yaml", "0,144,319,144"
            a.gt = SHARED_VIDEO.with_suffix(".gt.json")
            source = "shared motorway clip + YOLOX-Nano"
        else:
            from sim.traffic import SceneConfig, write_clip

            a.video = Path("/tmp/polelink-bench-sim.avi")
            gt = write_clip(a.video, 40, seed=21, cfg=SceneConfig())
            a.model, a.line = ROOT / "models" / "simnet.yaml", ",".join(map(str, gt["line"]))
            a.gt = a.video.with_suffix(".gt.json")
            source = "../shared absent: simulated clip + simnet"
    det = load_detector(a.model, threads=1)
    # the same model in a process of its own, as ``agent run`` runs it
    hosts = ModelHosts()
    iso = load_detector(a.model, threads=1, shared=hosts)
    cap = cv2.VideoCapture(str(a.video))
    sample = []
    while len(sample) < 60:
        ok, f = cap.read()
        if not ok:
            break
        sample.append(f)
    cap.release()
    lines = lines_from_args([a.line + ",main"])
    modes = {"full": {"motion": False, "stride": 1},
             "gated_stride2": {"motion": True, "stride": 2},
             "gated_stride3": {"motion": True, "stride": 3},
             "gated_stride5": {"motion": True, "stride": 5}}
    rates: dict[str, list[float]] = {"raw": [], "raw_isolated": [], **{m: [] for m in modes},
                                     "full_isolated": []}
    counts: dict[str, int] = {}
    detected: dict[str, int] = {}
    for r in range(a.repeats):
        rates["raw"].append(raw_rate(det, sample))
        rates["raw_isolated"].append(raw_rate(iso, sample))
        res = count_video(a.video, iso, PipelineSettings(lines=lines, **modes["full"]),
                          depth=lookahead_for(1))
        rates["full_isolated"].append(res.processing_fps)
        counts["full_isolated"] = sum(sum(per.values()) for per in res.totals["main"].values())
        for name, kw in modes.items():
            res = count_video(a.video, det, PipelineSettings(lines=lines, **kw),
                              depth=lookahead_for(kw["stride"]))
            rates[name].append(res.processing_fps)
            counts[name] = sum(sum(per.values()) for per in res.totals["main"].values())
            detected[name] = res.frames_detected
        print(f"repeat {r + 1}/{a.repeats}: " + ", ".join(f"{k} {v[-1]:.1f}/s"
                                                          for k, v in rates.items()),
              file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = {k: med[k] / med["raw"] for k in modes}
    iso_ratio = {"raw": med["raw_isolated"] / med["raw"],
                 "full": med["full_isolated"] / med["full"]}
    hosts.close()
    gt_total = None
    if a.gt and a.gt.exists():
        gt_doc = json.loads(a.gt.read_text())
        gt_total = sum(1 for e in gt_doc["events"] if e["class"] in
                       ("car", "motorbike", "bus", "truck", "bicycle", "three_wheeler"))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    agent_runs = []
    for n in [int(x) for x in a.agent_cameras.split(",") if x.strip()]:
        print(f"agent run on {n} unpaced file camera(s), {a.agent_seconds:.0f} s ...",
              file=sys.stderr, flush=True)
        for inline in (False, True):    # models apart, then the in-process baseline
            r = measure_agent_run(a.video, a.model, a.line, n, a.agent_seconds,
                                  lambda m: print(m, file=sys.stderr, flush=True), inline)
            r["ratio_camera_mean"] = round(r["fps_camera_mean"] / med["raw"], 3)
            r["ratio_total"] = round(r["fps_total"] / med["raw"], 3)
            agent_runs.append(r)
    agent_peak = max((r["tree_peak_pss_mb"] for r in agent_runs if not r["in_process"]),
                     default=None)
    print(f"\n{source}: {a.video.name}, model {det.card.name}, onnxruntime/tflite threads 1")
    print(f"{'mode':<16}{'frames/s':>10}{'x raw':>8}{'detector runs':>15}{'count':>7}")
    print(f"{'raw inference':<16}{med['raw']:>10.1f}{1.0:>8.2f}{'':>15}{'':>7}")
    for k in modes:
        print(f"{k:<16}{med[k]:>10.1f}{ratio[k]:>8.2f}{detected[k]:>15}{counts[k]:>7}")
    if gt_total is not None:
        print(f"ground truth count: {gt_total}")
    best = max((k for k in modes if k != "full"), key=lambda k: ratio[k])
    print(f"targets: full >= 0.9 x raw: {'met' if ratio['full'] >= 0.9 else 'NOT met'}; "
          f"gated >= 3 x raw: {'met' if ratio[best] >= 3 else 'NOT met'} (best: {best})")
    print(f"model in its own process (as in agent run): raw {med['raw_isolated']:.1f}/s = "
          f"{iso_ratio['raw']:.3f} x in-process raw; full pipeline {med['full_isolated']:.1f}/s "
          f"= {iso_ratio['full']:.3f} x in-process full (count {counts['full_isolated']})")
    print(f"peak RSS {peak_mb:.0f} MB; medians of {a.repeats} interleaved repeats")
    if agent_runs:
        print(f"\nagent run (the real process), unpaced file cameras, raw inference "
              f"{med['raw']:.1f}/s measured above")
        print(f"{'cameras':<9}{'models':<12}{'per camera/s':>14}{'x raw':>8}{'all/s':>9}"
              f"{'x raw':>8}{'agent RSS':>11}{'models RSS':>12}{'all PSS':>9}  (peaks, MB)")
        for r in agent_runs:
            where = "in process" if r["in_process"] else "apart"
            print(f"{r['cameras']:<9}{where:<12}"
                  f"{r['fps_camera_mean']:>14.1f}{r['ratio_camera_mean']:>8.2f}"
                  f"{r['fps_total']:>9.1f}{r['ratio_total']:>8.2f}{r['peak_rss_mb']:>11.0f}"
                  f"{r['model_peak_rss_mb']:>12.0f}{r['tree_peak_pss_mb']:>9.0f}"
                  + (f"  ERROR: {r['error']}" if "error" in r else ""))
        for n in sorted({r["cameras"] for r in agent_runs}):
            apart, inside = (next(r for r in agent_runs if r["cameras"] == n
                                  and r["in_process"] == f) for f in (False, True))
            if inside["fps_total"]:
                print(f"{n} camera(s): models apart give {apart['fps_total'] / inside['fps_total']:.3f}"
                      f" x the in-process frames/s; all PSS {apart['tree_peak_pss_mb']:.0f} vs "
                      f"{inside['tree_peak_pss_mb']:.0f} MB")
        print(f"target: the agent and its model processes, peak PSS <= {RSS_TARGET_MB:.0f} MB: "
              f"{'met' if agent_peak is not None and agent_peak <= RSS_TARGET_MB else 'NOT met'}"
              f" ({agent_peak:.0f} MB)")
    print(json.dumps({"source": source, "video": str(a.video), "model": det.card.name,
                      "raw_fps": round(med["raw"], 2),
                      **{f"{k}_fps": round(med[k], 2) for k in modes},
                      **{f"{k}_ratio": round(ratio[k], 3) for k in modes},
                      "counts": counts, "detector_runs": detected, "gt_total": gt_total,
                      "raw_isolated_fps": round(med["raw_isolated"], 2),
                      "full_isolated_fps": round(med["full_isolated"], 2),
                      "isolated_raw_ratio": round(iso_ratio["raw"], 3),
                      "isolated_full_ratio": round(iso_ratio["full"], 3),
                      "peak_rss_mb": round(peak_mb, 1), "repeats": a.repeats,
                      "agent_run": agent_runs, "agent_peak_rss_mb": agent_peak,
                      "agent_rss_target_mb": RSS_TARGET_MB}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
