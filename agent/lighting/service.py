"""The lighting service: the pole's luminaires on their own clock.

One thread owns every lighting bus and luminaire group and ticks every ``tick_s`` on
the wall clock, whatever the cameras do. Each tick:

1. checks the clock's trust (``agent.lighting.clocktrust``);
2. (re)opens buses that are down, with exponential back-off (1 s doubling to 60 s);
   after each open it finds each group's luminaires and makes the gear safe without us
   (power-on and system failure level = the safe level, fade time), then re-applies the
   current levels;
3. decides each group's level (``agent.lighting.policy``: schedule → adaptive traffic →
   override → envelope) and sends it when it changed or every ``refresh_s``;
4. reads status every ``status_period_s`` (levels, lamp failures, unreachable
   luminaires), energy counters every ``energy_period_s``, diagnostics and inventory every
   ``diagnostics_period_s``;
5. emits events on changes only (bus fault/restored, fail-safe entered/left, lamp
   failure/restored, luminaire unreachable/restored, clock untrusted/trusted, gear
   configured) and one lighting record per group at each reporting boundary (aligned to
   the wall clock, like the traffic intervals).

Other threads talk to it only through :meth:`submit` (a queue of work run on its thread,
answered through a :class:`~concurrent.futures.Future`): traffic samples, overrides,
reloads. Camera liveness (each camera's last good frame) it pulls itself each tick from
the ``liveness`` callable the runner gives it. :meth:`stop` (SIGTERM, SIGINT, the end of ``agent run``, a
crash unwinding the main loop) leaves every reachable group at its safe level before the
buses close. A fault inside a tick is logged and the tick sends the safe level instead.
Each pass of the loop stamps :attr:`LightingService.heartbeat` (the service watchdog
restarts the agent when the thread stops ticking) and the first completed tick sets
:attr:`LightingService.ticked` (``agent run`` tells systemd it is ready only then).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent import BUILD_DATE
from agent.clock import Clock, ScaledClock
from agent.lighting.ambient import AmbientFile
from agent.lighting.buses import make_group, open_bus
from agent.lighting.clocktrust import (
    AssumeSynced,
    ClockTrust,
    KernelSync,
    RtcSource,
    SimulatedSync,
    TimeSource,
    TrustState,
)
from agent.lighting.dimming import DimmingModel, DimmingModelError
from agent.lighting.energy import EnergyAccount
from agent.lighting.envelope import Decision, EnvelopeSettings
from agent.lighting.flow import RollingFlow, TrafficSample
from agent.lighting.overrides import Override, OverrideStore
from agent.lighting.policy import GroupPolicy, GroupSettings
from agent.lighting.schedule import (
    DEFAULT_PROGRAM,
    WEEKDAYS,
    Adaptive,
    CalendarRule,
    Schedule,
    Step,
    calendar_date,
    default_program,
)
from agent.records import DiagnosticsRecord, EventRecord, LightingRecord
from agent.service.heartbeat import Heartbeat
from agent.settings.schema import ClockConfig, LightingConfig, LuminaireGroupConfig
from drivers.bus import BusDisconnected, BusError, GroupReading, LuminaireGroup

if TYPE_CHECKING:
    from agent.vision.detect.isolated import ModelHosts

log = logging.getLogger(__name__)

FAILSAFE_MODES = ("failsafe", "fallback")
#: Lamp states that raise an alarm (``lamp_failure``, ``luminaire_unreachable``): told when
#: CONFIRM_READS of the last CONFIRM_WINDOW status reads found one (the newest kind is
#: told); one missed or misread answer (a slow gateway, a collision) is no failure, and a
#: lamp that fails two reads in three is. Told back to normal after CONFIRM_READS good reads
#: running; a steady change from one failure to another (CONFIRM_READS reads running) is
#: told as the new failure alone, without a "restored".
FAILURE_STATES = ("lamp_failure", "gear_failure", "no_answer")
CONFIRM_READS = 3
CONFIRM_WINDOW = 5
BACKOFF_MIN_S, BACKOFF_MAX_S = 1.0, 60.0
#: The longest one pass of the lighting loop may take (a tick's slowest bus work: opening,
#: finding and configuring the gear) before the thread counts as stuck (at least 4 ticks).
LIGHTING_BOUND_S = 90.0

Emit = Callable[[LightingRecord | EventRecord | DiagnosticsRecord], None]


def make_trust(cfg: ClockConfig, clock: Clock) -> ClockTrust:
    """The clock-trust rules with the configured sources (on a simulated clock, the
    simulated clock's own word replaces the kernel's, which knows nothing of it)."""
    sources: list[TimeSource] = []
    for name in cfg.sources:
        if name == "kernel":
            sources.append(SimulatedSync(clock) if isinstance(clock, ScaledClock)
                           else KernelSync(cfg.max_error_s))
        elif name == "assume_synced":
            sources.append(AssumeSynced())
        elif name == "rtc":
            rtc = cfg.rtc
            sources.append(RtcSource(rtc.path, rtc.tolerance_s) if rtc else RtcSource())
        elif name == "gnss" and cfg.gnss is not None:
            from agent.lighting.gnss import GnssTime

            sources.append(GnssTime(cfg.gnss.port, cfg.gnss.baudrate, cfg.gnss.tolerance_s,
                                    clock=clock))
    return ClockTrust(sources, BUILD_DATE, cfg.max_jump_s, cfg.kernel_rejoin_s)


def make_schedule(cfg: LightingConfig, g: LuminaireGroupConfig, traffic: bool = True
                  ) -> Schedule:
    """The group's schedule: the configured programs and calendar (or its pinned program),
    or the built-in dusk-to-dawn program within the group's floor and ceiling (on a pole
    without cameras, ``traffic`` False: its night at the ceiling, nothing adaptive)."""
    if not cfg.programs:
        steps = default_program(g.floor, g.ceiling_pct)
        programs = {DEFAULT_PROGRAM: steps if traffic else
                    [s for s in steps if s.adaptive is None]}
        calendar: list[CalendarRule] = []
    else:
        programs = {name: [Step(s.at, s.offset_min, s.level, None if s.adaptive is None else
                                Adaptive(s.adaptive.min, s.adaptive.max, s.adaptive.fallback))
                           for s in steps] for name, steps in cfg.programs.items()}
        if g.program is not None:
            calendar = [CalendarRule(g.program)]
        else:
            calendar = [CalendarRule(r.program, frozenset(calendar_date(d) for d in r.dates),
                                     frozenset(WEEKDAYS.index(w) for w in r.weekdays),
                                     frozenset(r.months)) for r in cfg.calendar]
    return Schedule(programs, calendar, cfg.latitude, cfg.longitude, cfg.timezone or "UTC")


@dataclass
class BusRuntime:
    """One bus: its port, whether it is up, and when to try again."""

    cfg: Any
    handle: Any = None
    state: str = "down"                 # up | down (port closed) | fault (open, failing)
    error: str = ""
    backoff: float = BACKOFF_MIN_S
    retry_at: float = -math.inf
    slow_told: int = 0                  # the driver's late replies already told (bus_slow)


@dataclass
class GroupRuntime:
    """One luminaire group's state in the service."""

    cfg: LuminaireGroupConfig
    policy: GroupPolicy
    group: LuminaireGroup | None = None
    energy: EnergyAccount = field(default_factory=EnergyAccount)
    decision: Decision | None = None
    commanded: float | None = None
    commanded_at: float = -math.inf
    status: GroupReading | None = None
    power_w: float | None = None
    energy_wh: float | None = None
    lamp_states: dict[str, str] = field(default_factory=dict)   # as last told (events)
    #: each luminaire's recent status reads (the newest CONFIRM_WINDOW)
    history: dict[str, deque[str]] = field(default_factory=dict)
    members: tuple[str, ...] = ()
    discovered_at: float = -math.inf
    mode: str | None = None
    due: dict[str, float] = field(default_factory=dict)
    report_start: float | None = None
    saved_at_report: float = 0.0        # the sum of the energy saved reported so far


class LightingService:
    """See the module docstring."""

    def __init__(self, cfg: LightingConfig, clock_cfg: ClockConfig, clock: Clock, emit: Emit,
                 cameras: list[str], report_interval_s: int = 60,
                 liveness: Callable[[], dict[str, float | None]] | None = None,
                 models: ModelHosts | None = None,
                 quality: Callable[[], dict[str, tuple[str, ...]]] | None = None) -> None:
        self.clock = clock
        #: the agent's model processes (the dimming model runs in them); None: its own
        self.models = models
        self.all_cameras = list(cameras)
        self.liveness = liveness
        #: each camera's count-quality verdict (why its counts are poor; empty: good),
        #: pulled each tick like liveness: poor counts never drive adaptive dimming
        self.quality = quality
        self.emit = emit
        self.report_s = report_interval_s
        self.trust = make_trust(clock_cfg, clock)
        self.trust_state = TrustState(False, ["not checked yet"])
        self._trusted: bool | None = None
        self._inbox: queue.Queue[tuple[Callable[[], Any], Future]] = queue.Queue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_report: float | None = None
        #: set once the first tick has run: every group's lamps commanded (or found
        #: unreachable) at least once
        self.ticked = threading.Event()
        #: stamped on every pass of the lighting loop, for the service watchdog
        self.heartbeat = Heartbeat("lighting", max(LIGHTING_BOUND_S, 4 * cfg.tick_s))
        self.flow = RollingFlow()
        self.flow.external_liveness = liveness is not None
        self._apply_config(cfg, self._build(cfg, {}))

    # -- building -----------------------------------------------------------------------
    def has_model(self) -> bool:
        """True when a dimming model is in use (a reload must not trade it for none)."""
        return any(g.policy.model is not None for g in list(self.groups.values()))

    def load_model(self, cfg: LightingConfig) -> tuple[DimmingModel | None, str]:
        """``cfg``'s dimming model, or None and why not. It may start or wait for a model
        process: call it off the lighting thread (a reload does, before it hands over)."""
        try:
            return DimmingModel(cfg.model, self.models), ""
        except DimmingModelError as e:
            log.error("dimming model unusable, adaptive steps stay at the safe level: %s", e)
            return None, str(e)

    def _build(self, cfg: LightingConfig, keep: dict[str, BusRuntime],
               cameras: list[str] | None = None,
               loaded: tuple[DimmingModel | None, str] | None = None
               ) -> tuple[dict[str, BusRuntime], dict[str, GroupRuntime]]:
        """New runtimes for ``cfg`` (buses whose settings are unchanged are kept, open), for
        a pole with ``cameras`` (default: the current ones), with the dimming model
        ``loaded`` (default: loaded here)."""
        traffic = bool(self.all_cameras if cameras is None else cameras)
        model, model_error = loaded if loaded is not None else self.load_model(cfg)
        buses = {b.name: keep[b.name] if b.name in keep and keep[b.name].cfg == b
                 else BusRuntime(b) for b in cfg.buses}
        groups = {}
        for g in cfg.groups:
            env = EnvelopeSettings(g.floor, g.ceiling_pct, g.safe_pct, g.ramp_down_pct_per_min,
                                   g.ramp_up_pct_per_min)
            settings = GroupSettings(g.name, g.class_number, g.design_peak_vph,
                                     tuple(g.cameras), env)
            policy = GroupPolicy(settings, make_schedule(cfg, g, traffic),
                                 cfg.latitude, cfg.longitude,
                                 model, model_error)
            groups[g.name] = GroupRuntime(g, policy)
        return buses, groups

    def _apply_config(self, cfg: LightingConfig,
                      built: tuple[dict[str, BusRuntime], dict[str, GroupRuntime]]) -> None:
        self.cfg = cfg
        self.buses, self.groups = built
        self.flow.configure(cfg.traffic_window_s, cfg.traffic_min_coverage_s,
                            cfg.camera_stale_s)                # (its samples are kept)
        self.overrides = OverrideStore(cfg.overrides_path)
        self.ambient = AmbientFile(cfg.ambient.path, cfg.ambient.dark_below_lux,
                                   cfg.ambient.max_age_s) if cfg.ambient else None

    # -- the thread -----------------------------------------------------------------------
    def start(self) -> LightingService:
        """Start the lighting thread."""
        self.heartbeat.arm()
        self._thread = threading.Thread(target=self._run, name="lighting", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop ticking, leave every reachable group at its safe level, close the buses."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("lighting thread did not stop within %.0f s", timeout)
        else:
            self.shutdown()

    def _run(self) -> None:
        if self.overrides.problem:
            self._event("overrides_reset", "warning", "overrides", problem=self.overrides.problem)
        while not self._stop.is_set():
            self.heartbeat.beat()
            self._drain()
            self.tick()
            self.ticked.set()
            self.clock.wait(self._wake, self.cfg.tick_s)
            self._wake.clear()
        self.heartbeat.retire()
        self._drain()
        self.shutdown()

    def submit(self, work: Callable[[], Any]) -> Future:
        """Run ``work`` on the lighting thread (soon: it wakes the thread); its result or
        exception arrives in the returned future."""
        fut: Future = Future()
        self._inbox.put((work, fut))
        self._wake.set()
        return fut

    def _drain(self) -> None:
        while True:
            try:
                work, fut = self._inbox.get_nowait()
            except queue.Empty:
                return
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(work())
            except Exception as e:
                fut.set_exception(e)

    # -- inputs (call through submit, or directly on the lighting thread) -------------------
    def add_traffic(self, samples: list[TrafficSample]) -> None:
        """Closed traffic intervals."""
        for s in samples:
            self.flow.add(s)

    def camera_seen(self, camera: str, mono: float) -> None:
        """A camera delivered a good frame at ``mono``."""
        self.flow.seen(camera, mono)

    def set_override(self, groups: list[str], o: Override) -> dict[str, Any]:
        """Store an override (durably) and apply it at once (through the ramp)."""
        self.overrides.set(groups, o)
        self.tick(force=True)
        return {g: self.groups[g].decision.level_pct if self.groups[g].decision else None
                for g in groups}

    def clear_override(self, groups: list[str], priority: int | None = None) -> int:
        """Remove overrides; the schedule applies again at once."""
        n = self.overrides.clear(groups, priority)
        self.tick(force=True)
        return n

    def reload(self, cfg: LightingConfig, cameras: list[str],
               loaded: tuple[DimmingModel | None, str] | None = None) -> list[str]:
        """Swap to ``cfg`` transactionally. Everything that talks to the hardware happens
        before the swap: new or changed buses are opened (a changed bus's old port is freed
        first), and every group of the new config finds its luminaires on its bus. If any
        of that fails, what was opened is closed, freed ports are reopened by the usual
        retry with the old settings, and BusError is raised: the old config keeps running.
        Returns what changed."""
        mono = self.clock.monotonic()
        keep = dict(self.buses)
        buses, groups = self._build(cfg, keep, cameras, loaded)
        fresh = [b for n, b in buses.items() if b is not keep.get(n)]
        ports = {b.cfg.port for b in fresh}
        freed = [o for n, o in keep.items()
                 if buses.get(n) is not o and o.handle is not None and o.cfg.port in ports]
        opened: list[BusRuntime] = []
        try:
            for o in freed:                      # the same port, other settings: free it
                _close(o.handle)
                o.handle, o.state, o.retry_at = None, "down", -math.inf
                for g in self.groups.values():
                    if g.cfg.bus == o.cfg.name:
                        g.group = None
            for b in fresh:
                b.handle, b.slow_told = open_bus(b.cfg), 0
                opened.append(b)
            for g in groups.values():
                b = buses[g.cfg.bus]
                if b.handle is not None:         # a kept bus that is down: its retry will
                    g.group = make_group(g.cfg, b.cfg, b.handle)
                    g.members, g.discovered_at = g.group.discover(), mono
        except BusError as e:
            for b in opened:
                _close(b.handle)
            name = opened[-1].cfg.name if opened else "?"
            raise BusError(f"bus {name}: {e}") from None
        for g in groups.values():                # keep the lamps' state and the accounts
            old = self.groups.get(g.cfg.name)
            if old is not None:
                g.policy.envelope.last_pct = old.policy.envelope.last_pct
                g.policy.envelope.last_t = old.policy.envelope.last_t
                g.energy, g.report_start = old.energy, old.report_start
                g.saved_at_report, g.lamp_states = old.saved_at_report, old.lamp_states
                g.mode = old.mode
        old_buses = self.buses
        self._apply_config(cfg, (buses, groups))
        self.all_cameras = list(cameras)
        for b in opened:
            b.state, b.error = "up", ""
        for name, b in old_buses.items():
            if self.buses.get(name) is not b:
                _close(b.handle)
        for g in self.groups.values():           # the gear's own fail-safe (safe_pct may
            if g.group is not None and self.cfg.configure_gear:      # have changed)
                try:
                    self._configure(g)
                except BusError as e:
                    self._bus_failed(self.buses[g.cfg.bus], e, mono)
        self.tick(force=True)
        return [f"buses opened: {', '.join(b.cfg.name for b in opened) or 'none'}",
                f"groups: {', '.join(self.groups)}"]

    # -- one tick --------------------------------------------------------------------------
    def tick(self, force: bool = False) -> None:
        """One pass (see the module docstring); never raises."""
        wall, mono = self.clock.time(), self.clock.monotonic()
        try:
            self._check_clock(wall, mono)
            for cam, seen in (self.liveness() if self.liveness else {}).items():
                if seen is not None:
                    self.flow.seen(cam, seen)
            for cam, poor in (self.quality() if self.quality else {}).items():
                self.flow.judged(cam, poor)
            for b in self.buses.values():
                if b.state == "down" and mono >= b.retry_at:
                    self._open(b, mono)
            self.overrides.expire(wall)
            dark = self.ambient.dark(wall) if self.ambient else None
            for g in self.groups.values():
                self._tick_group(g, wall, mono, dark, force)
            self._report(wall)
        except Exception:
            log.exception("lighting tick failed; sending the safe level")
            self._all_safe("lighting tick failed")

    def _check_clock(self, wall: float, mono: float) -> None:
        self.trust_state = self.trust.check(wall, mono)
        if self.trust_state.trusted != self._trusted:
            if self.trust_state.trusted:
                self._event("clock_trusted", "info", "clock", votes=self.trust_state.votes)
            else:
                self._event("clock_untrusted", "alarm", "clock",
                            reasons=self.trust_state.reasons, votes=self.trust_state.votes)
            self._trusted = self.trust_state.trusted

    def _tick_group(self, g: GroupRuntime, wall: float, mono: float, dark: bool | None,
                    force: bool) -> None:
        cams = list(g.cfg.cameras) or self.all_cameras
        o = self.overrides.active(g.cfg.name, wall)
        d = g.policy.decide(wall, mono, self.trust_state, self.flow.reading(cams, mono),
                            o.level_pct if o else None, dark,
                            maintenance=o is not None and o.maintenance)
        g.decision = d
        self._mode_events(g, d)
        bus = self.buses[g.cfg.bus]
        unreachable = bus.state == "down" or g.group is None
        # the energy since the last tick went at the level last commanded (never commanded:
        # full light while unreachable, the new level otherwise)
        held = g.commanded if g.commanded is not None else 100.0 if unreachable \
            else d.level_pct
        g.energy.hold(held, self._rated(g), mono)
        if unreachable:
            return
        assert g.group is not None
        try:
            refresh = mono - g.commanded_at >= self.cfg.refresh_s
            if force or refresh or g.commanded is None or abs(d.level_pct - g.commanded) >= 0.05:
                g.group.set_level(d.level_pct)
                g.commanded, g.commanded_at = d.level_pct, mono
            if mono >= g.due.get("status", -math.inf):
                self._read_status(g)
                g.due["status"] = mono + self.cfg.status_period_s
            if mono >= g.due.get("energy", -math.inf):
                e = g.group.read_energy()
                g.energy_wh = e.energy_wh
                g.power_w = e.power_w if e.power_w is not None else g.power_w
                g.energy.reading(e.energy_wh, e.counters, e.quantum_wh, self._rated(g), mono)
                g.due["energy"] = mono + self.cfg.energy_period_s
            if mono >= g.due.get("diagnostics", -math.inf):
                if mono - g.discovered_at >= self.cfg.diagnostics_period_s:
                    self._rediscover(g, mono)
                diags = g.group.read_diagnostics()
                g.due["diagnostics"] = mono + self.cfg.diagnostics_period_s
                if diags:
                    self.emit(DiagnosticsRecord(g.cfg.name, tuple(diags)))
            self._bus_ok(bus)
        except BusError as e:
            self._bus_failed(bus, e, mono)

    def _rediscover(self, g: GroupRuntime, mono: float) -> None:
        """Look for the group's luminaires again (a replaced or newly powered one); new
        gear gets the fail-safe settings at once."""
        assert g.group is not None
        before = g.members
        g.members, g.discovered_at = g.group.discover(), mono
        if g.members != before:
            log.info("group %s: luminaires now %s", g.cfg.name, ", ".join(g.members) or "none")
            if self.cfg.configure_gear:
                self._configure(g)

    def _read_status(self, g: GroupRuntime) -> None:
        assert g.group is not None
        st = g.group.read_status()
        g.status = st
        if st.power_w is not None:
            g.power_w = st.power_w
        name = g.cfg.name
        told: dict[str, str] = {}
        for lamp in st.lamps:
            before = told[lamp.address] = g.lamp_states.get(lamp.address, "ok")
            hist = g.history.setdefault(lamp.address, deque(maxlen=CONFIRM_WINDOW))
            hist.append(lamp.state)
            now = before
            if before == "ok":                  # a failure: most of the recent reads
                if sum(x in FAILURE_STATES for x in hist) >= CONFIRM_READS:
                    now = next(x for x in reversed(hist) if x in FAILURE_STATES)
            elif list(hist)[-CONFIRM_READS:] == ["ok"] * CONFIRM_READS:
                now = "ok"                      # back: several good reads running
            elif lamp.state in FAILURE_STATES and \
                    list(hist)[-CONFIRM_READS:] == [lamp.state] * CONFIRM_READS:
                now = lamp.state                # failing another way, steadily
            if now == before:
                continue
            told[lamp.address] = now
            subject = f"{name}/{lamp.address}"
            if now == "ok":
                if before == "no_answer":
                    self._event("luminaire_restored", "info", subject)
                else:
                    self._event("lamp_restored", "info", subject, was=before)
            elif now in ("lamp_failure", "gear_failure"):
                self._event("lamp_failure", "alarm", subject, failure=now)
            else:
                self._event("luminaire_unreachable", "alarm", subject)
        g.lamp_states = told

    def _mode_events(self, g: GroupRuntime, d: Decision) -> None:
        before = g.mode
        if d.mode in FAILSAFE_MODES and before not in FAILSAFE_MODES:
            self._event("failsafe_entered", "alarm", g.cfg.name, mode=d.mode,
                        level_pct=d.level_pct, reasons=list(d.reasons))
        elif before in FAILSAFE_MODES and d.mode not in FAILSAFE_MODES:
            self._event("failsafe_left", "info", g.cfg.name, mode=d.mode, level_pct=d.level_pct)
        g.mode = d.mode

    def _rated(self, g: GroupRuntime) -> float:
        declared = g.group.rated_power_w() if g.group is not None else None
        return declared if declared else g.cfg.rated_power_w * g.cfg.luminaires

    # -- buses ------------------------------------------------------------------------------
    def _open(self, b: BusRuntime, mono: float) -> None:
        """Open, find the luminaires, make the gear safe; any failure closes the port again
        and retries with back-off (a port that opens over a dead bus is not "up")."""
        try:
            b.handle, b.slow_told = open_bus(b.cfg), 0
            log.info("bus %s: opened %s", b.cfg.name, b.cfg.port)
            self._bring_up(b)
        except BusError as e:
            self._bus_failed(b, e, mono, reopen=True)
            return
        self._bus_ok(b)

    def _bring_up(self, b: BusRuntime) -> None:
        """After an open: groups on this bus find their luminaires, the gear is made safe
        without us, and the current levels go out again (next tick)."""
        for g in self.groups.values():
            if g.cfg.bus != b.cfg.name:
                continue
            g.group = make_group(g.cfg, b.cfg, b.handle)
            g.members, g.discovered_at = g.group.discover(), self.clock.monotonic()
            g.commanded, g.due = None, {}
            if self.cfg.configure_gear:
                self._configure(g)

    def _configure(self, g: GroupRuntime) -> None:
        """The gear's own power-on and failure levels and fade time (only what differs)."""
        assert g.group is not None
        changes = g.group.ensure_failsafe(g.cfg.safe_pct, self.cfg.fade_s)
        if changes:
            log.info("group %s: gear fail-safe settings: %s", g.cfg.name, changes)
            self._event("gear_configured", "info", g.cfg.name, changes=changes,
                        luminaires=list(g.members))

    def _bus_ok(self, b: BusRuntime) -> None:
        late = getattr(b.handle, "late_replies", 0)
        if late and not b.slow_told:        # once per opened port: the deadline adapted
            b.slow_told = late
            h = b.handle
            self._event("bus_slow", "warning", b.cfg.name, port=b.cfg.port,
                        reply_timeout_ms=round(h.timeout * 1000),
                        configured_timeout_ms=round(h.base_timeout * 1000),
                        late_replies=late)
            log.warning("bus %s: the gateway answers late; reply deadline now %.0f ms "
                        "(configured %.0f ms)", b.cfg.name, h.timeout * 1000,
                        h.base_timeout * 1000)
        if b.state != "up":
            if b.error:
                self._event("bus_restored", "info", b.cfg.name, port=b.cfg.port)
                log.info("bus %s: restored", b.cfg.name)
            b.state, b.error, b.backoff = "up", "", BACKOFF_MIN_S

    def _bus_failed(self, b: BusRuntime, e: BusError, mono: float, reopen: bool = False) -> None:
        text = f"{type(e).__name__}: {e}"
        if not b.error:
            log.error("bus %s: %s (luminaires keep their level; the gear's own failure "
                      "level applies if the bus loses power)", b.cfg.name, text)
            self._event("bus_fault", "alarm", b.cfg.name, port=b.cfg.port, error=text[:300])
        b.error = text
        if reopen or isinstance(e, BusDisconnected) or b.handle is None:
            _close(b.handle)
            b.handle, b.state = None, "down"
            for g in self.groups.values():
                if g.cfg.bus == b.cfg.name:
                    g.group = None
            b.retry_at = mono + b.backoff
            b.backoff = min(b.backoff * 2, BACKOFF_MAX_S)
        else:
            b.state = "fault"

    def _all_safe(self, why: str) -> None:
        for g in self.groups.values():
            if g.group is None:
                continue
            try:
                g.group.set_level(g.cfg.safe_pct)
                g.commanded = g.cfg.safe_pct
            except BusError as e:
                log.error("group %s: cannot send the safe level (%s): %s", g.cfg.name, why, e)
            except Exception:
                log.exception("group %s: cannot send the safe level (%s)", g.cfg.name, why)

    def shutdown(self) -> None:
        """The last act: safe level on every reachable group, final records, buses closed."""
        self._all_safe("stopping")
        wall = self.clock.time()
        for g in self.groups.values():
            if g.decision is not None:
                g.decision = Decision(g.cfg.safe_pct, "failsafe", ["agent stopping"],
                                      g.decision.step)
        self._report(wall, final=True)
        for b in self.buses.values():
            _close(b.handle)
            b.handle, b.state = None, "down"
        self.trust.close()
        log.info("lighting stopped; lamps left at their safe level")

    # -- reporting --------------------------------------------------------------------------
    def _report(self, wall: float, final: bool = False) -> None:
        if self._next_report is None:
            self._next_report = (wall // self.report_s + 1) * self.report_s
            for g in self.groups.values():
                g.report_start = g.report_start or wall
        if not final and wall < self._next_report - self.report_s:
            # the wall clock stepped back (more than a period): report from now on, on the
            # new time, instead of waiting hours for the old next boundary
            log.warning("lighting reports: the clock went back %.0f s; reporting on the new "
                        "time", self._next_report - self.report_s - wall)
            self._next_report = (wall // self.report_s + 1) * self.report_s
            for g in self.groups.values():
                g.report_start = wall
            return
        if not final and wall < self._next_report:
            return
        end = wall if final else self._next_report
        for g in self.groups.values():
            if g.decision is not None:
                self.emit(self._record(g, g.report_start or end, end, final))
            g.report_start = end
        if not final:
            self._next_report = max(self._next_report + self.report_s,
                                    (wall // self.report_s + 1) * self.report_s)

    def _record(self, g: GroupRuntime, start: float, end: float, partial: bool) -> LightingRecord:
        d = g.decision
        assert d is not None
        fig = g.energy.figures()
        # never negative: a correction below what was reported is carried forward
        saved = max(0.0, fig.saved_total_wh - g.saved_at_report)
        g.saved_at_report += saved
        bus = self.buses[g.cfg.bus]
        o = self.overrides.active(g.cfg.name, end)
        st = g.status
        return LightingRecord(
            g.cfg.name, start, end, partial, d.mode, tuple(d.reasons), d.step, d.level_pct,
            st.level_pct if st else None, g.cfg.safe_pct, st.lamps if st else (), g.power_w,
            fig.used_wh, round(saved, 4), fig.saved_total_wh, fig.uncertainty_wh, fig.source,
            bus.error or None, self.trust_state.trusted,
            {"level_pct": o.level_pct, "priority": o.priority, "until": o.until} if o else None)

    def _event(self, event: str, severity: str, subject: str, **detail: Any) -> None:
        self.emit(EventRecord(event, severity, subject, detail))

    # -- for the status line and health --------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Buses, groups (mode, level, commanded) and the clock's trust."""
        return {"clockTrusted": self.trust_state.trusted,
                "buses": {n: {"state": b.state, "error": b.error or None}
                          for n, b in self.buses.items()},
                "groups": {n: {"mode": g.decision.mode if g.decision else None,
                               "levelPct": g.decision.level_pct if g.decision else None,
                               "commandedPct": g.commanded}
                           for n, g in self.groups.items()}}


def _close(handle: Any) -> None:
    if handle is None:
        return
    try:
        handle.close()
    except Exception as e:  # a port that vanished may fail in any way while closing
        log.debug("closing a bus: %s", e)
