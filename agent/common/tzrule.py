"""POSIX TZ rules (the TZif footer, RFC 8536 §3.3; glibc's ``TZ``): parse once, then the
UTC offset at any epoch and the epoch of any local wall time, with no zoneinfo.

Examples: ``CET-1CEST,M3.5.0,M10.5.0/3``, ``EST5EDT,M3.2.0,M11.1.0``, ``<+07>-7``,
``UTC0``, ``IST-1GMT0,M10.5.0,M3.5.0/1`` (Europe/Dublin: "daylight" time one hour
*behind* standard). The POSIX sign is west-positive (``EST5`` is UTC-5); everything this
module returns is east-positive seconds, as ``datetime.utcoffset`` is.

A zone with daylight time must give its change rules (``,start[/time],end[/time]``);
glibc's fallback to US rules is refused, so a typo cannot silently pick the wrong dates.
Dates: ``Mm.w.d`` (month, week 1-5 with 5 = last, weekday 0 = Sunday), ``Jn`` (1-365,
29 February never counted) and ``n`` (0-365, counted). Times: ``[+-]hh[:mm[:ss]]``,
-167..167 hours (RFC 8536), default ``02:00``.

MicroPython subset (shared with the lamp node): no ``re``, no ``datetime``, no f-strings.
"""

_DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def days_from_civil(y, m, d):
    """Days since 1970-01-01 of the proleptic Gregorian date ``y-m-d`` (inverse of
    ``sun.civil``)."""
    y -= 1 if m <= 2 else 0
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def is_leap(y):
    """True for a Gregorian leap year."""
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


def year_of(days):
    """Gregorian year of day ``days`` since 1970-01-01."""
    y = 1970 + days // 366
    while days_from_civil(y + 1, 1, 1) <= days:
        y += 1
    while days_from_civil(y, 1, 1) > days:
        y -= 1
    return y


class Rule:
    """A parsed TZ string. ``std``/``dst`` are east-positive offsets in seconds (``dst``
    None for a zone without daylight time); ``start``/``end`` are ``(kind, a, b, c, secs)``
    with kind ``"M"`` (a=month, b=week, c=weekday), ``"J"`` or ``"n"`` (a=day)."""

    def __init__(self, text, std_name, std, dst_name=None, dst=None, start=None, end=None):
        self.text = text
        self.std_name = std_name
        self.std = std
        self.dst_name = dst_name
        self.dst = dst
        self.start = start
        self.end = end
        self._years = {}        # year -> its transitions (a few years; cleared when full)

    def __repr__(self):
        return "Rule(" + repr(self.text) + ")"

    def transitions(self, year):
        """``[(utc epoch, offset after), ...]`` of ``year``'s two changes (empty without
        daylight time)."""
        if self.dst is None:
            return []
        got = self._years.get(year)
        if got is None:
            on = _day(self.start, year) * 86400 + self.start[4] - self.std
            off = _day(self.end, year) * 86400 + self.end[4] - self.dst
            got = [(on, self.dst), (off, self.std)]
            if len(self._years) >= 6:
                self._years.clear()
            self._years[year] = got
        return got

    def offset_at(self, t):
        """UTC offset (seconds, east-positive) in force at epoch ``t``."""
        if self.dst is None:
            return self.std
        y = year_of(int((t + self.std) // 86400))
        found = None
        for yy in (y - 1, y, y + 1):
            for when, off in self.transitions(yy):
                # a change at the same instant as another: "on" after "off", so a rule
                # whose daylight time never ends (``0/0,J365/25``) stays in daylight time
                key = (when, 1 if off == self.dst else 0)
                if key[0] <= t and (found is None or key >= found[0]):
                    found = (key, off)
        return self.std if found is None else found[1]

    def utc_of_local(self, wall):
        """Epoch of local wall time ``wall`` (seconds since 1970-01-01 00:00 *local*),
        as ``datetime(..., tzinfo=ZoneInfo(...), fold=0).timestamp()``: a time that
        happens twice (clocks back) is the first; a time that does not happen (clocks
        forward) is read with the offset before the change (02:30 → 03:30)."""
        if self.dst is None:
            return wall - self.std
        valid = [o for o in (self.std, self.dst) if self.offset_at(wall - o) == o]
        if valid:
            return wall - max(valid)
        return wall - min(self.std, self.dst)


def offset_at(tz, t):
    """UTC offset (seconds) at epoch ``t`` of ``tz``: a fixed int offset or a :class:`Rule`."""
    return tz if isinstance(tz, (int, float)) else tz.offset_at(t)


def utc_of_local(tz, wall):
    """Epoch of local wall time ``wall`` under ``tz`` (int offset or :class:`Rule`)."""
    return wall - tz if isinstance(tz, (int, float)) else tz.utc_of_local(wall)


def _day(spec, year):
    """Days since 1970-01-01 of a change date ``spec`` in ``year``."""
    kind, a, b, c = spec[0], spec[1], spec[2], spec[3]
    jan1 = days_from_civil(year, 1, 1)
    if kind == "J":
        return jan1 + a - 1 + (1 if is_leap(year) and a >= 60 else 0)
    if kind == "n":
        return jan1 + a
    first = days_from_civil(year, a, 1)
    wd = (first + 4) % 7                        # 1970-01-01 was a Thursday; 0 = Sunday
    d = 1 + (c - wd) % 7 + 7 * (b - 1)
    mdays = _DAYS_IN_MONTH[a - 1] + (1 if a == 2 and is_leap(year) else 0)
    while d > mdays:
        d -= 7
    return first + d - 1


def _alpha(c):
    return "a" <= c <= "z" or "A" <= c <= "Z"


class _Reader:
    def __init__(self, text):
        self.s = text
        self.i = 0

    def fail(self, why):
        raise ValueError("bad TZ rule " + repr(self.s) + ": " + why + " at character "
                         + str(self.i + 1))

    def peek(self):
        return self.s[self.i] if self.i < len(self.s) else ""

    def name(self):
        s = self.s
        if self.peek() == "<":
            j = s.find(">", self.i)
            if j < 0:
                self.fail("'<' without '>'")
            n = s[self.i + 1:j]
            if len(n) < 3 or not all(_alpha(c) or c in "0123456789+-" for c in n):
                self.fail("a quoted name needs 3 or more letters, digits, + or -")
            self.i = j + 1
            return n
        j = self.i
        while j < len(s) and _alpha(s[j]):
            j += 1
        if j - self.i < 3:
            self.fail("expected a zone name of 3 or more letters (or <+07> style)")
        n = s[self.i:j]
        self.i = j
        return n

    def number(self, lo, hi, what):
        j = self.i
        while j < len(self.s) and self.s[j] in "0123456789":
            j += 1
        if j == self.i or j - self.i > 3:
            self.fail("expected " + what)
        v = int(self.s[self.i:j])
        if not lo <= v <= hi:
            self.fail(what + " must be " + str(lo) + ".." + str(hi))
        self.i = j
        return v

    def hms(self, max_h, signed, what):
        sign = 1
        if self.peek() in ("+", "-"):
            if not signed:
                self.fail(what + " takes no sign")
            sign = -1 if self.peek() == "-" else 1
            self.i += 1
        secs = self.number(0, max_h, what + " hours") * 3600
        for scale in (60, 1):
            if self.peek() != ":":
                break
            self.i += 1
            secs += self.number(0, 59, what + " minutes/seconds") * scale
        return sign * secs

    def date(self):
        c = self.peek()
        if c == "M":
            self.i += 1
            m = self.number(1, 12, "month")
            w = d = 0
            for part in ("week", "weekday"):
                if self.peek() != ".":
                    self.fail("expected '.' in Mm.w.d")
                self.i += 1
                if part == "week":
                    w = self.number(1, 5, "week")
                else:
                    d = self.number(0, 6, "weekday")
            spec = ["M", m, w, d]
        elif c == "J":
            self.i += 1
            spec = ["J", self.number(1, 365, "Julian day"), 0, 0]
        elif c in "0123456789" and c:
            spec = ["n", self.number(0, 365, "day"), 0, 0]
        else:
            self.fail("expected a date Mm.w.d, Jn or n")
        secs = 7200
        if self.peek() == "/":
            self.i += 1
            secs = self.hms(167, True, "change time")
        return (spec[0], spec[1], spec[2], spec[3], secs)


def parse(text):
    """A :class:`Rule` from POSIX TZ string ``text``; ValueError (naming the position) for
    anything else."""
    if not isinstance(text, str):
        raise ValueError("bad TZ rule: expected a string, got " + repr(text))
    r = _Reader(text)
    std_name = r.name()
    if r.peek() not in "+-0123456789" or not r.peek():
        r.fail("expected the UTC offset after " + repr(std_name) + " (e.g. CET-1, EST5)")
    std = -r.hms(24, True, "offset")
    if r.i == len(text):
        return Rule(text, std_name, std)
    dst_name = r.name()
    dst = std + 3600
    if r.peek() and r.peek() != ",":
        dst = -r.hms(24, True, "daylight offset")
    if r.peek() != ",":
        r.fail("daylight time needs its change rules (e.g. ,M3.5.0,M10.5.0/3)")
    r.i += 1
    start = r.date()
    if r.peek() != ",":
        r.fail("expected ',' and the end of daylight time")
    r.i += 1
    end = r.date()
    if r.i != len(text):
        r.fail("unexpected text")
    return Rule(text, std_name, std, dst_name, dst, start, end)
