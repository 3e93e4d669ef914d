"""The small interfaces of the lighting hardware, and its typed transport errors.

Two layers:

- :class:`LightingBus`: a DALI bus driver. Synchronous (the agent is thread-based) and
  thread-safe: ``send`` one command and get its response, ``run_sequence`` a multi-frame
  sequence atomically (no other caller's frames interleave).
- :class:`LuminaireGroup`: what the lighting service drives, whatever the bus: set a
  level, read status (levels, lamp failures, power), energy counters and slow
  diagnostics, and make the gear safe without us (power-on and failure levels, fade).
  ``drivers.dali.group.DaliGroup`` and ``drivers.modbus.ModbusGroup`` implement it.

Faults are raised as :class:`BusError` subclasses, never as a hang: every wait has a
deadline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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


class BusInUse(BusDisconnected):
    """Another process (usually the running agent) has the port."""


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


#: States of one luminaire as a status read sees it.
LAMP_STATES = ("ok", "lamp_failure", "gear_failure", "no_answer")


@dataclass(frozen=True)
class LampStatus:
    """One luminaire (DALI gear, or a Modbus controller's output) at a status read."""

    address: str                 # "short:3" (DALI) or "unit:1" (Modbus)
    state: str                   # one of LAMP_STATES
    level_pct: float | None = None


@dataclass(frozen=True)
class GroupReading:
    """A group's status: the mean actual level of the luminaires that answered, each
    luminaire's state, and the group's power where the gear measures it."""

    level_pct: float | None
    lamps: tuple[LampStatus, ...] = ()
    power_w: float | None = None


@dataclass(frozen=True)
class EnergyReading:
    """The sum of the group's energy counters (Wh), how many counters, and their step:
    each counter is exact to within one step, so the sum is within ``counters × quantum``."""

    energy_wh: float | None
    counters: int = 0
    quantum_wh: float = 1.0
    power_w: float | None = None


@dataclass(frozen=True)
class LuminaireDiagnostics:
    """Slow-changing figures of one luminaire (D4i memory banks, or a controller's
    registers): temperatures, on-time, failure counters, inventory. ``None`` = not
    implemented by the gear."""

    address: str
    values: dict[str, Any] = field(default_factory=dict)


class LuminaireGroup(Protocol):
    """Luminaires dimmed together; see the module docstring."""

    name: str

    def discover(self) -> tuple[str, ...]:
        """Find the group's luminaires (after each (re)open); returns their addresses."""
        ...

    def set_level(self, percent: float) -> None:
        """Command the group to ``percent`` of full output (0 = off)."""
        ...

    def read_status(self) -> GroupReading:
        """Levels, lamp failures and power."""
        ...

    def read_energy(self) -> EnergyReading:
        """Energy counters."""
        ...

    def read_diagnostics(self) -> list[LuminaireDiagnostics]:
        """Temperatures, on-time, failure counters, inventory (slow: minutes apart)."""
        ...

    def rated_power_w(self) -> float | None:
        """The group's full-output power as the gear declares it (None: unknown)."""
        ...

    def ensure_failsafe(self, safe_pct: float, fade_s: float) -> list[str]:
        """Verify the gear's own fail-safe settings (power-on level, failure level, fade
        time) and set only what differs; returns what was changed, or what the gear
        cannot do."""
        ...
