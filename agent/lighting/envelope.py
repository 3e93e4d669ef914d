"""The safety envelope: every lighting decision, whatever the model, the schedule or the
platform asks for.

:meth:`SafetyEnvelope.decide` applies these rules, in order:

1. **Clock not trusted** → the safe level (mode ``failsafe``), day or night, at once. Only
   an override *brighter* than the safe level is honoured.
2. **Override** (highest priority, unexpired) → its level (mode ``override``).
3. **Schedule step** (the step in force at this time):

   - a fixed step → its level (mode ``schedule``; 0 = off);
   - an adaptive step, with the dimming model unusable → the safe level (``failsafe``);
   - an adaptive step, with traffic not trusted (camera stale, too little data) → the
     step's fallback level (mode ``fallback``, by default the step's maximum);
   - an adaptive step, with trusted traffic → the model's proposal, **never below the
     adaptive rule's level for the measured hourly volume** (:mod:`agent.lighting.rule`),
     nor the step's minimum, nor the class floor; at most the step's maximum
     (mode ``adaptive``).

4. **Ambient light:** a light sensor reading dark while the step says off (a storm at
   noon) → the ceiling (mode ``ambient``). A sensor can switch lamps on, never off.
5. **Floor while lit:** while it is dark (sun below -6°), and from the moment the schedule
   switches the lamps on (its step in force is lit: a level above 0 or adaptive, e.g. from
   sunset − 10 min through twilight), no rule, step or override goes below the class floor;
   such a level is raised to it and the reason reported. (Before, only darkness counted:
   a 0 % override five minutes after sunset switched the lamps off at once.) The one
   exception is a crew's **maintenance override** (``set_override`` with ``maintenance``:
   signed, at most an hour, ``agent/handlers.py``): its level stands, off included.
6. **Ramp:** levels fall by at most ``ramp_down_pct_per_min`` and rise by at most
   ``ramp_up_pct_per_min`` (overrides included: no flicker). Switching on from off or
   off from on is a step, not a ramp. The ramp never holds a level below the least this
   decision requires (:attr:`Decision.min_pct`: the safe level, the fallback level, the
   rule's level, the dark floor): the way *up* to it is immediate, since more light is
   the safe side.

The envelope only remembers the last output for the ramp; at start it is seeded with
the level the lamps were last commanded to (the safe level), so a start at night ramps
down instead of jumping to the floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from agent.lighting.schedule import ActiveStep

MODES = ("failsafe", "override", "schedule", "fallback", "adaptive", "ambient")


@dataclass(frozen=True)
class EnvelopeSettings:
    """Limits for one luminaire group."""

    floor_pct: float = 30.0
    ceiling_pct: float = 100.0
    safe_pct: float = 100.0
    ramp_down_pct_per_min: float = 10.0
    ramp_up_pct_per_min: float = 100.0

    def __post_init__(self) -> None:
        if not 0 < self.floor_pct <= self.ceiling_pct <= 100:
            raise ValueError(f"need 0 < floor ({self.floor_pct}) <= ceiling "
                             f"({self.ceiling_pct}) <= 100")
        if not self.floor_pct <= self.safe_pct <= 100:
            raise ValueError(f"safe level must be between the floor ({self.floor_pct}) and "
                             f"100, got {self.safe_pct}")
        if self.ramp_down_pct_per_min <= 0 or self.ramp_up_pct_per_min <= 0:
            raise ValueError("ramp limits must be positive")


@dataclass(frozen=True)
class Situation:
    """Everything the envelope needs to know at one tick."""

    now_monotonic: float
    clock_trusted: bool
    clock_reasons: tuple[str, ...] = ()
    step: ActiveStep | None = None          # None when the clock is not trusted
    dark: bool = True                       # sun below -6° (True when unknown)
    traffic_reason: str = ""                # why traffic is not trusted ("" = trusted)
    rule_pct: float | None = None           # the adaptive rule's level for the traffic
    proposal_pct: float | None = None       # the model's level (None: no proposal)
    model_error: str = ""                   # why the model is unusable ("" = usable)
    override_pct: float | None = None       # the winning override, if any
    ambient_dark: bool | None = None        # a light sensor's view (None: none/stale)
    override_maintenance: bool = False      # the winning override is a crew's exception


@dataclass
class Decision:
    """The level to command and why."""

    level_pct: float
    mode: str
    reasons: list[str] = field(default_factory=list)
    step: str = ""                           # the schedule step in force, described
    min_pct: float = 0.0                     # the least this decision may output now


class SafetyEnvelope:
    """One per luminaire group; see the module docstring."""

    def __init__(self, settings: EnvelopeSettings, start_pct: float | None = None) -> None:
        self.s = settings
        self.last_pct: float | None = start_pct
        self.last_t: float | None = None

    def decide(self, x: Situation) -> Decision:
        """The level for this tick."""
        s = self.s
        if not x.clock_trusted or x.step is None:
            reasons = list(x.clock_reasons) or ["clock not trustworthy"]
            if x.override_pct is not None and _finite(x.override_pct) \
                    and x.override_pct > s.safe_pct:
                return self._emit(Decision(min(100.0, x.override_pct), "override", reasons,
                                           min_pct=s.safe_pct), x, ramp=False)
            return self._emit(Decision(s.safe_pct, "failsafe", reasons, min_pct=s.safe_pct),
                              x, ramp=False)
        step = x.step.step
        d = Decision(0.0, "schedule", [], step.describe())
        if x.override_pct is not None and _finite(x.override_pct):
            d.level_pct, d.mode = min(100.0, max(0.0, x.override_pct)), "override"
        elif step.adaptive is None:
            d.level_pct = float(step.level_pct or 0.0)
        elif x.model_error:
            d.level_pct = d.min_pct = s.safe_pct
            d.mode = "failsafe"
            d.reasons.append(x.model_error)
        elif x.traffic_reason or x.rule_pct is None:
            d.level_pct = d.min_pct = step.adaptive.fallback
            d.mode = "fallback"
            d.reasons.append(x.traffic_reason or "no traffic figures")
        else:
            a = step.adaptive
            lo = max(a.min_pct, s.floor_pct, x.rule_pct)
            hi = max(min(a.max_pct, s.ceiling_pct), lo)     # the rule beats the ceiling
            proposal = x.proposal_pct if x.proposal_pct is not None \
                and _finite(x.proposal_pct) else hi
            d.level_pct, d.min_pct, d.mode = min(max(proposal, lo), hi), lo, "adaptive"
            if proposal < lo:
                d.reasons.append(f"model's {proposal:.0f} % raised to {lo:.0f} % "
                                 f"(rule {x.rule_pct:.0f} %, floor {s.floor_pct:g} %)")
        if d.level_pct <= 0 and x.ambient_dark:
            d.level_pct = d.min_pct = s.ceiling_pct
            d.mode = "ambient"
            d.reasons.append("light sensor reads dark")
        lit = step.adaptive is not None or (step.level_pct or 0.0) > 0
        if d.mode == "override" and x.override_maintenance:
            d.reasons.append("maintenance override: the class floor does not apply")
        elif x.dark or lit:
            if d.level_pct < s.floor_pct:
                why = "it is dark" if x.dark else "the schedule has the lamps on"
                d.reasons.append(f"{d.level_pct:g} % raised to the class floor "
                                 f"{s.floor_pct:g} %: {why}")
                d.level_pct = s.floor_pct
            d.min_pct = max(d.min_pct, s.floor_pct)
        return self._emit(d, x, ramp=True)

    def _emit(self, d: Decision, x: Situation, ramp: bool) -> Decision:
        s, now = self.s, x.now_monotonic
        level = d.level_pct
        last = self.last_pct
        if ramp and last is not None and last > 0 and level > 0:
            minutes = 0.0 if self.last_t is None else max(0.0, now - self.last_t) / 60
            level = min(max(level, last - s.ramp_down_pct_per_min * minutes),
                        last + s.ramp_up_pct_per_min * minutes)
            level = max(level, d.min_pct)
        level = round(min(100.0, max(0.0, level)), 3)
        self.last_pct, self.last_t = level, now
        d.level_pct = level
        return d


def _finite(v: float) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)
