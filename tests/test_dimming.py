"""Dimming: the safety envelope (each rule property-tested), the adaptive rule, the rolling
hourly flow, and the group policy with the real ONNX dimming model."""

from __future__ import annotations

import hashlib
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import BUILD_DATE
from agent.lighting.astro import event_time
from agent.lighting.clocktrust import TrustState
from agent.lighting.dimming import DimmingModel, DimmingModelError
from agent.lighting.envelope import EnvelopeSettings, SafetyEnvelope, Situation
from agent.lighting.flow import FlowReading, RollingFlow, TrafficFlow, TrafficSample
from agent.lighting.policy import GroupPolicy, GroupSettings
from agent.lighting.rule import DEFAULT_FLOOR_PCT, rule_level_pct
from agent.lighting.schedule import (
    ActiveStep,
    Adaptive,
    CalendarRule,
    Schedule,
    Step,
    default_program,
)
from tests.conftest import ROOT

CARD = ROOT / "models" / "dimming.md"
HANOI = (21.03, 105.85)
NIGHT_UTC = datetime(2026, 11, 22, 17, 0, tzinfo=UTC).timestamp()   # 00:00 in Hanoi
NOON_UTC = datetime(2026, 11, 22, 5, 0, tzinfo=UTC).timestamp()     # 12:00 in Hanoi
TRUSTED = TrustState(True)

# -- the envelope ------------------------------------------------------------------------

envelope_settings = st.builds(
    lambda floor, span, safe_share, down, up: EnvelopeSettings(
        floor_pct=floor, ceiling_pct=min(100.0, floor + span),
        safe_pct=floor + (100 - floor) * safe_share, ramp_down_pct_per_min=down,
        ramp_up_pct_per_min=up),
    st.floats(5, 100), st.floats(0, 95), st.floats(0, 1), st.floats(0.5, 50), st.floats(1, 200))

steps = st.one_of(
    st.builds(lambda lvl: Step("22:00", level_pct=lvl), st.floats(0, 100)),
    st.builds(lambda lo, span, fb: Step("dusk", adaptive=Adaptive(lo, min(100.0, lo + span), fb)),
              st.floats(0, 100), st.floats(0, 100), st.one_of(st.none(), st.floats(0, 100))))

odd = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.floats(-50, 150))

situations = st.builds(
    lambda now, trusted, step, dark, traffic, rule, proposal, model_err, ov, amb: Situation(
        now, trusted, () if trusted else ("clock jumped",),
        ActiveStep(step, "p", 0.0, None) if trusted else None, dark,
        "" if traffic else "camera stale", rule, proposal, "model gone" if model_err else "",
        ov, amb),
    st.floats(0, 1e6), st.booleans(), steps, st.booleans(), st.booleans(),
    st.one_of(st.none(), st.floats(0, 100)), odd, st.booleans(), odd,
    st.one_of(st.none(), st.booleans()))


@settings(max_examples=10_000, deadline=None)
@given(envelope_settings, st.one_of(st.none(), st.floats(0, 100)), st.floats(0, 3600), situations)
def test_envelope_holds_for_any_input(s: EnvelopeSettings, prev: float | None, dt: float,
                                      x: Situation) -> None:
    env = SafetyEnvelope(s, start_pct=prev)
    if prev is not None:
        env.last_t = x.now_monotonic - dt
    d = env.decide(x)
    lvl = d.level_pct
    assert 0 <= lvl <= 100 and d.mode in ("failsafe", "override", "schedule", "fallback",
                                          "adaptive", "ambient")
    if not x.clock_trusted:                       # rule 1: never dimmed, never off
        assert lvl >= s.safe_pct - 1e-3 and d.reasons
        return
    step = x.step.step if x.step is not None else None
    lit = step is not None and (step.adaptive is not None or (step.level_pct or 0) > 0)
    if x.dark or lit:                             # rule 5: the floor in the dark or lit
        assert lvl >= s.floor_pct - 1e-3
    if d.mode == "failsafe":
        assert lvl >= s.safe_pct - 1e-3 and "model gone" in d.reasons   # up at once, down ramped
    if d.mode == "fallback":
        assert lvl >= x.step.step.adaptive.fallback - 1e-3
        assert (x.traffic_reason or "no traffic figures") in d.reasons
    if d.mode == "adaptive":                      # rule 3: never below the rule
        assert x.rule_pct is not None and lvl >= max(x.rule_pct, s.floor_pct,
                                                     x.step.step.adaptive.min_pct) - 1e-3
    if prev is not None and prev > 0 and lvl > 0 and d.mode != "failsafe":   # rule 6: ramp
        minutes = dt / 60
        assert lvl >= prev - s.ramp_down_pct_per_min * minutes - 1e-3
        assert lvl <= max(prev + s.ramp_up_pct_per_min * minutes, d.min_pct) + 1e-3


def at_night(step: Step, now: float = 0.0, **kw: object) -> Situation:
    return Situation(now, True, (), ActiveStep(step, "p", 0.0, None), True, **kw)  # type: ignore[arg-type]


ADAPTIVE = Step("dusk", adaptive=Adaptive(30, 100))


def test_adaptive_is_bounded_below_by_the_rule_not_only_the_floor() -> None:
    env = SafetyEnvelope(EnvelopeSettings(floor_pct=30, ramp_down_pct_per_min=1000))
    d = env.decide(at_night(ADAPTIVE, rule_pct=75.0, proposal_pct=46.0))
    assert d.mode == "adaptive" and d.level_pct == 75 and "raised to 75 %" in d.reasons[0]
    d = env.decide(at_night(ADAPTIVE, 60, rule_pct=50.0, proposal_pct=62.0))
    assert d.level_pct == 62 and not d.reasons              # brighter than the rule: kept


def test_start_at_night_ramps_down_from_the_safe_level() -> None:
    env = SafetyEnvelope(EnvelopeSettings(floor_pct=30, ramp_down_pct_per_min=10),
                         start_pct=100)
    levels = [env.decide(at_night(ADAPTIVE, 60 * m, rule_pct=30.0, proposal_pct=30.0)).level_pct
              for m in range(0, 9)]
    assert levels == [100, 90, 80, 70, 60, 50, 40, 30, 30]


def test_overrides_are_rate_limited_both_ways() -> None:
    env = SafetyEnvelope(EnvelopeSettings(floor_pct=30, ramp_up_pct_per_min=100,
                                          ramp_down_pct_per_min=10), start_pct=30)
    env.decide(at_night(Step("x", level_pct=30), 0))
    up = env.decide(at_night(Step("x", level_pct=30), 0.5, override_pct=100.0))
    down = env.decide(at_night(Step("x", level_pct=30), 1.0, override_pct=40.0))
    assert up.mode == "override" and up.level_pct == pytest.approx(30 + 100 / 120, abs=0.01)
    # 30 → 100 → 40 % asked within a second: the lamps creep, they do not flicker
    assert down.level_pct == pytest.approx(up.level_pct + 100 / 120, abs=0.01)


def test_the_way_up_to_the_fallback_and_the_rule_is_immediate() -> None:
    env = SafetyEnvelope(EnvelopeSettings(floor_pct=30), start_pct=40)
    env.decide(at_night(ADAPTIVE, 0, rule_pct=40.0, proposal_pct=40.0))
    assert env.decide(at_night(ADAPTIVE, 1, traffic_reason="camera stale")).level_pct == 100
    env.decide(at_night(ADAPTIVE, 2000, rule_pct=30.0, proposal_pct=30.0))
    d = env.decide(at_night(ADAPTIVE, 2001, rule_pct=75.0, proposal_pct=30.0))   # traffic surge
    assert d.level_pct == 75


def test_fixed_steps_off_by_day_floor_by_night_and_the_sensor_switches_on_only() -> None:
    env = SafetyEnvelope(EnvelopeSettings(floor_pct=30))
    off = Step("sunrise", level_pct=0)
    day = Situation(0, True, (), ActiveStep(off, "p", 0, None), dark=False)
    assert env.decide(day).level_pct == 0
    storm = Situation(1, True, (), ActiveStep(off, "p", 0, None), dark=False, ambient_dark=True)
    d = env.decide(storm)
    assert d.mode == "ambient" and d.level_pct == 100
    d = SafetyEnvelope(EnvelopeSettings(floor_pct=30)).decide(at_night(off, 2))  # off at night
    assert d.level_pct == 30 and "class floor" in d.reasons[0]
    d = env.decide(at_night(Step("22:00", level_pct=60), 3, ambient_dark=False))
    assert d.level_pct >= 30                                # a sensor never switches off


def test_in_twilight_the_floor_holds_from_the_schedules_switch_on() -> None:
    """Five minutes after sunset (sun about -1°, not yet dark), the schedule has the lamps
    on: a 0 % override is raised to the floor and ramped, not a switch-off; before the
    switch-on (the step in force is off) by day, the override may switch off."""
    env = SafetyEnvelope(EnvelopeSettings(floor_pct=30, ramp_down_pct_per_min=10),
                         start_pct=100)
    on = Step("sunset", offset_min=-10, level_pct=100)
    twilight = Situation(0, True, (), ActiveStep(on, "p", 0, None), dark=False)
    env.decide(twilight)
    d = env.decide(Situation(60, True, (), ActiveStep(on, "p", 0, None), dark=False,
                             override_pct=0.0))
    assert d.mode == "override" and d.level_pct == pytest.approx(90, abs=0.01)   # ramped
    assert any("the schedule has the lamps on" in r for r in d.reasons)
    for t in range(120, 1200, 60):
        d = env.decide(Situation(t, True, (), ActiveStep(on, "p", 0, None), dark=False,
                                 override_pct=0.0))
    assert d.level_pct == 30                                     # held at the floor
    off = Step("sunrise", level_pct=0)
    day = SafetyEnvelope(EnvelopeSettings(floor_pct=30), start_pct=100)
    d = day.decide(Situation(0, True, (), ActiveStep(off, "p", 0, None), dark=False,
                             override_pct=0.0))
    assert d.level_pct == 0


def test_only_a_maintenance_override_goes_below_the_floor_at_night() -> None:
    step = Step("22:00", level_pct=60)
    plain = SafetyEnvelope(EnvelopeSettings(floor_pct=30)).decide(
        at_night(step, 0, override_pct=0.0))
    crew = SafetyEnvelope(EnvelopeSettings(floor_pct=30)).decide(
        at_night(step, 0, override_pct=0.0, override_maintenance=True))
    assert plain.level_pct == 30 and crew.level_pct == 0
    assert crew.mode == "override" and "maintenance override" in crew.reasons[0]
    untrusted = SafetyEnvelope(EnvelopeSettings(floor_pct=30, safe_pct=100)).decide(
        Situation(0, False, ("no clock",), None, override_pct=0.0, override_maintenance=True))
    assert untrusted.level_pct == 100             # an untrusted clock still wins


def test_untrusted_clock_is_the_safe_level_day_and_night() -> None:
    env = SafetyEnvelope(EnvelopeSettings(floor_pct=30, safe_pct=90))
    d = env.decide(Situation(0, False, ("no time source vouches",)))
    assert d.mode == "failsafe" and d.level_pct == 90 and d.reasons == ["no time source vouches"]
    assert env.decide(Situation(1, False, (), override_pct=20.0)).level_pct == 90
    assert env.decide(Situation(2, False, (), override_pct=100.0)).level_pct == 100


def test_settings_refuse_a_safe_level_below_the_floor() -> None:
    with pytest.raises(ValueError, match="safe level"):
        EnvelopeSettings(floor_pct=30, safe_pct=20)


# -- the rule and the flow -----------------------------------------------------------------

def test_rule_levels_and_floors() -> None:
    assert DEFAULT_FLOOR_PCT == {1: 37.5, 2: 33.3, 3: 30.0, 4: 40.0, 5: 60.0, 6: 100.0}
    assert rule_level_pct(3, 1100, 1200, 0, 0) == 100          # near peak: design class
    assert rule_level_pct(3, 120, 1200, 0, 0) == 50            # 10 %: two steps, M5
    assert rule_level_pct(3, 10, 1200, 0, 0) == 30             # very low: three steps
    assert rule_level_pct(3, 10, 1200, 0.3, 0) == 50           # heavy traffic: one less
    assert rule_level_pct(3, 10, 1200, 0.3, 0.7) == 75         # and motorbikes: one less


def test_rolling_flow_is_hourly_and_knows_when_not_to_be_trusted() -> None:
    f = RollingFlow(window_s=3600, min_coverage_s=600, stale_s=300)
    assert "yet" in f.reading(["cam"], 0).reason
    for k in range(30):                          # 30 intervals of 10 s, 2 motorbikes each
        f.add(TrafficSample("cam", 10.0 * (k + 1), 10.0, {"motorbike": 2}))
    assert "only 300 s" in f.reading(["cam"], 300).reason
    for k in range(30, 60):
        f.add(TrafficSample("cam", 10.0 * (k + 1), 10.0, {"car": 1, "bus": 1}))
    r = f.reading(["cam"], 600)
    assert r.flow is not None and r.flow.vehicles_per_hour == pytest.approx(720)
    assert r.flow.motorbike_share == pytest.approx(0.5) and r.flow.heavy_share == pytest.approx(0.25)
    f.add(TrafficSample("cam", 620, 10.0, {"car": 50}))     # one busy interval moves it a little
    busy = f.reading(["cam"], 620).flow
    assert busy is not None and busy.vehicles_per_hour == pytest.approx(170 * 3600 / 610)
    for k in range(40):                                      # the camera delivers nothing
        f.add(TrafficSample("cam", 630 + 10.0 * k, 0.0, {}))
    assert "for 400 s (stale after 300 s)" in f.reading(["cam"], 1020).reason
    assert f.reading([], 0).reason == "no camera feeds this group"
    zero = RollingFlow(window_s=3600, min_coverage_s=0, stale_s=300)
    zero.seen("cam", 10)                                     # live, no interval closed yet
    assert "only 0 s of traffic data" in zero.reading(["cam"], 11).reason


# -- the policy with the real model ---------------------------------------------------------

def policy(card: Path = CARD, program: list[Step] | None = None) -> GroupPolicy:
    model, err = None, ""
    try:
        model = DimmingModel(card)
    except DimmingModelError as e:
        err = str(e)
    sched = Schedule({"p": program or default_program(30)}, [CalendarRule("p")], *HANOI)
    return GroupPolicy(GroupSettings("street", 3, 1200, ("cam",), EnvelopeSettings(
        floor_pct=30, ramp_down_pct_per_min=1000)), sched, *HANOI, model, err)


def flow(vph: float) -> FlowReading:
    return FlowReading(TrafficFlow(vph, 0.05, 0.3, 3600))


def test_model_dims_with_falling_traffic_and_never_below_the_rule() -> None:
    p = policy()
    levels = []
    for k, vph in enumerate((1100, 400, 120, 40)):
        d = p.decide(NIGHT_UTC + k * 600, 1000.0 + k * 600, TRUSTED, flow(vph))
        assert d.mode == "adaptive"
        assert d.level_pct >= rule_level_pct(3, vph, 1200, 0.05, 0.3) - 1e-6
        levels.append(d.level_pct)
    assert levels[0] >= 95 and levels == sorted(levels, reverse=True) and levels[-1] <= 40


def test_policy_day_fallback_and_untrusted_clock() -> None:
    p = policy()
    assert p.decide(NOON_UTC, 10, TRUSTED, flow(100)).level_pct == 0
    d = p.decide(NIGHT_UTC, 20, TRUSTED, FlowReading(None, "no traffic data from cam for 400 s"))
    assert d.mode == "fallback" and d.level_pct == 100 and "400 s" in d.reasons[0]
    d = p.decide(NIGHT_UTC, 30, TrustState(False, ["wall clock jumped +28800 s"]), flow(100))
    assert d.mode == "failsafe" and d.level_pct == 100 and "jumped" in d.reasons[0]


def test_missing_or_corrupt_model_is_failsafe_in_adaptive_steps_only(tmp_path: Path) -> None:
    card = tmp_path / "dimming.md"
    shutil.copy(CARD, card)
    p = policy(card)                                   # the model file is not there
    d = p.decide(NIGHT_UTC, 5, TRUSTED, flow(50))
    assert d.mode == "failsafe" and d.level_pct == 100 and "dimming.onnx" in d.reasons[0]
    assert p.decide(NOON_UTC, 6, TRUSTED, flow(50)).level_pct == 0    # no day-burner for it
    (tmp_path / "dimming.onnx").write_bytes(b"\x08\x01garbage")        # corrupt: sha mismatch
    with pytest.raises(DimmingModelError, match="sha256"):
        DimmingModel(card)
    digest = hashlib.sha256((tmp_path / "dimming.onnx").read_bytes()).hexdigest()
    card.write_text(CARD.read_text().replace(
        next(ln for ln in CARD.read_text().splitlines() if ln.startswith("sha256:")),
        f"sha256: {digest}"))
    with pytest.raises(DimmingModelError, match="cannot load"):
        DimmingModel(card)


@settings(max_examples=300, deadline=None)
@given(st.floats(0, 5000), st.floats(0, 1), st.floats(0, 1), st.floats(0, 86400 * 365))
def test_policy_output_is_always_allowed(vph: float, heavy: float, moto: float,
                                         offset: float) -> None:
    p = policy()
    wall = NIGHT_UTC + offset
    d = p.decide(wall, 100.0, TRUSTED, FlowReading(TrafficFlow(vph, heavy, min(moto, 1 - heavy),
                                                               3600)))
    assert d.mode in ("adaptive", "schedule")
    if d.mode == "adaptive":
        assert d.level_pct >= rule_level_pct(3, vph, 1200, heavy, min(moto, 1 - heavy)) - 1e-6
    assert d.level_pct == 0 or 30 <= d.level_pct <= 100


def test_the_default_program_follows_the_sun() -> None:
    p = policy()
    day = datetime(2026, 11, 22, tzinfo=UTC).timestamp()
    sunset = event_time("sunset", *HANOI, day)
    dusk = event_time("dusk", *HANOI, day)
    assert sunset is not None and dusk is not None
    assert p.decide(sunset - 120, 1, TRUSTED, flow(40)).level_pct == 0
    assert p.decide(sunset + 120, 2, TRUSTED, flow(40)).mode == "schedule"
    assert p.decide(sunset + 120, 3, TRUSTED, flow(40)).level_pct == 100
    assert p.decide(dusk + 600, 4, TRUSTED, flow(40)).mode == "adaptive"
    assert BUILD_DATE.timestamp() < sunset


def test_with_camera_liveness_a_closed_interval_does_not_revive_a_dead_camera() -> None:
    """Where each frame tells the flow the camera is alive (agent run), an interval closing
    after the camera died must not make it fresh again (a hostile review: a dead camera was
    trusted again for up to an interval, and the lamps dimmed on it)."""
    f = RollingFlow(window_s=3600, min_coverage_s=600, stale_s=300)
    f.external_liveness = True
    for k in range(80):                                   # alive, 900 s intervals
        f.seen("cam", 45.0 * k)
    for k in range(1, 5):
        f.add(TrafficSample("cam", 900.0 * k, 900.0, {"car": 100}))
    assert f.reading(["cam"], 3600).reason == ""
    f.add(TrafficSample("cam", 4500, 900.0, {"car": 100}))   # closed after the death (3600)
    assert f.reading(["cam"], 4500).reason != ""          # still stale: not revived
