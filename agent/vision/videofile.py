"""Video files for ``agent count``: refuse what is not a video, read every frame, and
account for the frames that could not be decoded.

OpenCV opens almost anything: a PNG is a one-frame "video", and a file damaged in the
middle reads fine up to the damage and then simply ends, as if it were whole. So:

- :func:`check_video_path` refuses, with one line each, a missing file, a directory, an
  empty file, an unreadable file and a still image (PNG, JPEG, GIF, BMP, TIFF, WebP);
- :class:`VideoReader` reads every frame and keeps an :class:`Integrity` record: a read
  that fails between two good frames is a located loss (its frame range comes from the
  stream's timestamps, else from the number of failed reads); at the end, frames read are
  compared with the container's frame count where it knows it exactly (AVI, MP4/MOV), or
  within a tolerance where it only estimates it (MKV, WebM, MPEG-TS: duration × rate). A
  stream without a frame count (raw MJPEG) can only show located losses.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

#: Consecutive failed reads taken as the end of the file (~10 s of 25 fps video). A
#: failed read costs microseconds at the real end and well under a millisecond at damage.
MAX_FAILED_READS = 250

#: Where the container only estimates its frame count, a shortfall up to this share (and
#: at least 2 frames) is not taken for damage.
APPROX_TOLERANCE = 0.01

IMAGE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


class VideoError(Exception):
    """A video file could not be opened or read."""


def image_kind(head: bytes) -> str | None:
    """The still-image format a file's first bytes announce, or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((kind for magic, kind in IMAGE_MAGIC if head.startswith(magic)), None)


def exact_frame_count(head: bytes) -> bool:
    """Whether the container keeps an exact frame index (AVI, MP4/MOV) rather than an
    estimate from its duration."""
    return (head[:4] == b"RIFF" and head[8:12] == b"AVI ") or head[4:8] == b"ftyp"


def _frames_up_to(path: Path, n: int) -> int:
    cap = cv2.VideoCapture(str(path))
    try:
        got = 0
        while got < n and cap.isOpened() and cap.read()[0]:
            got += 1
        return got
    finally:
        cap.release()


def quiet_ffmpeg() -> None:
    """Silence FFmpeg's own per-packet messages (a damaged MP4 prints thousands); the
    damage is reported once, by :class:`Integrity`. A value set by the user is kept."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")


def check_video_path(path: Path) -> bytes:
    """Refuse what cannot be a video, with a one-line :class:`VideoError`; returns the
    file's first bytes."""
    if not path.exists():
        raise VideoError(f"video {path} not found")
    if path.is_dir():
        raise VideoError(f"video {path} is a directory, not a video file")
    if not path.is_file():
        raise VideoError(f"video {path} is not a regular file")
    try:
        with path.open("rb") as f:
            head = f.read(16)
    except OSError as e:
        raise VideoError(f"cannot read video {path}: {e.strerror or e}") from None
    if not head:
        raise VideoError(f"video {path} is empty (0 bytes)")
    kind = image_kind(head)
    # a raw MJPEG stream starts like a JPEG: only a file with one picture is a still
    if kind is not None and _frames_up_to(path, 2) <= 1:
        raise VideoError(f"{path} is a still image ({kind}), not a video: "
                         "agent count needs a video file")
    return head


@dataclass
class Integrity:
    """What reading a video found: frames decoded, and frames lost and where."""

    expected: int | None
    exact: bool
    decoded: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)
    stopped_at: int | None = None
    limited: bool = False

    @property
    def corrupt(self) -> int:
        """Frames that could not be decoded (located and at the end)."""
        return sum(b - a + 1 for a, b in self.ranges)

    @property
    def complete(self) -> bool:
        """True when every frame the file holds was decoded."""
        return not self.ranges

    def lose(self, first: int, last: int) -> None:
        """Record frames ``first`` to ``last`` (inclusive) as lost."""
        if last < first:
            return
        if self.ranges and self.ranges[-1][1] + 1 >= first:
            self.ranges[-1] = (self.ranges[-1][0], max(last, self.ranges[-1][1]))
        else:
            self.ranges.append((first, last))

    def end(self, next_index: int) -> None:
        """Reading ended before frame ``next_index``: compare with the container's count."""
        if self.limited or not self.expected:
            return
        short = self.expected - next_index
        tolerance = 0 if self.exact else max(2, round(APPROX_TOLERANCE * self.expected))
        if short > tolerance:
            self.stopped_at = next_index
            self.lose(next_index, self.expected - 1)

    def describe(self) -> str:
        """One line for people: how many frames, which ones, and what the counts cover."""
        if self.complete:
            return f"all {self.decoded} frames decoded"
        spans = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in self.ranges[:8])
        more = f" and {len(self.ranges) - 8} more ranges" if len(self.ranges) > 8 else ""
        of = f" of {self.expected}" if self.expected else ""
        which = "frame" if self.ranges == [(self.ranges[0][0],) * 2] else "frames"
        tail = (f"; reading stopped at frame {self.stopped_at} (file truncated or damaged; "
                "where the container hides a gap, the lost frames may lie earlier)"
                if self.stopped_at is not None else "")
        return (f"{self.corrupt}{of} frame{'s' if self.corrupt != 1 or of else ''} could not "
                f"be decoded ({which} {spans}{more}){tail}; "
                f"the counts cover the {self.decoded} decoded frames only")

    def to_json(self) -> dict:
        """The ``integrity`` block of ``agent count --json``."""
        return {"complete": self.complete, "frames_expected": self.expected,
                "frames_expected_exact": self.exact if self.expected else None,
                "frames_decoded": self.decoded, "frames_corrupt": self.corrupt,
                "corrupt_ranges": [list(r) for r in self.ranges],
                "stopped_at": self.stopped_at, "message": self.describe()}


class VideoReader:
    """Every frame of a video file with its index, keeping an :class:`Integrity` record."""

    def __init__(self, path: Path) -> None:
        head = check_video_path(path)
        self.path = path
        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            self.cap.release()
            raise VideoError(f"cannot open video {path} (unknown format, not a video, or "
                             "damaged where the container keeps its index)")
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else 0.0
        n = self.cap.get(cv2.CAP_PROP_FRAME_COUNT)
        expected = int(n) if n and 0 < n < 1e9 else None
        if expected == 1:
            self.cap.release()
            raise VideoError(f"{path} holds a single frame (a still image?), not a video")
        self.integrity = Integrity(expected, exact_frame_count(head))
        self.decode_s = 0.0

    def _pts(self) -> int | None:
        pts = self.cap.get(cv2.CAP_PROP_PTS)
        return round(pts) if 0 <= pts < 1e9 else None

    def frames(self, max_frames: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """``(index, frame)`` for each decodable frame, in order; losses are recorded."""
        integ = self.integrity
        index = 0          # the index the next frame should have
        failed = 0
        while max_frames is None or integ.decoded < max_frames:
            t0 = time.perf_counter()
            ok, img = self.cap.read()
            self.decode_s += time.perf_counter() - t0
            if not ok or img is None:
                failed += 1
                if failed >= MAX_FAILED_READS:
                    break
                continue
            idx = index
            if failed:
                # a failure between two good frames: the timestamps say which were lost
                pts = self._pts()
                idx = pts if pts is not None and pts >= index else index + failed
                integ.lose(index, idx - 1)
                failed = 0
            index = idx + 1
            if img.ndim != 3 or img.size == 0:
                integ.lose(idx, idx)
                continue
            integ.decoded += 1
            yield idx, img
        else:
            integ.limited = True
        integ.end(index)

    def release(self) -> None:
        """Close the file."""
        self.cap.release()
