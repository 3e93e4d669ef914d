"""``python -m sim.platform --broker HOST:PORT [--http HOST:PORT] [--db FILE] [--token T]``."""

from __future__ import annotations

import argparse
import os
import sys

from sim.platform import PlatformSim
from sim.platform.web import dashboard_url
from sim.serve import serve_until_interrupted


def main(argv: list[str] | None = None) -> int:
    """Run the platform simulator until interrupted."""
    p = argparse.ArgumentParser(prog="python -m sim.platform",
                                description="City platform simulator: subscriber, store, dashboard")
    p.add_argument("--broker", default="127.0.0.1:1883", help="MQTT broker HOST:PORT")
    p.add_argument("--prefix", default="polelink")
    p.add_argument("--http", default="127.0.0.1:8080", help="dashboard HOST:PORT (loopback)")
    p.add_argument("--db", default=":memory:", help="SQLite file for received messages")
    p.add_argument("--token", default=os.environ.get("POLELINK_DASHBOARD_TOKEN"),
                   help="the dashboard's token for commands (default: $POLELINK_DASHBOARD_TOKEN, "
                        "else a new random one, printed with the dashboard's address)")
    a = p.parse_args(argv)
    bh, _, bp = a.broker.rpartition(":")
    hh, _, hp = a.http.rpartition(":")
    sim = PlatformSim(bh or "127.0.0.1", int(bp), a.prefix, a.db, hh or "127.0.0.1", int(hp),
                      token=a.token)
    sim.start()
    return serve_until_interrupted(
        sim, f"platform: subscribed to {a.prefix}/# on {a.broker}; dashboard "
             f"{dashboard_url(hh or '127.0.0.1', sim.http_port, sim.token)}")


if __name__ == "__main__":
    sys.exit(main())
