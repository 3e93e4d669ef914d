"""Exclusive use of a serial port: one process on a bus at a time.

:class:`PortLock` takes an advisory ``flock`` on the port's device node for as long as a
driver has the port open. ``agent run`` and ``agent lights`` both take it, so a technician
command while the agent runs is refused with a clear :class:`drivers.bus.BusInUse` (naming
the process that holds the port, from ``/proc/locks``) instead of interleaving frames with
the agent's and corrupting the bus. The lock goes with the process: a crash frees it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from drivers.bus import BusDisconnected, BusInUse


def lock_holder(path: str) -> str:
    """``pid N (command line)`` of the process holding a flock on ``path``, or ''."""
    try:
        st = os.stat(path)
        key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in Path("/proc/locks").read_text().splitlines():
            parts = line.split()
            if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == key:
                pid = parts[4]
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                return f"pid {pid} ({cmd.decode(errors='replace').strip()[:120]})"
    except (OSError, ValueError):
        pass
    return ""


def in_use(port: str) -> BusInUse:
    """The error for a port another process holds, naming that process when it can."""
    holder = lock_holder(port)
    agent = " by the running agent" if "agent" in holder and " run" in holder else ""
    return BusInUse(f"{port} is in use{agent}"
                    + (f" ({holder})" if holder else " by another process")
                    + "; stop it first (e.g. systemctl stop polelink) or use its commands")


class PortLock:
    """Holds an exclusive flock on a device node until :meth:`release`."""

    def __init__(self, port: str) -> None:
        self.port = port
        try:
            self.fd: int | None = os.open(port, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK
                                          | os.O_CLOEXEC)
        except OSError as e:
            raise BusDisconnected(f"cannot open {port}: {e.strerror or e}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            raise in_use(port) from None

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None
