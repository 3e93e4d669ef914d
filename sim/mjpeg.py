"""A minimal live camera: serves frames as MJPEG over HTTP (multipart/x-mixed-replace).

OpenCV's FFMPEG backend reads it like an IP camera (``http://HOST:PORT/stream.mjpg``).
Used by ``python -m sim.traffic --serve`` and by the camera-reconnect tests, which kill
and restart the server under a running agent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

BOUNDARY = "polelinkframe"


class FrameHub:
    """Holds the newest JPEG and lets every client wait for the next one."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._seq = 0

    def publish(self, frame: np.ndarray) -> None:
        """Encode and publish one frame to all clients."""
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
        if not ok:
            return
        with self._cond:
            self._jpeg = buf.tobytes()
            self._seq += 1
            self._cond.notify_all()

    def wait(self, after: int, timeout: float = 2.0) -> tuple[int, bytes | None]:
        """Block until a frame newer than ``after`` exists; return ``(seq, jpeg)``."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > after, timeout)
            return self._seq, self._jpeg


def make_server(host: str, port: int, hub: FrameHub) -> ThreadingHTTPServer:
    """Create (not start) an HTTP server streaming ``hub``'s frames at ``/stream.mjpg``."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/", "/stream.mjpg"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            seq = 0
            try:
                while not stop.is_set():
                    seq, jpeg = hub.wait(seq)
                    if jpeg is None:
                        continue
                    self.wfile.write(
                        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                        f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass

    stop = threading.Event()
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.stop_event = stop  # type: ignore[attr-defined]
    return server


def serve_forever(host: str, port: int, frames: Iterator[np.ndarray], fps: float) -> None:
    """Serve ``frames`` live at ``fps`` until interrupted."""
    hub = FrameHub()
    server = make_server(host, port, hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"serving http://{host}:{server.server_address[1]}/stream.mjpg at {fps:g} fps",
          flush=True)
    period = 1.0 / fps
    t_next = time.monotonic()
    try:
        for frame in frames:
            hub.publish(frame)
            t_next += period
            time.sleep(max(0.0, t_next - time.monotonic()))
    except KeyboardInterrupt:
        pass
    finally:
        server.stop_event.set()  # type: ignore[attr-defined]
        server.shutdown()
