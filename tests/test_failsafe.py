"""The fail-safe chain, row by row, through the real ``agent run`` process: a DALI emulator
on a pty, a real mosquitto, real cameras (a live MJPEG server, a file, an unreachable
stream). Each test reads the emulator's lamp levels and the events and records on MQTT,
and states the bound it holds the lamps to. With POLELINK_FAILSAFE_TIMES set, each
measured fault → safe time is recorded (``bench/failsafe.py``)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.uplink.commands import new_command
from sim.gnss import GnssEmulator
from sim.traffic import SceneConfig, write_clip
from tests.conftest import ROOT, SIMNET
from tests.helpers import SLACK_S, free_port, wait_until
from tests.pole_rig import BUS_TIMEOUT_S, PoleRig, longitude_where, record_time

pytestmark = pytest.mark.slow

DEAD_CAMERA = '{kind: stream, url: "rtsp://127.0.0.1:9/none", stall_timeout_s: 2}'
FLOOR = 30.0                                   # M3's class floor
STARTUP_S = 25.0                               # a cold Python start on a busy 2-core machine


def live_camera() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sim.traffic", "--serve", f"127.0.0.1:{port}",
                             "--fps", "15", "--density", "40"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert "serving" in proc.stdout.readline()  # type: ignore[union-attr]
    return proc, (f'{{kind: stream, url: "http://127.0.0.1:{port}/stream.mjpg", '
                  f'stall_timeout_s: 2, reconnect_initial_s: 0.5}}')


def all_at_least(level: float):
    return lambda levels: all(v >= level - 0.01 for v in levels)


def command(rig: PoleRig, body: dict) -> None:
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="platform-t")
    c.connect("127.0.0.1", rig.broker.port)
    c.loop_start()
    msg = {**new_command(body["command"], body.get("args"),
                         correlation_id=body.get("correlation_id")), **body}
    c.publish("polelink/lab/pole-9/cmd", json.dumps(msg), qos=1).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def response(rig: PoleRig, cid: str) -> dict | None:
    found = rig.col.where(lambda t, m, r: t.endswith("/cmd/response")
                          and m.get("correlation_id") == cid)
    return found[-1] if found else None


def started_and_lit(rig: PoleRig, row: str, pred=None) -> None:
    """Start the agent; the lamps must reach ``pred`` (default: 100 %) within the start-up
    budget; the time it took is recorded for ``row``."""
    t0 = rig.start()
    t = rig.wait_levels(pred or all_at_least(100), STARTUP_S)
    assert t is not None, rig.output()[-3000:]
    record_time(f"{row} (from process start)", t - t0, STARTUP_S)


def dimmed(rig: PoleRig, timeout: float = 90) -> bool:
    """Wait until the lamps are dimmed by traffic (mode adaptive, below 100 %)."""
    return wait_until(lambda: any(m["lampActuator"]["mode"] == "adaptive"
                                  for m in rig.lighting())
                      and all(v < 99 for v in rig.levels()), timeout)


def test_camera_never_reachable_lights_the_road_on_schedule(tmp_path: Path) -> None:
    """Row 1: the lamps, off before the start, go to the schedule's level at night."""
    rig = PoleRig(tmp_path, DEAD_CAMERA)
    try:
        assert rig.levels() == [0.0, 0.0]
        started_and_lit(rig, "camera never reachable")
        assert wait_until(lambda: rig.events("camera_lost"), 20), rig.output()[-2000:]
        ev = rig.events("failsafe_entered")[0]
        assert ev["detail"]["mode"] == "fallback" and "cam1" in ev["detail"]["reasons"][0]
        assert wait_until(lambda: rig.lighting(), 15)
        lt = rig.lighting()[-1]
        assert lt["lampActuator"]["mode"] == "fallback" and lt["clockTrusted"] is True
        assert wait_until(lambda: any(r["frames_analysed"] == 0 for r in rig.aggregates()), 15)
        rec = rig.aggregates()[-1]
        assert rec["camera_state"] in ("reconnecting", "starting") and rec["frames_analysed"] == 0
        assert all(v >= FLOOR for v in rig.levels())
        assert rig.signal() == 0
    finally:
        rig.close()


def test_camera_dying_mid_run_returns_to_the_schedule_level(tmp_path: Path) -> None:
    """Row 2: dimmed by traffic, then the camera dies: back to the step's fallback level
    within camera_stale_s (6 s) and a tick."""
    server, source = live_camera()
    rig = PoleRig(tmp_path, source, group=", ramp_down_pct_per_min: 100")
    try:
        rig.start()
        assert dimmed(rig), rig.output()[-3000:]
        server.kill()
        server.wait()
        t_dead = time.monotonic()
        t = rig.wait_levels(all_at_least(100), 30)
        assert t is not None, rig.output()[-3000:]
        # bound: camera_stale_s + a tick, plus this loop's 50 ms polling and a bus round trip
        record_time("camera dies mid-run (from the last frame)", t - t_dead, 6.6)
        # stale bound + a tick + MJPEG buffering, and what a busy machine adds (the bound
        # on a quiet machine is measured by bench/failsafe.py)
        assert t - t_dead <= 6.0 + 0.5 + 3.0 + SLACK_S
        ev = rig.events("failsafe_entered")[-1]
        assert "no traffic data from camera cam1" in ev["detail"]["reasons"][0]
        assert wait_until(lambda: rig.events("camera_lost"), 20)
        # no interval twice, none overlapping
        recs = rig.aggregates()
        keys = [(r["camera"], r["line"], r["interval_start"]) for r in recs]
        assert len(keys) == len(set(keys))
        assert all(a["interval_end"] <= b["interval_start"] for a, b in itertools.pairwise(recs))
        assert rig.signal() == 0
    finally:
        server.kill()
        rig.close()


def test_camera_file_removed_keeps_the_agent_running(tmp_path: Path) -> None:
    """Row 3: the video file is deleted: the agent keeps running, the lamps go back to the
    schedule level once the camera is stale."""
    clip = tmp_path / "cam.avi"
    write_clip(clip, 12, seed=4, cfg=SceneConfig(vehicles_per_minute=60))
    rig = PoleRig(tmp_path, f"{{kind: file, path: {clip}, loop: true, realtime: true, "
                            f"reconnect_initial_s: 0.5}}", group=", ramp_down_pct_per_min: 100")
    try:
        rig.start()
        assert dimmed(rig), rig.output()[-3000:]
        clip.unlink()
        t_gone = time.monotonic()
        # the open file plays to its end (at most 12 s), then the camera is stale after 6 s
        t = rig.wait_levels(all_at_least(100), 40)
        assert t is not None, rig.output()[-3000:]
        record_time("camera file removed (from the deletion)", t - t_gone, 12 + 6.5)
        assert rig.alive()
        # the outage shows as data: intervals keep closing, without frames, state error
        assert wait_until(lambda: rig.aggregates()[-1]["camera_state"] == "error"
                          and rig.aggregates()[-1]["frames_analysed"] == 0, 25)
        assert rig.signal() == 0
    finally:
        rig.close()


def test_bus_unplugged_and_back_is_reopened_with_one_alarm(tmp_path: Path) -> None:
    """Row 4: the DALI cable is pulled for 8 s, the lamps are reset meanwhile, the cable
    comes back: reopened with back-off, bus_restored, the level sent again."""
    rig = PoleRig(tmp_path, DEAD_CAMERA)
    try:
        rig.start()
        assert rig.wait_levels(all_at_least(100), STARTUP_S)
        rig.emu.unplug()
        assert wait_until(lambda: rig.events("bus_fault"), 10), rig.output()[-2000:]
        time.sleep(8)
        for g in rig.emu.gear:
            g.level = 0                                  # the luminaires lost their level
        rig.emu.replug()
        t_back = time.monotonic()
        t = rig.wait_levels(all_at_least(100), 30)
        assert t is not None, rig.output()[-3000:]
        record_time("bus unplugged, then back (from the replug)", t - t_back, 16.5)
        assert wait_until(lambda: rig.events("bus_restored"), 10)
        assert len(rig.events("bus_fault")) == 1         # one alarm, not one per tick
        assert rig.signal() == 0
    finally:
        rig.close()


def test_missing_dimming_model_is_the_safe_level(tmp_path: Path) -> None:
    """Row 5: a dimming model card whose model file is missing: the safe level."""
    card = tmp_path / "dimming.md"
    shutil.copy(ROOT / "models" / "dimming.md", card)        # without dimming.onnx beside it
    rig = PoleRig(tmp_path, DEAD_CAMERA, lighting=f"  model: {card}",
                  group=", safe_pct: 90")
    rig.cfg.write_text(rig.cfg.read_text().replace(
        f"  model: {ROOT / 'models' / 'dimming.md'}\n", ""))
    try:
        started_and_lit(rig, "dimming model missing", lambda lv: all(90 <= v < 95 for v in lv))
        assert wait_until(lambda: rig.lighting(), 15)
        la = rig.lighting()[-1]["lampActuator"]
        assert la["mode"] == "failsafe" and "dimming.onnx" in " ".join(la["reasons"])
        assert rig.signal() == 0
    finally:
        rig.close()


def test_untrusted_clock_keeps_lamps_on_by_day(tmp_path: Path) -> None:
    """Row 6: at noon, a GNSS receiver says the clock is 8 h off: the clock is not trusted,
    so the lamps burn at the safe level (never dimmed, never off)."""
    gnss = GnssEmulator(offset_s=-8 * 3600, period_s=0.5).start()
    rig = PoleRig(tmp_path, DEAD_CAMERA, night=False,
                  clock=f"{{sources: [gnss], gnss: {{port: {gnss.path}}}}}")
    try:
        started_and_lit(rig, "clock untrusted")
        assert wait_until(lambda: rig.events("clock_untrusted"), 15)
        assert wait_until(lambda: any("+28800 s off GNSS" in " ".join(m["lampActuator"]["reasons"])
                                      for m in rig.lighting()), 20)
        lt = rig.lighting()[-1]
        assert lt["clockTrusted"] is False and lt["lampActuator"]["mode"] == "failsafe"
        gnss.offset_s = 0                                # GNSS agrees again: noon, lamps off
        assert rig.wait_levels(lambda lv: all(v == 0 for v in lv), 20), rig.output()[-2000:]
        assert wait_until(lambda: rig.events("clock_trusted"), 10)
        assert rig.signal() == 0
    finally:
        rig.close()
        gnss.stop()


def test_stop_signals_leave_the_safe_level_and_restarts_never_overlap(tmp_path: Path
                                                                             ) -> None:
    """Row 7: a fixed 50 % step at night; SIGTERM leaves the lamps at the safe level; a
    restart within the same interval, then SIGINT, SIGHUP (a terminal hang-up) and SIGQUIT:
    the same, each with one log line naming it, and the records of the runs do not
    overlap."""
    rig = PoleRig(tmp_path, DEAD_CAMERA, interval_s=3600, lighting="""  timezone: UTC
  programs:
    fixed: [{at: sunset, level: 50}, {at: sunrise, level: 0}]""",
                  group=", ramp_down_pct_per_min: 100")
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
            rig.start()
            # a start at night ramps down from the safe level (100 %/min here) towards 50 %
            assert rig.wait_levels(lambda lv: all(50 <= v < 95 for v in lv), STARTUP_S + 10), \
                rig.output()[-3000:]
            t_sig = time.monotonic()
            assert rig.signal(sig) == 0
            record_time(f"{signal.Signals(sig).name} (from the signal to the exit)",
                        time.monotonic() - t_sig, 10)
            assert all(v == 100 for v in rig.levels()), rig.levels()
            assert "lamps left at their safe level" in rig.output()
            name = signal.Signals(sig).name
            assert rig.output().count(f"{name}: stopping; the lamps go to their safe level") \
                == 1, rig.output()[-3000:]
            for g in rig.emu.gear:
                g.level = 0
        recs = rig.aggregates()
        # each run's first record begins at its start and its last ends at its stop (both
        # partial); whatever boundary the runs straddle, no two records overlap
        assert len(recs) >= 2 and recs[0]["partial"] and recs[-1]["partial"]
        assert all(a["interval_end"] <= b["interval_start"]
                   for a, b in itertools.pairwise(recs)), recs
    finally:
        rig.close()


def test_a_camera_whose_model_fails_is_reported_and_lighting_runs(tmp_path: Path) -> None:
    """Row 8: a camera's model card points at a missing file: the camera is reported
    (model_error), the pole runs and lights."""
    card = tmp_path / "broken.yaml"
    shutil.copy(SIMNET, card)                                   # its simnet.onnx is not here
    server, source = live_camera()
    rig = PoleRig(tmp_path, source, detector=card)
    try:
        started_and_lit(rig, "a camera's model fails to load")
        assert wait_until(lambda: rig.events("camera_lost"), 15)
        assert rig.events("camera_lost")[0]["detail"]["state"] == "model_error"
        assert wait_until(lambda: rig.aggregates(), 15)
        assert rig.aggregates()[-1]["camera_state"] == "model_error"
        assert rig.alive()
        assert rig.signal() == 0
    finally:
        server.kill()
        rig.close()


def test_reload_failure_keeps_the_running_config_and_ports_are_exclusive(tmp_path: Path
                                                                        ) -> None:
    """A reload whose new bus cannot open, or whose dimming model cannot load where one
    runs, is refused as a whole (the old config keeps running); a technician command on
    the agent's port is refused clearly."""
    rig = PoleRig(tmp_path, DEAD_CAMERA)
    try:
        rig.start()
        assert rig.wait_levels(all_at_least(100), STARTUP_S)
        r = subprocess.run([sys.executable, "-m", "agent", "lights", "query", "--port",
                            rig.emu.path], capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert r.returncode == 3 and "in use by the running agent" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        good = rig.cfg.read_text()
        rig.cfg.write_text(good.replace(
            f"codec: hat, timeout_s: {BUS_TIMEOUT_S}}}]",
            f"codec: hat, timeout_s: {BUS_TIMEOUT_S}}}, "
            "{name: dali2, kind: dali, port: /dev/no-such-port}]"))
        assert "/dev/no-such-port" in rig.cfg.read_text()
        command(rig, {"correlation_id": "r1", "command": "reload_config"})
        assert wait_until(lambda: response(rig, "r1"), 30), rig.output()[-2000:]
        bad = response(rig, "r1")
        assert bad["result"] == "error" and "nothing changed" in bad["error"], bad
        assert "/dev/no-such-port" in bad["error"]
        command(rig, {"correlation_id": "o1", "command": "set_override",
                      "args": {"level_pct": 60, "expires_in_s": 600}})
        assert wait_until(lambda: response(rig, "o1"), 15)
        assert response(rig, "o1")["result"] == "ok"           # the old config still runs
        assert wait_until(lambda: any(m["lampActuator"]["mode"] == "override"
                                      and m["lampActuator"]["targetLightState"] < 100
                                      for m in rig.lighting()), 20)  # ramping down to 60 %
        # a dimming model that cannot load, in place of a working one: refused as a whole
        card = tmp_path / "dimming.md"                       # its dimming.onnx is not here
        card.write_text((ROOT / "models" / "dimming.md").read_text())
        rig.cfg.write_text(good.replace(str(ROOT / "models" / "dimming.md"), str(card)))
        command(rig, {"correlation_id": "r3", "command": "reload_config"})
        assert wait_until(lambda: response(rig, "r3"), 30), rig.output()[-2000:]
        bad = response(rig, "r3")
        assert bad["result"] == "error" and "dimming model cannot be loaded, nothing " \
            "changed" in bad["error"], bad
        rig.cfg.write_text(good.replace("design_peak_vph: 20000", "design_peak_vph: 15000"))
        command(rig, {"correlation_id": "r2", "command": "reload_config"})
        assert wait_until(lambda: response(rig, "r2"), 30)
        assert response(rig, "r2")["result"] == "ok", response(rig, "r2")
        assert wait_until(lambda: rig.events("config_reloaded"), 10)
        for g in rig.emu.gear:                       # after a reload the lamps are still driven
            g.level = 0
        assert rig.wait_levels(lambda lv: all(v > 50 for v in lv), 70), rig.output()[-2000:]
        assert rig.signal() == 0
        assert all(v == 100 for v in rig.levels())   # and SIGTERM still reaches them
    finally:
        rig.close()


def test_a_lighting_only_pole_lights_on_its_program(tmp_path: Path) -> None:
    """A pole with lamps and no camera (``cameras: []``): it starts, follows its fixed
    program at night (50 %, ramped down from the safe level), reports lighting, and never
    claims a camera; ``agent validate`` refuses an adaptive step there, located."""
    rig = PoleRig(tmp_path, None, lighting="""  timezone: UTC
  programs:
    fixed: [{at: sunset, level: 50}, {at: sunrise, level: 0}]""",
                  group=", ramp_down_pct_per_min: 100")
    try:
        started_and_lit(rig, "a lighting-only pole")
        assert rig.wait_levels(lambda lv: all(49 <= v <= 51 for v in lv), 90), rig.levels()
        assert wait_until(lambda: rig.lighting(), 30)
        assert not rig.events("camera_lost") and rig.alive()
        assert rig.signal() == 0
        assert all(v == 100 for v in rig.levels())
    finally:
        rig.close()
    text = rig.cfg.read_text().replace("{at: sunset, level: 50}",
                                       "{at: sunset, adaptive: {min: 50, max: 100}}")
    rig.cfg.write_text(text)
    line = next(i for i, x in enumerate(text.splitlines(), 1) if "adaptive" in x)
    r = subprocess.run([sys.executable, "-m", "agent", "validate", str(rig.cfg)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode != 0 and f"{rig.cfg}:{line}:" in r.stderr + r.stdout, \
        r.stdout + r.stderr
    assert "adaptive dimming needs traffic from a camera" in r.stderr + r.stdout
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("step_s", [-6 * 3600, 6 * 3600])
def test_a_clock_step_at_night_never_stops_lighting_or_health_records(tmp_path: Path,
                                                                       step_s: int) -> None:
    """The wall clock steps back (or forward) 6 h at night, 12 s after the start: lighting
    and health records keep coming, on the new time (before, a step back left hours of
    silence)."""
    now = time.time()
    start = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    rig = PoleRig(tmp_path, DEAD_CAMERA)
    try:
        rig.start(env={"POLELINK_SIM_CLOCK": f"start={start},speed=1,anchor={now},synced=1,"
                                             f"jump=12:{step_s:+d}"})
        assert wait_until(lambda: time.time() - now > 14, 30)
        t_jump = time.monotonic()

        def after(kind: str) -> list[dict]:
            return [m for m in rig.col.where(lambda t, m, r: f"/{kind}" in t)
                    if abs(datetime.fromisoformat(m["ts"].replace("Z", "+00:00")).timestamp()
                           - (time.time() + step_s)) < 60]
        assert wait_until(lambda: len(after("lighting")) >= 2 and len(after("health")) >= 2,
                          40), (rig.output()[-3000:], time.monotonic() - t_jump)
        assert rig.alive()
        assert all(v >= FLOOR for v in rig.levels())
        assert rig.signal() == 0
    finally:
        rig.close()


def test_a_zero_override_in_twilight_is_held_at_the_floor_and_ramped(tmp_path: Path) -> None:
    """Five minutes after sunset (sun about -1°, the built-in program's sunset step has the
    lamps at full), a 0 % override: the lamps ramp down towards the class floor instead of
    going dark at once (before: 100 → 0 % in one step, the floor only held below -6°)."""
    rig = PoleRig(tmp_path, DEAD_CAMERA, longitude=longitude_where(-1.2, time.time()))
    try:
        started_and_lit(rig, "twilight override")
        command(rig, {"correlation_id": "z1", "command": "set_override",
                      "args": {"level_pct": 0, "expires_in_s": 600}})
        assert wait_until(lambda: response(rig, "z1"), 15), rig.output()[-2000:]
        assert response(rig, "z1")["result"] == "ok", response(rig, "z1")
        assert wait_until(lambda: any(m["lampActuator"]["mode"] == "override"
                                      for m in rig.lighting()), 20), rig.output()[-2000:]
        lowest = 100.0
        end = time.monotonic() + 8
        while time.monotonic() < end:
            lowest = min(lowest, *rig.levels())
            time.sleep(0.1)
        assert lowest >= 80, lowest                 # ramped (10 %/min), not switched off
        assert rig.signal() == 0
    finally:
        rig.close()


def test_a_slow_gateway_is_one_bus_slow_event_not_lamp_alarms(tmp_path: Path) -> None:
    """The gateway answers in 90 ms (± 20 ms) against a 100 ms deadline, through agent run
    for 20 s: the lamps are driven, no lamp_failure or luminaire_unreachable alarm (before:
    false alarms clearing 5 s later), and one bus_slow event naming the new deadline."""
    rig = PoleRig(tmp_path, DEAD_CAMERA)
    rig.cfg.write_text(rig.cfg.read_text().replace(f"timeout_s: {BUS_TIMEOUT_S}}}",
                                                   "timeout_s: 0.1}"))
    rig.emu.reply_delay_s, rig.emu.reply_jitter_s = 0.09, 0.02
    try:
        started_and_lit(rig, "a slow gateway")
        assert wait_until(lambda: rig.events("bus_slow"), 30), rig.output()[-3000:]
        time.sleep(15)                      # several status reads (every 2 s here)
        assert not rig.events("lamp_failure") and not rig.events("luminaire_unreachable"), \
            rig.output()[-3000:]
        (ev,) = rig.events("bus_slow")
        assert ev["detail"]["configured_timeout_ms"] == 100
        assert 100 < ev["detail"]["reply_timeout_ms"] <= 500
        assert not rig.events("bus_fault") and all(v >= FLOOR for v in rig.levels())
        assert rig.signal() == 0
    finally:
        rig.close()


def test_a_signed_maintenance_override_may_switch_off_at_night_nothing_else(
        tmp_path: Path) -> None:
    """At night the class floor holds against any override, except a crew's maintenance
    override: signed (the pole requires signatures), at most an hour. It switches the lamps
    off; one of two hours is refused; a pole without a verify key refuses it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = tmp_path / "signer.pem"
    pem.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))

    def signed(cid: str, args: dict) -> dict:
        return new_command("set_override", args, correlation_id=cid, device="pole-9",
                           site="lab", signing_key=key, now=time.time())

    (tmp_path / "a").mkdir()
    rig = PoleRig(tmp_path / "a", DEAD_CAMERA)
    rig.cfg.write_text(rig.cfg.read_text().replace(
        "mqtt:\n", f"mqtt:\n  commands: {{verify_key: {pem}}}\n"))
    try:
        started_and_lit(rig, "maintenance override")
        command(rig, signed("m0", {"level_pct": 0, "expires_in_s": 7200,
                                   "maintenance": True}))
        assert wait_until(lambda: response(rig, "m0"), 15), rig.output()[-2000:]
        assert "at most 3600 s" in response(rig, "m0")["error"]
        command(rig, signed("m1", {"level_pct": 0, "expires_in_s": 600,
                                   "maintenance": True}))
        assert wait_until(lambda: response(rig, "m1"), 15)
        assert response(rig, "m1")["result"] == "ok", response(rig, "m1")
        assert rig.wait_levels(lambda lv: all(v == 0 for v in lv), 20), rig.levels()
        assert rig.signal() == 0
    finally:
        rig.close()
    (tmp_path / "b").mkdir()
    rig = PoleRig(tmp_path / "b", DEAD_CAMERA)
    try:
        started_and_lit(rig, "maintenance override refused")
        command(rig, {"correlation_id": "m2", "command": "set_override",
                      "args": {"level_pct": 0, "expires_in_s": 600, "maintenance": True}})
        assert wait_until(lambda: response(rig, "m2"), 15)
        assert "needs a pole that accepts only signed commands" in response(rig, "m2")["error"]
        assert all(v >= FLOOR for v in rig.levels())
        assert rig.signal() == 0
    finally:
        rig.close()


def model_process(rig: PoleRig) -> int | None:
    """The pid of the agent's model process (a child running ``agent.vision.detect.host``:
    the cameras' onnxruntime models and the dimming model)."""
    from bench.agent_run import children

    assert rig.proc is not None
    for k in children(rig.proc.pid):
        with contextlib.suppress(OSError):
            if b"agent.vision.detect.host\0" in Path(f"/proc/{k}/cmdline").read_bytes():
                return k
    return None


def test_a_model_process_that_crashes_or_hangs_is_restarted_and_the_lamps_are_driven(
        tmp_path: Path) -> None:
    """Inference runs in a process of its own: it is killed by SIGSEGV (a runtime crash on
    a frame), then stopped (a runtime that hangs: the first lane past its deadline, the
    dimming model's 1 s or the camera's ``run_timeout_s``, has it killed). Each time
    the agent lives on and keeps driving the lamps (the camera's groups back to the
    schedule's level, as for a dead camera), the camera is reported ``model_down`` naming
    what happened, and the model process is restarted: the camera is analysed again."""
    server, source = live_camera()
    rig = PoleRig(tmp_path, source, group=", ramp_down_pct_per_min: 100")
    rig.cfg.write_text(rig.cfg.read_text().replace(
        "detector: {model: ", "detector: {run_timeout_s: 2, model: "))
    try:
        rig.start()
        assert dimmed(rig), rig.output()[-3000:]
        first = model_process(rig)
        assert first is not None
        for fault, sig, says in (
                ("crashes", signal.SIGSEGV, "ended: killed by SIGSEGV (the runtime crashed)"),
                ("hangs", signal.SIGSTOP, "hung (no answer within")):
            pid = model_process(rig)
            assert pid is not None
            n_lost = len(rig.events("camera_lost"))
            os.kill(pid, sig)
            t0 = time.monotonic()
            assert wait_until(lambda n=n_lost: len(rig.events("camera_lost")) > n, 30), \
                (fault, rig.output()[-3000:])
            ev = rig.events("camera_lost")[-1]["detail"]
            assert ev["state"] == "model_down" and says in ev["error"], ev
            # the lamps: back to the schedule's level (the camera's data is stale)
            t = rig.wait_levels(all_at_least(100), 30)
            assert t is not None, rig.output()[-3000:]
            record_time(f"model process {fault} → schedule level", t - t0, 6.6 + 2)
            assert rig.alive()
            # restarted: a new model process, the camera analysed again
            assert wait_until(lambda p=pid: model_process(rig) not in (None, p), 30), \
                rig.output()[-3000:]
            assert wait_until(lambda: rig.events("camera_restored")
                              and rig.events("camera_restored")[-1]["seq"]
                              > rig.events("camera_lost")[-1]["seq"], 40), rig.output()[-3000:]
        assert dimmed(rig), rig.output()[-3000:]
        # the process also runs the dimming model (the lighting thread's): a crash while
        # dimmed never takes the lamps below the floor, and the dimming model comes back
        pid = model_process(rig)
        assert pid is not None
        os.kill(pid, signal.SIGSEGV)
        end, lowest = time.monotonic() + 8, 100.0
        while time.monotonic() < end:
            lowest = min(lowest, *rig.levels())
            time.sleep(0.05)
        assert rig.alive() and lowest >= FLOOR, lowest
        assert wait_until(lambda: model_process(rig) not in (None, pid), 30)
        assert dimmed(rig), rig.output()[-3000:]
        out = rig.output()
        assert "Traceback" not in out, out[-3000:]
        last = model_process(rig)
        assert rig.signal() == 0
        # the model process ends with the agent
        assert wait_until(lambda: not Path(f"/proc/{last}").exists(), 10)
    finally:
        server.kill()
        rig.close()


def test_counts_the_detector_cannot_read_never_dim_the_road(tmp_path: Path) -> None:
    """Issue 23: at night, dimmed by traffic; then the camera's picture turns into a
    high-gain night CCTV's (grey, flat, noisy: ``sim.traffic --washout-file``): vehicles
    still move across the line, the detector no longer sees them, and a detector that sees
    nothing looks exactly like an empty road. The counts' quality turns poor (motion at the
    line that no track explains) and the lamps go back to the schedule's level, with the
    reason in the lighting record and an event, before the rolling volume could dim them;
    when the picture is clear again they return to adaptive once the detector has explained
    the latest episodes again (and the poor intervals never count as traffic)."""
    wash = tmp_path / "washout"
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "sim.traffic", "--serve", f"127.0.0.1:{port}",
                               "--fps", "15", "--density", "40", "--washout-file", str(wash)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert "serving" in server.stdout.readline()  # type: ignore[union-attr]
    source = (f'{{kind: stream, url: "http://127.0.0.1:{port}/stream.mjpg", stall_timeout_s: 2, '
              f'reconnect_initial_s: 0.5}}')
    rig = PoleRig(tmp_path, source, group=", ramp_down_pct_per_min: 100",
                  camera="quality: {window_episodes: 6}")
    try:
        rig.start()
        assert dimmed(rig), (rig.lighting()[-1:], rig.output()[-1500:])
        wash.touch()                                  # the picture washes out
        t_bad = time.monotonic()
        assert wait_until(lambda: rig.events("count_quality_poor"), 90), \
            [(r["interval_start"], r.get("count_quality")) for r in rig.aggregates()][-6:]
        poor = rig.events("count_quality_poor")[-1]
        assert "no vehicle detected" in json.dumps(poor["detail"]["reasons"]), poor
        t = rig.wait_levels(all_at_least(100), 30)   # the schedule's level (the fallback)
        assert t is not None, rig.output()[-3000:]
        assert wait_until(lambda: any(m["lampActuator"]["mode"] == "fallback" and any(
            "counts not trusted" in r for r in m["lampActuator"]["reasons"]) for m in rig.lighting()),
            20), rig.lighting()[-1:]
        print(f"washed out -> counts poor and lamps at the schedule level in {t - t_bad:.1f} s")
        wash.unlink()                                 # the picture is clear again
        assert wait_until(lambda: rig.events("count_quality_restored"), 90), rig.output()[-3000:]
        assert dimmed(rig), rig.output()[-3000:]
        assert wait_until(lambda: any(r.get("count_quality", {}).get("grade") == "poor"
                                      for r in rig.aggregates()), 20)
        graded = [r["count_quality"]["grade"] for r in rig.aggregates() if "count_quality" in r]
        assert "good" in graded and "poor" in graded
        assert all(v >= FLOOR for v in rig.levels()) and rig.signal() == 0
    finally:
        server.kill()
        rig.close()
