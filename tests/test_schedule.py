"""Schedules: astro events, control programs, calendars (each rule of agent/lighting/schedule.py)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.lighting.astro import EVENTS, elevation_at, event_time
from agent.lighting.schedule import (
    Adaptive,
    CalendarRule,
    Schedule,
    Step,
    default_program,
    parse_time_of_day,
)

HANOI = (21.03, 105.85)
TZ = "Asia/Ho_Chi_Minh"


def local(y: int, mo: int, d: int, h: int, mi: int = 0, tz: str = TZ) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=ZoneInfo(tz)).timestamp()


def midnight(d: date) -> float:
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


def test_sun_events_hanoi_match_published_times() -> None:
    # almanac values for Hanoi in late November: sunrise about 06:12, sunset about 17:15
    # (UTC+7); NOAA's simplified algorithm is good to a minute or two
    day = midnight(date(2026, 11, 23))
    rise = event_time("sunrise", *HANOI, day)
    sset = event_time("sunset", *HANOI, day)
    assert rise is not None and sset is not None
    assert abs(rise - local(2026, 11, 23, 6, 12)) < 180
    assert abs(sset - local(2026, 11, 23, 17, 15)) < 180
    dawn, dusk = event_time("dawn", *HANOI, day), event_time("dusk", *HANOI, day)
    assert dawn is not None and dusk is not None and dawn < rise < sset < dusk


@settings(max_examples=200, deadline=None)
@given(st.floats(-65, 65), st.floats(-180, 180), st.integers(0, 3 * 365),
       st.sampled_from(sorted(EVENTS)))
def test_events_are_where_the_sun_has_their_elevation(lat: float, lon: float, day: int,
                                                      event: str) -> None:
    t = event_time(event, lat, lon, midnight(date(2026, 1, 1)) + day * 86400)
    if t is not None:
        assert elevation_at(lat, lon, t) == pytest.approx(EVENTS[event][0], abs=0.15)


def test_polar_night_and_day_have_no_sunrise() -> None:
    tromso = (69.65, 18.96)
    assert event_time("sunrise", *tromso, midnight(date(2026, 12, 21))) is None   # polar night
    assert event_time("sunset", *tromso, midnight(date(2026, 6, 21))) is None     # midnight sun
    assert event_time("sunrise", *tromso, midnight(date(2026, 3, 21))) is not None


def issue_example() -> Schedule:
    """On at sunset, 100 % until 22:00, adaptive 50–100 % until 05:00, 100 % until sunrise
    - 10 min, then off; a festive program on 24 and 31 December; weekends like weekdays."""
    programs = {
        "standard": [Step("sunset", level_pct=100), Step("22:00", adaptive=Adaptive(50, 100)),
                     Step("05:00", level_pct=100), Step("sunrise", -10, level_pct=0)],
        "festive": [Step("sunset", level_pct=100), Step("sunrise", -10, level_pct=0)],
    }
    calendar = [CalendarRule("festive", frozenset({(12, 24), (12, 31)})),
                CalendarRule("standard")]
    return Schedule(programs, calendar, *HANOI, TZ)


def test_the_issue_example_program_step_by_step() -> None:
    s = issue_example()
    day = date(2026, 11, 23)
    sset = event_time("sunset", *HANOI, midnight(day))
    rise_next = event_time("sunrise", *HANOI, midnight(date(2026, 11, 24)))
    assert sset is not None and rise_next is not None

    def at(t: float) -> Step:
        a = s.active(t)
        assert a is not None
        return a.step

    assert at(local(2026, 11, 23, 12)).level_pct == 0                 # noon: off
    assert at(sset - 60).level_pct == 0                                # a minute before sunset
    assert at(sset + 60).level_pct == 100                              # on at sunset
    assert at(local(2026, 11, 23, 21, 59)).level_pct == 100
    assert at(local(2026, 11, 23, 22, 1)).adaptive == Adaptive(50, 100)
    assert at(local(2026, 11, 24, 4, 59)).adaptive == Adaptive(50, 100)   # past midnight
    assert at(local(2026, 11, 24, 5, 1)).level_pct == 100
    assert at(rise_next - 11 * 60).level_pct == 100
    assert at(rise_next - 9 * 60).level_pct == 0                       # off 10 min before
    a = s.active(local(2026, 11, 23, 23))
    assert a is not None and a.since == local(2026, 11, 23, 22) and a.until == local(2026, 11, 24, 5)


def test_calendar_picks_the_festive_program_and_first_rule_wins() -> None:
    s = issue_example()
    assert s.program_for(date(2026, 12, 24)) == "festive"
    assert s.program_for(date(2027, 12, 31)) == "festive"              # every year
    assert s.program_for(date(2026, 12, 25)) == "standard"
    a = s.active(local(2026, 12, 24, 23))
    assert a is not None and a.program == "festive" and a.step.level_pct == 100   # no dimming
    wk = CalendarRule("x", weekdays=frozenset({5, 6}), months=frozenset({6}))
    assert wk.matches(date(2026, 6, 6)) and not wk.matches(date(2026, 6, 8))
    assert not wk.matches(date(2026, 7, 4))
    assert CalendarRule("y", frozenset({date(2026, 1, 1)})).matches(date(2026, 1, 1))
    assert not CalendarRule("y", frozenset({date(2026, 1, 1)})).matches(date(2027, 1, 1))
    with pytest.raises(ValueError, match="program 'nope'"):
        Schedule({"a": [Step("sunset", level_pct=100)]}, [CalendarRule("nope")], *HANOI)


def test_fixed_steps_follow_daylight_saving_time() -> None:
    s = Schedule({"p": [Step("22:00", level_pct=40), Step("06:00", level_pct=0)]},
                 [CalendarRule("p")], 52.37, 4.90, "Europe/Amsterdam")
    for d in (date(2026, 3, 28), date(2026, 3, 30), date(2026, 10, 26)):   # around both changes
        start = next(t for t, st_, _ in s.steps_on(d) if st_.at == "22:00")
        assert datetime.fromtimestamp(start, ZoneInfo("Europe/Amsterdam")).hour == 22


def test_default_program_is_dusk_to_dawn_adaptive() -> None:
    s = Schedule({"dusk_to_dawn": default_program(30)}, [], *HANOI)
    day = date(2026, 11, 23)
    dusk = event_time("dusk", *HANOI, midnight(day))
    assert dusk is not None
    a = s.active(dusk + 3600)
    assert a is not None and a.step.adaptive == Adaptive(30, 100)
    a = s.active(local(2026, 11, 23, 12))
    assert a is not None and a.step.level_pct == 0


@settings(max_examples=300, deadline=None)
@given(st.floats(0, 3 * 365 * 86400))
def test_a_step_is_always_in_force(offset: float) -> None:
    t = local(2026, 1, 1, 0) + offset
    a = issue_example().active(t)
    assert a is not None and a.since <= t and (a.until is None or t < a.until)


def test_time_of_day_parsing() -> None:
    assert parse_time_of_day("22:00") == "22:00"
    assert parse_time_of_day("7:05") == "07:05"
    assert parse_time_of_day(1320) == "22:00"       # YAML reads unquoted 22:00 as 1320
    for bad in ("24:00", "22:60", "10pm", "", "22:0", -1, 1440, True):
        with pytest.raises(ValueError):
            parse_time_of_day(bad)  # type: ignore[arg-type]


def test_the_astro_steps_of_a_local_day_fall_on_that_day_east_of_the_date_line() -> None:
    """Samoa (UTC+13 at 172° W): the local date runs a day ahead of the UTC date of its
    solar noon; the local evening's sunset must still be that local evening's."""
    s = Schedule({"p": [Step("sunset", level_pct=100), Step("sunrise", level_pct=0)]},
                 [CalendarRule("p")], -13.83, -171.76, "Pacific/Apia")
    for d in (date(2026, 12, 23), date(2026, 12, 24), date(2026, 6, 10)):
        times = {st.at: datetime.fromtimestamp(t, ZoneInfo("Pacific/Apia"))
                 for t, st, _ in s.steps_on(d)}
        assert times["sunset"].date() == d and 17 <= times["sunset"].hour <= 20, times
        assert times["sunrise"].date() == d and 5 <= times["sunrise"].hour <= 8, times


def test_polar_day_and_night_follow_the_sun() -> None:
    from agent.lighting.clocktrust import TrustState
    from agent.lighting.envelope import EnvelopeSettings
    from agent.lighting.flow import FlowReading
    from agent.lighting.policy import GroupPolicy, GroupSettings

    tromso = (69.65, 18.96)
    s = Schedule({"dusk_to_dawn": default_program(30)}, [], *tromso, "Europe/Oslo")
    p = GroupPolicy(GroupSettings("g", envelope=EnvelopeSettings(floor_pct=30)), s, *tromso,
                    None, "no model")
    trusted, no_flow = TrustState(True), FlowReading(None, "no camera")
    day = p.decide(datetime(2026, 6, 21, 12, tzinfo=UTC).timestamp(), 10, trusted, no_flow)
    assert (day.mode, day.level_pct) == ("schedule", 0.0) and "polar" in day.reasons[0]
    svalbard = (78.22, 15.65)                  # in December the sun stays below -6°
    s2 = Schedule({"dusk_to_dawn": default_program(30)}, [], *svalbard, "Arctic/Longyearbyen")
    p2 = GroupPolicy(GroupSettings("g", envelope=EnvelopeSettings(floor_pct=30)), s2,
                     *svalbard, None, "no model")
    night = p2.decide(datetime(2026, 12, 21, 12, tzinfo=UTC).timestamp(), 20, trusted, no_flow)
    assert (night.mode, night.level_pct) == ("schedule", 100.0) and "polar" in night.reasons[0]
    # not "clock not trustworthy": the clock is trusted
    assert not any("clock" in r for r in day.reasons + night.reasons)
