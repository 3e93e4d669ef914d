"""``agent count`` on inputs that are not a whole video: damaged in the middle, truncated,
a still image, a directory, an empty or missing file. Through the real command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from agent.vision.videofile import Integrity
from sim.traffic import SceneConfig, write_clip
from tests.conftest import ROOT, SIMNET

EXIT_INVALID, EXIT_CORRUPT = 1, 4


def agent_count(video: Path, *extra: str) -> subprocess.CompletedProcess:
    """``python -m agent count VIDEO`` with the simulator model."""
    return subprocess.run([sys.executable, "-m", "agent", "count", str(video), "--model",
                           str(SIMNET), "--line", "0,180,639,180,main", "-q", *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Short simulator clips: MJPEG in AVI, MPEG-4 in MP4, and a raw MJPEG stream."""
    d = tmp_path_factory.mktemp("inputs")
    out = {}
    for ext in ("avi", "mp4"):
        out[ext] = d / f"clip.{ext}"
        write_clip(out[ext], 6, seed=4, cfg=SceneConfig())
    cap = cv2.VideoCapture(str(out["avi"]))
    out["mjpeg"] = d / "clip.mjpeg"
    with out["mjpeg"].open("wb") as f:
        for i in range(20):
            ok, img = cap.read()
            assert ok
            f.write(cv2.imencode(".jpg", img)[1].tobytes())
            if i == 0:
                cv2.imwrite(str(d / "still.png"), img)
                cv2.imwrite(str(d / "still.jpg"), img)
    cap.release()
    out["png"], out["jpg"] = d / "still.png", d / "still.jpg"
    return out


def damaged(src: Path, dst: Path, how: str, share: float = 0.5, n: int = 150_000) -> Path:
    """A copy of ``src`` with ``n`` bytes at ``share`` of the file overwritten (``zero`` or
    ``noise``) or the file cut there (``cut``)."""
    data = bytearray(src.read_bytes())
    at = int(len(data) * share)
    if how == "cut":
        data = data[:at]
    elif how == "zero":
        data[at:at + n] = bytes(n)
    else:
        data[at:at + n] = bytes((i * 7919 + 13) % 256 for i in range(n))
    dst.write_bytes(bytes(data))
    return dst


def frame_count(video: Path) -> int:
    cap = cv2.VideoCapture(str(video))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    return n


def test_a_whole_video_is_complete(clips: dict[str, Path]) -> None:
    r = agent_count(clips["avi"], "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["integrity"]["complete"] and doc["frames_corrupt"] == 0
    assert doc["frames"] == doc["integrity"]["frames_decoded"] == frame_count(clips["avi"])
    # a raw MJPEG stream starts like a JPEG picture, but is a video
    r = agent_count(clips["mjpeg"], "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["frames"] == 20


@pytest.mark.parametrize("ext,how", [("avi", "noise"), ("avi", "zero"), ("avi", "cut"),
                                     ("mp4", "zero"), ("mp4", "noise")])
def test_a_video_damaged_in_the_middle_is_reported_not_taken_for_whole(
        clips: dict[str, Path], tmp_path: Path, ext: str, how: str) -> None:
    expected = frame_count(clips[ext])
    bad = damaged(clips[ext], tmp_path / f"bad.{ext}", how)
    r = agent_count(bad, "--json")
    assert r.returncode == EXIT_CORRUPT, r.stderr
    assert "Traceback" not in r.stderr
    assert f"video {bad} is damaged:" in r.stderr and "could not be decoded" in r.stderr
    doc = json.loads(r.stdout)                        # the counts still come, marked
    integ = doc["integrity"]
    assert integ["complete"] is False and integ["frames_expected"] == expected
    assert doc["frames_corrupt"] == integ["frames_corrupt"] > 0
    assert integ["frames_decoded"] + integ["frames_corrupt"] >= expected
    assert doc["frames"] == integ["frames_decoded"] < expected
    assert integ["corrupt_ranges"] and all(0 <= a <= b < expected
                                           for a, b in integ["corrupt_ranges"])
    if how == "cut":
        assert integ["stopped_at"] == integ["corrupt_ranges"][-1][0]
    # the human output says so too, on the same exit code
    r = agent_count(bad)
    assert r.returncode == EXIT_CORRUPT and "DAMAGED VIDEO:" in r.stdout
    assert "line main:" in r.stdout and "Traceback" not in r.stderr


def test_max_frames_is_not_damage(clips: dict[str, Path]) -> None:
    r = agent_count(clips["avi"], "--json", "--max-frames", "10")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["integrity"]["complete"] is True


def test_what_is_not_a_video_is_refused_in_one_line(clips: dict[str, Path],
                                                      tmp_path: Path) -> None:
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    cases = {clips["png"]: "is a still image (PNG), not a video",
             clips["jpg"]: "is a still image (JPEG), not a video",
             tmp_path: "is a directory, not a video file",
             empty: "is empty (0 bytes)",
             tmp_path / "missing.avi": "not found"}
    for path, message in cases.items():
        r = agent_count(path)
        assert r.returncode == EXIT_INVALID, (path, r.stderr)
        assert message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == "", r.stderr


def test_integrity_bookkeeping() -> None:
    i = Integrity(expected=100, exact=True, decoded=90)
    i.lose(10, 12)
    i.lose(13, 13)                                   # adjacent ranges merge
    i.end(94)                                        # stopped 6 frames short of the end
    assert i.ranges == [(10, 13), (94, 99)] and i.corrupt == 10 and not i.complete
    assert "frames 10-13, 94-99" in i.describe() and "stopped at frame 94" in i.describe()
    approx = Integrity(expected=300, exact=False, decoded=298)
    approx.end(298)                                  # an estimated count: 2 short is fine
    assert approx.complete
    limited = Integrity(expected=300, exact=True, decoded=10, limited=True)
    limited.end(10)                                  # --max-frames: no end check
    assert limited.complete


def test_a_closed_pipe_ends_quietly(clips: dict[str, Path]) -> None:
    """``agent count ... | head -1``: the reader goes away before the output is written;
    the command ends without a traceback (exit 141, as a shell reports SIGPIPE)."""
    proc = subprocess.Popen([sys.executable, "-m", "agent", "count", str(clips["avi"]),
                             "--model", str(SIMNET), "--line", "0,180,639,180,main", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err
