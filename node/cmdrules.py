"""Command checks, the same rules as the agent's (agent/uplink/commands.py, guard.py):
not retained, at most MAX_COMMAND_BYTES, JSON object of schema ``polelink/command/2`` with a
``correlation_id`` (1-128 chars), a known ``command``, an ``expires`` ISO-8601 date-time with
a zone that is in the future and at most ``max_ttl_s`` ahead, addressed to this node when it
names a device/site, signed when the node has a ``command_key``, and run once per correlation
id (remembered, in a file, until expiry).

Signatures are the agent's: Ed25519, base64, over :func:`canonical` of the command without its
``signature`` (the bytes of CPython's ``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False)``), checked by :mod:`ed25519` in plain Python. A signed command must name
its device and site. The size limit is 2 KiB, not the agent's 16 KiB: hashing 16 KiB in plain
Python takes seconds on an ESP32, near the watchdog's limit; a node's commands are small.
"""

import json

import ed25519
import strictjson
from b64 import b64decode
from common import tzrule

MAX_COMMAND_BYTES = 2 * 1024
#: Commands remembered at once (until each one's expiry). A correlation id is forgotten
#: only after its command expired, so a replay is refused as expired or as a duplicate,
#: never run: when this many unexpired commands are remembered, new ones are refused
#: ("too many commands") until one expires. Memory and the file stay constant.
MAX_REMEMBERED = 64
COMMANDS = ("set_override", "clear_override", "ping", "rebirth")
#: Strings of more bytes than this stay in the payload (:class:`strictjson.Span`): none that
#: the node reads is this long (a correlation id: 128 characters, at most 512 bytes).
SPAN_OVER = 512


class Refused(Exception):
    """A command is not run; the message goes back to the platform."""


_ESCAPES = {0x22: b'\\"', 0x5C: b"\\\\", 0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t",
            0x08: b"\\b", 0x0C: b"\\f"}

try:
    json.dumps("", ensure_ascii=False)

    def _dumps(s):
        return json.dumps(s, ensure_ascii=False)
except TypeError:                         # MicroPython: never escapes non-ASCII
    _dumps = json.dumps


def _plain(s):
    """True when the port's own json writes ``s`` as CPython does: no backspace or form
    feed (MicroPython writes them as \\u0008, \\u000c) and no surrogate."""
    if "\b" in s or "\f" in s:
        return False
    try:
        b = s.encode()
    except UnicodeError:
        return False
    i = b.find(b"\xed")                   # UTF-8 of U+D800-U+DFFF: ED A0-BF xx
    while i >= 0:
        if i + 1 < len(b) and 0xA0 <= b[i + 1] <= 0xBF:
            return False
        i = b.find(b"\xed", i + 1)
    return True


def _string(s, out):
    """``s`` as CPython's json writes it, as bytes. The common case goes through the port's
    json writer in one piece; the rest is scanned as UTF-8, copying runs of plain bytes (a
    list of characters would not fit a small heap). MicroPython's json leaves an escaped
    surrogate pair ("\\ud83d\\udea6") as two 3-byte sequences; CPython joins them into one
    character (U+1F6A6): joined here. A lone surrogate cannot be UTF-8; the agent refuses it
    too."""
    if _plain(s):
        out.append(_dumps(s).encode())
        return
    try:
        b = s.encode()
    except UnicodeError:
        raise Refused("a string holds a lone surrogate") from None
    out.append(b'"')
    n = len(b)
    i = start = 0
    while i < n:
        c = b[i]
        if c < 0x20 or c == 0x22 or c == 0x5C:
            out.append(b[start:i])
            out.append(_ESCAPES[c] if c in _ESCAPES else ("\\u%04x" % c).encode())  # noqa: UP031
            i += 1
            start = i
        elif c == 0xED and i + 1 < n and 0xA0 <= b[i + 1] <= 0xBF:
            if not (i + 5 < n and 0xA0 <= b[i + 1] <= 0xAF and b[i + 3] == 0xED
                    and 0xB0 <= b[i + 4] <= 0xBF):
                raise Refused("a string holds a lone surrogate")
            high = ((b[i + 1] & 0x3F) << 6) | (b[i + 2] & 0x3F)      # of 0xD800-0xDBFF
            low = ((b[i + 4] & 0x3F) << 6) | (b[i + 5] & 0x3F)       # of 0xDC00-0xDFFF
            out.append(b[start:i])
            out.append(chr(0x10000 + ((high & 0x3FF) << 10) + (low & 0x3FF)).encode())
            i += 6
            start = i
        else:
            i += 1
    out.append(b[start:])
    out.append(b'"')


def _float(f):
    """CPython's ``repr(f)``: the shortest digits that read back as ``f``, in its layout.

    MicroPython's float reader is not always correctly rounded ("71.4" can read as
    71.40000000000001), so ``repr`` there may show digits the sender never wrote. The
    shortest ``%.Ne`` string that *this* reader turns back into ``f`` is what the sender
    wrote (CPython writes shortest digits), which is what CPython's repr shows."""
    sign = "-" if f < 0 or (f == 0 and str(f)[0] == "-") else ""
    for n in range(17):                  # n + 1 significant digits: W * 10**X
        s = ("%." + str(n) + "e") % f
        mant, _, exp = s.lstrip("-").partition("e")
        w, x = int(mant.replace(".", "")), int(exp) - n
        if float(s) == f:
            break
        # at a power of two the rounded digits may miss while a neighbour reads back
        # (2**-24: "5.960464477539062e-08" does not, "...063e-08" does)
        w = [v for v in (w + 1, w - 1) if v and float(sign + str(v) + "e" + str(x)) == f]
        if w:
            w = w[0]
            break
    else:
        raise Refused("the number " + s + " does not read back on this node")
    digits = str(w)
    e = x + len(digits) - 1
    digits = digits.rstrip("0") or "0"
    if -4 <= e < 16:
        if e >= len(digits) - 1:
            return sign + digits + "0" * (e - len(digits) + 1) + ".0"
        if e >= 0:
            return sign + digits[:e + 1] + "." + digits[e + 1:]
        return sign + "0." + "0" * (-e - 1) + digits
    return sign + digits[0] + ("." + digits[1:] if len(digits) > 1 else "") + "e" \
        + ("-" if e < 0 else "+") + ("0" if abs(e) < 10 else "") + str(abs(e))


def _value(v, out):
    if v is None or v is True or v is False:
        out.append(b"null" if v is None else b"true" if v else b"false")
    elif isinstance(v, str):
        _string(v, out)
    elif isinstance(v, strictjson.Span):    # UTF-8 without escapes: CPython writes it as is
        out.append(b'"')
        out.append(v.raw())
        out.append(b'"')
    elif isinstance(v, int):
        out.append(str(v).encode())
    elif isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise Refused("a number is not finite")
        out.append(_float(v).encode())
    elif isinstance(v, list):
        out.append(b"[")
        for i, x in enumerate(v):
            if i:
                out.append(b",")
            _value(x, out)
        out.append(b"]")
    elif isinstance(v, dict):
        out.append(b"{")
        for i, k in enumerate(sorted(v)):
            if i:
                out.append(b",")
            _string(k, out)
            out.append(b":")
            _value(v[k], out)
        out.append(b"}")
    else:
        raise Refused("cannot sign a " + type(v).__name__)


class _Sink:
    """``out.append`` that hashes each piece instead of keeping it."""

    def __init__(self, update):
        self.append = update


def canonical(msg, update=None):
    """The bytes a signature covers: ``msg`` without ``signature``, keys sorted, no
    whitespace, UTF-8, strings escaped as CPython's json does (see the module docstring).
    With ``update``, the pieces go to it (a hash's update) and nothing is returned."""
    body = {k: msg[k] for k in msg if k != "signature"}
    if update is not None:
        _value(body, _Sink(update))
        return None
    out = []
    _value(body, _Sink(lambda piece: out.append(bytes(piece))))
    return b"".join(out)


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
    return tzrule.days_from_civil(y, mo, d) * 86400 + hh * 3600 + mi * 60 + ss - off


class Guard:
    """Applies the rules of the module docstring; ``path`` remembers correlation ids."""

    def __init__(self, device, site, max_ttl_s, path, key=None):
        self.key = key
        self.device = device
        self.site = site
        self.max_ttl_s = max_ttl_s
        self.path = path
        self.seen = None            # read after the signature check (a smaller heap peak)
        self.peek = (None, None)    # correlation_id and command, once parsed (for answers)

    def _load_seen(self):
        """The remembered ids (a missing or damaged file forgets them: docs, lamp nodes)."""
        self.seen = {}
        try:
            with open(self.path) as f:
                seen = json.loads(f.read(MAX_REMEMBERED * 40 + 64))
            for k in seen:
                if len(self.seen) < MAX_REMEMBERED and isinstance(k, str) and len(k) == 16 \
                        and isinstance(seen[k], (int, float)):
                    self.seen[k] = seen[k]
        except Exception:
            pass

    def check(self, payload, retained, now):
        """The parsed command; Refused with the reason otherwise."""
        if retained:
            raise Refused("retained commands are refused")
        if len(payload) > MAX_COMMAND_BYTES:
            raise Refused("command of " + str(len(payload)) + " bytes (limit "
                          + str(MAX_COMMAND_BYTES) + ")")
        try:
            msg = strictjson.loads(payload, span_over=SPAN_OVER)
        except ValueError as e:
            raise Refused("not valid JSON (" + str(e) + ")") from None
        if not isinstance(msg, dict):
            raise Refused("not a polelink/command/2 object")
        self.peek = (msg.get("correlation_id"), msg.get("command"))
        if msg.get("schema") != "polelink/command/2":
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
        if self.key is not None:
            self._verify(msg)
        if self.seen is None:
            self._load_seen()
        for k in [k for k, v in self.seen.items() if v <= now]:
            del self.seen[k]
        key = _id_key(cid)
        if key in self.seen:
            raise Refused("duplicate correlation_id " + clean(cid))
        if len(self.seen) >= MAX_REMEMBERED:
            raise Refused("too many commands: " + str(MAX_REMEMBERED) + " unexpired ones are "
                          "remembered; send it again after one expires")
        self.seen[key] = expires
        import os
        with open(self.path + ".tmp", "w") as f:
            json.dump(self.seen, f)
        os.rename(self.path + ".tmp", self.path)
        return msg

    def _verify(self, msg):
        if "device" not in msg or "site" not in msg:
            raise Refused("a signed command must name its device and site")
        sig = msg.get("signature")
        if not isinstance(sig, str):
            raise Refused("this node only accepts signed commands: signature missing")
        try:
            raw = b64decode(sig)
        except ValueError:
            raw = b""
        if not ed25519.verify(self.key, raw, lambda update: canonical(msg, update)):
            raise Refused("signature does not verify with this site's key; not run")


def _id_key(cid):
    """A correlation id as 16 hex digits (64 of them fit in a small heap)."""
    import binascii
    import hashlib
    return binascii.hexlify(hashlib.sha256(cid.encode()).digest()[:8]).decode()


def clean(s, limit=500):
    """``s`` cut to ``limit`` characters, as valid UTF-8 text: MicroPython keeps an escaped
    surrogate pair as two 3-byte sequences, which its json writes raw (not UTF-8): they are
    joined into one character; anything else that is not UTF-8 becomes U+FFFD."""
    if not isinstance(s, str):
        return s
    s = s[:limit]
    if _plain(s):
        return s
    out = []
    try:
        _string(s, out)
        return json.loads(b"".join(out))
    except Exception:
        return "".join(c if ord(c) < 0xD800 or ord(c) > 0xDFFF else "\ufffd" for c in s)


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
