"""Dimming: the safety envelope (property-tested), fail-safes, the real ONNX dimming model."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.lighting.astro import solar_elevation
from agent.lighting.dimming import (
    ClockGuard,
    DimmingModel,
    DimmingModelError,
    DimmingPolicy,
    GroupSettings,
    TrafficFlow,
    energy_saved_wh,
)
from agent.lighting.envelope import EnvelopeSettings, Inputs, SafetyEnvelope
from tests.conftest import ROOT

CARD = ROOT / "models" / "dimming.md"
HANOI = (21.03, 105.85)
NIGHT_UTC = datetime(2026, 11, 22, 17, 0, tzinfo=UTC).timestamp()   # 00:00 in Hanoi
NOON_UTC = datetime(2026, 11, 22, 5, 0, tzinfo=UTC).timestamp()     # 12:00 in Hanoi

envelope_settings = st.builds(
    lambda floor, span, safe, down, up: EnvelopeSettings(
        floor_pct=floor, ceiling_pct=min(100.0, floor + span), safe_pct=safe,
        ramp_down_pct_per_min=down, ramp_up_pct_per_min=up),
    st.floats(5, 100), st.floats(0, 95), st.floats(1, 100), st.floats(0.5, 50), st.floats(1, 200))

inputs = st.builds(
    Inputs,
    proposal_pct=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True),
                           st.floats(-50, 150)),
    sun_elevation_deg=st.one_of(st.none(), st.floats(-90, 90), st.just(float("nan"))),
    now_monotonic=st.floats(0, 1e6),
    camera_ok=st.booleans(), model_ok=st.booleans(), clock_ok=st.booleans(),
    override_pct=st.one_of(st.none(), st.floats(-10, 120)),
    override_until_monotonic=st.one_of(st.none(), st.floats(0, 1e6)))


@settings(max_examples=10_000, deadline=None)
@given(envelope_settings, st.one_of(st.none(), st.floats(0, 100)), st.floats(0, 3600), inputs)
def test_envelope_holds_for_any_input(s: EnvelopeSettings, prev: float | None, dt: float,
                                      x: Inputs) -> None:
    env = SafetyEnvelope(s)
    if prev is not None:
        env.last_pct, env.last_t = prev, x.now_monotonic - dt
    d = env.apply(x)
    lvl = d.level_pct
    assert 0 <= lvl <= 100
    untrusted = not (x.camera_ok and x.model_ok and x.clock_ok) or x.sun_elevation_deg is None \
        or x.sun_elevation_deg != x.sun_elevation_deg or x.proposal_pct is None \
        or x.proposal_pct != x.proposal_pct or abs(x.proposal_pct) == float("inf")
    override = x.override_pct is not None and (x.override_until_monotonic is None
                                               or x.now_monotonic < x.override_until_monotonic)
    if untrusted and not (override and x.clock_ok):
        assert d.mode == "failsafe" and lvl == pytest.approx(s.safe_pct, abs=1e-3)
        assert d.reasons
        return
    dark = x.sun_elevation_deg is None or x.sun_elevation_deg < s.dark_below_deg
    if dark:
        assert lvl >= s.floor_pct - 1e-3, "never below the floor at night"
    if override:
        assert d.mode == "override"
        return
    if not dark:
        assert d.mode == "day" and lvl == 0
        return
    assert d.mode in ("twilight", "model")
    if prev is not None and prev > 0:
        minutes = dt / 60
        assert lvl >= min(prev - s.ramp_down_pct_per_min * minutes, prev) - 1e-3 \
            or (lvl >= s.floor_pct - 1e-3 and prev - s.ramp_down_pct_per_min * minutes < s.floor_pct)
        assert lvl <= max(prev + s.ramp_up_pct_per_min * minutes, s.floor_pct) + 1e-3
        assert lvl <= max(s.ceiling_pct, prev) + 1e-3
    else:
        assert s.floor_pct - 1e-3 <= lvl <= s.ceiling_pct + 1e-3


def test_ramp_limits_a_sudden_drop_and_twilight_holds_the_ceiling() -> None:
    env = SafetyEnvelope(EnvelopeSettings(floor_pct=20, ramp_down_pct_per_min=10))
    deep = -20.0
    assert env.apply(Inputs(100, deep, 0)).level_pct == 100
    assert env.apply(Inputs(20, deep, 60)).level_pct == 90          # 1 min: -10 %
    assert env.apply(Inputs(20, deep, 360)).level_pct == 40         # 5 more min: -50 %
    assert env.apply(Inputs(20, deep, 3600)).level_pct == 20        # floor
    assert env.apply(Inputs(20, -3.0, 3660)).mode == "twilight"     # civil twilight: no dimming
    assert env.apply(Inputs(20, 10.0, 3720)).level_pct == 0         # day: off


def test_override_expires() -> None:
    env = SafetyEnvelope(EnvelopeSettings(floor_pct=30))
    d = env.apply(Inputs(50, -20, 100, override_pct=10, override_until_monotonic=200))
    assert d.mode == "override" and d.level_pct == 30               # clamped to the floor
    assert env.apply(Inputs(50, -20, 150, override_pct=80, override_until_monotonic=200)
                     ).level_pct == 80
    assert env.apply(Inputs(50, -20, 250, override_pct=80, override_until_monotonic=200)
                     ).mode == "model"


def policy(card: Path = CARD, **kw: object) -> DimmingPolicy:
    return DimmingPolicy(card, *HANOI, GroupSettings(3, 1200, EnvelopeSettings(floor_pct=30)),
                         **kw)


def flow(vph: float, mono: float) -> TrafficFlow:
    return TrafficFlow(vph, 0.05, 0.3, mono)


def test_model_dims_with_falling_traffic_and_matches_its_rule() -> None:
    p = policy()
    levels = []
    for k, vph in enumerate((1100, 400, 120, 40)):
        mono = 1000.0 + k * 3600
        levels.append(p.decide(flow(vph, mono), wall=NIGHT_UTC + k * 3600, mono=mono).level_pct)
    assert levels[0] >= 95 and levels == sorted(levels, reverse=True) and levels[-1] <= 40
    assert solar_elevation(*HANOI, datetime.fromtimestamp(NIGHT_UTC, UTC)) < -60


def test_day_is_off_and_camera_loss_is_failsafe() -> None:
    p = policy()
    assert p.decide(flow(100, 10), wall=NOON_UTC, mono=10).level_pct == 0
    d = p.decide(flow(100, 10), wall=NIGHT_UTC, mono=10 + 12 * 3600)   # counts 12 h old
    assert d.mode == "failsafe" and d.level_pct == 100 and "camera" in d.reasons[0]
    assert p.decide(None, wall=NIGHT_UTC + 60, mono=10 + 12 * 3600 + 60).mode == "failsafe"


def test_missing_or_corrupt_model_is_failsafe(tmp_path: Path) -> None:
    card = tmp_path / "dimming.md"
    shutil.copy(CARD, card)
    p = policy(card)                                   # the model file is not there
    d = p.decide(flow(50, 5), wall=NIGHT_UTC, mono=5)
    assert d.mode == "failsafe" and d.level_pct == 100
    assert any("dimming.onnx" in r for r in d.reasons)
    (tmp_path / "dimming.onnx").write_bytes(b"\x08\x01garbage")   # corrupt: sha mismatch
    with pytest.raises(DimmingModelError, match="sha256"):
        DimmingModel(card)
    assert policy(card).decide(flow(50, 5), wall=NIGHT_UTC, mono=5).mode == "failsafe"
    # a corrupt file whose hash the card matches still fails to load, with a clear error
    import hashlib
    digest = hashlib.sha256((tmp_path / "dimming.onnx").read_bytes()).hexdigest()
    card.write_text(CARD.read_text().replace(
        next(ln for ln in CARD.read_text().splitlines() if ln.startswith("sha256:")),
        f"sha256: {digest}"))
    with pytest.raises(DimmingModelError, match="cannot load"):
        DimmingModel(card)


def test_clock_jump_and_unset_clock_are_failsafe_until_stable() -> None:
    g = ClockGuard(max_jump_s=120, hold_s=600)
    p = policy(clock=g)
    assert p.decide(flow(50, 0), wall=NIGHT_UTC, mono=0).mode == "model"
    d = p.decide(flow(50, 60), wall=NIGHT_UTC + 60 + 3 * 3600, mono=60)     # NTP jump +3 h
    assert d.mode == "failsafe" and any("jumped" in r for r in d.reasons)
    assert p.decide(flow(50, 400), wall=NIGHT_UTC + 400 + 3 * 3600, mono=400).mode == "failsafe"
    assert p.decide(flow(50, 700), wall=NIGHT_UTC + 700 + 3 * 3600, mono=700).mode == "model"
    assert p.decide(flow(50, 760), wall=NIGHT_UTC - 86400, mono=760).mode == "failsafe"  # back
    q = policy(clock=ClockGuard())
    d = q.decide(flow(50, 0), wall=3600.0, mono=0)                          # 1970: RTC unset
    assert d.mode == "failsafe" and any("not set" in r for r in d.reasons)


@settings(max_examples=300, deadline=None)
@given(st.floats(0, 5000), st.floats(0, 1), st.floats(0, 1), st.floats(0, 86400 * 365))
def test_policy_output_is_always_allowed(vph: float, heavy: float, moto: float,
                                         offset: float) -> None:
    p = policy()
    wall = NIGHT_UTC + offset
    d = p.decide(TrafficFlow(vph, heavy, min(moto, 1 - heavy), 100.0), wall=wall, mono=100.0)
    assert d.mode in ("model", "twilight", "day")
    assert d.level_pct == 0 if d.mode == "day" else 30 <= d.level_pct <= 100


def test_energy_saved() -> None:
    assert energy_saved_wh(100, 40, 3600) == pytest.approx(60)
    assert energy_saved_wh(100, 40, 3600, measured_wh=45) == pytest.approx(55)
    assert energy_saved_wh(100, 100, 3600) == 0
    assert energy_saved_wh(100, 50, 3600, measured_wh=120) == 0     # never negative
