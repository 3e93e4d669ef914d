"""The uplink's edge cases through the real processes (issue 24): a forged or stale
platform STATE, several platform consumers, the platform under the broker ACL that
``agent broker-acl`` writes, two poles with one device id, a burst of commands, what a
full disk held in memory at a stop, and a stored row that is not what it claims.

Each runs ``python -m agent run`` against a real mosquitto and the platform simulator
(in this process, or ``python -m sim.platform`` where a consumer must die).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bench.campaign import read_query as query
from sim.platform import PlatformSim
from tests.conftest import ROOT
from tests.helpers import SLACK_S, fill_disk, small_filesystem, wait_until
from tests.mqtt_broker import Broker

pytestmark = pytest.mark.slow

DEVICE = "pole-7"


def pole_config(tmp: Path, sim_clip: tuple[Path, dict] | None, port: int, extra: str = "",
                lamps: str | None = None, device: str = DEVICE, data: Path | None = None
                ) -> Path:
    """A pole on the simulated clip, or a lighting-only pole on the DALI emulator at
    ``lamps``; its uplink to ``port`` with ``extra`` lines under ``mqtt:``."""
    data = data or tmp
    data.mkdir(parents=True, exist_ok=True)
    if sim_clip is not None:
        video, gt = sim_clip
        x1, y1, x2, y2 = gt["line"]
        cams = f"""cameras:
  - name: cam1
    source: {{kind: file, path: {video}, loop: true, realtime: true}}
    detector: {{model: {ROOT / 'models' / 'simnet.yaml'}, threads: 1}}
    lines: [{{name: main, points: [[{x1}, {y1}], [{x2}, {y2}]]}}]
"""
    else:
        cams = f"""cameras: []
lighting:
  latitude: 0.0
  longitude: 0.0
  model: {ROOT / 'models' / 'dimming.md'}
  overrides_path: {data / 'overrides.json'}
  buses: [{{name: dali1, kind: dali, port: {lamps}, codec: hat}}]
  groups: [{{name: street, bus: dali1, address: broadcast}}]
"""
    cfg = data / "pole.yaml"
    cfg.write_text(f"""device: {{id: {device}, site: lab}}
{cams}aggregates: {{interval_s: 10, path: {data / 'agg.jsonl'}}}
clock: {{sources: [assume_synced]}}
mqtt:
  port: {port}
  keepalive_s: 5
  reconnect_min_s: 0.2
  reconnect_max_s: 2
  outbox_path: {data / 'outbox.db'}
{extra}""")
    return cfg


class Pole:
    """One ``agent run`` process and its files."""

    def __init__(self, cfg: Path, log: Path) -> None:
        self.cfg, self.log = cfg, log
        self.data = cfg.parent
        self.proc: subprocess.Popen | None = None

    def start(self) -> Pole:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(self.cfg), "-q"],
            cwd=ROOT, stdout=self.log.open("a"), stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(40)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def records(self) -> list[dict]:
        p = self.data / "agg.jsonl"
        return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] \
            if p.exists() else []


def delivered(platform: PlatformSim) -> set[str]:
    return {m["samplingPeriod"]["start"] for m in platform.store.latest("traffic", 100_000)}


def events(platform: PlatformSim, name: str) -> list[dict]:
    return [m for m in platform.store.latest("event", 100_000) if m["event"] == name]


def raw_client(port: int, user: str | None = None, password: str | None = None
               ) -> mqtt.Client:
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if user:
        c.username_pw_set(user, password)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


# -- commands under load --------------------------------------------------------------------
def test_a_burst_of_2000_commands_leaves_no_valid_command_unanswered(
        tmp_path: Path, sim_clip: tuple[Path, dict]) -> None:
    """1,800 signed commands from the platform and 200 bad ones from a stranger, at once.
    The pole takes 20 at a time (MQTT 5 Receive Maximum, each acknowledged once answered);
    the broker (default queue of 1,000 per client) holds or drops the rest, and the
    platform sends every unanswered one again: every valid command ends answered ``ok``,
    exactly once run."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pub = tmp_path / "verify.pem"
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    from sim.dali import DaliEmulator, make_gear

    broker = Broker(tmp_path).start()
    emu = DaliEmulator(make_gear(1), "hat").start()
    platform = PlatformSim(port=broker.port, signing_key=key, retry_s=3).start()
    cfg = pole_config(tmp_path, None, broker.port, f"  commands: {{verify_key: {pub}}}\n",
                      lamps=emu.path)
    pole = Pole(cfg, tmp_path / "agent.log").start()
    stranger = raw_client(broker.port)
    try:
        assert wait_until(lambda: platform.store.summary().get(DEVICE) or not pole.alive,
                          60), pole.output()
        assert pole.alive, pole.output()
        cids = []
        for i in range(2000):
            if i % 10 == 9:             # unsigned, or not JSON at all
                stranger.publish(f"polelink/lab/{DEVICE}/cmd",
                                 b"{not json" if i % 20 == 9 else json.dumps(
                                     {"schema": "polelink/command/2", "command": "ping",
                                      "correlation_id": f"x{i}", "expires":
                                      "2099-01-01T00:00:00Z"}), qos=1)
            else:
                cids.append(platform.command({"device": DEVICE, "site": "lab",
                                              "command": "ping"}, ttl_s=600)["correlation_id"])

        def answered() -> int:
            with platform._lock:
                return sum(1 for c in cids if c in platform.responses)
        assert wait_until(lambda: answered() == len(cids), 240 + 4 * SLACK_S), (
            f"{answered()} of {len(cids)} answered; busy answers {platform.busy_answers}; "
            + pole.output()[-2000:])
        with platform._lock:
            results = [platform.responses[c] for c in cids]
        assert all(r["result"] == "ok" for r in results), \
            [r for r in results if r["result"] != "ok"][:3]
        # every answer (busy ones included) reached the platform: no seq is missing
        assert wait_until(lambda: platform.store.summary()[DEVICE]["gaps"] == 0, 30), \
            platform.store.summary()[DEVICE]
        assert pole.alive and "Traceback" not in pole.output()
        assert "command queue full" not in pole.output()
    finally:
        stranger.loop_stop()
        pole.stop()
        platform.stop()
        emu.stop()
        broker.stop()


# -- the platform's STATE ---------------------------------------------------------------------
def now_ms() -> int:
    return int(time.time() * 1000)


def log_count(pole: Pole, text: str) -> int:
    return pole.output().count(text)


def test_a_forged_state_cannot_hold_the_pole(tmp_path: Path, sim_clip) -> None:
    """A broker without ACL lets anyone publish the platform's STATE. A forged ``offline``
    stamped years ahead is ignored (no remembered timestamp can hide the real STATEs after
    it); one stamped within the tolerance holds the pole only until the platform, which
    watches its own STATE topic, answers it. Nothing is lost either way."""
    broker = Broker(tmp_path).start()
    platform = PlatformSim(port=broker.port, db=str(tmp_path / "platform.db")).start()
    pole = Pole(pole_config(tmp_path, sim_clip, broker.port, "  primary_host: platform\n"),
                tmp_path / "agent.log").start()
    forger = raw_client(broker.port)
    topic = "polelink/STATE/platform"
    try:
        assert wait_until(lambda: delivered(platform), 60), pole.output()[-2000:]
        for ahead_ms, said in ((10 * 365 * 86400_000, "ahead of this pole's clock"),
                               (100_000, "is offline: holding")):
            n = len(pole.records())
            before = log_count(pole, said)
            forger.publish(topic, json.dumps({"online": False, "timestamp": now_ms()
                                              + ahead_ms}), qos=1).wait_for_publish(5)
            assert wait_until(lambda s=said, b=before: log_count(pole, s) > b, 10), \
                pole.output()[-2000:]
            # intervals closed after the forgery reach the platform
            assert wait_until(lambda m=n: len(pole.records()) >= m + 1, 30)
            want = {r["interval_start"] for r in pole.records()}
            assert wait_until(lambda w=want: w <= delivered(platform), 30 + SLACK_S), \
                (sorted(want - delivered(platform)), pole.output()[-2000:])
        assert platform.speaker.announcements >= 2         # it answered the forgery
        assert wait_until(lambda: platform.store.summary()[DEVICE]["gaps"] == 0, 30)
        assert pole.alive and "Traceback" not in pole.output()
    finally:
        forger.loop_stop()
        pole.stop()
        platform.stop()
        broker.stop()


def test_a_new_connection_forgets_the_state_timestamp_it_remembered(
        tmp_path: Path, sim_clip) -> None:
    """The pole remembers the newest STATE timestamp it saw, to ignore stale wills. A
    platform that starts afresh on a machine whose clock is a minute behind (its own
    store: its timestamps start at its clock) is older than that while the pole stays
    connected; on the next connection the pole starts from nothing and follows it."""
    broker = Broker(tmp_path).start()
    first = PlatformSim(port=broker.port).start()
    pole = Pole(pole_config(tmp_path, sim_clip, broker.port, "  primary_host: platform\n"),
                tmp_path / "agent.log").start()
    second: PlatformSim | None = None
    try:
        assert wait_until(lambda: delivered(first), 60), pole.output()[-2000:]
        first.stop()                                        # clean: offline, the pole holds
        assert wait_until(lambda: "is offline: holding" in pole.output(), 10)
        second = PlatformSim(port=broker.port)              # a new store, a clock behind
        lease = second.speaker.lease
        stamp = lease.next_ts
        lease.next_ts = lambda now_ms=None: stamp(int(time.time() * 1000) - 60_000)  # type: ignore[method-assign]
        second.start()
        assert wait_until(lambda: second.speaker.speaking, 10)
        time.sleep(3)
        assert not delivered(second), "the pole followed a STATE older than one it had seen"
        sending = log_count(pole, "is online: sending")
        broker.restart()                                    # a new connection
        assert wait_until(lambda: log_count(pole, "is online: sending") > sending, 40), \
            pole.output()[-2000:]
        assert wait_until(lambda: delivered(second), 30 + SLACK_S), pole.output()[-2000:]
    finally:
        pole.stop()
        if second is not None:
            second.stop()
        broker.stop()


class Consumer:
    """``python -m sim.platform`` sharing one subscription and one database."""

    def __init__(self, tmp: Path, port: int, name: str, extra: list[str] | None = None,
                 env: dict[str, str] | None = None, share: bool = True) -> None:
        self.tmp, self.port, self.name, self.share = tmp, port, name, share
        self.extra, self.env = extra or [], env or {}
        self.log = tmp / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Consumer:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sim.platform", "--broker", f"127.0.0.1:{self.port}",
             "--http", "127.0.0.1:0", "--db", str(self.tmp / "platform.db"),
             *(["--share", "ingest", "--client-id", self.name] if self.share else []),
             "--token", "t", *self.extra],
            cwd=ROOT, stdout=self.log.open("a"), stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def stored_intervals(db: Path) -> set[str]:
    return {json.loads(p)["samplingPeriod"]["start"] for (p,) in query(
        db, "SELECT payload FROM messages WHERE kind='traffic' AND valid=1")}


def lease_holder(db: Path) -> str | None:
    rows = query(db, "SELECT holder FROM lease WHERE name='state/platform' AND expires > ?",
                 (time.time(),))
    return rows[0][0].split("/")[0] if rows else None      # (client id/pid.random)


def test_one_consumer_speaks_for_the_platform_and_another_takes_over(
        tmp_path: Path, sim_clip) -> None:
    """Three platform processes share one subscription and one database. One that does
    not hold the STATE lease dies: the pole never hears ``offline``. The one that holds it
    dies: its will says offline, another takes the lease over within its ttl (3 s) and
    says online; the pole resumes. Every interval ends in the store."""
    broker = Broker(tmp_path).start()
    db = tmp_path / "platform.db"
    consumers = {n: Consumer(tmp_path, broker.port, n).start() for n in ("c1", "c2", "c3")}
    # (what the broker had handed a consumer that died is sent again after ack_timeout_s)
    pole = Pole(pole_config(tmp_path, sim_clip, broker.port,
                            "  primary_host: platform\n  ack_timeout_s: 4\n"),
                tmp_path / "agent.log").start()
    try:
        assert wait_until(lambda: stored_intervals(db), 60), pole.output()[-2000:]
        holder = lease_holder(db)
        assert holder in consumers
        others = [n for n in consumers if n != holder]
        holding = log_count(pole, "is offline: holding")
        consumers[others[0]].kill()                         # not the speaker: silence
        stored = len(stored_intervals(db))
        assert wait_until(lambda: len(stored_intervals(db)) > stored, 30 + SLACK_S)
        assert log_count(pole, "is offline: holding") == holding, pole.output()[-2000:]
        sending = log_count(pole, "is online: sending")
        consumers[holder].kill()                            # the speaker: its will, then
        assert wait_until(lambda: lease_holder(db) == others[1], 10 + SLACK_S)  # the other
        assert wait_until(lambda: log_count(pole, "is online: sending") > sending,
                          15 + SLACK_S), pole.output()[-2000:]
        want = {r["interval_start"] for r in pole.records()}
        assert wait_until(lambda: want <= stored_intervals(db), 40 + SLACK_S), \
            (sorted(want - stored_intervals(db)), pole.output()[-2000:])
        assert pole.alive and "Traceback" not in pole.output()
    finally:
        pole.stop()
        for c in consumers.values():
            c.stop()
        broker.stop()


# -- the platform under the broker's ACL ------------------------------------------------------
def test_the_platform_simulator_runs_under_the_acl_agent_broker_acl_writes(
        tmp_path: Path, sim_clip) -> None:
    """The shipped mosquitto config (passwords, ACL, the username as client id), the ACL
    that ``agent broker-acl`` writes for the pole with its defaults, and ``python -m
    sim.platform --username platform`` with its defaults: the platform speaks its STATE
    (as ``platform-state``), the pole sends, the platform stores; no refusal anywhere."""
    import shutil

    from tests.test_acl import shipped_conf

    exe = shutil.which("mosquitto_passwd")
    if exe is None:
        pytest.skip("mosquitto_passwd is not installed")
    passwords = {DEVICE: "pw-pole", "platform": "pw-platform", "platform-state": "pw-state"}
    for i, (user, pw) in enumerate(passwords.items()):
        subprocess.run([exe, "-b", *(["-c"] if i == 0 else []), str(tmp_path / "passwd"),
                        user, pw], check=True, capture_output=True)
    broker = Broker(tmp_path)
    (tmp_path / "pole").mkdir()
    (tmp_path / "pole" / "secrets.yaml").write_text("mqtt_password: pw-pole\n")
    (tmp_path / "pole" / "secrets.yaml").chmod(0o600)
    cfg = pole_config(tmp_path / "pole", sim_clip, broker.port,
                      "  primary_host: platform\n  username: pole-7\n"
                      "  password: !secret mqtt_password\n")
    acl = subprocess.run([sys.executable, "-m", "agent", "broker-acl", str(cfg), "-o",
                          str(tmp_path / "acl")], cwd=ROOT, capture_output=True, text=True)
    assert acl.returncode == 0, acl.stderr
    assert "platform-state" in acl.stderr              # it names every user to create
    broker.conf.write_text(shipped_conf(tmp_path, broker.port))
    broker.start()
    platform = Consumer(tmp_path, broker.port, "ingest", extra=["--username", "platform"],
                        env={"POLELINK_PLATFORM_PASSWORD": "pw-platform",
                             "POLELINK_PLATFORM_STATE_PASSWORD": "pw-state"},
                        share=False).start()
    pole = Pole(cfg, tmp_path / "agent.log").start()
    try:
        db = tmp_path / "platform.db"
        assert wait_until(lambda: stored_intervals(db), 60), \
            (pole.output()[-1500:], platform.log.read_text()[-1500:])
        assert "is online: sending" in pole.output()
        text = pole.output() + platform.log.read_text()
        assert "refused" not in text and "not authorized" not in text.lower(), text[-2000:]
    finally:
        pole.stop()
        platform.stop()
        broker.stop()


# -- two poles with one device id -------------------------------------------------------------
TAKEOVER_LINE = re.compile(r"^(\S+ \S+) ERROR agent\.uplink\.mqtt: mqtt: the broker closed this "
                           r"connection, most likely because another client connected with "
                           r"client id polelink-pole-7 \(.*?; (\d+) in a row\).*reconnecting "
                           r"in (\d+) s", re.MULTILINE)


def test_two_poles_with_one_device_id_back_off_and_say_why(tmp_path: Path) -> None:
    """A copied card: two poles with device id pole-7 on one broker. Each connection takes
    the other's session over (MQTT 5 reason 0x8E). Each pole logs why, raises one alarm,
    and waits 2 s, then (``takeover_wait_max_s: 3`` here, 60 s by default) 3 s before each
    reconnect: a few connects a pole, not hundreds a minute."""
    from datetime import datetime

    from sim.dali import DaliEmulator, make_gear

    broker = Broker(tmp_path).start()
    platform = PlatformSim(port=broker.port).start()
    emus = [DaliEmulator(make_gear(1), "hat").start() for _ in range(2)]
    poles = [Pole(pole_config(tmp_path, None, broker.port, "  takeover_wait_max_s: 3\n",
                              lamps=emus[i].path, data=tmp_path / f"pole{i}"),
                  tmp_path / f"agent{i}.log") for i in range(2)]
    try:
        for p in poles:
            p.start()
        assert wait_until(lambda: all(len(TAKEOVER_LINE.findall(p.output())) >= 5
                                      for p in poles) or not all(p.alive for p in poles),
                          90 + 4 * SLACK_S), [p.output()[-1500:] for p in poles]
        for p in poles:
            lines = TAKEOVER_LINE.findall(p.output())
            runs = [int(n) for _t, n, _w in lines]
            waits = [int(w) for _t, _n, w in lines]
            assert runs == list(range(1, len(runs) + 1)), runs     # one run, counted
            assert waits[:5] == [2, 3, 3, 3, 3], waits             # 2, 4 (≤ 3), …, then max
            assert all(w == 3 for w in waits[4:]), waits
            stamps = [datetime.strptime(t, "%Y-%m-%d %H:%M:%S,%f").timestamp()
                      for t, _n, _w in lines]
            # from the 2nd take-over in a row on, never two connections 3 s apart or less
            assert all(b - a >= 3 for a, b in itertools.pairwise(stamps[1:])), stamps
            assert p.alive and "Traceback" not in p.output()
        connects = (tmp_path / "mosquitto.log").read_text().count("as polelink-pole-7")
        assert connects <= 40, connects                            # not 287 a minute
        alarms = [e for e in events(platform, "session_taken_over") if e["severity"] == "alarm"]
        assert wait_until(lambda: len([e for e in events(platform, "session_taken_over")
                                       if e["severity"] == "alarm"]) >= 1, 30)
        assert len(alarms) <= 2 and all("same device id" in a["detail"]["cause"]
                                        for a in alarms), alarms
    finally:
        for p in poles:
            p.stop()
        for e in emus:
            e.stop()
        platform.stop()
        broker.stop()


# -- a stop on a full disk --------------------------------------------------------------------
def test_what_a_full_disk_held_in_memory_at_a_stop_is_reported_at_the_next_start(
        tmp_path: Path) -> None:
    """The state folder's file system fills up; the disk-full alarm and a command's answer
    wait in memory; SIGTERM. The stop counts them into ``outbox.db.unwritten`` (its blocks
    allocated at start) and says so in one line; the next start, with room again, raises
    ``outbox_unwritten`` naming them. The command itself is answered all the same (the
    platform sends it again)."""
    from sim.dali import DaliEmulator, make_gear

    data = small_filesystem(tmp_path / "small", "2m")
    broker = Broker(tmp_path).start()
    emu = DaliEmulator(make_gear(1), "hat").start()
    platform = PlatformSim(port=broker.port, retry_s=2).start()
    pole = Pole(pole_config(tmp_path, None, broker.port, lamps=emu.path, data=data),
                tmp_path / "agent.log")
    try:
        pole.start()
        assert wait_until(lambda: platform.store.summary().get(DEVICE), 60), pole.output()
        assert (data / "outbox.db.unwritten").stat().st_size == 1024
        filler = fill_disk(data)
        assert wait_until(lambda: "holding messages in memory" in pole.output(), 60), \
            pole.output()[-2000:]
        cid = platform.command({"device": DEVICE, "site": "lab", "command": "ping"})[
            "correlation_id"]
        # the command ran: its replay record could not be written either
        assert wait_until(lambda: "replay window write failed" in pole.output(), 30), \
            pole.output()[-2000:]
        assert pole.stop() == 0
        line = next((ln for ln in pole.output().splitlines()
                     if "held in memory could not be written" in ln), "")
        assert "reported as outbox_unwritten at the next start" in line, pole.output()[-2000:]
        assert '"event"' in line and '"cmd/response"' in line, line
        filler.unlink()                                 # room again
        pole.start()

        def reported() -> list[dict]:
            return events(platform, "outbox_unwritten")
        assert wait_until(reported, 60), pole.output()[-2000:]
        [alarm] = reported()
        d = alarm["detail"]
        assert alarm["severity"] == "alarm" and d["count"] >= 2, d
        assert d["kinds"].get("event", 0) >= 1 and d["kinds"].get("cmd/response") == 1, d
        assert "outbox_degraded" in d["events"] and cid in d["correlationIds"], d
        assert wait_until(lambda: cid in platform.responses, 30)    # answered after all
        # the record is blank again once its event is on disk
        assert wait_until(lambda: not (data / "outbox.db.unwritten").read_bytes().strip(), 10)
        assert pole.alive and "Traceback" not in pole.output()
    finally:
        pole.stop()
        platform.stop()
        emu.stop()
        broker.stop()
        subprocess.run(["umount", "-l", str(data)], capture_output=True)


def test_a_state_the_platform_cannot_read_is_answered_too(tmp_path: Path) -> None:
    """A retained STATE stamped ``1e999`` (or not JSON at all) is no STATE a pole follows:
    the platform's speaker replaces it with its own at once (a hostile tester's: it once
    crashed the answer, and every pole that reconnected then held its data for good)."""
    broker = Broker(tmp_path).start()
    platform = PlatformSim(port=broker.port).start()
    seen: list[bytes] = []
    watcher = raw_client(broker.port)
    watcher.on_message = lambda _c, _u, m: seen.append(m.payload)
    watcher.subscribe("polelink/STATE/platform", qos=1)
    forger = raw_client(broker.port)
    try:
        assert wait_until(lambda: platform.speaker.speaking, 20)
        for bad in (b'{"online": false, "timestamp": 1e999}', b'{"online": true, '
                    b'"timestamp": Infinity}', b"\xff not json"):
            forger.publish("polelink/STATE/platform", bad, qos=1,
                           retain=True).wait_for_publish(5)
            assert wait_until(lambda b=bad: seen and seen[-1] != b
                              and json.loads(seen[-1])["online"] is True, 10), seen[-3:]
            time.sleep(1.1)                 # (the speaker answers at most once a second)
        assert "Traceback" not in (tmp_path / "mosquitto.log").read_text()
    finally:
        watcher.loop_stop()
        forger.loop_stop()
        platform.stop()
        broker.stop()
