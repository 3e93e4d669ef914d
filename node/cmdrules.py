"""Command checks, the same rules as the agent's (agent/uplink/commands.py, guard.py):
not retained, at most MAX_COMMAND_BYTES, JSON object of schema ``polelink/command/2`` with a
``correlation_id`` (1-128 chars), a known ``command``, an ``expires`` ISO-8601 date-time with
a zone that is in the future and at most ``max_ttl_s`` ahead, addressed to this node when it
names a device/site, and run once per correlation id (remembered, in a file, until expiry).

Signatures: the agent verifies Ed25519; this MicroPython has no cryptolib and a pure-Python
Ed25519 verify was not measured yet, so a node refuses signed-only operation (see README).
"""

import json

MAX_COMMAND_BYTES = 16 * 1024
MAX_REMEMBERED = 64
COMMANDS = ("set_override", "clear_override", "ping", "rebirth")


class Refused(Exception):
    """A command is not run; the message goes back to the platform."""


def _days(y, m, d):
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def parse_expiry(text):
    """``YYYY-MM-DDTHH:MM:SS[.fff](Z|±HH:MM)`` → epoch seconds; Refused otherwise."""
    if not isinstance(text, str) or len(text) < 20 or len(text) > 40:
        raise Refused("expires must be an ISO-8601 date-time with a zone")
    try:
        y, mo, d = int(text[0:4]), int(text[5:7]), int(text[8:10])
        hh, mi, ss = int(text[11:13]), int(text[14:16]), int(text[17:19])
        if text[4] != "-" or text[7] != "-" or text[10] not in "Tt " or text[13] != ":" \
                or text[16] != ":" or not (1 <= mo <= 12 and 1 <= d <= 31 and hh < 24
                                           and mi < 60 and ss < 61):
            raise ValueError
        rest = text[19:]
        if rest.startswith("."):
            i = 1
            while i < len(rest) and rest[i].isdigit():
                i += 1
            rest = rest[i:]
        if rest in ("Z", "z"):
            off = 0
        elif len(rest) == 6 and rest[0] in "+-" and rest[3] == ":":
            off = (int(rest[1:3]) * 60 + int(rest[4:6])) * 60 * (1 if rest[0] == "+" else -1)
        else:
            raise Refused("expires " + repr(text) + " has no time zone (add Z or +hh:mm)")
    except (ValueError, IndexError):
        raise Refused("expires " + repr(text) + " is not an ISO-8601 date-time") from None
    return _days(y, mo, d) * 86400 + hh * 3600 + mi * 60 + ss - off


class Guard:
    """Applies the rules of the module docstring; ``path`` remembers correlation ids."""

    def __init__(self, device, site, max_ttl_s, path):
        self.device = device
        self.site = site
        self.max_ttl_s = max_ttl_s
        self.path = path
        try:
            with open(path) as f:
                self.seen = json.load(f)
        except (OSError, ValueError):
            self.seen = {}

    def check(self, payload, retained, now):
        """The parsed command; Refused with the reason otherwise."""
        if retained:
            raise Refused("retained commands are refused")
        if len(payload) > MAX_COMMAND_BYTES:
            raise Refused("command of " + str(len(payload)) + " bytes (limit "
                          + str(MAX_COMMAND_BYTES) + ")")
        try:
            msg = json.loads(payload)
        except ValueError:
            raise Refused("not valid JSON") from None
        if not isinstance(msg, dict) or msg.get("schema") != "polelink/command/2":
            raise Refused("not a polelink/command/2 object")
        cid = msg.get("correlation_id")
        if not isinstance(cid, str) or not 1 <= len(cid) <= 128:
            raise Refused("correlation_id: expected a string of 1-128 characters")
        if msg.get("command") not in COMMANDS:
            raise Refused("command: " + repr(msg.get("command"))[:60] + " is not supported "
                          "by a node (" + ", ".join(COMMANDS) + ")")
        if not isinstance(msg.get("args", {}), dict):
            raise Refused("args: expected an object")
        if msg.get("device", self.device) != self.device or \
                msg.get("site", self.site) != self.site:
            raise Refused("addressed to another device")
        expires = parse_expiry(msg.get("expires"))
        if expires <= now:
            raise Refused("expired at " + msg["expires"])
        if expires > now + self.max_ttl_s:
            raise Refused("expires more than " + str(self.max_ttl_s) + " s ahead")
        for k in [k for k, v in self.seen.items() if v <= now]:
            del self.seen[k]
        if cid in self.seen:
            raise Refused("duplicate correlation_id " + cid)
        self.seen[cid] = expires
        while len(self.seen) > MAX_REMEMBERED:
            del self.seen[min(self.seen, key=lambda k: self.seen[k])]
        with open(self.path, "w") as f:
            json.dump(self.seen, f)
        return msg


def override_args(args):
    """``(level, priority, expires_in_s)`` of a set_override; Refused when invalid."""
    if not isinstance(args, dict):
        raise Refused("args: expected an object")
    level = args.get("level_pct")
    prio = args.get("priority", 5)
    ttl = args.get("expires_in_s")
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 <= level <= 100:
        raise Refused("args.level_pct: expected 0-100")
    if isinstance(prio, bool) or not isinstance(prio, int) or not 1 <= prio <= 9:
        raise Refused("args.priority: expected an integer 1-9")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 < ttl <= 7 * 86400:
        raise Refused("args.expires_in_s: expected an integer 1-604800")
    return level, prio, ttl
