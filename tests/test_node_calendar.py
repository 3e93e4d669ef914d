"""The node's calendar (``programs`` + ``calendar`` in its JSON config): the same rule
matching as the agent (agent/common/calrule.py), the same levels as the agent's Schedule
over a year, and clear errors for bad calendars (CPython; the shared cases also run under
MicroPython through tests/common/cases.json)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from agent.cli.nodecheck import nodecfg as node_validator
from agent.common import calrule, schedule, tzrule
from agent.lighting.schedule import WEEKDAYS, CalendarRule, Schedule, Step, calendar_date

nodecfg = node_validator()          # node/nodecfg.py, as agent validate loads it

PROGRAMS = {
    "holiday": [{"at": "sunset", "level": 100}, {"at": "sunrise", "level": 0}],
    "weekend": [{"at": "sunset", "offset_min": -15, "level": 100}, {"at": "01:00", "level": 60},
                {"at": "sunrise", "level": 0}],
    "winter": [{"at": "dusk", "level": 100}, {"at": "22:00", "level": 50},
               {"at": "06:00", "level": 80}, {"at": "dawn", "level": 0}],
    "normal": [{"at": "sunset", "level": 100}, {"at": "23:00", "level": 40},
               {"at": "02:30", "level": 20}, {"at": "sunrise", "offset_min": 5, "level": 0}],
}
CALENDAR = [{"program": "holiday", "dates": ["12-24", "12-25", "2027-01-01"]},
            {"program": "weekend", "weekdays": ["sat", "sun"], "months": [5, 6, 7, 8]},
            {"program": "winter", "months": [11, 12, 1, 2]},
            {"program": "normal"}]
BASE = {"device": "node-0042", "site": "harbour", "latitude": 52.52, "longitude": 13.40,
        "tz": "CET-1CEST,M3.5.0,M10.5.0/3", "mqtt": {"host": "h"},
        "output": {"kind": "file", "path": "x"}}


def agent_schedule() -> Schedule:
    """The same programs and calendar as the agent builds them from its YAML."""
    programs = {k: [Step(s["at"], s.get("offset_min", 0), s["level"]) for s in v]
                for k, v in PROGRAMS.items()}
    rules = [CalendarRule(r["program"], frozenset(calendar_date(d) for d in r.get("dates", [])),
                          frozenset(WEEKDAYS.index(w) for w in r.get("weekdays", [])),
                          frozenset(r.get("months", []))) for r in CALENDAR]
    return Schedule(programs, rules, 52.52, 13.40, "Europe/Berlin")


def test_the_node_calendar_matches_the_agent_every_20_minutes_of_a_year() -> None:
    cfg = {**BASE, "programs": PROGRAMS, "calendar": CALENDAR}
    assert nodecfg.validate(cfg) == []
    plan = nodecfg.plan(cfg)
    tz = nodecfg.zone(cfg)
    agent = agent_schedule()
    start = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp())
    diffs, seen = [], set()
    for t in range(start, start + 366 * 86400, 1200):
        want = agent.active(t)
        assert want is not None
        got = schedule.level_at(plan, 52.52, 13.40, tz, t)[0]
        seen.add(want.program)
        if got != want.step.level_pct:
            diffs.append((t, got, want.step.level_pct, want.program))
    assert diffs == []
    assert seen == set(PROGRAMS)          # every program was in force some time


def test_the_agent_matches_with_the_shared_rule() -> None:
    rule = CalendarRule("p", frozenset({(12, 24), date(2027, 1, 1)}), frozenset({4}))
    assert rule.matches(date(2027, 12, 24))            # a Friday, 24 December
    assert not rule.matches(date(2026, 12, 24))        # a Thursday
    assert rule.matches(date(2027, 1, 1)) and not rule.matches(date(2028, 1, 1))
    assert calrule.weekday(2027, 12, 24) == date(2027, 12, 24).weekday() == 4


@pytest.mark.parametrize(("change", "error"), [
    ({"program": [{"at": "01:00", "level": 1}]},
     "program: give program, or programs and calendar, not both"),
    ({"calendar": [{"program": "normal", "weekdays": ["monday"]}]},
     "calendar[0].weekdays[0]: expected one of mon, tue, wed, thu, fri, sat, sun, got 'monday'"),
    ({"calendar": [{"program": "night"}]}, "calendar[0].program: no program 'night' in programs"),
    ({"calendar": [{"program": "winter", "months": [11]}]},
     "calendar: with several programs, end with a rule for every day"),
    ({"calendar": [{"program": "holiday", "dates": ["02-30"]}, {"program": "normal"}]},
     "calendar[0].dates[0]: not a date 'MM-DD' or 'YYYY-MM-DD': '02-30'"),
    ({"programs": {"a": []}, "calendar": []}, "programs.a: expected a non-empty list of steps"),
])
def test_bad_calendars_are_named(change: dict, error: str) -> None:
    cfg = {**BASE, "programs": PROGRAMS, "calendar": CALENDAR, **change}
    errs = nodecfg.validate(cfg)
    assert any(e.startswith(error) for e in errs), errs


def test_a_single_program_needs_no_calendar(tmp_path: Path) -> None:
    cfg = {**BASE, "programs": {"only": PROGRAMS["normal"]}}
    assert nodecfg.validate(cfg) == []
    f = tmp_path / "n.json"
    f.write_text(json.dumps({**cfg, "state_dir": str(tmp_path)}))
    loaded = nodecfg.load(str(f))
    t = int(datetime(2027, 1, 5, 22, 30, tzinfo=UTC).timestamp())   # 23:30 CET
    assert schedule.level_at(nodecfg.plan(loaded), 52.52, 13.40, tzrule.parse(BASE["tz"]),
                             t)[0] == 40
