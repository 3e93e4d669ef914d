"""The lamp node's start (``main.py`` calls :func:`main`): ``main.py [CONFIG.json] [--clock
FILE]`` on the unix port, ``/config.json`` on a device. Power-on and any fault: full output.
It never returns.

Config fallback (README "Lamp nodes"): the config that loads is copied to
``CONFIG.json.good``. When the config is refused (one line per problem is printed), the node
runs the last good copy with the lamp held at 100 % and says why (``failsafe_entered``, mode
``config``); with no good copy it drives the refused file's ``output`` section at 100 % when
that section is valid on its own, else :data:`DEFAULT_OUTPUT` (a board build sets it to the
board's lamp output; none on the unix port)."""

import sys
import time

#: The lamp output used when no config gives one (set per board build).
DEFAULT_OUTPUT = None


def _watchdog(ms):
    if not ms:
        return None
    try:
        from machine import WDT
        return WDT(timeout=ms)
    except (ImportError, AttributeError):
        return None                     # unix port: no watchdog


def _hold_full(out, wdt):
    """No usable config: the lamp at 100 %, for ever (a new config needs a reset)."""
    while True:
        try:
            if out is not None:
                out.set(100)
        except Exception:
            pass
        if wdt:
            wdt.feed()
        time.sleep_ms(1000)


def hold_from(argv):
    """The start failed: the lamp at 100 % through the config's output (or none), for ever."""
    import gc
    for m in ("app", "outbox", "mqttc", "clockrules", "cmdrules", "ed25519"):
        sys.modules.pop(m, None)
    gc.collect()
    import nodecfg
    import output
    path = argv[1] if len(argv) > 1 and not argv[1].startswith("--") else "/config.json"
    o = nodecfg.salvage_output(path) or nodecfg.salvage_output(path + ".good") \
        or DEFAULT_OUTPUT
    out = None
    try:  # noqa: SIM105
        out = output.make(o) if o else None
    except Exception:
        pass
    _hold_full(out, _watchdog(8000))


def _config(path):
    """``(cfg, why refused or None)``; cfg None when nothing usable loads."""
    import nodecfg
    try:
        cfg = nodecfg.load(path)
        try:  # noqa: SIM105 (no contextlib in MicroPython)
            nodecfg.keep_good(path)
        except Exception:               # a full flash: the config still runs
            pass
        return cfg, None
    except Exception as e:              # ValueError, MemoryError: refused
        why = str(e) if isinstance(e, ValueError) else path + ": " + type(e).__name__
    print(why)
    try:
        cfg = nodecfg.load(path + ".good")
        print(path + ": running the last good config (" + path + ".good) at 100 %")
        return cfg, why.split("\n")[0]
    except Exception:
        return None, why


def main(argv):
    """Load the config (with its fallbacks), then run for ever."""
    path = argv[1] if len(argv) > 1 and not argv[1].startswith("--") else "/config.json"
    import output
    cfg, why = _config(path)
    if cfg is None:
        import nodecfg
        o = nodecfg.salvage_output(path) or DEFAULT_OUTPUT
        out = None
        try:  # noqa: SIM105
            out = output.make(o) if o else None
        except Exception:
            pass
        print(path + ": no usable config: " + ("the lamp held at 100 %" if out else
                                               "no lamp output known"))
        _hold_full(out, _watchdog(8000))
    out = output.make(cfg["output"])
    out.set(100)
    import nodecfg
    nodecfg.prepare(cfg)
    del nodecfg
    for m in ("nodecfg", "strictjson", "b64"):     # done with: unloaded before app loads
        sys.modules.pop(m, None)
    import gc
    gc.collect()
    import app
    wdt = _watchdog(cfg["wdt_ms"])
    import clockrules
    if "--clock" in argv:
        clock = clockrules.FileClock(argv[argv.index("--clock") + 1])
    else:
        clock = clockrules.SystemClock()
    node = None
    tick_ms = int(cfg["tick_s"] * 1000)
    while True:
        t0 = time.ticks_ms()
        try:
            if node is None:
                node = app.Node(cfg, out, clock, why)
            node.tick()
        except Exception as e:          # contained: full output, counted, go on
            try:  # noqa: SIM105
                out.set(100)
            except Exception:
                pass
            if node is not None:
                node.faults += 1
            else:
                print("node: cannot start (" + type(e).__name__ + ": " + str(e)[:200]
                      + "); lamp at 100 %, trying again")
                time.sleep_ms(5000)
        if wdt:
            wdt.feed()
        left = tick_ms - time.ticks_diff(time.ticks_ms(), t0)
        if left > 0:
            time.sleep_ms(left)

