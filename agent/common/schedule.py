"""Schedule evaluation shared by the agent and the lamp node (MicroPython subset).

A program is a list of steps; each step starts at a fixed local time (``"HH:MM"``) or an
astro event (``sunset``, ``sunrise``, ``dusk``, ``dawn``) plus ``offset_min``, and holds a
``level`` (percent). The **active step** at ``t`` is the latest step, over yesterday's,
today's and tomorrow's, that started at or before ``t`` (see ``agent.lighting.schedule``).
Overrides (level, priority 1-9, expiry epoch): the highest-priority unexpired one wins.

The agent keeps its calendar and time zones (zoneinfo) and uses :func:`latest` and
:func:`winner`; the node, which has no zoneinfo, uses :func:`level_at` with its time zone
given as ``tz``: a fixed UTC offset in seconds (int) or a POSIX TZ rule
(:class:`tzrule.Rule`, daylight saving time included). With a rule, each local day's
midnight and fixed steps use the offset in force at that local time, as the agent's
zoneinfo code does (a step at a time skipped by the clocks going forward starts at the
same instant as ``datetime(..., fold=0)`` gives).
"""

try:
    from agent.common import calrule, sun, tzrule
except ImportError:  # on the node ``common`` is a top-level package (node/manifest.txt)
    from common import calrule, sun, tzrule

PRIORITIES = (1, 2, 3, 4, 5, 6, 7, 8, 9)


def latest(timeline, t):
    """Index of the step in force at ``t`` in ``timeline`` (a list sorted by its items'
    first element, the start epoch); -1 when every step starts after ``t``."""
    found = -1
    for i in range(len(timeline)):
        if timeline[i][0] <= t:
            found = i
        else:
            break
    return found


def winner(overrides, now):
    """The winning override at ``now``: the highest ``priority`` among those whose ``until``
    is later than ``now``; None when none is live. Items are dicts or objects with
    ``priority`` and ``until``."""
    best = None
    for o in overrides:
        until = o["until"] if isinstance(o, dict) else o.until
        prio = o["priority"] if isinstance(o, dict) else o.priority
        if until > now and (best is None or prio > best[0]):
            best = (prio, o)
    return None if best is None else best[1]


def parse_hhmm(text):
    """``"HH:MM"`` → minutes after midnight; ValueError otherwise."""
    hh, sep, mm = str(text).partition(":")
    if sep and hh.isdigit() and mm.isdigit() and len(mm) == 2:
        h, m = int(hh), int(mm)
        if 0 <= h < 24 and 0 <= m < 60:
            return h * 60 + m
    raise ValueError("expected a time of day 'HH:MM' or one of "
                     + ", ".join(sorted(sun.EVENTS)) + "; got " + repr(text))


def step_start(step, lat, lon, day, tz):
    """Start epoch of ``step`` (dict: ``at``, ``offset_min``) on local calendar day ``day``
    (days since 1970-01-01) under ``tz`` (int offset in seconds or a :class:`tzrule.Rule`);
    None when its astro event does not happen that day."""
    off = step.get("offset_min", 0) * 60
    at = step["at"]
    wall = day * 86400                          # local midnight, as local seconds
    if at in sun.EVENTS:
        day_utc = wall                          # the UTC midnight of the same date
        # the solar day whose noon lies nearest local noon
        noon = tzrule.utc_of_local(tz, wall + 43200)
        best = None
        for k in (-1, 0, 1):
            m = day_utc + k * 86400
            d = abs(sun.solar_noon(lon, m) - noon)
            if best is None or d < best[0]:
                best = (d, m)
        t = sun.event_time(at, lat, lon, best[1])
        return None if t is None else t + off
    return tzrule.utc_of_local(tz, wall + parse_hhmm(at) * 60) + off


def local_day(tz, t):
    """Local calendar day (days since 1970-01-01) at epoch ``t`` under ``tz``."""
    return int((int(t) + tzrule.offset_at(tz, t)) // 86400)


def steps_of(program, day):
    """The steps of local day ``day`` (days since 1970-01-01): ``program`` itself when it
    is a list of steps, or for a calendar plan (dict: ``programs`` name → steps,
    ``calendar`` rules as :func:`calrule.program_for` takes them, ``default`` the program
    of a day no rule matches) the program its calendar picks for that day."""
    if not isinstance(program, dict):
        return program
    y, m, d = sun.civil(day)
    name = calrule.program_for(program["calendar"], y, m, d)
    if name is None:
        name = program.get("default")
    return program["programs"].get(name, ()) if name is not None else ()


def timeline(program, lat, lon, tz, t):
    """``[(start, step), ...]`` sorted, for the local days before, of and after ``t``;
    ``program``: a list of steps or a calendar plan (see :func:`steps_of`); ``tz``: a
    fixed UTC offset in seconds or a :class:`tzrule.Rule`."""
    today = local_day(tz, t)
    out = []
    for k in (-1, 0, 1):
        for step in steps_of(program, today + k):
            s = step_start(step, lat, lon, today + k, tz)
            if s is not None:
                out.append((s, step))
    out.sort(key=lambda x: x[0])
    return out


def level_at(program, lat, lon, tz, t, overrides=()):
    """``(level, source, until)`` at epoch ``t`` (``tz``: UTC offset in seconds or a
    :class:`tzrule.Rule`): the winning override's level
    (source ``"override"``) or the active step's (``"schedule"``); ``until`` is when
    that ends (None if unknown). ``(None, "no-step", None)`` for a program with no usable
    step (the node reports that source, at full output)."""
    o = winner(overrides, t)
    if o is not None:
        return o["level"], "override", o["until"]
    line = timeline(program, lat, lon, tz, t)
    i = latest(line, t)
    if i < 0:
        if not line:
            return None, "no-step", None
        i = 0
    nxt = line[i + 1][0] if i + 1 < len(line) else None
    return line[i][1]["level"], "schedule", nxt
