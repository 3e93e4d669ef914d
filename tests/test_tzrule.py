"""POSIX TZ rules (agent/common/tzrule.py) against zoneinfo, and the node's schedule
evaluation with a rule against the agent's zoneinfo-based Schedule (CPython only; the
same module also runs under MicroPython through tests/common/cases.json)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.common import schedule, tzrule
from agent.lighting.schedule import Schedule, Step
from agent.lighting.tzfooter import posix_rule

ZONES = ["Europe/Berlin", "America/New_York", "Australia/Sydney", "Europe/Dublin",
         "Asia/Ho_Chi_Minh", "America/Sao_Paulo", "Pacific/Auckland", "Asia/Kolkata",
         "America/Santiago", "America/Nuuk", "Asia/Jerusalem", "Pacific/Chatham",
         "Australia/Lord_Howe", "America/Havana", "UTC"]
START = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
END = int(datetime(2031, 1, 1, tzinfo=UTC).timestamp())


@cache
def rule(zone: str) -> tzrule.Rule:
    """The zone's rule, from its TZif footer."""
    return tzrule.parse(posix_rule(zone))


def zi_offset(zone: str, t: int) -> int:
    """zoneinfo's UTC offset at ``t``."""
    off = datetime.fromtimestamp(t, ZoneInfo(zone)).utcoffset()
    assert off is not None
    return int(off.total_seconds())


@pytest.mark.parametrize("zone", ZONES)
def test_offsets_match_zoneinfo_at_every_transition(zone: str) -> None:
    r = rule(zone)
    checked = 0
    for year in range(2026, 2031):
        for when, after in r.transitions(year):
            assert zi_offset(zone, when) == after
            for t in (when - 1, when, when + 1):
                assert r.offset_at(t) == zi_offset(zone, t), (zone, t)
                checked += 1
    assert checked == (30 if r.dst is not None else 0)


@pytest.mark.parametrize("zone", ZONES)
@settings(max_examples=300, deadline=None)
@given(t=st.integers(START, END))
def test_offsets_match_zoneinfo_anywhere(zone: str, t: int) -> None:
    assert rule(zone).offset_at(t) == zi_offset(zone, t)


@pytest.mark.parametrize("zone", ZONES)
@settings(max_examples=300, deadline=None)
@given(minute=st.integers(0, (END - START) // 60), near=st.booleans())
def test_local_times_match_zoneinfo_fold0(zone: str, minute: int, near: bool) -> None:
    """A local wall time → epoch as ``datetime(..., tzinfo=ZoneInfo, fold=0)`` does,
    including times skipped or repeated by the clocks changing."""
    r = rule(zone)
    wall = START + minute * 60
    if near and r.dst is not None:                 # land within 2 h of a change
        year = datetime.fromtimestamp(wall, UTC).year
        when = r.transitions(year)[minute % 2][0]
        wall = when + r.std + (minute % 240 - 120) * 60
    naive = datetime(1970, 1, 1) + timedelta(seconds=wall)
    assert r.utc_of_local(wall) == int(naive.replace(tzinfo=ZoneInfo(zone)).timestamp())


PROGRAM = [{"at": "sunset", "offset_min": -10, "level": 100}, {"at": "23:00", "level": 50},
           {"at": "02:30", "level": 30}, {"at": "05:00", "level": 80},
           {"at": "sunrise", "offset_min": 10, "level": 0}]


@pytest.mark.parametrize(("zone", "lat", "lon"), [("Europe/Berlin", 52.52, 13.40),
                                                  ("Australia/Sydney", -33.87, 151.21)])
def test_node_schedule_matches_the_agent_for_a_year(zone: str, lat: float, lon: float) -> None:
    """Every 10 minutes of 2026 (both clock changes included) the node's evaluation
    (common.schedule + the zone's TZ rule) gives the agent's level."""
    steps = [Step(s["at"], offset_min=s.get("offset_min", 0), level_pct=s["level"])
             for s in PROGRAM]
    agent = Schedule({"p": steps}, [], lat, lon, zone)
    r = rule(zone)
    changes = [w for w, _ in r.transitions(2026)]
    diffs, n = [], 0
    for t in range(START, START + 365 * 86400, 600):
        want = agent.active(t)
        assert want is not None
        got = schedule.level_at(PROGRAM, lat, lon, r, t)[0]
        n += 1
        if got != want.step.level_pct:
            diffs.append((datetime.fromtimestamp(t, ZoneInfo(zone)).isoformat(), got,
                          want.step.level_pct))
    assert n == 52560 and all(START < w < START + 365 * 86400 for w in changes)
    assert diffs == []


@settings(max_examples=2000, deadline=None)
@given(text=st.one_of(
    st.text(max_size=40),
    st.text(alphabet="<>+-:,./0123456789JMCETSDA", max_size=40),
    st.from_regex(r"[A-Z]{3}[+-]?\d{1,3}(:\d\d)?([A-Z]{3,4}(\d)?(,(M\d{1,2}\.\d\.\d|J?\d{1,3})"
                  r"(/-?\d{1,3}(:\d\d)?)?){0,3})?", fullmatch=True)))
def test_parser_fuzz_gives_a_rule_or_value_error(text: str) -> None:
    try:
        r = tzrule.parse(text)
    except ValueError as e:
        assert "bad TZ rule" in str(e)
        return
    assert r.offset_at(START) in (r.std, r.dst)
    assert isinstance(r.utc_of_local(START), int)


def test_the_parser_refuses_non_strings() -> None:
    for bad in (None, 1, b"UTC0", ["UTC0"]):
        with pytest.raises(ValueError, match="expected a string"):
            tzrule.parse(bad)  # type: ignore[arg-type]


def test_errors_say_where() -> None:
    with pytest.raises(ValueError, match=r"month must be 1\.\.12 at character 12"):
        tzrule.parse("CET-1CEST,M13.5.0,M10.5.0/3")
    with pytest.raises(ValueError, match="needs its change rules"):
        tzrule.parse("CET-1CEST")
