"""bench/quality.py in its short mode: the script runs, and on a clear simulator clip the
counts are never judged poor while the same clip washed out is caught (the full figures,
with the shared clip, are the bench's: see the README)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_the_quality_bench_in_short_mode() -> None:
    r = subprocess.run([sys.executable, "bench/quality.py", "--quick"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert doc["bench"] == "quality" and len(doc["rows"]) == 2
    clear, washed = doc["rows"]
    assert clear["picture"] == "clear" and clear["poor_intervals"] == 0 and clear["episodes"] > 0
    assert clear["explained"] == clear["episodes"] and doc["clear_intervals_good"] == 1.0
    assert washed["poor_intervals"] > 0 and doc["washed_clips_caught"] == 1.0
    assert washed["detections"] < clear["detections"] / 10
