"""Lighting schedules as lighting engineers write them (TALQ 2.x vocabulary).

- A **control program** (TALQ ControlProgram) is a list of steps. Each step starts at a
  time of day: a **fixed time** (TALQ FixedTimeStep, ``"22:00"`` local time in the pole's
  time zone) or an **astro clock** event (TALQ AstroClockStep: ``sunset``, ``sunrise``,
  ``dusk``, ``dawn``) plus an offset in minutes. A step either holds a fixed ``level``
  (percent; 0 = off) or is **adaptive**: traffic-driven dimming between ``min`` and ``max``
  percent, with ``fallback`` (default ``max``) when traffic cannot be trusted.
- A **calendar** (TALQ Calendar) picks the program of each local calendar day: the first
  rule that matches the day (by ``dates``, ``weekdays``, ``months``) wins. A day's program
  gives that day's steps, morning and evening alike.
- The **active step** at time ``t`` is the latest step, over yesterday's, today's and
  tomorrow's steps in time order, that started at or before ``t``. A step whose astro
  event does not happen that day (polar day or night) is left out; the lighting floor
  still keeps dark hours lit (see ``agent.lighting.decide``).

Everything here is pure (epoch seconds in, steps out) and shared by ``agent run``,
``agent lights schedule`` and the tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from agent.common import calrule
from agent.common.schedule import latest
from agent.lighting.astro import EVENTS, event_time, solar_noon

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Adaptive:
    """Traffic-adaptive dimming between ``min_pct`` and ``max_pct``."""

    min_pct: float
    max_pct: float = 100.0
    fallback_pct: float | None = None      # when traffic is not trusted (default max_pct)

    @property
    def fallback(self) -> float:
        """The level when traffic cannot be trusted."""
        return self.max_pct if self.fallback_pct is None else self.fallback_pct


@dataclass(frozen=True)
class Step:
    """One step of a control program: from ``at`` (+ ``offset_min``) on, this level."""

    at: str                              # "HH:MM" or an astro event name
    offset_min: float = 0.0
    level_pct: float | None = None       # fixed level (0 = off) ...
    adaptive: Adaptive | None = None     # ... or adaptive

    @property
    def is_astro(self) -> bool:
        """True for astro clock steps (sunset, sunrise, dusk, dawn)."""
        return self.at in EVENTS

    def describe(self) -> str:
        """``sunset-10min → 100 %`` style text."""
        when = self.at + (f"{self.offset_min:+g}min" if self.offset_min else "")
        what = f"{self.level_pct:g} %" if self.adaptive is None else (
            f"adaptive {self.adaptive.min_pct:g}-{self.adaptive.max_pct:g} %")
        return f"{when} → {what}"


@dataclass(frozen=True)
class CalendarRule:
    """Which days a program runs: every listed criterion must match (none = every day)."""

    program: str
    dates: frozenset[tuple[int, int] | date] = frozenset()   # (month, day) or a full date
    weekdays: frozenset[int] = frozenset()                    # 0 = Monday
    months: frozenset[int] = frozenset()

    def matches(self, day: date) -> bool:
        """True when this rule applies to ``day`` (the rule shared with the lamp node,
        :func:`agent.common.calrule.matches`)."""
        dates = {d if isinstance(d, tuple) else (d.year, d.month, d.day) for d in self.dates}
        return calrule.matches(dates, self.weekdays, self.months, day.year, day.month, day.day)


#: The program used when the config names none: on at sunset, full light in twilight,
#: adaptive from dusk to dawn (within the group's floor and ceiling), off at sunrise.
DEFAULT_PROGRAM = "dusk_to_dawn"


def default_program(floor_pct: float, ceiling_pct: float = 100.0) -> list[Step]:
    """The built-in program (see :data:`DEFAULT_PROGRAM`)."""
    return [Step("sunset", level_pct=ceiling_pct),
            Step("dusk", adaptive=Adaptive(floor_pct, ceiling_pct)),
            Step("dawn", level_pct=ceiling_pct),
            Step("sunrise", level_pct=0.0)]


@dataclass(frozen=True)
class ActiveStep:
    """The step in force at a moment, and when it started and ends."""

    step: Step
    program: str
    since: float
    until: float | None


@dataclass
class Schedule:
    """Programs + calendar at a place; see the module docstring."""

    programs: dict[str, list[Step]]
    calendar: list[CalendarRule]
    latitude: float
    longitude: float
    timezone: str = "UTC"
    _tz: ZoneInfo = field(init=False, repr=False)
    _cache: dict[date, list[tuple[float, Step, str]]] = field(init=False, repr=False,
                                                               default_factory=dict)

    def __post_init__(self) -> None:
        self._tz = ZoneInfo(self.timezone)
        for rule in self.calendar:
            if rule.program not in self.programs:
                raise ValueError(f"calendar names program {rule.program!r}; programs: "
                                 f"{', '.join(self.programs)}")

    def program_for(self, day: date) -> str:
        """The program of local calendar day ``day`` (the first matching rule's)."""
        for rule in self.calendar:
            if rule.matches(day):
                return rule.program
        return next(iter(self.programs))

    def local_date(self, t: float) -> date:
        """The pole's local calendar date at epoch ``t``."""
        return datetime.fromtimestamp(t, self._tz).date()

    def steps_on(self, day: date) -> list[tuple[float, Step, str]]:
        """``(start epoch, step, program)`` for every step of local day ``day``, in time order."""
        if day in self._cache:
            return self._cache[day]
        program = self.program_for(day)
        out = []
        for step in self.programs[program]:
            t = self._start(step, day)
            if t is not None:
                out.append((t, step, program))
        out.sort(key=lambda x: x[0])
        if len(self._cache) > 16:
            self._cache.clear()
        self._cache[day] = out
        return out

    def _start(self, step: Step, day: date) -> float | None:
        if step.is_astro:
            t = event_time(step.at, self.latitude, self.longitude, self._solar_day(day))
            return None if t is None else t + step.offset_min * 60
        hh, mm = (int(x) for x in step.at.split(":"))
        local = datetime(day.year, day.month, day.day, hh, mm, tzinfo=self._tz)
        return local.timestamp() + step.offset_min * 60

    def _solar_day(self, day: date) -> float:
        """The UTC midnight whose solar day is the local calendar day ``day``: the one
        whose solar noon lies nearest local noon (in Samoa, UTC+13 at 172° W, the local
        date runs a day ahead of the UTC date of its solar noon)."""
        noon = datetime(day.year, day.month, day.day, 12, tzinfo=self._tz).timestamp()
        base = datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()
        return min((base + k * 86400 for k in (-1, 0, 1)),
                   key=lambda m: abs(solar_noon(self.longitude, m) - noon))

    def active(self, t: float) -> ActiveStep | None:
        """The step in force at epoch ``t`` (None only for a program with no usable step
        anywhere in three days)."""
        today = self.local_date(t)
        timeline = [s for d in (today - timedelta(days=1), today, today + timedelta(days=1))
                    for s in self.steps_on(d)]
        timeline.sort(key=lambda x: x[0])
        i = latest(timeline, t)          # shared with the lamp node (agent.common)
        if i < 0:
            if not timeline:
                return None
            start, step, program = timeline[0]  # before the first step of yesterday: rare
            return ActiveStep(step, program, start, start)
        start, step, program = timeline[i]
        nxt = timeline[i + 1][0] if i + 1 < len(timeline) else None
        return ActiveStep(step, program, start, nxt)


def calendar_date(value: str | date) -> tuple[int, int] | date:
    """A calendar rule's date: ``"MM-DD"`` (every year) → ``(month, day)``, ``"YYYY-MM-DD"``
    (or a YAML date) → that date; ValueError for anything else or a day that does not
    exist (``02-30``; ``02-29`` is allowed, for leap years)."""
    if isinstance(value, date):
        return value
    m = re.fullmatch(r"(\d{4}-)?(\d{2})-(\d{2})", str(value).strip())
    if not m:
        raise ValueError(f"not a date: {value!r}")
    year, month, day = (int(m.group(1)[:4]) if m.group(1) else None, int(m.group(2)),
                        int(m.group(3)))
    checked = date(year or 2024, month, day)         # 2024: a leap year
    return checked if year else (month, day)


def parse_time_of_day(value: str | int) -> str:
    """``"22:00"``, ``"7:05"`` or YAML's sexagesimal reading of unquoted ``22:00`` (1320)
    → ``"HH:MM"``; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected a time of day like '22:00', got {value!r}")
    if isinstance(value, int):
        if not 0 <= value < 24 * 60:
            raise ValueError(f"expected a time of day like '22:00', got {value!r}")
        return f"{value // 60:02d}:{value % 60:02d}"
    text = str(value).strip()
    hh, sep, mm = text.partition(":")
    if sep and hh.isdigit() and mm.isdigit() and len(mm) == 2 and 0 <= int(hh) < 24 \
            and 0 <= int(mm) < 60:
        return f"{int(hh):02d}:{int(mm):02d}"
    raise ValueError(f"expected a time of day 'HH:MM' (00:00-23:59) or one of "
                     f"{', '.join(EVENTS)}; got {text!r}")
