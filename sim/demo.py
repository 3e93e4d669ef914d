"""The whole system on one machine, for ``make demo``: nothing outside loopback.

Starts, in this order:
1. the simulated traffic camera (a rendered clip played in a loop, in real time);
2. a mosquitto broker on a free loopback port (without mosquitto: the embedded amqtt
   broker, pure Python, MQTT 3.1.1; the agent falls back to 3.1.1 by itself);
3. the DALI gateway emulator on a pty (4 luminaires);
4. the city platform simulator with its dashboard on http://127.0.0.1:8080/ (or a free
   port);
5. the agent, with a generated provisioning file ``var/demo/pole.yaml`` that ties them
   together;
6. with ``--nodes N``: N lamp nodes (``node/``, the node's own code in the MicroPython unix
   port ``../shared/bin/micropython``), each with a config ``var/demo/nodes/<id>.json``
   (same broker and site, coordinates a few hundred metres around the demo pole).

So that dimming shows at any hour, the demo pole is placed at a longitude where it is
night right now (its latitude is Hanoi's). Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def free_port(preferred: int) -> int:
    """``preferred`` if it is free on loopback, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", port))
            return s.getsockname()[1]
    raise RuntimeError("no free port")


def night_longitude(now: datetime) -> float:
    """A longitude where local solar time is about 01:00 now."""
    hour = now.hour + now.minute / 60
    lon = ((1.0 - hour) * 15 + 180) % 360 - 180
    return round(lon, 2)


class EmbeddedBroker:
    """amqtt (a pure-Python MQTT 3.1.1 broker) on a thread: the fallback without mosquitto."""

    def __init__(self, port: int, log_file: Path | None = None) -> None:
        import asyncio
        import logging
        import threading

        # amqtt logs connection errors with tracebacks: keep them out of the demo's
        # terminal (in a file when given, else dropped)
        amqtt_log = logging.getLogger("amqtt")
        amqtt_log.propagate = False
        amqtt_log.handlers[:] = [logging.FileHandler(log_file) if log_file
                                 else logging.NullHandler()]
        amqtt_log.setLevel(logging.INFO)

        from amqtt.broker import Broker

        self.loop = asyncio.new_event_loop()
        self.broker = Broker({"listeners": {"default": {"type": "tcp",
                                                        "bind": f"127.0.0.1:{port}"}},
                              "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin":
                                          {"allow_anonymous": True}}}, loop=self.loop)
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.broker.start())
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True, name="amqtt").start()
        if not ready.wait(10):
            raise SystemExit("the embedded amqtt broker did not start")

    def kill(self) -> None:
        """Stop the broker."""
        import asyncio

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.broker.shutdown(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)

    def wait(self) -> None:
        """(Popen-like.)"""


def start_broker(workdir: Path, port: int) -> subprocess.Popen | EmbeddedBroker:
    """mosquitto on 127.0.0.1:port; without it, the embedded amqtt broker."""
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                        if Path("/usr/sbin/mosquitto").exists() else None)
    if exe is None:
        try:
            import amqtt  # noqa: F401
        except ImportError:
            raise SystemExit("the demo needs an MQTT broker: sudo apt-get install mosquitto "
                             "(or pip install amqtt)") from None
        print("mosquitto not found: using the embedded amqtt broker (MQTT 3.1.1; its log "
              f"goes to {workdir / 'amqtt.log'})", flush=True)
        return EmbeddedBroker(port, workdir / "amqtt.log")
    return start_mosquitto(workdir, port, exe)


def start_mosquitto(workdir: Path, port: int, exe: str) -> subprocess.Popen:
    """mosquitto on 127.0.0.1:port."""
    conf = workdir / "mosquitto.conf"
    user = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(f"{user}listener {port} 127.0.0.1\nallow_anonymous true\n"
                    "persistence false\n")
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    raise SystemExit("mosquitto did not start")


SHARED = ROOT.parent / "shared"
MICROPYTHON = SHARED / "bin" / "micropython"
MPLIB = SHARED / "micropython-lib"


def solar_zone(lon: float) -> str:
    """A fixed-offset POSIX TZ rule whose local time is about solar time at ``lon``
    (``<+07>-7`` at 105° E; the POSIX sign is west-positive)."""
    h = round(lon / 15)
    return f"<{'+' if h >= 0 else '-'}{abs(h):02d}>{-h}"


def node_config(i: int, work: Path, mqtt_port: int, lat: float, lon: float) -> dict:
    """Node ``i``'s config (the example's programs; file output and state under ``work``)."""
    example = json.loads((ROOT / "node" / "config.example.json").read_text())
    device = f"demo-node-{i:02d}"
    state = work / "nodes" / device
    return {**example, "device": device, "site": "sim-city",
            "latitude": round(lat + 0.002 * i, 5),
            "longitude": round((lon + 0.002 * i + 180) % 360 - 180, 5),
            "tz": solar_zone(lon),                  # local time ≈ solar time
            "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "prefix": "polelink"},
            "output": {"kind": "file", "path": str(state / "level")},
            "state_dir": str(state), "report_s": 10, "health_s": 30, "retry_s": 1}


def start_nodes(n: int, work: Path, mqtt_port: int, lat: float,
                lon: float) -> list[subprocess.Popen]:
    """N lamp nodes in MicroPython processes (none, with one line saying why, without
    ../shared). Their state starts fresh each run; their output goes to ``<id>.log``."""
    missing = [p for p in (MICROPYTHON,) if not p.exists()]
    if missing:
        print(f"--nodes {n}: no lamp nodes: {missing[0]} is missing (the MicroPython unix "
              "port lives in ../shared)", flush=True)
        return []
    nodes = work / "nodes"
    shutil.rmtree(nodes, ignore_errors=True)
    nodes.mkdir(parents=True)
    clock = nodes / "clock.json"     # the demo machine's clock, trusted (as the pole's is)
    clock.write_text(json.dumps({"epoch": time.time(), "rate": 1, "synced": True}))
    from sim.nodestage import stage  # the .mpy files flash.sh node writes to a board

    try:
        env = {**os.environ, "MICROPYPATH": stage(nodes / "board", MPLIB)}
    except Exception as e:                # the flasher's Refused (mpy-cross missing or failed)
        print(f"--nodes {n}: no lamp nodes: {e}", flush=True)
        return []
    procs = []
    for i in range(1, n + 1):
        cfg = node_config(i, work, mqtt_port, lat, lon)
        (nodes / cfg["device"]).mkdir()
        path = nodes / f"{cfg['device']}.json"
        path.write_text(json.dumps(cfg, indent=2) + "\n")
        with (nodes / f"{cfg['device']}.log").open("wb") as log:
            procs.append(subprocess.Popen(
                [str(MICROPYTHON), "-X", "heapsize=128K", str(nodes / "board" / "main.py"),
                 str(path), "--clock", str(clock)], env=env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
    names = ", ".join(f"demo-node-{i:02d}" for i in range(1, n + 1))
    print(f"  lamp nodes: {n} in MicroPython ({names}); configs and logs in {nodes}",
          flush=True)
    return procs


def stop_nodes(procs: list[subprocess.Popen]) -> None:
    """Stop the node processes (terminate, then kill after 5 s)."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


POLE = """# Generated by `python -m sim.demo` (make demo). See config/example-pole.yaml for every key.
device: {{id: demo-pole-01, site: sim-city}}
cameras:
  - name: sim-north
    source: {{kind: file, path: {clip}, loop: true, realtime: true}}
    detector: {{model: {root}/models/simnet.yaml}}
    lines:
      - name: main
        points: [[115, 198], [524, 198]]
        directions: {{up: northbound, down: southbound}}
aggregates: {{interval_s: 10, path: {work}/aggregates.jsonl}}
# a demo machine may have no NTP: trust its clock (a pole never does this; see docs/lighting/index.md)
clock: {{sources: [assume_synced]}}
lighting:
  latitude: 21.03
  longitude: {lon}        # where it is night now, so that dimming shows
  camera_stale_s: 60
  traffic_min_coverage_s: 30  # dim after 30 s of traffic (a pole: 10 minutes)
  tick_s: 1
  overrides_path: {work}/overrides.json
  buses: [{{name: dali1, kind: dali, port: {pty}, codec: hat}}]
  groups:
    - {{name: street, bus: dali1, address: broadcast, design_class: M3,
       design_peak_vph: 12000, luminaires: 4, rated_power_w: 90, ramp_down_pct_per_min: 60}}
mqtt:
  port: {mqtt}
  protocol: "{protocol}"
  reconnect_min_s: 0.5
  outbox_path: {work}/outbox.db
  primary_host: platform              # hold data until the platform says it is online
"""


def main(argv: list[str] | None = None) -> int:
    """Run the demo until Ctrl-C (or ``--duration``)."""
    p = argparse.ArgumentParser(prog="python -m sim.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--nodes", type=int, default=0, metavar="N",
                   help="also run N simulated lamp nodes (MicroPython, needs ../shared)")
    p.add_argument("--workdir", type=Path, default=ROOT / "var" / "demo",
                   help="where the demo keeps its clip, configs and logs (default var/demo)")
    a = p.parse_args(argv)
    if not 0 <= a.nodes <= 50:
        p.error(f"--nodes: expected 0..50, got {a.nodes}")
    work = a.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    clip = work / "clip.mp4"
    if not clip.exists():
        from sim.traffic import write_clip

        print("rendering the simulated camera's clip (once)…", flush=True)
        write_clip(clip, 120, seed=1, progress=True)
    from sim.dali import DaliEmulator, make_gear
    from sim.platform import PlatformSim

    mqtt_port = free_port(0)
    with contextlib.ExitStack() as stack:   # Ctrl-C at any point stops what was started
        broker = start_broker(work, mqtt_port)
        stack.callback(broker.wait)
        stack.callback(broker.kill)
        emu = DaliEmulator(make_gear(4), "hat").start()
        stack.callback(emu.stop)
        protocol = "3.1.1" if isinstance(broker, EmbeddedBroker) else "5"
        platform = PlatformSim(port=mqtt_port, http_port=free_port(a.http_port),
                               host_id="platform", protocol=protocol).start()
        stack.callback(platform.stop)
        rc = _run(a, work, clip, protocol, emu, platform, mqtt_port)
    return rc


def _run(a: argparse.Namespace, work: Path, clip: Path, protocol: str, emu: Any,
         platform: Any, mqtt_port: int) -> int:
    """Write the pole's config, start the lamp nodes, run the agent; the nodes are stopped
    on the way out (the caller stops the rest)."""
    from agent.runner import run_agent
    from sim.platform.web import dashboard_url

    lon = night_longitude(datetime.now(UTC))
    cfg = work / "pole.yaml"
    cfg.write_text(POLE.format(clip=clip, root=ROOT, work=work, lon=lon, pty=emu.path,
                               mqtt=mqtt_port, protocol="3.1.1" if protocol == "3.1.1" else "5"))
    for stale in ("outbox.db", "outbox.db-wal", "outbox.db-shm"):
        (work / stale).unlink(missing_ok=True)
    nodes: list[subprocess.Popen] = []
    print(f"\n  dashboard:  {dashboard_url('127.0.0.1', platform.http_port, platform.token)}"
          "   (counts every 10 s)\n"
          f"  MQTT:       mosquitto_sub -h 127.0.0.1 -p {mqtt_port} -t 'polelink/#' -v\n"
          f"  DALI bus:   {emu.path}   (held by the agent while it runs)\n"
          f"  schedule:   agent lights schedule --config {cfg}\n"
          f"  config:     {cfg}\n", flush=True)
    try:
        if a.nodes:
            nodes = start_nodes(a.nodes, work, mqtt_port, 21.03, lon)
        return run_agent(cfg, duration=a.duration)
    finally:
        stop_nodes(nodes)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:       # Ctrl-C before the agent runs (the clip, the broker)
        print("\ndemo: stopped (Ctrl-C)", file=sys.stderr)
        sys.exit(0)
