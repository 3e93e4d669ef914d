"""The uplink's small rules, each on its own (the real processes are in
``tests/test_uplink_edges.py``): the STATE a pole believes, the take-over schedule, the
stored-row check and the unwritten-at-stop record, fuzzed where input comes from outside.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.uplink.mqtt import TAKEOVER_WAITS_S, Uplink, UplinkSettings
from agent.uplink.outbox import UNWRITTEN_BYTES, Outbox, _row_problem


def uplink(tmp: Path, **kw: object) -> Uplink:
    return Uplink(UplinkSettings(primary_host="platform", **kw), "pole-1", "lab",  # type: ignore[arg-type]
                  Outbox(tmp / "outbox.db", "pole-1"))


def state(online: bool, ts: float) -> bytes:
    return json.dumps({"online": online, "timestamp": ts}).encode()


def test_an_older_state_is_ignored_and_a_future_one_never_remembered(tmp_path: Path) -> None:
    up = uplink(tmp_path)
    now = time.time() * 1000
    up._on_platform_state(state(True, now))
    assert up.platform_online
    up._on_platform_state(state(False, now - 1000))          # a stale will
    assert up.platform_online
    up._on_platform_state(state(False, now + 10 * 365 * 86400e3))   # forged, years ahead
    assert up.platform_online and up._platform_ts == now
    up._on_platform_state(state(False, now + 1))             # the real one
    assert not up.platform_online
    remembered = up._platform_ts
    up._on_platform_state(state(True, now + 3600e3))         # online from the future:
    assert up.platform_online and up._platform_ts == remembered <= now + 1   # followed,
    #                                                          not remembered


def test_within_the_tolerance_a_future_state_counts_as_of_the_poles_clock(
        tmp_path: Path) -> None:
    up = uplink(tmp_path, state_future_s=300)
    now = time.time() * 1000
    up._on_platform_state(state(False, now + 200e3))      # forged minutes ahead: it holds …
    assert not up.platform_online and now <= up._platform_ts < now + 5e3
    up._on_platform_state(state(True, time.time() * 1000 + 1))   # … until the platform
    assert up.platform_online                                   # speaks again


@settings(max_examples=300, deadline=None)
@given(payload=st.one_of(st.binary(max_size=300), st.builds(
    lambda o, t: json.dumps({"online": o, "timestamp": t}).encode(),
    st.one_of(st.booleans(), st.integers(), st.none(), st.text(max_size=5)),
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(), st.text(max_size=5),
              st.none()))))
def test_any_state_payload_is_taken_or_ignored_never_raised(payload: bytes) -> None:
    up = _FUZZ_UPLINK
    up._on_platform_state(payload)
    assert isinstance(up.platform_online, bool)


_FUZZ_DIR = __import__("tempfile").TemporaryDirectory(prefix="polelink-fuzz-")
_FUZZ_UPLINK = Uplink(UplinkSettings(primary_host="platform"), "pole-1", "lab",
                      Outbox(Path(_FUZZ_DIR.name) / "outbox.db", "pole-1"))


def test_the_takeover_schedule_reaches_one_reconnect_a_minute(tmp_path: Path) -> None:
    up = uplink(tmp_path)
    waits: list[float] = []
    up.heartbeat = SimpleNamespace(wait=lambda _stop, w: waits.append(w))  # type: ignore[assignment]
    for _ in range(7):
        up._sleep_takeover()
    # jitter only upwards (at most +25 %): never sooner than the schedule
    assert [round(w / 1.25, 3) <= s <= w for w, s in
            zip(waits, [*TAKEOVER_WAITS_S, 60, 60, 60], strict=True)] == [True] * 7
    assert min(waits[4:]) >= 60
    notices = up.take_notices()
    assert [n[0] for n in notices] == ["session_taken_over"]     # one alarm per run


def test_three_quick_silent_closes_are_a_takeover_when_the_session_lived_on(
        tmp_path: Path) -> None:
    up = uplink(tmp_path)
    client = SimpleNamespace(publish=lambda *a, **k: None, subscribe=lambda *a, **k: None)
    ok = SimpleNamespace(is_failure=False)

    def close_then_reconnect(lived: float, session_present: bool) -> bool:
        up._connected_at = time.monotonic() - lived
        up._closed_silently = True
        taken = up._silent_takeover(True)
        up._on_connect(client, None, SimpleNamespace(session_present=session_present), ok,
                       None)                       # type: ignore[arg-type]
        return taken
    assert [close_then_reconnect(1, True) for _ in range(3)] == [False, False, True]
    # a broker that restarted without persistence forgot the session: not a take-over
    assert [close_then_reconnect(1, False) for _ in range(4)] == [False] * 4
    # nor connections that lived long
    assert [close_then_reconnect(20, True) for _ in range(4)] == [False] * 4


@settings(max_examples=500, deadline=None)
@given(topic=st.one_of(st.none(), st.binary(max_size=40)),
       payload=st.one_of(st.none(), st.binary(max_size=200)),
       qos=st.one_of(st.integers(-2, 4), st.none(), st.text(max_size=2)),
       seq=st.one_of(st.none(), st.integers(-5, 10**20), st.text(max_size=3)))
def test_the_row_check_never_raises(topic, payload, qos, seq) -> None:
    assert isinstance(_row_problem(topic, payload, qos, seq), str)


def test_a_row_that_is_not_what_it_claims_is_refused() -> None:
    good = b'{"schema":"x","seq":5,"msg_id":"pole-1:0a0b0c0d:5"}'
    assert _row_problem(b"polelink/lab/pole-1/health", good, 1, 5) == ""
    assert _row_problem(b"polelink/lab/pole-1/health", good[:-1] + b",,}", 1, 5) \
        == "payload is not JSON"
    assert "does not name the row's seq" in _row_problem(b"t/a", good, 1, 6)
    assert _row_problem(b"t/a", b'["msg_id"]', 1, 5) == "payload is not a JSON object"
    assert _row_problem(b"t/a", good.decode().encode("utf-16"), 1, 5) == \
        "payload is not UTF-8"


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=UNWRITTEN_BYTES + 50))
def test_any_unwritten_record_is_reported_or_ignored_never_raised(raw: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "outbox.db.unwritten").write_bytes(raw)
        ob = Outbox(Path(d) / "outbox.db", "pole-1")
        notices = [n for n in ob.take_notices() if n.event == "outbox_unwritten"]
        assert len(notices) == (1 if raw.strip(b" \n\x00") else 0)
        ob.close()


def test_what_a_stop_held_in_memory_is_counted_then_reported(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "outbox.db", "pole-1")
    assert (tmp_path / "outbox.db.unwritten").stat().st_size == UNWRITTEN_BYTES
    ob._spill.extend([("polelink/lab/pole-1/event", {"event": "outbox_degraded", "ts": "t1"},
                       1, False),
                      ("polelink/lab/pole-1/cmd/response", {"correlation_id": "c9", "ts": "t2"},
                       1, False)])
    ob._commit_spill = lambda: None      # type: ignore[method-assign]   # the disk is full
    ob.close()
    again = Outbox(tmp_path / "outbox.db", "pole-1")
    [n] = [n for n in again.take_notices() if n.event == "outbox_unwritten"]
    assert n.detail["count"] == 2 and n.detail["kinds"] == {"event": 1, "cmd/response": 1}
    assert n.detail["events"] == ["outbox_degraded"] and n.detail["correlationIds"] == ["c9"]
    assert (n.detail["from"], n.detail["to"]) == ("t1", "t2")
    # reported again after a crash before its event was written; blank once it is
    assert (tmp_path / "outbox.db.unwritten").read_bytes().strip()
    again.put("polelink/lab/pole-1/event", {"event": "outbox_unwritten"})
    assert not (tmp_path / "outbox.db.unwritten").read_bytes().strip()
    again.close()


def test_an_overflow_that_drops_an_earlier_overflow_alarm_names_what_it_named(
        tmp_path: Path) -> None:
    """Found by the delivery campaign (a command burst on a full outbox): the alarm naming
    the first drop was itself dropped by the second, and the first loss became silent."""
    ob = Outbox(tmp_path / "outbox.db", "pole-1", max_messages=10)
    for i in range(12):
        ob.put("polelink/lab/pole-1/traffic/cam1", {"n": i, "ts": f"2026-01-01T00:00:{i:02d}Z"})
    [first] = [n for n in ob.take_notices() if n.event == "outbox_overflow"]
    assert (first.detail["firstSeq"], first.detail["lastSeq"]) == (1, 2)
    ob.put("polelink/lab/pole-1/event", {"event": "outbox_overflow", "detail": first.detail})
    for i in range(30):                       # a flood drops that alarm too
        ob.put("polelink/lab/pole-1/cmd/response", {"n": i})
    ob._overflow_said -= 3600                 # (said at most once a minute: a minute on)
    [second] = [n for n in ob.take_notices() if n.event == "outbox_overflow"]
    d = second.detail
    assert d["firstSeq"] == 1 and d["carried"] == 1 and d["from"] <= first.detail["from"], d
    assert d["dropped"] >= 2 + 30, d
    ob.close()


def test_runs_that_stopped_on_a_full_disk_one_after_another_are_all_reported(
        tmp_path: Path) -> None:
    """A restart loop on a full disk: each stop's record keeps the earlier runs', summed,
    until one alarm reaches the disk (found by a hostile tester: run 1 was lost)."""
    for run in range(3):
        ob = Outbox(tmp_path / "outbox.db", "pole-1")
        ob.take_notices()
        ob._spill.append(("polelink/lab/pole-1/lighting/street",
                          {"ts": f"2026-01-01T00:0{run}:00Z"}, 1, False))
        ob._commit_spill = lambda: None      # type: ignore[method-assign]   # still full
        ob.close()
    ob = Outbox(tmp_path / "outbox.db", "pole-1")
    [n] = [n for n in ob.take_notices() if n.event == "outbox_unwritten"]
    assert n.detail["count"] == 1 and n.detail["earlier"]["runs"] == 2, n.detail
    assert n.detail["earlier"]["count"] == 2 and n.detail["earlier"]["from"] == \
        "2026-01-01T00:00:00Z", n.detail
    ob.close()
