"""The one place that turns bus and group settings into drivers: used by ``agent run``'s
lighting service and by the technician's ``agent lights`` commands alike."""

from __future__ import annotations

from typing import Any

from agent.settings.schema import DaliBusConfig, LightingBusConfig, LuminaireGroupConfig
from drivers.bus import LuminaireGroup


def open_bus(cfg: LightingBusConfig) -> Any:
    """Open the port of a bus (exclusively): a ``SerialDaliBus`` or a Modbus controller.
    Raises :class:`drivers.bus.BusError` (``BusInUse`` when another process has it)."""
    if isinstance(cfg, DaliBusConfig):
        from drivers.dali import SerialDaliBus

        return SerialDaliBus(cfg.port, cfg.codec, cfg.timeout_s, cfg.retries, parity=cfg.parity)
    from drivers.modbus import ModbusLightingController, RegisterMap

    return ModbusLightingController(cfg.port, RegisterMap(unit=cfg.unit,
                                                          **cfg.registers.model_dump()),
                                    cfg.baudrate, cfg.timeout_s, cfg.retries)


def make_group(cfg: LuminaireGroupConfig, bus_cfg: LightingBusConfig, bus: Any) -> LuminaireGroup:
    """The :class:`drivers.bus.LuminaireGroup` for a group on an open bus."""
    if isinstance(bus_cfg, DaliBusConfig):
        from drivers.dali import DaliGroup

        return DaliGroup(cfg.name, bus, cfg.address)
    from drivers.modbus import ModbusGroup

    return ModbusGroup(cfg.name, bus)
