"""A night's lighting at a pole: every group's steps from noon to noon, with sunset and
sunrise, as the lighting service will run them (the same :class:`Schedule`). What
``agent lights schedule`` and ``agent validate --simulate`` print for a crew."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from agent.lighting.schedule import Schedule, Step
from agent.settings.schema import LightingConfig


@dataclass
class NightStep:
    """One step of a group's night."""

    time: datetime
    program: str
    step: str                       # the step in words (level or adaptive window)


@dataclass
class NightProfile:
    """The night that starts at noon on ``day`` (local), at the pole's place."""

    day: date
    timezone: str
    sunset: datetime | None         # None: the sun does not set / rise (polar day or night)
    sunrise: datetime | None
    groups: dict[str, list[NightStep]] = field(default_factory=dict)

    def to_json(self) -> dict:
        """``agent lights schedule --json``'s document (plus sunset and sunrise)."""
        fmt = "%Y-%m-%d %H:%M"
        return {"date": self.day.isoformat(), "timezone": self.timezone,
                "sunset": self.sunset.strftime(fmt) if self.sunset else None,
                "sunrise": self.sunrise.strftime(fmt) if self.sunrise else None,
                "groups": {g: [{"time": s.time.strftime(fmt), "program": s.program,
                                "step": s.step} for s in steps]
                           for g, steps in self.groups.items()}}


def night_profile(lighting: LightingConfig, day: date, traffic: bool = True) -> NightProfile:
    """Every group's steps from noon on ``day`` to noon the next day, in the pole's zone."""
    from agent.lighting.service import make_schedule

    tz = ZoneInfo(lighting.timezone or "UTC")
    noon = datetime(day.year, day.month, day.day, 12, tzinfo=tz).timestamp()
    sun = Schedule({"sun": [Step("sunset", 0.0, 100.0, None), Step("sunrise", 0.0, 0.0, None)]},
                   [], lighting.latitude, lighting.longitude, str(tz))
    events = [(t, st.at) for d in (day, day + timedelta(days=1)) for t, st, _ in sun.steps_on(d)
              if noon <= t < noon + 86400]
    sunset = next((datetime.fromtimestamp(t, tz) for t, e in events if e == "sunset"), None)
    sunrise = next((datetime.fromtimestamp(t, tz) for t, e in events if e == "sunrise"), None)
    out = NightProfile(day, str(tz), sunset, sunrise)
    for g in lighting.groups:
        sched = make_schedule(lighting, g, traffic)     # a pole without cameras: no adaptive
        steps = [(t, st, prog) for d in (day, day + timedelta(days=1))
                 for t, st, prog in sched.steps_on(d)]
        out.groups[g.name] = [NightStep(datetime.fromtimestamp(t, tz), prog, st.describe())
                              for t, st, prog in steps if noon <= t < noon + 86400]
    return out


#: What a group without a step in a night does (polar day or night).
NO_STEP = ("(no step this night: its astro events do not happen here on this date, "
           "e.g. polar day or night; the lamps then follow the sun: at the ceiling "
           "while it is below the horizon, off above)")
