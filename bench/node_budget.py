"""The lamp node's memory and flash budget: a full night, the hostile command set and a
24-hour outage, accelerated, in the MicroPython unix port with a given heap.

    python bench/node_budget.py [--heap 80K] [--smallest | --hostile] [--files] [--no-strace]

The node runs as a board runs it (``sim.nodestage``), signed commands on (``command_key``),
its clock a file running 1200 times fast, against mosquitto on loopback and the platform
simulator (acknowledging what it stores, ``mqtt.primary_host`` set):

1. **night**: 15:00 to 08:00 UTC in Hamburg (17 hours, 51 s);
2. **hostile commands** during it: signed valid, forged, unsigned, replayed; a valid signed
   command of about 1.2 KiB; 100 KiB retained and 50 KiB live; a retained ``set_override``
   waiting at a reconnection; 20 fuzzed payloads; 65 valid commands then a replay of the
   first;
3. **outage**: the broker down for 24 hours of node time (72 s), then back; the backlog
   drains.

It prints the node's health figures (``memAllocPeak``: the live heap after ``gc.collect()``;
the lowest ``memFree``), the loop passes that failed (``faults``: a MemoryError would show
there), commands answered ``not run: … (MemoryError)``, messages lost silently (every seq up
to the newest the node freed is delivered or named by ``outbox_overflow``), and the bytes the
node wrote to its flash files (``strace`` of its ``write`` calls to files under its state
folder; the output file, the unix port's stand-in for the PWM pin, is not flash): per
message (outbox record and pointer), and per day at the default periods (a report a minute,
health every 5 minutes, which also saves ``state.json``). ``--smallest`` runs the
hostile set alone at heaps from 40 KiB up by 8 KiB and names the smallest that answers every
command without a MemoryError. Ends with one JSON line.

The modules run in place from a ROM file system (``sim/nodestage.py --romfs``: the image
``mpremote romfs deploy`` writes to a board's romfs partition, mapped outside the heap as
the firmware maps it); ``--files`` measures them loaded into the heap from files instead.

Figures on the 64-bit unix port are not a board's: a MicroPython object there is 8-byte
words where an ESP32's are 4 (a small int or a pointer half the size; bytecode the same), so
the same code and data take roughly 1.5 to 2 times the heap they take on an ESP32.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.campaign import wait_for  # noqa: E402

MICROPYTHON = ROOT.parent / "shared" / "bin" / "micropython"
DEVICE, SITE = "node-0042", "harbour"
BASE = f"polelink/{SITE}/{DEVICE}"
START = 1797346800.0            # 2026-12-15 15:00 UTC
RATE = 1200
NIGHT_H, OUTAGE_H = 17, 24


class Rig:
    """mosquitto + platform simulator + the staged node (under strace when asked)."""

    def __init__(self, work: Path, heap: str, strace: bool, romfs: bool = True) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from sim.nodestage import stage
        from tests.mqtt_broker import Broker

        self.work, self.heap, self.strace, self.romfs = work, heap, strace, romfs
        self.key = Ed25519PrivateKey.generate()
        pub = self.key.public_key().public_bytes(serialization.Encoding.Raw,
                                                 serialization.PublicFormat.Raw)
        self.broker = Broker(work).start()
        self.path = stage(work / "board", romfs=romfs)
        (work / "state").mkdir()
        self.t0 = time.monotonic()
        (work / "clock.json").write_text(json.dumps({"epoch": START, "rate": RATE,
                                                     "synced": True}))
        self.cfg = work / "node.json"
        self.cfg.write_text(json.dumps({
            "device": DEVICE, "site": SITE, "latitude": 53.55, "longitude": 9.99,
            "tz": "CET-1CEST,M3.5.0,M10.5.0/3",
            "mqtt": {"host": "127.0.0.1", "port": self.broker.port, "keepalive": 10,
                     "primary_host": "ops"},
            "output": {"kind": "file", "path": str(work / "level")},
            "program": [{"at": "sunset", "offset_min": -10, "level": 100},
                        {"at": "23:00", "level": 50}, {"at": "05:00", "level": 80},
                        {"at": "sunrise", "offset_min": 10, "level": 0}],
            "state_dir": str(work / "state"), "tick_s": 0.05, "retry_s": 0.5,
            "report_s": 60, "health_s": 600, "max_ttl_s": 86400,
            "command_key": base64.b64encode(pub).decode()}))
        self.platform = self._platform()
        self.node: subprocess.Popen | None = None

    def node_clock(self) -> float:
        return START + (time.monotonic() - self.t0) * RATE

    def _platform(self) -> Any:
        from sim.platform import PlatformSim
        p = PlatformSim(port=self.broker.port, host_id="ops", signing_key=self.key,
                        db=str(self.work / "platform.db"), clock=self.node_clock).start()
        p.subscribed.wait(20)
        return p

    def start_node(self) -> None:
        board = self.work / "board"
        argv = [str(MICROPYTHON), "-X", f"heapsize={self.heap}",
                *([str(board / "romboot.py")] if self.romfs else []),
                str(board / "main.py"), str(self.cfg), "--clock", str(self.work / "clock.json")]
        if self.strace:
            argv = ["strace", "-f", "-qq", "-e", "trace=write,pwrite64", "-e", "signal=none",
                    "-y", "-s", "0", "-o", str(self.work / f"strace.{time.monotonic_ns()}"),
                    *argv]
        self.node = subprocess.Popen(argv, env={**os.environ, "MICROPYPATH": self.path},
                                     stdout=open(self.work / "node.log", "ab"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def kill_node(self, sig: int = signal.SIGKILL) -> None:
        """The node (and strace with it: its own process group)."""
        if self.node is not None and self.node.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.node.pid, sig)
            self.node.wait(10)

    def stop(self) -> None:
        self.kill_node(signal.SIGTERM)
        self.platform.stop()
        self.broker.stop()

    def restart_node(self) -> None:
        """A reset (the node subscribes again: what is retained on its topics comes)."""
        self.kill_node()
        self.start_node()

    # -- what the platform has --------------------------------------------------------------
    def node_messages(self) -> list[dict]:
        import sqlite3
        db = sqlite3.connect(self.work / "platform.db")
        try:
            return [json.loads(p) for (p,) in db.execute(
                "SELECT payload FROM messages WHERE device=? AND kind != 'status'", (DEVICE,))]
        finally:
            db.close()

    def publish(self, payload: bytes | str, retain: bool = False) -> None:
        import paho.mqtt.publish as publish
        publish.single(BASE + "/cmd", payload, qos=1, retain=retain, hostname="127.0.0.1",
                       port=self.broker.port)

    def command(self, level: int = 60, signed: bool = True, pad: int = 0) -> dict:
        from agent.uplink.commands import new_command
        args: dict[str, Any] = {"level_pct": level, "priority": 7, "expires_in_s": 600}
        if pad:
            args["note"] = "x" * pad            # a longer command (ignored argument)
        return new_command("set_override", args, device=DEVICE, site=SITE, ttl_s=3600,
                           signing_key=self.key if signed else None, now=self.node_clock())


def hostile(rig: Rig) -> int:
    """The hostile command set; returns how many commands were sent."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    sent = 0
    valid = rig.command(100)
    rig.publish(json.dumps(valid))
    forged = rig.command(100, signed=False)
    from agent.uplink.commands import new_command
    forged = new_command("set_override", {"level_pct": 100, "priority": 7,
                                          "expires_in_s": 600}, device=DEVICE, site=SITE,
                         ttl_s=3600, signing_key=Ed25519PrivateKey.generate(),
                         now=rig.node_clock())
    for c in (forged, rig.command(100, signed=False), valid, rig.command(100, pad=900)):
        rig.publish(json.dumps(c))
    sent += 5
    rig.publish(b"y" * 50_000)
    rig.publish(b'{"a": , "b": 0}')
    rig.publish(b"[" * 500)
    import random
    rng = random.Random(7)
    for _ in range(20):
        rig.publish(bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))))
    sent += 23
    first = rig.command(100)
    for i in range(65):
        rig.publish(json.dumps(first if i == 0 else rig.command(100)))
        time.sleep(0.05)
    rig.publish(json.dumps(first))
    sent += 66
    rig.publish(b"x" * 100_000, retain=True)
    sent += 1
    return sent


def flash_bytes(work: Path) -> Counter:
    """Bytes written per file (strace ``-y`` lines) under the state folder."""
    out: Counter = Counter()
    pat = re.compile(r'write\(\d+<([^>]+)>, [^,]*, \d+\)\s+=\s+(\d+)')
    state = str(work / "state")
    for f in work.glob("strace.*"):
        for line in f.read_text(errors="replace").splitlines():
            m = pat.search(line)
            if m and m.group(1).startswith(state):
                name = Path(m.group(1)).name
                key = "outbox" if name.startswith("ob.") and not name.startswith("ob.ptr") \
                    else name.replace(".tmp", "")
                out[key] += int(m.group(2))
    return out


def full(heap: str, strace: bool, romfs: bool) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="polelink-node-budget-"))
    rig = Rig(work, heap, strace, romfs)
    try:
        rig.start_node()
        time.sleep(5)
        sent = hostile(rig)
        time.sleep(3)
        rig.restart_node()              # 100 KiB retained on its command topic at connect
        time.sleep(3)
        # a reconnection with a retained set_override waiting (refused: retained)
        rig.publish(json.dumps(rig.command(10)), retain=True)
        rig.restart_node()
        sent += 2
        time.sleep(max(1.0, NIGHT_H * 3600 / RATE - (time.monotonic() - rig.t0)))
        night_s = time.monotonic() - rig.t0
        rig.broker.stop()
        time.sleep(OUTAGE_H * 3600 / RATE)
        rig.broker.start()
        rig.platform.stop()
        rig.platform = rig._platform()
        rig.publish(b"", retain=True)
        # the backlog drains at the node's own pace: its clock back to real time (at 1200x
        # it makes 20 messages a second, faster than acknowledgement rounds drain them)
        node_now = rig.node_clock()
        (work / "clock.json").write_text(json.dumps({"epoch": node_now, "rate": 1,
                                                     "synced": True}))
        node_days = (node_now - START) / 86400

        def drained() -> bool:
            msgs = rig.node_messages()
            h = [m for m in msgs if m.get("schema") == "polelink/node-health/1"]
            return bool(h) and h[-1]["outbox"] <= 2 and h[-1]["ts"] >= _iso(node_now)
        wait_for(drained, 300, 0.3)
        alive = rig.node is not None and rig.node.poll() is None
        rig.kill_node(signal.SIGTERM)
        made = _ptr_seq(work)
        msgs = rig.node_messages()
    finally:
        rig.stop()
    health = [m for m in msgs if m.get("schema") == "polelink/node-health/1"]
    responses = [m for m in msgs if m.get("schema") == "polelink/response/1"]
    seqs = {m["seq"] for m in msgs if isinstance(m.get("seq"), int)}
    named: set[int] = set()
    for m in msgs:
        if m.get("event") == "outbox_overflow":
            d = m["detail"]
            named |= set(range(d["firstSeq"], d["lastSeq"] + 1))
    top = max(max(seqs, default=0), made)
    lost = sorted(set(range(1, top + 1)) - seqs - named)
    wrote = flash_bytes(work) if strace else Counter()
    # per day at the default periods (report_s 60, health_s 300): per message and per health
    per_msg = (wrote["outbox"] + wrote["ob.ptr"]) / max(1, top)
    per_health = wrote["state.json"] / max(1, len(health))
    per_day = round(per_msg * (86400 / 60 + 86400 / 300) + per_health * 86400 / 300)
    out = {"heap": heap, "night_s": round(night_s),
           "alive": alive, "health_messages": len(health),
           "mem_alloc_peak": max((m["memAllocPeak"] for m in health), default=None),
           "mem_free_lowest": min((m["memFree"] for m in health), default=None),
           "faults": max((m["faults"] for m in health), default=None),
           "commands_sent": sent, "responses": len(responses),
           "memory_errors": sum("MemoryError" in (m.get("error") or "") for m in responses),
           "ok_responses": sum(m.get("result") == "ok" for m in responses),
           "messages": len(seqs), "named_by_overflow": len(named - seqs),
           "lost_silently": len(lost), "node_days": round(node_days, 2),
           "flash_bytes_per_message": round(per_msg),
           "seen_json_bytes_per_command": round(wrote["seen.json"] / max(1, sent)),
           "flash_bytes_per_day": per_day, "flash_by_file": dict(wrote)}
    shutil.rmtree(work, ignore_errors=True)
    return out


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _ptr_seq(work: Path) -> int:
    """The newest seq the node freed or dropped (its outbox pointer)."""
    try:
        return int(json.loads((work / "state" / "ob.ptr").read_text())["seq"])
    except (OSError, ValueError, KeyError):
        return 0


def hostile_only(heap: str, romfs: bool) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="polelink-node-heap-"))
    rig = Rig(work, heap, False, romfs)
    try:
        rig.start_node()
        started = wait_for(lambda: any(m.get("schema") == "polelink/node-lighting/1"
                                       for m in rig.node_messages()), 20, 0.3)
        sent = hostile(rig) if started else 0
        time.sleep(10)
        msgs = rig.node_messages()
        alive = rig.node is not None and rig.node.poll() is None
    finally:
        rig.stop()
    responses = [m for m in msgs if m.get("schema") == "polelink/response/1"]
    log = (work / "node.log").read_text(errors="replace")
    shutil.rmtree(work, ignore_errors=True)
    return {"heap": heap, "started": started, "alive": alive, "sent": sent,
            "responses": len(responses),
            "memory_errors": sum("MemoryError" in (m.get("error") or "") for m in responses)
            + log.count("MemoryError")}


def main(argv: list[str] | None = None) -> int:
    """``python bench/node_budget.py``."""
    p = argparse.ArgumentParser(prog="python bench/node_budget.py",
                                description=__doc__.split("\n")[0])
    p.add_argument("--heap", default="80K", help="MicroPython heap (default 80K)")
    p.add_argument("--smallest", action="store_true",
                   help="find the smallest heap that answers the hostile set (64K up)")
    p.add_argument("--no-strace", action="store_true", help="do not count flash writes")
    p.add_argument("--hostile", action="store_true",
                   help="only the hostile command set at --heap (about 30 s; the tests' mode)")
    p.add_argument("--files", action="store_true",
                   help="the modules as files in the heap (what flash.sh node copies), not "
                        "in place from a ROM file system (the default; sim/nodestage.py)")
    a = p.parse_args(argv)
    import logging
    logging.getLogger("paho").setLevel(logging.CRITICAL)
    if not MICROPYTHON.exists():
        print(f"node_budget: {MICROPYTHON} is missing (needs ../shared)", file=sys.stderr)
        return 2
    strace = not a.no_strace and shutil.which("strace") is not None
    romfs = not a.files
    result: dict[str, Any] = {"machine": os.uname().machine, "port": "unix (64-bit)",
                              "code": "romfs" if romfs else "files"}
    if a.hostile:
        r = hostile_only(a.heap, romfs)
        print(f"heap {r['heap']}: started {r['started']}, alive {r['alive']}, responses "
              f"{r['responses']}/{r['sent']}, MemoryErrors {r['memory_errors']}")
        result.update(r)
    elif a.smallest:
        tried = []
        for k in range(40 if romfs else 64, 161, 8):
            r = hostile_only(f"{k}K", romfs)
            tried.append(r)
            print(f"heap {k} KiB: started {r['started']}, alive {r['alive']}, responses "
                  f"{r['responses']}/{r['sent']}, MemoryErrors {r['memory_errors']}",
                  flush=True)
            if r["started"] and r["alive"] and not r["memory_errors"] \
                    and r["responses"] >= r["sent"]:
                result["smallest_heap_kib"] = k
                break
        result["tried"] = tried
    else:
        r = full(a.heap, strace, romfs)
        print(f"heap {r['heap']}: alive {r['alive']}; live heap peak {r['mem_alloc_peak']} B, "
              f"lowest memFree {r['mem_free_lowest']} B, faults {r['faults']}; commands "
              f"{r['commands_sent']} sent, {r['responses']} answered, {r['memory_errors']} "
              f"MemoryError; messages {r['messages']}, named {r['named_by_overflow']}, lost "
              f"silently {r['lost_silently']}; flash {r['flash_bytes_per_message']} B per "
              f"message, {r['flash_bytes_per_day']} B per day at the default periods")
        result.update(r)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
