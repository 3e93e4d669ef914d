"""Per-event scoring of counted line crossings against ground truth.

Totals hide errors: a counter that misses five vehicles and counts five phantoms has an
exact total. :func:`score_events` pairs each counted event with a ground-truth event and
reports every event as one of

- **matched**: same direction, within ``window`` frames (and ``max_dx`` pixels of x when
  both sides give an x);
- **wrong direction**: a ground-truth event and a counted one that would match but for
  their directions (one vehicle counted the wrong way);
- **missed**: a ground-truth event with no counted partner;
- **extra**: a counted event with no ground-truth partner.

Pairs are chosen by a minimum-cost assignment on frame distance (not greedily), so one
early extra count cannot steal a partner and turn one error into two. F1 treats a
wrong-direction pair as a miss plus an extra.

Command line (two event files, each a JSON list of ``{frame, direction, [x], [class]}``
or a document with ``events``)::

    python -m sim.scoring GT.json COUNTED.json [--window 8] [--max-dx 40]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.vision.assignment import linear_sum_assignment

_NO = 1e9


@dataclass
class EventScore:
    """The outcome of :func:`score_events`; lists hold the events themselves."""

    matched: list[tuple[dict, dict]] = field(default_factory=list)
    wrong_direction: list[tuple[dict, dict]] = field(default_factory=list)
    missed: list[dict] = field(default_factory=list)
    extra: list[dict] = field(default_factory=list)

    @property
    def gt_total(self) -> int:
        """Ground-truth events."""
        return len(self.matched) + len(self.wrong_direction) + len(self.missed)

    @property
    def counted_total(self) -> int:
        """Counted events."""
        return len(self.matched) + len(self.wrong_direction) + len(self.extra)

    @property
    def f1(self) -> float:
        """2 × matched / (ground truth + counted); 1.0 when both are empty."""
        denominator = self.gt_total + self.counted_total
        return 1.0 if denominator == 0 else 2 * len(self.matched) / denominator

    @property
    def class_correct(self) -> int:
        """Matched events whose class agrees (where both give one)."""
        return sum(g.get("class") == e.get("class") for g, e in self.matched)

    def figures(self) -> dict:
        """Counts and F1 as a JSON-ready dict."""
        return {"gt": self.gt_total, "counted": self.counted_total,
                "total_error": self.counted_total - self.gt_total,
                "matched": len(self.matched), "missed": len(self.missed),
                "extra": len(self.extra), "wrong_direction": len(self.wrong_direction),
                "class_correct": self.class_correct, "f1": round(self.f1, 4)}


def _pair(gt: list[dict], got: list[dict], window: int, max_dx: float,
          same_direction: bool) -> list[tuple[int, int]]:
    """Minimum-cost pairs (gt index, got index) within the window."""
    if not gt or not got:
        return []
    cost = np.full((len(gt), len(got)), _NO)
    for i, g in enumerate(gt):
        for j, e in enumerate(got):
            if (e["direction"] == g["direction"]) != same_direction:
                continue
            d = abs(int(e["frame"]) - int(g["frame"]))
            if d > window:
                continue
            gx, ex = g.get("x"), e.get("x")
            if gx is not None and ex is not None:
                if abs(float(ex) - float(gx)) > max_dx:
                    continue
                d += abs(float(ex) - float(gx)) / max(max_dx, 1e-9)  # ties: the nearer one
            cost[i, j] = d
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if cost[r, c] < _NO]


def score_events(gt: list[dict], got: list[dict], window: int = 8,
                 max_dx: float = 40.0) -> EventScore:
    """Score counted events ``got`` against ground truth ``gt``; see the module docstring."""
    out = EventScore()
    pairs = _pair(gt, got, window, max_dx, same_direction=True)
    used_g = {i for i, _ in pairs}
    used_e = {j for _, j in pairs}
    out.matched = [(gt[i], got[j]) for i, j in sorted(pairs)]
    rest_g = [i for i in range(len(gt)) if i not in used_g]
    rest_e = [j for j in range(len(got)) if j not in used_e]
    wrong = _pair([gt[i] for i in rest_g], [got[j] for j in rest_e], window, max_dx,
                  same_direction=False)
    out.wrong_direction = [(gt[rest_g[i]], got[rest_e[j]]) for i, j in wrong]
    wg = {rest_g[i] for i, _ in wrong}
    we = {rest_e[j] for _, j in wrong}
    out.missed = [gt[i] for i in rest_g if i not in wg]
    out.extra = [got[j] for j in rest_e if j not in we]
    return out


def _events(path: Path) -> list[dict]:
    doc = json.loads(path.read_text())
    return doc["events"] if isinstance(doc, dict) else doc


def main(argv: list[str] | None = None) -> int:
    """Score two event files and print the figures as one JSON line."""
    p = argparse.ArgumentParser(prog="python -m sim.scoring", description=__doc__.split("\n\n")[0])
    p.add_argument("gt", type=Path)
    p.add_argument("counted", type=Path)
    p.add_argument("--window", type=int, default=8, help="frames of slack (8)")
    p.add_argument("--max-dx", type=float, default=40.0, help="pixels of slack in x (40)")
    a = p.parse_args(argv)
    try:
        s = score_events(_events(a.gt), _events(a.counted), a.window, a.max_dx)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(s.figures()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
