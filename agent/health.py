"""The pole computer's own health: CPU, memory, temperature, disk and software versions,
read from /proc and /sys (Linux). The runner adds the parts' states (cameras, clock,
lighting, outbox) and publishes it on its own period."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Any

from agent import __version__


def system_health(data_dir: Path = Path("/")) -> dict[str, Any]:
    """CPU load, memory, SoC temperature, free disk where the agent writes, versions."""
    try:
        load = os.getloadavg()[0] / (os.cpu_count() or 1) * 100
    except OSError:
        load = 0.0
    mem = 0.0
    with contextlib.suppress(OSError, KeyError, ValueError, ZeroDivisionError):
        info = dict(ln.split(":", 1) for ln in Path("/proc/meminfo").read_text().splitlines()
                    if ":" in ln)
        mem = 100 * (1 - float(info["MemAvailable"].split()[0])
                     / float(info["MemTotal"].split()[0]))
    temp = None
    with contextlib.suppress(OSError, ValueError):
        temp = int(Path("/sys/class/thermal/thermal_zone0/temp").read_text()) / 1000
    free = 0.0
    with contextlib.suppress(OSError, ZeroDivisionError):
        probe = Path(data_dir)
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        du = shutil.disk_usage(probe)
        free = 100 * du.free / du.total
    import cv2
    import onnxruntime

    return {"cpuPercent": round(load, 1), "memoryPercent": round(mem, 1), "temperatureC": temp,
            "diskFreePercent": round(free, 1),
            "versions": {"agent": __version__, "python": sys.version.split()[0],
                         "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__,
                         "platform": platform.machine()}}
