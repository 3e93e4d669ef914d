"""The lamp node's start (``main.py`` calls :func:`main`): ``main.py [CONFIG.json] [--clock
FILE]`` on the unix port, ``/config.json`` on a device. Power-on and any fault: full output.
It never returns.

Config fallback (docs/technicians/lamp-nodes.md): a config that loads, whose output opens and whose
first loop pass ran, is copied to ``CONFIG.json.good``. When the config is refused (one line
per problem is printed) or its output does not open, the node runs the last good copy with
the lamp held at 100 % and says why (``failsafe_entered``, mode ``config``); with no good
copy it drives the first output that opens, of: the refused file's ``output`` section (when
valid on its own), the good copy's, :data:`DEFAULT_OUTPUT` (a board build sets it to the
board's lamp output; none on the unix port), at 100 %, trying again every minute."""

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


def _sleep(ms, wdt):
    """Sleep, feeding the watchdog every second."""
    while ms > 0:
        if wdt:
            wdt.feed()
        time.sleep_ms(min(ms, 1000))
        ms -= 1000


def _open_output(candidates):
    """The first output of ``candidates`` (config sections) that opens, set to 100 %."""
    import output
    for o in candidates:
        if not o:
            continue
        try:
            out = output.make(o)
            out.set(100)
            return out
        except Exception:
            continue
    return None


def _hold_full(path, wdt):
    """No usable config: the lamp at 100 % through the first output that opens (tried again
    every minute, a bus may come back), for ever (a new config needs a reset)."""
    out = None
    n = 0
    while True:
        if out is None and n % 60 == 0:
            import nodecfg
            out = _open_output((nodecfg.salvage_output(path),
                                nodecfg.salvage_output(path + ".good"), DEFAULT_OUTPUT))
            sys.modules.pop("nodecfg", None)
        n += 1
        try:
            if out is not None:
                out.set(100)
        except Exception:
            out = None
        _sleep(1000, wdt)


def _path(argv):
    return argv[1] if len(argv) > 1 and not argv[1].startswith("--") else "/config.json"


def hold_from(argv):
    """The start failed: the lamp at 100 %, for ever (see :func:`_hold_full`)."""
    import gc
    for m in ("app", "outbox", "mqttc", "clockrules", "cmdrules", "ed25519"):
        sys.modules.pop(m, None)
    gc.collect()
    _hold_full(_path(argv), _watchdog(8000))


def keep_good(path):
    """Copy the config at ``path`` to ``path.good`` (the fallback when a later one is
    refused), unless that copy is already the same; written whole, then renamed."""
    import os
    good = path + ".good"
    try:
        with open(path, "rb") as a, open(good, "rb") as b:
            while True:
                x, y = a.read(512), b.read(512)
                if x != y:
                    break
                if not x:
                    return False
    except OSError:
        pass
    with open(path, "rb") as a, open(good + ".tmp", "wb") as b:
        while True:
            x = a.read(512)
            if not x:
                break
            b.write(x)
    os.rename(good + ".tmp", good)
    return True


def _load(path, quiet=False):
    """``(cfg, None)``, or ``(None, why)`` (printed unless ``quiet``, one line per problem)."""
    import nodecfg
    try:
        return nodecfg.load(path), None
    except Exception as e:              # ValueError, MemoryError: refused
        why = str(e) if isinstance(e, ValueError) else path + ": " + type(e).__name__
    if not quiet:
        print(why)
    return None, why


def main(argv):
    """Load the config (with its fallbacks), then run for ever."""
    path = _path(argv)
    cfg, why = _load(path)
    out = None
    if cfg is not None:
        out = _open_output((cfg["output"],))
        if out is None:
            why = path + ": output: the lamp output does not open"
            print(why)
            cfg = None
    if cfg is None:
        cfg, _ = _load(path + ".good", quiet=True)
        out = _open_output((cfg["output"],)) if cfg is not None else None
        if out is None:
            print(path + ": no usable config: the lamp held at 100 % by any output that opens")
            _hold_full(path, _watchdog(8000))
        print(path + ": running the last good config (" + path + ".good) at 100 %")
        why = why.split("\n")[0]
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
    kept = why is not None              # a fallback is never kept as good
    tick_ms = int(cfg["tick_s"] * 1000)
    while True:
        t0 = time.ticks_ms()
        try:
            if node is None:
                node = app.Node(cfg, out, clock, why)
            node.tick()
            if not kept:
                kept = True
                try:  # noqa: SIM105 (a full flash: the config still runs)
                    keep_good(path)
                except Exception:
                    pass
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
                _sleep(5000, wdt)
        if wdt:
            wdt.feed()
        left = tick_ms - time.ticks_diff(time.ticks_ms(), t0)
        if left > 0:
            _sleep(left, wdt)
