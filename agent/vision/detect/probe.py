"""Open a model once in a child process before this process opens it.

A model file that crashes its runtime's native code (a TFLite flatbuffer cut in half
segfaults ``tflite-runtime`` while it loads) would otherwise take down the process that
opens it: ``agent count`` died with exit 139 and nothing printed, and in ``agent run`` the
camera workers share the process that drives the lamps. The child loads the model, allocates
its tensors and runs it once on zeros; if it dies by a signal or does not finish within
:data:`PROBE_TIMEOUT_S`, the model is refused with a :class:`ModelError` naming what
happened, and this process never opens it. A child that fails with an ordinary error says
nothing here: the load in this process then reports that error itself.

A model that passed is remembered (by path, size and modification time) for the life of the
process: cameras sharing a model, and reloads, probe it once. What this does not cover: a
runtime that crashes later, on a particular frame (issue 21: inference in its own process).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from agent.settings.modelerror import ModelError

#: Seconds the child may take to load and run the model once (a detector for a pole
#: loads in well under a second here; the Pi is slower).
PROBE_TIMEOUT_S = 30.0
#: Signals that mean the runtime crashed (others: the child was killed from outside).
CRASHES = ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT")

_CHILD = """
import sys
import numpy as np
try:
    from tflite_runtime.interpreter import Interpreter
except ImportError:
    from ai_edge_litert.interpreter import Interpreter
it = Interpreter(model_path=sys.argv[1], num_threads=1)
it.allocate_tensors()
for d in it.get_input_details():
    it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
it.invoke()
"""

_passed: set[tuple[str, int, int]] = set()
#: False in a process that is itself the separate process (the model host).
ENABLED = True


def probe_tflite(path: Path, card_path: Path) -> None:
    """Load and run ``path`` once in a child; ModelError when that crashes or hangs."""
    if not ENABLED:
        return
    try:
        st = os.stat(path)
    except OSError:
        return                          # the load here reports a missing file
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key in _passed:
        return
    try:
        r = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True,
                           timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ModelError(f"{card_path}: {path} did not load and run once within "
                         f"{PROBE_TIMEOUT_S:g} s with the TFLite runtime (in a separate "
                         f"process): a corrupt model or a runtime that hangs; not opened "
                         f"here") from None
    except OSError:                     # cannot start a child: open it here, as before
        return
    if r.returncode < 0:
        try:
            name = signal.Signals(-r.returncode).name
        except ValueError:
            name = f"signal {-r.returncode}"
        if name not in CRASHES:
            raise ModelError(f"{card_path}: loading {path} in a separate process was "
                             f"stopped by {name} (out of memory, or stopped from outside); "
                             f"not opened here")
        raise ModelError(f"{card_path}: {path} crashes the TFLite runtime ({name} while "
                         f"loading it in a separate process): a corrupt or truncated "
                         f"model; not opened here")
    if r.returncode == 0:
        _passed.add(key)
