"""The platform's commands, as the running agent carries them out.

The MQTT thread only queues a command (``Agent.on_command``); the main loop validates it
(``agent.uplink.commands``) and calls the handler here. A handler checks everything
before changing anything and either answers at once (a dict) or posts work to the
lighting thread and returns its :class:`~concurrent.futures.Future`; the main loop
answers when the future completes (or times out), so no bus I/O ever runs on the MQTT
thread or blocks the main loop.
"""

from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.lighting.overrides import Override
from agent.records import iso
from agent.uplink.commands import CommandError
from agent.vision.snapshot import SnapshotStore, annotate

if TYPE_CHECKING:
    from agent.runner import Agent

#: The longest a maintenance override (below the floor at night, signed) may last.
MAINTENANCE_MAX_S = 3600


class CommandHandlers:
    """One method per command; :meth:`table` maps command names to them."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.snapshots = SnapshotStore(agent.cfg.aggregates.path.parent / "snapshots")
        m = agent.cfg.mqtt
        self.overrides_per_minute = m.commands.overrides_per_minute if m else 12
        self._override_times: deque[float] = deque()

    def _rate_limit(self) -> None:
        """At most ``overrides_per_minute`` override commands in any 60 s (a stolen account
        or a runaway platform must not flicker the road)."""
        now = time.monotonic()
        while self._override_times and now - self._override_times[0] >= 60:
            self._override_times.popleft()
        if len(self._override_times) >= self.overrides_per_minute:
            raise CommandError(f"rate limit: at most {self.overrides_per_minute} override "
                               "commands a minute; not run")
        self._override_times.append(now)

    def table(self) -> dict[str, Any]:
        """Command name → handler."""
        return {"ping": self.ping, "set_override": self.set_override,
                "clear_override": self.clear_override, "reload_config": self.reload_config,
                "request_snapshot": self.request_snapshot, "rebirth": self.rebirth,
                "update": self.update}

    def ping(self, _args: dict[str, Any]) -> dict[str, Any]:
        """Proof of life, with the agent's clock and version."""
        return {"pong": iso(self.agent.clock.time()), "version": __version__}

    def _groups(self, args: dict[str, Any]) -> list[str]:
        lighting = self.agent.lighting
        if lighting is None:
            raise CommandError("this pole has no lighting section")
        names = [g.name for g in lighting.cfg.groups]
        name = args.get("group", "*")
        if name == "*":
            return names
        if name not in names:
            raise CommandError(f"no luminaire group {name!r}; groups: {', '.join(names)}")
        return [name]

    def set_override(self, args: dict[str, Any]) -> Future:
        """Override a group's level until ``expires_in_s`` (ramped, durable)."""
        groups = self._groups(args)
        self._rate_limit()
        lighting = self.agent.lighting
        assert lighting is not None
        maintenance = args.get("maintenance", False) is True
        if maintenance:
            guard = self.agent.dispatcher.guard
            if guard is None or guard.verify_key is None:
                raise CommandError("a maintenance override needs a pole that accepts only "
                                   "signed commands (mqtt.command_key); not run")
            if int(args["expires_in_s"]) > MAINTENANCE_MAX_S:
                raise CommandError(f"a maintenance override lasts at most "
                                   f"{MAINTENANCE_MAX_S} s; not run")
        until = self.agent.clock.time() + int(args["expires_in_s"])
        o = Override(float(args["level_pct"]), int(args.get("priority", 5)), until,
                     self.agent.dispatcher.current or "", maintenance)
        fut = lighting.submit(lambda: lighting.set_override(groups, o))
        return _then(fut, lambda applied: {
            "groups": groups, "level_pct": o.level_pct, "priority": o.priority,
            "expires_at": iso(until), "level_now_pct": applied})

    def clear_override(self, args: dict[str, Any]) -> Future:
        """Remove overrides (one priority, or all); the schedule applies again."""
        groups = self._groups(args)
        self._rate_limit()
        lighting = self.agent.lighting
        assert lighting is not None
        prio = args.get("priority")
        fut = lighting.submit(lambda: lighting.clear_override(groups, prio))
        return _then(fut, lambda n: {"groups": groups, "cleared": n})

    def reload_config(self, _args: dict[str, Any]) -> dict[str, Any]:
        """Reload the provisioning file transactionally (see ``Agent.reload``)."""
        return self.agent.reload()

    def request_snapshot(self, args: dict[str, Any]) -> dict[str, Any]:
        """The running camera's last frame, annotated, written on the pole (the newest few
        are kept)."""
        workers = self.agent.workers
        if not workers:
            raise CommandError("this pole has no camera")
        name = args.get("camera") or next(iter(workers))
        w = workers.get(name)
        if w is None:
            raise CommandError(f"no camera {name!r}; cameras: {', '.join(workers)}")
        last = w.last
        if last is None:
            raise CommandError(f"camera {name} has delivered no frame yet (state {w.state})")
        img, info = annotate(last.image, w.cfg, last.detections)
        try:
            path = self.snapshots.save(name, img, last.wall)
        except OSError as e:
            raise CommandError(f"cannot write the snapshot: {e}") from None
        return {"camera": name, "path": str(path), "frame_time": iso(last.wall), **info}

    def rebirth(self, _args: dict[str, Any]) -> dict[str, Any]:
        """Republish the retained birth."""
        up = self.agent.uplink
        return {"bdSeq": up.boot if up else None, "sent": bool(up and up.rebirth())}


    def update(self, args: dict[str, Any]) -> dict[str, Any]:
        """Start an update from a bundle URL or an uploaded bundle (``agent.update``): the
        arguments and the pole's state are checked here, the steps run on their own
        thread and report as ``update_*`` events."""
        from agent.update.install import UpdateRefused, parse_source

        up = self.agent.updater
        if up is None:
            raise CommandError("updates are not enabled on this pole (no update: section, or "
                               "its verify_key cannot be read); not run")
        try:
            source = parse_source(args, up.s)
            running = up.start(source, self.agent.dispatcher.current)
        except UpdateRefused as e:
            raise CommandError(f"update refused: {e}") from None
        return {"started": True, "running": running, "source": source.describe()[:300],
                "healthDeadlineS": up.s.health_deadline_s}


def _then(fut: Future, make: Any) -> Future:
    """A future of ``make(result)`` once ``fut`` is done (errors pass through)."""
    out: Future = Future()

    def done(f: Future) -> None:
        try:
            out.set_result(make(f.result()))
        except Exception as e:
            out.set_exception(e)

    fut.add_done_callback(done)
    return out
