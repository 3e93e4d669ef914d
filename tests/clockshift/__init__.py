"""Run a command with the machine's wall clock moved to another hour, date and time zone,
to prove that no test depends on when it runs (``make test-clock`` runs the suite so).

The command, and every process it starts that keeps its environment (the agent,
mosquitto, MicroPython, Chromium), reads a wall clock shifted forward to the setting:
``clockshift.c`` is preloaded (``LD_PRELOAD``), built with the C compiler on first use into
``$XDG_CACHE_HOME/polelink`` (``~/.cache/polelink``). The monotonic clocks, which timeouts
use, and file times (the kernel's) are left alone.

Limits: a program that waits until an absolute ``CLOCK_REALTIME`` deadline it computed from
the shifted clock, on a condition variable, a semaphore or a timer, waits its timeout *plus
the shift* (``clock_nanosleep`` is corrected). Python 3.11, mosquitto and MicroPython wait
on the monotonic clock or with relative timeouts, so the suite is not affected; another C
program may be. A child started with a cleared environment, a static or a setuid binary
reads the real clock. The shift is forward only, so that times stay after the project's
build date and the test certificates' start.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

SOURCE = Path(__file__).with_name("clockshift.c")
ENV_SHIFT = "POLELINK_CLOCK_SHIFT_S"
#: The example lamp node's site (node/config.example.json): Hamburg.
PLACE = (53.55, 9.99)
#: ``--date`` and the settings' dates must be before this year (the agent's clocks, too).
LAST_YEAR = 2199
EU_SPRING_FORWARD = "eu-spring-forward"

USAGE = """\
python -m tests.clockshift [--at TIME[,TIME...]] [--date YYYY-MM-DD] [--tz ZONE]
                           [--place LAT,LON] -- COMMAND...
python -m tests.clockshift --campaign -- COMMAND..."""

DESCRIPTION = """\
Runs COMMAND once per setting with the machine's wall clock moved forward to it (see
tests/clockshift/__init__.py for how and for the limits).

  TIME     HH:MM (UTC), or sunrise or sunset (UTC, at --place: by default the example lamp
           node's site, Hamburg); the next time it comes, on --date when given
  --campaign  five settings: midnight UTC (TZ=UTC); sunrise at the node's site
           (TZ=Asia/Kolkata); noon UTC (TZ=America/Los_Angeles); sunset at the node's site
           (TZ=Europe/Berlin: a node that never synchronised its clock is then at full
           output); 00:55 UTC on the next last Sunday of March (TZ=Europe/Berlin: the
           clocks go forward 5 minutes later)

A line on stderr before each run and a summary after. Exit status: one setting: the
command's own; several: 0 if every run passed, 1 if one failed; 2 a usage error or the
shim cannot be built; 126 the command cannot be run, 127 it is not found; 130 Ctrl-C
(the command is given time to clean up, and the runs so far are summarised)."""


class BuildError(RuntimeError):
    """``clockshift.c`` could not be built (a compiler error, an unwritable cache)."""


class NoCompiler(BuildError):
    """No C compiler to build ``clockshift.c`` with."""


@dataclass(frozen=True)
class Setting:
    """One clock setting: a time of day (UTC), optionally a date, and the TZ variable."""

    at: str                    # "HH:MM" (UTC), "sunrise" or "sunset" (at ``place``)
    tz: str = "UTC"
    day: str | None = None     # "YYYY-MM-DD", EU_SPRING_FORWARD, or None: the next one
    why: str = ""
    place: tuple[float, float] = PLACE


CAMPAIGN: tuple[Setting, ...] = (
    Setting("00:00", "UTC", why="midnight UTC"),
    Setting("sunrise", "Asia/Kolkata", why="sunrise at the example node's site"),
    Setting("12:00", "America/Los_Angeles", why="noon UTC"),
    Setting("sunset", "Europe/Berlin",
            why="sunset at the example node's site: a never-synchronised node at 100 %"),
    Setting("00:55", "Europe/Berlin", EU_SPRING_FORWARD,
            why="5 minutes before Europe's clocks go forward"),
)


# -- the shim ------------------------------------------------------------------------------

def build(cache: Path | None = None) -> Path:
    """The shared object, compiled from ``clockshift.c`` once per version of that file into
    ``cache`` (default ``$XDG_CACHE_HOME/polelink`` or ``~/.cache/polelink``). Raises
    :class:`NoCompiler` or :class:`BuildError`, each with a one-line reason."""
    text = SOURCE.read_bytes()
    tag = hashlib.sha256(text).hexdigest()[:12]
    if cache is None:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        cache = Path(base) / "polelink"
    out = cache / f"clockshift-{tag}.so"
    if out.exists():
        return out
    cc = shlex.split(os.environ.get("CC", "")) or \
        [c for c in (shutil.which("cc") or shutil.which("gcc"),) if c]
    if not cc:
        raise NoCompiler("no C compiler (cc or gcc) to build tests/clockshift/clockshift.c "
                         "(Debian: apt-get install gcc libc6-dev)")
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([*cc, "-O2", "-shared", "-fPIC", "-Wall", "-o", str(tmp),
                            str(SOURCE), "-ldl"], capture_output=True, text=True)
    except OSError as e:
        if isinstance(e, FileNotFoundError) and e.filename == cc[0]:
            raise NoCompiler(f"the C compiler {cc[0]} (CC) is not there") from None
        raise BuildError(f"cannot build {SOURCE.name} in {cache}: {e.strerror or e}") from None
    if r.returncode != 0:
        tmp.unlink(missing_ok=True)
        first = next((ln for ln in r.stderr.splitlines() if "error" in ln), r.stderr.strip())
        raise BuildError(f"building {SOURCE.name} failed: {first[:300]}")
    tmp.replace(out)
    return out


# -- settings --------------------------------------------------------------------------------

def real_time() -> float:
    """The machine's real clock, also when this process itself runs shifted (the suite
    under ``make test-clock`` runs the tool's own tests too)."""
    shifted = "clockshift" in os.environ.get("LD_PRELOAD", "")
    try:
        shift = float(os.environ.get(ENV_SHIFT, "0") or 0) if shifted else 0.0
    except ValueError:
        shift = 0.0
    return time.time() - shift


def parse_at(text: str) -> str:
    """``HH:MM``, ``sunrise`` or ``sunset``; ValueError saying what would be valid."""
    t = text.strip().lower()
    if t in ("sunrise", "sunset"):
        return t
    m = re.fullmatch(r"(\d{2}):(\d{2})", t)
    if not m or int(m[1]) > 23 or int(m[2]) > 59:
        raise ValueError(f"--at {text!r}: expected HH:MM (UTC, 00:00 to 23:59), sunrise or "
                         "sunset")
    return t


def parse_date(text: str, now: float) -> str:
    """A future ``YYYY-MM-DD`` before :data:`LAST_YEAR` + 1."""
    try:
        d = date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--date {text!r}: expected YYYY-MM-DD") from None
    if d.year > LAST_YEAR:
        raise ValueError(f"--date {text}: the clock can be moved to dates up to {LAST_YEAR}")
    if d < datetime.fromtimestamp(now, UTC).date():
        raise ValueError(f"--date {text} has passed: the clock is only moved forward")
    return text


def parse_tz(text: str) -> str:
    """An IANA zone name the system knows, or a POSIX TZ rule (``CET-1CEST,M3.5.0,...``,
    ``<+07>-7``)."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if re.fullmatch(r"(<[+-]?[A-Za-z0-9+-]+>|[A-Za-z]{3,})[+-]?\d{1,2}(:\d{2})?.*", text):
        return text                                         # a POSIX rule
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"--tz {text!r}: not a time zone this system knows (e.g. "
                         "Europe/Berlin, Asia/Kolkata, UTC) nor a POSIX TZ rule") from None
    return text


def parse_place(text: str) -> tuple[float, float]:
    """``LAT,LON`` in degrees."""
    try:
        lat, lon = (float(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--place {text!r}: expected LAT,LON in degrees, e.g. "
                         "53.55,9.99") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise ValueError(f"--place {text}: latitude -90..90, longitude -180..180")
    return lat, lon


def _eu_spring_forward(after: date) -> date:
    """The next last Sunday of March on or after ``after``."""
    for year in (after.year, after.year + 1):
        d = date(year, 3, 31)
        d -= timedelta(days=(d.weekday() - 6) % 7)
        if d >= after:
            return d
    raise AssertionError("unreachable")


def target_time(setting: Setting, now: float | None = None) -> float:
    """The epoch the wall clock should read under ``setting`` (after the real ``now``)."""
    real = real_time() if now is None else now
    today = datetime.fromtimestamp(real, UTC).date()
    if setting.day == EU_SPRING_FORWARD:
        days = [_eu_spring_forward(today)]
        days.append(_eu_spring_forward(days[0] + timedelta(days=1)))
    elif setting.day:
        days = [date.fromisoformat(setting.day)]
    else:
        days = [today + timedelta(days=k) for k in range(3)]
    for d in days:
        midnight = datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()
        if setting.at in ("sunrise", "sunset"):
            from agent.common.sun import event_time

            t = event_time(setting.at, setting.place[0], setting.place[1], midnight)
            if t is None:
                raise ValueError(f"no {setting.at} at {setting.place} on {d} (polar day or "
                                 "night)")
        else:
            hh, mm = (int(x) for x in setting.at.split(":"))
            t = midnight + hh * 3600 + mm * 60
        if t > real:
            return t
    raise ValueError(f"{setting.day} {setting.at} UTC has passed: the clock is only moved "
                     "forward")


def shift_for(setting: Setting, now: float | None = None) -> float:
    """Seconds to add to the real wall clock (always > 0) so that it reads ``setting``;
    ``now``: the real time (default :func:`real_time`)."""
    real = real_time() if now is None else now
    return target_time(setting, real) - real


def environment(setting: Setting, so: Path, now: float | None = None,
                base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment that runs a command at ``setting`` (``now``: the real time)."""
    env = dict(os.environ if base is None else base)
    preload = [p for p in env.get("LD_PRELOAD", "").replace(":", " ").split()
               if "clockshift" not in Path(p).name]      # one shim: the shifts do not add up
    env["LD_PRELOAD"] = " ".join([str(so), *preload])
    env[ENV_SHIFT] = f"{shift_for(setting, now):.3f}"
    env["TZ"] = setting.tz
    return env


# -- the command line ------------------------------------------------------------------------

def _say(text: str) -> None:
    print(f"clockshift: {text}", file=sys.stderr, flush=True)


class _Stopped(Exception):
    """SIGINT or SIGTERM reached this process."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _run(cmd: list[str], env: dict[str, str]) -> int:
    """Run ``cmd`` in its own process group, so that a Ctrl-C (or ``kill``) reaches it
    exactly once, passed on from here; give it up to two minutes to clean up (a test run
    stops its brokers and agents), then raise :class:`_Stopped`."""
    def stop(signum: int, _frame: object) -> None:
        raise _Stopped(signum)

    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        p = subprocess.Popen(cmd, env=env, process_group=0)
        try:
            return p.wait()
        except _Stopped as e:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, signal.SIG_IGN)   # a second Ctrl-C must not cut cleanup
            for sig, grace in ((e.signum, 120.0), (signal.SIGTERM, 30.0),
                               (signal.SIGKILL, 10.0)):
                with contextlib.suppress(OSError):
                    p.send_signal(sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(grace)
                    break
            raise
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _settings(args: argparse.Namespace, p: argparse.ArgumentParser, now: float
              ) -> list[Setting]:
    if args.campaign:
        if args.at or args.date or args.tz or args.place:
            p.error("--campaign has its own settings: give it no --at, --date, --tz or --place")
        return list(CAMPAIGN)
    try:
        ats = [parse_at(a) for a in (args.at or "15:50").split(",")]
        day = parse_date(args.date, now) if args.date else None
        tz = parse_tz(args.tz) if args.tz else "UTC"
        place = parse_place(args.place) if args.place else PLACE
    except ValueError as e:
        p.error(str(e))
    return [Setting(a, tz, day, place=place) for a in ats]


def main(argv: list[str] | None = None) -> int:
    """Command line; see :data:`DESCRIPTION`."""
    p = argparse.ArgumentParser(prog="python -m tests.clockshift", usage=USAGE,
                                description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--at", help="TIME[,TIME...]: HH:MM (UTC), sunrise or sunset (15:50)")
    p.add_argument("--date", help="YYYY-MM-DD (UTC), today or later, up to 2199")
    p.add_argument("--tz", help="the command's TZ: a zone such as Europe/Berlin, or a POSIX "
                                "rule (UTC)")
    p.add_argument("--place", help="LAT,LON for sunrise and sunset (the example node's "
                                   "site, 53.55,9.99)")
    p.add_argument("--campaign", action="store_true", help="the five settings above")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND...")
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("no command given (put it after --)")
    now = real_time()
    settings = _settings(args, p, now)
    try:
        for s in settings:
            shift_for(s, now)
        so = build()
    except (ValueError, BuildError) as e:
        _say(str(e))
        return 2
    results: list[tuple[str, int, float]] = []
    interrupted = False
    for s in settings:
        now = real_time()
        env = environment(s, so, now)
        shown = datetime.fromtimestamp(now + float(env[ENV_SHIFT]) + 0.5, UTC).strftime(
            "%Y-%m-%d %H:%M")
        label = f"{shown} UTC, TZ={s.tz}" + (f" ({s.why})" if s.why else "")
        _say(f"{label}: {shlex.join(cmd)}")
        t0 = time.monotonic()
        try:
            rc = _run(cmd, env)
        except _Stopped:
            interrupted = True
            results.append((label, 130, time.monotonic() - t0))
            break
        except FileNotFoundError:
            _say(f"{cmd[0]}: command not found")
            return 127
        except PermissionError:
            _say(f"{cmd[0]}: cannot run it (permission denied)")
            return 126
        except OSError as e:
            _say(f"{cmd[0]}: cannot run it ({e.strerror or e})")
            return 126
        results.append((label, rc, time.monotonic() - t0))
    if len(settings) > 1 or interrupted:
        _say("summary")
        for label, rc, took in results:
            state = "interrupted" if rc == 130 and interrupted else \
                "passed" if rc == 0 else f"FAILED (exit {rc})"
            print(f"  {state:16} {took:7.0f} s  {label}", file=sys.stderr, flush=True)
    if interrupted:
        return 130
    if len(settings) == 1:
        return results[0][1]
    return 0 if all(rc == 0 for _, rc, _ in results) else 1
