"""One agent per pole: ``agent run`` holds an exclusive lock on ``agent.lock`` in its state
directory (and in every other folder it keeps state in: :func:`take_all`) for as long as it
runs, taken before it touches anything else (run records,
counting checkpoint, outbox, bus, MQTT). A second ``agent run`` on the same pole is refused
in one line naming the first one's pid; under systemd it waits for the lock instead
(:func:`wait_for`). The kernel drops the lock when the process ends, however it ends
(SIGKILL and power cuts included): there is no stale lock to clean up."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import IO

from agent.service.notify import Notifier

log = logging.getLogger(__name__)

LOCK_FILE = "agent.lock"


class AlreadyRunning(Exception):
    """Another agent holds the lock; the message is the one line to print."""


def take(state_dir: Path) -> IO[str] | None:
    """Lock ``state_dir/agent.lock`` (kept open: the lock lasts while the file object
    does). AlreadyRunning when another process holds it; None, with a warning, when the
    lock file cannot be made (a read-only state directory must not keep the lamps dark)."""
    path = state_dir / LOCK_FILE
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        # never through a symlink (its target would be truncated), never blocking (a FIFO)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o640)
        f = os.fdopen(fd, "a+", encoding="utf-8", errors="replace")
    except OSError as e:
        log.warning("cannot take the lock %s (%s): a second agent would not be refused",
                    path, e.strerror or e)
        return None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        pid = f.read(32).strip()
        f.close()
        pid = pid if pid.isdigit() else ""
        raise AlreadyRunning(f"agent: another agent runs on this pole (pid {pid or '?'}; "
                             f"{path} is locked): not starting") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
    except OSError as e:            # a full disk: the lock holds, the pid is not shown
        log.warning("cannot write the pid to %s (%s)", path, e.strerror or e)
    return f


def take_all(dirs: list[Path]) -> list[IO[str]]:
    """Lock ``agent.lock`` in each of ``dirs`` (every folder the agent writes its state
    in: two configs that share an outbox but not a records folder are still one pole), in
    path order, so two agents never each hold one and wait for the other. AlreadyRunning
    (nothing kept) when another process holds any of them."""
    held: list[IO[str]] = []
    try:
        # real paths: two agents reaching one folder through a symlink lock in one order
        for d in sorted({Path(d).resolve() for d in dirs}):
            f = take(d)
            if f is not None:
                held.append(f)
    except AlreadyRunning:
        for f in held:                  # not ours after all: no pid of ours left behind
            with contextlib.suppress(OSError):
                f.seek(0)
                f.truncate()
            f.close()
        raise
    return held


#: Seconds between tries while waiting for the lock under systemd.
WAIT_POLL_S = 1.0
#: How much longer systemd is asked to wait for the start, each time (it is asked again
#: well before this runs out, for as long as the lock is held).
EXTEND_TIMEOUT_S = 60


def wait_for(dirs: list[Path], stop: threading.Event, notifier: Notifier
             ) -> list[IO[str]] | None:
    """Under systemd: wait for the lock the other agent holds, instead of exiting. An exit
    would be restarted every ``RestartSec`` and count towards ``StartLimitBurst``, whose
    action is a reboot: a technician's ``agent run`` in a shell must not reboot the pole,
    and when it ends the service must take over the lamps at once. systemd is told why it
    waits (``STATUS``) and asked for more start time (``EXTEND_TIMEOUT_USEC``) while the
    lock is held. Returns the locks (:func:`take_all`), or None when ``stop`` was set
    first."""
    told = -float("inf")
    while True:
        try:
            return take_all(dirs)
        except AlreadyRunning as e:
            now = time.monotonic()
            if now - told >= EXTEND_TIMEOUT_S / 2:
                told = now
                notifier.send(STATUS=f"waiting: {e}",
                              EXTEND_TIMEOUT_USEC=EXTEND_TIMEOUT_S * 1_000_000)
        if stop.wait(WAIT_POLL_S):
            return None
