"""Aggregates on the wall clock (each rule of agent/vision/aggregates.py), and ``agent run``
end to end on a simulated camera."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.runner import Agent
from agent.settings.schema import load_config
from agent.uplink import contract
from agent.vision.aggregates import IntervalAggregator, JsonLinesSink, interval_start
from agent.vision.counter import CountEvent
from tests.conftest import ROOT, SIMNET
from tests.helpers import wait_until

T0 = 1_699_999_980.0                     # on a minute boundary


def ev(line: str, d: str, cls: str) -> CountEvent:
    return CountEvent(line, d, cls, 1, 0, (0.0, 0.0))


def agg(now: float = T0 + 10, interval: int = 60) -> IntervalAggregator:
    a = IntervalAggregator("p1", "s1", "cam", {"main": ("down", "up")}, ["z"], interval,
                           now, 1000.0)
    a.fps = 10.0
    return a


def test_intervals_align_to_the_clock_and_the_first_one_is_partial_from_the_start() -> None:
    assert interval_start(1_700_000_059.9, 60) == 1_700_000_040
    a = agg()                                  # started 10 s into an interval
    a.add_frame(True, 0.02)
    a.add_frame(False)
    a.add_dropped(3)
    a.add_late(2)
    a.add_events([ev("main", "up", "motorbike"), ev("main", "up", "motorbike"),
                  ev("main", "down", "car"), ev("z", "inside", "bus")])
    assert a.roll(T0 + 40, 1030, "live") == []           # still inside the interval
    recs = a.roll(T0 + 60.5, 1050.5, "live")             # past its end
    assert len(recs) == 2
    main = next(r for r in recs if r.line == "main")
    j = main.to_json()
    assert j["interval_start"] == "2023-11-14T22:13:10Z"  # when the agent started ...
    assert j["interval_end"] == "2023-11-14T22:14:00Z"    # ... to the boundary
    assert main.partial and main.frames_expected == 500   # 50 s at 10 fps, not 60 s
    assert main.counts == {"down": {"car": 1}, "up": {"motorbike": 2}} and main.total == 3
    assert main.frames_analysed == 2 and main.frames_detected == 1
    assert j["detector_runs_per_s"] == 0.02               # 1 run in 50 s
    msg = contract.traffic_message(main, "2023-11-14T22:14:00Z")
    assert msg["quality"]["detectorRunsPerS"] == 0.02
    msg.update(seq=1, msg_id="pole:0badcafe:1")              # stamped by the uplink
    assert contract.errors("traffic", msg) == []
    assert main.frames_dropped == 3 and main.detector_latency_ms_mean == 20.0
    assert main.frames_late == 2 and main.camera_state == "live"
    zone = next(r for r in recs if r.zone == "z")
    assert zone.counts == {"inside": {"bus": 1}}
    nxt = a.roll(T0 + 120.2, 1110.2, "live")             # the next one is whole
    assert not nxt[0].partial and nxt[0].to_json()["interval_start"] == "2023-11-14T22:14:00Z"


def test_an_interval_without_frames_still_closes_with_the_camera_state() -> None:
    a = agg(T0)
    recs = a.roll(T0 + 61, 1061, "reconnecting")
    assert [r.frames_analysed for r in recs] == [0, 0]
    assert recs[0].camera_state == "reconnecting" and recs[0].covered_s == 0
    assert recs[0].to_json()["total"] == 0


def test_a_stop_and_a_restart_within_an_interval_do_not_overlap() -> None:
    a = agg(T0 + 5)
    a.add_frame(True)
    (first, _) = a.flush(T0 + 20, 1015, "live")           # SIGTERM 20 s in
    b = agg(T0 + 25)                                      # restarted 5 s later
    b.add_frame(True)
    (second, _) = b.roll(T0 + 61, 1036, "live")
    assert first.partial and second.partial
    assert first.end <= second.start                       # [5, 20] then [25, 60]
    assert (first.start, first.end, second.start, second.end) == (T0 + 5, T0 + 20, T0 + 25, T0 + 60)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 0.05), min_size=50, max_size=400))
def test_adds_racing_with_rolls_never_emit_an_interval_twice(gaps: list[float]) -> None:
    """The worker adds while the main loop rolls (the 3 % duplicate race)."""
    a = agg(T0, interval=1)
    stop = threading.Event()
    added = [0]

    def worker() -> None:
        while not stop.is_set():
            a.add_frame(True)
            a.add_events([ev("main", "up", "car")])
            added[0] += 1

    t = threading.Thread(target=worker)
    t.start()
    records = []
    now = T0
    for g in gaps:
        now += g
        records += a.roll(now, 1000 + now - T0, "live")
    stop.set()
    t.join()
    records += a.flush(now + 0.001, 1000.0 + now - T0, "live")
    mains = [r for r in records if r.line == "main"]
    starts = [r.start for r in mains]
    assert len(starts) == len(set(starts)), "an interval was emitted twice"
    assert all(x.end <= y.start for x, y in itertools.pairwise(mains))
    assert sum(r.total for r in mains) == added[0]          # every count exactly once
    assert sum(r.frames_analysed for r in mains) == added[0]


def test_clock_jumps_forward_and_back() -> None:
    a = agg(T0)
    a.add_frame(True)
    (r, _) = a.roll(T0 + 8 * 3600, 1030, "live")            # +8 h
    assert r.end == T0 + 60 and r.frames_analysed == 1      # the open one, at its true end
    assert a.roll(T0 + 8 * 3600 + 10, 1040, "live") == []   # no burst of empty records
    (r2, _) = a.roll(T0 + 8 * 3600 + 61, 1091, "live")
    assert r2.partial and r2.start == T0 + 8 * 3600          # began at the jump, partial
    a.add_frame(True)
    (back, _) = a.roll(T0 + 100, 1121, "live")              # someone sets it 8 h back
    assert back.partial and back.end - back.start == 31.0   # what it really covered


def test_jsonl_sink_appends_durably(tmp_path: Path) -> None:
    a = agg()
    sink = JsonLinesSink(tmp_path / "deep" / "agg.jsonl")
    sink.write(a.roll(T0 + 61, 1061, "live"))
    sink.write(a.roll(T0 + 121, 1121, "live"))
    lines = (tmp_path / "deep" / "agg.jsonl").read_text().splitlines()
    assert [json.loads(x)["camera_state"] for x in lines] == ["live"] * 4 and sink.written == 4


def write_config(tmp_path: Path, video: Path, line: list[int], interval: int = 10,
                 realtime: bool = False) -> Path:
    x1, y1, x2, y2 = line
    cfg = tmp_path / "pole.yaml"
    cfg.write_text(f"""
device: {{id: test-pole, site: lab}}
cameras:
  - name: cam1
    source: {{kind: file, path: {video}, realtime: {str(realtime).lower()}}}
    detector: {{model: {SIMNET}}}
    gating: {{motion: false}}
    lines:
      - name: main
        points: [[{x1}, {y1}], [{x2}, {y2}]]
        directions: {{up: northbound, down: southbound}}
aggregates: {{interval_s: {interval}, path: {tmp_path / 'agg.jsonl'}}}
""")
    return cfg


def test_agent_counts_a_file_into_aggregates(sim_clip: tuple[Path, dict], tmp_path: Path) -> None:
    video, gt = sim_clip
    agent = Agent(load_config(write_config(tmp_path, video, gt["line"], interval=3600)))
    agent.start()
    end = time.monotonic() + 120
    while not agent.all_ended() and time.monotonic() < end:
        agent.step()
        time.sleep(0.2)
    agent.stop()
    recs = [json.loads(x) for x in (tmp_path / "agg.jsonl").read_text().splitlines()]
    assert recs and all(r["camera"] == "cam1" and r["line"] == "main" for r in recs)
    got = {"northbound": 0, "southbound": 0}
    for r in recs:
        for d, per in r["counts"].items():
            got[d] += sum(per.values())
    assert got == {"northbound": gt["totals"]["all_by_direction"]["up"],
                   "southbound": gt["totals"]["all_by_direction"]["down"]}
    assert sum(r["frames_analysed"] for r in recs) == gt["frame_count"]
    assert sum(r["frames_dropped"] for r in recs) == 0
    assert recs[-1]["partial"] is True


def test_agent_run_command_stops_cleanly_on_sigterm(sim_clip: tuple[Path, dict],
                                                     tmp_path: Path) -> None:
    video, gt = sim_clip
    cfg = write_config(tmp_path, video, gt["line"], realtime=True)
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(cfg)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen: list[str] = []
    end = time.monotonic() + 90
    # wait until it is really running (status lines), however slow the machine is today
    while time.monotonic() < end:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            break
        seen.append(line)
        if sum("[cam1 live frames" in x for x in seen) >= 3:
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=30)
    out = "".join(seen) + rest
    assert proc.returncode == 0, out
    assert "polelink agent: device test-pole" in out and "[cam1 live frames" in out
    assert "aggregate records in" in out
    recs = [json.loads(x) for x in (tmp_path / "agg.jsonl").read_text().splitlines()]
    assert recs[-1]["partial"] is True and recs[-1]["frames_analysed"] > 0


def started_agent(cfg: Path, until: str = "[cam1 live frames",
                  env: dict[str, str] | None = None) -> subprocess.Popen:
    """``agent run`` on ``cfg``, once its output shows ``until`` (however slow the machine
    is today: at most 90 s)."""
    proc = subprocess.Popen([sys.executable, "-m", "agent", "run", "--config", str(cfg)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    seen: list[str] = []
    end = time.monotonic() + 90
    while time.monotonic() < end and not any(until in x for x in seen):
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            break
        seen.append(line)
    return proc


def test_a_second_agent_on_the_same_pole_is_refused_before_it_touches_anything(
        sim_clip: tuple[Path, dict], tmp_path: Path) -> None:
    """Two ``agent run`` on one config: the second exits 2 with one line naming the first's
    pid, leaving the first's run records untouched; after the first stops, a new one
    starts."""
    video, gt = sim_clip
    cfg = write_config(tmp_path, video, gt["line"], realtime=True)
    argv = [sys.executable, "-m", "agent", "run", "--config", str(cfg)]
    first = started_agent(cfg)
    try:
        runs = (tmp_path / "service-runs.json").read_bytes()
        second = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stdout + second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"another agent runs on this pole (pid {first.pid};" in \
            lines[0], second.stderr
        assert "polelink agent" not in second.stdout
        assert (tmp_path / "service-runs.json").read_bytes() == runs
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert first.returncode == 0
    again = subprocess.run([*argv, "--duration", "1"], cwd=ROOT, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0 and "another agent" not in again.stderr, again.stderr


def test_two_configs_that_share_an_outbox_are_one_pole(sim_clip: tuple[Path, dict],
                                                       tmp_path: Path) -> None:
    """Two configs with their own records folders but one outbox: the second ``agent
    run`` is refused in one line naming the shared folder's lock (they would otherwise
    each send the other's messages and take each other's MQTT session)."""
    from tests.helpers import free_port

    video, gt = sim_clip
    port = free_port()                      # nobody listens: the uplink just retries
    cfgs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        cfg = write_config(folder, video, gt["line"], realtime=True)
        cfg.write_text(cfg.read_text() + f"mqtt: {{port: {port}, outbox_path: "
                                          f"{tmp_path / 'shared' / 'outbox.db'}}}\n")
        cfgs.append(cfg)
    first = started_agent(cfgs[0], "polelink agent: device")
    try:
        second = subprocess.run([sys.executable, "-m", "agent", "run", "--config",
                                 str(cfgs[1])], cwd=ROOT, capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 2, second.stdout + second.stderr
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{tmp_path / 'shared' / 'agent.lock'} is locked" in \
            lines[0], second.stderr
        assert not (tmp_path / "b" / "service-runs.json").exists()
    finally:
        first.send_signal(signal.SIGTERM)
        out, _ = first.communicate(timeout=30)
    assert first.returncode == 0, out


def test_under_systemd_a_second_agent_waits_for_the_first_and_then_takes_over(
        sim_clip: tuple[Path, dict], tmp_path: Path) -> None:
    """A technician's ``agent run`` holds the pole when the service starts: the service's
    agent neither exits (systemd would restart it until StartLimitAction reboots the pole)
    nor touches anything; it says why it waits (STATUS), asks for more start time, and
    starts once the first one ends (READY=1). A stop signal while it waits ends it, exit 0."""
    from tests.systemd_play import FakeSystemd

    video, gt = sim_clip
    cfg = write_config(tmp_path, video, gt["line"], realtime=True)
    argv = [sys.executable, "-m", "agent", "run", "--config", str(cfg)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = started_agent(cfg)
    notify = FakeSystemd(tmp_path, abstract=True)
    procs = [first]
    try:
        runs = (tmp_path / "service-runs.json").read_bytes()
        service_env = {**env, "NOTIFY_SOCKET": notify.address}
        # stopped while it waits: exit 0, nothing touched
        waiting = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=service_env)
        procs.append(waiting)
        assert wait_until(lambda: any("another agent runs" in x for x in notify.statuses()),
                          60), notify.messages
        waiting.send_signal(signal.SIGTERM)
        out, err = waiting.communicate(timeout=30)
        assert waiting.returncode == 0 and "while waiting for the other agent" in err, err
        assert (tmp_path / "service-runs.json").read_bytes() == runs
        # waits, then takes over when the first one ends
        second = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=service_env)
        procs.append(second)
        n = len(notify.statuses())
        assert wait_until(lambda: len(notify.statuses()) > n, 60), notify.messages
        extend = [f for _, f in notify.messages if "EXTEND_TIMEOUT_USEC" in f]
        assert extend and int(extend[-1]["EXTEND_TIMEOUT_USEC"]) >= 30_000_000
        time.sleep(2)
        assert second.poll() is None and not notify.times("READY")
        assert (tmp_path / "service-runs.json").read_bytes() == runs
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
        assert first.returncode == 0
        assert wait_until(lambda: notify.times("READY"), 90), notify.messages
        second.send_signal(signal.SIGTERM)
        out, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        assert "waiting for it to end" in err and "the other agent ended: starting" in err
        assert "polelink agent: device" in out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=30)
        notify.close()


def test_agent_run_refuses_invalid_config_and_a_bad_clock_spec(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("device: {id: x, site: y}\ncameras: []\n")
    r = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(cfg)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 1 and f"{cfg}:2:" in r.stderr and "not starting" in r.stderr
    assert not (tmp_path / "var").exists()
    good = write_config(tmp_path, SIMNET, [0, 1, 2, 3])    # any existing file will do here
    r = subprocess.run([sys.executable, "-m", "agent", "run", "--config", str(good)],
                       capture_output=True, text=True, cwd=ROOT, timeout=60,
                       env={**os.environ, "POLELINK_SIM_CLOCK": "start=yesterday"})
    assert r.returncode == 2 and "POLELINK_SIM_CLOCK: start='yesterday'" in r.stderr
    assert "Traceback" not in r.stderr


def test_snapshot_command(sim_clip: tuple[Path, dict], tmp_path: Path) -> None:
    import cv2

    video, gt = sim_clip
    cfg = write_config(tmp_path, video, gt["line"])
    out = tmp_path / "snap.png"
    r = subprocess.run([sys.executable, "-m", "agent", "snapshot", "--config", str(cfg),
                        "--camera", "cam1", "-o", str(out)], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "frame 640x360" in r.stdout and "lines: main" in r.stdout
    img = cv2.imread(str(out))
    assert img.shape == (360, 640, 3)
    y = gt["line"][1]
    row = img[y]
    assert ((row[:, 2] > 180) & (row[:, 1] > 180) & (row[:, 0] < 100)).sum() > 200  # the line
    r = subprocess.run([sys.executable, "-m", "agent", "snapshot", "--config", str(cfg),
                        "--camera", "nope", "-o", str(out)], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 1 and "no camera 'nope'; configured: cam1" in r.stderr


def test_a_failed_write_leaves_whole_lines_and_a_torn_line_is_closed(tmp_path: Path) -> None:
    """A full disk (here RLIMIT_FSIZE: writes past it fail with EFBIG, in a subprocess)
    takes back the whole batch; a line torn before (a power cut) is closed first."""
    out = tmp_path / "agg.jsonl"
    script = f"""
import resource, signal, sys
sys.path.insert(0, {str(ROOT)!r})
from agent.vision.aggregates import IntervalAggregator, JsonLinesSink
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
a = IntervalAggregator("p1", "s1", "cam", {{"main": ("down", "up")}}, ["z"], 60, {T0}, 1000.0)
sink = JsonLinesSink({str(out)!r})
sink.write(a.roll({T0} + 61, 1061, "live"))
size = sink.path.stat().st_size
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 300, size + 300))
try:
    sink.write(a.roll({T0} + 121, 1121, "live") + a.roll({T0} + 181, 1181, "live"))
except OSError as e:
    print("refused", e.errno)
print(sink.path.stat().st_size == size)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "refused 27" in r.stdout and r.stdout.strip().endswith("True")   # EFBIG, taken back
    with out.open("ab") as f:
        f.write(b'{"torn":')                                # a power cut mid-line
    a = agg()
    JsonLinesSink(out).write(a.roll(T0 + 61, 1061, "live"))
    lines = out.read_text().splitlines()
    assert lines[-3] == '{"torn":'
    assert all(json.loads(x)["schema"] for x in lines[:2] + lines[-2:])


def test_the_lock_file_is_never_followed_through_a_symlink(tmp_path: Path) -> None:
    """``agent.lock`` as a symlink to another file: the file is not truncated or written
    (the lock is then not taken, with a warning); garbage in a held lock file is not
    echoed."""
    from agent.service.lock import take
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "agent.lock").symlink_to(victim)
    assert take(tmp_path / "state") is None
    assert victim.read_text() == "keep me\n"
