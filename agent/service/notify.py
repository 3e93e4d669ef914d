"""The ``sd_notify`` protocol, implemented directly (it is one datagram per message).

systemd passes the address of its notification socket in ``NOTIFY_SOCKET``: a filesystem
path, or an abstract-namespace name written with a leading ``@``. Each message is one
``AF_UNIX``/``SOCK_DGRAM`` datagram of newline-separated ``KEY=value`` assignments
(``READY=1``, ``STATUS=…``, ``WATCHDOG=1``, ``STOPPING=1``). ``WATCHDOG_USEC`` (and
``WATCHDOG_PID``, when set, naming this process) ask for ``WATCHDOG=1`` at least that often.

Nothing here raises: without ``NOTIFY_SOCKET`` every call does nothing, and a send that
fails is logged once and dropped (a supervisor that went away must not stop the agent).
See sd_notify(3). No library: the protocol is a few lines, ``sdnotify`` (pure Python) has
not been released since 2017, and ``systemd-python``/``cysystemd`` are C extensions built
against libsystemd (headers and a compiler on the Pi, or one more wheel to cross-build).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


def socket_address(value: str) -> str | bytes | None:
    """The address to send to for a ``NOTIFY_SOCKET`` value (None: not usable). ``@name``
    is the abstract namespace (a leading NUL byte); ``vsock:`` addresses are not supported."""
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC`` (None: no watchdog,
    or the watchdog is meant for another process per ``WATCHDOG_PID``)."""
    env = os.environ if env is None else env
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec / 2e6 if usec > 0 else None


class Notifier:
    """Sends notifications to systemd (or to whoever bound ``NOTIFY_SOCKET``)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self.address = socket_address(raw)
        if raw and self.address is None:
            log.warning("NOTIFY_SOCKET=%r is not a path or @name: not notifying", raw)
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        """True when there is somewhere to send to."""
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """One datagram of ``KEY=value`` lines (``send(READY=1, STATUS="up")``); True when
        it was sent."""
        if self.address is None:
            return False
        msg = "\n".join(f"{k}={str(v).replace(chr(10), ' ')}" for k, v in fields.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(msg.encode(), self.address)
        except OSError as e:
            if not self._failed:
                log.warning("sd_notify: cannot send to %s: %s (keeps trying, logged once)",
                            os.environ.get("NOTIFY_SOCKET", "?"), e)
            self._failed = True
            return False
        self._failed = False
        return True

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
