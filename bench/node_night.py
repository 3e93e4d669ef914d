"""One simulated night of the lamp node (MicroPython unix port, 128 KiB heap) against
mosquitto on loopback, 1200x fast: prints the live-heap peak, the lowest memFree and the
level changes. Usage: ``python bench/node_night.py`` (needs ../shared and mosquitto)."""

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.mqtt_broker import Broker, Collector
from tests.test_node_e2e import node_config, set_clock, start_node

START = 1797346800          # 2026-12-15 15:00 UTC, before sunset in Hamburg
HOURS, RATE = 17, 1200


def main() -> None:
    """Run the night and print the figures."""
    tmp = Path(tempfile.mkdtemp(prefix="node-night-"))
    broker = Broker(tmp).start()
    col = Collector(broker.port)
    node = start_node(tmp, node_config(tmp, broker.port, health_s=600, report_s=600),
                      set_clock(tmp, START, rate=RATE))
    time.sleep(HOURS * 3600 / RATE)
    node.kill()
    node.wait()
    health = col.where(lambda t, m, r: t.endswith("/health"))
    print(f"health messages {len(health)}; live-heap peak "
          f"{max(m['memAllocPeak'] for m in health)} bytes; lowest memFree "
          f"{min(m['memFree'] for m in health)} bytes")
    last = None
    for m in col.where(lambda t, m, r: t.endswith("/lighting")):
        if (m["levelPct"], m["source"]) != last:
            last = (m["levelPct"], m["source"])
            print(m["ts"], *last)
    col.close()
    broker.stop()


if __name__ == "__main__":
    main()
