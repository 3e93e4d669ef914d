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
    p.add_argument("--host-id", default=None,
                   help="primary host id: the STATE topic is <prefix>/STATE/<host-id> (poles "
                        "name it as mqtt.primary_host); default 'platform', the default of "
                        "`agent broker-acl --platform-user`")
    p.add_argument("--username", help="MQTT username of this consumer (`agent broker-acl` "
                                      "writes <host-id>, <host-id>-2 …); the password from "
                                      "$POLELINK_PLATFORM_PASSWORD. The STATE is then spoken "
                                      "as user <host-id>-state (password "
                                      "$POLELINK_PLATFORM_STATE_PASSWORD, default the same)")
    p.add_argument("--signing-key", help="Ed25519 private key (PEM) to sign commands with")
    p.add_argument("--no-ack", action="store_true",
                   help="do not acknowledge stored messages (poles then free a message on "
                        "the broker's PUBACK, as before contract 2.7: for comparison only)")
    p.add_argument("--share", metavar="GROUP",
                   help="subscribe as one of several consumers sharing $share/GROUP/<prefix>/# "
                        "(each with its own --client-id, all on the same --db)")
    p.add_argument("--client-id", help="MQTT client id (default polelink-platform-<host-id>)")
    p.add_argument("--session-expiry", type=int, default=3600, metavar="S",
                   help="how long the broker keeps this platform's session and queues its "
                        "messages while it is away (default 3600; 0: a clean session)")
    a = p.parse_args(argv)
    bh, _, bp = a.broker.rpartition(":")
    hh, _, hp = a.http.rpartition(":")
    key = None
    if a.signing_key:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            with open(a.signing_key, "rb") as f:
                key = load_pem_private_key(f.read(), None)
        except (OSError, ValueError, TypeError) as e:
            p.error(f"--signing-key {a.signing_key}: {e}")
    try:
        port, http_port = int(bp), int(hp)
    except ValueError:
        p.error("--broker and --http take HOST:PORT")
    sim = PlatformSim(bh or "127.0.0.1", port, a.prefix, a.db, hh or "127.0.0.1", http_port,
                      token=a.token, host_id=a.host_id, signing_key=key, acks=not a.no_ack,
                      share=a.share, client_id=a.client_id, username=a.username,
                      password=os.environ.get("POLELINK_PLATFORM_PASSWORD"),
                      state_password=os.environ.get("POLELINK_PLATFORM_STATE_PASSWORD"),
                      session_expiry_s=max(0, a.session_expiry))
    sim.start()
    return serve_until_interrupted(
        sim, f"platform: subscribed to {a.prefix}/# on {a.broker}; dashboard "
             f"{dashboard_url(hh or '127.0.0.1', sim.http_port, sim.token)}")


if __name__ == "__main__":
    sys.exit(main())
