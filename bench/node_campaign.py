"""Lamp node fault campaign: the node in real MicroPython, a real mosquitto, the platform
simulator, seeded random fault schedules, four invariants.

    python bench/node_campaign.py [--schedules 40] [--seed 1] [--heap 128K] [--short]
                                  [--faults KIND,KIND] [--replay SEED] [--keep DIR]
                                  [--app CHECKOUT]

Starts mosquitto on a loopback port, the platform simulator (``python -m sim.platform``,
host id ``ops``, acknowledging what it stores) and the lamp node as a board runs it
(``sim.nodestage``: the ``.mpy`` files ``flash.sh node`` writes) in the MicroPython unix
port with ``--heap``, its clock a file running 60 times fast from a December afternoon in
Hamburg (one schedule of a minute is an hour of the night). Per schedule it draws faults
from the catalogue below at random times (seeded), some overlapping, some right after
another one ended (the node is then reconnecting or sending its backlog), and checks,
all the time and after healing everything:

- **the node never exits** by itself (only the campaign's own kills end it);
- **the loop gap stays ≤ 2 s**: the file output is rewritten on every loop pass, so the
  longest time between two rewrites is the longest pass (plus the tick);
- **the lamp is never below the schedule**: every sample of the output is at least the
  lowest level the configured program gives for the node's clock over the last 2.5 s
  (the fail-safes only raise it);
- **nothing is lost silently**: after the last schedule, every seq the node made (up to
  the newest it freed, read from its files) is in the platform's store or inside the range
  an ``outbox_overflow`` event names.

Catalogue: ``broker_restart``, ``broker_forget`` (SIGKILL, persistence deleted),
``broker_hang`` (SIGSTOP: a peer that stops answering without closing), ``broker_refuse``
(restarted refusing every client: CONNACK 5), ``broker_down`` (stopped long enough to
overflow the outbox), ``platform_away`` (clean stop: STATE offline, the node holds),
``platform_kill``, ``node_kill``, ``flash_corrupt`` (node killed, bytes of an outbox file
flipped), ``state_garbage`` (node killed, a state, seen or pointer file replaced by
garbage), ``config_broken`` (node restarted on a refused config: invalid JSON, 200 KiB,
5,000 levels deep or wrong values; the good one back at the end), ``clock_jump`` (the
clock file set hours back or days ahead, then back in line), ``cmd_oversized`` (100 KiB,
retained or not), ``cmd_retained`` (a retained set_override to 10 % waiting when the node
connects: it must be refused, the lamp invariant sees it otherwise), ``cmd_replay`` (a
valid command, then the same bytes again: at most one ``ok``), ``cmd_fuzz`` (garbage and
lenient JSON).

It prints one line per schedule (its seed, faults, what failed), the totals, and one JSON
line. Exit 0 when every invariant held. ``--short`` is ``make test``'s mode
(``tests/test_node_campaign.py``): 6 schedules of one or two short faults, under 3 minutes
here. Needs ``../shared`` (MicroPython) and mosquitto.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.campaign import Broker, Proc, stop_on_signals, stop_requested, wait_for  # noqa: E402

MICROPYTHON = ROOT.parent / "shared" / "bin" / "micropython"
DEVICE, SITE, HOST_ID = "node-0042", "harbour", "ops"
BASE = f"polelink/{SITE}/{DEVICE}"
RATE = 60
START = 1797346800.0        # 2026-12-15 15:00 UTC, before sunset in Hamburg
LAT, LON, TZ = 53.55, 9.99, "CET-1CEST,M3.5.0,M10.5.0/3"
PROGRAM = [{"at": "sunset", "offset_min": -10, "level": 100}, {"at": "23:00", "level": 50},
           {"at": "05:00", "level": 80}, {"at": "sunrise", "offset_min": 10, "level": 0}]
GAP_LIMIT_S = 2.0
FAULTS = ("broker_restart", "broker_forget", "broker_hang", "broker_refuse", "broker_down",
          "platform_away", "platform_kill", "node_kill", "flash_corrupt", "state_garbage",
          "config_broken", "clock_jump", "cmd_oversized", "cmd_retained", "cmd_replay",
          "cmd_fuzz")
SHORT_FAULTS = tuple(f for f in FAULTS if f != "broker_down")
TARGET = {"broker_restart": "broker", "broker_forget": "broker", "broker_hang": "broker",
          "broker_refuse": "broker", "broker_down": "broker", "platform_away": "platform",
          "platform_kill": "platform", "node_kill": "node", "flash_corrupt": "node",
          "state_garbage": "node", "config_broken": "node", "clock_jump": "clock",
          "cmd_oversized": "cmd", "cmd_retained": "cmd", "cmd_replay": "cmd",
          "cmd_fuzz": "cmd"}


def expected_level(now: float) -> float:
    """The configured program's level at node-clock ``now`` (the agent's schedule code,
    which the node runs too)."""
    from agent.common import schedule, tzrule
    lvl, _src, _ = schedule.level_at(PROGRAM, LAT, LON, tzrule.parse(TZ), now, [])
    return 100.0 if lvl is None else float(lvl)


class NodeBroker(Broker):
    """The campaign's mosquitto, which can also be started refusing every client."""

    refuse = False

    def start(self, persist: bool | None = None) -> None:
        super().start(persist)
        if self.refuse:                         # rewritten after the parent's config
            self.signal(signal.SIGTERM)
            conf = self.work / "mosquitto.conf"
            conf.write_text(conf.read_text().replace("allow_anonymous true",
                                                     "allow_anonymous false"))
            Proc.start(self)
            wait_for(lambda: self.running, 5)
            time.sleep(0.3)


class Clock:
    """The node's clock file and its history (node time as a function of real time)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.history: list[tuple[float, float]] = []    # (real monotonic, node epoch)
        self.set(START)

    def set(self, epoch: float) -> None:
        self.history.append((time.monotonic(), epoch))
        self.path.write_text(json.dumps({"epoch": epoch, "rate": RATE, "synced": True}))

    def at(self, real: float) -> float:
        """The node's clock reading at monotonic ``real`` (per the file in force then)."""
        t0, e0 = self.history[0]
        for t, e in self.history:
            if t <= real:
                t0, e0 = t, e
        return e0 + (real - t0) * RATE

    def now(self) -> float:
        return self.at(time.monotonic())

    def rewrite(self) -> None:
        """The same time again (a restarted node starts its count from the file)."""
        self.set(self.now())


class Fault:
    """One drawn fault."""

    def __init__(self, kind: str, at: float, hold: float) -> None:
        self.kind, self.at, self.hold = kind, at, hold
        self.active = False
        self.note = ""
        self.recovery = False


class NodeCampaign:
    """Processes, faults, monitors and invariants; see the module docstring."""

    def __init__(self, work: Path, heap: str, kinds: tuple[str, ...],
                 app: Path = ROOT) -> None:
        from sim.nodestage import stage
        self.work, self.heap, self.kinds = work, heap, kinds
        self.broker = NodeBroker(work)
        self.path = stage(work / "board", app=app)
        self.state = work / "state"
        self.state.mkdir(exist_ok=True)
        self.level = work / "level"
        self.clock = Clock(work / "clock.json")
        self.cfg = work / "node.json"
        self.good_cfg = json.dumps({
            "device": DEVICE, "site": SITE, "latitude": LAT, "longitude": LON, "tz": TZ,
            "mqtt": {"host": "127.0.0.1", "port": self.broker.port, "keepalive": 10,
                     "primary_host": HOST_ID},
            "output": {"kind": "file", "path": str(self.level)}, "program": PROGRAM,
            "fixed_program": [{"at": "17:00", "level": 100}, {"at": "08:00", "level": 0}],
            "state_dir": str(self.state), "tick_s": 0.5, "retry_s": 0.5,
            "report_s": 60, "health_s": 300, "outbox_max": 64, "max_ttl_s": 86400})
        self.cfg.write_text(self.good_cfg)
        self.node = Proc("node", [str(MICROPYTHON), "-X", f"heapsize={heap}",
                                  str(work / "board" / "main.py"), str(self.cfg), "--clock",
                                  str(self.clock.path)], work / "node.log")
        self.node_env = {"MICROPYPATH": self.path}
        self.platform = Proc("platform", [sys.executable, "-m", "sim.platform", "--broker",
                                          f"127.0.0.1:{self.broker.port}", "--http",
                                          "127.0.0.1:0", "--token", "campaign", "--db",
                                          str(work / "platform.db"), "--host-id", HOST_ID],
                             work / "platform.log")
        self.node_down_since: float | None = None
        self.node_downs: list[tuple[float, float]] = []
        self.exits: list[str] = []
        self.below: list[str] = []
        self.max_gap = 0.0
        self.gap_note = ""
        self.samples = 0
        self.stop_monitor = threading.Event()
        self.ok_by_cid: Counter = Counter()
        self.retained_cmd = False

    # -- processes ------------------------------------------------------------------------
    def start(self) -> None:
        self.broker.start(persist=True)
        self.platform.start()
        self.start_node()
        threading.Thread(target=self._monitor, daemon=True).start()
        if not wait_for(lambda: self.stored_count() > 0, 60, 0.5):
            raise RuntimeError(f"nothing reached the platform; see {self.work}")

    def start_node(self) -> None:
        self.clock.rewrite()
        os.environ["MICROPYPATH"] = self.node_env["MICROPYPATH"]   # Proc passes os.environ
        self.node.start()
        if self.node_down_since is not None:
            self.node_downs.append((self.node_down_since, time.monotonic()))
            self.node_down_since = None

    def kill_node(self) -> None:
        self.node_down_since = time.monotonic()
        self.node.signal(signal.SIGKILL)

    def close(self) -> None:
        self.stop_monitor.set()
        for p in (self.node, self.platform, self.broker):
            with contextlib.suppress(Exception):
                p.signal(signal.SIGKILL)

    # -- monitors -------------------------------------------------------------------------
    def _down_during(self, a: float, b: float) -> bool:
        if self.node_down_since is not None and self.node_down_since <= b:
            return True
        return any(s <= b and e >= a for s, e in self.node_downs)

    def _monitor(self) -> None:
        """Samples the output file: loop gaps, level against the schedule, node exits."""
        last_m = last_t = None
        window: list[tuple[float, float]] = []          # (real, expected) of the last 2.5 s
        while not self.stop_monitor.wait(0.05):
            now = time.monotonic()
            exp = expected_level(self.clock.at(now))
            window = [(t, e) for t, e in window if t >= now - 2.5] + [(now, exp)]
            if self.node.proc is not None and self.node.proc.poll() is not None \
                    and self.node_down_since is None:
                rc = self.node.proc.returncode
                self.exits.append(f"node exited ({rc}): {Proc_tail(self.node.log)}")
                self.node_down_since = now
                self.node.proc = None
                self.start_node()                       # go on, to find more
                continue
            try:
                m = self.level.stat().st_mtime_ns
                lvl = float(self.level.read_text())
            except (OSError, ValueError):
                continue
            self.samples += 1
            if m != last_m:
                if last_t is not None and not self._down_during(last_t, now):
                    gap = now - last_t
                    if gap > self.max_gap:
                        self.max_gap = gap
                        self.gap_note = self.current
                last_m, last_t = m, now
            if self.node_down_since is None and not self._down_during(now - 3, now) \
                    and lvl + 0.01 < min(e for _t, e in window):
                self.below.append(f"level {lvl} < schedule {min(e for _t, e in window)} at "
                                  f"{time.strftime('%H:%M', time.gmtime(self.clock.at(now)))} "
                                  f"during {self.current}")

    current = ""

    # -- platform store -------------------------------------------------------------------
    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        try:
            db = sqlite3.connect(f"file:{self.work / 'platform.db'}?mode=ro", uri=True,
                                 timeout=10)
            try:
                return db.execute(sql, args).fetchall()
            finally:
                db.close()
        except sqlite3.Error:
            return []

    def stored_count(self) -> int:
        r = self._query("SELECT COUNT(*) FROM messages WHERE device=? AND seq IS NOT NULL",
                        (DEVICE,))
        return r[0][0] if r else 0

    def delivered(self) -> set[int]:
        return {s for (s,) in self._query(
            "SELECT seq FROM messages WHERE device=? AND kind != 'status' AND seq IS NOT NULL",
            (DEVICE,))}

    def named(self) -> set[int]:
        out: set[int] = set()
        for (payload,) in self._query("SELECT payload FROM messages WHERE device=? AND "
                                      "payload LIKE '%outbox_overflow%'", (DEVICE,)):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                d = json.loads(payload)["detail"]
                if isinstance(d.get("firstSeq"), int) and isinstance(d.get("lastSeq"), int):
                    out |= set(range(d["firstSeq"], d["lastSeq"] + 1))
        return out

    def responses(self) -> list[dict]:
        out = []
        for (payload,) in self._query("SELECT payload FROM messages WHERE device=? AND "
                                      "topic LIKE '%/cmd/response'", (DEVICE,)):
            with contextlib.suppress(ValueError):
                out.append(json.loads(payload))
        return out

    def invalid(self) -> list[str]:
        return [e for (e,) in self._query("SELECT errors FROM messages WHERE device=? AND "
                                          "valid=0 LIMIT 5", (DEVICE,))]

    # -- commands -------------------------------------------------------------------------
    def publish(self, payload: bytes | str, retain: bool = False) -> None:
        import paho.mqtt.publish as publish
        with contextlib.suppress(Exception):
            publish.single(BASE + "/cmd", payload, qos=1, retain=retain, hostname="127.0.0.1",
                           port=self.broker.port, keepalive=5)

    def command(self, level: int, cid: str) -> str:
        exp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock.now() + 3600))
        return json.dumps({"schema": "polelink/command/2", "correlation_id": cid,
                           "command": "set_override", "expires": exp,
                           "args": {"level_pct": level, "priority": 5, "expires_in_s": 600}})

    # -- faults ---------------------------------------------------------------------------
    def begin(self, f: Fault, rng: random.Random) -> None:
        k = f.kind
        f.active = True
        if k == "broker_restart":
            self.broker.stop()
            self.broker.start(persist=True)
        elif k == "broker_forget":
            self.broker.forget()
            self.broker.start(persist=True)
        elif k == "broker_hang":
            self.broker.pause()
        elif k == "broker_refuse":
            self.broker.stop()
            self.broker.refuse = True
            self.broker.start()
        elif k == "broker_down":
            self.broker.stop()
        elif k == "platform_away":
            self.platform.signal(signal.SIGTERM)
        elif k == "platform_kill":
            self.platform.signal(signal.SIGKILL)
            self.platform.start()
        elif k == "node_kill":
            self.kill_node()
        elif k == "flash_corrupt":
            self.kill_node()
            files = sorted(p for p in self.state.glob("ob.*") if p.suffix != ".tmp")
            if files:
                p = rng.choice(files)
                raw = bytearray(p.read_bytes())
                for _ in range(rng.randint(1, 3)):
                    if raw:
                        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
                p.write_bytes(bytes(raw))
                f.note = p.name
            self.start_node()
        elif k == "state_garbage":
            self.kill_node()
            p = self.state / rng.choice(("state.json", "seen.json", "ob.ptr"))
            p.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(0, 300))))
            f.note = p.name
            self.start_node()
        elif k == "config_broken":
            self.kill_node()
            how = rng.choice(("syntax", "huge", "deep", "values"))
            text = {"syntax": self.good_cfg[:-5],
                    "huge": self.good_cfg[:-1] + ', "x": "' + "a" * 200_000 + '"}',
                    "deep": "[" * 5000 + "]" * 5000,
                    "values": self.good_cfg.replace(f'"latitude": {LAT}', '"latitude": 95')}
            self.cfg.write_text(text[how])
            f.note = how
            self.start_node()
        elif k == "clock_jump":
            self.clock.set(self.clock.now() + rng.choice((-6 * 3600, -600, 3 * 3600)))
        elif k == "cmd_oversized":
            retain = rng.random() < 0.5
            self.publish(b"x" * 100_000, retain)
            self.retained_cmd |= retain
        elif k == "cmd_retained":
            self.publish(self.command(10, f"ret-{rng.randrange(10**9)}"), retain=True)
            self.retained_cmd = True
            self.kill_node()                            # waiting when it subscribes
            self.start_node()
        elif k == "cmd_replay":
            cmd = self.command(100, f"rep-{rng.randrange(10**9)}")
            self.publish(cmd)
            time.sleep(rng.uniform(0, 2))
            self.publish(cmd)
        elif k == "cmd_fuzz":
            for _ in range(10):
                junk = rng.choice((bytes(rng.randrange(256) for _ in range(rng.randint(0, 200))),
                                   b'{"a": , "b": 0}', b'{"schema": "polelink/command/2"',
                                   self.command(10, "f")[:-3].encode() + b',,}',
                                   b"[" * 300))
                self.publish(junk)

    def end(self, f: Fault) -> None:
        k = f.kind
        if k == "broker_hang":
            self.broker.resume()
        elif k in ("broker_refuse", "broker_down"):
            if self.broker.running:
                self.broker.stop()
            self.broker.refuse = False
            self.broker.start()
        elif k == "platform_away":
            self.platform.start()
        elif k == "config_broken":
            self.kill_node()
            self.cfg.write_text(self.good_cfg)
            self.start_node()
        elif k == "clock_jump":
            # back in line with where the clock would have been
            t0 = self.clock.history[0][0]
            self.clock.set(START + (time.monotonic() - t0) * RATE)
        f.active = False

    def heal(self) -> None:
        self.broker.resume()
        if not self.broker.running or self.broker.refuse:
            if self.broker.running:
                self.broker.stop()
            self.broker.refuse = False
            self.broker.start()
        if not self.platform.running:
            self.platform.start()
        if self.retained_cmd:
            self.publish(b"", retain=True)              # clears the retained command
            self.retained_cmd = False
        if self.cfg.read_text() != self.good_cfg:
            self.kill_node()
            self.cfg.write_text(self.good_cfg)
        if not self.node.running:
            self.start_node()

    def draw(self, rng: random.Random, short: bool) -> list[Fault]:
        n = rng.randint(1, 2) if short else rng.randint(1, 4)
        out, t = [], rng.uniform(0.5, 2)
        for _ in range(n):
            kind = rng.choice(self.kinds)
            hold = rng.uniform(1, 4) if short else rng.uniform(2, 20)
            if kind == "broker_down":
                hold = rng.uniform(40, 90)
            out.append(Fault(kind, t, hold))
            # the next one: overlapping, or right after this one ends (during recovery)
            t += rng.choice((rng.uniform(0, hold), hold + rng.uniform(0, 1.5),
                             hold + rng.uniform(2, 6)))
        return out

    def run_schedule(self, rng: random.Random, short: bool) -> list[Fault]:
        faults = self.draw(rng, short)
        events = sorted([(f.at, 0, i) for i, f in enumerate(faults)]
                        + [(f.at + f.hold, 1, i) for i, f in enumerate(faults)])
        t0 = time.monotonic()
        busy: dict[str, Fault] = {}
        last_end = -1e9
        for at, what, i in events:
            f = faults[i]
            delay = t0 + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            target = TARGET[f.kind]
            if what == 0:
                if target in busy:
                    f.note = f"skipped: {busy[target].kind} holds the {target}"
                    continue
                f.recovery = bool(busy) or time.monotonic() - last_end < 5
                self.current = f.kind
                self.begin(f, rng)
                busy[target] = f
            elif f.active:
                self.end(f)
                last_end = time.monotonic()
                busy.pop(target, None)
        self.heal()
        time.sleep(3 if short else 6)                  # the node works again for a while
        self.current = "between schedules"
        return faults

    def final_check(self, drain_s: float = 180) -> dict[str, Any]:
        """Everything healed: wait (at most ``drain_s``) for the backlog, then every seq
        delivered or named."""
        self.current = "final drain"

        def missing() -> set[int]:
            have = self.delivered() | self.named()
            top = max(self.delivered(), default=0)
            return set(range(1, top + 1)) - have
        wait_for(lambda: not missing() and self.node_outbox_empty(), drain_s, 1)
        self.stop_monitor.set()
        self.kill_node()
        freed = self.node_freed_seq()
        have = self.delivered() | self.named()
        lost = sorted(set(range(1, max(freed, max(have, default=0)) + 1)) - have)
        ok = Counter(r.get("correlation_id") for r in self.responses()
                     if r.get("result") == "ok")
        twice = sorted(c for c, n in ok.items() if n > 1 and c)
        return {"lost_silently": lost, "freed_seq": freed, "delivered": len(self.delivered()),
                "named": len(self.named() - self.delivered()), "ran_twice": twice,
                "invalid": self.invalid()}

    def node_outbox_empty(self) -> bool:
        rows = self._query("SELECT payload FROM messages WHERE device=? AND kind='node-health' "
                           "ORDER BY id DESC LIMIT 1", (DEVICE,))
        try:
            return json.loads(rows[0][0])["outbox"] <= 2
        except (IndexError, ValueError, KeyError):
            return False

    def node_freed_seq(self) -> int:
        """The newest seq the node freed or dropped (its outbox pointer file)."""
        try:
            return int(json.loads((self.state / "ob.ptr").read_text())["seq"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0


def Proc_tail(path: Path, n: int = 600) -> str:  # noqa: N802
    try:
        return path.read_text(errors="replace")[-n:].replace("\n", " | ")
    except OSError:
        return ""


def run(schedules: int, seed: int, heap: str, kinds: tuple[str, ...], short: bool,
        keep: Path | None, replay: int | None = None, app: Path = ROOT,
        drain_s: float = 180) -> dict[str, Any]:
    import shutil
    import tempfile
    work = keep or Path(tempfile.mkdtemp(prefix="polelink-node-campaign-"))
    work.mkdir(parents=True, exist_ok=True)
    c = NodeCampaign(work, heap, kinds, app)
    injected: Counter = Counter()
    recovery: Counter = Counter()
    failed: list[int] = []
    t_start = time.monotonic()
    try:
        c.start()
        for i in range(schedules):
            if stop_requested.is_set():
                break
            s = replay if replay is not None else seed * 100003 + i
            rng = random.Random(s)
            before = (len(c.exits), len(c.below), c.max_gap)
            faults = c.run_schedule(rng, short)
            for f in faults:
                if not f.note.startswith("skipped"):
                    injected[f.kind] += 1
                    recovery[f.kind] += f.recovery
            bad = []
            if len(c.exits) > before[0]:
                bad.append(f"exits: {c.exits[before[0]:]}")
            if len(c.below) > before[1]:
                bad.append(f"below schedule: {c.below[before[1]:][:3]}")
            if c.max_gap > GAP_LIMIT_S and before[2] <= GAP_LIMIT_S:
                bad.append(f"loop gap {c.max_gap:.2f} s during {c.gap_note}")
            desc = ", ".join(f"{f.kind}@{f.at:.1f}+{f.hold:.1f}"
                             + (f"({f.note})" if f.note else "") for f in faults)
            print(f"schedule {i + 1} seed {s}: {desc}: {'FAILED ' + '; '.join(bad) if bad else 'ok'}",
                  flush=True)
            if bad:
                failed.append(s)
        end = c.final_check(drain_s)
    finally:
        c.close()
    summary = {"schedules": schedules, "seed": seed, "heap": heap, "short": short,
               "faults": dict(injected), "during_recovery": dict(recovery),
               "failed_seeds": failed, "exits": len(c.exits), "max_loop_gap_s":
               round(c.max_gap, 2), "below_schedule": len(c.below), "samples": c.samples,
               "messages_delivered": end["delivered"], "named_by_overflow": end["named"],
               "lost_silently": len(end["lost_silently"]),
               "lost_seqs": end["lost_silently"][:20], "ran_twice": end["ran_twice"],
               "invalid": end["invalid"], "seconds": round(time.monotonic() - t_start)}
    ok = not (failed or c.exits or c.below or end["lost_silently"] or end["ran_twice"]
              or end["invalid"] or c.max_gap > GAP_LIMIT_S)
    summary["ok"] = ok
    print(f"{summary['schedules']} schedules, faults {sum(injected.values())} "
          f"({sum(recovery.values())} during recovery), messages delivered "
          f"{end['delivered']}, named {end['named']}, lost silently "
          f"{len(end['lost_silently'])}, exits {len(c.exits)}, longest loop gap "
          f"{c.max_gap:.2f} s, below schedule {len(c.below)}")
    print(json.dumps(summary), flush=True)
    if ok and keep is None:
        shutil.rmtree(work, ignore_errors=True)
    elif not ok:
        print(f"work folder kept: {work}", file=sys.stderr)
    return summary


def main(argv: list[str] | None = None) -> int:
    """``python bench/node_campaign.py``; exit 0 when every invariant held."""
    p = argparse.ArgumentParser(prog="python bench/node_campaign.py",
                                description=__doc__.split("\n")[0])
    p.add_argument("--schedules", type=int, default=40, help="how many (default 40)")
    p.add_argument("--seed", type=int, default=1, help="schedule i gets seed x 100003 + i")
    p.add_argument("--heap", default="128K", help="MicroPython heap (default 128K)")
    p.add_argument("--faults", help=f"comma-separated kinds (default all: {','.join(FAULTS)})")
    p.add_argument("--short", action="store_true", help="make test's mode: short faults")
    p.add_argument("--replay", type=int, metavar="SEED", help="run the one schedule of SEED")
    p.add_argument("--keep", type=Path, help="work in this folder and keep it")
    p.add_argument("--app", type=Path, default=ROOT,
                   help="the checkout whose node/ runs (default this one; the test runs an "
                        "older node from git to show the campaign sees its faults)")
    p.add_argument("--drain-s", type=float, default=180, metavar="S",
                   help="the longest wait for the node's backlog at the end (180); a node "
                        "known to fail (the test's older node) need not be waited for")
    a = p.parse_args(argv)
    if not MICROPYTHON.exists():
        print(f"node_campaign: {MICROPYTHON} is missing (needs ../shared)", file=sys.stderr)
        return 2
    if not (Path("/usr/sbin/mosquitto").exists() or
            subprocess.run(["sh", "-c", "command -v mosquitto"], capture_output=True).returncode == 0):
        print("node_campaign: mosquitto is not installed", file=sys.stderr)
        return 2
    kinds = tuple(a.faults.split(",")) if a.faults else (SHORT_FAULTS if a.short else FAULTS)
    unknown = [k for k in kinds if k not in FAULTS]
    if unknown or a.schedules < 1:
        p.error(f"unknown fault kind(s) {unknown}; known: {', '.join(FAULTS)}" if unknown
                else "--schedules must be at least 1")

    stop_on_signals("node_campaign")
    try:
        s = run(1 if a.replay is not None else a.schedules, a.seed, a.heap, kinds, a.short,
                a.keep, a.replay, a.app.resolve(), a.drain_s)
    except KeyboardInterrupt:
        print("node_campaign: interrupted", file=sys.stderr)
        return 130
    return 0 if s["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
