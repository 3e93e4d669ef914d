"""Run commands with the machine's wall clock moved to another hour, date and time zone, to
prove that no test depends on when it runs.

``python -m tests.clockshift [--at HH:MM[,HH:MM...]] [--date YYYY-MM-DD] [--tz ZONE]
[--campaign] -- COMMAND...`` runs COMMAND once per setting, each time with ``clockshift.c``
preloaded (built here with the C compiler, once) so that COMMAND and every process it
starts (the agent, mosquitto, MicroPython, Chromium) read a wall clock shifted to that
UTC time; the monotonic clocks, which timeouts use, are left alone. ``--campaign`` runs the
settings of :data:`CAMPAIGN`: midnight, dawn, noon and dusk UTC (dusk is when a lamp node
that never synchronised its clock raises its output), each in a different time zone, and a
night on the day Europe's clocks go forward. It prints one line per run and exits 1 if any
run failed.

The shift is always forward (the next time the clock reads HH:MM, on ``--date`` when given):
a wall clock set back would turn the few absolute real-time waits that programs make
(a condition variable on ``CLOCK_REALTIME``) into hours-long ones.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

SOURCE = Path(__file__).with_name("clockshift.c")
ENV_SHIFT = "POLELINK_CLOCK_SHIFT_S"


@dataclass(frozen=True)
class Setting:
    """One clock setting: a UTC time of day, optionally a date, and the TZ variable."""

    at: str                    # "HH:MM", UTC
    tz: str = "UTC"
    day: str | None = None     # "YYYY-MM-DD"; None: the next time the clock reads ``at``
    why: str = ""


CAMPAIGN: tuple[Setting, ...] = (
    Setting("00:00", "UTC", why="midnight UTC"),
    Setting("07:40", "Asia/Kolkata", why="dawn in northern Europe in winter"),
    Setting("12:00", "America/Los_Angeles", why="noon UTC"),
    Setting("15:50", "Europe/Berlin", why="dusk in northern Europe in winter"),
    Setting("01:30", "Pacific/Auckland", "2027-03-28",
            why="the night Europe's clocks go forward"),
)


def build(cache: Path | None = None) -> Path:
    """The shared object, compiled from ``clockshift.c`` once per version of that file into
    ``cache`` (default ``$XDG_CACHE_HOME/polelink`` or ``~/.cache/polelink``)."""
    text = SOURCE.read_bytes()
    tag = hashlib.sha256(text).hexdigest()[:12]
    if cache is None:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        cache = Path(base) / "polelink"
    out = cache / f"clockshift-{tag}.so"
    if out.exists():
        return out
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc or gcc) to build tests/clockshift/clockshift.c; "
                           "on Debian: apt-get install gcc")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".{os.getpid()}.tmp")
    r = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-Wall", "-o", str(tmp), str(SOURCE),
                        "-ldl"], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"building {SOURCE.name} failed:\n{r.stderr.strip()}")
    tmp.replace(out)
    return out


def real_time() -> float:
    """The machine's real clock, also when this process itself runs shifted (the suite
    under ``make test-clock`` runs these tests too)."""
    shifted = "clockshift" in os.environ.get("LD_PRELOAD", "")
    return time.time() - (float(os.environ.get(ENV_SHIFT, "0") or 0) if shifted else 0.0)


def shift_for(setting: Setting, now: float | None = None) -> float:
    """Seconds to add to the real wall clock (always > 0) so that it reads ``setting``;
    ``now``: the real time (default :func:`real_time`)."""
    real = datetime.fromtimestamp(real_time() if now is None else now, UTC)
    hh, mm = (int(x) for x in setting.at.split(":"))
    day = date.fromisoformat(setting.day) if setting.day else real.date()
    target = datetime(day.year, day.month, day.day, hh, mm, tzinfo=UTC)
    if setting.day is None:
        while target <= real:
            target += timedelta(days=1)
    elif target <= real:
        raise ValueError(f"{setting.day} {setting.at} UTC has passed: the clock is only "
                         "shifted forward")
    return (target - real).total_seconds()


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


def _settings(args: argparse.Namespace) -> list[Setting]:
    if args.campaign:
        return list(CAMPAIGN)
    return [Setting(at.strip(), args.tz, args.date) for at in args.at.split(",")]


def main(argv: list[str] | None = None) -> int:
    """Command line; see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m tests.clockshift", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--at", default="15:50", help="UTC times of day, comma-separated (15:50)")
    p.add_argument("--date", help="the UTC date (YYYY-MM-DD, in the future)")
    p.add_argument("--tz", default="UTC", help="the TZ variable of the command (UTC)")
    p.add_argument("--campaign", action="store_true", help="the settings of CAMPAIGN")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND...")
    args = p.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("no command given (put it after --)")
    try:
        settings = _settings(args)
        for s in settings:
            shift_for(s)
        so = build()
    except (ValueError, RuntimeError) as e:
        print(f"clockshift: {e}", file=sys.stderr)
        return 2
    results = []
    for s in settings:
        now = real_time()
        env = environment(s, so, now)
        shown = datetime.fromtimestamp(now + float(env[ENV_SHIFT]) + 0.5, UTC).strftime(
            "%Y-%m-%d %H:%M")
        label = f"{shown} UTC, TZ={s.tz}" + (f" ({s.why})" if s.why else "")
        print(f"clockshift: {label}: {' '.join(cmd)}", flush=True)
        t0 = time.monotonic()
        try:
            rc = subprocess.run(cmd, env=env).returncode
        except KeyboardInterrupt:
            print("clockshift: interrupted", file=sys.stderr)
            return 130
        except OSError as e:
            print(f"clockshift: cannot run {cmd[0]}: {e.strerror}", file=sys.stderr)
            return 2
        results.append((label, rc, time.monotonic() - t0))
    print("clockshift: summary")
    for label, rc, took in results:
        print(f"  {'passed' if rc == 0 else f'FAILED (exit {rc})':16} {took:7.0f} s  {label}")
    return 0 if all(rc == 0 for _, rc, _ in results) else 1
