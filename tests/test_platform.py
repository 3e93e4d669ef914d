"""Platform simulator: receives, validates, detects gaps/duplicates, serves a dashboard that
headless Chromium renders, and sends commands the agent answers."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from sim.platform.store import Store
from tests.mqtt_broker import wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def msg(seq: int, kind: str = "event", **extra: object) -> bytes:
    body = {"schema": f"polelink/{kind}/1", "device": "p1", "site": "s1", "seq": seq,
            "msg_id": f"p1:{seq}", "ts": "2026-11-22T23:00:00Z", "event": "camera_lost",
            "severity": "alarm", "subject": "cam1", **extra}
    return json.dumps(body).encode()


def test_store_counts_gaps_duplicates_and_invalid() -> None:
    st = Store()
    for seq in (5, 6, 6, 8, 9):                       # 6 twice, 7 missing
        st.add("polelink/s1/p1/event", msg(seq), 0.0)
    assert st.add("polelink/s1/p1/event", b"{nope", 0.0)[0] == "invalid"
    outcome, probs = st.add("polelink/s1/p1/event", msg(10, severity="panic"), 0.0)
    assert outcome == "invalid" and "severity" in probs[0]
    s = st.summary()["p1"]
    assert (s["gaps"], s["duplicates"], s["invalid"], s["max_seq"]) == (1, 1, 2, 9)
    assert [m["seq"] for m in st.latest("event")] == [5, 6, 8, 9]


@pytest.mark.slow
def test_dashboard_renders_live_data_in_headless_chromium(tmp_path: Path, city_stack) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (CI installs the Debian package)")
    from agent.runner import Agent
    from agent.settings.schema import load_config
    from tests.helpers import NudgeClock, Running

    _, _, platform, cfg = city_stack
    clock = NudgeClock()
    agent = Agent(load_config(cfg), cfg, clock)
    with Running(agent):
        w = agent.workers["cam1"]
        assert wait_until(lambda: w.pipeline is not None and w.pipeline.frames > 10, 30)
        t_end = time.monotonic() + 60                 # until vehicles have been counted
        while time.monotonic() < t_end and not any(
                m.get("totalCount") for kind, m in list(agent.reporter.published)
                if kind == "traffic"):
            time.sleep(1.5)
            clock.skip(10)                            # close an interval now
        assert wait_until(lambda: "pole-7" in platform.state()["devices"]
                          and platform.state()["devices"]["pole-7"]["lighting"], 20)
        # a command from the platform, answered by the agent
        sent = platform.command({"device": "pole-7", "site": "lab", "command": "ping"})
        assert wait_until(lambda: any(r["correlation_id"] == sent["correlation_id"]
                                      for r in platform.store.latest("response")), 10)
        state = platform.state()
        assert state["invalid"] == 0
        dev = state["devices"]["pole-7"]
        assert dev["summary"]["gaps"] == 0 and dev["summary"]["status"] == "online"
        url = f"http://127.0.0.1:{platform.http_port}/"
        with urllib.request.urlopen(url + "api/state", timeout=5) as r:
            assert json.loads(r.read())["devices"]["pole-7"]["summary"]["gaps"] == 0
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={tmp_path / 'chrome'}",
                "--virtual-time-budget=5000", "--window-size=1200,800"]
        dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True,
                             timeout=90).stdout
        assert 'data-device="pole-7"' in dom and 'id="chart"' in dom and "online" in dom
        png = tmp_path / "dashboard.png"
        subprocess.run([*args, f"--screenshot={png}", url], capture_output=True, timeout=90)
        import cv2

        img = cv2.imread(str(png))
        assert img is not None and img.shape[1] == 1200
        assert float(np.std(img)) > 10                # not a blank page
        blue = ((img[:, :, 0] > 180) & (img[:, :, 1] > 100) & (img[:, :, 1] < 150)
                & (img[:, :, 2] < 100)).sum()
        assert blue > 50                              # the bar chart is drawn
        shutil.copy(png, Path("/tmp/polelink-dashboard.png"))

