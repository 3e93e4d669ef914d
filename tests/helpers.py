"""Small helpers shared by the tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

#: How late a loaded machine may run a thread or a process (two test suites side by side on
#: 2 cores). A test of a deadline ("the call gives up, it does not hang") asserts
#: ``elapsed < deadline + SLACK_S``: a hang would exceed it by far, a busy machine cannot.
SLACK_S = 5.0


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond: Callable[[], object], timeout: float) -> bool:
    """Poll ``cond`` every 50 ms until it is truthy (True) or ``timeout`` runs out (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


class NudgeClock:
    """The system clock, which a test can move forward at once (wall and monotonic
    together, so it is not a jump): ``skip(10)`` closes a 10 s interval now."""

    name = "nudge"

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def wait(self, event: threading.Event, seconds: float) -> bool:
        return event.wait(max(0.0, seconds))

    def skip(self, seconds: float) -> None:
        self.offset += seconds


class Running:
    """An in-process Agent with its main loop on a thread (as ``agent run`` runs it)."""

    def __init__(self, agent: object) -> None:
        self.agent = agent
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="test-main-loop")

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            self.agent.step()  # type: ignore[attr-defined]

    def __enter__(self) -> Running:
        self.agent.start()  # type: ignore[attr-defined]
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.agent.stop()  # type: ignore[attr-defined]


def fill_disk(folder: Path) -> Path:
    """Fill the file system of ``folder`` (a small tmpfs) with ``folder/filler``, until a
    write fails; returns the filler (unlink it to give the room back)."""
    filler = Path(folder) / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def small_filesystem(folder: Path, size: str) -> Path:
    """A tmpfs of ``size`` (``3m``) mounted on ``folder`` (created), to fill up; skips the
    test where mounting needs root that it does not have. Unmount with ``umount -l``."""
    import os
    import subprocess

    import pytest

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    folder.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    return folder
