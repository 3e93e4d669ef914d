"""``agent lights scan|set|query|commission``: the technician's lighting commands.

A bus is named either by ``--config FILE [--bus NAME]`` (the pole's provisioning file;
the first bus by default) or directly by ``--port PORT [--codec hat|foxtron]`` for DALI
or ``--port PORT --modbus [--unit N]`` for a Modbus dimmer. Every command prints a
readable report, or one JSON document with ``--json``. Bus faults exit 3 with the typed
error's message; bad arguments exit 2; a bad config exits 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from drivers.bus import BusError

EXIT_INVALID, EXIT_USAGE, EXIT_BUS = 1, 2, 3


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``agent lights`` and its subcommands."""
    lp = sub.add_parser("lights", help="scan, set, query or commission luminaires")
    lsub = lp.add_subparsers(dest="lights_command", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--config", metavar="FILE", help="provisioning file with a lighting section")
        src.add_argument("--port", metavar="PORT", help="serial port, e.g. /dev/ttyS0")
        p.add_argument("--bus", metavar="NAME", help="bus name in the config (default: first)")
        p.add_argument("--codec", choices=["hat", "foxtron"], default="hat",
                       help="DALI gateway protocol with --port (hat)")
        p.add_argument("--modbus", action="store_true", help="--port is a Modbus RTU dimmer")
        p.add_argument("--unit", type=int, default=1, help="Modbus unit id with --port (1)")
        p.add_argument("--json", action="store_true", help="one JSON document on stdout")
        p.set_defaults(func=run)

    p = lsub.add_parser("scan", help="list the DALI short addresses that answer")
    common(p)
    p = lsub.add_parser("set", help="set a level: DALI ADDRESS (short:N, group:N, broadcast)")
    common(p)
    p.add_argument("level", type=float, metavar="PERCENT", help="light output 0-100 %%")
    p.add_argument("--address", default="broadcast", help="DALI address (broadcast)")
    p.add_argument("--arc", action="store_true", help="PERCENT is a raw DALI arc level 0-254")
    p = lsub.add_parser("query", help="level, status, lamp failure and D4i readings")
    common(p)
    p.add_argument("--address", type=int, metavar="N", help="one DALI short address (all)")
    p.add_argument("--no-d4i", action="store_true", help="skip memory-bank reads (faster)")
    p = lsub.add_parser("commission", help="give every DALI gear a unique short address")
    common(p)
    p.add_argument("--readdress", action="store_true",
                   help="clear all short addresses first (re-number the whole bus)")


def _open(a: argparse.Namespace) -> tuple[str, Any]:
    if a.port:
        if a.modbus:
            from drivers.modbus import ModbusLightingController, RegisterMap

            return "modbus", ModbusLightingController(a.port, RegisterMap(unit=a.unit))
        from drivers.dali import SerialDaliBus

        return "dali", SerialDaliBus(a.port, a.codec)
    from agent.settings.schema import load_config

    cfg = load_config(Path(a.config))
    if cfg.lighting is None:
        raise ValueError(f"{a.config} has no lighting section")
    buses = {b.name: b for b in cfg.lighting.buses}
    name = a.bus or cfg.lighting.buses[0].name
    if name not in buses:
        raise ValueError(f"no bus {name!r} in {a.config}; buses: {', '.join(buses)}")
    b = buses[name]
    if b.kind == "modbus":
        from drivers.modbus import ModbusLightingController, RegisterMap

        return "modbus", ModbusLightingController(
            b.port, RegisterMap(unit=b.unit, **b.registers.model_dump()), b.baudrate,
            b.timeout_s, b.retries)
    from drivers.dali import SerialDaliBus

    return "dali", SerialDaliBus(b.port, b.codec, b.timeout_s, b.retries)


def run(a: argparse.Namespace) -> int:
    """Execute an ``agent lights`` action."""
    from agent.settings.yamlfile import ConfigError
    from drivers.dali import ops

    try:
        kind, bus = _open(a)
    except ConfigError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return EXIT_INVALID
    except ValueError as e:
        print(f"agent: error: {e}", file=sys.stderr)
        return EXIT_INVALID
    except BusError as e:
        print(f"agent: bus error: {e}", file=sys.stderr)
        return EXIT_BUS
    out: dict[str, Any] = {"bus": kind, "action": a.lights_command}
    try:
        if kind == "modbus":
            if a.lights_command == "set":
                bus.set_level(a.level)
            elif a.lights_command in ("scan", "commission"):
                print("agent: error: scan/commission are DALI actions", file=sys.stderr)
                return EXIT_USAGE
            out["controller"] = asdict(bus.read())
        elif a.lights_command == "scan":
            out["addresses"] = ops.scan(bus)
        elif a.lights_command == "set":
            try:
                addr = ops.parse_address(a.address)
            except ValueError as e:
                print(f"agent: error: {e}", file=sys.stderr)
                return EXIT_USAGE
            arc = int(a.level) if a.arc else ops.percent_to_arc(a.level)
            if not 0 <= arc <= 254 or (not a.arc and not 0 <= a.level <= 100):
                print("agent: error: level must be 0-100 % (or 0-254 with --arc)",
                      file=sys.stderr)
                return EXIT_USAGE
            ops.set_level(bus, addr, arc)
            out.update({"address": a.address, "arc_level": arc,
                        "percent": round(ops.arc_to_percent(arc), 2)})
        elif a.lights_command == "query":
            addrs = [a.address] if a.address is not None else ops.scan(bus)
            gear = []
            for n in addrs:
                st = ops.query_gear(bus, n)
                entry: dict[str, Any] = {"address": n, "present": st is not None}
                if st is not None:
                    entry.update(asdict(st))
                    if st.level is not None:
                        entry["percent"] = round(ops.arc_to_percent(st.level), 2)
                    if not a.no_d4i:
                        entry["d4i"] = asdict(ops.read_d4i(bus, n))
                gear.append(entry)
            out["gear"] = gear
        elif a.lights_command == "commission":
            def progress(p: object) -> None:
                if not a.json:
                    print(f"  {p}", file=sys.stderr, flush=True)

            out["addresses"] = ops.commission(bus, readdress=a.readdress, on_progress=progress)
    except BusError as e:
        print(f"agent: bus error: {e}", file=sys.stderr)
        return EXIT_BUS
    finally:
        bus.close()
    if a.json:
        print(json.dumps(out, indent=1, default=str))
    else:
        print(_human(out))
    return 0


def _human(out: dict[str, Any]) -> str:
    act = out["action"]
    if "controller" in out:
        c = out["controller"]
        return (f"modbus dimmer: level {c['level_percent']:.1f} %, "
                f"{'on' if c['on'] else 'off' if c['on'] is not None else '-'}, "
                f"power {c['power_w']} W, energy {c['energy_wh']} Wh")
    if act in ("scan", "commission"):
        n = len(out["addresses"])
        return f"{n} gear answer{'s' if n == 1 else ''}: short address(es) " \
               f"{', '.join(map(str, out['addresses'])) or 'none'}"
    if act == "set":
        return f"set {out['address']} to arc level {out['arc_level']} ({out['percent']} %)"
    lines = []
    for g in out["gear"]:
        if not g["present"]:
            lines.append(f"short:{g['address']}: no answer")
            continue
        flags = [f for f in ("lamp_failure", "gear_failure", "missing_short_address") if g[f]]
        line = (f"short:{g['address']}: level {g['level']} ({g.get('percent', '-')} %), "
                f"lamp {'on' if g['lamp_on'] else 'off'}"
                + (f", FAULT: {', '.join(flags)}" if flags else ""))
        d = g.get("d4i")
        if d:
            line += (f"; energy {d['active_energy_wh']} Wh, power {d['active_power_w']} W, "
                     f"gear {d['gear_temperature_c']} °C, on-time {d['light_source_on_time_s']} s")
        lines.append(line)
    return "\n".join(lines) or "no gear"
