"""The update guard: the small, stable part of an update that never changes with a release.

A new release that crashes at start never runs its own code, so the rollback cannot live
in it. This file does: it uses the standard library only and is installed once, at a fixed
path outside the releases (``/usr/local/lib/polelink/update-guard.py``), and systemd runs it

- before every start of the agent (``ExecStartPre=``, command ``start``): while a release
  is on trial it counts the start; after ``max_starts`` starts without a commit, or past
  the trial's deadline, it switches ``current`` back to the previous release first;
- after every stop (``ExecStopPost=``, command ``stopped``): it records why the agent
  stopped (systemd's ``SERVICE_RESULT``, ``EXIT_CODE``, ``EXIT_STATUS``) for the reason;
- from a timer (``polelink-update-guard.timer``, command ``tick``): a release that starts
  but never reports healthy is rolled back at its deadline and the unit restarted.

Layout under the root (``--root``, else ``$POLELINK_ROOT``, else ``/var/lib/polelink``)::

    releases/<version>/   one release: venv/, models/, manifest.json (.incomplete while
                          it is being installed)
    current  -> releases/<version>   the one systemd starts (switched atomically)
    previous -> releases/<version>   the last committed one before it
    update/trial.json     present while a release is on trial (see :class:`Trial`)
    update/events.jsonl   what happened while no agent could say so; the agent publishes
                          these as events when it is up again, then empties the file
    update/lock           taken by everyone who changes the above
    uploads/              bundles put on the pole for an ``update`` command by path

The agent (``agent.update``) imports this module for the same layout; nothing here imports
the agent. A fault in the guard never stops the agent from starting: every command ends
with exit code 0 except where stated, after one line on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_ROOT = "/var/lib/polelink"
#: Release names: what a bundle's version may be (also a safe directory name).
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$")
#: ``tick``'s exit code when it rolled back (the caller restarts the agent).
EXIT_ROLLED_BACK = 10


def valid_version(v: object) -> bool:
    """True when ``v`` may name a release (letters, digits, ``.``, ``_``, ``+``, ``-``)."""
    return isinstance(v, str) and bool(VERSION_RE.match(v)) and ".." not in v


@dataclass
class Trial:
    """A release on trial: switched to, not yet committed."""

    to: str                           # the release on trial
    previous: str                     # the release to go back to
    started: float                    # when it was switched (POSIX time)
    deadline: float                   # commit by then (POSIX time), or it is rolled back
    max_starts: int                   # starts allowed before it is rolled back
    starts: int = 0                   # starts counted by the guard so far
    last_exit: str = ""               # why the agent last stopped (from ``stopped``)
    via: str = ""                     # the command's correlation id, for the events
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Trial:
        """A trial from its file (ValueError when it is not one)."""
        try:
            t = cls(str(d["to"]), str(d["previous"]), float(d["started"]),
                    float(d["deadline"]), int(d["max_starts"]), int(d.get("starts", 0)),
                    str(d.get("last_exit", "")), str(d.get("via", "")),
                    dict(d.get("extra") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"not a trial record: {e}") from None
        if not (valid_version(t.to) and valid_version(t.previous)):
            raise ValueError("not a trial record: bad release names")
        return t


class Layout:
    """The release folders and files under one root; see the module docstring."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.releases = self.root / "releases"
        self.current = self.root / "current"
        self.previous = self.root / "previous"
        self.state = self.root / "update"
        self.trial_file = self.state / "trial.json"
        self.journal = self.state / "events.jsonl"
        self.uploads = self.root / "uploads"
        self.downloads = self.state / "downloads"

    # -- releases ---------------------------------------------------------------------
    def release(self, version: str) -> Path:
        """The folder of one release."""
        if not valid_version(version):
            raise ValueError(f"{version!r} is not a valid release name")
        return self.releases / version

    def complete(self, version: str) -> bool:
        """The release exists and finished installing."""
        d = self.release(version)
        return d.is_dir() and not (d / ".incomplete").exists()

    def target(self, link: Path) -> str | None:
        """The release a link (``current`` / ``previous``) names, or None."""
        try:
            dest = os.readlink(link)
        except OSError:
            return None
        name = Path(dest).name
        return name if valid_version(name) and Path(dest).parent.name == "releases" else None

    def point(self, link: Path, version: str) -> None:
        """Point ``link`` at a release atomically: a symlink under a temporary name, then
        rename over the old one (a reader sees the old or the new, never none)."""
        self.release(version)
        tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(f"releases/{version}", tmp)
        os.replace(tmp, link)
        _fsync_dir(link.parent)

    # -- the trial --------------------------------------------------------------------
    def read_trial(self) -> Trial | None:
        """The trial in progress, or None (an unreadable file is reported and ignored)."""
        try:
            text = self.trial_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return Trial.from_json(json.loads(text))
        except ValueError as e:
            _say(f"{self.trial_file}: {e}; ignored")
            return None

    def write_trial(self, trial: Trial) -> None:
        """Write the trial record atomically (temp file, fsync, rename)."""
        _write_atomic(self.trial_file, json.dumps(asdict(trial), indent=1))

    def end_trial(self) -> None:
        """Remove the trial record."""
        with contextlib.suppress(FileNotFoundError):
            self.trial_file.unlink()
        _fsync_dir(self.state)

    # -- events for the agent ----------------------------------------------------------
    def record(self, event: str, severity: str, detail: dict[str, Any]) -> None:
        """Append an event for the agent to publish when it is up."""
        self.state.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"event": event, "severity": severity, "at": time.time(),
                           "detail": detail}, sort_keys=True)
        with open(self.journal, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def take_events(self) -> list[dict[str, Any]]:
        """The recorded events (and the file emptied). Call with :meth:`lock` held."""
        try:
            lines = self.journal.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for ln in lines[-1000:]:
            try:
                ev = json.loads(ln)
            except ValueError:
                continue                      # a line cut by a power loss
            if isinstance(ev, dict) and isinstance(ev.get("event"), str):
                out.append(ev)
        self.journal.unlink()
        return out

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock for changing links, the trial and the journal."""
        self.state.mkdir(parents=True, exist_ok=True)
        with open(self.state / "lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- rollback -----------------------------------------------------------------------
    def roll_back(self, trial: Trial, reason: str) -> bool:
        """Switch ``current`` back to the trial's previous release and record why (call
        with :meth:`lock` held). False when the previous release is gone (nothing done)."""
        if not self.complete(trial.previous):
            _say(f"cannot roll back to {trial.previous}: {self.release(trial.previous)} is "
                 "missing or incomplete; staying on the trial release")
            self.record("update_rollback_failed", "alarm", {
                "version": trial.to, "previous": trial.previous, "reason": reason,
                "error": f"previous release {trial.previous} is missing or incomplete"})
            self.end_trial()
            return False
        self.point(self.current, trial.previous)
        with contextlib.suppress(OSError):
            (self.release(trial.to) / ".failed").write_text(reason + "\n")
        self.record("update_rolled_back", "alarm", {
            "version": trial.to, "previous": trial.previous, "reason": reason,
            "starts": trial.starts, "lastExit": trial.last_exit or None,
            "correlationId": trial.via or None,
            "trialSeconds": round(time.time() - trial.started, 1)})
        self.end_trial()
        _say(f"rolled back from {trial.to} to {trial.previous}: {reason}")
        return True


# -- the guard's commands --------------------------------------------------------------------
def on_start(layout: Layout, now: float | None = None) -> str:
    """Before each start: count a trial start, roll back when over the limit or the
    deadline. Returns what was done, in words."""
    now = time.time() if now is None else now
    with layout.lock():
        trial = layout.read_trial()
        cur = layout.target(layout.current)
        if trial is None:
            if (cur is None or not layout.complete(cur)) and layout.target(layout.previous):
                prev = layout.target(layout.previous)
                assert prev is not None
                if layout.complete(prev) and prev != cur:
                    layout.point(layout.current, prev)
                    layout.record("update_rolled_back", "alarm", {
                        "version": cur, "previous": prev,
                        "reason": f"current release {cur or '(none)'} is missing or "
                                  "incomplete"})
                    return f"current was unusable: back to {prev}"
            return "no trial"
        if cur != trial.to:
            # the switch never happened (power lost between the record and the switch) or
            # someone switched by hand: the trial is void
            layout.end_trial()
            return f"trial of {trial.to} void: current is {cur}"
        if now > trial.deadline:
            layout.roll_back(trial, f"not healthy within {trial.deadline - trial.started:.0f} s "
                                    f"(deadline passed at start {trial.starts + 1})")
            return "rolled back: deadline"
        if trial.starts >= trial.max_starts:
            layout.roll_back(trial, f"{trial.starts} start(s) without reporting healthy "
                                    f"(the limit is {trial.max_starts})"
                             + (f"; last exit: {trial.last_exit}" if trial.last_exit else ""))
            return "rolled back: starts"
        trial.starts += 1
        layout.write_trial(trial)
        return f"trial of {trial.to}: start {trial.starts} of {trial.max_starts}"


def on_stopped(layout: Layout, env: dict[str, str] | None = None) -> str:
    """After each stop: remember why the agent stopped (systemd's variables)."""
    env = dict(os.environ) if env is None else env
    why = ", ".join(f"{k.lower()}={env[k]}" for k in ("SERVICE_RESULT", "EXIT_CODE",
                                                       "EXIT_STATUS") if env.get(k))
    with layout.lock():
        trial = layout.read_trial()
        if trial is None:
            return "no trial"
        if trial.starts == 0:          # the release that switched to it stopped, as it must
            return f"trial of {trial.to}: not started yet"
        trial.last_exit = why[:200] or "stopped"
        layout.write_trial(trial)
        return f"trial of {trial.to}: stopped ({trial.last_exit})"


def on_tick(layout: Layout, now: float | None = None) -> bool:
    """From the timer: True when the trial's deadline passed and it was rolled back."""
    now = time.time() if now is None else now
    with layout.lock():
        trial = layout.read_trial()
        if trial is None or now <= trial.deadline:
            return False
        if layout.target(layout.current) != trial.to:
            layout.end_trial()
            return False
        return layout.roll_back(trial, f"not healthy within "
                                       f"{trial.deadline - trial.started:.0f} s")


def status(layout: Layout) -> dict[str, Any]:
    """What is installed, current, previous and on trial."""
    rels = sorted(p.name for p in layout.releases.iterdir()) if layout.releases.is_dir() else []
    trial = layout.read_trial()
    return {"root": str(layout.root), "current": layout.target(layout.current),
            "previous": layout.target(layout.previous), "releases": rels,
            "trial": asdict(trial) if trial else None}


def restart_unit(unit: str) -> str:
    """Make systemd start ``unit`` again: SIGTERM to its main process (allowed to the
    service's own user; ``Restart=always`` starts it again, now the rolled-back release),
    else ``systemctl restart`` (needs root)."""
    try:
        r = subprocess.run(["systemctl", "show", "--property", "MainPID", "--value", unit],
                           capture_output=True, text=True, timeout=30, check=False)
        pid = int(r.stdout.strip() or 0)
        if pid > 1:
            os.kill(pid, signal.SIGTERM)
            return f"sent SIGTERM to {unit} (pid {pid}); systemd starts it again"
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    r2 = subprocess.run(["systemctl", "restart", unit], capture_output=True, text=True,
                        timeout=120, check=False)
    return f"systemctl restart {unit}: exit {r2.returncode} {r2.stderr.strip()[:200]}"


def main(argv: list[str] | None = None) -> int:
    """``update-guard {start,stopped,tick,status,rollback} [--root DIR]``."""
    p = argparse.ArgumentParser(prog="update-guard", description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=("start", "stopped", "tick", "status", "rollback"))
    p.add_argument("--root", default=os.environ.get("POLELINK_ROOT", DEFAULT_ROOT),
                   help="the releases' root (default $POLELINK_ROOT, else /var/lib/polelink)")
    p.add_argument("--restart-unit", metavar="UNIT",
                   help="tick: after a rollback, `systemctl restart UNIT`")
    a = p.parse_args(argv)
    layout = Layout(a.root)
    try:
        if a.action == "start":
            _say(on_start(layout))
        elif a.action == "stopped":
            _say(on_stopped(layout))
        elif a.action == "tick":
            if on_tick(layout):
                if a.restart_unit:
                    _say(restart_unit(a.restart_unit))
                return EXIT_ROLLED_BACK
        elif a.action == "status":
            print(json.dumps(status(layout), indent=1))
        else:
            with layout.lock():
                trial = layout.read_trial()
                cur, prev = layout.target(layout.current), layout.target(layout.previous)
                if trial is None:
                    if prev is None or prev == cur:
                        _say("nothing to roll back to: no previous release")
                        return 1
                    trial = Trial(cur or "none", prev, time.time(), time.time(), 0)
                if not layout.roll_back(trial, "rolled back by hand (update-guard rollback)"):
                    return 1
            _say("restart the agent: systemctl restart polelink")
    except Exception as e:          # never keep the agent from starting
        _say(f"{a.action}: {type(e).__name__}: {e}")
        return 1 if a.action in ("status", "rollback") else 0
    return 0


def _say(msg: str) -> None:
    print(f"update-guard: {msg}", file=sys.stderr, flush=True)


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


if __name__ == "__main__":
    sys.exit(main())
