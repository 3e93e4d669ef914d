"""Ed25519 signature verification (RFC 8032, section 5.1.7) for MicroPython boards, which have
no ``cryptolib`` Ed25519 and usually no ``hashlib.sha512``.

Verify only: the node never signs. The checks are those of OpenSSL, which the agent uses
through ``cryptography``: ``S < L``, canonical point encodings (``y < p``, no ``-0``), and the
cofactorless equation ``[S]B = R + [k]A`` with ``k = SHA-512(R || A || M) mod L``. Not
constant-time: it handles public data only (a public key, a signature and a message).

SHA-512 is ``hashlib.sha512`` when the port has it, else :func:`sha512` below, whose round
constants are computed (integer roots of the first primes, as FIPS 180-4 defines them) instead
of typed in, so no table can hold a typo.
"""

try:
    from hashlib import sha512 as _hashlib_sha512
except ImportError:
    _hashlib_sha512 = None

P = 2 ** 255 - 19
L = 2 ** 252 + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)
M64 = 0xFFFFFFFFFFFFFFFF
_K = []
_H0 = []


def _iroot(n, k):
    """The integer k-th root of ``n`` (floor), by Newton's method."""
    x = 1 << ((len(bin(n)) - 2 + k - 1) // k)    # MicroPython ints have no bit_length
    while True:
        y = ((k - 1) * x + n // x ** (k - 1)) // k
        if y >= x:
            return x
        x = y


def _constants():
    primes = []
    n = 2
    while len(primes) < 80:
        if all(n % q for q in primes if q * q <= n):
            primes.append(n)
        n += 1
    _K.extend(_iroot(q << 192, 3) & M64 for q in primes)
    _H0.extend(_iroot(q << 128, 2) & M64 for q in primes[:8])


def _rotr(x, n):
    return ((x >> n) | (x << (64 - n))) & M64


class Sha512:
    """SHA-512 in plain Python (FIPS 180-4), fed in pieces (``update``), so a message is
    never copied whole on a small heap."""

    def __init__(self):
        if not _K:
            _constants()
        self.h = list(_H0)
        self.w = [0] * 80
        self.pending = b""
        self.n = 0

    def update(self, data):
        """Add ``data`` (bytes) to the message."""
        self.n += len(data)
        if self.pending:
            take = 128 - len(self.pending)
            self.pending += bytes(data[:take])
            data = data[take:]
            if len(self.pending) < 128:
                return
            self._block(self.pending, 0)
            self.pending = b""
        off = 0
        while off + 128 <= len(data):
            self._block(data, off)
            off += 128
        self.pending = bytes(data[off:])

    def digest(self):
        """The 64-byte digest of everything added."""
        n = self.n
        self.update(b"\x80" + bytes((111 - n) % 128) + (n * 8).to_bytes(16, "big"))
        return b"".join(u.to_bytes(8, "big") for u in self.h)

    def _block(self, data, off):
        w, k = self.w, _K
        for i in range(16):
            w[i] = int.from_bytes(data[off + 8 * i:off + 8 * i + 8], "big")
        for i in range(16, 80):
            x, y = w[i - 15], w[i - 2]
            s0 = _rotr(x, 1) ^ _rotr(x, 8) ^ (x >> 7)
            s1 = _rotr(y, 19) ^ _rotr(y, 61) ^ (y >> 6)
            w[i] = (w[i - 16] + s0 + w[i - 7] + s1) & M64
        a, b, c, d, e, f, g, hh = self.h
        for i in range(80):
            t1 = (hh + (_rotr(e, 14) ^ _rotr(e, 18) ^ _rotr(e, 41)) + ((e & f) ^ (~e & g))
                  + k[i] + w[i]) & M64
            t2 = ((_rotr(a, 28) ^ _rotr(a, 34) ^ _rotr(a, 39)) + ((a & b) ^ (a & c) ^ (b & c))) \
                & M64
            hh, g, f, e, d, c, b, a = g, f, e, (d + t1) & M64, c, b, a, (t1 + t2) & M64
        old = self.h                     # no zip(strict=): MicroPython's zip has no keywords
        self.h = [(old[0] + a) & M64, (old[1] + b) & M64, (old[2] + c) & M64,
                  (old[3] + d) & M64, (old[4] + e) & M64, (old[5] + f) & M64,
                  (old[6] + g) & M64, (old[7] + hh) & M64]


def sha512(data):
    """SHA-512 digest (64 bytes) of ``data`` (bytes), in plain Python."""
    h = Sha512()
    h.update(data)
    return h.digest()


def _hasher():
    return Sha512() if _hashlib_sha512 is None else _hashlib_sha512()


def _decode(s):
    """A point (extended coordinates) from its 32-byte encoding; None when not canonical or
    not on the curve."""
    if len(s) != 32:
        return None
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    if y >= P:
        return None
    x2 = (y * y - 1) * pow(D * y * y + 1, P - 2, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P:
        x = x * SQRT_M1 % P
        if (x * x - x2) % P:
            return None
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


def _add(p1, p2):
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = 2 * D * t1 * t2 % P
    d = 2 * z1 * z2 % P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _double(p1):
    x1, y1, z1, _ = p1
    a = x1 * x1 % P
    b = y1 * y1 % P
    c = 2 * z1 * z1 % P
    h = a + b
    e = h - (x1 + y1) * (x1 + y1) % P
    g = a - b
    f = c + g
    return (e * f % P, g * h % P, f * g % P, e * h % P)


_B = None


def verify(public_key, signature, message):
    """True when ``signature`` (64 bytes) is ``public_key``'s (32 bytes) over ``message``;
    False for any bad signature, key or length. ``message`` is bytes, or a function that
    writes the message in pieces to the ``update`` function it is given (no whole copy)."""
    global _B
    if len(public_key) != 32 or len(signature) != 64:
        return False
    a = _decode(public_key)
    r = _decode(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if a is None or r is None or s >= L:
        return False
    if _B is None:
        _B = _decode((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))
    h = _hasher()
    h.update(bytes(signature[:32]))
    h.update(bytes(public_key))
    if callable(message):
        message(h.update)
    else:
        h.update(message)
    k = int.from_bytes(h.digest(), "little") % L
    neg_a = ((P - a[0]) % P, a[1], a[2], (P - a[3]) % P)
    q = (0, 1, 1, 0)                     # [S]B + [k](-A), both scalars in one pass (Straus)
    both = _add(_B, neg_a)
    for i in range(252, -1, -1):         # s, k < L < 2**253
        q = _double(q)
        bs, bk = (s >> i) & 1, (k >> i) & 1
        if bs and bk:
            q = _add(q, both)
        elif bs:
            q = _add(q, _B)
        elif bk:
            q = _add(q, neg_a)
    x1, y1, z1, _ = q
    x2, y2, z2, _ = r
    return (x1 * z2 - x2 * z1) % P == 0 and (y1 * z2 - y2 * z1) % P == 0
