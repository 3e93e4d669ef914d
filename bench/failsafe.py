"""Worst time from a fault to the safe level, per row of the fail-safe table, measured
through the real ``agent run`` process (tests/test_failsafe.py).

    python bench/failsafe.py [--runs 3]

Runs the fail-safe tests ``--runs`` times with POLELINK_FAILSAFE_TIMES set; each test
records how long its fault took to bring the emulator's lamps to the safe (or schedule)
level, and the bound its configuration promises (camera_stale_s 6 s + a 0.5 s tick, a
12 s clip, a bus re-open back-off, a cold start). Prints the worst and median seconds per
row and the worst as a ratio to its bound (below 1: within the promise). The last line
is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    times = Path(tempfile.mkdtemp(prefix="polelink-failsafe-")) / "times.jsonl"
    for k in range(a.runs):
        print(f"run {k + 1}/{a.runs}: pytest tests/test_failsafe.py …", file=sys.stderr,
              flush=True)
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "tests/test_failsafe.py"], cwd=ROOT, capture_output=True, text=True,
                           env={**os.environ, "POLELINK_FAILSAFE_TIMES": str(times)})
        if r.returncode != 0:
            print(r.stdout[-3000:], file=sys.stderr)
            return 1
    rows: dict[str, list[float]] = {}
    bounds: dict[str, float] = {}
    for line in times.read_text().splitlines():
        rec = json.loads(line)
        rows.setdefault(rec["row"], []).append(rec["seconds"])
        bounds[rec["row"]] = rec["bound"]
    figures = {}
    print(f"{'fault':<52} {'worst s':>8} {'median s':>9} {'bound s':>8} {'worst/bound':>12}")
    for row, secs in rows.items():
        worst = max(secs)
        figures[row] = {"worst_s": worst, "median_s": statistics.median(secs),
                        "bound_s": bounds[row], "worst_over_bound": round(worst / bounds[row], 3)}
        print(f"{row:<52} {worst:8.2f} {statistics.median(secs):9.2f} {bounds[row]:8.1f} "
              f"{worst / bounds[row]:12.3f}")
    print(json.dumps({"runs": a.runs, "rows": figures}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
