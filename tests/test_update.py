"""Updates end to end, through real processes: a real mosquitto, the DALI emulator on a pty,
signed ``update`` commands over MQTT, bundles served by a loopback HTTP server, and a
supervisor that plays systemd (``tests/update_rig.py``): the guard before each start,
``current/venv/bin/agent run``, a restart on every exit, the guard's timer.

One pole lives through the whole story, in order: a good bundle (new version) is
installed beside the running release, switched to, reports healthy and is committed; a
replayed command is refused; bundles with a foreign signature, a tampered member or more
than the free disk are refused with nothing changed; a release that crashes at start and
one that starts but never reports healthy are rolled back by the guard, and the events
arrive when the old version is up again. The emulated gear's level is sampled throughout:
the lamps never drop below the safe level (100 % at night here)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.update.bundle import build
from tests.helpers import wait_until
from tests.pole_rig import PoleRig
from tests.test_failsafe import DEAD_CAMERA, STARTUP_S
from tests.update_rig import (
    SITE_PACKAGES,
    BundleServer,
    Supervisor,
    agent_wheel,
    base_release,
    keypair,
)

pytestmark = pytest.mark.slow

DEADLINE_S = 60           # the trial's health deadline (start + first 10 s interval fit)
SAFE = 100.0              # the safe level at night with no traffic data


def _crash_at_start(src: Path) -> None:
    p = src / "agent" / "runner.py"
    p.write_text(p.read_text().replace(
        '    """Load the config, run until stopped',
        '    raise RuntimeError("a release that crashes at start")\n    """Load the config, '
        'run until stopped', 1))


def _never_healthy(src: Path) -> None:
    """A release whose uplink never reaches the broker: no birth, so never healthy."""
    p = src / "agent" / "uplink" / "mqtt.py"
    text = p.read_text()
    assert text.count("client.connect(s.host, s.port,") == 2
    p.write_text(text.replace("client.connect(s.host, s.port,", "client.connect(s.host, 9,"))


class LampWatch:
    """Samples every gear's level every 20 ms once the lamps are first lit."""

    def __init__(self, rig: PoleRig) -> None:
        self.rig = rig
        self.lowest: list[float] = []
        self.samples = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> LampWatch:
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            lv = self.rig.levels()
            self.samples += 1
            self.lowest.append(min(lv))

    def stop(self) -> float:
        self._stop.set()
        self.thread.join(5)
        return min(self.lowest)


class Platform:
    """Sends signed commands as the city platform does."""

    def __init__(self, rig: PoleRig, key) -> None:
        self.rig, self.key = rig, key
        self.c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id="platform-update")
        self.c.connect("127.0.0.1", rig.broker.port)
        self.c.loop_start()

    def send(self, msg: dict) -> None:
        self.c.publish("polelink/lab/pole-9/cmd", json.dumps(msg), qos=1).wait_for_publish(5)

    def update(self, args: dict, cid: str) -> dict:
        from agent.uplink.commands import new_command

        msg = new_command("update", args, correlation_id=cid, device="pole-9", site="lab",
                          signing_key=self.key)
        self.send(msg)
        return msg

    def response(self, cid: str, timeout: float = 30) -> dict:
        def found():
            r = self.rig.col.where(lambda t, m, r: t.endswith("/cmd/response")
                                   and m.get("correlation_id") == cid)
            return r[-1] if r else None
        assert wait_until(lambda: found() is not None, timeout), self.rig.output()[-3000:]
        return found()

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _events(rig: PoleRig, name: str, cid: str | None = None) -> list[dict]:
    return [e for e in rig.events(name)
            if cid is None or e.get("detail", {}).get("correlationId") == cid]


def test_updates_commit_refuse_and_roll_back_with_the_lamps_lit(tmp_path: Path) -> None:
    t_start = time.monotonic()
    root = tmp_path / "polelink"
    base_release(root)
    cmd_key, _, cmd_pub = keypair(tmp_path, "commands")
    upd_key, _, upd_pub = keypair(tmp_path, "updates")
    foreign, _, _ = keypair(tmp_path, "foreign")
    served = tmp_path / "served"
    served.mkdir()
    # bundles: built before the pole starts (about 3 s each)
    build("0.2.0", agent_wheel(tmp_path, "0.2.0"), upd_key, served / "good.tar")
    build("0.3.0", agent_wheel(tmp_path, "0.3.0", _crash_at_start), upd_key,
          served / "crash.tar")
    build("0.3.1", agent_wheel(tmp_path, "0.3.1", _never_healthy), upd_key,
          served / "unhealthy.tar")
    wh3 = agent_wheel(tmp_path, "0.4.0")
    build("0.4.0", wh3, foreign, served / "foreign.tar")
    build("0.4.0", wh3, upd_key, served / "huge.tar", required_bytes=1 << 49)
    from tests.test_update_bundle import _rewrite
    _rewrite(served / "good.tar", served / "tampered.tar",
             lambda n, d: d.replace(b"PK", b"PL", 1) if n.startswith("wheels/") else d)
    built_s = time.monotonic() - t_start

    rig = PoleRig(tmp_path, DEAD_CAMERA)
    with rig.cfg.open("a") as f:
        f.write(f"""  commands: {{verify_key: {cmd_pub}}}
update:
  root: {root}
  verify_key: {upd_pub}
  health_deadline_s: {DEADLINE_S}
  max_trial_starts: 2
  free_margin_mb: 1
  site_packages_from: {SITE_PACKAGES}
""")
    server = BundleServer(served)
    sup = Supervisor(root, rig.cfg, rig.log)
    lamps = LampWatch(rig)
    platform: Platform | None = None
    timings: dict[str, float] = {"build_bundles_s": round(built_s, 1)}
    try:
        sup.start()
        assert rig.wait_levels(lambda lv: all(v >= SAFE for v in lv), STARTUP_S), \
            rig.output()[-3000:]
        lamps.start()
        assert wait_until(lambda: rig.col.where(
            lambda t, m, r: t.endswith("/status") and m.get("state") == "online"), 20)
        platform = Platform(rig, cmd_key)

        # -- a good bundle: installed, switched, healthy, committed ------------------------
        t0 = time.monotonic()
        platform.update({"url": server.url("good.tar")}, "u-good")
        r = platform.response("u-good")
        assert r["result"] == "ok" and r["data"]["running"] == "0.1.0", r
        assert wait_until(lambda: _events(rig, "update_committed", "u-good"),
                          DEADLINE_S + 60), rig.output()[-4000:]
        timings["good_command_to_committed_s"] = round(time.monotonic() - t0, 1)
        steps = [e["event"] for e in rig.events("update_downloaded") + rig.events(
            "update_verified") + rig.events("update_installed") + rig.events("update_switched")]
        assert steps == ["update_downloaded", "update_verified", "update_installed",
                         "update_switched"], steps
        ev = _events(rig, "update_committed", "u-good")[0]["detail"]
        assert ev["version"] == "0.2.0" and ev["previous"] == "0.1.0"
        assert all(ev["checks"].values()), ev
        assert sup.current() == "0.2.0" and (root / "previous").resolve().name == "0.1.0"
        assert not (root / "update" / "trial.json").exists()
        assert [v for _, v in sup.starts] == ["0.1.0", "0.2.0"]
        pong = _ping(platform, "p1")
        assert pong["data"]["version"] == "0.2.0", pong

        # -- a replay of the same signed command is refused by the guard --------------------
        first = platform.update({"url": server.url("good.tar")}, "u-replay")
        platform.response("u-replay")
        platform.send(first)
        assert wait_until(lambda: len(rig.col.where(
            lambda t, m, r: t.endswith("/cmd/response")
            and m.get("correlation_id") == "u-replay")) == 2, 30)
        again = rig.col.where(lambda t, m, r: t.endswith("/cmd/response")
                              and m.get("correlation_id") == "u-replay")[-1]
        assert again["result"] == "error" and "duplicate" in again["error"], again
        assert wait_until(lambda: _events(rig, "update_failed", "u-replay"), 30)
        assert "already running" in _events(rig, "update_failed", "u-replay")[0]["detail"][
            "reason"]

        # -- refused bundles change nothing --------------------------------------------------
        before = sorted(p.name for p in (root / "releases").iterdir())
        for name, why in (("foreign.tar", "signature does not verify"),
                          ("tampered.tar", "does not match the manifest"),
                          ("huge.tar", "not enough free disk")):
            cid = f"u-{name}"
            platform.update({"url": server.url(name)}, cid)
            assert platform.response(cid)["result"] == "ok"
            assert wait_until(lambda c=cid: _events(rig, "update_failed", c), 30)
            d = _events(rig, "update_failed", cid)[0]["detail"]
            assert d["step"] == "check" and why in d["reason"], d
            assert sorted(p.name for p in (root / "releases").iterdir()) == before
            assert sup.current() == "0.2.0"
            assert not list((root / "update" / "downloads").glob("*"))
        bad = platform.update({"url": "http://192.0.2.1/x.tar"}, "u-host")
        r = platform.response("u-host")
        assert r["result"] == "error" and "not an update host" in r["error"], (r, bad)

        # -- a release that crashes at start: rolled back after max_trial_starts -----------
        t0 = time.monotonic()
        platform.update({"url": server.url("crash.tar"), "version": "0.3.0"}, "u-crash")
        assert platform.response("u-crash")["result"] == "ok"
        assert wait_until(lambda: _events(rig, "update_rolled_back", "u-crash"), 150), \
            rig.output()[-4000:]
        timings["crash_command_to_rolled_back_event_s"] = round(time.monotonic() - t0, 1)
        d = _events(rig, "update_rolled_back", "u-crash")[0]["detail"]
        assert d["version"] == "0.3.0" and d["previous"] == "0.2.0" and d["starts"] == 2, d
        assert "exit_status=1" in d["lastExit"] and d["runningNow"] == "0.2.0", d
        assert sup.current() == "0.2.0"
        assert [v for _, v in sup.starts][-3:] == ["0.3.0", "0.3.0", "0.2.0"], sup.starts
        assert "a release that crashes at start" in rig.output()

        # -- a release that starts but never reports healthy: rolled back at the deadline --
        t0 = time.monotonic()
        platform.update({"url": server.url("unhealthy.tar")}, "u-sick")
        assert platform.response("u-sick")["result"] == "ok"
        assert wait_until(lambda: sup.current() == "0.3.1", 90), rig.output()[-3000:]
        t_switch = time.monotonic()
        assert wait_until(lambda: _events(rig, "update_rolled_back", "u-sick"),
                          DEADLINE_S + 90), rig.output()[-4000:]
        timings["unhealthy_switch_to_rolled_back_event_s"] = round(time.monotonic() - t_switch, 1)
        timings["unhealthy_command_to_rolled_back_event_s"] = round(time.monotonic() - t0, 1)
        d = _events(rig, "update_rolled_back", "u-sick")[0]["detail"]
        assert d["version"] == "0.3.1" and "not healthy within" in d["reason"], d
        assert d["trialSeconds"] >= DEADLINE_S - 1
        assert sup.current() == "0.2.0" and sup.rollbacks == 1
        assert not _events(rig, "update_committed", "u-sick")
        assert _ping(platform, "p2")["data"]["version"] == "0.2.0"

        # -- the lamps stayed lit through every switch --------------------------------------
        lowest = lamps.stop()
        assert lowest >= SAFE, f"lamps dropped to {lowest} % (safe {SAFE} %)"
        assert lamps.samples > 1000
        timings["agent_starts"] = len(sup.starts)
        timings["lamp_samples"] = lamps.samples
        timings["total_s"] = round(time.monotonic() - t_start, 1)
        print("update timings:", json.dumps(timings))
        for m in rig.col.where(lambda t, m, r: t.endswith("/event")
                               and str(m.get("event", "")).startswith("update_")):
            from agent.uplink.contract import errors
            assert not errors("event", m), m
        assert sup.stop() == 0
    finally:
        lamps.stop() if lamps.thread.is_alive() else None
        sup.stop()
        if platform is not None:
            platform.close()
        server.close()
        rig.close()


def _ping(platform: Platform, cid: str) -> dict:
    from agent.uplink.commands import new_command

    platform.send(new_command("ping", correlation_id=cid, device="pole-9", site="lab",
                              signing_key=platform.key))
    return platform.response(cid)
