"""Strict JSON for the node: the agent's rules (``agent/uplink/commands.py``: UTF-8, no NaN
or Infinity, no duplicate keys, at most 16 levels), which MicroPython's ``json`` does not keep
(it reads ``{"a": , "b": 0}`` as ``{'a': 'b'}``, takes bytes that are not UTF-8, and recurses
without a bound). :func:`loads` reads the bytes once and builds the value itself, raising
``ValueError`` that names the problem and its byte. Escaped surrogates must come in pairs (a
lone one cannot be UTF-8); strings with escapes are decoded by the port's ``json`` (short).

Memory: every string is allocated once at its final size (the port's ``json`` grows a buffer
and then copies it: twice a string's size in one piece); long strings can stay in the payload
as :class:`Span` (``span_over``), so a command makes no large allocation at all."""

_WS = b" \t\n\r"
_DIGITS = b"0123456789"
_HEX = b"0123456789abcdefABCDEF"


def _err(what, i):
    raise ValueError(what + " at byte " + str(i))


def _ws(b, i, n):
    while i < n and b[i] in _WS:
        i += 1
    return i


def _hex4(b, i, n):
    if i + 4 > n or any(c not in _HEX for c in b[i:i + 4]):
        _err("bad \\u escape", i)
    return int(bytes(b[i:i + 4]), 16)


def _string(b, i, n):
    """The index after the string starting at ``b[i] == '"'``."""
    i += 1
    while True:
        if i >= n:
            _err("unterminated string", i)
        c = b[i]
        if c == 0x22:
            return i + 1
        if c < 0x20:
            _err("control character in a string", i)
        if c == 0x5C:
            if i + 1 >= n:
                _err("unterminated string", i)
            e = b[i + 1]
            if e == 0x75:                               # \uXXXX
                u = _hex4(b, i + 2, n)
                i += 6
                if 0xD800 <= u <= 0xDBFF:
                    if b[i:i + 2] != b"\\u" or not 0xDC00 <= _hex4(b, i + 2, n) <= 0xDFFF:
                        _err("lone surrogate", i)
                    i += 6
                elif 0xDC00 <= u <= 0xDFFF:
                    _err("lone surrogate", i)
                continue
            if e not in b'"\\/bfnrt':
                _err("bad escape", i)
            i += 2
            continue
        if c < 0x80:
            i += 1
            continue
        # UTF-8: lead byte, continuation bytes, no overlong forms, no surrogates
        if 0xC2 <= c <= 0xDF:
            k, lo, hi = 1, 0x80, 0xBF
        elif 0xE0 <= c <= 0xEF:
            k = 2
            lo, hi = (0xA0, 0xBF) if c == 0xE0 else (0x80, 0x9F) if c == 0xED else (0x80, 0xBF)
        elif 0xF0 <= c <= 0xF4:
            k = 3
            lo, hi = (0x90, 0xBF) if c == 0xF0 else (0x80, 0x8F) if c == 0xF4 else (0x80, 0xBF)
        else:
            _err("not UTF-8", i)
        if i + k >= n or not lo <= b[i + 1] <= hi \
                or any(not 0x80 <= x <= 0xBF for x in b[i + 2:i + 1 + k]):
            _err("not UTF-8", i)
        i += 1 + k


def _number(b, i, n):
    s = i
    if i < n and b[i] == 0x2D:
        i += 1
    if i < n and b[i] == 0x30:
        i += 1
    elif i < n and b[i] in b"123456789":
        while i < n and b[i] in _DIGITS:
            i += 1
    else:
        _err("bad number", s)
    if i < n and b[i] == 0x2E:
        i += 1
        if i >= n or b[i] not in _DIGITS:
            _err("bad number", s)
        while i < n and b[i] in _DIGITS:
            i += 1
    if i < n and b[i] in b"eE":
        i += 1
        if i < n and b[i] in b"+-":
            i += 1
        if i >= n or b[i] not in _DIGITS:
            _err("bad number", s)
        while i < n and b[i] in _DIGITS:
            i += 1
    return i


class Span:
    """A long string left where it is in the payload: ``b[start:end]``, its UTF-8, holds no
    escape. A node reads no long string; the signature check hashes it in place (so a
    command's 900-character note is never copied on a small heap)."""

    def __init__(self, b, start, end):
        self.b = b
        self.start = start
        self.end = end

    def raw(self):
        """The string's UTF-8 bytes (a view: nothing copied)."""
        return memoryview(self.b)[self.start:self.end]


def _text(b, s, e, span_over):
    """The string whose token (quotes included) is ``b[s:e]``."""
    mv = memoryview(b)
    for j in range(s + 1, e - 1):
        if b[j] == 0x5C:                    # escapes: the port's decoder
            import json
            return _join_pairs(json.loads(bytes(mv[s:e])))
    if span_over and e - s - 2 > span_over:
        return Span(b, s + 1, e - 1)
    return str(mv[s + 1:e - 1], "utf-8")


def _join_pairs(t):
    """``t`` with each escaped surrogate pair as the one character it stands for.
    MicroPython's ``json`` leaves ``"\\ud83d\\ude00"`` as two 3-byte sequences: as a key, a
    correlation id or a sort key that would differ from the same character written raw (a
    replay under another spelling, a missed duplicate key, a wrong length or key order).
    Lone surrogates never get here (:func:`_string` refuses them)."""
    try:
        u = t.encode()
    except UnicodeError:                    # CPython: only lone surrogates (refused before)
        return t
    i = u.find(b"\xed")
    if i < 0:
        return t
    out = bytearray()
    start = 0
    while i >= 0:
        if i + 5 < len(u) and 0xA0 <= u[i + 1] <= 0xAF and u[i + 3] == 0xED \
                and 0xB0 <= u[i + 4] <= 0xBF:
            high = ((u[i + 1] & 0x3F) << 6) | (u[i + 2] & 0x3F)
            low = ((u[i + 4] & 0x3F) << 6) | (u[i + 5] & 0x3F)
            out += u[start:i]
            out += chr(0x10000 + ((high & 0x3FF) << 10) + (low & 0x3FF)).encode()
            start = i + 6
            i = u.find(b"\xed", start)
        else:
            i = u.find(b"\xed", i + 1)
    out += u[start:]
    return str(out, "utf-8")


def _value(b, i, n, left, max_depth, span_over):
    """``(value, index after it)`` for the value at ``b[i]``; ``left`` levels may open."""
    if i >= n:
        _err("a value expected", i)
    c = b[i]
    if c == 0x22:
        e = _string(b, i, n)
        return _text(b, i, e, span_over), e
    if c == 0x2D or c in _DIGITS:
        e = _number(b, i, n)
        t = bytes(memoryview(b)[i:e])
        return (float(t) if b"." in t or b"e" in t or b"E" in t else int(t)), e
    if c == 0x7B or c == 0x5B:
        if not left:
            _err("nested more than " + str(max_depth) + " levels", i)
        obj = {} if c == 0x7B else []
        i = _ws(b, i + 1, n)
        if i < n and b[i] == c + 2:         # {} or []
            return obj, i + 1
        while True:
            if c == 0x7B:
                k = i
                i = _key(b, i, n)
                e = _string(b, k, n)
                key = _text(b, k, e, 0)
                if key in obj:
                    _err("duplicate key", k)
                obj[key], i = _value(b, i, n, left - 1, max_depth, span_over)
            else:
                v, i = _value(b, i, n, left - 1, max_depth, span_over)
                obj.append(v)
            i = _ws(b, i, n)
            if i >= n:
                _err("unterminated " + ("object" if c == 0x7B else "array"), i)
            if b[i] == 0x2C:
                i = _ws(b, i + 1, n)
            elif b[i] == c + 2:
                return obj, i + 1
            else:
                _err("',' or a closing bracket expected", i)
    if b[i:i + 4] == b"true":
        return True, i + 4
    if b[i:i + 4] == b"null":
        return None, i + 4
    if b[i:i + 5] == b"false":
        return False, i + 5
    _err("a value expected", i)


def _key(b, i, n):
    """After ``"key" :`` (and the spaces after it)."""
    if i >= n or b[i] != 0x22:
        _err("a key expected", i)
    i = _ws(b, _string(b, i, n), n)
    if i >= n or b[i] != 0x3A:
        _err("':' expected", i)
    return _ws(b, i + 1, n)


def loads(b, max_depth=16, span_over=0):
    """Strict JSON ``b`` (bytes, a bytearray or a memoryview of one) parsed; ValueError
    naming the problem and its byte. With ``span_over``, a string of more bytes than that
    without escapes is a :class:`Span` of ``b`` (valid while ``b`` is)."""
    if isinstance(b, str):
        b = b.encode()
    n = len(b)
    v, i = _value(b, _ws(b, 0, n), n, max_depth, max_depth, span_over)
    if _ws(b, i, n) != n:
        _err("extra data", _ws(b, i, n))
    return v
