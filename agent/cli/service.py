"""``agent service-exit``: the unit's ``ExecStopPost=`` hook.

systemd runs it after every end of ``agent run`` with ``SERVICE_RESULT``, ``EXIT_CODE``
and ``EXIT_STATUS`` in its environment and ``STATE_DIRECTORY`` pointing at the agent's
state directory; it records how the run ended (``agent.service.runs``) so the next
start's health says it in ``lastExit``. Exit 0 recorded, 2 not run by systemd (nothing
to record) or no state directory, 1 the record could not be written.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from agent.service.runs import read_exit, record_from_systemd


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``agent service-exit``."""
    p = sub.add_parser("service-exit", help="ExecStopPost= hook of the systemd unit: record "
                       "how the agent's run ended (for health's lastExit)")
    p.add_argument("--state-dir", metavar="DIR",
                   help="the agent's state directory (default: $STATE_DIRECTORY)")
    p.set_defaults(func=cmd_service_exit)


def cmd_service_exit(a: argparse.Namespace) -> int:
    """Record systemd's view of the run that just ended."""
    raw = a.state_dir or os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if not raw:
        print("agent service-exit: error: no state directory: give --state-dir or run it "
              "from the unit (StateDirectory= sets $STATE_DIRECTORY)", file=sys.stderr)
        return 2
    if not os.environ.get("SERVICE_RESULT"):
        print("agent service-exit: error: SERVICE_RESULT is not set: this is the unit's "
              "ExecStopPost= hook, run by systemd after the agent stops", file=sys.stderr)
        return 2
    directory = Path(raw)
    reason = record_from_systemd(directory, os.environ)
    rec = read_exit(directory)
    if rec is None or rec["reason"] != reason:
        print(f"agent service-exit: error: could not record the exit in {directory}",
              file=sys.stderr)
        return 1
    print(f"last exit: {rec['reason']} ({rec['detail']})")
    return 0
