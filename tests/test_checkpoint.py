"""A crashed run's checkpoint (``agent/vision/checkpoint.py``) is read back only when its
counts are whole numbers of classes the contract knows: a damaged file is set aside with
an error, never turned into a traffic record the platform's schema rejects."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.uplink.contract import errors, traffic_message
from agent.vision.aggregates import IntervalAggregator
from agent.vision.checkpoint import Checkpoints
from agent.vision.classes import ROAD_USER_CLASSES

T0 = 1_797_000_000.0     # an interval start (10 s intervals)


def aggregator(now: float) -> IntervalAggregator:
    return IntervalAggregator("p", "s", "cam1", {"main": ("up", "down")}, [], 10, now, now - T0)


def write(tmp: Path, counts: Any) -> Checkpoints:
    """A checkpoint as the runner saves it, with these counts."""
    cps = Checkpoints(tmp / "checkpoints")
    cps.save("cam1", {**aggregator(T0 + 1).checkpoint(T0 + 4), "counts": counts})
    return cps


def test_a_good_checkpoint_is_read_back(tmp_path: Path) -> None:
    counts = {"main": {"up": {"car": 3, "motorbike": 7}, "down": {}}}
    cp = write(tmp_path, counts).pending("cam1", tmp_path / "agg.jsonl")
    assert cp is not None and cp["counts"] == counts


def test_an_unknown_class_sets_the_checkpoint_aside(tmp_path: Path, caplog) -> None:
    cps = write(tmp_path, {"main": {"up": {"scooter": 3}}})
    assert cps.pending("cam1", tmp_path / "agg.jsonl") is None
    assert (tmp_path / "checkpoints" / "cam1.bad").exists()
    assert "unknown class 'scooter'" in caplog.text


json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 10**12) |
                           st.floats(allow_nan=False) | st.text(max_size=12),
                           lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(st.text(max_size=10), inner, max_size=3),
                           max_leaves=12)
counts_like = st.dictionaries(
    st.text(max_size=8), st.dictionaries(
        st.sampled_from(["up", "down", "inside"]) | st.text(max_size=5),
        st.dictionaries(st.sampled_from(ROAD_USER_CLASSES) | st.text(max_size=8),
                        st.integers(-3, 10**6) | json_values, max_size=4) | json_values,
        max_size=3) | json_values, max_size=3) | json_values


@settings(max_examples=150, deadline=None)
@given(counts=counts_like)
def test_any_checkpoint_is_refused_or_gives_valid_records(tmp_path_factory, counts: Any) -> None:
    tmp = tmp_path_factory.mktemp("cp")
    cp = write(tmp, json.loads(json.dumps(counts))).pending("cam1", tmp / "agg.jsonl")
    if cp is None:
        return
    agg = aggregator(T0 + 5)                       # the next run, in the same interval
    for rec in agg.restore(cp, "live") + agg.flush(T0 + 9, 9.0, "live"):
        msg = {**traffic_message(rec, "2026-12-06T00:00:00Z"), "seq": 1, "msg_id": "p:1"}
        assert errors("traffic", msg) == [], msg
