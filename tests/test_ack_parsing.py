"""The acknowledgement and STATE parsers on the pole, and the platform's id parser, under
hostile input (hypothesis): never an exception, never a range that is not a range."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from agent.uplink.mqtt import Uplink, UplinkSettings
from agent.uplink.outbox import Outbox
from sim.platform.store import data_id

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=5), max_leaves=30)


def uplink(tmp: Path) -> Uplink:
    return Uplink(UplinkSettings(primary_host="ops"), "pole-1", "lab",
                  Outbox(tmp / "o.db", "pole-1"))


def payloads() -> st.SearchStrategy[bytes]:
    ack_like = st.fixed_dictionaries(
        {"epoch": st.text(max_size=10) | st.integers(),
         "ranges": st.lists(st.lists(st.integers(-5, 2**70) | st.booleans()
                                     | st.floats(allow_nan=True), max_size=3), max_size=6)
         | JSONISH})
    return (st.binary(max_size=200)
            | JSONISH.map(lambda v: json.dumps(v).encode())
            | ack_like.map(lambda v: json.dumps(v).encode()))


@given(raw=payloads())
def test_a_hostile_acknowledgement_is_ignored_or_gives_only_real_ranges(
        tmp_path_factory, raw: bytes) -> None:
    up = uplink(tmp_path_factory.mktemp("a"))
    up._on_platform_ack(raw)
    for _epoch, ranges in up._frees:
        assert all(isinstance(a, int) and isinstance(b, int) and 1 <= a <= b
                   for a, b in ranges)
    up._apply_acks()                       # frees nothing it should not, raises nothing


@given(raw=payloads())
def test_a_hostile_state_never_raises_and_acks_need_an_integer(tmp_path_factory,
                                                                raw: bytes) -> None:
    up = uplink(tmp_path_factory.mktemp("s"))
    up._on_platform_state(raw)
    assert up.delivery in ("platform-ack", "broker-ack")
    if up.delivery == "platform-ack":
        msg = json.loads(raw)
        assert type(msg["ack"]) is int and msg["ack"] >= 1 and msg["online"] is True


def test_a_state_with_a_huge_or_infinite_timestamp_is_ignored(tmp_path: Path) -> None:
    up = uplink(tmp_path)
    for raw in (b'{"online": true, "timestamp": 1' + b"0" * 400 + b', "ack": 1}',
                b'{"online": true, "timestamp": Infinity, "ack": 1}',
                b'{"online": true, "timestamp": NaN, "ack": 1}'):
        up._on_platform_state(raw)
        assert up.delivery == "broker-ack" and not up.platform_online


def test_an_announced_platform_switches_to_end_to_end_and_back(tmp_path: Path) -> None:
    up = uplink(tmp_path)
    assert up.delivery == "broker-ack"
    up._on_platform_state(json.dumps({"online": True, "timestamp": 5, "ack": 1}).encode())
    assert up.delivery == "platform-ack" and up.platform_online
    up._on_platform_state(json.dumps({"online": True, "timestamp": 6}).encode())
    assert up.delivery == "broker-ack"                 # an older platform took over
    assert up.figures()["delivery"] == "broker-ack"


@given(raw=st.binary(max_size=300) | JSONISH.map(lambda v: json.dumps(v).encode())
       | st.text(max_size=40).map(lambda t: json.dumps({"msg_id": t}).encode()))
def test_the_platform_id_parser_takes_only_device_epoch_seq(raw: bytes) -> None:
    got = data_id(raw)
    if got is not None:
        mid, epoch, seq = got
        assert mid.count(":") == 2 and mid.split(":")[1] == epoch and 1 <= seq < 2**62


def test_the_platform_keeps_one_record_per_interval_and_acknowledges_the_repeat() -> None:
    """An interval closed again after a crash (a new msg_id, partial): stored once, both
    seqs acknowledged, no gap."""
    from sim.platform.store import Store

    store = Store()
    body = {"schema": "polelink/traffic/1", "device": "pole-1", "site": "lab",
            "camera": "cam1", "line": "main", "ts": "2026-11-22T23:00:00Z",
            "samplingPeriod": {"start": "2026-11-22T22:59:00Z", "end": "2026-11-22T23:00:00Z",
                               "seconds": 60, "partial": False},
            "roadUserCounts": [{"roadUserType": "car", "direction": "in", "count": 3}],
            "totalCount": 3, "quality": {"framesAnalysed": 900, "framesExpected": 900,
                                         "framesDropped": 0, "framesLate": 0,
                                         "detectorLatencyMs": 12.3, "idSwitches": 0,
                                         "cameraBlinded": False, "cameraFrozen": False}}
    topic = "polelink/lab/pole-1/traffic/cam1"
    first = {**body, "seq": 1, "msg_id": "pole-1:0000abcd:1"}
    again = {**body, "seq": 2, "msg_id": "pole-1:0000abcd:2",
             "samplingPeriod": {**body["samplingPeriod"], "partial": True}}
    assert store.add(topic, json.dumps(first).encode(), 0)[0] == "stored"
    assert store.add(topic, json.dumps(again).encode(), 0)[0] == "duplicate"
    assert len(store.latest("traffic")) == 1
    assert store.take_acks() == [("polelink/lab/pole-1", "0000abcd", [[1, 2]])]
    assert store.summary()["pole-1"]["gaps"] == 0
