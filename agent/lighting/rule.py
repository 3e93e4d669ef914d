"""The traffic-adaptive lighting rule: how far below its design M class a road may be lit.

After EN 13201-1 / CEN/TR 13201-1 traffic-adaptive practice (see ``models/dimming.md``):
the design class is kept at peak traffic and stepped down as the hourly volume falls
relative to the design peak; a heavy-vehicle share of 25 % or more, and a motorbike share
of 60 % or more, each give one step less reduction. The level is the ratio of the stepped
class's average luminance to the design class's (EN 13201-2, Table 1).

``models/train_dimming.py`` trains the ONNX model on :func:`rule_share`; the safety envelope
uses :func:`rule_level_pct` as the lower bound of every adaptive level, so the model can
only ever make a road brighter than the rule allows, never darker.
"""

from __future__ import annotations

#: Average road-surface luminance (cd/m²) of the M lighting classes, EN 13201-2 Table 1.
LUMINANCE = {1: 2.0, 2: 1.5, 3: 1.0, 4: 0.75, 5: 0.5, 6: 0.3}

#: The deepest adaptive step: at most this many M classes below the design class (never
#: below M6).
MAX_STEPS = 3

#: Lowest level (percent of the design level) per design M class: the luminance of the
#: class ``MAX_STEPS`` below it (M1 37.5, M2 33.3, M3 30, M4 40, M5 60, M6 100).
DEFAULT_FLOOR_PCT = {c: round(100 * LUMINANCE[min(6, c + MAX_STEPS)] / LUMINANCE[c], 1)
                     for c in LUMINANCE}

#: Relative hourly volume (vehicles/h ÷ design peak) → M-class steps down from the design
#: class, after CEN/TR 13201-1's traffic-volume parameter bands.
VOLUME_STEPS = ((0.45, 0), (0.15, 1), (0.07, 2), (0.0, MAX_STEPS))


def rule_steps(rel_volume: float, heavy: float, moto: float) -> int:
    """M-class steps below the design class for this traffic."""
    steps = next((s for thr, s in VOLUME_STEPS if rel_volume >= thr), MAX_STEPS)
    if heavy >= 0.25:       # many buses/lorries: one step less reduction
        steps = max(0, steps - 1)
    if moto >= 0.6:         # mostly motorbikes (vulnerable riders): one step less reduction
        steps = max(0, steps - 1)
    return steps


def rule_share(design: int, rel_volume: float, heavy: float, moto: float) -> float:
    """Share (0–1) of the design class's luminance the rule allows for this traffic."""
    return LUMINANCE[min(6, design + rule_steps(rel_volume, heavy, moto))] / LUMINANCE[design]


def rule_level_pct(design: int, vehicles_per_hour: float, design_peak_vph: float,
                   heavy: float, moto: float) -> float:
    """The rule's level in percent of the design level for measured traffic."""
    rel = max(0.0, vehicles_per_hour) / design_peak_vph
    return round(100 * rule_share(design, rel, heavy, moto), 3)
