"""One luminaire group's decision at one tick: gather the situation, ask the envelope.

:class:`GroupPolicy` is pure (no I/O, no threads, no clock of its own): the lighting
service gives it the time, the clock's trust, the group's traffic flow, the winning
override and the light sensor's view, and gets back a :class:`Decision`. The same code
decides in ``agent run``, in ``agent lights schedule`` previews and in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from agent.lighting.astro import EVENTS, NIGHT_BELOW_DEG, elevation_at, local_hour
from agent.lighting.clocktrust import TrustState
from agent.lighting.dimming import DimmingModel, propose_pct
from agent.lighting.envelope import Decision, EnvelopeSettings, SafetyEnvelope, Situation
from agent.lighting.flow import FlowReading
from agent.lighting.rule import rule_level_pct
from agent.lighting.schedule import ActiveStep, Schedule, Step


@dataclass(frozen=True)
class GroupSettings:
    """One luminaire group's lighting parameters."""

    name: str
    design_class: int = 3
    design_peak_vph: float = 1200.0
    cameras: tuple[str, ...] = ()
    envelope: EnvelopeSettings = field(default_factory=EnvelopeSettings)


class GroupPolicy:
    """Decides one group's level; never raises for a bad input (faults are reasons)."""

    def __init__(self, settings: GroupSettings, schedule: Schedule, latitude: float,
                 longitude: float, model: DimmingModel | None, model_error: str = "") -> None:
        self.s = settings
        self.schedule = schedule
        self.lat, self.lon = latitude, longitude
        self.model = model
        self.model_error = model_error or ("" if model else "no dimming model")
        self.envelope = SafetyEnvelope(settings.envelope, start_pct=settings.envelope.safe_pct)

    def decide(self, wall: float, mono: float, trust: TrustState, flow: FlowReading,
               override_pct: float | None = None,
               ambient_dark: bool | None = None, maintenance: bool = False) -> Decision:
        """This tick's decision (see ``agent.lighting.envelope`` for the rules)."""
        if not trust.trusted:
            return self.envelope.decide(Situation(mono, False, tuple(trust.reasons),
                                                  override_pct=override_pct))
        active = self.schedule.active(wall)
        sun = elevation_at(self.lat, self.lon, wall)
        by_sun = active is None or wall - active.since > 86400
        if by_sun:
            # no step for a day or more: the program's astro events do not happen here now
            # (polar day or night, or the way into them); the sun decides, lit at the
            # ceiling below the horizon
            dark = sun < EVENTS["sunset"][0]
            step = Step("sunset" if dark else "sunrise",
                        level_pct=self.s.envelope.ceiling_pct if dark else 0.0)
            active = ActiveStep(step, "(by the sun)", wall, None)
        rule = proposal = None
        model_error = "" if self.model is not None else self.model_error
        if active is not None and active.step.adaptive is not None and flow.flow is not None:
            f = flow.flow
            rule = rule_level_pct(self.s.design_class, f.vehicles_per_hour,
                                  self.s.design_peak_vph, f.heavy_share, f.motorbike_share)
            if self.model is not None:
                proposal = propose_pct(self.model, local_hour(self.lon, datetime.fromtimestamp(
                    wall, UTC)), sun, f.vehicles_per_hour, self.s.design_peak_vph,
                    f.heavy_share, f.motorbike_share, self.s.design_class)
                if proposal is None:
                    model_error = f"dimming model: {self.model.down}" if self.model.down \
                        else "dimming model gave no usable output (failed, or outside 0-1)"
        d = self.envelope.decide(Situation(
            mono, True, (), active, dark=sun < NIGHT_BELOW_DEG, traffic_reason=flow.reason,
            rule_pct=rule, proposal_pct=proposal,
            model_error=model_error,
            override_pct=override_pct, ambient_dark=ambient_dark,
            override_maintenance=maintenance))
        if by_sun:
            d.reasons.insert(0, "no schedule step in force here now (polar day or night): "
                                "lit while the sun is below the horizon")
        return d
