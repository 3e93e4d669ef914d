"""Run tests/common/cases.json against agent/common under whichever interpreter runs this
(CPython or MicroPython): prints one line ``<index> ok|FAIL <detail>`` per case.

Usage: ``MICROPYPATH=agent micropython tests/common/run_cases.py tests/common/cases.json``
(or ``PYTHONPATH=agent python3 ...``).
"""

import json
import sys

from common import calrule, schedule, sun, tzrule


def call(fn, args):
    """Evaluate one case's function."""
    if fn == "elevation_at":
        return sun.elevation_at(*args)
    if fn == "event_time":
        return sun.event_time(*args)
    if fn == "day_of_year":
        return sun.day_of_year(*args)
    if fn == "latest":
        return schedule.latest(*args)
    if fn == "winner_level":
        o = schedule.winner(*args)
        return None if o is None else o["level"]
    if fn == "level_at":
        return schedule.level_at(*args)[0]
    if fn == "parse_hhmm":
        try:
            return schedule.parse_hhmm(*args)
        except ValueError:
            return "ValueError"
    if fn == "tz_parse":
        try:
            r = tzrule.parse(*args)
        except ValueError:
            return "ValueError"
        return [r.std, r.dst]
    if fn == "tz_offset":
        return tzrule.parse(args[0]).offset_at(args[1])
    if fn == "tz_utc_of_local":
        return tzrule.parse(args[0]).utc_of_local(args[1])
    if fn == "level_at_tz":
        a = list(args)
        a[3] = tzrule.parse(a[3])
        return schedule.level_at(*a)[0]
    if fn == "cal_matches":
        dates = [tuple(x) for x in args[0]]
        return calrule.matches(dates, *args[1:])
    if fn == "cal_weekday":
        return calrule.weekday(*args)
    if fn == "cal_parse_date":
        try:
            return list(calrule.parse_date(*args))
        except ValueError:
            return "ValueError"
    if fn == "cal_from_json":
        try:
            r = calrule.from_json(*args)
        except ValueError as e:
            return "ValueError " + str(e).split(":")[0]
        r["dates"] = [list(x) for x in r["dates"]]
        return r
    if fn == "level_at_cal":
        plan = {"programs": args[0]["programs"],
                "calendar": [calrule.from_json(r) for r in args[0]["calendar"]]}
        return schedule.level_at(plan, args[1], args[2], tzrule.parse(args[3]), args[4])[0]
    raise ValueError("unknown fn " + fn)


def main(path):
    """Run every case; exit status 1 when any failed."""
    with open(path) as f:
        cases = json.load(f)["cases"]
    bad = 0
    for i, c in enumerate(cases):
        try:
            got = call(c["fn"], c["args"])
        except Exception as e:
            got = "raised " + repr(e)
        want = c["want"]
        if isinstance(want, float) and isinstance(got, (int, float)):
            ok = abs(got - want) <= c["tol"]
        else:
            ok = got == want
        bad += not ok
        print(i, "ok" if ok else "FAIL", json.dumps({"fn": c["fn"], "got": got, "want": want}))
    sys.exit(1 if bad else 0)


main(sys.argv[1])
