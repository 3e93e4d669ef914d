"""``agent count`` emulated on arm64 (qemu-user) against this machine, measured in one run.

    python bench/pi_arm64.py [--seconds 6] [--repeats 1] [--runtimes onnx,tflite]
    (as root; make pi-bench)

Builds (or reuses) the emulated Raspberry Pi OS Bookworm arm64 root of
``deploy/pi/arm64-root.sh``, installs the wheelhouse in it offline, renders a simulator
clip, then times ``agent count --json`` on it with simnet (onnxruntime) and simnet_ssd
(tflite-runtime), here and inside the root, interleaved ``--repeats`` times. It prints,
per runtime, the median wall time of each side and their ratio (emulated / native: how
much slower qemu-user makes the agent on this machine; it says nothing about a real Pi's
speed), whether the counts agree, the wheelhouse size and the installed venv size. The
last line is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.pi_root import CannotEmulate, make_clip, prepare  # noqa: E402

CARDS = {"onnx": "simnet.yaml", "tflite": "simnet_ssd.yaml"}


def timed(cmd: list[str]) -> tuple[float, dict]:
    """Run ``cmd`` (an ``agent count --json``); its wall time and totals per line."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:6])} ... failed (exit {proc.returncode}): {proc.stderr[-1500:]}")
    return wall, json.loads(proc.stdout)["lines"]


def main(argv: list[str] | None = None) -> int:
    """Measure and print the figures; the last line is JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=6, help="clip length (5 fps, 640x360)")
    ap.add_argument("--repeats", type=int, default=1, help="each emulated run takes minutes")
    ap.add_argument("--runtimes", default="onnx,tflite", help="which of onnx,tflite to time")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        gt = make_clip(clip, seconds=args.seconds)
        try:
            pi = prepare(clip=clip)
        except CannotEmulate as exc:
            print(f"skipped: {exc}")
            print(json.dumps({"skipped": str(exc)}))
            return 0
        x1, y1, x2, y2 = gt["line"]
        opts = ["--line", f"{x1},{y1},{x2},{y2},main", "--json", "-q"]
        script = ["bash", str(ROOT / "deploy" / "pi" / "arm64-root.sh"), "run", "--root", str(pi.path), "--"]
        figures: dict[str, object] = {"clip_frames": gt["frame_count"], "wheelhouse_mb": pi.wheelhouse_mb,
                                      "venv_installed_mb": pi.venv_mb}
        print(f"wheelhouse {pi.wheelhouse_mb} MB, installed venv in the arm64 root {pi.venv_mb} MB, "
              f"clip {gt['frame_count']} frames")
        for runtime in args.runtimes.split(","):
            card = CARDS[runtime]
            native_cmd = [sys.executable, "-m", "agent", "count", str(clip), "--model",
                          str(ROOT / "models" / card), *opts]
            emu_cmd = [*script, "/opt/polelink/venv/bin/agent", "count", pi.app("var/demo/clip.mp4"),
                       "--model", pi.app(f"models/{card}"), *opts]
            native, emulated = [], []
            for _ in range(args.repeats):
                t, native_counts = timed(native_cmd)
                native.append(t)
                t, emu_counts = timed(emu_cmd)
                emulated.append(t)
            n, e = statistics.median(native), statistics.median(emulated)
            same = native_counts == emu_counts
            print(f"{runtime:6}  native {n:6.2f} s  emulated arm64 {e:7.2f} s  ratio {e / n:5.1f}x  "
                  f"counts {'equal' if same else 'DIFFER'} ({native_counts['main']['total']} crossings)")
            figures[runtime] = {"native_s": round(n, 2), "emulated_s": round(e, 2),
                                "emulated_over_native": round(e / n, 1), "counts_equal": same}
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
