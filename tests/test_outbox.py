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


def test_order_seq_and_ack(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", "pole-1")
    a = ob.put("t/a", {"x": 1})
    b = ob.put("t/b", {"x": 2})
    assert (a["seq"], b["seq"]) == (1, 2) and b["msg_id"] == "pole-1:2"
    msgs = ob.pending()
    assert [m.topic for m in msgs] == ["t/a", "t/b"]
    assert json.loads(msgs[0].payload) == a
    ob.ack(msgs[0].id)
    assert [m.seq for m in ob.pending()] == [2] and len(ob) == 1
    assert ob.last_seq == 2


def test_seq_survives_restart(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.db", "p")
    for i in range(5):
        ob.put("t", {"i": i})
    ob.close()
    ob2 = Outbox(tmp_path / "o.db", "p")
    assert ob2.put("t", {"i": 5})["seq"] == 6 and len(ob2) == 6
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
    assert ob.put("t", {"i": -1})["seq"] == len(got) + 1
