"""Uplink throughput: outbox replay to mosquitto on loopback, and the cost of durability.

    python bench/uplink.py [--messages 3000] [--rounds 3] [--window 200]

Starts its own mosquitto on a free loopback port. The workload: ``--messages`` traffic
messages of one pole (one JSON record of about 900 bytes each, the form the agent
publishes), QoS 1, 20 in flight, all on the same broker in the same run. Measures:

- **replay with the window** (the default delivery, contract 2.7): messages/s from a full
  outbox (filled while the platform was away) until the *platform has acknowledged* every
  one, at most ``--window`` sent and unacknowledged, timed from the moment the platform's
  STATE says online (the uplink is already connected and holding, as after an outage).
  The platform here is as fast as the broker (:func:`fast_acker`, its own process: it
  acknowledges what it received every 50 messages or 10 ms and stores nothing), so what is
  measured is the pole's flow control, not a platform's ingest;
- **replay on PUBACK** (a platform that does not acknowledge; before 2.7), for reference;
- **replay until ``sim.platform`` stored**: the same with the demo platform in its own
  process (in-memory SQLite, JSON-Schema validation of every message, acknowledgements
  every 50 messages or second): what a slow consumer makes of it (the window holds the
  pole to the platform's pace: that is the point);
- the **baseline**: a bare paho client publishing the same payloads with QoS 1 and waiting
  for every PUBACK, with the same fast platform process consuming them. Ratios are
  replay / baseline; baseline and replays alternate for
  ``--rounds`` rounds and the figures are the medians (the machines are shared and noisy);
- **row check per message sent**: microseconds the outbox spends checking a stored row
  before it is sent (a full JSON parse and its ``msg_id`` against the row's ``seq``),
  against the time one message takes in the replay until acknowledged;
- **publish overhead per aggregate**: milliseconds to stamp and commit one traffic
  message into the SQLite outbox (WAL, synchronous=FULL), against appending the same
  record to a JSON-lines file with fsync (ratio = outbox / jsonl).

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.uplink.mqtt import Uplink, UplinkSettings
from agent.uplink.outbox import Outbox
from agent.vision.aggregates import JsonLinesSink
from sim.demo import free_port, start_mosquitto

ROOT = Path(__file__).resolve().parents[1]
RECORD = {"schema": "polelink/traffic/1", "device": "bench", "site": "lab", "camera": "cam1",
          "line": "main", "ts": "2026-11-22T23:00:00Z",
          "samplingPeriod": {"start": "2026-11-22T22:59:00Z", "end": "2026-11-22T23:00:00Z",
                             "seconds": 60, "partial": False},
          "roadUserCounts": [{"roadUserType": c, "direction": d, "count": 7}
                             for c in ("car", "motorbike", "bus", "truck") for d in ("in", "out")],
          "totalCount": 56, "quality": {"framesAnalysed": 900, "framesExpected": 900,
                                        "framesDropped": 0, "framesLate": 0,
                                        "detectorLatencyMs": 12.3, "idSwitches": 0,
                                        "cameraBlinded": False, "cameraFrozen": False}}


def broker(tmp: Path) -> tuple[subprocess.Popen, int]:
    """mosquitto on a free loopback port (the demo's starter)."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port(0)
    return start_mosquitto(tmp, port, exe), port


def baseline(port: int, n: int) -> float:
    """Bare paho: publish n QoS 1 messages (the pole's stamped payloads, on its topic) and
    wait for every PUBACK, while the same fast platform process consumes them, so that the
    machine carries the same consumer as in the replays."""
    acker = start_acker(port)
    acked = [0]
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-base",
                    protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(20)
    c.on_publish = lambda *a: acked.__setitem__(0, acked[0] + 1)
    c.connect("127.0.0.1", port)
    c.loop_start()
    payloads = [json.dumps({**RECORD, "seq": i + 1, "msg_id": f"bench:0000beef:{i + 1}"})
                for i in range(n)]
    t0 = time.perf_counter()
    for body in payloads:
        c.publish("polelink/lab/bench/traffic/cam1", body, qos=1)
    while acked[0] < n:
        time.sleep(0.001)
    dt = time.perf_counter() - t0
    c.loop_stop()
    c.disconnect()
    acker.kill()
    acker.wait()
    clear_retained(port)
    return n / dt


def start_acker(port: int) -> subprocess.Popen:
    """:func:`fast_acker` in its own process, once it has subscribed and said online."""
    acker = subprocess.Popen([sys.executable, __file__, "--acker", str(port)], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True)
    assert acker.stdout is not None
    acker.stdout.readline()                           # "ready"
    return acker


def fast_acker(port: int) -> None:
    """A platform as fast as the broker (its own process): keeps the ``seq`` of every
    message it receives, announces acknowledgement in its STATE, and acknowledges what it
    received every 50 messages or 10 ms (the wire format of ``polelink/ack/1``). It stores
    nothing durable: it isolates the pole's flow control from a platform's ingest speed."""
    import re

    seen: list[int] = []
    lock = threading.Lock()
    pat = re.compile(rb'"msg_id":"bench:([0-9a-f]{8}):([0-9]+)"')
    epoch = [""]

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        m = pat.search(msg.payload)
        if m:
            with lock:
                epoch[0] = m.group(1).decode()
                seen.append(int(m.group(2)))

    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-acker",
                    protocol=mqtt.MQTTv5)
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.subscribe("polelink/lab/bench/traffic/#", qos=1)
    c.loop_start()
    time.sleep(0.2)
    c.publish("polelink/STATE/bench", json.dumps({"online": True, "ack": 1,
                                                    "timestamp": int(time.time() * 1000)}),
              qos=1, retain=True).wait_for_publish(5)
    print("ready", flush=True)
    last = time.monotonic()
    while True:
        time.sleep(0.002)
        with lock:
            due = len(seen) >= 50 or (seen and time.monotonic() - last > 0.01)
            todo = sorted(seen) if due else []
            if due:
                seen.clear()
        if todo:
            ranges: list[list[int]] = []
            for q in todo:
                if ranges and q <= ranges[-1][1] + 1:
                    ranges[-1][1] = max(ranges[-1][1], q)
                else:
                    ranges.append([q, q])
            c.publish("polelink/lab/bench/ack", json.dumps(
                {"schema": "polelink/ack/1", "epoch": epoch[0], "ranges": ranges[:1024]}),
                qos=1, retain=True)
            last = time.monotonic()


def holding_pole(port: int, db: Path, n: int, window: int) -> tuple[Outbox, Uplink]:
    """An outbox filled with ``n`` messages and an uplink connected, holding them until
    the platform ``bench`` says online (as after an outage)."""
    ob = Outbox(db, "bench")
    for _ in range(n):
        ob.put("polelink/lab/bench/traffic/cam1", RECORD)
    up = Uplink(UplinkSettings(port=port, primary_host="bench", ack_window=window),
                "bench", "lab", ob).start()
    if not up.wait_connected(10):
        raise SystemExit("the uplink did not connect")
    return ob, up


def replay_fast(port: int, db: Path, n: int, window: int) -> float:
    """Replay until a platform as fast as the broker (:func:`fast_acker`) acknowledged
    every message, timed from the moment the uplink sees it online."""
    ob, up = holding_pole(port, db, n, window)
    acker = start_acker(port)
    try:
        rate = time_replay(up, ob, n, acks=True)
    finally:
        up.stop()
        acker.kill()
        acker.wait()
    clear_retained(port)
    ob.close()
    return rate


def time_replay(up: Uplink, ob: Outbox, n: int, acks: bool) -> float:
    """Messages/s from the moment the uplink sees the platform online until the outbox is
    empty (with ``acks``: freed by the platform's acknowledgements)."""
    end = time.monotonic() + 60
    while not up.platform_online and time.monotonic() < end:
        time.sleep(0.001)
    t0 = time.perf_counter()
    while len(ob) and time.monotonic() < end + 120:
        time.sleep(0.002)
    rate = n / (time.perf_counter() - t0)
    if len(ob) or (acks and up.delivery != "platform-ack"):
        raise SystemExit("the replay did not finish (with the platform's acknowledgements)")
    return rate


def clear_retained(port: int) -> None:
    """Remove the bench platform's retained STATE and acknowledgement."""
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-clean")
    c.connect("127.0.0.1", port)
    c.loop_start()
    for topic in ("polelink/STATE/bench", "polelink/lab/bench/ack"):
        c.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def replay_once(port: int, db: Path, n: int, window: int, acks: bool) -> float:
    """Fill an outbox with ``n`` messages, connect an uplink that holds them (no platform
    STATE yet), start the platform (``python -m sim.platform``, its own process, acknowledging
    or not) and time the replay from the moment the uplink sees it online until the outbox
    is empty."""
    ob, up = holding_pole(port, db, n, window)
    platform = subprocess.Popen(
        [sys.executable, "-m", "sim.platform", "--broker", f"127.0.0.1:{port}", "--http",
         "127.0.0.1:0", "--host-id", "bench", "--session-expiry", "0", "--token", "bench",
         *([] if acks else ["--no-ack"])], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        rate = time_replay(up, ob, n, acks)
    finally:
        up.stop()
        platform.send_signal(signal.SIGINT)
        platform.wait(20)
    clear_retained(port)
    ob.close()
    return rate


class _AsJson:
    """The sink takes records with ``to_json()``; the bench's record is a plain dict."""

    def __init__(self, d: dict) -> None:
        self.d = d

    def to_json(self) -> dict:
        return self.d


def row_check_cost(n: int, replay_rate: float) -> tuple[float, float]:
    """Microseconds the outbox's check of a stored row (a full JSON parse: a torn row that
    kept its braces and msg_id is quarantined, never sent) takes per message, and the
    time per message of the replay it is part of (the median replay rate measured)."""
    from agent.uplink.outbox import _row_problem

    raw = json.dumps({**RECORD, "seq": 7, "msg_id": "bench:00000000:7"},
                     separators=(",", ":")).encode()
    topic = b"polelink/bench/bench/traffic/cam1"
    reps = max(2000, n)
    t0 = time.perf_counter()
    for _ in range(reps):
        _row_problem(topic, raw, 1, 7)
    check = (time.perf_counter() - t0) / reps * 1e6
    return check, 1e6 / max(1.0, replay_rate)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--window", type=int, default=200,
                   help="mqtt.ack_window: messages sent and not yet acknowledged (default 200)")
    p.add_argument("--acker", type=int, metavar="PORT", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.acker:                                       # the fast platform's own process
        fast_acker(a.acker)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="polelink-bench-"))
    proc, port = broker(tmp)
    try:
        ob = Outbox(tmp / "outbox.db", "bench")
        t0 = time.perf_counter()
        for _ in range(a.messages):
            ob.put("polelink/lab/bench/traffic/cam1", RECORD)
        put_ms = 1000 * (time.perf_counter() - t0) / a.messages
        sink = JsonLinesSink(tmp / "agg.jsonl")
        row = _AsJson(RECORD)
        t0 = time.perf_counter()
        for _ in range(a.messages):
            sink.write([row])  # type: ignore[list-item]
        jsonl_ms = 1000 * (time.perf_counter() - t0) / a.messages
        bases, replays, pubacks, sims = [], [], [], []
        for r in range(a.rounds):
            bases.append(baseline(port, a.messages))
            replays.append(replay_fast(port, tmp / f"replay{r}.db", a.messages, a.window))
            pubacks.append(replay_once(port, tmp / f"puback{r}.db", a.messages, a.window,
                                       False))
            sims.append(replay_once(port, tmp / f"sim{r}.db", a.messages, a.window, True))
            print(f"round {r + 1}: baseline {bases[-1]:.0f}/s, replay with the window "
                  f"{replays[-1]:.0f}/s, on PUBACK {pubacks[-1]:.0f}/s, to sim.platform "
                  f"{sims[-1]:.0f}/s", flush=True)
        base, replay = statistics.median(bases), statistics.median(replays)
        puback, sim = statistics.median(pubacks), statistics.median(sims)

        def ratio_of(xs: list[float]) -> float:
            return statistics.median(x / b for x, b in zip(xs, bases, strict=True))

        ratio, ratio_pb, ratio_sim = ratio_of(replays), ratio_of(pubacks), ratio_of(sims)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    size = len(json.dumps({**RECORD, "seq": 1, "msg_id": "bench:00000000:1"},
                          separators=(",", ":")))
    check_us, send_us = row_check_cost(a.messages, replay)
    print(f"{a.messages} traffic messages of {size} bytes, one mosquitto on loopback, QoS 1, "
          f"20 in flight, window {a.window}")
    print(f"{'':<44}{'value':>10}{'baseline':>10}{'ratio':>8}")
    print(f"{'replay until acknowledged (window), msg/s':<44}{replay:>10.0f}{base:>10.0f}"
          f"{ratio:>8.2f}")
    print(f"{'replay on PUBACK (no platform ack), msg/s':<44}{puback:>10.0f}{base:>10.0f}"
          f"{ratio_pb:>8.2f}")
    print(f"{'replay until sim.platform stored, msg/s':<44}{sim:>10.0f}{base:>10.0f}"
          f"{ratio_sim:>8.2f}")
    print(f"{'publish overhead per aggregate, ms':<44}{put_ms:>10.3f}{jsonl_ms:>10.3f}"
          f"{put_ms / jsonl_ms:>8.2f}")
    print(f"{'row check per message sent, us':<44}{check_us:>10.2f}{send_us:>10.2f}"
          f"{check_us / send_us:>8.3f}")
    print("(baselines: bare paho QoS 1 publishing; JSON-lines append with fsync; the time one "
          "message takes in the replay until acknowledged)")
    print(json.dumps({"messages": a.messages, "payload_bytes": size, "window": a.window,
                      "replay_msgs_per_s": round(replay, 1),
                      "baseline_paho_msgs_per_s": round(base, 1),
                      "replay_ratio": round(ratio, 3),
                      "replay_puback_msgs_per_s": round(puback, 1),
                      "replay_puback_ratio": round(ratio_pb, 3),
                      "replay_sim_platform_msgs_per_s": round(sim, 1),
                      "replay_sim_platform_ratio": round(ratio_sim, 3), "rounds": a.rounds,
                      "outbox_put_ms": round(put_ms, 4), "jsonl_fsync_ms": round(jsonl_ms, 4),
                      "put_overhead_ratio": round(put_ms / jsonl_ms, 3),
                      "row_check_us": round(check_us, 3),
                      "row_check_share_of_replay": round(check_us / send_us, 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
