"""Shared command-line plumbing for the pty emulators (``python -m sim.dali|modbus --pty``)."""

from __future__ import annotations

import sys
import time
from typing import Protocol


class PtyEmulator(Protocol):
    """An emulator serving on a pseudo-terminal."""

    path: str

    def stop(self) -> None:
        """Stop serving and close the pty."""
        ...


def serve_until_interrupted(emu: PtyEmulator, what: str) -> int:
    """Print the device path (stdout, for scripts) and a banner (stderr); serve until Ctrl-C."""
    print(emu.path, flush=True)
    print(f"{what} on {emu.path}; Ctrl-C stops", file=sys.stderr)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()
    return 0
