"""DALI through a serial gateway (HAT or Foxtron codec) on pyserial.

- The port is held exclusively (:class:`drivers.portlock.PortLock`) while open.
- The gateway answers each transmitted frame (two for a send-twice request); every
  answer is read, each with a deadline (``timeout``), so a second ``N`` is never taken
  for the answer to the next query. Late or missing replies raise :class:`BusTimeout`,
  and stale bytes are flushed before the next frame. Gateway events (bus power, frames
  of other masters) are recorded, not taken for answers.
- Send collisions (``resend``) and receive collisions on queries are retried up to
  ``retries`` times, then raise :class:`BusCollision` (except yes/no queries, where
  several gear answering at once means "yes"); unparseable replies raise
  :class:`BusProtocolError` after the same retries.
- Commands python-dali marks ``sendtwice`` (configuration commands) go out as one
  send-twice request, so the gateway repeats them inside DALI's 100 ms window.
- DT6/DT8 (any ``devicetype != 0``) commands are preceded by ``EnableDeviceType``.
- A lock makes ``send`` and ``run_sequence`` atomic across threads.
- **A slow gateway** (answers later than ``timeout``): after a missed deadline the driver
  waits once more, up to the current timeout, for the late answer. Nothing was sent
  meanwhile, so it is this frame's answer and is used (a frame is never sent twice for
  it: a memory-bank read moves the gear's read position, a resend would read the next
  byte); the deadline becomes 1.5 times longer (at most :attr:`max_timeout`: five times
  the configured one, at least 0.5 s) and ``late_replies`` counts it. One gear's answer is
  never read as another's; a gateway answering in 90 ms against 100 ms gives one
  adaptation, not a run of false lamp alarms. ``timeout`` is the deadline in force;
  ``base_timeout`` the configured one. A gateway that is quick again gives the time back:
  after :data:`SHRINK_AFTER` answers in a row that would have met a deadline 1.5 times
  shorter (with a fifth to spare), the deadline shrinks by that much, down to the
  configured one (a slow spell under load must not leave a dead gateway taking five times
  longer to notice).
"""

from __future__ import annotations

import termios
import threading
import time
from collections.abc import Callable
from typing import Any

import serial
from dali.command import Command, YesNoResponse
from dali.frame import BackwardFrame, BackwardFrameError
from dali.gear.general import EnableDeviceType
from dali.sequences import progress, sleep

from drivers.bus import BusCollision, BusDisconnected, BusError, BusProtocolError, BusTimeout
from drivers.dali.codecs import CODECS, Reply
from drivers.portlock import PortLock

#: Answers in a row, each quick enough, before a lengthened deadline shrinks again.
SHRINK_AFTER = 50

#: What a vanished port raises from pyserial's calls.
_PORT_ERRORS = (serial.SerialException, OSError, termios.error)


class SerialDaliBus:
    """A DALI bus behind a serial gateway."""

    def __init__(self, port: str, codec: str = "hat", timeout: float = 0.2, retries: int = 3,
                 baudrate: int | None = None, parity: str = "N") -> None:
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
        self.codec = CODECS[codec]()
        self.timeout = self.base_timeout = timeout
        #: the longest the deadline grows to for a slow gateway
        self.max_timeout = max(5 * timeout, 0.5)
        self.late_replies = 0
        self._quick = 0                        # answers in a row quick enough to shrink
        self.retries = retries
        self.port = port
        self._lock = threading.RLock()
        self.stats = {"frames": 0, "retries": 0, "timeouts": 0, "garbled": 0, "events": 0}
        self.power: str | None = None          # the gateway's last bus power report
        self._pending: list[Reply] = []
        self.port_lock = PortLock(port)
        try:
            self.serial = serial.Serial(port, baudrate or self.codec.baudrate, timeout=0.01,
                                        write_timeout=timeout, parity=parity)
        except (serial.SerialException, OSError, ValueError) as e:
            self.port_lock.release()
            raise BusDisconnected(f"cannot open {port}: {e}") from None

    def close(self) -> None:
        """Release the port (and its lock)."""
        try:
            self.serial.close()
        finally:
            self.port_lock.release()

    def __enter__(self) -> SerialDaliBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- frames -----------------------------------------------------------------------
    def _exchange(self, bits: int, value: int, twice: bool, want_reply: bool,
                  yes_no: bool = False) -> Reply:
        """Send one frame, read its answers; retry on transmit collisions, garbled or
        mismatched answers, and on receive collisions unless several answers at once *are*
        the answer (yes/no queries such as Compare during commissioning, where a
        collision means "yes")."""
        last: Reply | None = None
        expected = self.codec.replies_per_frame(twice)
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats["retries"] += 1
            try:
                self._drain()
                self.serial.write(self.codec.encode(bits, value, twice))
            except _PORT_ERRORS as e:
                raise BusDisconnected(f"{self.port}: {e}") from None
            self.stats["frames"] += 1
            answers: list[Reply] = []
            while len(answers) < expected:
                try:
                    answers.append(self._read_reply())
                except BusTimeout:
                    late = self._late_answer()
                    if late is None:
                        raise
                    answers.append(late)        # this frame's answer, only late: kept
                if answers[-1].kind == "resend":    # the frame never went out: no more
                    break
            last = answers[-1]
            if any(a.kind == "resend" for a in answers):
                continue
            if any(a.kind == "garbled" for a in answers):
                self.stats["garbled"] += 1
                last = next(a for a in answers if a.kind == "garbled")
                continue
            if len({(a.kind, a.value) for a in answers}) > 1:   # the two answers differ
                continue
            if last.kind == "collision" and want_reply and not yes_no:
                continue
            return last
        assert last is not None
        if last.kind == "garbled":
            raise BusProtocolError(f"{self.port}: unreadable replies from the gateway "
                                   f"(last {last.raw!r}) after {self.retries + 1} tries")
        raise BusCollision(f"{self.port}: bus collisions on {self.retries + 1} tries "
                           f"(frame {value:0{(bits + 3) // 4}X})")

    def _read_reply(self) -> Reply:
        """The next answer (gateway events are recorded and skipped); a run of quick
        answers shrinks a lengthened deadline (see the module docstring)."""
        t0 = time.monotonic()
        reply = self._read_until(lambda r: r.is_answer, "no reply from the gateway")
        if self.timeout > self.base_timeout:
            shorter = max(self.base_timeout, self.timeout / 1.5)
            self._quick = self._quick + 1 if time.monotonic() - t0 <= 0.8 * shorter else 0
            if self._quick >= SHRINK_AFTER:
                self.timeout, self._quick = shorter, 0
        return reply

    def _read_until(self, want: Callable[[Reply], bool], missing: str) -> Reply:
        """The next reply ``want`` accepts, read with a deadline; gateway events on the way
        are recorded, other replies dropped. BusTimeout (``missing``) when none comes."""
        deadline = time.monotonic() + self.timeout
        while True:
            while self._pending:
                r = self._pending.pop(0)
                if not r.is_answer:
                    self._event(r)
                if want(r):
                    return r
            try:
                # return as soon as anything arrives (read(n) would wait for n bytes)
                data = self.serial.read(max(1, self.serial.in_waiting))
            except _PORT_ERRORS as e:
                raise BusDisconnected(f"{self.port}: {e}") from None
            if data:
                self._pending.extend(self.codec.feed(data))
                continue
            if time.monotonic() > deadline:
                self.stats["timeouts"] += 1
                raise BusTimeout(f"{self.port}: {missing} within {self.timeout * 1000:.0f} ms")

    def _late_answer(self) -> Reply | None:
        """After a missed deadline: wait up to the current timeout for the late answer
        (nothing else was sent meanwhile, so it is this frame's); when it comes, lengthen
        the deadline (see the module docstring) and return it."""
        try:
            late = self._read_until(lambda r: r.is_answer, "no late reply")
        except BusTimeout:
            self.stats["timeouts"] -= 1         # the wait for a late answer is no timeout
            return None
        self.late_replies += 1
        self.timeout = min(self.max_timeout, self.timeout * 1.5)
        self._quick = 0
        return late

    def _drain(self) -> None:
        """Before a new request: take what arrived unasked (gateway events are kept,
        late answers to earlier frames are dropped) and forget any partial message."""
        data = self.serial.read(self.serial.in_waiting) if self.serial.in_waiting else b""
        for r in [*self._pending, *self.codec.feed(data)]:
            if not r.is_answer:
                self._event(r)
        self._pending.clear()
        self.codec.reset()

    def _event(self, r: Reply) -> None:
        self.stats["events"] += 1
        if r.info.startswith("bus_power:"):
            self.power = r.info.split(":", 1)[1]

    def query_bus_power(self) -> str | None:
        """Ask the gateway for the bus power state (``ok``, ``lost``…); None when the
        gateway has no such query (Foxtron reports it unasked, see :attr:`power`)."""
        query = getattr(self.codec, "encode_status_query", None)
        if query is None:
            return self.power
        with self._lock:
            try:
                self._drain()
                self.serial.write(query())
            except _PORT_ERRORS as e:
                raise BusDisconnected(f"{self.port}: {e}") from None
            self._read_until(lambda r: r.info.startswith("bus_power:"),
                             "no bus power status")
            return self.power

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
