"""Reading the small files the lighting thread depends on (the RTC's sysfs counter, the
ambient light sensor's reading) without ever blocking it: the file is opened non-blocking
(a FIFO with no writer, which a plain ``open`` waits on for ever, returns at once), must
be a regular file, and at most ``limit`` bytes are read."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def read_regular(path: Path, limit: int = 64) -> tuple[bytes, float]:
    """``(the first limit bytes, modification time)`` of ``path``; OSError when it cannot
    be read, ValueError when it is not a regular file (a FIFO, a device, a directory)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path} is not a regular file")
        return os.read(fd, limit), st.st_mtime
    finally:
        os.close(fd)
