"""``agent run`` itself on N unpaced file cameras: frames/s per camera and in all, and peak RSS.

    python bench/agent_run.py --video V --model CARD --line x1,y1,x2,y2 [--cameras 1,2,4]

Writes a pole config with N cameras that all read the same video file as fast as the
pipeline takes it (``source: {kind: file, loop: true}``: ``realtime`` off, so every frame
is analysed and none is dropped; ``loop`` so the camera never runs dry), motion gating
off, detector threads 1, 10 s aggregate intervals and no uplink or lighting. Then it runs
the real ``python -m agent run --config … --duration S -q`` process and reads:

- frames analysed from the agent's own aggregate records (JSON lines), over the whole
  10 s intervals only (the first interval, with model loading and start-up, and the last,
  cut by the stop, are partial and left out);
- the process's peak resident memory, ``VmHWM`` in ``/proc/<pid>/status``, polled while
  it runs (the high-water mark only grows, so the last reading is the peak), and its model
  processes' (``agent.vision.detect.isolated``): ``tree_peak_rss_mb`` adds the peaks (an
  upper bound: libraries both processes map count twice), ``tree_peak_pss_mb`` is the
  largest sum of ``Pss`` seen (each shared page counted once: what the pole's memory
  holds).

``bench/pipeline.py`` calls :func:`measure_agent_run` and reports the rates as ratios to
the raw inference rate it measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INTERVAL_S = 10
#: The agent's resident-memory target on a pole computer.
RSS_TARGET_MB = 250.0


def write_config(folder: Path, video: Path, card: Path, line: str, cameras: int) -> Path:
    """A pole config with ``cameras`` unpaced, looping file cameras on ``video``."""
    x1, y1, x2, y2 = (float(v) for v in line.split(",")[:4])
    cams = "".join(f"""
  - name: cam{i + 1}
    source: {{kind: file, path: {json.dumps(str(video))}, loop: true, realtime: false}}
    detector: {{model: {json.dumps(str(card))}, threads: 1}}
    gating: {{motion: false}}
    lines:
      - name: main
        points: [[{x1}, {y1}], [{x2}, {y2}]]
""" for i in range(cameras))
    cfg = folder / "pole.yaml"
    cfg.write_text(f"""device: {{id: bench-pole, site: bench}}
cameras:{cams}
aggregates: {{interval_s: {INTERVAL_S}, path: {json.dumps(str(folder / 'agg.jsonl'))}}}
""")
    return cfg


def vm_hwm_mb(pid: int) -> float | None:
    """Peak resident memory of a live process (``VmHWM``), in MB; None when gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (the model processes of an agent)."""
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with open(task / "children") as f:
                out += [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        pass
    return out


def pss_mb(pid: int) -> float:
    """Proportional resident memory of a live process (``Pss``: pages shared with another
    process count half to each, so a sum over processes counts each page once), in MB."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return 0.0
    return 0.0


def rates_from_aggregates(path: Path, cameras: int) -> dict[str, float]:
    """Frames/s of each camera over its whole (non-partial) intervals."""
    out: dict[str, float] = {}
    recs = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    for i in range(cameras):
        name = f"cam{i + 1}"
        whole = [r for r in recs if r["camera"] == name and not r["partial"]]
        if whole:
            out[name] = sum(r["frames_analysed"] for r in whole) / (INTERVAL_S * len(whole))
    return out


def measure_agent_run(video: Path, card: Path, line: str, cameras: int, seconds: float,
                      progress: Callable[[str], None] | None = None,
                      in_process: bool = False) -> dict:
    """Run ``agent run`` on ``cameras`` unpaced file cameras for ``seconds``; returns
    frames/s per camera and in all, whole intervals measured, peak RSS and the exit code.
    ``in_process``: the models in the agent's own process (``POLELINK_MODELS_IN_PROCESS``),
    the baseline of what running them apart costs."""
    say = progress or (lambda _m: None)
    with tempfile.TemporaryDirectory(prefix="polelink-bench-") as tmp:
        folder = Path(tmp)
        cfg = write_config(folder, video.resolve(), card.resolve(), line, cameras)
        log = (folder / "agent.log").open("w+")
        env = {k: v for k, v in os.environ.items()
               if k not in ("POLELINK_SIM_CLOCK", "POLELINK_MODELS_IN_PROCESS")}
        if in_process:
            env["POLELINK_MODELS_IN_PROCESS"] = "1"
        proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(cfg),
                                 "--duration", str(seconds), "-q"], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, env=env)
        peak, t0, said = 0.0, time.monotonic(), 0.0
        child_hwm: dict[int, float] = {}
        tree_pss = 0.0
        while proc.poll() is None:
            peak = max(peak, vm_hwm_mb(proc.pid) or 0.0)
            kids = children(proc.pid)
            for k in kids:
                child_hwm[k] = max(child_hwm.get(k, 0.0), vm_hwm_mb(k) or 0.0)
            tree_pss = max(tree_pss, pss_mb(proc.pid) + sum(pss_mb(k) for k in kids))
            if time.monotonic() - said >= 5:
                said = time.monotonic()
                say(f"agent run{' (models in process)' if in_process else ''}, "
                    f"{cameras} camera(s): {said - t0:.0f}/{seconds:.0f} s, "
                    f"peak RSS so far {peak:.0f} MB (agent) + "
                    f"{sum(child_hwm.values()):.0f} MB (model processes)")
            time.sleep(0.1)
        log.seek(0)
        tail = log.read()[-2000:]
        log.close()
        per_cam = rates_from_aggregates(folder / "agg.jsonl", cameras)
    result = {"cameras": cameras, "in_process": in_process, "rc": proc.returncode,
              "fps_per_camera": {k: round(v, 2) for k, v in per_cam.items()},
              "fps_total": round(sum(per_cam.values()), 2),
              "fps_camera_mean": round(sum(per_cam.values()) / len(per_cam), 2) if per_cam
              else 0.0, "peak_rss_mb": round(peak, 1),
              "model_processes": len(child_hwm),
              "model_peak_rss_mb": round(sum(child_hwm.values()), 1),
              "tree_peak_rss_mb": round(peak + sum(child_hwm.values()), 1),
              "tree_peak_pss_mb": round(tree_pss, 1)}
    if proc.returncode != 0 or len(per_cam) != cameras:
        result["error"] = (f"exit {proc.returncode}; whole intervals for {len(per_cam)} of "
                           f"{cameras} cameras (run longer?); agent output ends: {tail[-400:]}")
    return result


def main(argv: list[str] | None = None) -> int:
    """Measure 1, 2 and 4 cameras (or ``--cameras``) and print one JSON line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", type=Path, required=True)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--line", required=True)
    p.add_argument("--cameras", default="1,2,4")
    p.add_argument("--seconds", type=float, default=35.0)
    p.add_argument("--in-process", action="store_true",
                   help="also run each count with the models in the agent's own process "
                        "(the baseline of what running them apart costs)")
    a = p.parse_args(argv)
    out = [measure_agent_run(a.video, a.model, a.line, int(n), a.seconds,
                             lambda m: print(m, file=sys.stderr, flush=True), inline)
           for n in a.cameras.split(",") for inline in ((False, True) if a.in_process
                                                         else (False,))]
    print(json.dumps(out))
    return 0 if all("error" not in r for r in out) else 1


if __name__ == "__main__":
    sys.exit(main())
