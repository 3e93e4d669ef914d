"""Camera sources: every frame from files, newest-frame queues for live sources, and
reconnection when a real HTTP MJPEG camera server is killed and restarted mid-run."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.settings.schema import FileSource, StreamSource
from agent.vision.camera import CameraSource, Frame, FrameQueue
from tests.conftest import ROOT
from tests.helpers import SLACK_S, free_port, wait_until


def start_server(port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "sim.traffic", "--serve", f"127.0.0.1:{port}",
                             "--fps", "15", "--size", "320x180"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert "serving" in proc.stdout.readline()
    return proc


def test_file_source_delivers_every_frame(sim_clip: tuple[Path, dict]) -> None:
    video, gt = sim_clip
    src = CameraSource(FileSource(kind="file", path=video)).start()
    n, idx = 0, []
    end = time.monotonic() + 120
    done = False                                # ended seen: every frame had been queued
    while time.monotonic() < end:
        f = src.get(timeout=0.5)
        if f is None:
            if done:
                break                           # the file's end, not a slow reader
            done = src.ended.is_set()
            continue
        idx.append(f.index)
        n += 1
        time.sleep(0.001 if n % 50 else 0.2)  # a slow consumer must not lose file frames
    src.stop()
    assert n == gt["frame_count"] and idx == list(range(n))
    assert src.stats.frames_dropped == 0 and src.stats.state == "ended"


def test_looping_file_source_keeps_going(sim_clip: tuple[Path, dict]) -> None:
    video, gt = sim_clip
    src = CameraSource(FileSource(kind="file", path=video, loop=True)).start()
    got = 0
    while got < gt["frame_count"] + 20:
        assert src.get(timeout=2) is not None
        got += 1
    src.stop()
    assert src.stats.frames_read >= gt["frame_count"] + 20


def test_live_queue_keeps_newest_and_counts_drops() -> None:
    q = FrameQueue(2, keep_newest=True)
    stop = threading.Event()
    for i in range(10):
        q.put(Frame(i, None, 0.0, 0.0), stop)  # type: ignore[arg-type]
    assert q.dropped == 8
    assert [q.get(0.1).index, q.get(0.1).index] == [8, 9]  # type: ignore[union-attr]
    t0 = time.monotonic()
    assert q.get(0.2) is None and time.monotonic() - t0 < 0.2 + SLACK_S


def test_missing_file_is_retried_never_blocks_and_comes_back(tmp_path: Path,
                                                              sim_clip: tuple[Path, dict]) -> None:
    """A deleted camera file is an outage, not the end of the camera."""
    import shutil

    gone = tmp_path / "gone.avi"
    cfg = FileSource.model_construct(kind="file", path=gone, loop=True,
                                     realtime=False, reconnect_initial_s=0.1,
                                     reconnect_max_s=0.2, stall_timeout_s=1.0)
    src = CameraSource(cfg).start()
    try:
        t0 = time.monotonic()
        assert src.get(timeout=1.0) is None
        assert time.monotonic() - t0 < 1.0 + SLACK_S
        assert wait_until(lambda: src.stats.open_failures >= 3, 5)     # retried with back-off
        assert not src.ended.is_set() and src.stats.state == "error"
        assert "cannot open" in src.stats.last_error
        shutil.copy(sim_clip[0], gone)                                 # the file is back
        assert wait_until(lambda: src.get(timeout=0.2) is not None, 10)
        assert src.stats.state == "live"
    finally:
        src.stop()


@pytest.mark.slow
def test_stream_reconnects_after_server_killed_and_restarted() -> None:
    port = free_port()
    server = start_server(port)
    cfg = StreamSource(kind="stream", url=f"http://127.0.0.1:{port}/stream.mjpg",
                       reconnect_initial_s=0.2, reconnect_max_s=1.0, stall_timeout_s=2.0)
    src = CameraSource(cfg, "test").start()
    try:
        frames = []
        assert wait_until(lambda: (f := src.get(0.2)) is not None and frames.append(f) is None
                        and len(frames) >= 10, 20), "no frames from the live server"
        assert frames[0].image.shape == (180, 320, 3)
        server.kill()
        server.wait()
        # the consumer keeps getting control back while the camera is down
        assert wait_until(lambda: src.stats.state == "reconnecting", 10)
        t0 = time.monotonic()
        src.get(timeout=0.3)  # may still hold one frame from before; must not block
        assert time.monotonic() - t0 < 0.3 + SLACK_S
        before = src.stats.frames_read
        server = start_server(port)
        assert wait_until(lambda: src.stats.state == "live" and src.stats.frames_read > before + 10,
                        20), f"did not resume: {src.stats}"
        assert src.stats.reconnects >= 1
        assert "reconnecting" in src.stats.history and src.stats.history[-1] == "live"
        assert src.get(timeout=2) is not None
    finally:
        src.stop()
        server.kill()
        server.wait()


def test_unreachable_stream_backs_off_and_counts_failures() -> None:
    port = free_port()  # nothing listens there
    cfg = StreamSource(kind="stream", url=f"http://127.0.0.1:{port}/x.mjpg",
                       reconnect_initial_s=0.1, reconnect_max_s=0.4, stall_timeout_s=1.0)
    src = CameraSource(cfg).start()
    try:
        assert wait_until(lambda: src.stats.open_failures >= 3, 15)
        assert src.stats.state == "reconnecting" and src.stats.frames_read == 0
    finally:
        src.stop()
