"""``agent run``: the one place that wires the parts together.

    cameras ──► vision workers (one thread each) ──► interval aggregates ─┐
                        │ last good frame                                 │ records
                        ▼                                                 ▼
    clock ──► lighting service (its own thread, its own ticks) ──► reporter ──► outbox ──► uplink
                        ▲ overrides, reloads                              ▲
                        └──────────── main loop: commands, health ────────┘

The main loop (:meth:`Agent.step`, a few times a second on the wall clock) closes the
traffic intervals of every camera, frames or not; hands their counts to the lighting
service; notices cameras that are lost or back; runs the platform's commands (which the
MQTT thread only queues); answers commands whose work the lighting thread has finished;
and publishes health on its own period. The lighting service decides and drives the
lamps on its own ticks whatever the cameras and the network do.

Starting never waits on hardware: a camera whose model fails to load is reported (its
intervals close with no frames) while the others and the lighting run; a bus that will
not open is retried by the lighting service while its groups are reported; an outbox that
cannot be opened disables the uplink, not the lamps. Stopping (SIGTERM, SIGINT, the end
of ``--duration``, or a crash unwinding the loop) closes the open intervals as
``partial`` and leaves every reachable lamp at its safe level.

Under systemd (``deploy/systemd/polelink.service``) the main loop also drives
:class:`agent.service.supervisor.Supervisor`: ``READY=1`` once the parts are up,
``STATUS=`` on changes, ``WATCHDOG=1`` only while every part's heartbeat (each camera's
reader and pipeline, the lighting, the uplink) is fresh, ``STOPPING=1``, and the run's
exit reason for the next start's health (``restarts``, ``lastExit``).
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.clock import Clock, SystemClock, from_environment
from agent.handlers import CommandHandlers
from agent.health import system_health
from agent.lighting.flow import TrafficSample
from agent.lighting.service import LightingService
from agent.records import EventRecord, HealthRecord, TrafficRecord
from agent.service.heartbeat import Heartbeat
from agent.service.lock import AlreadyRunning
from agent.service.lock import take_all as take_locks
from agent.service.lock import wait_for as wait_for_lock
from agent.service.notify import Notifier
from agent.service.runs import state_directory
from agent.service.supervisor import Supervisor
from agent.settings.schema import AgentConfig, CameraConfig, MqttConfig, load_config
from agent.settings.yamlfile import ConfigError
from agent.update.guard import Layout
from agent.update.install import Settings as UpdateSettings
from agent.update.install import Updater
from agent.update.trial import TrialWatch, running_release
from agent.uplink.commands import CommandDispatcher, CommandError
from agent.uplink.guard import CommandGuard, ReplayWindow, load_public_key
from agent.uplink.mqtt import TlsSettings, Uplink, UplinkSettings, credentials
from agent.uplink.outbox import Outbox
from agent.uplink.report import Reporter
from agent.vision.aggregates import IntervalAggregator, JsonLinesSink
from agent.vision.camera import CameraSource, describe
from agent.vision.checkpoint import CHECKPOINT_S, Checkpoints
from agent.vision.counter import Line
from agent.vision.detect import ModelError, load_detector
from agent.vision.detect.isolated import ModelHosts
from agent.vision.detect.runtime import SharedRuntimes
from agent.vision.worker import CameraWorker

log = logging.getLogger(__name__)

#: How long a command's work on the lighting thread may take before the answer says so.
COMMAND_TIMEOUT_S = 30.0
#: ``=1``: models run in the agent's own process, as before issue 21 (``bench/agent_run.py
#: --in-process``: the baseline of what running them apart costs). Never on a pole.
IN_PROCESS_ENV = "POLELINK_MODELS_IN_PROCESS"
#: At most one ``command_rejected`` event this often (its ``count`` says how many).
REJECT_EVENT_EVERY_S = 10.0
#: What a ``busy`` answer asks the platform to wait before sending the command again.
BUSY_RETRY_AFTER_S = 5


def traffic_samples(records: list, mono: float) -> list[TrafficSample]:
    """The lighting's traffic from closed intervals: per camera, its busiest line's counts
    (a camera usually watches both directions of one road). An interval whose counts were
    poor (``count_quality.grade``) is no evidence of the traffic: it is not coverage, so its
    undercount cannot dim the road once the camera's counts are trusted again."""
    samples = []
    for cam in sorted({r.camera for r in records}):
        lines = [r for r in records if r.camera == cam and r.line is not None]
        busiest = max(lines, key=lambda r: r.total, default=None)
        if busiest is None:
            continue
        counts: dict[str, int] = {}
        for per in busiest.counts.values():
            for cls, n in per.items():
                counts[cls] = counts.get(cls, 0) + n
        poor = (busiest.quality or {}).get("grade") == "poor"
        samples.append(TrafficSample(cam, mono, 0.0 if poor else busiest.covered_s, counts))
    return samples


@dataclass
class Pending:
    """A command whose work is running on another thread."""

    correlation_id: str | None
    command: str
    future: Future
    deadline: float
    done: Callable[[], None] | None = None


class Agent:
    """The running agent; see the module docstring."""

    def __init__(self, cfg: AgentConfig, config_path: Path | None = None,
                 clock: Clock | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.clock = clock or SystemClock()
        self.started = self.clock.monotonic()
        self.stop_event = threading.Event()
        self.sink = JsonLinesSink(cfg.aggregates.path)
        self.checkpoints = Checkpoints(cfg.aggregates.path.parent / "checkpoints")
        self._next_checkpoint = 0.0
        self.outbox, self.uplink, self.uplink_problem = self._open_uplink(cfg.mqtt)
        self.reporter = Reporter(cfg.device.id, cfg.device.site, self.clock, self.outbox,
                                 self.uplink)
        # models run in processes of their own (a runtime crash cannot reach the lamps);
        # cameras with the same model card share one (half a camera's memory)
        self.models: ModelHosts | SharedRuntimes = ModelHosts()
        if os.environ.get(IN_PROCESS_ENV) == "1":    # the benchmark's baseline only
            log.warning("%s=1: models run in the agent's process (a benchmark's baseline; "
                        "a model runtime that crashes takes the lamps' process down)",
                        IN_PROCESS_ENV)
            self.models = SharedRuntimes()
        self.workers = {c.name: self._make_worker(c) for c in cfg.cameras}
        self.lighting = self._make_lighting(cfg)
        self.handlers = CommandHandlers(self)
        self.dispatcher = CommandDispatcher(self.handlers.table(), self._make_guard(cfg.mqtt))
        # at most commands.in_flight should come per connection (MQTT 5 Receive Maximum:
        # each is acknowledged to the broker once answered), but brokers overshoot it
        # (mosquitto 2.0 refills its quota too generously after a PUBACK): room for ten
        # times as many (at most 16 KiB each); beyond, a command is answered busy, never
        # dropped unanswered
        in_flight = cfg.mqtt.commands.in_flight if cfg.mqtt else 20
        self.commands: queue.Queue[tuple[str, bytes, bool, Callable[[], None] | None]] = \
            queue.Queue(maxsize=max(10 * in_flight, 100))
        #: set when a command arrives: the main loop wakes for it
        self.wake = threading.Event()
        self.commands_busy = 0
        self.pending: list[Pending] = []
        self._camera_ok: dict[str, bool] = {}
        self._quality_poor: dict[str, bool] = {}     # camera → its counts were poor
        self._storage_failing = False
        self._next_health: float | None = None
        self._rejected_since = 0                 # refused commands not yet in an event
        self._next_reject_event = 0.0
        #: ``restarts`` and ``lastExit`` for health (set by ``run_agent``)
        self.service_figures: Callable[[], dict[str, Any]] | None = None
        #: set (to the new version) when an update switched releases: the run loop exits
        #: so that the supervisor starts the new one
        self.restart_for: str | None = None
        self.updater, self.trial = self._make_updates(cfg)

    # -- building -----------------------------------------------------------------------
    def _open_uplink(self, m: MqttConfig | None) -> tuple[Outbox | None, Uplink | None, str]:
        if m is None:
            return None, None, ""
        try:
            user, pw = credentials(m.secrets_file, m.username, m.password.get_secret_value()
                                   if m.password is not None else None)
        except Exception as e:  # an unreadable or invalid secrets file
            problem = f"uplink disabled: {type(e).__name__}: {e}"
            log.error("%s (lighting and counting go on)", problem)
            return None, None, problem
        # never raises: a broken file is quarantined, an unwritable one held in memory
        outbox = Outbox(m.outbox_path, self.cfg.device.id, m.outbox_max_messages)
        tls = TlsSettings(m.tls.ca, m.tls.cert, m.tls.key) if m.tls else None
        uplink = Uplink(UplinkSettings(m.host, m.port, m.prefix, m.protocol, m.keepalive_s,
                                       m.reconnect_min_s, m.reconnect_max_s, username=user,
                                       password=pw, tls=tls, primary_host=m.primary_host,
                                       session_expiry_s=m.session_expiry_s,
                                       ack_window=m.ack_window,
                                       ack_timeout_s=m.ack_timeout_s,
                                       ack_timeout_max_s=10 * m.ack_timeout_s,
                                       state_future_s=m.state_future_s,
                                       takeover_wait_max_s=m.takeover_wait_max_s,
                                       receive_maximum=m.commands.in_flight),
                        self.cfg.device.id, self.cfg.device.site, outbox, self.on_command)
        return outbox, uplink, ""

    def _make_guard(self, m: MqttConfig | None) -> CommandGuard | None:
        """Freshness, replay and signature checks for commands (see ``agent.uplink.guard``).
        A verify key that cannot be read refuses every command (never runs them unchecked)."""
        if m is None:
            return None
        c = m.commands
        key = None
        if c.verify_key is not None:
            try:
                key = load_public_key(c.verify_key)
            except ValueError as e:
                log.error("commands: %s; every command will be refused", e)
                key = _UnusableKey(str(e))
        replay = ReplayWindow(c.replay_path or m.outbox_path.with_name("commands.db"))
        return CommandGuard(self.cfg.device.id, self.cfg.device.site, replay, c.max_ttl_s,
                            key)

    def _make_updates(self, cfg: AgentConfig) -> tuple[Updater | None, TrialWatch | None]:
        """The update pipeline and the trial watch (``update:`` section); an update key
        that cannot be read disables updates (reported), never the agent."""
        u = cfg.update
        if u is None:
            return None, None
        layout = Layout(u.root)
        running = running_release(layout)
        trial = TrialWatch(layout, running, self.update_event)
        try:
            key = load_public_key(u.verify_key)
        except ValueError as e:
            log.error("update: %s; updates are refused", e)
            return None, trial
        hosts = tuple(u.url_hosts if u.url_hosts is not None
                      else [cfg.mqtt.host] if cfg.mqtt else [])
        settings = UpdateSettings(
            layout, key, hosts, u.health_deadline_s, u.max_trial_starts,
            u.free_margin_mb << 20, u.max_bundle_mb << 20, u.download_timeout_s,
            u.install_timeout_s, u.site_packages_from, self.config_path)
        return Updater(settings, running, self.update_event, self.request_restart), trial

    def update_event(self, event: str, severity: str, detail: dict[str, Any]) -> None:
        """Publish an update step's event (from any thread)."""
        self.reporter.publish(EventRecord(event, severity, "update", detail))

    def request_restart(self, version: str) -> None:
        """The update switched to ``version``: stop so the supervisor starts it."""
        log.warning("update: switched to %s; exiting so the supervisor starts it", version)
        self.restart_for = version

    def update_health(self) -> dict[str, bool]:
        """What a release on trial must show before it commits: birth published, first
        interval record written, every lamp group commanded."""
        groups = self.lighting.summary()["groups"] if self.lighting is not None else {}
        return {"birthPublished": self.uplink is None or self.uplink.stats.connects >= 1,
                "intervalWritten": self.sink.written > 0,
                "lampsCommanded": all(g["commandedPct"] is not None for g in groups.values())}

    def _make_worker(self, cam: CameraConfig, strict: bool = False) -> CameraWorker:
        """A camera's worker; its model is loaded here (a failure: the camera is reported,
        or with ``strict`` raised, for a reload)."""
        detector, error = None, ""
        d = cam.detector
        try:
            detector = load_detector(d.model, set(d.classes), d.confidence, d.nms_iou,
                                     d.merge_iou, d.threads, self.models,
                                     d.run_timeout_s if isinstance(self.models, ModelHosts)
                                     else None)
        except (ModelError, ConfigError) as e:
            if strict:
                raise
            error = str(e).splitlines()[0]
            log.error("camera %s: model unusable, camera not started: %s", cam.name, error)
        lines = {ln.name: Line.make(ln.name, ln.points, ln.directions).names for ln in cam.lines}
        agg = IntervalAggregator(self.cfg.device.id, self.cfg.device.site, cam.name, lines,
                                 [z.name for z in cam.zones], self.cfg.aggregates.interval_s,
                                 self.clock.time(), self.clock.monotonic())
        return CameraWorker(cam, CameraSource(cam.source, cam.name), agg, self.clock,
                            detector, error)

    def _make_lighting(self, cfg: AgentConfig) -> LightingService | None:
        if cfg.lighting is None:
            return None
        return LightingService(cfg.lighting, cfg.clock, self.clock, self.reporter.publish,
                               [c.name for c in cfg.cameras], cfg.aggregates.interval_s,
                               liveness=self.liveness,
                               models=self.models if isinstance(self.models, ModelHosts)
                               else None, quality=self.count_quality)

    def _reload_lighting(self, cfg: Any, cameras: list[str]) -> list[str]:
        """The lighting service swapped to ``cfg`` on its own thread; CommandError (nothing
        changed) when it cannot."""
        lighting = self.lighting
        assert lighting is not None
        loaded = lighting.load_model(cfg)   # here: the lighting thread never waits for it
        if loaded[0] is None and lighting.has_model():
            raise CommandError(f"lighting: the dimming model cannot be loaded, nothing "
                               f"changed: {loaded[1]}")
        fut = lighting.submit(lambda: lighting.reload(cfg, cameras, loaded))
        try:
            return fut.result(timeout=COMMAND_TIMEOUT_S)
        except Exception as e:
            raise CommandError(f"lighting failed, nothing changed: {e}") from None

    def liveness(self) -> dict[str, float | None]:
        """Each camera's last good frame (monotonic), for the lighting service."""
        return {n: w.last_good_mono for n, w in self.workers.items()}

    def count_quality(self) -> dict[str, tuple[str, ...]]:
        """Why each camera's counts are poor now (empty: good), for the lighting service."""
        return {n: w.quality for n, w in self.workers.items()}

    # -- running ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the lighting first (the lamps matter most), then the uplink and cameras."""
        if self.lighting is not None:
            self.lighting.start()
        if self.uplink is not None:
            self.uplink.start()
        self._recover_checkpoints()
        for w in self.workers.values():
            if w.detector is None:
                continue
            log.info("camera %s: %s", w.name, describe(w.cfg.source))
            w.start(self.stop_event)

    def _recover_checkpoints(self) -> None:
        """Counts a crashed run left in its checkpoints join this run (see
        ``agent.vision.aggregates``): nothing counted before a crash is lost or doubled."""
        for name, w in self.workers.items():
            cp = self.checkpoints.pending(name, self.sink.path)
            if cp is None:
                continue
            try:
                records = w.aggregator.restore(cp, w.state)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                log.error("camera %s: checkpoint unusable (%s); ignored", name, e)
                continue
            log.warning("camera %s: the last run did not stop cleanly; %s", name,
                        "its open interval was closed from the checkpoint" if records
                        else "its counts were recovered from the checkpoint")
            self._deliver(records, self.clock.monotonic())
            self.checkpoints.save(name, w.aggregator.checkpoint(self.clock.time()))

    def _checkpoint(self, mono: float, force: bool) -> None:
        if not force and mono < self._next_checkpoint:
            return
        self._next_checkpoint = mono + CHECKPOINT_S
        now = self.clock.time()
        for name, w in self.workers.items():
            self.checkpoints.save(name, w.aggregator.checkpoint(now))

    def on_command(self, topic: str, payload: bytes, retained: bool = False,
                   done: Callable[[], None] | None = None) -> None:
        """From the MQTT thread: queue the command for the main loop, nothing more.
        ``done`` (acknowledge it to the broker) is called once it is answered. A full
        queue answers ``busy`` (with a retry-after) at once: never dropped unanswered."""
        if self.uplink is None or topic != self.uplink.topic("cmd"):
            if done is not None:
                done()
            return
        try:
            self.commands.put_nowait((topic, payload, retained, done))
            self.wake.set()
            return
        except queue.Full:
            pass
        try:
            self._answer_busy(payload)
        except Exception:           # never the MQTT thread's end
            log.exception("command queue full: the busy answer failed")
        if done is not None:
            done()

    def _answer_busy(self, payload: bytes) -> None:
        """Answer a command the queue has no room for: ``error`` "busy", and ``data``
        ``{"busy": true, "retryAfterS": N}`` (a platform sends it again after N s)."""
        from agent.uplink.commands import MAX_COMMAND_BYTES, parse_strict

        cid = cmd = None
        if len(payload) <= MAX_COMMAND_BYTES:
            try:
                msg = parse_strict(payload)
            except ValueError:
                msg = None
            if isinstance(msg, dict):
                c, k = msg.get("correlation_id"), msg.get("command")
                cid = c if isinstance(c, str) and 0 < len(c) <= 128 else None
                cmd = k if isinstance(k, str) and len(k) <= 64 else None
        self.commands_busy += 1
        if self.commands_busy == 1 or self.commands_busy % 100 == 0:
            log.warning("commands: %d waiting already; answered busy (retry after %d s), "
                        "%d busy answers so far", self.commands.qsize(), BUSY_RETRY_AFTER_S,
                        self.commands_busy)
        self.reporter.respond(cid, cmd, f"busy: {self.commands.qsize()} commands are waiting "
                              f"on this pole; not run: send it again in {BUSY_RETRY_AFTER_S} s",
                              {"busy": True, "retryAfterS": BUSY_RETRY_AFTER_S})

    def step(self) -> list[TrafficRecord]:
        """One pass of the main loop (see the module docstring); returns closed records."""
        now, mono = self.clock.time(), self.clock.monotonic()
        closed: list[TrafficRecord] = []
        for w in self.workers.values():
            closed += w.aggregator.roll(now, mono, w.state)
        self._deliver(closed, mono)
        self._checkpoint(mono, force=bool(closed))
        self._watch_cameras(mono)
        self._watch_quality()
        self._watch_uplink()
        self._run_commands()
        self._settle_pending()
        if self.trial is not None:
            self.trial.step(self.update_health, mono)
        step_s = self.cfg.aggregates.interval_s
        if self._next_health is None or now < self._next_health - step_s:
            # the first pass, or the wall clock stepped back: health on the new time
            self._next_health = (now // step_s + 1) * step_s
        elif now >= self._next_health:
            self.publish_health()
            self._next_health = (now // step_s + 1) * step_s
        return closed

    def _deliver(self, records: list[TrafficRecord], mono: float) -> None:
        """Closed intervals: to the JSON-lines file, the platform and the lighting."""
        if not records:
            return
        # the outbox first (a durable commit): a crash between the two leaves an interval
        # the platform has and the file lacks, never one in the file the platform never gets
        for r in records:
            self.reporter.publish(r)
        try:
            self.sink.write(records)
            if self._storage_failing:
                self._storage_failing = False
                self.reporter.publish(EventRecord("storage_error", "info", "aggregates",
                                                  {"recovered": True}))
        except OSError as e:
            log.error("cannot write %s: %s", self.sink.path, e)
            if not self._storage_failing:
                self._storage_failing = True
                self.reporter.publish(EventRecord("storage_error", "alarm", "aggregates",
                                                  {"path": str(self.sink.path), "error": str(e)}))
        if self.lighting is not None:
            samples = traffic_samples(records, mono)
            lighting = self.lighting
            if samples:
                lighting.submit(lambda: lighting.add_traffic(samples))

    def _watch_quality(self) -> None:
        """``count_quality_poor`` / ``count_quality_restored`` when a camera's verdict
        changes (poor counts never drive adaptive dimming: the lighting record says so too)."""
        for name, w in self.workers.items():
            poor = w.quality
            before = self._quality_poor.get(name, False)
            if bool(poor) == before:
                continue
            self._quality_poor[name] = bool(poor)
            if poor:
                log.warning("camera %s: counts not trusted: %s", name, "; ".join(poor))
                self.reporter.publish(EventRecord("count_quality_poor", "warning", name,
                                                  {"reasons": list(poor)}))
            else:
                log.info("camera %s: counts trusted again", name)
                self.reporter.publish(EventRecord("count_quality_restored", "info", name, {}))

    def _watch_cameras(self, mono: float) -> None:
        """``camera_lost`` / ``camera_restored`` on changes (after a start-up grace)."""
        for name, w in self.workers.items():
            grace = max(10.0, 2 * w.cfg.source.stall_timeout_s)
            fresh = w.last_good_mono is not None and mono - w.last_good_mono <= grace
            if w.state == "live" and fresh:
                ok: bool | None = True
            elif w.detector is None or mono - self.started > grace:
                ok = False
            else:
                ok = None                       # still starting
            before = self._camera_ok.get(name)
            if ok is None or ok == before:
                continue
            if ok:
                self.reporter.publish(EventRecord("camera_restored", "info", name,
                                                  {"state": w.state}))
            else:
                self.reporter.publish(EventRecord("camera_lost", "alarm", name, {
                    "state": w.state,
                    "error": w.model_error or w.model_down or w.source.stats.last_error,
                    "last_good_frame_s_ago": None if w.last_good_mono is None
                    else round(mono - w.last_good_mono, 1)}))
            self._camera_ok[name] = ok

    def _watch_uplink(self) -> None:
        """Outbox and uplink notices become events; a dead network thread is restarted."""
        if self.outbox is not None:
            for n in self.outbox.take_notices():
                self.reporter.publish(EventRecord(n.event, n.severity, "outbox", n.detail))
        if self.uplink is None:
            return
        for event, severity, detail in self.uplink.take_notices():
            self.reporter.publish(EventRecord(event, severity, "uplink", detail))
        if not self.uplink.alive and not self.stop_event.is_set():
            self.uplink.stats.thread_restarts += 1
            log.error("mqtt: the uplink thread died; restarting it")
            self.reporter.publish(EventRecord("uplink_restarted", "alarm", "uplink", {
                "restarts": self.uplink.stats.thread_restarts,
                "last_error": self.uplink.stats.last_error[:300]}))
            self.uplink.start()

    def _run_commands(self) -> None:
        while True:
            try:
                _topic, payload, retained, done = self.commands.get_nowait()
            except queue.Empty:
                return
            try:
                cid, cmd, error, data = self.dispatcher.handle(payload, retained,
                                                               self.clock.time())
            except Exception as e:          # never the end of the main loop
                log.exception("command handling failed")
                cid, cmd, error, data = None, None, f"command failed: {type(e).__name__}", {}
            if isinstance(data, Future):
                self.pending.append(Pending(cid, cmd or "", data,
                                            time.monotonic() + COMMAND_TIMEOUT_S, done))
                continue
            if error and error.startswith("duplicate:") and cid is not None \
                    and any(p.correlation_id == cid for p in self.pending):
                # a copy of a command still running: its own answer is coming, and a
                # "not run again" first would be taken for the answer by the platform
                if done is not None:
                    done()
                continue
            self._answer(cid, cmd, error, data)
            if done is not None:
                done()

    def _answer(self, cid: str | None, cmd: str | None, error: str | None,
                data: dict[str, Any] | None) -> None:
        if error:
            self._rejected_since += 1
            now = time.monotonic()
            if now >= self._next_reject_event:       # a flood must not flood the outbox
                self.reporter.publish(EventRecord("command_rejected", "warning", "cmd", {
                    "error": error[:500], "command": cmd, "count": self._rejected_since}))
                self._rejected_since = 0
                self._next_reject_event = now + REJECT_EVENT_EVERY_S
        self.reporter.respond(cid, cmd, error, data)

    def _settle_pending(self) -> None:
        still = []
        for p in self.pending:
            if p.future.done():
                try:
                    self._answer(p.correlation_id, p.command, None, p.future.result())
                except (CommandError, ValueError, OSError) as e:
                    self._answer(p.correlation_id, p.command, str(e), None)
                except Exception as e:
                    log.exception("command %s failed", p.command)
                    self._answer(p.correlation_id, p.command,
                                 f"command failed: {type(e).__name__}: {e}", None)
            elif time.monotonic() > p.deadline:
                self._answer(p.correlation_id, p.command, "not confirmed within "
                             f"{COMMAND_TIMEOUT_S:.0f} s (the lighting thread is busy); it "
                             "may still take effect", None)
            else:
                still.append(p)
                continue
            if p.done is not None:
                p.done()
        self.pending = still

    def publish_health(self) -> None:
        """Queue a health message (and an overflow event when the outbox dropped data)."""
        trust = self.lighting.trust_state if self.lighting else None
        self.reporter.publish(HealthRecord(
            system=system_health(self.cfg.aggregates.path.parent),
            uptime_s=self.clock.monotonic() - self.started,
            outbox=self.outbox.figures() if self.outbox else {"queued": 0, "dropped": 0},
            cameras={n: w.state for n, w in self.workers.items()},
            clock={"trusted": trust.trusted, "reasons": trust.reasons, "votes": trust.votes}
            if trust else {"trusted": True, "reasons": ["no lighting: not checked"]},
            lighting=self.lighting.summary() if self.lighting else {},
            uplink=self._uplink_figures(),
            service=self.service_figures() if self.service_figures else {},
            count_quality={n: {"trusted": not q, "reasons": list(q)}
                           for n, q in self.count_quality().items()}))

    def _uplink_figures(self) -> dict[str, Any]:
        if self.uplink is None:
            return {}
        d, g = self.dispatcher, self.dispatcher.guard
        return {**self.uplink.figures(), "commandsAccepted": d.accepted,
                "commandsBusy": self.commands_busy,
                "commandsRejected": d.rejected, "commandReplays": g.replays if g else 0,
                "replayWindowDurable": g.replay.durable if g else False}

    # -- reload ---------------------------------------------------------------------------
    def reload(self) -> dict[str, Any]:
        """Reload the provisioning file transactionally: build and check everything new
        (models, buses) first, then swap; on any failure the running config stays and
        the error is the answer."""
        if self.config_path is None:
            raise CommandError("this agent was not started from a config file")
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            raise CommandError("config is invalid, nothing changed: "
                               + "; ".join(str(p) for p in e.problems[:5])) from None
        if new.device != self.cfg.device:
            raise CommandError("device id and site cannot change by reload, nothing changed: "
                               "restart the agent")
        if new.mqtt != self.cfg.mqtt or new.aggregates != self.cfg.aggregates:
            raise CommandError("mqtt or aggregates settings changed: these need a restart "
                               "of the agent; nothing changed")
        old_cams = {c.name: c for c in self.cfg.cameras}
        changed = [c for c in new.cameras if old_cams.get(c.name) != c]
        try:
            fresh = {c.name: self._make_worker(c, strict=True) for c in changed}
        except (ModelError, ConfigError) as e:
            raise CommandError(f"a camera's model failed, nothing changed: "
                               f"{str(e).splitlines()[0]}") from None
        notes: list[str] = []
        lighting_changed = new.lighting != self.cfg.lighting or (
            new.lighting is not None and new.clock != self.cfg.clock)
        if lighting_changed:
            if self.lighting is not None and new.lighting is not None \
                    and new.clock == self.cfg.clock:
                notes += self._reload_lighting(new.lighting, [c.name for c in new.cameras])
            else:
                raise CommandError("adding or removing the lighting section, or changing the "
                                   "clock sources, needs a restart; nothing changed")
        if self.lighting is not None and not lighting_changed:
            lighting, names = self.lighting, [c.name for c in new.cameras]
            if bool(old_cams) != bool(names):   # to or from a lighting-only pole: the
                notes += self._reload_lighting(new.lighting, names)  # built-in program
            else:                               # changes
                lighting.submit(lambda: setattr(lighting, "all_cameras", names))
        removed = [n for n in old_cams if n not in {c.name for c in new.cameras}]
        now, mono = self.clock.time(), self.clock.monotonic()
        for name in [*removed, *fresh]:
            old = self.workers.pop(name, None)
            if old is not None:
                old.stop()
                old._flush()
                self._deliver(old.aggregator.flush(now, mono, old.state), mono)
                self.checkpoints.remove(name)
        self.cfg = new
        for name, w in fresh.items():
            self.workers[name] = w
            w.start(self.stop_event)
        old = None
        if isinstance(self.models, ModelHosts):
            gc.collect()                # the replaced cameras' lanes, and their models
            self.models.prune()         # unloaded: a reload never piles up sessions
        summary = {"cameras_restarted": sorted(fresh), "cameras_removed": removed,
                   "lighting": notes}
        self.reporter.publish(EventRecord("config_reloaded", "info", "config", summary))
        return summary

    # -- stopping ----------------------------------------------------------------------------
    def stop(self) -> list[TrafficRecord]:
        """Stop cameras, close the open intervals as partial, leave the lamps safe, give the
        uplink a short grace to send what is queued, close. The lamps are reached even when
        closing the intervals fails (the fault that stopped the loop may strike again)."""
        self.stop_event.set()
        out: list[TrafficRecord] = []
        try:
            for w in self.workers.values():
                w.stop()
            now, mono = self.clock.time(), self.clock.monotonic()
            out = self.step()
            tail: list[TrafficRecord] = []
            for w in self.workers.values():
                tail += w.aggregator.flush(now, mono, w.state)
            self._deliver(tail, mono)
            out += tail
            for name in self.workers:
                self.checkpoints.remove(name)
        except Exception:
            log.exception("stopping: the open intervals could not be closed")
        finally:
            if self.lighting is not None:
                self.lighting.stop()
            try:
                if isinstance(self.models, ModelHosts):
                    self.models.close()
            except Exception:
                log.exception("stopping: the model processes could not be closed")
            if self.uplink is not None and self.outbox is not None:
                end = time.monotonic() + 3
                while self.uplink.connected and len(self.outbox) and time.monotonic() < end:
                    time.sleep(0.05)
                self.uplink.stop()
            if self.outbox is not None:
                self.outbox.close()     # its side record names the last seq (continuity)
        return out

    # -- supervision ----------------------------------------------------------------------
    def heartbeats(self) -> list[Heartbeat]:
        """The heartbeats of every part that runs a thread the agent needs: each started
        camera's reader and pipeline, the lighting, the uplink."""
        parts = [hb for w in self.workers.values() if w.thread is not None
                 for hb in (w.heartbeat, w.source.heartbeat)]
        if self.lighting is not None:
            parts.append(self.lighting.heartbeat)
        if self.uplink is not None:
            parts.append(self.uplink.heartbeat)
        return parts

    def parts_up(self) -> bool:
        """True once the parts are up: called after :meth:`start` (config loaded, workers
        and uplink started), it waits only for the lighting's first tick (the lamps
        commanded at least once)."""
        return self.lighting is None or self.lighting.ticked.is_set()

    def service_status(self) -> str:
        """A one-line state for ``systemctl status``: it changes with states (a camera
        lost, a bus down, a mode, the network), not with counts or levels."""
        parts = ["cameras " + (", ".join(f"{n} {w.state}" for n, w in self.workers.items())
                               or "none")]
        if self.lighting is not None:
            s = self.lighting.summary()
            parts.append("lamps " + ", ".join(f"{n} {g['mode'] or '-'}"
                                              for n, g in s["groups"].items()))
            down = [n for n, b in s["buses"].items() if b["state"] != "up"]
            if down:
                parts.append("bus DOWN " + ", ".join(down))
            if not s["clockTrusted"]:
                parts.append("clock untrusted")
        if self.uplink is not None:
            parts.append("mqtt " + ("up" if self.uplink.connected else "down"))
        elif self.uplink_problem:
            parts.append("mqtt disabled")
        return "; ".join(parts)

    def all_ended(self) -> bool:
        """True when every camera's source has ended (files without loop) or never started."""
        return all(w.detector is None or (w.source.ended.is_set()
                                           and not (w.thread and w.thread.is_alive()))
                   for w in self.workers.values())

    def status_line(self) -> str:
        """One line: cameras, lamps, uplink."""
        parts = [w.status() for w in self.workers.values()]
        if self.lighting is not None:
            s = self.lighting.summary()
            if not s["clockTrusted"]:
                parts.append("CLOCK UNTRUSTED")
            for name, g in s["groups"].items():
                lvl = g["levelPct"]
                parts.append(f"lamps {name} {'-' if lvl is None else f'{lvl:.0f}%'} "
                             f"{g['mode'] or ''}".rstrip())
            for name, b in s["buses"].items():
                if b["state"] != "up":
                    parts.append(f"bus {name} {b['state'].upper()}")
        if self.uplink is not None:
            q = len(self.outbox) if self.outbox else 0
            up = self.uplink
            state = ("DOWN" if not up.connected else "REFUSED (broker ACL?)" if up.refused
                     else "up, platform away" if not up.platform_online else "up")
            parts.append(f"mqtt {state} queued {q}")
            if self.outbox is not None and (self.outbox.degraded or self.outbox.write_error):
                parts.append("OUTBOX NOT DURABLE")
        elif self.uplink_problem:
            parts.append("mqtt DISABLED")
        return " | ".join(parts)


class _UnusableKey:
    """Stands in for a verify key that could not be loaded: nothing verifies."""

    def __init__(self, why: str) -> None:
        self.why = why

    def verify(self, _sig: bytes, _data: bytes) -> None:
        raise ValueError(self.why)


#: Signals whose default action ends the process: each one stops the agent as SIGTERM does
#: (lamps to their safe level, final records, one log line). A terminal hang-up (SIGHUP) or
#: a stray ``kill -QUIT`` killed it before, the lamps left wherever they were. SIGKILL
#: cannot be caught; SIGSEGV, SIGBUS, SIGFPE, SIGILL and SIGABRT print every thread's stack
#: (faulthandler) and end the process: systemd restarts it and the gear's own power-on and
#: system-failure levels hold the lamps meanwhile.
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM",
                "SIGVTALRM", "SIGPROF", "SIGXCPU", "SIGIO", "SIGPWR", "SIGSTKFLT", "SIGTRAP",
                "SIGSYS")


def state_folders(cfg: AgentConfig, state_dir: Path) -> list[Path]:
    """Every folder the agent keeps its state in (records, counting checkpoints, outbox,
    command replay window, overrides): one agent per pole means one per each of them."""
    out = [state_dir, cfg.aggregates.path.parent]
    if cfg.mqtt is not None:
        out.append(cfg.mqtt.outbox_path.parent)
        if cfg.mqtt.commands.replay_path is not None:
            out.append(cfg.mqtt.commands.replay_path.parent)
    if cfg.lighting is not None:
        out.append(cfg.lighting.overrides_path.parent)
    return out


def stop_signals() -> list[signal.Signals]:
    """:data:`STOP_SIGNALS` this platform has, and every real-time signal (their default
    ends the process too)."""
    found = [getattr(signal, n) for n in STOP_SIGNALS if hasattr(signal, n)]
    if hasattr(signal, "SIGRTMIN"):
        found += [s for s in signal.valid_signals()
                  if signal.SIGRTMIN <= s <= signal.SIGRTMAX]
    return found


def run_agent(config: Path, duration: float | None = None, live: bool = True) -> int:
    """Load the config, run until stopped (or ``duration`` real seconds), return an exit
    code: 0 stopped, 1 invalid config, 2 bad environment, 3 internal error. Every signal of
    :data:`STOP_SIGNALS` stops it cleanly from the first line on: one that comes while it
    starts is acted on as soon as the parts are up (they are then stopped as on any
    stop)."""
    stop = threading.Event()
    why = ["stopped"]

    def on_signal(signum: int, _frame: object) -> None:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        log.warning("%s: stopping; the lamps go to their safe level", name)
        if not stop.is_set():           # the first reason stays (a second signal, a crash)
            why[0] = f"stopped by {name}"
        stop.set()

    for sig in stop_signals():
        with contextlib.suppress(OSError, ValueError):
            signal.signal(sig, on_signal)
    try:
        cfg = load_config(config)
    except ConfigError as e:
        for p in e.problems:
            print(p, file=sys.stderr)
        print(f"{config}: INVALID, not starting", file=sys.stderr)
        return 1
    try:
        clock = from_environment()
    except ValueError as e:
        print(f"agent: error: {e}", file=sys.stderr)
        return 2
    state_dir = state_directory(cfg.aggregates.path.parent)
    lock_dirs = state_folders(cfg, state_dir)
    try:
        lock = take_locks(lock_dirs)    # held until the process ends
    except AlreadyRunning as e:
        notifier = Notifier()
        if not notifier.enabled:        # a shell: one line, and no start
            print(e, file=sys.stderr)
            return 2
        # systemd: an exit would be restarted until StartLimitAction reboots the pole
        print(f"{e}; waiting for it to end", file=sys.stderr, flush=True)
        lock = wait_for_lock(lock_dirs, stop, notifier)
        if lock is None:
            print(f"agent: {why[0]} while waiting for the other agent",
                  file=sys.stderr)
            return 0
        print("agent: the other agent ended: starting", file=sys.stderr, flush=True)
    # a watchdog kill (SIGABRT) or a hard fault prints every thread's stack to the journal
    faulthandler.enable()
    supervisor = Supervisor(state_dir)
    agent = Agent(cfg, config, clock)
    agent.service_figures = supervisor.figures
    agent.start()
    t0 = time.monotonic()
    last_print = 0.0
    rc = 0
    print(f"polelink agent: device {cfg.device.id} at {cfg.device.site}, "
          f"{len(cfg.cameras)} camera(s), {cfg.aggregates.interval_s} s intervals -> "
          f"{cfg.aggregates.path}"
          + (f"; lighting: {len(cfg.lighting.groups)} group(s)" if cfg.lighting else ""),
          flush=True)
    try:
        while not stop.is_set():
            agent.wake.wait(0.25)       # (a command wakes it early)
            agent.wake.clear()
            if stop.is_set():
                break
            for r in agent.step():
                where = r.line or r.zone
                print(f"\n{r.to_json()['interval_start']} {r.camera}/{where}: total {r.total} "
                      f"{r.counts} frames {r.frames_analysed} dropped {r.frames_dropped} "
                      f"camera {r.camera_state}", flush=True)
            if live and time.monotonic() - last_print >= 1.0:
                last_print = time.monotonic()
                end = "\r" if sys.stdout.isatty() else "\n"
                print(agent.status_line()[:240].ljust(120), end=end, flush=True)
            supervisor.step(agent.heartbeats(), agent.parts_up, agent.service_status)
            if duration is not None and time.monotonic() - t0 >= duration:
                why[0] = "--duration reached"
                break
            if agent.restart_for is not None:
                why[0] = f"update: switched to release {agent.restart_for}"
                print(f"\nupdate: switched to release {agent.restart_for}; exiting so the "
                      "supervisor starts it", flush=True)
                break
            if agent.all_ended() and agent.lighting is None:
                log.info("all sources ended")
                why[0] = "all sources ended"
                break
    except Exception as e:
        log.exception("internal error in the main loop; stopping with the lamps at their "
                      "safe level")
        why[0] = f"internal error: {type(e).__name__}: {e}"
        rc = 3
    finally:
        supervisor.stopping(why[0])
        try:
            agent.stop()
        except Exception as e:
            log.exception("internal error while stopping")
            why[0] += f"; internal error while stopping: {type(e).__name__}: {e}"
            rc = 3
        supervisor.finished(rc, why[0])
        for held in lock:
            held.close()                # the next agent may start
        print(f"\nstopped; {agent.sink.written} aggregate records in {cfg.aggregates.path}"
              + ("; lamps left at their safe level" if agent.lighting else ""), flush=True)
    return rc
