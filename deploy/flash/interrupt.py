"""Ctrl-C in flash.sh's helpers: no traceback, and the shell still sees the interruption.

flash.sh says what an interruption left behind in one line (its INT trap). bash runs that
trap after a foreground command only if the command died *of* SIGINT; a helper that printed
a KeyboardInterrupt traceback, or exited 130, would leave the shell to go on or to say
something else. ``main_of`` runs a helper's main and, on Ctrl-C, ends the process by SIGINT
itself, silently.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable


def main_of(main: Callable[[], int]) -> None:
    """``sys.exit(main())``, except that Ctrl-C ends the process by SIGINT, printing nothing."""
    try:
        code = main()
    except KeyboardInterrupt:
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
        signal.pause()       # not reached: the default action ends the process
        code = 130
    sys.exit(code)
