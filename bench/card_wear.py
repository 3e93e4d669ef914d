"""Card wear: bytes the agent writes to storage per day, with and without the platform's
acknowledgements (the window), through the real processes.

    python bench/card_wear.py [--seconds 120] [--lines 4] [--interval 60]

Runs mosquitto, ``python -m sim.platform`` (acknowledging, then ``--no-ack``) and
``python -m agent run`` on a simulated clip (``--lines`` counting lines on one camera,
``--interval`` s aggregates, default outbox and ``ack_window``, ``primary_host`` set),
and reads ``write_bytes`` in ``/proc/<agent pid>/io`` (bytes the process caused to be
written to the block device: SQLite outbox and its WAL, the JSON-lines file, counting
checkpoints, run records, the outbox's side record) over ``--seconds`` after a 15 s
warm-up. Per day = the rate x 86,400. The ratio is with / without the window.

An SD card's life: a 32 GB card rated for 3,000 program/erase cycles takes about 96 TB;
with a write amplification of 10 (small writes on a cheap card), 10 years allow about
2.6 GB a day. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from campaign import Broker, Proc, wait_for  # bench/campaign.py

ROOT = Path(__file__).resolve().parents[1]
#: What 10 years on a 32 GB, 3,000-cycle card allow per day at a write amplification of 10.
BUDGET_BYTES_PER_DAY = 32e9 * 3000 / 10 / 3650


def write_bytes(pid: int) -> int | None:
    """``write_bytes`` of a live process (None when it is gone or the kernel hides it)."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def measure(work: Path, acks: bool, seconds: float, lines: int, interval: int) -> dict:
    """One run; returns bytes written per second and per day, messages stored."""
    from sim.traffic import SceneConfig, write_clip

    work.mkdir(parents=True, exist_ok=True)
    clip = work / "clip.avi"
    gt = write_clip(clip, 20, seed=5, cfg=SceneConfig(vehicles_per_minute=30, fps=10))
    x1, y1, x2, y2 = gt["line"]
    broker = Broker(work)
    broker.start(persist=False)
    spec = ", ".join(f"{{name: l{i}, points: [[{x1}, {y1 + 3 * i}], [{x2}, {y2 + 3 * i}]]}}"
                     for i in range(lines))
    cfg = work / "pole.yaml"
    state = work / "state"
    cfg.write_text(f"""device: {{id: pole-w, site: lab}}
cameras:
  - name: cam1
    source: {{kind: file, path: {json.dumps(str(clip))}, loop: true, realtime: true}}
    detector: {{model: {json.dumps(str(ROOT / 'agent' / 'models' / 'simnet.yaml'))}, threads: 1}}
    lines: [{spec}]
aggregates: {{interval_s: {interval}, path: {json.dumps(str(state / 'agg.jsonl'))}}}
clock: {{sources: [assume_synced]}}
mqtt:
  port: {broker.port}
  primary_host: ops
  outbox_path: {json.dumps(str(state / 'outbox.db'))}
""")
    platform = Proc("platform", [sys.executable, "-m", "sim.platform", "--broker",
                                 f"127.0.0.1:{broker.port}", "--http", "127.0.0.1:0",
                                 "--db", str(work / "platform.db"), "--host-id", "ops",
                                 "--token", "wear", *([] if acks else ["--no-ack"])],
                    work / "platform.log")
    agent = Proc("agent", [sys.executable, "-m", "agent", "run", "--config", str(cfg), "-q"],
                 work / "agent.log")
    try:
        platform.start()
        agent.start()
        assert agent.proc is not None
        time.sleep(15)                                  # start-up: model load, first files
        w0, t0 = write_bytes(agent.proc.pid), time.monotonic()
        wait_for(lambda: not agent.running, seconds, 1.0)
        w1, t1 = write_bytes(agent.proc.pid), time.monotonic()
        if w0 is None or w1 is None or not agent.running:
            raise SystemExit(f"cannot read /proc/{agent.proc.pid}/io (or the agent ended): "
                             f"{log_tail(work / 'agent.log')}")
    finally:
        agent.signal(signal.SIGTERM)
        platform.signal(signal.SIGINT)
        broker.stop()
    rate = (w1 - w0) / (t1 - t0)
    return {"acks": acks, "bytes_per_s": round(rate, 1), "bytes_per_day": round(rate * 86400),
            "seconds": round(t1 - t0, 1)}


def log_tail(path: Path) -> str:
    """The end of a log file."""
    return path.read_text(errors="replace")[-600:] if path.exists() else ""


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    p = argparse.ArgumentParser(prog="python bench/card_wear.py",
                                description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--lines", type=int, default=4)
    p.add_argument("--interval", type=int, default=60)
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="polelink-wear-") as tmp:
        on = measure(Path(tmp) / "ack", True, a.seconds, a.lines, a.interval)
        off = measure(Path(tmp) / "puback", False, a.seconds, a.lines, a.interval)
    mb = 1e6
    print(f"agent run, {a.lines} counting lines, {a.interval} s intervals, "
          f"{a.seconds:.0f} s measured per mode (write_bytes in /proc/PID/io)")
    print(f"{'':<34}{'MB/day':>10}{'baseline':>10}{'ratio':>8}")
    print(f"{'with the window (platform acks)':<34}{on['bytes_per_day'] / mb:>10.1f}"
          f"{off['bytes_per_day'] / mb:>10.1f}"
          f"{on['bytes_per_day'] / max(1, off['bytes_per_day']):>8.2f}")
    print(f"(baseline: freed on PUBACK; budget for 10 years of a 32 GB card: "
          f"{BUDGET_BYTES_PER_DAY / mb:,.0f} MB/day)")
    print(json.dumps({"lines": a.lines, "interval_s": a.interval, "seconds": a.seconds,
                      "with_window_bytes_per_day": on["bytes_per_day"],
                      "puback_bytes_per_day": off["bytes_per_day"],
                      "ratio": round(on["bytes_per_day"] / max(1, off["bytes_per_day"]), 3),
                      "budget_bytes_per_day": round(BUDGET_BYTES_PER_DAY),
                      "share_of_budget": round(on["bytes_per_day"] / BUDGET_BYTES_PER_DAY, 4)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
