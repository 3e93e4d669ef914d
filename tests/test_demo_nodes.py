"""``make demo NODES=2``: the demo starts two lamp nodes (the node's own code in the real
MicroPython unix port) beside the agent, and the platform dashboard's ``/api/state`` shows
them as ``node`` devices with a level and a clock state; the demo stops them when it ends."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from sim.demo import free_port
from sim.traffic import write_clip
from tests.conftest import ROOT, SHARED, need_shared
from tests.helpers import SLACK_S

MICROPYTHON = SHARED / "bin" / "micropython"
LIB = SHARED / "micropython-lib"


def test_demo_runs_two_lamp_nodes_that_the_dashboard_shows(tmp_path: Path) -> None:
    need_shared(MICROPYTHON, LIB / "umqtt.simple")
    write_clip(tmp_path / "clip.mp4", 10, seed=1)     # a short clip: the demo loops it
    port = free_port(0)
    # stopped with Ctrl-C once the nodes show (not by --duration, which a slow start on a
    # busy machine could outrun)
    proc = subprocess.Popen([sys.executable, "-m", "sim.demo", "--nodes", "2", "--duration",
                             "600", "--http-port", str(port), "--workdir", str(tmp_path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    wanted = {"demo-node-01", "demo-node-02"}
    seen: dict = {}
    try:
        deadline = time.monotonic() + 30 + 4 * SLACK_S
        while time.monotonic() < deadline and proc.poll() is None:
            url = next((m.group(1) for ln in list(lines)
                        if (m := re.search(r"dashboard:\s+(http://[^/]+)/", ln))), None)
            if url:
                try:
                    with urllib.request.urlopen(url + "/api/state", timeout=2) as r:
                        devices = json.load(r)["devices"]
                except OSError:
                    devices = {}
                seen = {d: v for d, v in devices.items()
                        if d in wanted and v.get("role") == "node"
                        and (v.get("node") or {}).get("level") is not None}
                if set(seen) == wanted:
                    break
            time.sleep(0.5)
        assert set(seen) == wanted, "".join(lines)
        for dev, v in seen.items():
            n = v["node"]
            assert 0 <= n["level"] <= 100, (dev, n)
            assert n["clock"] in ("trusted", "never-synced", "untrusted"), (dev, n)
            assert v["site"] == "sim-city", (dev, v)
        cfg = json.loads((tmp_path / "nodes" / "demo-node-01.json").read_text())
        assert cfg["site"] == "sim-city" and cfg["mqtt"]["host"] == "127.0.0.1"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(5)
    out = "".join(lines)
    assert "Traceback" not in out, out
    # the demo's cleanup stopped the nodes: no MicroPython process holds their configs
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "nodes")], capture_output=True,
                          text=True).stdout.split()
    assert not left, f"lamp node processes left running: {left}"
    node_log = (tmp_path / "nodes" / "demo-node-01.log").read_text()
    assert "Traceback" not in node_log.replace("KeyboardInterrupt", ""), node_log
