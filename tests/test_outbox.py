"""The SQLite outbox: ordered, durable across SIGKILL, bounded with counted loss."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent.uplink.outbox import Outbox
from tests.conftest import ROOT


def bodies(ob: Outbox) -> list[dict]:
    return [json.loads(m.payload) for m in ob.pending(limit=100_000)]


def test_order_seq_and_ack(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", "pole-1")
    ob.put("t/a", {"x": 1})
    ob.put("t/b", {"x": 2})
    a, b = bodies(ob)
    assert (a["seq"], b["seq"]) == (1, 2) and b["msg_id"] == f"pole-1:{ob.epoch}:2"
    assert len(ob.epoch) == 8 and int(ob.epoch, 16) >= 0
    msgs = ob.pending()
    assert [m.topic for m in msgs] == ["t/a", "t/b"] and a["x"] == 1
    ob.ack(msgs[0].id)
    assert [m.seq for m in ob.pending()] == [2] and len(ob) == 1
    assert ob.last_seq == 2


def test_seq_survives_restart(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", "p")
    for i in range(5):
        ob.put("t", {"i": i})
    ob.close()
    ob2 = Outbox(tmp_path / "o.db", "p")
    ob2.put("t", {"i": 5})
    assert bodies(ob2)[-1]["seq"] == 6 and len(ob2) == 6 and ob2.epoch == ob.epoch
    assert ob2.next_boot() == 1 and ob2.next_boot() == 2


def test_bounded_with_counted_loss(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", "p", max_messages=10)
    for i in range(25):
        ob.put("t", {"i": i})
    assert len(ob) == 10 and ob.dropped == 15
    assert [json.loads(m.payload)["i"] for m in ob.pending()] == list(range(15, 25))


WRITER = """
import sys, time
from pathlib import Path
from agent.uplink.outbox import Outbox
ob = Outbox(Path(sys.argv[1]), "p")
i = 0
while True:
    ob.put("t", {"i": i})
    print(i, flush=True)
    i += 1
"""


def test_sigkill_mid_write_loses_nothing_acknowledged(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    confirmed = -1
    t0 = time.monotonic()
    while confirmed < 200 and time.monotonic() - t0 < 30:
        confirmed = int(proc.stdout.readline())  # type: ignore[union-attr]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ob = Outbox(db, "p")
    got = [json.loads(m.payload)["i"] for m in ob.pending(limit=100_000)]
    # every put that returned is there, in order, without gaps or repeats
    assert got[: confirmed + 1] == list(range(confirmed + 1))
    assert got == list(range(len(got)))
    ob.put("t", {"i": -1})
    assert bodies(ob)[-1]["seq"] == len(got) + 1


# -- an outbox that cannot take the agent down ----------------------------------------------


def test_a_deleted_outbox_starts_a_new_epoch_so_msg_ids_stay_unique(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", "p")
    ob.put("t", {"i": 1})
    old = bodies(ob)[0]["msg_id"]
    ob.close()
    for f in tmp_path.glob("o.db*"):
        f.unlink()
    ob2 = Outbox(tmp_path / "o.db", "p")
    ob2.put("t", {"i": 1})
    new = bodies(ob2)[0]
    assert new["seq"] == 1 and new["msg_id"] != old and ob2.epoch != ob.epoch


def test_a_corrupt_file_is_kept_aside_and_readable_rows_salvaged(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    ob = Outbox(db, "p")
    for i in range(300):
        ob.put("polelink/s/p/event", {"i": i, "pad": "x" * 200})
    epoch = ob.epoch
    ob.close()
    raw = bytearray(db.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 4096] = b"\xa5" * 4096     # one page of garbage
    db.write_bytes(bytes(raw))
    ob2 = Outbox(db, "p")                                         # no exception
    kept = [f for f in tmp_path.glob("o.db.corrupt-*") if not f.name.endswith(("-wal", "-shm"))]
    assert len(kept) == 1 and kept[0].stat().st_size > 100_000    # never deleted
    got = [b["i"] for b in bodies(ob2)]
    assert got == sorted(got) and 0 < len(got) < 300              # the readable rows
    [notice] = [n for n in ob2.take_notices() if n.event == "outbox_quarantined"]
    assert notice.severity == "alarm" and notice.detail["salvaged"] == len(got)
    ob2.put("polelink/s/p/event", {"i": 999})                      # and it works on
    assert bodies(ob2)[-1]["seq"] > 300 and ob2.epoch == epoch


def test_garbage_instead_of_a_database_is_quarantined(tmp_path: Path) -> None:
    db = tmp_path / "o.db"
    db.write_bytes(b"this is not sqlite" * 100)
    ob = Outbox(db, "p")
    ob.put("t/x", {"i": 1})
    assert len(ob) == 1 and list(tmp_path.glob("o.db.corrupt-*"))
    assert [n.event for n in ob.take_notices()] == ["outbox_quarantined"]


def test_a_corrupt_row_is_quarantined_and_the_rest_flows(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "o.db"
    ob = Outbox(db, "p")
    for i in range(5):
        ob.put("polelink/s/p/event", {"i": i})
    raw = sqlite3.connect(db)
    raw.execute("UPDATE outbox SET topic=CAST(X'ff00fe' AS TEXT) WHERE seq=2")
    raw.execute("UPDATE outbox SET payload=X'7b2269223a' WHERE seq=4")   # '{"i":' cut
    raw.commit()
    raw.close()
    assert [b["i"] for b in bodies(ob)] == [0, 2, 4]
    assert ob.quarantined == 2 and len(ob) == 3
    kept = sqlite3.connect(db).execute("SELECT reason FROM quarantine ORDER BY id").fetchall()
    assert [r[0] for r in kept] == ["topic is not UTF-8", "payload is not JSON"]
    assert any(n.event == "outbox_rows_quarantined" for n in ob.take_notices())


def test_a_read_only_file_runs_in_memory_with_an_alarm(tmp_path: Path) -> None:
    """The outbox on a file system remounted read-only (a failing SD card does this)."""
    import subprocess

    import pytest

    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs",
                                            str(ro)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    try:
        ob = Outbox(ro / "o.db", "p")
        ob.put("t/x", {"i": 0})
        ob.close()
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        ob = Outbox(ro / "o.db", "p")                    # no exception
        ob.put("t/x", {"i": 1})
        assert [b["i"] for b in bodies(ob)] == [1] and ob.degraded
        [n] = ob.take_notices()
        assert n.event == "outbox_degraded" and n.detail["durable"] is False
        assert ob.figures()["durable"] is False
        ob.close()
    finally:
        subprocess.run(["umount", "-l", str(ro)], capture_output=True)


# -- delivery by the platform's acknowledgement, overflow, epoch continuity ---------------

def test_free_deletes_only_the_acknowledged_ranges_of_its_own_epoch(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", "p")
    for i in range(10):
        ob.put("t", {"i": i})
    assert ob.free("00000000" if ob.epoch != "00000000" else "11111111", [(1, 10)]) == 0
    assert ob.free(ob.epoch, [(2, 3), (7, 7), (40, 50)]) == 3
    assert [m.seq for m in ob.pending()] == [1, 4, 5, 6, 8, 9, 10]
    assert ob.free(ob.epoch, [(2, 3)]) == 0            # an old acknowledgement again: nothing


def test_overflow_is_one_notice_naming_count_seqs_and_times(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", "p", max_messages=10)
    for i in range(14):
        ob.put("t", {"i": i})
    (n,) = [x for x in ob.take_notices() if x.event == "outbox_overflow"]
    d = n.detail
    assert n.severity == "alarm" and (d["dropped"], d["firstSeq"], d["lastSeq"]) == (4, 1, 4)
    assert d["from"] <= d["to"] and d["cap"] == 10 and d["epoch"] == ob.epoch
    assert ob.figures()["lastOverflow"]["dropped"] == 4
    ob.put("t", {"i": 99})                     # still full: gathered, not said (a minute)
    assert not [x for x in ob.take_notices() if x.event == "outbox_overflow"]
    ob.free(ob.epoch, [(1, 100)])              # room again: the rest is said at once
    (n,) = [x for x in ob.take_notices() if x.event == "outbox_overflow"]
    assert (n.detail["dropped"], n.detail["firstSeq"], n.detail["lastSeq"]) == (1, 5, 5)


def test_a_missing_file_is_an_outbox_lost_naming_the_old_epoch(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", "p")
    for i in range(7):
        ob.put("t", {"i": i})
    old = ob.epoch
    ob.close()                                 # the side record says: old epoch, seq 7
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"o.db{suffix}").unlink(missing_ok=True)
    ob2 = Outbox(tmp_path / "o.db", "p")
    (n,) = [x for x in ob2.take_notices() if x.event == "outbox_lost"]
    assert n.severity == "alarm" and n.detail["previousEpoch"] == old
    assert n.detail["previousSeqAtLeast"] == 7 and n.detail["epoch"] == ob2.epoch != old
    assert "missing" in n.detail["reason"]
    assert ob2.figures()["previousEpoch"]["previousEpoch"] == old
    ob2.close()                                # stopped before the event was queued:
    ob3 = Outbox(tmp_path / "o.db", "p")       # said again
    (again,) = [x for x in ob3.take_notices() if x.event == "outbox_lost"]
    assert again.detail["previousEpoch"] == old
    ob3.put("t/event", {"event": "outbox_lost", "detail": again.detail})
    ob3.close()
    ob4 = Outbox(tmp_path / "o.db", "p")       # queued: said once, not on every start
    assert not [x for x in ob4.take_notices() if x.event == "outbox_lost"]


def test_a_file_deleted_while_open_is_rebuilt_with_everything_it_held(tmp_path: Path) -> None:
    from agent.uplink import outbox as mod

    ob = Outbox(tmp_path / "o.db", "p")
    for i in range(5):
        ob.put("t", {"i": i})
    epoch = ob.epoch
    (tmp_path / "o.db").unlink()
    ob._inode_checked -= mod.INODE_CHECK_S       # the next check is due
    ob.retry()
    assert (tmp_path / "o.db").exists() and ob.epoch == epoch
    assert [m.seq for m in ob.pending()] == [1, 2, 3, 4, 5]
    notes = [x for x in ob.take_notices() if x.event == "outbox_degraded"]
    assert notes and notes[0].detail["recreated"] and notes[0].detail["lost"] == 0
    ob.put("t", {"i": 5})
    ob.close()
    again = Outbox(tmp_path / "o.db", "p")       # the rebuilt file is the real one now
    assert [m.seq for m in again.pending()] == [1, 2, 3, 4, 5, 6] and again.epoch == epoch
