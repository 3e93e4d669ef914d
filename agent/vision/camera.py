"""Camera sources read through OpenCV, each on its own thread, feeding a bounded queue.

- ``file``: a video file; processes every frame (the queue blocks the reader) unless
  ``realtime`` paces it at its frame rate, and can ``loop`` (the simulator).
- ``stream``: RTSP/HTTP through OpenCV's FFMPEG backend with open/read timeouts.
- ``v4l2``: a local camera by index.

Live sources (streams, devices, paced files) put frames into a queue that keeps the
newest and counts what it had to drop, so a slow detector never lags behind real time.
A source that fails to open (a file included: a deleted file is retried, not taken for
the end of the video), stops delivering or stalls longer than ``stall_timeout_s`` is
released and reopened with exponential backoff (``reconnect_initial_s`` doubling up to
``reconnect_max_s``). Only a file without ``loop`` that was read to its end ends.
Nothing here blocks the caller: :meth:`CameraSource.get` waits at most its timeout.
The reader thread stamps :attr:`CameraSource.heartbeat` on every pass of its loop (and
while it waits to reconnect), so a reader blocked where no timeout reaches it (a FIFO
nobody writes to, a driver that hangs) is seen as stuck by the service watchdog, while a
camera that is merely unreachable is not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from agent.service.heartbeat import Heartbeat
from agent.settings.schema import DeviceSource, FileSource, StreamSource

log = logging.getLogger(__name__)

SourceConfig = FileSource | StreamSource | DeviceSource
#: Beyond a camera's open and read timeouts (``stall_timeout_s`` each), how long one pass
#: of its reader loop may take before the reader counts as stuck.
READER_SLACK_S = 20.0


@dataclass
class Frame:
    """A captured frame with its capture index and times."""

    index: int
    image: np.ndarray
    monotonic: float
    wall: float


@dataclass
class CameraStats:
    """Counters a camera source keeps; read them at any time."""

    state: str = "starting"
    frames_read: int = 0
    frames_dropped: int = 0
    frames_corrupt: int = 0
    reconnects: int = 0
    open_failures: int = 0
    stalls: int = 0
    last_error: str = ""
    fps: float = 0.0
    size: tuple[int, int] = (0, 0)
    history: list[str] = field(default_factory=list)


class FrameQueue:
    """Bounded queue; ``keep_newest`` drops the oldest frame (and counts it) when full."""

    def __init__(self, maxsize: int, keep_newest: bool) -> None:
        self.maxsize = maxsize
        self.keep_newest = keep_newest
        self._q: deque[Frame] = deque()
        self._cond = threading.Condition()
        self.dropped = 0
        self.closed = False

    def put(self, frame: Frame, stop: threading.Event) -> None:
        """Add a frame; blocks (until ``stop``) only when not ``keep_newest``."""
        with self._cond:
            if self.keep_newest:
                while len(self._q) >= self.maxsize:
                    self._q.popleft()
                    self.dropped += 1
            else:
                while len(self._q) >= self.maxsize and not stop.is_set():
                    self._cond.wait(0.1)
            self._q.append(frame)
            self._cond.notify_all()

    def get(self, timeout: float) -> Frame | None:
        """Next frame, or None after ``timeout`` seconds (or when closed and empty)."""
        with self._cond:
            end = time.monotonic() + timeout
            while not self._q:
                left = end - time.monotonic()
                if left <= 0 or self.closed:
                    return None
                self._cond.wait(left)
            frame = self._q.popleft()
            self._cond.notify_all()
            return frame

    def close(self) -> None:
        """No more frames will come."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()


def describe(cfg: SourceConfig) -> str:
    """Human-readable name of a source (no credentials)."""
    if isinstance(cfg, FileSource):
        return f"file {cfg.path}"
    if isinstance(cfg, StreamSource):
        url = cfg.url
        if "@" in url.split("//", 1)[-1].split("/", 1)[0]:
            scheme, rest = url.split("//", 1)
            url = f"{scheme}//***@{rest.split('@', 1)[1]}"
        return f"stream {url}"
    return f"v4l2 /dev/video{cfg.index}"


class CameraSource:
    """Reads one camera on a background thread; see the module docstring."""

    def __init__(self, cfg: SourceConfig, name: str = "camera", queue_size: int = 2) -> None:
        self.cfg = cfg
        self.name = name
        self.stats = CameraStats()
        live = not isinstance(cfg, FileSource) or cfg.realtime
        #: frames come at the camera's pace and the newest is kept (else: every frame)
        self.live = live
        self.queue = FrameQueue(queue_size if live else 8, keep_newest=live)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ended = threading.Event()
        self._last_frame_at = time.monotonic()
        #: stamped by the reader loop; see the module docstring
        self.heartbeat = Heartbeat(f"camera {name} reader",
                                   2 * cfg.stall_timeout_s + READER_SLACK_S)

    # -- public -----------------------------------------------------------------------
    def start(self) -> CameraSource:
        """Start the reader thread."""
        self.heartbeat.arm()
        self._thread = threading.Thread(target=self._run, name=f"camera-{self.name}", daemon=True)
        self._thread.start()
        return self

    def get(self, timeout: float = 0.5) -> Frame | None:
        """The next frame, or None if none arrived within ``timeout``."""
        f = self.queue.get(timeout)
        self.stats.frames_dropped = self.queue.dropped
        return f

    def stop(self) -> None:
        """Stop reading and release the device."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    @property
    def seconds_since_frame(self) -> float:
        """Seconds since the reader last got a frame (how stale the camera is)."""
        return time.monotonic() - self._last_frame_at

    # -- reader thread ----------------------------------------------------------------
    def _open(self) -> cv2.VideoCapture:
        cfg = self.cfg
        if isinstance(cfg, FileSource):
            return cv2.VideoCapture(str(cfg.path))
        if isinstance(cfg, StreamSource):
            ms = int(cfg.stall_timeout_s * 1000)
            return cv2.VideoCapture(cfg.url, cv2.CAP_FFMPEG,
                                    [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms,
                                     cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        return cv2.VideoCapture(cfg.index, cv2.CAP_V4L2)

    def _set_state(self, state: str, error: str = "") -> None:
        if state != self.stats.state:
            self.stats.history.append(state)
            del self.stats.history[:-20]
            if state in ("reconnecting", "stalled", "error"):
                log.warning("camera %s: %s (%s)", self.name, state, error or "no detail")
            else:
                log.info("camera %s: %s", self.name, state)
        self.stats.state = state
        if error:
            self.stats.last_error = error

    def _run(self) -> None:
        backoff = self.cfg.reconnect_initial_s
        index = 0
        first = True
        while not self._stop.is_set():
            self.heartbeat.beat()
            cap = self._open()
            if not cap.isOpened():
                cap.release()
                self.stats.open_failures += 1
                # a file that went away may come back (a remount, a copy in progress):
                # retried like a stream, never silently the end of the camera
                self._set_state("error" if isinstance(self.cfg, FileSource) else
                                "reconnecting", f"cannot open {describe(self.cfg)}")
                self.heartbeat.wait(self._stop, backoff)
                backoff = min(backoff * 2, self.cfg.reconnect_max_s)
                continue
            if not first:
                self.stats.reconnects += 1
            first = False
            fps = cap.get(cv2.CAP_PROP_FPS)
            self.stats.fps = float(fps) if fps and 0 < fps < 240 else 0.0
            self._set_state("live")
            period = 1.0 / self.stats.fps if self.stats.fps else 1 / 25
            t_next = time.monotonic()
            got_any = False
            while not self._stop.is_set():
                self.heartbeat.beat()
                ok, img = cap.read()
                if not ok or img is None:
                    break
                if img.ndim != 3 or img.size == 0:
                    self.stats.frames_corrupt += 1
                    continue
                got_any = True
                backoff = self.cfg.reconnect_initial_s
                now = time.monotonic()
                self._last_frame_at = now
                self.stats.frames_read += 1
                self.stats.size = (img.shape[1], img.shape[0])
                self.queue.put(Frame(index, img, now, time.time()), self._stop)
                index += 1
                if isinstance(self.cfg, FileSource) and self.cfg.realtime:
                    t_next += period
                    self._stop.wait(max(0.0, t_next - time.monotonic()))
            cap.release()
            if self._stop.is_set():
                break
            if isinstance(self.cfg, FileSource):
                if not self.cfg.loop:
                    self._set_state("ended")
                    break
                if got_any:
                    continue
            self.stats.stalls += 1
            self._set_state("error" if isinstance(self.cfg, FileSource) else "reconnecting",
                            "no frame could be read" if isinstance(self.cfg, FileSource)
                            else "stream ended or read timed out")
            self.heartbeat.wait(self._stop, backoff)
            backoff = min(backoff * 2, self.cfg.reconnect_max_s)
        self.queue.close()
        self.heartbeat.retire()
        self.ended.set()
