"""Uplink throughput: outbox replay to mosquitto on loopback, and the cost of durability.

    python bench/uplink.py [--messages 3000] [--rounds 3]

Starts its own mosquitto on a free loopback port. Measures, in the same run:

- **replay**: messages/s from a full outbox (filled while the platform was away) to the
  broker, each deleted on its PUBACK, timed from the moment the platform's STATE says
  online (the uplink is already connected and holding, as after an outage), against a
  baseline of a bare paho client publishing the same payloads with QoS 1 and waiting for
  every PUBACK (ratio = replay / baseline). Baseline and replay alternate for
  ``--rounds`` rounds; the figures are the medians (the machines are shared and noisy);
- **publish overhead per aggregate**: milliseconds to stamp and commit one traffic
  message into the SQLite outbox (WAL, synchronous=FULL), against appending the same
  record to a JSON-lines file with fsync (ratio = outbox / jsonl).

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.uplink.mqtt import Uplink, UplinkSettings
from agent.uplink.outbox import Outbox
from agent.vision.aggregates import JsonLinesSink
from sim.demo import free_port, start_mosquitto

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
    """Bare paho: publish n QoS 1 messages, wait for all PUBACKs."""
    acked = [0]
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-base",
                    protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(20)
    c.on_publish = lambda *a: acked.__setitem__(0, acked[0] + 1)
    c.connect("127.0.0.1", port)
    c.loop_start()
    payload = json.dumps(RECORD)
    t0 = time.perf_counter()
    for i in range(n):
        c.publish(f"polelink/lab/base/traffic/cam1/{i % 4}", payload, qos=1)
    while acked[0] < n:
        time.sleep(0.001)
    dt = time.perf_counter() - t0
    c.loop_stop()
    c.disconnect()
    return n / dt


def replay_once(port: int, db: Path, n: int) -> float:
    """Fill an outbox with ``n`` messages, connect an uplink that holds them (platform
    STATE absent), then say the platform is online and time the replay."""
    ob = Outbox(db, "bench")
    for _ in range(n):
        ob.put("polelink/lab/bench/traffic/cam1", RECORD)
    up = Uplink(UplinkSettings(port=port, primary_host="bench"), "bench", "lab", ob).start()
    if not up.wait_connected(10):
        raise SystemExit("the uplink did not connect")
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="bench-host")
    c.connect("127.0.0.1", port)
    c.loop_start()
    time.sleep(0.3)                               # the uplink has subscribed to the STATE
    t0 = time.perf_counter()
    c.publish("polelink/STATE/bench", json.dumps({"online": True, "timestamp": 1}), qos=1)
    while len(ob):
        time.sleep(0.01)
    rate = n / (time.perf_counter() - t0)
    up.stop()
    c.publish("polelink/STATE/bench", b"", retain=True)
    c.loop_stop()
    c.disconnect()
    ob.close()
    return rate


class _AsJson:
    """The sink takes records with ``to_json()``; the bench's record is a plain dict."""

    def __init__(self, d: dict) -> None:
        self.d = d

    def to_json(self) -> dict:
        return self.d


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
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
        bases, replays = [], []
        for r in range(a.rounds):
            bases.append(baseline(port, a.messages))
            replays.append(replay_once(port, tmp / f"replay{r}.db", a.messages))
            print(f"round {r + 1}: baseline {bases[-1]:.0f}/s, replay {replays[-1]:.0f}/s",
                  flush=True)
        base, replay = statistics.median(bases), statistics.median(replays)
        ratio = statistics.median(x / b for x, b in zip(replays, bases, strict=True))
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{a.messages} traffic messages, mosquitto on loopback, QoS 1, 20 in flight")
    print(f"{'':<36}{'value':>10}{'baseline':>10}{'ratio':>8}")
    print(f"{'outbox replay, messages/s':<36}{replay:>10.0f}{base:>10.0f}{ratio:>8.2f}")
    print(f"{'publish overhead per aggregate, ms':<36}{put_ms:>10.3f}{jsonl_ms:>10.3f}"
          f"{put_ms / jsonl_ms:>8.2f}")
    print("(baselines: bare paho QoS 1 publishing; JSON-lines append with fsync)")
    print(json.dumps({"messages": a.messages, "replay_msgs_per_s": round(replay, 1),
                      "baseline_paho_msgs_per_s": round(base, 1),
                      "replay_ratio": round(ratio, 3), "rounds": a.rounds,
                      "outbox_put_ms": round(put_ms, 4), "jsonl_fsync_ms": round(jsonl_ms, 4),
                      "put_overhead_ratio": round(put_ms / jsonl_ms, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
