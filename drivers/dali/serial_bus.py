"""DALI through a serial gateway (HAT or Foxtron codec) on pyserial.

- One reply per forward frame, read with a deadline (``timeout``); late or missing
  replies raise :class:`BusTimeout`, and stale bytes are flushed before the next frame.
- Send collisions (``resend``) and receive collisions on queries are retried up to
  ``retries`` times, then raise :class:`BusCollision` (except yes/no queries, where
  several gear answering at once means "yes"); unparseable replies raise
  :class:`BusProtocolError` after the same retries.
- Commands python-dali marks ``sendtwice`` (configuration commands) go out as one
  send-twice request, so the gateway repeats them inside DALI's 100 ms window.
- DT6/DT8 (any ``devicetype != 0``) commands are preceded by ``EnableDeviceType``.
- A lock makes ``send`` and ``run_sequence`` atomic across threads.
"""

from __future__ import annotations

import termios
import threading
import time
from typing import Any

import serial
from dali.command import Command, YesNoResponse
from dali.frame import BackwardFrame, BackwardFrameError
from dali.gear.general import EnableDeviceType
from dali.sequences import progress, sleep

from drivers.bus import BusCollision, BusDisconnected, BusError, BusProtocolError, BusTimeout
from drivers.dali.codecs import CODECS, Reply

#: What a vanished port raises from pyserial's calls.
_PORT_ERRORS = (serial.SerialException, OSError, termios.error)


class SerialDaliBus:
    """A DALI bus behind a serial gateway."""

    def __init__(self, port: str, codec: str = "hat", timeout: float = 0.2, retries: int = 3,
                 baudrate: int | None = None) -> None:
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
        self.codec = CODECS[codec]()
        self.timeout = timeout
        self.retries = retries
        self.port = port
        self._lock = threading.RLock()
        self.stats = {"frames": 0, "retries": 0, "timeouts": 0, "garbled": 0}
        try:
            self.serial = serial.Serial(port, baudrate or self.codec.baudrate, timeout=0.01,
                                        write_timeout=timeout)
        except (serial.SerialException, OSError) as e:
            raise BusDisconnected(f"cannot open {port}: {e}") from None

    def close(self) -> None:
        """Release the port."""
        self.serial.close()

    def __enter__(self) -> SerialDaliBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- frames -----------------------------------------------------------------------
    def _exchange(self, bits: int, value: int, twice: bool, want_reply: bool,
                  yes_no: bool = False) -> Reply:
        """Send one frame, wait for its reply; retry on send collisions, and on receive
        collisions unless several answers at once *are* the answer (yes/no queries such as
        Compare during commissioning, where a collision means "yes")."""
        last: Reply | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats["retries"] += 1
            try:
                self.serial.reset_input_buffer()
                self.serial.write(self.codec.encode(bits, value, twice))
            except _PORT_ERRORS as e:
                raise BusDisconnected(f"{self.port}: {e}") from None
            self.stats["frames"] += 1
            reply = self._read_reply()
            last = reply
            if reply.kind == "resend":
                continue
            if reply.kind == "garbled":
                self.stats["garbled"] += 1
                continue
            if reply.kind == "collision" and want_reply and not yes_no:
                continue
            return reply
        assert last is not None
        if last.kind == "garbled":
            raise BusProtocolError(f"{self.port}: unreadable replies from the gateway "
                                   f"(last {last.raw!r}) after {self.retries + 1} tries")
        raise BusCollision(f"{self.port}: bus collisions on {self.retries + 1} tries "
                           f"(frame {value:0{(bits + 3) // 4}X})")

    def _read_reply(self) -> Reply:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                # return as soon as anything arrives (read(n) would wait for n bytes)
                data = self.serial.read(max(1, self.serial.in_waiting))
            except _PORT_ERRORS as e:
                raise BusDisconnected(f"{self.port}: {e}") from None
            if data:
                replies = self.codec.feed(data)
                if replies:
                    return replies[0]
            if time.monotonic() > deadline:
                self.stats["timeouts"] += 1
                raise BusTimeout(f"{self.port}: no reply from the gateway within "
                                 f"{self.timeout * 1000:.0f} ms")

    # -- commands ---------------------------------------------------------------------
    def send(self, command: Command) -> Any:
        """Send a python-dali command; return its response object (or None)."""
        with self._lock:
            if getattr(command, "devicetype", 0):
                enable = EnableDeviceType(command.devicetype)
                self._exchange(len(enable.frame), enable.frame.as_integer, False, False)
            f = command.frame
            yes_no = command.response is not None and issubclass(command.response,
                                                                  YesNoResponse)
            reply = self._exchange(len(f), f.as_integer, bool(command.sendtwice),
                                   command.response is not None, yes_no)
            if command.response is None:
                return None
            if reply.kind == "backward":
                return command.response(BackwardFrame(reply.value))
            if reply.kind == "collision":
                return command.response(BackwardFrameError(255))
            return command.response(None)

    def run_sequence(self, sequence: Any, on_progress: Any = None) -> Any:
        """Run a python-dali sequence generator atomically; return its result."""
        with self._lock:
            response = None
            while True:
                try:
                    cmd = sequence.send(response)
                except StopIteration as r:
                    return r.value
                response = None
                if isinstance(cmd, Command):
                    response = self.send(cmd)
                elif isinstance(cmd, sleep):
                    time.sleep(cmd.delay)
                elif isinstance(cmd, progress) and on_progress is not None:
                    on_progress(cmd)


__all__ = ["BusError", "SerialDaliBus"]
