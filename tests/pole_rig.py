"""A whole pole for fault tests: a real mosquitto, the DALI emulator on a pty (behind a
stable link, so it can be unplugged and plugged back), an MQTT subscriber, and the real
``agent run`` process. The pole is placed at a longitude where it is night (or day) now."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from drivers.dali.ops import arc_to_percent
from sim.dali import DaliEmulator, make_gear
from tests.conftest import ROOT, SIMNET
from tests.mqtt_broker import Broker, Collector

TIMES_FILE = os.environ.get("POLELINK_FAILSAFE_TIMES")
#: The DALI bus's reply timeout in the rig: the emulator answers from a thread of the test
#: process, which a busy machine may run late; 0.1 s gave false bus faults under load.
BUS_TIMEOUT_S = 0.5


def longitude_at(local_hour: float) -> float:
    """A longitude where the local mean solar time is ``local_hour`` now."""
    now = datetime.now(UTC)
    hour = now.hour + now.minute / 60
    return round(((local_hour - hour) * 15 + 180) % 360 - 180, 2)


def longitude_where(elevation_deg: float, at: float, falling: bool = True) -> float:
    """A longitude (latitude 0, as the rig's) where the sun stands at ``elevation_deg`` at
    epoch ``at``, going down (``falling``) or up: e.g. -0.833 is sunset at ``at``."""
    from agent.common.sun import elevation_at
    best = min((abs(elevation_at(0.0, lon / 20, at) - elevation_deg), lon / 20)
               for lon in range(-3600, 3600)
               if (elevation_at(0.0, lon / 20, at + 600) < elevation_at(0.0, lon / 20, at))
               == falling)
    return best[1]


def record_time(row: str, seconds: float, bound: float) -> None:
    """Keep a measured fault → safe time for bench/failsafe.py (when it asks)."""
    if TIMES_FILE:
        with open(TIMES_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps({"row": row, "seconds": round(seconds, 2), "bound": bound}) + "\n")


class PoleRig:
    """See the module docstring."""

    def __init__(self, tmp: Path, camera_source: str | None, night: bool = True, gear: int = 2,
                 lighting: str = "", clock: str = "{sources: [assume_synced]}",
                 detector: Path = SIMNET, interval_s: int = 10, group: str = "",
                 longitude: float | None = None, camera: str = "") -> None:
        self.tmp = tmp
        self.broker = Broker(tmp).start()
        self.emu = DaliEmulator(make_gear(gear), "hat", link=tmp / "dali0").start()
        self.col = Collector(self.broker.port, "polelink/#")
        self.cfg = tmp / "pole.yaml"
        self.log = tmp / "agent.log"
        self.proc: subprocess.Popen | None = None
        lon = longitude_at(1.0 if night else 12.5) if longitude is None else longitude
        # camera_source None: a lighting-only pole (cameras: [])
        cameras = "cameras: []" if camera_source is None else f"""cameras:
  - name: cam1
    source: {camera_source}
    detector: {{model: {detector}}}
    lines: [{{name: main, points: [[115, 198], [524, 198]]}}]
    {camera}"""
        self.cfg.write_text(f"""
device: {{id: pole-9, site: lab}}
{cameras}
aggregates: {{interval_s: {interval_s}, path: {tmp / 'agg.jsonl'}}}
clock: {clock}
lighting:
  latitude: 0.0
  longitude: {lon}
  model: {ROOT / 'models' / 'dimming.md'}
  overrides_path: {tmp / 'overrides.json'}
  tick_s: 0.5
  status_period_s: 2
  energy_period_s: 5
  camera_stale_s: 6
  traffic_min_coverage_s: 4
{lighting}
  buses: [{{name: dali1, kind: dali, port: {self.emu.path}, codec: hat, timeout_s: {BUS_TIMEOUT_S}}}]
  groups: [{{name: street, bus: dali1, address: broadcast,
             cameras: [{'' if camera_source is None else 'cam1'}],
             design_peak_vph: 20000{group}}}]
mqtt:
  port: {self.broker.port}
  reconnect_min_s: 0.2
  outbox_path: {tmp / 'outbox.db'}
""")

    # -- the agent process ---------------------------------------------------------------
    def start(self, env: dict[str, str] | None = None) -> float:
        """Start ``agent run``; returns the monotonic time it was started."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(self.cfg), "-q"],
            cwd=ROOT, stdout=self.log.open("a"), stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        return time.monotonic()

    def signal(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        """Send ``sig`` and wait for the exit; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        """The agent process is still running."""
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        """The agent's log so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # -- what the pole shows ------------------------------------------------------------------
    def levels(self) -> list[float]:
        """Every gear's light output in percent."""
        return [round(arc_to_percent(g.level), 1) for g in self.emu.gear]

    def wait_levels(self, pred, timeout: float) -> float | None:
        """Wait until ``pred(levels)``; the monotonic time it held, or None."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if pred(self.levels()):
                return time.monotonic()
            time.sleep(0.05)
        return None

    def events(self, name: str) -> list[dict]:
        """Events of this kind seen on MQTT."""
        return self.col.where(lambda t, m, r: t.endswith("/event") and m.get("event") == name)

    def lighting(self) -> list[dict]:
        """Lighting messages seen on MQTT."""
        return self.col.where(lambda t, m, r: "/lighting/" in t)

    def aggregates(self) -> list[dict]:
        """The JSON-lines records written so far."""
        p = self.tmp / "agg.jsonl"
        return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() \
            else []

    def close(self) -> None:
        """Stop everything."""
        if self.alive():
            self.proc.kill()  # type: ignore[union-attr]
            self.proc.wait()  # type: ignore[union-attr]
        self.col.close()
        self.emu.stop()
        self.broker.stop()
