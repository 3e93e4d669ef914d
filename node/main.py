"""Lamp node entry point (kept as source on the board; the rest is compiled): ``main.py
[CONFIG.json] [--clock FILE]``. The node never exits: whatever fails here, the lamp is
held at 100 % (see ``nodemain.py``)."""

import sys

try:
    import nodemain
    nodemain.main(sys.argv)
except Exception as e:              # even the start failed (no memory to load the code)
    print("node: " + type(e).__name__ + ": " + str(e))
    try:
        import nodemain
        nodemain.hold_from(sys.argv)
    except Exception:
        import time
        while True:                 # never exit (on a board that would be the REPL)
            time.sleep(1)
