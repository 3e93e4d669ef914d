"""Signed-command cases for the node's guard, run inside MicroPython (and CPython) by
tests/test_node_signatures.py. Reads JSON lines ``{"payload", "now", "key", "device",
"site"}`` (key: base64 config text or null) and prints, per line, ``<index> <canonical hex
or -> <ok | refused: reason>`` (canonical of what the node's own parser reads); the file
named by argv[2] holds the guard's replay window."""

import json
import sys

import cmdrules
import nodecfg
import strictjson


def main(cases_path, seen_path):
    """Check every case with a fresh guard (a fresh replay window)."""
    with open(cases_path) as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line:
            continue
        c = json.loads(line)
        import binascii
        raw = binascii.unhexlify(c["raw"])      # the bytes on the wire (UTF-8)
        try:
            canon = "".join("%02x" % b for b in cmdrules.canonical(strictjson.loads(raw)))  # noqa: UP031
        except Exception as e:
            canon = "-" + type(e).__name__
        key = None if c["key"] is None else nodecfg.public_key(c["key"])
        try:
            import os
            os.remove(seen_path)
        except OSError:
            pass
        g = cmdrules.Guard(c["device"], c["site"], 86400, seen_path, key)
        try:
            g.check(raw, False, c["now"])
            verdict = "ok"
        except cmdrules.Refused as e:
            verdict = "refused: " + str(e)
        print(i, canon, verdict)


main(sys.argv[1], sys.argv[2])
