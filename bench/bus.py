"""DALI command throughput through the gateway emulator, as a ratio to DALI's physical limit.

    python bench/bus.py [--codec hat|foxtron] [--seconds 5]

On a real bus a 16-bit forward frame at 1200 baud takes about 24 ms including settling
(~41.7 commands/s), a query with its backward frame about 24 + 22 ms (~21.7 queries/s).
This measures DAPC commands and QueryActualLevel queries per second through the driver,
the pty and the emulator (which adds no bus timing), and prints each as a ratio to that
limit: above 1 means the software path is faster than the bus and will not be the
bottleneck on real hardware. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dali.address import GearShort
from dali.gear.general import DAPC, QueryActualLevel

from drivers.dali import SerialDaliBus
from sim.dali import DaliEmulator, make_gear

FORWARD_S = 0.024          # one forward frame incl. settling at 1200 baud
BACKWARD_S = 0.022         # backward frame window after a query


def rate(bus: SerialDaliBus, make, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        bus.send(make(n))
        n += 1
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--codec", choices=["hat", "foxtron"], default="hat")
    p.add_argument("--seconds", type=float, default=5.0)
    a = p.parse_args(argv)
    emu = DaliEmulator(make_gear(4), a.codec).start()
    try:
        with SerialDaliBus(emu.path, a.codec) as bus:
            cmd = rate(bus, lambda n: DAPC(GearShort(n % 4), n % 254), a.seconds)
            qry = rate(bus, lambda n: QueryActualLevel(GearShort(n % 4)), a.seconds)
    finally:
        emu.stop()
    cmd_limit, qry_limit = 1 / FORWARD_S, 1 / (FORWARD_S + BACKWARD_S)
    print(f"codec {a.codec}, {a.seconds:g} s each, through a pty to the emulator")
    print(f"{'':<12}{'per s':>8}{'DALI limit':>12}{'ratio':>8}")
    print(f"{'commands':<12}{cmd:>8.0f}{cmd_limit:>12.1f}{cmd / cmd_limit:>8.2f}")
    print(f"{'queries':<12}{qry:>8.0f}{qry_limit:>12.1f}{qry / qry_limit:>8.2f}")
    print(json.dumps({"codec": a.codec, "commands_per_s": round(cmd, 1),
                      "queries_per_s": round(qry, 1), "dali_commands_per_s": round(cmd_limit, 1),
                      "dali_queries_per_s": round(qry_limit, 1),
                      "command_ratio": round(cmd / cmd_limit, 2),
                      "query_ratio": round(qry / qry_limit, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
