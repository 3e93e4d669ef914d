"""The safety envelope around every dimming decision, whatever the model says.

Rules, in order (``SafetyEnvelope.apply``):

1. **Fail-safe:** when the camera, the model or the clock is not trustworthy, the output
   is the safe level (default 100 %) at once, without ramping. The reasons are reported.
2. **Override:** an operator's override (with an expiry) replaces the proposal until it
   expires; it is still clamped to the class floor and 100 %.
3. **Day:** with the sun above ``dark_below_deg`` the lamps are off (0 %).
4. **Twilight:** between ``dark_below_deg`` and ``dim_below_deg`` the lamps burn at the
   ceiling. Dimming is for deep night only.
5. **Clamp** to the lighting class's floor and ceiling (dark: never below the floor, so a
   lamp is never switched off by the policy at night).
6. **Ramp:** the level falls by at most ``ramp_down_pct_per_min`` and rises by at most
   ``ramp_up_pct_per_min`` per minute of elapsed time (both measured on a monotonic
   clock); dark rules 5 and 6 can only raise the result to the floor, never below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: Average road-surface luminance (cd/m²) of the M lighting classes, EN 13201-2 Table 1.
LUMINANCE = {1: 2.0, 2: 1.5, 3: 1.0, 4: 0.75, 5: 0.5, 6: 0.3}

#: The deepest adaptive step: at most this many M classes below the design class (never
#: below M6); see models/dimming.md.
MAX_STEPS = 3

#: Lowest level (percent of the design level) per design M class: the luminance of the
#: class ``MAX_STEPS`` below it (M1 37.5, M2 33.3, M3 30, M4 40, M5 60, M6 100).
DEFAULT_FLOOR_PCT = {c: round(100 * LUMINANCE[min(6, c + MAX_STEPS)] / LUMINANCE[c], 1)
                     for c in LUMINANCE}


@dataclass
class EnvelopeSettings:
    """Limits for one luminaire group."""

    floor_pct: float = 30.0
    ceiling_pct: float = 100.0
    safe_pct: float = 100.0
    ramp_down_pct_per_min: float = 10.0
    ramp_up_pct_per_min: float = 100.0
    dark_below_deg: float = -0.833
    dim_below_deg: float = -6.0

    def __post_init__(self) -> None:
        if not 0 < self.floor_pct <= self.ceiling_pct <= 100:
            raise ValueError(f"need 0 < floor ({self.floor_pct}) <= ceiling "
                             f"({self.ceiling_pct}) <= 100")
        if not 0 < self.safe_pct <= 100:
            raise ValueError(f"safe level must be in (0, 100], got {self.safe_pct}")
        if self.ramp_down_pct_per_min <= 0 or self.ramp_up_pct_per_min <= 0:
            raise ValueError("ramp limits must be positive")


@dataclass
class Inputs:
    """What the envelope needs to know this interval."""

    proposal_pct: float | None        # the model's level (None: no usable proposal)
    sun_elevation_deg: float | None   # None when the clock is not trusted
    now_monotonic: float
    camera_ok: bool = True
    model_ok: bool = True
    clock_ok: bool = True
    override_pct: float | None = None
    override_until_monotonic: float | None = None


@dataclass
class Decision:
    """The level to apply and why."""

    level_pct: float
    mode: str                               # failsafe | override | day | twilight | model
    reasons: list[str] = field(default_factory=list)


class SafetyEnvelope:
    """Stateful (it remembers the last output for the ramp); one per luminaire group."""

    def __init__(self, settings: EnvelopeSettings) -> None:
        self.s = settings
        self.last_pct: float | None = None
        self.last_t: float | None = None

    def apply(self, x: Inputs) -> Decision:
        """The level for this interval; see the module docstring for the rules."""
        s = self.s
        reasons = []
        if not x.camera_ok:
            reasons.append("camera not trustworthy")
        if not x.clock_ok or x.sun_elevation_deg is None \
                or not math.isfinite(x.sun_elevation_deg):
            reasons.append("clock not trustworthy")
        if not x.model_ok:
            reasons.append("model not trustworthy")
        elif not reasons and (x.proposal_pct is None or not math.isfinite(x.proposal_pct)):
            reasons.append("no usable model proposal")
        override = x.override_pct is not None and (
            x.override_until_monotonic is None or x.now_monotonic < x.override_until_monotonic)
        if reasons and not (override and x.clock_ok):
            return self._emit(s.safe_pct, "failsafe", x.now_monotonic, reasons, ramp=False)
        dark = x.sun_elevation_deg is None or x.sun_elevation_deg < s.dark_below_deg
        if override:
            assert x.override_pct is not None
            level = min(100.0, max(s.floor_pct if dark else 0.0, float(x.override_pct)))
            return self._emit(level, "override", x.now_monotonic, reasons, ramp=False)
        assert x.sun_elevation_deg is not None and x.proposal_pct is not None
        if not dark:
            return self._emit(0.0, "day", x.now_monotonic, reasons, ramp=False)
        if x.sun_elevation_deg >= s.dim_below_deg:
            return self._emit(s.ceiling_pct, "twilight", x.now_monotonic, reasons, ramp=True)
        level = min(s.ceiling_pct, max(s.floor_pct, float(x.proposal_pct)))
        return self._emit(level, "model", x.now_monotonic, reasons, ramp=True)

    def _emit(self, level: float, mode: str, now: float, reasons: list[str],
              ramp: bool) -> Decision:
        s = self.s
        if ramp and self.last_pct is not None and self.last_t is not None and self.last_pct > 0:
            minutes = max(0.0, now - self.last_t) / 60
            lo = self.last_pct - s.ramp_down_pct_per_min * minutes
            hi = self.last_pct + s.ramp_up_pct_per_min * minutes
            level = min(max(level, lo), hi)
            level = max(level, s.floor_pct)  # in the dark, never below the floor
            level = min(level, 100.0)
        self.last_pct, self.last_t = level, now
        return Decision(round(level, 3), mode, reasons)
