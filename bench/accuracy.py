"""Count accuracy of ``agent count`` against a ground-truth JSON of line-crossing events.

    python bench/accuracy.py VIDEO GT.json [--model CARD] [--stride N] [--motion]

The ground truth has ``line: [x1, y1, x2, y2]`` and ``events: [{frame, direction, class}]``
(optionally ``x``), as written by ``python -m sim.traffic`` and as in ``../shared/data``.
Directions are compared in image terms (up/down/left/right). Prints total and
per-direction errors, then a per-class confusion table from matching each counted event
to a ground-truth event of the same direction within ``--window`` frames (and, when
both give one, within ``--max-dx`` pixels of x). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def match(gt: list[dict], got: list[dict], window: int, max_dx: float) -> tuple[list, list, list]:
    """Greedy matching by frame distance; returns (pairs, missed gt, extra counted)."""
    pairs, used = [], set()
    for g in sorted(gt, key=lambda e: e["frame"]):
        best, best_d = None, None
        for i, e in enumerate(got):
            if i in used or e["direction"] != g["direction"]:
                continue
            d = abs(e["frame"] - g["frame"])
            if d > window:
                continue
            if g.get("x") is not None and e.get("x") is not None and abs(e["x"] - g["x"]) > max_dx:
                continue
            if best_d is None or d < best_d:
                best, best_d = i, d
        if best is None:
            continue
        used.add(best)
        pairs.append((g, got[best]))
    matched_gt = {id(g) for g, _ in pairs}
    missed = [g for g in gt if id(g) not in matched_gt]
    extra = [e for i, e in enumerate(got) if i not in used]
    return pairs, missed, extra


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print the report."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("video", type=Path)
    p.add_argument("gt", type=Path)
    p.add_argument("--model", default=str(ROOT / "models" / "simnet.yaml"))
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--motion", action="store_true")
    p.add_argument("--window", type=int, default=8, help="frames of slack when matching (8)")
    p.add_argument("--max-dx", type=float, default=40.0, help="pixels of slack in x (40)")
    p.add_argument("--classes", default="car,motorbike,bus,truck",
                   help="ground-truth classes that count (default car,motorbike,bus,truck)")
    a = p.parse_args(argv)
    gt_doc = json.loads(a.gt.read_text())
    x1, y1, x2, y2 = gt_doc["line"]
    counted = set(a.classes.split(","))
    cmd = [sys.executable, "-m", "agent", "count", str(a.video), "--model", a.model,
           "--line", f"{x1},{y1},{x2},{y2},main", "--json", "-q", "--stride", str(a.stride),
           "--classes", ",".join(sorted(counted & {"car", "motorbike", "bus", "truck", "bicycle",
                                                     "person"})) or "car",
           "--motion" if a.motion else "--no-motion"]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if run.returncode != 0:
        print(run.stderr, file=sys.stderr)
        return run.returncode
    doc = json.loads(run.stdout)
    gt = [e for e in gt_doc["events"] if e["class"] in counted]
    got = doc["events"]
    pairs, missed, extra = match(gt, got, a.window, a.max_dx)
    dirs = sorted({e["direction"] for e in gt} | {e["direction"] for e in got})
    by_dir = {d: {"gt": sum(e["direction"] == d for e in gt),
                  "counted": sum(e["direction"] == d for e in got)} for d in dirs}
    for d in by_dir.values():
        d["error"] = d["counted"] - d["gt"]
    confusion = Counter((g["class"], e["class"]) for g, e in pairs)
    classes = sorted({c for c, _ in confusion} | {c for _, c in confusion}
                     | {g["class"] for g in missed} | {e["class"] for e in extra})
    total_err = len(got) - len(gt)
    class_ok = sum(n for (g, c), n in confusion.items() if g == c)

    print(f"video {a.video} ({doc['frames']} frames), model {doc['model']}, stride {a.stride}, "
          f"motion gating {'on' if a.motion else 'off'}")
    print(f"total: ground truth {len(gt)}, counted {len(got)}, error {total_err:+d} "
          f"({100 * total_err / max(len(gt), 1):+.1f} %)")
    for d, v in by_dir.items():
        print(f"  {d:<6} ground truth {v['gt']:3d}  counted {v['counted']:3d}  error {v['error']:+d}")
    print(f"matched {len(pairs)} (class right {class_ok}), missed {len(missed)}, extra {len(extra)}")
    print("confusion (rows: ground truth, columns: counted; '-' = missed / extra)")
    header = "".join(f"{c[:10]:>11}" for c in [*classes, "-"])
    print(f"{'':>12}{header}")
    for g in classes:
        row = "".join(f"{confusion.get((g, c), 0):>11}" for c in classes)
        print(f"{g[:11]:>12}{row}{sum(m['class'] == g for m in missed):>11}")
    print(f"{'-':>12}" + "".join(f"{sum(e['class'] == c for e in extra):>11}" for c in classes))
    for m in missed:
        print(f"  missed: frame {m['frame']} {m['direction']} {m['class']} x={m.get('x')}")
    for e in extra:
        print(f"  extra:  frame {e['frame']} {e['direction']} {e['class']} x={e.get('x')}")
    result = {"video": str(a.video), "model": doc["model"], "stride": a.stride,
              "motion": a.motion, "gt_total": len(gt), "counted_total": len(got),
              "total_error": total_err, "total_error_pct": round(100 * total_err / max(len(gt), 1), 2),
              "by_direction": by_dir, "matched": len(pairs), "class_correct": class_ok,
              "missed": len(missed), "extra": len(extra),
              "confusion": {f"{g}->{c}": n for (g, c), n in sorted(confusion.items())},
              "processing_fps": doc["processing_fps"]}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
