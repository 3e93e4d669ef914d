"""Everything the agent does each interval besides counting: light, report, obey.

:class:`CityLink` is driven by :class:`agent.runner.Agent` once per closed interval:

1. traffic records → traffic messages (TALQ TrafficCounter) into the outbox;
2. each luminaire group: its cameras' counts → :class:`TrafficFlow` → its
   :class:`GroupController` (decide, apply, read back) → lighting message;
3. events on state changes (fail-safe entered/left, lamp failure/restored, camera
   lost/restored, bus fault, outbox overflow);
4. a health message.

Messages go through the SQLite :class:`Outbox`; the :class:`Uplink` publishes them when it
can. Commands from the platform are dispatched here; overrides carry an expiry.
Works without MQTT (lighting only) and without lighting (reporting only).
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent import __version__
from agent.lighting.controller import GroupController, GroupTarget
from agent.lighting.dimming import DimmingPolicy, GroupSettings, TrafficFlow
from agent.lighting.envelope import DEFAULT_FLOOR_PCT, EnvelopeSettings
from agent.settings.schema import AgentConfig, LightingConfig, MqttConfig
from agent.uplink.commands import CommandDispatcher, CommandError
from agent.uplink.contract import event_message, lighting_message, response_message, traffic_message
from agent.uplink.mqtt import Uplink, UplinkSettings, credentials, now_iso
from agent.uplink.outbox import Outbox
from agent.vision.aggregates import iso

log = logging.getLogger(__name__)


def open_groups(lighting: LightingConfig) -> tuple[dict[str, GroupController], list[Any]]:
    """Open every bus and build one controller per group (raises on a bus that won't open)."""
    from drivers.dali import SerialDaliBus
    from drivers.modbus import ModbusLightingController, RegisterMap

    buses: dict[str, tuple[str, Any]] = {}
    for b in lighting.buses:
        if b.kind == "dali":
            buses[b.name] = ("dali", SerialDaliBus(b.port, b.codec, b.timeout_s, b.retries))
        else:
            buses[b.name] = ("modbus", ModbusLightingController(
                b.port, RegisterMap(unit=b.unit, **b.registers.model_dump()), b.baudrate,
                b.timeout_s, b.retries))
    groups = {}
    for g in lighting.groups:
        cls = int(g.design_class[1])
        env = EnvelopeSettings(floor_pct=g.floor_pct or DEFAULT_FLOOR_PCT[cls],
                               ceiling_pct=g.ceiling_pct, safe_pct=g.safe_pct,
                               ramp_down_pct_per_min=g.ramp_down_pct_per_min,
                               ramp_up_pct_per_min=g.ramp_up_pct_per_min)
        policy = DimmingPolicy(lighting.model, lighting.latitude, lighting.longitude,
                               GroupSettings(cls, g.design_peak_vph, env),
                               lighting.camera_stale_s)
        kind, bus = buses[g.bus]
        target = GroupTarget(kind, bus, g.address,
                             dali_members(bus, g.address) if kind == "dali" else ())
        groups[g.name] = GroupController(g.name, policy, target, g.rated_power_w, g.luminaires)
    return groups, [b for _, b in buses.values()]


def dali_members(bus: Any, address: str) -> tuple[int, ...]:
    """The short addresses a DALI address reaches (for read-back): scanned once at start."""
    from dali.address import GearShort
    from dali.sequences import QueryGroups

    from drivers.dali import ops

    a = ops.parse_address(address)
    if isinstance(a, GearShort):
        return (a.address,)
    found = ops.scan(bus)
    if address.strip().lower().startswith(("group", "g:")):
        n = a.group  # type: ignore[union-attr]
        return tuple(s for s in found if n in bus.run_sequence(QueryGroups(GearShort(s))))
    return tuple(found)


class CityLink:
    """See the module docstring."""

    def __init__(self, cfg: AgentConfig, reload_config: Callable[[], str] | None = None,
                 snapshot: Callable[[str | None], dict] | None = None) -> None:
        self.cfg = cfg
        self.device, self.site = cfg.device.id, cfg.device.site
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.groups: dict[str, GroupController] = {}
        self._buses: list[Any] = []
        if cfg.lighting:
            self.groups, self._buses = open_groups(cfg.lighting)
        self.flows: dict[str, TrafficFlow] = {}          # camera → last good flow
        self.overrides: dict[str, tuple[float, float]] = {}  # group → (pct, until_monotonic)
        self._modes: dict[str, str] = {}
        self._failures: dict[str, set[int]] = {}
        self._cam_live: dict[str, bool] = {}
        self._last_interval_end: dict[str, str] = {}
        self._dropped_reported = 0
        self.outbox: Outbox | None = None
        self.uplink: Uplink | None = None
        self.published: list[tuple[str, dict]] = []   # everything handed to the outbox (tests)
        self.dispatcher = CommandDispatcher({
            "ping": lambda a: {"pong": now_iso(), "version": __version__},
            "set_override": self._set_override, "clear_override": self._clear_override,
            "rebirth": self._rebirth,
            "reload_config": lambda a: {"result": reload_config()} if reload_config
            else self._refuse("reload is not available"),
            "request_snapshot": lambda a: snapshot(a.get("camera")) if snapshot
            else self._refuse("snapshots are not available")})
        if cfg.mqtt:
            self._start_uplink(cfg.mqtt)

    # -- uplink -------------------------------------------------------------------------
    def _start_uplink(self, m: MqttConfig) -> None:
        from agent.uplink.mqtt import TlsSettings

        user, pw = credentials(m.secrets_file)
        self.outbox = Outbox(m.outbox_path, self.device, m.outbox_max_messages)
        tls = TlsSettings(m.tls.ca, m.tls.cert, m.tls.key) if m.tls else None
        self.uplink = Uplink(UplinkSettings(m.host, m.port, m.prefix, m.protocol, m.keepalive_s,
                                            m.reconnect_min_s, m.reconnect_max_s,
                                            username=user, password=pw, tls=tls),
                             self.device, self.site, self.outbox, self._on_command).start()

    def publish(self, kind: str, name: str | None, body: dict[str, Any]) -> None:
        """Queue a message for ``<prefix>/<site>/<device>/<kind>[/<name>]``."""
        self.published.append((kind, body))
        del self.published[:-1000]
        if self.outbox is not None and self.uplink is not None:
            self.outbox.put(self.uplink.topic(kind, name), body)

    def _on_command(self, topic: str, payload: bytes) -> None:
        if self.uplink is None or topic != self.uplink.topic("cmd"):
            return  # only our own command topic
        cid, cmd, error, data = self.dispatcher.handle(payload)
        if error:
            log.warning("command rejected: %s", error)
            self.publish("event", None, event_message("command_rejected", "warning", "cmd",
                                                      self.device, self.site, now_iso(),
                                                      error=error[:500]))
        self.publish("cmd/response", None, response_message(self.device, self.site, now_iso(),
                                                            cid, cmd, error, data))

    @staticmethod
    def _refuse(msg: str) -> dict:
        raise CommandError(msg)

    def _target_groups(self, args: dict[str, Any]) -> list[str]:
        name = args.get("group", "*")
        if name == "*":
            if not self.groups:
                raise CommandError("this pole has no luminaire groups")
            return list(self.groups)
        if name not in self.groups:
            raise CommandError(f"no luminaire group {name!r}; groups: "
                               f"{', '.join(self.groups) or 'none'}")
        return [name]

    def _set_override(self, args: dict[str, Any]) -> dict:
        names = self._target_groups(args)            # check everything first …
        until = time.monotonic() + int(args["expires_in_s"])
        with self.lock:                               # … then change
            for n in names:
                self.overrides[n] = (float(args["level_pct"]), until)
        self.apply_lighting()
        return {"groups": names, "level_pct": args["level_pct"],
                "expires_in_s": args["expires_in_s"]}

    def _clear_override(self, args: dict[str, Any]) -> dict:
        names = self._target_groups(args)
        with self.lock:
            for n in names:
                self.overrides.pop(n, None)
        self.apply_lighting()
        return {"groups": names}

    def _rebirth(self, _args: dict[str, Any]) -> dict:
        if self.uplink is not None:
            self.uplink.rebirth()
        return {"bdSeq": self.uplink.boot if self.uplink else None}

    # -- each interval ------------------------------------------------------------------
    def on_interval(self, records: list[dict], cameras: dict[str, Any]) -> None:
        """Handle one batch of closed interval records (see the module docstring)."""
        ts = now_iso()
        mono = time.monotonic()
        per_camera: dict[str, dict[str, Any]] = {}
        for r in records:
            self.publish("traffic", r["camera"], traffic_message(r, self.device, self.site, ts))
            c = per_camera.setdefault(r["camera"], {"counts": {}, "busiest": -1,
                                                    "seconds": r["interval_s"],
                                                    "frames": r["frames_analysed"]})
            if "line" in r and r["total"] > c["busiest"]:  # the busiest line stands for the road
                c["busiest"] = r["total"]
                c["counts"] = {}
                for per in r["counts"].values():
                    for cls, n in per.items():
                        c["counts"][cls] = c["counts"].get(cls, 0) + n
        for cam, c in per_camera.items():
            if c["frames"] > 0:  # an interval without frames says nothing about traffic
                self.flows[cam] = TrafficFlow.from_counts(c["counts"], c["seconds"], mono)
        for name, state in cameras.items():
            live = state == "live"
            if self._cam_live.get(name, True) != live:
                self.publish("event", None, event_message(
                    "camera_restored" if live else "camera_lost", "info" if live else "alarm",
                    name, self.device, self.site, ts, state=state))
            self._cam_live[name] = live
        self.apply_lighting()
        self.publish_health(cameras)

    def apply_lighting(self) -> None:
        """Tick every group now (interval, or after an override change)."""
        if not self.groups:
            return
        with self.lock:
            for name, ctl in self.groups.items():
                self._tick_group(name, ctl)

    def _group_flow(self, name: str) -> TrafficFlow | None:
        cams = []
        if self.cfg.lighting:
            g = next(x for x in self.cfg.lighting.groups if x.name == name)
            cams = g.cameras or [c.name for c in self.cfg.cameras]
        flows = [self.flows[c] for c in cams if c in self.flows]
        if not flows:
            return None
        vph = sum(f.vehicles_per_hour for f in flows)
        w = vph or 1.0
        return TrafficFlow(vph, sum(f.heavy_share * f.vehicles_per_hour for f in flows) / w,
                           sum(f.motorbike_share * f.vehicles_per_hour for f in flows) / w,
                           min(f.updated_monotonic for f in flows))

    def _tick_group(self, name: str, ctl: GroupController) -> None:
        ov = self.overrides.get(name)
        if ov and time.monotonic() >= ov[1]:
            self.overrides.pop(name)
            ov = None
        ts = now_iso()
        rec = ctl.tick(self._group_flow(name), override_pct=ov[0] if ov else None,
                       override_until_monotonic=ov[1] if ov else None)
        safe = ctl.policy.envelope.s.safe_pct
        start = self._last_interval_end.get(name, rec["time"])
        self._last_interval_end[name] = rec["time"]
        self.publish("lighting", name, lighting_message(rec, self.device, self.site, ts, start,
                                                        safe))
        prev = self._modes.get(name)
        if rec["mode"] == "failsafe" and prev != "failsafe":
            self.publish("event", None, event_message("failsafe_entered", "alarm", name,
                                                      self.device, self.site, ts,
                                                      reasons=rec["reasons"]))
        elif prev == "failsafe" and rec["mode"] != "failsafe":
            self.publish("event", None, event_message("failsafe_left", "info", name,
                                                      self.device, self.site, ts))
        self._modes[name] = rec["mode"]
        if rec["bus_error"]:
            self.publish("event", None, event_message("bus_fault", "alarm", name, self.device,
                                                      self.site, ts, error=rec["bus_error"]))
        failed = {f["address"] for f in rec.get("lamp_failures", []) if "address" in f}
        before = self._failures.get(name, set())
        for a in sorted(failed - before):
            self.publish("event", None, event_message("lamp_failure", "alarm", f"{name}/{a}",
                                                      self.device, self.site, ts))
        for a in sorted(before - failed):
            self.publish("event", None, event_message("lamp_restored", "info", f"{name}/{a}",
                                                      self.device, self.site, ts))
        if not rec["bus_error"]:
            self._failures[name] = failed

    def publish_health(self, cameras: dict[str, Any]) -> None:
        """Queue a health message (and an overflow event when the outbox dropped data)."""
        ts = now_iso()
        dropped = self.outbox.dropped if self.outbox else 0
        if dropped > self._dropped_reported:
            self.publish("event", None, event_message(
                "outbox_overflow", "alarm", "outbox", self.device, self.site, ts,
                dropped_total=dropped, dropped_new=dropped - self._dropped_reported))
            self._dropped_reported = dropped
        self.publish("health", None, {
            "schema": "polelink/health/1", "device": self.device, "site": self.site, "ts": ts,
            **system_health(), "uptimeS": round(time.monotonic() - self.started, 1),
            "outbox": {"queued": len(self.outbox) if self.outbox else 0, "dropped": dropped},
            "cameras": cameras})

    def close(self) -> None:
        """Stop the uplink (publishing 'offline') and release the buses."""
        if self.uplink:
            self.uplink.stop()
        for b in self._buses:
            with contextlib.suppress(Exception):
                b.close()


def system_health() -> dict[str, Any]:
    """CPU, memory, temperature, disk and versions, from /proc and /sys (Linux)."""
    try:
        load = os.getloadavg()[0] / (os.cpu_count() or 1) * 100
    except OSError:
        load = 0.0
    mem = 0.0
    try:
        info = dict(ln.split(":", 1) for ln in open("/proc/meminfo").read().splitlines()  # noqa: SIM115
                    if ":" in ln)
        total = float(info["MemTotal"].split()[0])
        avail = float(info["MemAvailable"].split()[0])
        mem = 100 * (1 - avail / total)
    except (OSError, KeyError, ValueError):
        pass
    temp = None
    zone = Path("/sys/class/thermal/thermal_zone0/temp")
    with contextlib.suppress(OSError, ValueError):
        temp = int(zone.read_text()) / 1000
    du = shutil.disk_usage("/")
    import cv2
    import onnxruntime

    return {"cpuPercent": round(load, 1), "memoryPercent": round(mem, 1), "temperatureC": temp,
            "diskFreePercent": round(100 * du.free / du.total, 1),
            "versions": {"agent": __version__, "python": sys.version.split()[0],
                         "onnxruntime": onnxruntime.__version__, "opencv": cv2.__version__,
                         "platform": platform.machine()}}


__all__ = ["CityLink", "iso"]
