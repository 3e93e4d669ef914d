"""Lamp node entry point: ``main.py [CONFIG.json] [--clock FILE]`` on the unix port,
``/config.json`` on a device. Power-on and any fault: full output."""

import sys
import time

import nodecfg
import output


def _mqtt(client_id, host, port, keepalive):
    from umqtt.simple import MQTTClient
    return MQTTClient(client_id, host, port=port, keepalive=keepalive)


def main(argv):
    """Load the config (one clear line per problem, exit 2), then run forever."""
    path = argv[1] if len(argv) > 1 and not argv[1].startswith("--") else "/config.json"
    try:
        cfg = nodecfg.load(path)
    except ValueError as e:
        print(e)
        sys.exit(2)
    out = output.make(cfg["output"])
    out.set(100)
    try:
        import clockrules
        if "--clock" in argv:
            clock = clockrules.FileClock(argv[argv.index("--clock") + 1])
        else:
            clock = clockrules.SystemClock()
        import app
        node = app.Node(cfg, out, clock, _mqtt)
        wdt = None
        if cfg["wdt_ms"]:
            try:
                from machine import WDT
                wdt = WDT(timeout=cfg["wdt_ms"])
            except (ImportError, AttributeError):
                wdt = None                  # unix port: no watchdog
        tick_ms = int(cfg["tick_s"] * 1000)
        while True:
            node.tick()
            if wdt:
                wdt.feed()
            time.sleep_ms(tick_ms)
    except BaseException:
        out.set(100)                        # on fault: full output, then let it show
        raise


main(sys.argv)
