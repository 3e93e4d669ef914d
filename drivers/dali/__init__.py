"""DALI over serial gateways, built on python-dali's command, address and sequence objects.

Layering (python-dali's): frame → command → sequence → driver. python-dali encodes every
command; :mod:`drivers.dali.codecs` only wraps finished frames for a gateway's serial
protocol; :class:`drivers.dali.serial_bus.SerialDaliBus` moves them over pyserial with
timeouts, bounded retries and EnableDeviceType before DT6/DT8 commands;
:mod:`drivers.dali.ops` are the operations the agent and technicians need.
"""

from drivers.dali.codecs import CODECS, FoxtronCodec, HatCodec, Reply
from drivers.dali.group import DaliGroup
from drivers.dali.serial_bus import SerialDaliBus

__all__ = ["CODECS", "DaliGroup", "FoxtronCodec", "HatCodec", "Reply", "SerialDaliBus"]
