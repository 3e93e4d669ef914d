"""The ``sd_notify`` protocol, implemented directly (it is one datagram per message).

systemd passes the address of its notification socket in ``NOTIFY_SOCKET``: a filesystem
path, or an abstract-namespace name written with a leading ``@``. Each message is one
``AF_UNIX``/``SOCK_DGRAM`` datagram of newline-separated ``KEY=value`` assignments
(``READY=1``, ``STATUS=…``, ``WATCHDOG=1``, ``STOPPING=1``). ``WATCHDOG_USEC`` (and
``WATCHDOG_PID``, when set, naming this process) ask for ``WATCHDOG=1`` at least that often.

Nothing here raises and nothing here blocks: without ``NOTIFY_SOCKET`` (or with one that
is not a usable address, or a ``WATCHDOG_USEC`` that is not a plain number of microseconds,
each said in one log line) notifying or the watchdog is off; a send goes out with
``MSG_DONTWAIT``, so a socket nobody reads (its queue full) costs the main loop nothing: the
message is dropped, and the drops are logged at most once a minute (a supervisor that went
away or stopped listening must not stop the agent, nor the lamps it drives).
See sd_notify(3). No library: the protocol is a few lines, ``sdnotify`` (pure Python) has
not been released since 2017, and ``systemd-python``/``cysystemd`` are C extensions built
against libsystemd (headers and a compiler on the Pi, or one more wheel to cross-build).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

#: ``sun_path`` holds 108 bytes, the terminating NUL of a path included.
MAX_ADDRESS_BYTES = 107
#: The largest ``WATCHDOG_USEC`` systemd can pass (a 64-bit count; all ones is "infinity").
MAX_WATCHDOG_USEC = 2**64 - 2
#: The least time between two log lines about dropped notifications.
DROP_LOG_PERIOD_S = 60.0


def socket_address(value: str) -> str | bytes | None:
    """The address to send to for a ``NOTIFY_SOCKET`` value (None: not usable). ``@name``
    is the abstract namespace (a leading NUL byte); ``vsock:`` addresses are not supported,
    nor values that are not valid UTF-8 (undecodable bytes in the environment) or too long
    for an ``AF_UNIX`` address."""
    if not value or "\0" in value:
        return None
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    if len(encoded) > MAX_ADDRESS_BYTES:
        return None
    if value.startswith("@"):
        return b"\0" + encoded[1:]
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC`` (None: no watchdog,
    or the watchdog is meant for another process per ``WATCHDOG_PID``). A value that is not
    a count of microseconds systemd could have set is logged and taken as no watchdog."""
    env = os.environ if env is None else env
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    raw = env.get("WATCHDOG_USEC", "")
    if not raw:
        return None
    digits = raw.isascii() and raw.isdigit() and len(raw) <= 20
    usec = int(raw) if digits else -1
    if not 0 < usec <= MAX_WATCHDOG_USEC:
        shown = raw[:30] + ("…" if len(raw) > 30 else "")
        log.warning("WATCHDOG_USEC=%s is not a number of microseconds between 1 and %d: "
                    "not pinging the watchdog", ascii(shown), MAX_WATCHDOG_USEC)
        return None
    return usec / 2e6


class Notifier:
    """Sends notifications to systemd (or to whoever bound ``NOTIFY_SOCKET``)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self.address = socket_address(raw)
        self.shown = ascii(raw)             # for the log: undecodable bytes, escapes
        if raw and self.address is None:
            log.warning("NOTIFY_SOCKET=%s is not a usable path or @name: not notifying",
                        self.shown[:200])
        self._sock: socket.socket | None = None
        #: messages dropped (not sent) in all
        self.dropped = 0
        self._since_ok = 0                 # dropped since the last message that went out
        self._unlogged = 0                 # dropped since the last log line about it
        self._last_log: float | None = None
        self._warned = False               # a drop was logged and no recovery since

    @property
    def enabled(self) -> bool:
        """True when there is somewhere to send to."""
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """One datagram of ``KEY=value`` lines (``send(READY=1, STATUS="up")``); True when
        it was sent. Never blocks: a message the socket cannot take now is dropped."""
        if self.address is None:
            return False
        msg = "\n".join(f"{k}={str(v).replace(chr(10), ' ')}" for k, v in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            self._sock.sendto(msg.encode("utf-8", "replace"), socket.MSG_DONTWAIT, self.address)
        except OSError as e:
            self._dropped(e)
            return False
        if self._warned:                  # at most one line per warning (once a minute)
            log.info("sd_notify: sending to %s again (%d message(s) dropped before)",
                     self.shown, self._since_ok)
            self._warned = False
        self._since_ok = 0
        return True

    def _dropped(self, e: OSError) -> None:
        """Count a message not sent; log at most once per :data:`DROP_LOG_PERIOD_S`."""
        self.dropped += 1
        self._since_ok += 1
        self._unlogged += 1
        now = time.monotonic()
        if self._last_log is not None and now - self._last_log < DROP_LOG_PERIOD_S:
            return
        why = "nobody reads it (its queue is full)" if isinstance(e, BlockingIOError) \
            else (e.strerror or str(e))
        log.warning("sd_notify: cannot send to %s: %s; %d message(s) dropped since the last "
                    "such line (logged at most once a minute)", self.shown, why, self._unlogged)
        self._unlogged, self._last_log, self._warned = 0, now, True

    def ready(self, status: str) -> bool:
        """``READY=1``: start-up is complete."""
        return self.send(READY=1, STATUS=status, MAINPID=os.getpid())

    def status(self, text: str) -> bool:
        """``STATUS=…``: the one line ``systemctl status`` shows."""
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: every part is alive."""
        return self.send(WATCHDOG=1)

    def stopping(self, status: str = "stopping") -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.send(STOPPING=1, STATUS=status)

    def close(self) -> None:
        """Close the socket (sending again reopens it)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
