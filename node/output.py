"""Lamp output behind one small interface: ``set(level_pct)`` and ``level``.

- ``pwm``: a ``machine.PWM`` pin (PWM dimming input or a 0-10 V interface driven by PWM;
  ``invert`` for interfaces where a high duty means dim).
- ``file``: a stand-in for the unix port (no ``machine.PWM``/``UART`` there): the level is
  written to a file, which the tests read. Not for a device.
- ``dali``: DALI through a serial gateway, in the same framings as the Pi's drivers
  (``drivers/dali/codecs.py``): the ATX LED HAT (``hat``: ``h<4 hex>\\n`` lines) or the
  Foxtron DALI232 (``foxtron``: SOH, hex of ``0B prio 10 addr arc 00``, checksum, ETB).
  The level goes out as DAPC (direct arc power) to ``address`` (a short address 0-63, or
  broadcast when absent), mapped onto DALI's logarithmic curve. On a device the gateway
  is ``machine.UART(uart, 19200)``; on the unix port ``port`` names a serial device file (the
  tests use the project's DALI emulator behind a pty). The gateway's answers are not read:
  DAPC has no backward frame, and the node sets the level at every loop pass, so a
  lamp that missed a frame gets it again at the next.
"""

import math

SOH, ETB = 0x01, 0x17


def arc_level(pct):
    """Percent of light output → DALI arc power level (0 off, 1..254 logarithmic)."""
    if pct <= 0:
        return 0
    if pct >= 100:
        return 254
    return max(1, min(254, int(1.5 + (253 / 3) * (math.log10(pct) + 1))))


def dapc_frame(address, arc):
    """The 16-bit DAPC forward frame: broadcast (``address`` None) or a short address."""
    addr = 0xFE if address is None else (address & 0x3F) << 1
    return (addr << 8) | (arc & 0xFF)


def hat_bytes(frame):
    """The HAT's line for one 16-bit forward frame."""
    return ("h%04X\n" % frame).encode()  # noqa: UP031


def foxtron_bytes(frame, priority=0):
    """The Foxtron DALI232 message for one 16-bit forward frame (send, type 0x0B)."""
    data = bytes([0x0B, priority, 16, frame >> 8, frame & 0xFF, 0])
    check = ~sum(data) & 0xFF
    text = "".join("%02X" % b for b in data) + "%02X" % check  # noqa: UP031
    return bytes([SOH]) + text.encode() + bytes([ETB])


class FileOutput:
    """Writes the level (percent, text) to ``path`` on every change."""

    def __init__(self, path):
        self.path = path
        self.level = None

    def set(self, level):
        """Drive the lamp to ``level`` percent."""
        level = max(0, min(100, level))
        with open(self.path + ".tmp", "w") as f:
            f.write(str(level) + "\n")
        import os
        os.rename(self.path + ".tmp", self.path)
        self.level = level


class PwmOutput:
    """Duty cycle of a ``machine.PWM`` pin."""

    def __init__(self, pin, freq=1000, invert=False):
        import machine
        self.pwm = machine.PWM(machine.Pin(pin), freq=freq)
        self.invert = invert
        self.level = None

    def set(self, level):
        """Drive the lamp to ``level`` percent."""
        level = max(0, min(100, level))
        duty = int(level * 65535 // 100)
        self.pwm.duty_u16(65535 - duty if self.invert else duty)
        self.level = level


class DaliOutput:
    """DAPC frames through a DALI serial gateway (see the module docstring)."""

    def __init__(self, codec="hat", address=None, port=None, uart=1):
        if codec not in ("hat", "foxtron"):
            raise ValueError("output.codec: expected hat or foxtron")
        self.codec = codec
        self.address = address
        self.level = None
        try:
            import machine
            self.io = machine.UART(uart, 19200)
        except (ImportError, AttributeError):
            if not port:
                raise ValueError("output.port: a serial device is needed without machine.UART"
                                 ) from None
            self.io = open(port, "wb")  # noqa: SIM115 (kept open for the node's life)

    def set(self, level):
        """Drive the lamp to ``level`` percent (one DAPC frame)."""
        level = max(0, min(100, level))
        frame = dapc_frame(self.address, arc_level(level))
        data = hat_bytes(frame) if self.codec == "hat" else foxtron_bytes(frame)
        self.io.write(data)
        try:  # noqa: SIM105 (no contextlib in MicroPython)
            self.io.flush()
        except (AttributeError, OSError):  # a UART has no flush; a tty cannot fsync
            pass
        self.level = level


def make(cfg):
    """The output the ``output`` config names."""
    kind = cfg["kind"]
    if kind == "file":
        return FileOutput(cfg["path"])
    if kind == "pwm":
        return PwmOutput(cfg["pin"], cfg.get("freq", 1000), cfg.get("invert", False))
    if kind == "dali":
        return DaliOutput(cfg.get("codec", "hat"), cfg.get("address"), cfg.get("port"),
                          cfg.get("uart", 1))
    raise ValueError("output.kind: " + kind + " is not supported by this node build")
