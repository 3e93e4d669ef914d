"""Plays systemd's part for a PoleRig's agent: the notify socket, the watchdog and the
restart, with the unit file's timings (``deploy/systemd/polelink.service``) or shorter ones.

What systemd does, and this does: no ``WATCHDOG=1`` for ``WatchdogSec`` → the watchdog
signal (SIGABRT); still there after ``TimeoutAbortSec`` (a stopped process cannot act on it)
→ SIGKILL; an exit for any reason → a new start after ``RestartSec`` (``Restart=always``).
Used by ``bench/hung_agent.py`` (the shipped timings) and its short mode in the tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT
from tests.pole_rig import PoleRig

WATCHDOG_USEC = 2_000_000        # the tests' default: a ping every second

UNIT = ROOT / "deploy" / "systemd" / "polelink.service"


class FakeSystemd:
    """A bound datagram socket standing in for systemd's notification socket."""

    def __init__(self, tmp: Path, abstract: bool) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"polelink-test-{os.getpid()}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            path = tmp / "notify.sock"
            if len(str(path)) > 100:       # sun_path is 108 bytes
                path = Path(f"/tmp/polelink-notify-{os.getpid()}-{time.monotonic_ns()}")
            self.sock.bind(str(path))
            self.address = str(path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(ln.split("=", 1) for ln in data.decode().split("\n") if "=" in ln)
            self.messages.append((time.monotonic(), fields))

    def env(self) -> dict[str, str]:
        """The child's environment, as systemd would set it."""
        return {"NOTIFY_SOCKET": self.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}

    def times(self, key: str) -> list[float]:
        """When each message carrying ``key`` arrived."""
        return [t for t, f in self.messages if key in f]

    def statuses(self) -> list[str]:
        """Every STATUS= text, in order."""
        return [f["STATUS"] for _, f in self.messages if "STATUS" in f]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        if not self.address.startswith("@"):
            Path(self.address).unlink(missing_ok=True)


@dataclass(frozen=True)
class Timings:
    """The unit's watchdog, abort and restart timings, in seconds."""

    watchdog_s: float
    abort_s: float
    restart_s: float

    @classmethod
    def from_unit(cls, path: Path = UNIT) -> Timings:
        """The timings ``path`` sets (TimeoutAbortSec defaults to TimeoutStopSec, as in
        systemd)."""
        text = path.read_text()

        def value(key: str) -> float | None:
            m = re.search(rf"^{key}=(\d+(?:\.\d+)?)s?\s*$", text, re.M)
            return float(m.group(1)) if m else None
        stop = value("TimeoutStopSec") or 90.0
        return cls(value("WatchdogSec") or 0.0, value("TimeoutAbortSec") or stop,
                   value("RestartSec") or 0.1)


class PlayedSystemd:
    """Runs ``rig``'s agent as systemd would (see the module docstring); ``events`` keeps
    ``(monotonic time, what)`` for each kill and start."""

    def __init__(self, rig: PoleRig, notify: object, timings: Timings) -> None:
        self.rig, self.notify, self.t = rig, notify, timings
        self.events: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="systemd")

    def start(self) -> PlayedSystemd:
        self._start_agent()
        self._thread.start()
        return self

    def _start_agent(self) -> None:
        env = self.notify.env()  # type: ignore[attr-defined]
        env["WATCHDOG_USEC"] = str(int(self.t.watchdog_s * 1e6))
        self.rig.start(env=env)
        self.started = time.monotonic()
        self.events.append((self.started, "start"))

    def _last_ping(self) -> float:
        pings = [t for t in self.notify.times("WATCHDOG") if t >= self.started]  # type: ignore[attr-defined]
        return max(pings, default=self.started)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            proc = self.rig.proc
            assert proc is not None
            if proc.poll() is not None:             # exited: Restart=always
                self.events.append((time.monotonic(), f"exit {proc.returncode}"))
                if self._stop.wait(self.t.restart_s):
                    return
                self._start_agent()
                continue
            if time.monotonic() - self._last_ping() > self.t.watchdog_s:
                self.events.append((time.monotonic(), "watchdog: SIGABRT"))
                proc.send_signal(signal.SIGABRT)
                try:
                    proc.wait(self.t.abort_s)
                except Exception:                   # still there: SIGKILL
                    self.events.append((time.monotonic(), "abort timeout: SIGKILL"))
                    proc.kill()
                    proc.wait(10)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _sunset_near(lon: float, t: float) -> float:
    """The sunset (latitude 0, ``lon``) nearest to epoch ``t``, as the agent computes it."""
    from agent.common.sun import event_time
    day = t // 86400 * 86400
    times = [event_time("sunset", 0.0, lon, day + k * 86400) for k in (-1, 0, 1)]
    return min((x for x in times if x is not None), key=lambda x: abs(x - t))


def hung_across_sunset(tmp: Path, timings: Timings, lead_s: float = 45.0,
                       tries: int = 3) -> dict[str, float]:
    """The agent, run as systemd would with ``timings``, is lit off by day; a few seconds
    before sunset it stops (SIGSTOP: a hang no thread of its own can notice). Returns when
    the lamps came on, counted from sunset, and the kills and starts on the way. A start
    slower than ``lead_s`` (a busy machine) tries again with a later sunset, so the result
    never depends on the machine's speed."""
    from tests.pole_rig import longitude_where
    for attempt in range(tries):
        lead = lead_s * (2 ** attempt)
        lon = longitude_where(-0.833, time.time() + lead)
        sunset = _sunset_near(lon, time.time() + lead)       # the agent's own sunset
        (tmp / f"try{attempt}").mkdir(parents=True, exist_ok=True)
        rig = PoleRig(tmp / f"try{attempt}", '{kind: stream, url: "rtsp://127.0.0.1:9/x"}',
                      longitude=lon)
        notify = FakeSystemd(tmp / f"try{attempt}", abstract=True)
        sd = PlayedSystemd(rig, notify, timings)
        try:
            sd.start()
            end = time.monotonic() + lead
            while time.monotonic() < end and not notify.times("READY"):
                time.sleep(0.1)
            mono_sunset = time.monotonic() + (sunset - time.time())
            if not notify.times("READY") or mono_sunset - time.monotonic() < 3:
                continue                                # started too late: a later sunset
            if any(v > 0 for v in rig.levels()):
                raise AssertionError(f"lamps lit by day: {rig.levels()}")
            time.sleep(max(0.0, mono_sunset - time.monotonic() - 2))
            assert rig.proc is not None
            t_hang = time.monotonic()
            rig.proc.send_signal(signal.SIGSTOP)       # hung 2 s before sunset
            lit = rig.wait_levels(lambda lv: all(v >= 99 for v in lv),
                                  timings.watchdog_s + timings.abort_s + timings.restart_s
                                  + lead + 120)
            if lit is None:
                raise AssertionError("the lamps never came on after sunset:\n"
                                     + rig.output()[-3000:])
            return {"sunset_to_lit_s": round(lit - mono_sunset, 1),
                    "hang_before_sunset_s": round(mono_sunset - t_hang, 1),
                    "watchdog_s": timings.watchdog_s, "abort_s": timings.abort_s,
                    "restart_s": timings.restart_s,
                    "events": [(round(t - t_hang, 1), what) for t, what in sd.events
                               if t >= t_hang]}  # type: ignore[dict-item]
        finally:
            sd.stop()
            if rig.proc is not None and rig.proc.poll() is None:
                rig.proc.send_signal(signal.SIGCONT)
            notify.close()
            rig.close()
    raise AssertionError(f"the agent never started {lead_s:g} s before a sunset in "
                         f"{tries} tries")
