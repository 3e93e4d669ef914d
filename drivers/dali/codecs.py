"""Serial framings of DALI gateways. Each codec turns a finished forward frame into bytes
and parses the gateway's bytes into :class:`Reply` objects; it never encodes DALI
commands itself (python-dali does).

**ATX LED DALI HAT** (``hat``; UART ``/dev/ttyS0``, 19200 8N1). One ASCII line per frame,
``\\n``-terminated, uppercase hex payload::

    j<2 hex>   8-bit frame          h<4 hex>   16-bit frame
    l<6 hex>   24-bit frame         m<7 hex>   25-bit frame
    t<4 hex>   16-bit frame the HAT sends twice (within the 100 ms DALI requires)

It answers one line per frame it sent: ``J<2 hex>`` backward frame, ``N`` no response,
``X`` receive collision (the backward frame was corrupt), ``Z`` send collision (the
forward frame did not go out: send it again).

**Foxtron DALI232** (``foxtron``; RS232, 19200 8N1 here). Messages are ``SOH (0x01)``,
data bytes written as uppercase ASCII hex, a checksum byte ``~(sum of data bytes) mod
256`` also in ASCII hex, then ``ETB (0x17)``. Data of a request: ``01`` (send a DALI
frame), flags (bit 0: send twice), frame length in bits, frame bytes (big-endian). Data
of a reply: ``02``, status (``00`` backward frame follows, ``01`` no response, ``02``
receive collision, ``03`` send collision), then the backward frame byte when status is
``00``. The framing and checksum follow Foxtron's published protocol (v1.7); the message
type and status codes are this project's subset, implemented identically by
``sim.dali``. Check them against the converter's firmware before field use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

ReplyKind = Literal["backward", "none", "collision", "resend", "garbled"]


@dataclass(frozen=True)
class Reply:
    """One reply from a gateway: ``backward`` (with ``value``), ``none``, ``collision``
    (corrupt backward frame), ``resend`` (send collision) or ``garbled`` (unparseable)."""

    kind: ReplyKind
    value: int | None = None
    raw: bytes = b""


class HatCodec:
    """ATX LED DALI HAT line protocol (see the module docstring)."""

    name = "hat"
    baudrate = 19200
    _prefix: ClassVar[dict[int, str]] = {8: "j", 16: "h", 24: "l", 25: "m"}

    def __init__(self) -> None:
        self._buf = b""

    def encode(self, bits: int, value: int, twice: bool = False) -> bytes:
        """Bytes that make the HAT send one forward frame (twice, for config commands)."""
        if twice:
            if bits != 16:
                raise ValueError("the HAT sends only 16-bit frames twice")
            return f"t{value:04X}\n".encode()
        try:
            prefix = self._prefix[bits]
        except KeyError:
            raise ValueError(f"the HAT cannot send {bits}-bit frames") from None
        digits = (bits + 3) // 4
        return f"{prefix}{value:0{digits}X}\n".encode()

    def _lines(self, data: bytes) -> list[tuple[bytes, bool]]:
        """Add received bytes; return ``(line, complete)`` for each line, where an
        incomplete one is a long run without newline (line noise), dropped."""
        self._buf += data
        out = []
        while b"\n" in self._buf:
            line, self._buf = self._buf.split(b"\n", 1)
            line = line.strip(b"\r ")
            if line:
                out.append((line, True))
        if len(self._buf) > 256:
            out.append((self._buf[:64], False))
            self._buf = b""
        return out

    def feed(self, data: bytes) -> list[Reply]:
        """Add received bytes; return every complete reply."""
        return [self.parse_line(line) if complete else Reply("garbled", raw=line)
                for line, complete in self._lines(data)]

    @staticmethod
    def parse_line(line: bytes) -> Reply:
        """One reply line → :class:`Reply`."""
        if line == b"N":
            return Reply("none", raw=line)
        if line == b"X":
            return Reply("collision", raw=line)
        if line == b"Z":
            return Reply("resend", raw=line)
        if len(line) == 3 and line[:1] == b"J":
            try:
                return Reply("backward", int(line[1:], 16), line)
            except ValueError:
                pass
        return Reply("garbled", raw=line)

    # emulator side -----------------------------------------------------------------
    def feed_requests(self, data: bytes) -> list[tuple[int, int, bool] | None]:
        """Add received bytes; return each complete request as ``(bits, value, twice)``
        (None for a malformed one)."""
        return [self.parse_request(line) if complete else None
                for line, complete in self._lines(data)]

    def parse_request(self, line: bytes) -> tuple[int, int, bool] | None:
        """A request line → ``(bits, value, twice)``, or None if malformed."""
        if not line:
            return None
        bits = {b"j": 8, b"h": 16, b"l": 24, b"m": 25, b"t": 16}.get(line[:1])
        digits = line[1:]
        if bits is None or len(digits) != (bits + 3) // 4:
            return None
        try:
            return bits, int(digits, 16), line[:1] == b"t"
        except ValueError:
            return None

    @staticmethod
    def encode_reply(reply: Reply) -> bytes:
        """Bytes of a reply (emulator side)."""
        if reply.kind == "backward":
            return f"J{reply.value:02X}\n".encode()
        return {"none": b"N\n", "collision": b"X\n", "resend": b"Z\n"}[reply.kind]


SOH, ETB = 0x01, 0x17


def _checksum(data: bytes) -> int:
    return (~sum(data)) & 0xFF


class FoxtronCodec:
    """Foxtron DALI232 ASCII protocol (see the module docstring)."""

    name = "foxtron"
    baudrate = 19200

    def __init__(self) -> None:
        self._buf = b""

    @staticmethod
    def wrap(data: bytes) -> bytes:
        """SOH + hex(data) + hex(checksum) + ETB."""
        return bytes([SOH]) + (data.hex().upper() + f"{_checksum(data):02X}").encode() \
            + bytes([ETB])

    @staticmethod
    def unwrap(msg: bytes) -> bytes | None:
        """Payload of a SOH…ETB message (without them) → data bytes, or None if invalid."""
        try:
            raw = bytes.fromhex(msg.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return None
        if len(raw) < 2 or _checksum(raw[:-1]) != raw[-1] or msg.upper() != msg:
            return None
        return raw[:-1]

    def encode(self, bits: int, value: int, twice: bool = False) -> bytes:
        """Bytes that make the converter send one forward frame."""
        if bits not in (8, 16, 24, 25):
            raise ValueError(f"cannot send {bits}-bit frames")
        nbytes = (bits + 7) // 8
        return self.wrap(bytes([0x01, 0x01 if twice else 0x00, bits])
                         + value.to_bytes(nbytes, "big"))

    def _messages(self, data: bytes) -> list[bytes | None]:
        self._buf += data
        out: list[bytes | None] = []
        while True:
            start = self._buf.find(bytes([SOH]))
            if start < 0:
                if self._buf.strip():
                    out.append(None)  # bytes outside any message: noise
                self._buf = b""
                return out
            if start > 0 and self._buf[:start].strip():
                out.append(None)
            end = self._buf.find(bytes([ETB]), start)
            if end < 0:
                self._buf = self._buf[start:]
                if len(self._buf) > 128:
                    out.append(None)
                    self._buf = b""
                return out
            out.append(self.unwrap(self._buf[start + 1:end]))
            self._buf = self._buf[end + 1:]

    def feed(self, data: bytes) -> list[Reply]:
        """Add received bytes; return every complete reply."""
        out = []
        for msg in self._messages(data):
            if msg is None or len(msg) < 2 or msg[0] != 0x02:
                out.append(Reply("garbled", raw=msg or b""))
            elif msg[1] == 0x00 and len(msg) == 3:
                out.append(Reply("backward", msg[2], msg))
            elif msg[1] in (0x01, 0x02, 0x03) and len(msg) == 2:
                out.append(Reply({1: "none", 2: "collision", 3: "resend"}[msg[1]], raw=msg))
            else:
                out.append(Reply("garbled", raw=msg))
        return out

    # emulator side -----------------------------------------------------------------
    def feed_requests(self, data: bytes) -> list[tuple[int, int, bool] | None]:
        """Add received bytes; return each complete request as ``(bits, value, twice)``."""
        out: list[tuple[int, int, bool] | None] = []
        for msg in self._messages(data):
            if msg is None or len(msg) < 4 or msg[0] != 0x01:
                out.append(None)
                continue
            bits = msg[2]
            payload = msg[3:]
            if bits not in (8, 16, 24, 25) or len(payload) != (bits + 7) // 8:
                out.append(None)
                continue
            out.append((bits, int.from_bytes(payload, "big"), bool(msg[1] & 1)))
        return out

    def encode_reply(self, reply: Reply) -> bytes:
        """Bytes of a reply (emulator side)."""
        if reply.kind == "backward":
            return self.wrap(bytes([0x02, 0x00, reply.value or 0]))
        return self.wrap(bytes([0x02, {"none": 1, "collision": 2, "resend": 3}[reply.kind]]))


CODECS = {"hat": HatCodec, "foxtron": FoxtronCodec}
