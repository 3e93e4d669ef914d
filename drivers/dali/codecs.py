"""Serial framings of DALI gateways. Each codec turns a finished forward frame into bytes
and parses the gateway's bytes into :class:`Reply` objects; it never encodes DALI
commands itself (python-dali does).

**ATX LED DALI HAT** (``hat``; the Pi's UART ``/dev/ttyS0``, 19200 8N1). ASCII lines,
``\\n``-terminated, hex digits (upper case sent; either case accepted)::

    j<2 hex>   8-bit frame          h<4 hex>   16-bit frame
    l<6 hex>   24-bit frame         m<8 hex>   25-bit frame (first byte 00 or 01)
    t<4 hex>   16-bit frame the HAT transmits twice (DALI's send-twice)
    d          bus power status     v          hardware/firmware version

The HAT answers **one line per frame it transmitted**, so a ``t`` request gets two:
``J<2 hex>`` backward frame, ``N`` no response, ``X`` receive collision (a corrupt
backward frame), ``Z`` transmit collision (the frame did not go out: send it again).
``d`` answers ``D<2 hex>`` (00 bus power lost, 01 bus stuck high, 02 good, 03 not yet
known); ``v`` answers ``V<2 hex hardware><2 hex firmware>``. The HAT also reports
frames it sees on the bus as ``H<4 hex>`` lines; they are bus traffic, not replies.
Sources: ATX LED's own scripts (atx-led-open-source/al-dali-pi) and python-dali's
``dali/driver/atxled.py``, which waits for two equal replies to a ``t`` frame. The
vendor's PDF was not available; what happens on a request the HAT cannot parse is not
documented (the emulator stays silent, so the driver times out).

**Foxtron DALI232 / DALI232e** (``foxtron``; RS232, 19200 baud; tomasKavan/jsdali opens it
with even parity, this project's default is none: set the bus's ``parity``; DTR powers
the interface).
Messages are ``SOH (0x01)``, the data bytes as upper-case ASCII hex, a checksum byte
``~(sum of data bytes) & 0xFF`` (also ASCII hex), then ``ETB (0x17)`` (Foxtron's
"Communication protocol" v1.7). Data of the messages used here:

- send (host → converter): ``0B prio bits frame… param`` (type 0x0B, "send with
  originator tracking"; ``bits`` the frame length in bits; ``param`` bit 0 = send twice);
- confirmation of our frame with an answer: ``0D bits answer_bits frame… answer…``
  (``answer_bits`` 0: the answer was corrupt, a collision); without an answer:
  ``0E bits frame…``. A send-twice frame is confirmed twice.
- special event: ``05 code`` (0 bus power OK, 1 bus power lost or short, 2 mains on the
  bus, 3 bad supply, 4 buffer full, 5 checksum error, 6 invalid command);
- frames of other masters: ``03``/``04`` (bus traffic, not replies).

The checksum example of the document is in the tests; the field layout of ``0D``/``0E``
and the send-twice confirmations come from third-party readings of the v1.7/v1.10
documents (docek/ha-foxtron-dali, tomasKavan/jsdali), which disagree on the order of
``0D``'s fields: check against the converter's firmware before field use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

ReplyKind = Literal["backward", "none", "collision", "resend", "garbled", "event"]

#: HAT ``D<nn>`` and Foxtron ``05 <code>`` bus power states.
BUS_POWER = {"hat": {0: "lost", 1: "stuck_high", 2: "ok", 3: "unknown"},
             "foxtron": {0: "ok", 1: "lost", 2: "mains_on_bus", 3: "bad_supply"}}


@dataclass(frozen=True)
class Reply:
    """One message from a gateway: ``backward`` (with ``value``), ``none``, ``collision``
    (corrupt backward frame), ``resend`` (transmit collision), ``garbled`` (unparseable),
    or ``event`` (not an answer: bus traffic, bus power, version; ``info`` says which)."""

    kind: ReplyKind
    value: int | None = None
    raw: bytes = b""
    info: str = ""

    @property
    def is_answer(self) -> bool:
        """True for replies that answer a frame we sent."""
        return self.kind != "event"


class HatCodec:
    """ATX LED DALI HAT line protocol (see the module docstring)."""

    name = "hat"
    baudrate = 19200
    _prefix: ClassVar[dict[int, str]] = {8: "j", 16: "h", 24: "l", 25: "m"}
    _bits: ClassVar[dict[bytes, int]] = {b"j": 8, b"h": 16, b"l": 24, b"m": 25, b"t": 16}

    def __init__(self) -> None:
        self._buf = b""

    def reset(self) -> None:
        """Forget any partial message (before a new request)."""
        self._buf = b""

    @staticmethod
    def replies_per_frame(twice: bool) -> int:
        """Answer lines the HAT sends for one request: one per transmitted frame."""
        return 2 if twice else 1

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
        return f"{prefix}{value:0{2 * ((bits + 7) // 8)}X}\n".encode()

    @staticmethod
    def encode_status_query() -> bytes:
        """``d``: ask for the bus power status."""
        return b"d\n"

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
        """One line from the HAT → :class:`Reply`."""
        head, rest = line[:1].upper(), line[1:]
        if line in (b"N", b"n"):
            return Reply("none", raw=line)
        if line in (b"X", b"x"):
            return Reply("collision", raw=line)
        if line in (b"Z", b"z"):
            return Reply("resend", raw=line)
        try:
            number = int(rest, 16) if rest and rest.isalnum() else None
        except ValueError:
            number = None
        if number is not None:
            if head == b"J" and len(rest) == 2:
                return Reply("backward", number, line)
            if head == b"D" and len(rest) == 2:
                return Reply("event", number, line,
                             "bus_power:" + BUS_POWER["hat"].get(number, "unknown"))
            if head == b"H" and len(rest) == 4:
                return Reply("event", number, line, "bus_frame")
            if head == b"V" and len(rest) == 4:
                return Reply("event", number, line,
                             f"version:hw {rest[:2].decode()} fw {rest[2:].decode()}")
        return Reply("garbled", raw=line)

    # emulator side -----------------------------------------------------------------
    def feed_requests(self, data: bytes) -> list[tuple[int, int, bool] | str | None]:
        """Add received bytes; return each complete request as ``(bits, value, twice)``,
        ``"d"``/``"v"`` for the status/version queries, or None for a malformed one."""
        return [self.parse_request(line) if complete else None
                for line, complete in self._lines(data)]

    def parse_request(self, line: bytes) -> tuple[int, int, bool] | str | None:
        """A request line → ``(bits, value, twice)``, ``"d"``, ``"v"``, or None."""
        if line in (b"d", b"v"):
            return line.decode()
        bits = self._bits.get(line[:1])
        digits = line[1:]
        if bits is None or len(digits) != 2 * ((bits + 7) // 8):
            return None
        try:
            value = int(digits, 16)
        except ValueError:
            return None
        return (bits, value, line[:1] == b"t") if value < 1 << bits else None

    @staticmethod
    def encode_reply(reply: Reply) -> bytes:
        """Bytes of a reply (emulator side)."""
        if reply.kind == "backward":
            return f"J{reply.value:02X}\n".encode()
        if reply.kind == "event":
            return reply.raw + b"\n"
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

    def reset(self) -> None:
        """Forget any partial message (before a new request)."""
        self._buf = b""

    @staticmethod
    def replies_per_frame(twice: bool) -> int:
        """Confirmations of one send: one per transmitted frame."""
        return 2 if twice else 1

    @staticmethod
    def wrap(data: bytes) -> bytes:
        """SOH + hex(data) + hex(checksum) + ETB."""
        return bytes([SOH]) + (data.hex().upper() + f"{_checksum(data):02X}").encode() \
            + bytes([ETB])

    @staticmethod
    def unwrap(msg: bytes) -> bytes | None:
        """Payload of a SOH…ETB message (without them) → data bytes, or None if invalid."""
        if msg.upper() != msg:
            return None
        try:
            raw = bytes.fromhex(msg.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            return None
        if len(raw) < 2 or _checksum(raw[:-1]) != raw[-1]:
            return None
        return raw[:-1]

    def encode(self, bits: int, value: int, twice: bool = False, priority: int = 0) -> bytes:
        """Bytes that make the converter send one forward frame (type 0x0B)."""
        if bits not in (8, 16, 24, 25):
            raise ValueError(f"cannot send {bits}-bit frames")
        return self.wrap(bytes([0x0B, priority, bits]) + value.to_bytes((bits + 7) // 8, "big")
                         + bytes([0x01 if twice else 0x00]))

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
        return [self._parse(m) for m in self._messages(data)]

    @staticmethod
    def _parse(m: bytes | None) -> Reply:
        if m is None or not m:
            return Reply("garbled", raw=m or b"")
        kind = m[0]
        if kind == 0x0D and len(m) >= 3:
            nbytes = (m[1] + 7) // 8
            if m[2] == 0 and len(m) == 3 + nbytes:
                return Reply("collision", raw=m)
            if m[2] == 8 and len(m) == 3 + nbytes + 1:
                return Reply("backward", m[-1], m)
        elif kind == 0x0E and len(m) >= 2 and len(m) == 2 + (m[1] + 7) // 8:
            return Reply("none", raw=m)
        elif kind == 0x05 and len(m) == 2:
            code = m[1]
            info = ("bus_power:" + BUS_POWER["foxtron"][code]) if code in BUS_POWER["foxtron"] \
                else {4: "buffer_full", 5: "checksum_error", 6: "invalid_command"}.get(
                    code, f"event_{code}")
            return Reply("event", code, m, info)
        elif kind in (0x03, 0x04, 0x07, 0x09):
            return Reply("event", None, m, "bus_frame" if kind in (0x03, 0x04) else "config")
        return Reply("garbled", raw=m)

    # emulator side -----------------------------------------------------------------
    def feed_requests(self, data: bytes) -> list[tuple[int, int, bool] | str | None]:
        """Add received bytes; return each complete send request as ``(bits, value,
        twice)``, or None for a malformed one (bad checksum, unknown type)."""
        out: list[tuple[int, int, bool] | str | None] = []
        for msg in self._messages(data):
            if msg is None or len(msg) < 5 or msg[0] != 0x0B:
                out.append(None)
                continue
            bits = msg[2]
            nbytes = (bits + 7) // 8
            if bits not in (8, 16, 24, 25) or len(msg) != 3 + nbytes + 1:
                out.append(None)
                continue
            out.append((bits, int.from_bytes(msg[3:3 + nbytes], "big"), bool(msg[-1] & 1)))
        return out

    def encode_reply(self, reply: Reply, bits: int = 16, frame: int = 0) -> bytes:
        """Bytes of a confirmation of ``frame`` (emulator side)."""
        fb = frame.to_bytes((bits + 7) // 8, "big")
        if reply.kind == "backward":
            return self.wrap(bytes([0x0D, bits, 8]) + fb + bytes([reply.value or 0]))
        if reply.kind == "collision":
            return self.wrap(bytes([0x0D, bits, 0]) + fb)
        if reply.kind == "event":
            return self.wrap(bytes([0x05, reply.value or 0]))
        return self.wrap(bytes([0x0E, bits]) + fb)     # none (and resend: not in protocol)


CODECS = {"hat": HatCodec, "foxtron": FoxtronCodec}
