"""Shared plumbing for the pty emulators (``python -m sim.dali|modbus|gnss --pty``): the
command-line serve loop, and the stable link names that follow a re-plugged pty."""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path
from typing import Protocol


class Stoppable(Protocol):
    """Something serving in the background."""

    def stop(self) -> None:
        """Stop serving."""
        ...


def serve_until_interrupted(emu: Stoppable, what: str) -> int:
    """Announce and serve until Ctrl-C. An emulator with a ``path`` (a pty) prints it on
    stdout first, for scripts; the banner goes to stderr."""
    path = getattr(emu, "path", None)
    if path:
        print(path, flush=True)
    print(f"{what}{f' on {path}' if path else ''}; Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()
    return 0


def point_link(link: Path | None, target: str) -> None:
    """Make ``link`` a symlink to ``target`` atomically (a stable name for a pty that
    changes on every re-plug, as udev's ``/dev/serial/by-id`` names are)."""
    if link is None:
        return
    tmp = link.with_name(link.name + ".new")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(target)
    tmp.replace(link)


def drop_link(link: Path | None) -> None:
    """Remove ``link`` (an unplugged cable: the name dangles away)."""
    if link is not None:
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
