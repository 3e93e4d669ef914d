"""``agent lights scan|set|query|commission|schedule``: the technician's lighting commands.

A bus is named either by ``--config FILE [--bus NAME]`` (the pole's provisioning file;
the first bus by default) or directly by ``--port PORT [--codec hat|foxtron]`` for DALI
or ``--port PORT --modbus [--unit N]`` for a Modbus dimmer; either way the bus is opened
by the same factory as ``agent run``'s (``agent.lighting.buses``), exclusively: while the
agent runs, a command on its bus is refused with "in use by the running agent" rather
than mixing frames with the agent's. Every command prints a readable report, or one JSON
document with ``--json``. Bus faults exit 3 with the typed error's message; bad arguments
exit 2; a bad config exits 1.

``commission`` also makes the gear safe without the agent: power-on and system failure
level = the safe level (``--safe-pct``, or the largest ``safe_pct`` of the config's groups
on that bus), fade time ``--fade-s``. ``schedule --config FILE [--date D]`` prints the
night's steps at the pole's place, read-only.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from drivers.bus import BusError, BusInUse

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
    p = lsub.add_parser("commission", help="give every DALI gear a unique short address and "
                        "its fail-safe levels")
    common(p)
    p.add_argument("--readdress", action="store_true",
                   help="clear all short addresses first (re-number the whole bus)")
    p.add_argument("--safe-pct", type=float, metavar="PERCENT",
                   help="power-on / system failure level (default: the config's safe_pct, "
                        "else 100)")
    p.add_argument("--fade-s", type=float, default=2.0, help="fade time in seconds (2.0)")
    p = lsub.add_parser("schedule", help="print a night's lighting steps for each group")
    p.add_argument("--config", required=True, metavar="FILE")
    p.add_argument("--date", metavar="YYYY-MM-DD", help="the evening to show (default: today)")
    p.add_argument("--json", action="store_true", help="one JSON document on stdout")
    p.set_defaults(func=run_schedule)


def _open(a: argparse.Namespace) -> tuple[str, Any, float | None]:
    """``(kind, open bus, safe level from the config)`` through the shared factory."""
    from agent.lighting.buses import open_bus
    from agent.settings.schema import DaliBusConfig, ModbusBusConfig, load_config

    if a.port:
        if a.modbus:
            return "modbus", open_bus(ModbusBusConfig(name="cli", kind="modbus", port=a.port,
                                                      unit=a.unit)), None
        return "dali", open_bus(DaliBusConfig(name="cli", kind="dali", port=a.port,
                                              codec=a.codec)), None
    cfg = load_config(Path(a.config))
    if cfg.lighting is None:
        raise ValueError(f"{a.config} has no lighting section")
    buses = {b.name: b for b in cfg.lighting.buses}
    name = a.bus or cfg.lighting.buses[0].name
    if name not in buses:
        raise ValueError(f"no bus {name!r} in {a.config}; buses: {', '.join(buses)}")
    safe = max((g.safe_pct for g in cfg.lighting.groups if g.bus == name), default=None)
    return buses[name].kind, open_bus(buses[name]), safe


def run(a: argparse.Namespace) -> int:
    """Execute an ``agent lights`` action."""
    from pydantic import ValidationError

    from agent.settings.yamlfile import ConfigError
    from drivers.dali import ops

    problem = _check_arguments(a)
    if problem:
        print(f"agent: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        kind, bus, config_safe = _open(a)
    except ConfigError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return EXIT_INVALID
    except ValidationError as e:       # --unit and the like, through the bus settings
        err = e.errors(include_url=False)[0]
        print(f"agent: error: --{err['loc'][-1]}: {err['msg']}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as e:
        print(f"agent: error: {e}", file=sys.stderr)
        return EXIT_INVALID
    except BusInUse as e:
        print(f"agent: bus in use: {e}", file=sys.stderr)
        return EXIT_BUS
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
            addr = ops.parse_address(a.address)
            arc = int(a.level) if a.arc else ops.percent_to_arc(a.level)
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
            safe = a.safe_pct if a.safe_pct is not None else config_safe or 100.0
            out["failsafe"] = {"safe_pct": safe, "fade_s": ops.fade_seconds(
                ops.fade_code(a.fade_s)), "changes": [
                c for s_ in out["addresses"] for c in ops.ensure_failsafe(
                    bus, s_, ops.percent_to_arc(safe), ops.fade_code(a.fade_s))]}
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


def _check_arguments(a: argparse.Namespace) -> str:
    """What is wrong with the arguments, before any bus is touched ('' when nothing)."""
    import math

    from drivers.dali import ops

    if a.lights_command == "set":
        if getattr(a, "modbus", False) and a.arc:
            return "--arc is for DALI arc levels, not a Modbus dimmer"
        if not math.isfinite(a.level):
            return f"level must be a number, got {a.level}"
        if a.arc and not (float(a.level).is_integer() and 0 <= a.level <= 254):
            return f"--arc takes a whole arc level 0-254, got {a.level:g}"
        if not a.arc and not 0 <= a.level <= 100:
            return f"level must be 0-100 % (or 0-254 with --arc), got {a.level:g}"
        try:
            ops.parse_address(a.address)
        except ValueError as e:
            return str(e)
    if a.lights_command == "query" and a.address is not None and not 0 <= a.address <= 63:
        return f"--address takes a short address 0-63, got {a.address}"
    if a.lights_command == "commission":
        if a.safe_pct is not None and not (math.isfinite(a.safe_pct) and 0 < a.safe_pct <= 100):
            return f"--safe-pct must be 1-100, got {a.safe_pct}"
        if not (math.isfinite(a.fade_s) and 0 <= a.fade_s <= 90):
            return f"--fade-s must be 0-90 seconds, got {a.fade_s}"
    return ""


def _human(out: dict[str, Any]) -> str:
    act = out["action"]
    if "controller" in out:
        c = out["controller"]
        return (f"modbus dimmer: level {c['level_percent']:.1f} %, "
                f"{'on' if c['on'] else 'off' if c['on'] is not None else '-'}, "
                f"power {c['power_w']} W, energy {c['energy_wh']} Wh")
    if act in ("scan", "commission"):
        n = len(out["addresses"])
        text = f"{n} gear answer{'s' if n == 1 else ''}: short address(es) " \
               f"{', '.join(map(str, out['addresses'])) or 'none'}"
        if "failsafe" in out:
            f = out["failsafe"]
            text += (f"\nfail-safe: power-on and system failure level {f['safe_pct']:g} %, "
                     f"fade {f['fade_s']:g} s: " + ("; ".join(f["changes"]) or "all set already"))
        return text
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


def run_schedule(a: argparse.Namespace) -> int:
    """``agent lights schedule``: the night's steps for each group, at the pole's place."""
    from datetime import date, datetime
    from zoneinfo import ZoneInfo

    from agent.settings.schema import load_config
    from agent.settings.yamlfile import ConfigError

    try:
        cfg = load_config(Path(a.config))
    except ConfigError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        return EXIT_INVALID
    if cfg.lighting is None:
        print(f"agent: error: {a.config} has no lighting section", file=sys.stderr)
        return EXIT_INVALID
    tz = ZoneInfo(cfg.lighting.timezone or "UTC")
    try:
        day = date.fromisoformat(a.date) if a.date else datetime.now(tz).date()
        if not 1971 <= day.year <= 2199:
            raise ValueError
    except ValueError:
        print(f"agent: error: --date must be YYYY-MM-DD between 1971 and 2199, got {a.date!r}",
              file=sys.stderr)
        return EXIT_USAGE
    from agent.lighting.tonight import NO_STEP, night_profile

    profile = night_profile(cfg.lighting, day, bool(cfg.cameras))
    out = profile.to_json()
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"night of {day} ({tz}), noon to noon:")
    for name, steps in out["groups"].items():
        print(f"  group {name}:")
        for s_ in steps:
            print(f"    {s_['time']}  {s_['step']}  [{s_['program']}]")
        if not steps:
            print(f"    {NO_STEP}")
    return 0
