"""Shared command-line plumbing for the pty emulators (``python -m sim.dali|modbus --pty``)."""

from __future__ import annotations

import sys
import time
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
