"""Every loss path of the uplink, through the real ``agent run`` process, a real mosquitto
(without persistence, as the demo runs it) and the platform simulator: the platform ends
with every closed interval the pole wrote, no gaps, and partial intervals say why.

Covered here: a broker restarted while the platform is away, SIGKILL mid-interval, a
deleted outbox, a corrupted outbox row, and a full disk. (A hung broker and an ACL
denial are in ``tests/test_uplink_auth.py``; a corrupt outbox file in ``test_outbox.py``.)
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from sim.platform import PlatformSim
from tests.conftest import ROOT
from tests.helpers import SLACK_S, fill_disk, small_filesystem, wait_until

pytestmark = pytest.mark.slow


class Stack:
    """mosquitto + DALI emulator + platform (host id ``ops``) + ``agent run``."""

    def __init__(self, tmp: Path, sim_clip: tuple[Path, dict], data: Path | None = None) -> None:
        from sim.dali import DaliEmulator, make_gear
        from tests.mqtt_broker import Broker
        from tests.test_agent_mqtt import config_text

        self.tmp = tmp
        self.data = data or tmp
        self.broker = Broker(tmp).start()
        self.emu = DaliEmulator(make_gear(2), "hat").start()
        self.platform = self.new_platform()
        video, gt = sim_clip
        self.cfg = tmp / "pole.yaml"
        text = config_text(self.data, video, gt["line"], self.broker.port, self.emu.path)
        self.cfg.write_text(text + "  primary_host: ops\n")
        self.log = tmp / "agent.log"
        self.proc: subprocess.Popen | None = None

    def new_platform(self) -> PlatformSim:
        p = PlatformSim(port=self.broker.port, host_id="ops", db=str(self.tmp / "platform.db"))
        return p.start()

    def start_agent(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(self.cfg), "-q"],
            cwd=ROOT, stdout=self.log.open("a"), stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def kill_agent(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(40)

    def records(self) -> list[dict]:
        p = self.data / "agg.jsonl"
        return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] \
            if p.exists() else []

    def delivered(self) -> set[tuple[str, str]]:
        return {(m["samplingPeriod"]["start"], m["line"])
                for m in self.platform.store.latest("traffic", 100_000)}

    def all_delivered(self, timeout: float = 60, gaps: int = 0) -> None:
        want = {(r["interval_start"], r["line"]) for r in self.records()}
        assert want, "no interval closed"
        assert wait_until(lambda: want <= self.delivered(), timeout), (
            sorted(want - self.delivered()), self.output()[-3000:])
        s = self.platform.store.summary()["pole-7"]
        assert wait_until(lambda: self.platform.store.summary()["pole-7"]["gaps"] == gaps, 20)
        s = self.platform.store.summary()["pole-7"]
        assert s["invalid"] == 0, (s, self.platform.invalid_log[:3])

    def events(self, name: str) -> list[dict]:
        return [m for m in self.platform.store.latest("event", 10_000) if m["event"] == name]

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.platform.stop()
        self.emu.stop()
        self.broker.stop()


@pytest.fixture
def stack(tmp_path: Path, sim_clip):
    s = Stack(tmp_path, sim_clip)
    yield s
    s.close()


def test_a_broker_restarted_while_the_platform_is_away_loses_nothing(stack: Stack) -> None:
    """PUBACK is not delivery: with the platform away, the pole holds its data (STATE says
    offline); the broker restarts without persistence (forgetting the platform's session
    and the retained STATE); the pole still holds; the platform returns: all delivered."""
    stack.start_agent()
    assert wait_until(lambda: stack.records() and stack.delivered(), 40), stack.output()[-2000:]
    stack.platform.stop()                               # clean: retained STATE offline
    n = len(stack.records())
    assert wait_until(lambda: len(stack.records()) >= n + 1, 30)      # intervals go on …
    held = len(stack.records())
    stack.broker.restart()                              # … the broker forgets everything
    assert wait_until(lambda: len(stack.records()) >= held + 1, 30)
    assert "platform" in stack.output() and "holding" in stack.output()
    stack.platform = stack.new_platform()               # back, same db, same client id
    stack.all_delivered()
    assert stack.platform.store.summary()["pole-7"]["status"] == "online"


def test_sigkill_mid_interval_loses_at_most_seconds_and_says_partial(stack: Stack) -> None:
    stack.start_agent()
    assert wait_until(lambda: stack.records(), 40), stack.output()[-2000:]
    cp_file = stack.data / "checkpoints" / "cam1.json"

    def counted_checkpoint() -> dict | None:
        """A checkpoint of the *open* interval holding counts. Just after an interval
        closes, the file still holds that (already written) interval's checkpoint for up
        to one checkpoint period; killing then would test nothing, and the restart rightly
        recovers nothing from it."""
        try:
            cp = json.loads(cp_file.read_text())
        except (OSError, ValueError):
            return None
        n = sum(c for d in cp["counts"].get("main", {}).values() for c in d.values())
        begin = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(cp["begin"]))
        closed = any(r["interval_start"].startswith(begin) for r in stack.records())
        return cp if n > 0 and not closed else None

    assert wait_until(counted_checkpoint, 30)
    cp = counted_checkpoint()
    assert cp is not None
    before = sum(c for d in cp["counts"]["main"].values() for c in d.values())
    stack.kill_agent()                                  # the power goes
    stack.start_agent()
    begin = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(cp["begin"]))

    def recovered() -> dict | None:
        return next((r for r in stack.records() if r["interval_start"].startswith(begin)
                     and r.get("partial_reason", "").startswith(("restarted", "recovered"))),
                    None)

    assert wait_until(recovered, 40), [r.get("partial_reason") for r in stack.records()]
    rec = recovered()
    assert rec is not None and rec["partial"] is True
    assert rec["total"] >= before                       # nothing checkpointed was lost
    stack.all_delivered()
    msg = next(m for m in stack.platform.store.latest("traffic", 10_000)
               if m["samplingPeriod"]["start"] == rec["interval_start"])
    assert msg["samplingPeriod"]["partial"] and msg["samplingPeriod"]["partialReason"]


def test_a_deleted_outbox_is_a_new_epoch_not_duplicates(stack: Stack) -> None:
    stack.start_agent()
    assert wait_until(lambda: len(stack.delivered()) >= 1, 40), stack.output()[-2000:]
    stack.kill_agent(signal.SIGTERM)
    for f in stack.data.glob("outbox.db*"):
        f.unlink()                                      # the obvious recovery step
    n = len(stack.records())
    stack.start_agent()
    assert wait_until(lambda: len(stack.records()) >= n + 1, 40)
    stack.all_delivered()
    s = stack.platform.store.summary()["pole-7"]
    assert s["epochs"] == 2 and s["duplicates"] == 0, s


def test_a_corrupt_row_is_quarantined_with_an_alarm_and_the_rest_delivered(
        stack: Stack) -> None:
    stack.start_agent()
    assert wait_until(lambda: stack.delivered(), 40), stack.output()[-2000:]
    from tests.mqtt_broker import Collector
    wire = Collector(stack.broker.port, "polelink/#")   # what the pole put on the wire
    stack.platform.stop()                               # let messages queue up
    db = stack.data / "outbox.db"
    # a row the pole never sent: one it sent before it saw the platform's STATE go offline
    # is queued for the platform's session by the broker, so quarantining it makes no gap
    # and would prove nothing. The pole holds once nothing new reaches the wire for 3 s.
    pick = ("SELECT MIN(id) FROM outbox WHERE seq > ? AND "
            "(topic LIKE '%/health' OR topic LIKE '%/lighting/%')")

    def sent() -> int:
        return max((m.get("seq", 0) for t, m, r in list(wire.messages)
                    if isinstance(m.get("seq"), int) and not t.endswith("/status")), default=0)

    def holding() -> int | None:        # (and two such rows are queued)
        before = sent()
        time.sleep(3)
        n = sqlite3.connect(db).execute(pick.replace("MIN(id)", "COUNT(*)"),
                                        (before,)).fetchone()[0]
        return before if sent() == before and n >= 2 else None
    held = None
    end = time.monotonic() + 90
    while held is None and time.monotonic() < end:
        held = holding()
    wire.close()
    assert held is not None, "the pole never held its messages with the platform away"
    raw = sqlite3.connect(db, timeout=10)
    first = raw.execute(pick, (held,)).fetchone()[0]
    raw.execute("UPDATE outbox SET topic=CAST(X'ff00fe' AS TEXT) WHERE id=?", (first,))
    # and a row that keeps its braces and its msg_id but is not JSON any more (a torn
    # write, a flipped byte): it must not reach the platform either
    second = raw.execute(pick.replace("seq > ?", "id > ?"), (first,)).fetchone()[0]
    payload = raw.execute("SELECT payload FROM outbox WHERE id=?", (second,)).fetchone()[0]
    assert b'"msg_id":"' in payload
    raw.execute("UPDATE outbox SET payload=? WHERE id=?",
                (bytes(payload)[:-1] + b',,}', second))
    raw.commit()
    raw.close()
    n = len(stack.records())
    stack.platform = stack.new_platform()
    assert wait_until(lambda: stack.events("outbox_rows_quarantined"), 30), \
        stack.output()[-2000:]
    assert wait_until(lambda: len(stack.records()) >= n + 1, 30)
    stack.all_delivered(gaps=2)                         # the two quarantined messages …
    alarms = stack.events("outbox_rows_quarantined")
    seqs = [q for a in alarms for q in a["detail"]["seqs"]]
    assert all(a["severity"] == "alarm" for a in alarms) and len(seqs) == 2, alarms  # named
    assert not stack.platform.invalid_log, stack.platform.invalid_log[:3]
    assert stack.proc is not None and stack.proc.poll() is None       # still running
    assert "Traceback" not in stack.output()


def test_a_full_disk_holds_messages_in_memory_and_loses_none(tmp_path: Path, sim_clip) -> None:
    data = small_filesystem(tmp_path / "small", "3m")
    s = Stack(tmp_path, sim_clip, data=data)
    try:
        s.start_agent()
        assert wait_until(lambda: s.delivered(), 40), s.output()[-2000:]
        filler = fill_disk(data)
        assert wait_until(lambda: "holding messages in memory" in s.output(), 40), \
            s.output()[-2000:]
        t_full = time.time()

        def closed_on_full_disk() -> bool:              # an interval ends on the full disk
            starts = re.findall(r"^(\S+Z) cam1/main: total", s.output(), re.MULTILINE)
            return any(datetime.fromisoformat(x.replace("Z", "+00:00")).timestamp() + 10
                       > t_full + 1 for x in starts)    # (its record waits in memory)
        assert wait_until(closed_on_full_disk, 12 + 3 * SLACK_S), s.output()[-2000:]
        assert s.proc is not None and s.proc.poll() is None
        filler.unlink()                                 # space again
        assert wait_until(lambda: "writes work again" in s.output(), 30)
        n = len(s.records())
        assert wait_until(lambda: len(s.records()) >= n + 2, 40)
        s.all_delivered()

        def whole_intervals() -> list[str]:
            return sorted({m["samplingPeriod"]["start"] for m in
                           s.platform.store.latest("traffic", 100_000)
                           if not m["samplingPeriod"]["partial"]})
        # the JSON-lines file missed what came on the full disk; the platform did not:
        # every whole interval, before, on and after the full disk, one after the other
        assert wait_until(lambda: len(whole_intervals()) >= 3, 30 + SLACK_S), whole_intervals()
        starts = whole_intervals()
        secs = [datetime.fromisoformat(x.replace("Z", "+00:00")).timestamp() for x in starts]
        assert len(secs) >= 3 and all(b - a == 10 for a, b in itertools.pairwise(secs)), starts
        assert s.events("outbox_degraded")
        assert "Traceback" not in s.output()
    finally:
        s.close()
        subprocess.run(["umount", "-l", str(data)], capture_output=True)
