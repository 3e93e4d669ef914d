"""The small interface every lighting bus driver offers, and its typed transport errors.

A driver is synchronous (the agent is thread-based) and thread-safe: ``send`` one
command and get its response, ``run_sequence`` a multi-frame sequence atomically (no
other caller's frames interleave). Faults are raised as :class:`BusError` subclasses,
never as a hang: every wait has a deadline.
"""

from __future__ import annotations

from typing import Any, Protocol


class BusError(Exception):
    """A transport fault talking to a lighting bus."""


class BusTimeout(BusError):
    """The interface did not answer in time."""


class BusCollision(BusError):
    """Frames kept colliding on the bus, even after the allowed retries."""


class BusProtocolError(BusError):
    """The interface answered something that is not a valid reply (garbled, bad checksum)."""


class BusDisconnected(BusError):
    """The serial port is gone (unplugged) or could not be opened."""


class LightingBus(Protocol):
    """A bus of luminaires."""

    def send(self, command: Any) -> Any:
        """Send one command; return its response object (None when it has none)."""
        ...

    def run_sequence(self, sequence: Any) -> Any:
        """Run a generator of commands atomically; return the sequence's result."""
        ...

    def close(self) -> None:
        """Release the port."""
        ...
