"""A strict check of raw JSON bytes before MicroPython's lenient parser sees them.

MicroPython's ``json`` reads ``{"a": , "b": 0}`` as ``{'a': 'b'}``, takes bytes that are
not UTF-8, and recurses without a bound. The agent refuses such commands
(``agent/uplink/commands.py``: UTF-8, no NaN or Infinity, no duplicate keys, at most 16
levels); the node must refuse the same. :func:`check` walks the bytes once, in constant
memory besides a nesting stack of ``max_depth`` bytes, and raises ``ValueError`` naming the
position; it returns the number of object members, which :func:`members` of the parsed value
must equal (a smaller count means a duplicate key). Escaped surrogates must come in pairs
(a lone one cannot be UTF-8)."""

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


def check(b, max_depth=16):
    """Object members in strict JSON ``b`` (bytes); ValueError when it is not strict JSON
    or nests deeper than ``max_depth``."""
    n = len(b)
    stack = bytearray(max_depth)    # the open brackets; depth of them in use
    depth = 0
    members = 0
    i = _ws(b, 0, n)
    want_value = True
    while True:
        if want_value:
            if i >= n:
                _err("a value expected", i)
            c = b[i]
            if c in b"{[":
                if depth >= max_depth:
                    _err("nested more than " + str(max_depth) + " levels", i)
                stack[depth] = c
                depth += 1
                i = _ws(b, i + 1, n)
                if i < n and b[i] == c + 2:             # {} or []
                    depth -= 1
                    i += 1
                    want_value = False
                    continue
                if c == 0x7B:
                    i = _key(b, i, n)
                    members += 1
                continue
            if c == 0x22:
                i = _string(b, i, n)
            elif c == 0x2D or c in _DIGITS:
                i = _number(b, i, n)
            elif b[i:i + 4] == b"true" or b[i:i + 4] == b"null":
                i += 4
            elif b[i:i + 5] == b"false":
                i += 5
            else:
                _err("a value expected", i)
            want_value = False
            continue
        i = _ws(b, i, n)
        if not depth:
            if i != n:
                _err("extra data", i)
            return members
        if i >= n:
            _err("unterminated " + ("object" if stack[depth - 1] == 0x7B else "array"), i)
        c = b[i]
        if c == 0x2C:
            i = _ws(b, i + 1, n)
            if stack[depth - 1] == 0x7B:
                i = _key(b, i, n)
                members += 1
            want_value = True
        elif c == stack[depth - 1] + 2:
            depth -= 1
            i += 1
        else:
            _err("',' or a closing bracket expected", i)


def _key(b, i, n):
    """After ``"key" :`` (and the spaces after it)."""
    if i >= n or b[i] != 0x22:
        _err("a key expected", i)
    i = _ws(b, _string(b, i, n), n)
    if i >= n or b[i] != 0x3A:
        _err("':' expected", i)
    return _ws(b, i + 1, n)


def members(v):
    """Object members in a parsed value (depth already bounded by :func:`check`)."""
    if isinstance(v, dict):
        return len(v) + sum(members(x) for x in v.values())
    if isinstance(v, list):
        return sum(members(x) for x in v)
    return 0


def loads(b, max_depth=16):
    """Strict JSON ``b`` parsed; ValueError naming the problem."""
    if isinstance(b, str):
        b = b.encode()
    count = check(b, max_depth)
    import json
    v = json.loads(b)
    if members(v) != count:
        raise ValueError("duplicate key")
    return v
