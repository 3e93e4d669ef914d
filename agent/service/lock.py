"""One agent per pole: ``agent run`` holds an exclusive lock on ``agent.lock`` in its state
directory for as long as it runs, taken before it touches anything else (run records,
counting checkpoint, outbox, bus, MQTT). A second ``agent run`` on the same pole is refused
in one line naming the first one's pid. The kernel drops the lock when the process ends,
however it ends (SIGKILL and power cuts included): there is no stale lock to clean up."""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import IO

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
