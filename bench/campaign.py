"""Delivery fault campaign: the real processes, seeded random fault schedules, one invariant.

    python bench/campaign.py [--schedules 100] [--seed 1] [--ack platform|puback]
                             [--faults KIND,KIND] [--short] [--keep DIR]
                             [--plan KIND@AT[+HOLD],...] [--broker-queue N] [--replay SEED]

Starts a real mosquitto on a loopback port, the platform simulator (``python -m
sim.platform``: one consumer, or two sharing ``$share/…`` and one database, drawn per
schedule) and ``python -m agent run`` on a simulated clip (six counting lines, 10 s
intervals, a small outbox cap and acknowledgement window so that replays and overflows
happen within seconds). Then, per schedule, it draws faults from the catalogue below at
random times (seeded), some overlapping, some injected right after another fault ends
(during the replay it starts), and afterwards lifts every fault and checks:

    every interval in the pole's JSON-lines file is in the platform's store exactly once,
    or is named by an alarm the platform received (``outbox_overflow`` by its time span,
    ``outbox_lost`` by the span after the last message of the lost epoch the platform has).

and that every message the platform received validates against the contract. It prints,
per fault kind, how often each was injected in each phase (``idle``; ``replay``: the pole
had a backlog and was sending it; ``recovery``: within 5 s of another fault's end, or
while another fault held), the totals, and the seed of any failing schedule, then one
JSON line. Exit 0 when every schedule held, 1 otherwise. ``--replay SEED`` runs the one
schedule a failing line named (with the same ``--faults``, ``--short`` and ``--ack``).
Ctrl-C (or SIGTERM) ends the campaign after the schedule under way and prints the summary
so far (``"interrupted": true``); a second one stops at once.

``--ack puback`` runs the platform with ``--no-ack`` (a platform from before contract
2.7: poles free a message on the broker's PUBACK). The campaign is expected to **fail**
then: it is how the campaign proves it can see the loss it exists for (``--faults
platform_pause,broker_restart_forget`` finds it in a couple of schedules).

Catalogue: ``broker_restart_persist`` (SIGTERM, restarted with persistence),
``broker_restart_forget`` (SIGKILL, restarted without its persistence file),
``broker_hang`` (SIGSTOP: a peer that stops answering without closing), ``platform_kill``
(SIGKILL one consumer, restarted later), ``platform_pause`` (SIGSTOP, still "online"),
``platform_away`` (a clean stop: STATE offline), ``agent_kill`` (SIGKILL),
``outbox_deleted_running``, ``outbox_deleted_stopped`` (agent stopped, file deleted,
restarted), ``outbox_corrupt`` (agent killed, the file's header overwritten),
``cap_outage`` (the platform away until the outbox overflows), ``disk_full`` (the state
folder's file system filled; needs root to mount a tmpfs, skipped otherwise),
``model_crash`` (SIGSEGV to the agent's model process: a runtime that crashes on a frame),
``model_hang`` (SIGSTOP to it: the agent kills it at ``run_timeout_s``, 2 s here),
``state_forged`` (a stranger publishes the platform's STATE ``offline``, once, not
retained, stamped years ahead or 100 s ahead), ``duplicate_pole`` (a second ``agent run``
with the same device id, as from a copied card: the broker closes one connection for the
other), ``command_burst`` (150 commands at once in ``--short``, 2,000 otherwise),
``row_corrupt`` (a queued row other than traffic stops being JSON but keeps its braces
and ``msg_id``), ``disk_full_stop`` (the state folder fills, the agent is stopped with what it
holds in memory, and started again with room: needs the tmpfs, as ``disk_full``).

``--plan`` runs one given schedule instead of drawn ones (e.g. ``platform_away@1+15,
broker_restart_forget@16.3``: seconds from the schedule's start, ``+HOLD`` how long it
holds): the delivery tests use it for named cases. ``--broker-queue N`` sets mosquitto's
per-client ``max_queued_messages`` (default 20,000 as in ``deploy/mosquitto``).

``--short`` is the mode ``make test`` runs (``tests/test_campaign.py``): 10 schedules of
one or two short faults. Needs mosquitto; takes about 3 to 4 minutes here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: Set by Ctrl-C or SIGTERM: the campaign ends after the schedule under way.
stop_requested = threading.Event()

DEVICE, SITE, HOST_ID = "pole-c", "lab", "ops"
LINES = 24                  # traffic messages per interval: replays and overflows within seconds
INTERVAL_S = 10
CAP = 60                    # outbox cap: an outage of ~25 s overflows it
WINDOW = 8                  # ack window: a backlog takes several acknowledgement rounds
ACK_TIMEOUT_S = 3
SETTLE_S = 150              # the longest wait for everything to arrive after a schedule
FAULTS = ("broker_restart_persist", "broker_restart_forget", "broker_hang",
          "platform_kill", "platform_pause", "platform_away", "agent_kill",
          "outbox_deleted_running", "outbox_deleted_stopped", "outbox_corrupt",
          "cap_outage", "disk_full", "model_crash", "model_hang", "state_forged",
          "duplicate_pole", "command_burst", "row_corrupt", "disk_full_stop")
#: Faults that need the state folder on a small file system of its own (root: a tmpfs).
DISK_FAULTS = ("disk_full", "disk_full_stop")
SHORT_FAULTS = tuple(f for f in FAULTS if f not in ("cap_outage",))
#: Faults that leave the pole a backlog to replay when they end.
OUTAGES = ("platform_away", "platform_pause", "broker_hang", "platform_kill")
INSTANT = ("broker_restart_persist", "broker_restart_forget", "outbox_deleted_running",
           "model_crash", "state_forged", "command_burst", "row_corrupt")
#: The process (or file) each fault holds: one fault at a time per target.
TARGET = {"broker_restart_persist": "broker", "broker_restart_forget": "broker",
          "broker_hang": "broker", "platform_kill": "platform", "platform_pause": "platform",
          "platform_away": "platform", "cap_outage": "platform", "agent_kill": "agent",
          "outbox_deleted_running": "agent", "outbox_deleted_stopped": "agent",
          "outbox_corrupt": "agent", "disk_full": "disk", "model_crash": "model",
          "model_hang": "model", "state_forged": "state", "duplicate_pole": "twin",
          "command_burst": "commands", "row_corrupt": "agent", "disk_full_stop": "agent"}
#: Commands in one ``command_burst`` (short mode, full campaign).
BURST = (150, 2000)


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:port."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(cond: Any, timeout: float, step: float = 0.1) -> bool:
    """Poll ``cond`` until true or ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def iso_s(text: str) -> float:
    """Seconds since the epoch of an ISO-8601 UTC time."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Proc:
    """A child process with a log file, that can be killed, paused and started again."""

    def __init__(self, name: str, argv: list[str], log: Path) -> None:
        self.name, self.argv, self.log = name, argv, log
        self.proc: subprocess.Popen | None = None
        self.paused = False
        self.exits: list[int] = []

    def start(self) -> None:
        with open(self.log, "ab") as f:
            # a session of its own: a Ctrl-C at the terminal is the campaign's, not theirs
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                         start_new_session=True)
        self.paused = False

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int, wait: bool = True) -> None:
        if self.proc is None:
            return
        if self.paused and sig != signal.SIGCONT:
            self.proc.send_signal(signal.SIGCONT)
            self.paused = False
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        if wait:
            try:
                rc = self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
            self.exits.append(rc)
            self.proc = None

    def pause(self) -> None:
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.proc is not None and self.paused:
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False


class Broker(Proc):
    """mosquitto on a fixed loopback port; persistence on or off per start."""

    def __init__(self, work: Path, queue: int = 20_000) -> None:
        self.work = work
        self.queue = queue
        self.port = free_port()
        self.exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        super().__init__("mosquitto", [self.exe, "-c", str(work / "mosquitto.conf")],
                         work / "mosquitto.log")
        self.persist = True

    def start(self, persist: bool | None = None) -> None:
        if persist is not None:
            self.persist = persist
        conf = self.work / "mosquitto.conf"
        user = "user root\n" if os.geteuid() == 0 else ""
        conf.write_text(
            f"{user}listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence {'true' if self.persist else 'false'}\n"
            f"persistence_location {self.work}/\nautosave_interval 300\n"
            f"max_queued_messages {self.queue}\nmax_inflight_messages 20\n")
        super().start()
        if not wait_for(lambda: listening(self.port), 15):
            raise RuntimeError(f"mosquitto did not start: {self.work / 'mosquitto.log'}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGTERM: it saves its persistence file first), waiting for the end."""
        self.signal(sig)

    def forget(self) -> None:
        """Kill it and delete its persistence file: it forgets every session and retain."""
        self.stop(signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            (self.work / "mosquitto.db").unlink()

    # pause / resume: Proc's (SIGSTOP, SIGCONT)


@dataclass
class Fault:
    """One drawn fault: when it starts (s into the schedule) and how long it holds."""

    kind: str
    at: float
    hold: float
    phases: set[str] = field(default_factory=set)
    active: bool = False
    ended_at: float = 0.0
    note: str = ""
    pid: int = 0                # the process a model fault struck


class Campaign:
    """The processes, the faults and the invariant; see the module docstring."""

    def __init__(self, work: Path, ack: str = "platform", faults: tuple[str, ...] = FAULTS,
                 out=sys.stdout, broker_queue: int = 20_000) -> None:
        self.work, self.ack, self.out = work, ack, out
        self.data = work / "state"
        self.data.mkdir(parents=True, exist_ok=True)
        self.tmpfs = False
        if os.geteuid() == 0 and shutil.which("mount"):
            self.tmpfs = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(self.data)],
                capture_output=True).returncode == 0
        self.faults = tuple(f for f in faults if f not in DISK_FAULTS or self.tmpfs)
        self.skipped = [] if self.tmpfs else [f"{f} (needs root to mount a tmpfs)"
                                              for f in DISK_FAULTS if f in faults]
        self.db = work / "platform.db"
        self.broker = Broker(work, broker_queue)
        self.platforms: list[Proc] = []
        self.consumers = 0
        self.agent = Proc("agent", [sys.executable, "-m", "agent", "run", "--config",
                                    str(self._config()), "-q"], work / "agent.log")
        # a second pole with the same device id (a copied card): its own state, camera "twin"
        self.twin = Proc("twin", [sys.executable, "-m", "agent", "run", "--config",
                                  str(self._twin_config()), "-q"], work / "twin.log")
        self.short = False
        self.filler = self.data / "filler"
        self.unexpected_exits: list[int | None] = []

    # -- set-up -----------------------------------------------------------------------------
    def _config(self) -> Path:
        from sim.traffic import SceneConfig, write_clip

        clip = self.work / "clip.avi"
        # 5 fps: the campaign is about delivery, not counting; half the detector's work
        gt = write_clip(clip, 20, seed=5, cfg=SceneConfig(vehicles_per_minute=30, fps=5))
        x1, y1, x2, y2 = gt["line"]
        dy = [2 * (i - LINES // 2) for i in range(LINES)]     # parallel, 2 px apart
        lines = ", ".join(f"{{name: l{i}, points: [[{x1}, {y1 + d}], [{x2}, {y2 + d}]]}}"
                          for i, d in enumerate(dy))
        cfg = self.work / "pole.yaml"
        cfg.write_text(f"""device: {{id: {DEVICE}, site: {SITE}}}
cameras:
  - name: cam1
    source: {{kind: file, path: {json.dumps(str(clip))}, loop: true, realtime: true}}
    detector: {{model: {json.dumps(str(ROOT / 'agent' / 'models' / 'simnet.yaml'))}, threads: 1,
                run_timeout_s: 2}}
    lines: [{lines}]
aggregates: {{interval_s: {INTERVAL_S}, path: {json.dumps(str(self.data / 'agg.jsonl'))}}}
clock: {{sources: [assume_synced]}}
mqtt:
  port: {self.broker.port}
  keepalive_s: 5
  reconnect_min_s: 0.2
  reconnect_max_s: 2
  primary_host: {HOST_ID}
  outbox_path: {json.dumps(str(self.data / 'outbox.db'))}
  outbox_max_messages: {CAP}
  ack_window: {WINDOW}
  ack_timeout_s: {ACK_TIMEOUT_S}
  takeover_wait_max_s: 10
""")
        return cfg

    def _twin_config(self) -> Path:
        """The same pole file, its camera named ``twin`` and its state elsewhere: its
        intervals never count as the pole's, its connections take the pole's over."""
        twin = self.work / "twin"
        twin.mkdir(exist_ok=True)
        text = (self.work / "pole.yaml").read_text().replace("name: cam1", "name: twin")
        text = text.replace(str(self.data / "agg.jsonl"), str(twin / "agg.jsonl"))
        text = text.replace(str(self.data / "outbox.db"), str(twin / "outbox.db"))
        cfg = self.work / "twin.yaml"
        cfg.write_text(text)
        return cfg

    def _platform(self, i: int, shared: bool) -> Proc:
        argv = [sys.executable, "-m", "sim.platform", "--broker", f"127.0.0.1:{self.broker.port}",
                "--http", "127.0.0.1:0", "--db", str(self.db), "--host-id", HOST_ID,
                "--token", "campaign"]
        if self.ack == "puback":
            argv.append("--no-ack")
        if shared:
            argv += ["--share", "ingest", "--client-id", f"polelink-platform-{HOST_ID}-{i}"]
        return Proc(f"platform{i}", argv, self.work / f"platform{i}.log")

    def set_consumers(self, n: int) -> None:
        """One consumer (its own persistent session) or n sharing one subscription."""
        if n == self.consumers and all(p.running for p in self.platforms):
            return
        for p in self.platforms:
            if p.running:
                p.signal(signal.SIGINT)
        self.platforms = [self._platform(i, n > 1) for i in range(n)]
        for p in self.platforms:
            p.start()
        self.consumers = n

    def start(self) -> None:
        self.broker.start(persist=True)
        self.set_consumers(1)
        self.agent.start()
        if not wait_for(lambda: self.records(), 60 + 3 * INTERVAL_S, 0.5):
            raise RuntimeError(f"the agent closed no interval: {self.tail(self.agent.log)}")

    def close(self) -> None:
        for p in [self.agent, self.twin, *self.platforms]:
            if p.running:
                p.signal(signal.SIGKILL)
        self.broker.stop(signal.SIGKILL)
        if self.tmpfs:                  # keep what the pole had, for a look afterwards
            shutil.copytree(self.data, self.work / "state-final", dirs_exist_ok=True)
            subprocess.run(["umount", "-l", str(self.data)], capture_output=True)

    @staticmethod
    def tail(path: Path, n: int = 2000) -> str:
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    # -- what the pole and the platform have ------------------------------------------------
    def records(self) -> dict[tuple[str, str, str], dict]:
        """The pole's closed intervals (JSON lines), by (camera, line, start)."""
        p = self.data / "agg.jsonl"
        out: dict[tuple[str, str, str], dict] = {}
        if p.exists():
            for ln in p.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError, KeyError):
                    r = json.loads(ln)
                    out[(r["camera"], r["line"], r["interval_start"])] = r
        return out

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        return read_query(self.db, sql, args)

    def stored(self) -> Counter:
        """Traffic messages in the platform's store, counted by (camera, line, start)."""
        out: Counter = Counter()
        for (payload,) in self._query(
                "SELECT payload FROM messages WHERE kind='traffic' AND valid=1 AND device=?",
                (DEVICE,)):
            m = json.loads(payload)
            out[(m["camera"], m["line"], m["samplingPeriod"]["start"])] += 1
        return out

    def alarms(self) -> list[dict]:
        return [json.loads(p) for (p,) in self._query(
            "SELECT payload FROM messages WHERE kind='event' AND valid=1 AND device=? AND "
            "(payload LIKE '%outbox_overflow%' OR payload LIKE '%outbox_lost%' OR "
            "payload LIKE '%outbox_unwritten%')", (DEVICE,))]

    def excused(self, rec: dict, alarms: list[dict]) -> str:
        """The alarm that names this interval as lost, or ''."""
        end = iso_s(rec["interval_end"])
        for a in alarms:
            d = a.get("detail") or {}
            if a["event"] == "outbox_overflow" and "from" in d and "to" in d:
                if iso_s(d["from"]) - 3 <= end <= iso_s(d["to"]) + 3:
                    return f"outbox_overflow {d.get('firstSeq')}..{d.get('lastSeq')}"
            elif a["event"] == "outbox_unwritten" and "from" in d and "to" in d:
                # held in memory on the full disk when the agent stopped: by their times
                if iso_s(d["from"]) - 3 <= end <= iso_s(d["to"]) + 3:
                    return f"outbox_unwritten {d.get('count')}"
            elif a["event"] == "outbox_lost" and isinstance(d.get("previousEpoch"), str):
                # lost: what the pole made after the newest message of that epoch stored
                last = self._query(
                    "SELECT MAX(json_extract(payload, '$.ts')) FROM messages WHERE device=? "
                    "AND epoch=? AND data=1 AND valid=1", (DEVICE, d["previousEpoch"]))
                t_lo = iso_s(last[0][0]) if last and last[0][0] else 0.0
                if t_lo - 3 <= end <= iso_s(a["ts"]) + 3:
                    return f"outbox_lost {d['previousEpoch']}"
        return ""

    def invalid(self) -> list[tuple[str, str]]:
        return self._query("SELECT topic, errors FROM messages WHERE valid=0")

    def outbox(self) -> tuple[int, int]:
        """(queued, dropped) in the pole's outbox file, (0, 0) when unreadable."""
        p = self.data / "outbox.db"
        if not p.exists():
            return 0, 0
        try:
            db = sqlite3.connect(f"file:{p}?mode=ro", uri=True, timeout=2)
            try:
                q = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
                d = db.execute("SELECT value FROM meta WHERE key='dropped'").fetchone()[0]
                return int(q), int(d)
            finally:
                db.close()
        except sqlite3.Error:
            return 0, 0

    # -- faults -----------------------------------------------------------------------------
    def begin(self, f: Fault) -> None:
        k = f.kind
        if k == "broker_restart_persist":
            self.broker.stop(signal.SIGTERM)
            self.broker.start(persist=True)
        elif k == "broker_restart_forget":
            self.broker.forget()
            self.broker.start(persist=False)
        elif k == "broker_hang":
            self.broker.pause()
        elif k == "platform_kill":
            self.platforms[0].signal(signal.SIGKILL)
        elif k == "platform_pause":
            self.platforms[-1].pause()
        elif k in ("platform_away", "cap_outage"):
            for p in self.platforms:
                p.signal(signal.SIGINT)
            if k == "cap_outage":
                _q, dropped = self.outbox()
                wait_for(lambda: self.outbox()[1] > dropped, 30 + CAP * 2.5, 0.5)
        elif k == "agent_kill":
            self.agent.signal(signal.SIGKILL)
        elif k == "outbox_deleted_running":
            with contextlib.suppress(FileNotFoundError):
                (self.data / "outbox.db").unlink()
        elif k == "outbox_deleted_stopped":
            self.agent.signal(signal.SIGTERM)
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    (self.data / f"outbox.db{suffix}").unlink()
        elif k == "outbox_corrupt":
            self.agent.signal(signal.SIGKILL)
            p = self.data / "outbox.db"
            if p.exists():              # a card that lost the file's first page and its WAL
                with open(p, "r+b") as fh:
                    fh.write(b"\x5a" * 4096)
                for suffix in ("-wal", "-shm"):
                    with contextlib.suppress(FileNotFoundError):
                        (self.data / f"outbox.db{suffix}").unlink()
        elif k in ("model_crash", "model_hang"):
            pid = self.model_process()
            f.note = "" if pid else "no model process (the agent was down)"
            if pid:
                f.pid = pid
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSEGV if k == "model_crash" else signal.SIGSTOP)
        elif k in ("disk_full", "disk_full_stop"):
            with contextlib.suppress(OSError), open(self.filler, "wb") as fh:
                while True:
                    fh.write(b"\0" * 65536)
            if k == "disk_full_stop":   # what waits in memory then is counted, not lost
                wait_for(lambda: "holding messages in memory" in self.tail(self.agent.log),
                         10, 0.2)
                self.agent.signal(signal.SIGTERM)
        elif k == "state_forged":
            # anyone may publish the STATE on a broker without ACL: once, not retained,
            # "offline", stamped years ahead or within the poles' tolerance
            ahead = 10 * 365 * 86400_000 if int(f.at * 10) % 2 else 100_000
            self.publish([(f"polelink/STATE/{HOST_ID}", json.dumps(
                {"online": False, "timestamp": int(time.time() * 1000) + ahead}))])
        elif k == "duplicate_pole":
            self.twin.start()
        elif k == "command_burst":
            from agent.uplink.commands import new_command

            n = BURST[0 if self.short else 1]
            self.publish([(f"polelink/{SITE}/{DEVICE}/cmd", json.dumps(new_command(
                "ping", correlation_id=f"burst-{f.at:.1f}-{i}"))) for i in range(n)])
        elif k == "row_corrupt":
            f.note = "" if self.corrupt_row() else "no row but traffic queued"
        f.active = True

    def publish(self, messages: list[tuple[str, str]]) -> None:
        """Publish (QoS 1, not retained) from a client of no pole and no platform."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                        protocol=mqtt.MQTTv5)
        try:
            c.connect("127.0.0.1", self.broker.port, 10)
        except OSError:
            return                      # the broker is down (another fault): nothing sent
        c.loop_start()
        try:
            infos = [c.publish(t, p, qos=1) for t, p in messages]
            end = time.monotonic() + 10
            while time.monotonic() < end and not all(i.is_published() for i in infos):
                time.sleep(0.05)
        finally:
            c.disconnect()
            c.loop_stop()

    def corrupt_row(self) -> bool:
        """A queued row that is not traffic (health, an event, a command's answer) keeps
        its braces and msg_id but is no longer JSON (a torn write): the pole must
        quarantine it, never publish it."""
        p = self.data / "outbox.db"
        try:
            db = sqlite3.connect(p, timeout=5)
            try:
                row = db.execute("SELECT id, payload FROM outbox WHERE topic NOT LIKE "
                                 "'%/traffic/%' ORDER BY id DESC LIMIT 1").fetchone()
                if row is None:
                    return False
                db.execute("UPDATE outbox SET payload=? WHERE id=?",
                           (bytes(row[1])[:-1] + b",,}", row[0]))
                db.commit()
                return True
            finally:
                db.close()
        except sqlite3.Error:
            return False

    def end(self, f: Fault) -> None:
        k = f.kind
        if k == "broker_hang":
            self.broker.resume()
        elif k == "platform_kill":
            self.platforms[0].start()
        elif k == "platform_pause":
            self.platforms[-1].resume()
        elif k in ("platform_away", "cap_outage"):
            for p in self.platforms:
                p.start()
        elif k in ("agent_kill", "outbox_deleted_stopped", "outbox_corrupt"):
            self.agent.start()
        elif k in ("disk_full", "disk_full_stop"):
            with contextlib.suppress(FileNotFoundError):
                self.filler.unlink()
            if k == "disk_full_stop":
                self.agent.start()
        elif k == "duplicate_pole":
            self.twin.signal(signal.SIGTERM)
        elif k == "model_hang" and f.pid:   # killed by the agent at its deadline, or not
            with contextlib.suppress(ProcessLookupError):
                os.kill(f.pid, signal.SIGCONT)
        f.active = False

    def model_process(self) -> int | None:
        """The pid of the agent's model process (``agent.vision.detect.host``), if any."""
        if not self.agent.running:
            return None
        from bench.agent_run import children

        for k in children(self.agent.proc.pid):  # type: ignore[union-attr]
            with contextlib.suppress(OSError):
                if b"agent.vision.detect.host" in Path(f"/proc/{k}/cmdline").read_bytes():
                    return k
        return None

    def heal(self) -> None:
        """Whatever a fault left broken (a process that died by itself included)."""
        if self.broker.proc is None or self.broker.proc.poll() is not None:
            self.broker.start()
        self.broker.resume()
        for p in self.platforms:
            p.resume()
            if not p.running:
                p.start()
        if self.twin.running:
            self.twin.signal(signal.SIGTERM)
        self.agent.resume()
        if not self.agent.running:
            if self.agent.proc is not None:     # it ended by itself: the promise is broken
                self.unexpected_exits.append(self.agent.proc.returncode)
            self.agent.start()
        with contextlib.suppress(FileNotFoundError):
            self.filler.unlink()

    # -- a schedule -------------------------------------------------------------------------
    def draw(self, rng: random.Random, short: bool) -> list[Fault]:
        """Faults with start times. Most schedules start with an outage long enough to
        leave a backlog and inject the next fault during it or just as it ends (during the
        replay); the others draw faults that overlap, follow each other at once, or come
        later. A fault is drawn only among kinds whose process no earlier fault holds then.
        The draw depends on the seed alone (not on timing)."""
        n = rng.randint(1, 2) if short else rng.randint(2, 4)
        out: list[Fault] = []
        t = rng.uniform(0.5, 3.0)

        def free_kinds(at: float) -> list[str]:
            held = {TARGET[f.kind] for f in out if f.at <= at < f.at + f.hold}
            return [k for k in self.faults if TARGET[k] not in held]

        outages = [k for k in OUTAGES if k in self.faults]
        if outages and rng.random() < 0.6:
            hold = rng.uniform(8, 12) if short else rng.uniform(8, 25)
            out.append(Fault(rng.choice(outages), t, hold))
            # the next fault strikes during the outage, or just as it ends (the replay)
            t += rng.uniform(3, hold - 2) if rng.random() < 0.5 else hold + rng.uniform(0.05, 0.6)
            n = max(1, n - 1)
        for _ in range(n):
            kinds = free_kinds(t)
            if not kinds:
                break
            kind = rng.choice(kinds)
            hold = 0.0 if kind in INSTANT else rng.uniform(2, 8 if short else 15)
            out.append(Fault(kind, t, hold))
            # next: overlapping this one, right after its end (its replay), or later
            t += rng.choice((rng.uniform(0.2, hold or 1), hold + rng.uniform(0, 1.5),
                             hold + rng.uniform(2, 6)))
        return out

    def phase(self, f: Fault, faults: list[Fault], now: float) -> set[str]:
        others = [g for g in faults if g is not f and g.ended_at]
        out = set()
        if any(g.active for g in faults if g is not f) or \
                any(now - g.ended_at < 5 for g in others):
            out.add("recovery")
        queued, _ = self.outbox()
        if queued > 1 and any(g.ended_at for g in faults if g is not f):
            out.add("replay")
        return out or {"idle"}

    def run_schedule(self, rng: random.Random, short: bool,
                     plan: list[Fault] | None = None) -> tuple[list[Fault], dict]:
        self.short = short
        self.set_consumers(rng.choice((1, 2)))
        faults = plan if plan is not None else self.draw(rng, short)
        events = sorted([(f.at, 0, i) for i, f in enumerate(faults)]
                        + [(f.at + f.hold, 1, i) for i, f in enumerate(faults)])
        t0 = time.monotonic()
        busy: dict[str, Fault] = {}
        for at, what, i in events:
            f = faults[i]
            delay = t0 + at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            target = TARGET[f.kind]
            if what == 0:
                if target in busy:              # one fault at a time per process
                    f.note = f"skipped: {busy[target].kind} holds the {target}"
                    continue
                f.phases = self.phase(f, faults, time.monotonic())
                self.begin(f)
                if f.hold:
                    busy[target] = f
            elif f.active:
                self.end(f)
                f.ended_at = time.monotonic()
                for k, v in list(busy.items()):
                    if v is f:
                        del busy[k]
            if not f.hold and f.active:
                f.active, f.ended_at = False, time.monotonic()
        self.heal()
        return faults, self.check()

    # -- the invariant ----------------------------------------------------------------------
    def check(self) -> dict[str, Any]:
        """Wait until every interval the pole wrote is stored or named by an alarm."""
        # the pole works again: it closes a new interval after the faults (and its backlog)
        before = set(self.records())
        wait_for(lambda: set(self.records()) - before, 2 * INTERVAL_S + 40, 0.5)
        want = self.records()
        t_end = time.monotonic() + SETTLE_S
        drained = 0         # seconds in a row the pole's outbox was empty
        while True:
            stored, alarms = self.stored(), self.alarms()
            missing = {k: r for k, r in want.items() if k not in stored}
            unexplained = {k: r for k, r in missing.items() if not self.excused(r, alarms)}
            # an empty outbox has nothing more to send: what is missing now never comes;
            # and until it is empty, an alarm naming a loss may still be on its way
            drained = drained + 1 if self.outbox()[0] == 0 else 0
            if (not unexplained and drained) or drained >= 5 or time.monotonic() > t_end:
                break
            time.sleep(1)
        dups = {k: n for k, n in stored.items() if n > 1}
        exits, self.unexpected_exits = self.unexpected_exits, []
        return {"agent_exited": exits, "intervals": len(want), "stored": sum(1 for k in want if k in stored),
                "lost_silently": sorted(unexplained), "lost_reported": len(missing)
                - len(unexplained), "duplicates": sorted(dups), "invalid": self.invalid()[:5]}


def read_query(db: Path, sql: str, args: tuple = ()) -> list[tuple]:
    """Rows from a database another process writes (read-only; retried while locked)."""
    if not db.exists():
        return []
    for _ in range(20):
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
            try:
                return con.execute(sql, args).fetchall()
            finally:
                con.close()
        except sqlite3.OperationalError:
            time.sleep(0.2)
    return []


def parse_plan(text: str) -> list[Fault]:
    """``KIND@AT[+HOLD],…`` → faults (ValueError with what is wrong)."""
    out = []
    for item in text.split(","):
        kind, _, when = item.strip().partition("@")
        at, _, hold = when.partition("+")
        if kind not in FAULTS:
            raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(FAULTS)}")
        try:
            f = Fault(kind, float(at), float(hold or 0))
        except ValueError:
            raise ValueError(f"{item!r}: write KIND@SECONDS[+HOLD_SECONDS]") from None
        if f.at < 0 or f.hold < 0 or (kind in INSTANT and f.hold):
            raise ValueError(f"{item!r}: negative time, or a hold for an instant fault")
        out.append(f)
    return out


def run(schedules: int, seed: int, ack: str = "platform", faults: tuple[str, ...] = FAULTS,
        short: bool = False, keep: Path | None = None, out=sys.stdout,
        plan: str | None = None, broker_queue: int = 20_000,
        replay: int | None = None) -> dict[str, Any]:
    """Run a campaign; returns the summary (also printed, last as one JSON line)."""
    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="polelink-campaign-"))
    work.mkdir(parents=True, exist_ok=True)
    c = Campaign(work, ack, faults, out, broker_queue)
    per: dict[str, Counter] = defaultdict(Counter)
    failed: list[dict[str, Any]] = []
    totals = Counter()
    t_start = time.monotonic()
    interrupted = False
    try:
        c.start()
        for i in range(schedules):
            if stop_requested.is_set():
                interrupted = True
                break
            s_seed = replay if replay is not None else seed * 100_003 + i
            rng = random.Random(s_seed)
            t_sched = time.monotonic()
            faults_done, res = c.run_schedule(rng, short, parse_plan(plan) if plan else None)
            for f in faults_done:
                if f.note:
                    per[f.kind]["skipped"] += 1
                    continue
                for ph in f.phases:
                    per[f.kind][ph] += 1
            totals["schedules"] += 1
            totals["lost_reported"] += res["lost_reported"]
            bad = res["lost_silently"] or res["duplicates"] or res["invalid"] \
                or res["agent_exited"]
            line = (f"schedule {i + 1}/{schedules} seed {s_seed} consumers {c.consumers}: "
                    + ", ".join(f"{f.kind}@{f.at:.1f}s+{f.hold:.1f}s[{'/'.join(sorted(f.phases))}]"
                                + (f" ({f.note})" if f.note else "") for f in faults_done)
                    + f" -> {res['stored']}/{res['intervals']} stored, "
                    f"{res['lost_reported']} lost and reported, "
                    f"{len(res['lost_silently'])} lost silently, "
                    f"{len(res['duplicates'])} duplicated ({time.monotonic() - t_sched:.0f} s)")
            print(("FAIL " if bad else "ok   ") + line, file=out, flush=True)
            if bad:
                failed.append({"seed": s_seed, "schedule": i + 1, **{
                    k: [list(x) if isinstance(x, tuple) else x for x in v][:10]
                    for k, v in res.items() if k in ("lost_silently", "duplicates", "invalid",
                                                     "agent_exited")}})
        final = res
        msgs = c._query("SELECT COUNT(*) FROM messages WHERE device=? AND data=1", (DEVICE,))
        totals["intervals"] = final["intervals"]
        totals["lost_silently"] = len(final["lost_silently"])
        totals["duplicates"] = len(final["duplicates"])
        totals["messages_stored"] = msgs[0][0] if msgs else 0
        totals["invalid"] = len(c.invalid())
    finally:
        c.close()
    print("\nfaults injected, per phase" + (f" (not run: {', '.join(c.skipped)})"
                                            if c.skipped else "") + ":", file=out)
    for kind in FAULTS:
        if kind in per:
            print(f"  {kind:24s} " + "  ".join(f"{ph} {per[kind][ph]}" for ph in
                                                ("idle", "replay", "recovery", "skipped")),
                  file=out)
    summary = {"schedules": totals["schedules"], "seed": seed, "ack": ack,
               "intervals": totals["intervals"], "messages_stored": totals["messages_stored"],
               "lost_silently": totals["lost_silently"], "lost_reported": totals["lost_reported"],
               "duplicates_stored": totals["duplicates"], "invalid": totals["invalid"],
               "failed_seeds": [f["seed"] for f in failed],
               "phases": {k: dict(v) for k, v in per.items()},
               "seconds": round(time.monotonic() - t_start, 1), "work": str(work),
               "interrupted": interrupted}
    for f in failed:
        print(f"FAILED schedule {f['schedule']} (seed {f['seed']}): {json.dumps(f)}", file=out)
    print(json.dumps(summary), file=out, flush=True)
    if not keep and not failed:
        shutil.rmtree(work, ignore_errors=True)
    return summary


def stop_on_signals(name: str) -> None:
    """Ctrl-C or SIGTERM: set :data:`stop_requested` (the campaign finishes the schedule
    under way and prints what it found); a second one stops at once (KeyboardInterrupt)."""
    def stop(_sig: int, _frame: object) -> None:
        if stop_requested.is_set():
            raise KeyboardInterrupt
        stop_requested.set()
        print(f"{name}: stopping after this schedule (again to stop at once)",
              file=sys.stderr, flush=True)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def main(argv: list[str] | None = None) -> int:
    """``python bench/campaign.py``; exit 0 when every schedule held."""
    p = argparse.ArgumentParser(prog="python bench/campaign.py", description=__doc__.split("\n")[0])
    p.add_argument("--schedules", type=int, default=100, help="how many (default 100)")
    p.add_argument("--seed", type=int, default=1,
                   help="the campaign's seed (schedule i gets seed x 100003 + i)")
    p.add_argument("--ack", choices=("platform", "puback"), default="platform",
                   help="platform: the platform acknowledges what it stored (2.7); puback: "
                        "it does not, poles free messages on the broker's PUBACK (expected to fail)")
    p.add_argument("--faults", help=f"comma-separated kinds (default all: {','.join(FAULTS)})")
    p.add_argument("--short", action="store_true",
                   help="short faults, 1-2 per schedule, no cap outage (make test's mode)")
    p.add_argument("--keep", type=Path, help="work in this folder and keep it")
    p.add_argument("--replay", type=int, metavar="SEED",
                   help="run the one schedule a failing line named by its seed")
    p.add_argument("--plan", help="run this schedule (KIND@AT[+HOLD],...) instead of drawn ones")
    p.add_argument("--broker-queue", type=int, default=20_000, metavar="N",
                   help="mosquitto's max_queued_messages per client (default 20000)")
    a = p.parse_args(argv)
    if not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()):
        print("campaign: mosquitto is not installed (Debian: apt-get install mosquitto)",
              file=sys.stderr)
        return 2
    kinds = tuple(a.faults.split(",")) if a.faults else (SHORT_FAULTS if a.short else FAULTS)
    unknown = [k for k in kinds if k not in FAULTS]
    if unknown or a.schedules < 1:
        p.error(f"unknown fault kind(s) {unknown}; known: {', '.join(FAULTS)}" if unknown
                else "--schedules must be at least 1")
    if a.plan:
        try:
            parse_plan(a.plan)
        except ValueError as e:
            p.error(f"--plan: {e}")
        if "disk_full" in a.plan and os.geteuid() != 0:
            p.error("--plan: disk_full needs root (to mount a tmpfs)")
    if a.broker_queue < 1:
        p.error("--broker-queue must be at least 1")
    stop_on_signals("campaign")
    try:
        s = run(1 if a.replay is not None else a.schedules, a.seed, a.ack, kinds, a.short,
                a.keep, plan=a.plan, broker_queue=a.broker_queue, replay=a.replay)
    except KeyboardInterrupt:
        print("campaign: interrupted", file=sys.stderr)
        return 130
    return 0 if not s["failed_seeds"] and not s["lost_silently"] and not s["duplicates_stored"] \
        and not s["invalid"] else 1


if __name__ == "__main__":
    sys.exit(main())
