"""Calendar rules (TALQ Calendar) shared by the agent and the lamp node: which local
calendar days a program runs. A rule matches a day when every criterion it lists does
(none listed = every day): ``dates`` (``(month, day)`` every year, or ``(year, month,
day)``), ``weekdays`` (0 = Monday), ``months`` (1-12). The first matching rule of a
calendar picks the day's program.

MicroPython subset: no ``datetime``, no ``re``, no f-strings.
"""

try:
    from agent.common import tzrule
except ImportError:  # on the node ``common`` is a top-level package (node/manifest.txt)
    from common import tzrule

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def weekday(y, m, d):
    """0 = Monday ... 6 = Sunday, of the Gregorian date ``y-m-d``."""
    return (tzrule.days_from_civil(y, m, d) + 3) % 7     # 1970-01-01 was a Thursday


def parse_date(text):
    """``"MM-DD"`` → ``(month, day)`` (every year; ``02-29`` allowed), ``"YYYY-MM-DD"`` →
    ``(year, month, day)``; ValueError for anything else or a day that does not exist."""
    s = text.strip() if isinstance(text, str) else None
    parts = s.split("-") if s else []
    ok = len(parts) in (2, 3) and all(p and all(c in "0123456789" for c in p) for p in parts)
    if ok:
        widths = [len(p) for p in parts]
        ok = widths == [2, 2] or widths == [4, 2, 2]
    if ok:
        nums = [int(p) for p in parts]
        m, d = nums[-2], nums[-1]
        ok = 1 <= m <= 12 and 1 <= d <= _MONTH_DAYS[m - 1]
        if ok and len(nums) == 3 and m == 2 and d == 29:
            ok = tzrule.is_leap(nums[0])
        if ok:
            return tuple(nums)
    raise ValueError("not a date 'MM-DD' or 'YYYY-MM-DD': " + repr(text))


def matches(dates, weekdays, months, y, m, d):
    """True when a rule with these criteria (empty = any) applies to ``y-m-d``."""
    if dates and (m, d) not in dates and (y, m, d) not in dates:
        return False
    if weekdays and weekday(y, m, d) not in weekdays:
        return False
    return not (months and m not in months)


def program_for(calendar, y, m, d):
    """The ``program`` of the first rule in ``calendar`` (dicts with ``program``,
    ``dates``, ``weekdays``, ``months`` as :func:`matches` takes them) that matches
    ``y-m-d``; None when none does."""
    for r in calendar:
        if matches(r["dates"], r["weekdays"], r["months"], y, m, d):
            return r["program"]
    return None


def from_json(rule):
    """A calendar rule as written in a config (``dates`` as text, ``weekdays`` as names)
    → the form :func:`program_for` takes; ValueError naming the field otherwise."""
    if not isinstance(rule, dict):
        raise ValueError(": expected an object")
    for k in rule:
        if k not in ("program", "dates", "weekdays", "months"):
            raise ValueError("." + str(k) + ": unknown key")
    if not isinstance(rule.get("program"), str):
        raise ValueError(".program: expected a program name")
    out = {"program": rule["program"], "dates": [], "weekdays": [], "months": []}
    for key in ("dates", "weekdays", "months"):
        items = rule.get(key, [])
        if not isinstance(items, list):
            raise ValueError("." + key + ": expected a list")
        for i, v in enumerate(items):
            where = "." + key + "[" + str(i) + "]: "
            if key == "dates":
                try:
                    out[key].append(parse_date(v))
                except ValueError as e:
                    raise ValueError(where + str(e)) from None
            elif key == "weekdays":
                if v not in WEEKDAYS:
                    raise ValueError(where + "expected one of " + ", ".join(WEEKDAYS)
                                     + ", got " + repr(v))
                out[key].append(WEEKDAYS.index(v))
            else:
                if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 12:
                    raise ValueError(where + "expected a month 1-12, got " + repr(v))
                out[key].append(v)
    return out
