"""Ed25519 signature verification (RFC 8032, section 5.1.7) for MicroPython boards, which have
no ``cryptolib`` Ed25519 and usually no ``hashlib.sha512``.

Verify only: the node never signs. The checks are those of OpenSSL, which the agent uses
through ``cryptography``: ``S < L``, canonical point encodings (``y < p``, no ``-0``), and the
cofactorless equation ``[S]B = R + [k]A`` with ``k = SHA-512(R || A || M) mod L``. Not
constant-time: it handles public data only (a public key, a signature and a message).

SHA-512 is ``hashlib.sha512`` when the port has it, else :func:`sha512` below, whose round
constants are a byte table checked by the tests against their derivation (integer roots of the
first primes, as FIPS 180-4 defines them).
"""

try:
    from hashlib import sha512 as _hashlib_sha512
except ImportError:
    _hashlib_sha512 = None

P = 2 ** 255 - 19
L = 2 ** 252 + 27742317777372353535851937790883648493
#: -121665/121666 mod P and sqrt(-1) mod P (RFC 8032), as literals: computing them at import
#: (``pow`` with a 255-bit modulus) needed more heap in one piece than a small node has
#: while a command is checked; ``tests/test_node_signatures.py`` checks them.
D = 37095705934669439343138083508754565189542113879843219016388785533085940283555
SQRT_M1 = 19681161376707505956807079304988542015446066515923890162744021073123829784752
M64 = 0xFFFFFFFFFFFFFFFF
#: SHA-512's round constants and initial hash (FIPS 180-4), 8 bytes each, big-endian: a
#: constant in the module (on a ROM file system it takes no heap; a list of 80 big ints
#: took a kilobyte in one piece, which a fragmented small heap could not give).
#: ``tests/test_node_signatures.py`` checks them against :func:`_constants`, which derives
#: them (integer roots of the first primes) as the standard defines them.
_KB = (
    b"\x42\x8a\x2f\x98\xd7\x28\xae\x22\x71\x37\x44\x91\x23\xef\x65\xcd"
    b"\xb5\xc0\xfb\xcf\xec\x4d\x3b\x2f\xe9\xb5\xdb\xa5\x81\x89\xdb\xbc"
    b"\x39\x56\xc2\x5b\xf3\x48\xb5\x38\x59\xf1\x11\xf1\xb6\x05\xd0\x19"
    b"\x92\x3f\x82\xa4\xaf\x19\x4f\x9b\xab\x1c\x5e\xd5\xda\x6d\x81\x18"
    b"\xd8\x07\xaa\x98\xa3\x03\x02\x42\x12\x83\x5b\x01\x45\x70\x6f\xbe"
    b"\x24\x31\x85\xbe\x4e\xe4\xb2\x8c\x55\x0c\x7d\xc3\xd5\xff\xb4\xe2"
    b"\x72\xbe\x5d\x74\xf2\x7b\x89\x6f\x80\xde\xb1\xfe\x3b\x16\x96\xb1"
    b"\x9b\xdc\x06\xa7\x25\xc7\x12\x35\xc1\x9b\xf1\x74\xcf\x69\x26\x94"
    b"\xe4\x9b\x69\xc1\x9e\xf1\x4a\xd2\xef\xbe\x47\x86\x38\x4f\x25\xe3"
    b"\x0f\xc1\x9d\xc6\x8b\x8c\xd5\xb5\x24\x0c\xa1\xcc\x77\xac\x9c\x65"
    b"\x2d\xe9\x2c\x6f\x59\x2b\x02\x75\x4a\x74\x84\xaa\x6e\xa6\xe4\x83"
    b"\x5c\xb0\xa9\xdc\xbd\x41\xfb\xd4\x76\xf9\x88\xda\x83\x11\x53\xb5"
    b"\x98\x3e\x51\x52\xee\x66\xdf\xab\xa8\x31\xc6\x6d\x2d\xb4\x32\x10"
    b"\xb0\x03\x27\xc8\x98\xfb\x21\x3f\xbf\x59\x7f\xc7\xbe\xef\x0e\xe4"
    b"\xc6\xe0\x0b\xf3\x3d\xa8\x8f\xc2\xd5\xa7\x91\x47\x93\x0a\xa7\x25"
    b"\x06\xca\x63\x51\xe0\x03\x82\x6f\x14\x29\x29\x67\x0a\x0e\x6e\x70"
    b"\x27\xb7\x0a\x85\x46\xd2\x2f\xfc\x2e\x1b\x21\x38\x5c\x26\xc9\x26"
    b"\x4d\x2c\x6d\xfc\x5a\xc4\x2a\xed\x53\x38\x0d\x13\x9d\x95\xb3\xdf"
    b"\x65\x0a\x73\x54\x8b\xaf\x63\xde\x76\x6a\x0a\xbb\x3c\x77\xb2\xa8"
    b"\x81\xc2\xc9\x2e\x47\xed\xae\xe6\x92\x72\x2c\x85\x14\x82\x35\x3b"
    b"\xa2\xbf\xe8\xa1\x4c\xf1\x03\x64\xa8\x1a\x66\x4b\xbc\x42\x30\x01"
    b"\xc2\x4b\x8b\x70\xd0\xf8\x97\x91\xc7\x6c\x51\xa3\x06\x54\xbe\x30"
    b"\xd1\x92\xe8\x19\xd6\xef\x52\x18\xd6\x99\x06\x24\x55\x65\xa9\x10"
    b"\xf4\x0e\x35\x85\x57\x71\x20\x2a\x10\x6a\xa0\x70\x32\xbb\xd1\xb8"
    b"\x19\xa4\xc1\x16\xb8\xd2\xd0\xc8\x1e\x37\x6c\x08\x51\x41\xab\x53"
    b"\x27\x48\x77\x4c\xdf\x8e\xeb\x99\x34\xb0\xbc\xb5\xe1\x9b\x48\xa8"
    b"\x39\x1c\x0c\xb3\xc5\xc9\x5a\x63\x4e\xd8\xaa\x4a\xe3\x41\x8a\xcb"
    b"\x5b\x9c\xca\x4f\x77\x63\xe3\x73\x68\x2e\x6f\xf3\xd6\xb2\xb8\xa3"
    b"\x74\x8f\x82\xee\x5d\xef\xb2\xfc\x78\xa5\x63\x6f\x43\x17\x2f\x60"
    b"\x84\xc8\x78\x14\xa1\xf0\xab\x72\x8c\xc7\x02\x08\x1a\x64\x39\xec"
    b"\x90\xbe\xff\xfa\x23\x63\x1e\x28\xa4\x50\x6c\xeb\xde\x82\xbd\xe9"
    b"\xbe\xf9\xa3\xf7\xb2\xc6\x79\x15\xc6\x71\x78\xf2\xe3\x72\x53\x2b"
    b"\xca\x27\x3e\xce\xea\x26\x61\x9c\xd1\x86\xb8\xc7\x21\xc0\xc2\x07"
    b"\xea\xda\x7d\xd6\xcd\xe0\xeb\x1e\xf5\x7d\x4f\x7f\xee\x6e\xd1\x78"
    b"\x06\xf0\x67\xaa\x72\x17\x6f\xba\x0a\x63\x7d\xc5\xa2\xc8\x98\xa6"
    b"\x11\x3f\x98\x04\xbe\xf9\x0d\xae\x1b\x71\x0b\x35\x13\x1c\x47\x1b"
    b"\x28\xdb\x77\xf5\x23\x04\x7d\x84\x32\xca\xab\x7b\x40\xc7\x24\x93"
    b"\x3c\x9e\xbe\x0a\x15\xc9\xbe\xbc\x43\x1d\x67\xc4\x9c\x10\x0d\x4c"
    b"\x4c\xc5\xd4\xbe\xcb\x3e\x42\xb6\x59\x7f\x29\x9c\xfc\x65\x7e\x2a"
    b"\x5f\xcb\x6f\xab\x3a\xd6\xfa\xec\x6c\x44\x19\x8c\x4a\x47\x58\x17")
_H0B = (
    b"\x6a\x09\xe6\x67\xf3\xbc\xc9\x08\xbb\x67\xae\x85\x84\xca\xa7\x3b"
    b"\x3c\x6e\xf3\x72\xfe\x94\xf8\x2b\xa5\x4f\xf5\x3a\x5f\x1d\x36\xf1"
    b"\x51\x0e\x52\x7f\xad\xe6\x82\xd1\x9b\x05\x68\x8c\x2b\x3e\x6c\x1f"
    b"\x1f\x83\xd9\xab\xfb\x41\xbd\x6b\x5b\xe0\xcd\x19\x13\x7e\x21\x79")


def _iroot(n, k):
    """The integer k-th root of ``n`` (floor), by Newton's method."""
    x = 1 << ((len(bin(n)) - 2 + k - 1) // k)    # MicroPython ints have no bit_length
    while True:
        y = ((k - 1) * x + n // x ** (k - 1)) // k
        if y >= x:
            return x
        x = y


def _constants():
    """``(K, H0)`` derived as FIPS 180-4 defines them (for the test of the tables above)."""
    primes = []
    n = 2
    while len(primes) < 80:
        if all(n % q for q in primes if q * q <= n):
            primes.append(n)
        n += 1
    return ([_iroot(q << 192, 3) & M64 for q in primes],
            [_iroot(q << 128, 2) & M64 for q in primes[:8]])


def _word(table, i):
    return int.from_bytes(table[8 * i:8 * i + 8], "big")


def _rotr(x, n):
    return ((x >> n) | (x << (64 - n))) & M64


class Sha512:
    """SHA-512 in plain Python (FIPS 180-4), fed in pieces (``update``), so a message is
    never copied whole on a small heap."""

    def __init__(self):
        self.h = [_word(_H0B, i) for i in range(8)]
        self.w = [0] * 16
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
        w = self.w                      # the message schedule, 16 words at a time
        for i in range(16):
            w[i] = int.from_bytes(data[off + 8 * i:off + 8 * i + 8], "big")
        a, b, c, d, e, f, g, hh = self.h
        for i in range(80):
            j = i & 15
            if i >= 16:                 # W[i] replaces W[i - 16]
                x, y = w[(i - 15) & 15], w[(i - 2) & 15]
                s0 = _rotr(x, 1) ^ _rotr(x, 8) ^ (x >> 7)
                s1 = _rotr(y, 19) ^ _rotr(y, 61) ^ (y >> 6)
                w[j] = (w[j] + s0 + w[(i - 7) & 15] + s1) & M64
            t1 = (hh + (_rotr(e, 14) ^ _rotr(e, 18) ^ _rotr(e, 41)) + ((e & f) ^ (~e & g))
                  + _word(_KB, i) + w[j]) & M64
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
