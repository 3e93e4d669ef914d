"""Starts and exits of the agent, kept in its state directory for health.

``service-runs.json`` counts the starts (``restarts`` in health: this start included).
``service-exit.json`` is the reason the run ended, written on the way out: by the agent
itself (``clean`` on a normal stop, ``crash`` after an internal error, ``watchdog`` while it
withholds the watchdog pings because a thread is stuck) and then by the ``ExecStopPost=``
hook (``agent service-exit``), which knows what the agent cannot: that it was killed by a
signal, by the watchdog, or for running out of memory. At the next start the record is read
(and removed); a run that left none ended ``unclean`` (power cut, SIGKILL, a hard hang).

Nothing here stops the agent: an unreadable or unwritable state directory is logged and the
figures say ``None``. A record that cannot be read or understood (not a regular file, larger
than :data:`MAX_RECORD_BYTES`, not UTF-8, not JSON, nested too deep, not an object) is
logged once and moved aside to ``<name>.corrupt`` (the newest bad one kept, for a look),
so that the next start does not meet it again. A write that fails leaves no ``.tmp``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RUNS_FILE = "service-runs.json"
EXIT_FILE = "service-exit.json"
#: The reasons ``lastExit.reason`` can take.
REASONS = ("clean", "crash", "watchdog", "timeout", "unclean")
#: The most a record may hold: the agent writes well under 1 KiB (details are cut at 300
#: characters); anything bigger is not one of its records and is not read into memory.
MAX_RECORD_BYTES = 16 * 1024


def state_directory(default: Path, env: Mapping[str, str] | None = None) -> Path:
    """Where the records live: systemd's ``$STATE_DIRECTORY`` (its first entry) when set,
    else ``default`` (the directory of the agent's aggregates)."""
    env = os.environ if env is None else env
    first = env.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(first) if first else default


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _write(path: Path, data: dict[str, Any]) -> None:
    """Atomically replace ``path`` (a power cut leaves the old or the new file); a write
    that fails (a full or read-only disk) raises ``OSError`` and leaves no temporary file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _set_aside(path: Path, why: str) -> None:
    """Log why ``path`` is no record and rename it to ``<name>.corrupt``."""
    aside = path.with_name(path.name + ".corrupt")
    try:
        os.replace(path, aside)
    except OSError as e:
        log.warning("%s: %s; ignored (cannot move it aside: %s)", path, why, e.strerror or e)
        return
    log.warning("%s: %s; ignored and moved aside to %s", path, why, aside.name)


def _load(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; raises ``FileNotFoundError`` when there is none and
    ``ValueError`` (saying why) for anything that is not a small regular file holding a
    JSON object. Never blocks (a FIFO), never reads more than :data:`MAX_RECORD_BYTES`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ValueError(f"cannot be read ({e.strerror or e})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        raw = os.read(fd, MAX_RECORD_BYTES + 1)
    except OSError as e:
        raise ValueError(f"cannot be read ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_RECORD_BYTES:
        raise ValueError(f"larger than {MAX_RECORD_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    except RecursionError:
        raise ValueError("nested too deep") from None
    except ValueError as e:           # json.JSONDecodeError, an integer over the digit limit
        raise ValueError(f"not JSON ({str(e)[:80]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not an object")
    return data


def _read(path: Path) -> dict[str, Any] | None:
    """The record in ``path`` (None: none, or a bad one, which is logged and moved aside)."""
    try:
        return _load(path)
    except FileNotFoundError:
        return None
    except ValueError as e:
        _set_aside(path, str(e))
        return None


def _printable(value: Any, limit: int) -> str:
    """``value`` when it is a string, cut to ``limit`` and with anything that cannot be
    printed or sent as UTF-8 (control characters, lone surrogates) replaced by ``?``."""
    if not isinstance(value, str):
        return ""
    return "".join(c if c.isprintable() else "?" for c in value[:limit])


def read_exit(directory: Path) -> dict[str, Any] | None:
    """The exit record the last run left (None: none)."""
    path = directory / EXIT_FILE
    rec = _read(path)
    if rec is None:
        return None
    reason = rec.get("reason")
    if not isinstance(reason, str) or reason not in REASONS:
        _set_aside(path, f"no exit reason (one of {', '.join(REASONS)})")
        return None
    return {"reason": reason, "detail": _printable(rec.get("detail"), 300),
            "at": _printable(rec.get("at"), 40) or None}


def write_exit(directory: Path, reason: str, detail: str = "") -> bool:
    """Record why this run ends; True when written."""
    try:
        _write(directory / EXIT_FILE, {"reason": reason, "detail": detail[:300], "at": _now()})
    except OSError as e:
        log.error("cannot record the exit reason in %s: %s", directory, e)
        return False
    return True


class RunLog:
    """This run's entry in the state directory; see the module docstring."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.starts: int | None = None
        self.last_exit: dict[str, Any] | None = None

    def begin(self) -> RunLog:
        """Count this start and take the last run's exit record."""
        d = self.directory
        previous = _read(d / RUNS_FILE) or {}
        starts = previous.get("starts")
        starts = starts if type(starts) is int and 0 <= starts < 2**53 else 0
        self.last_exit = read_exit(d)
        if self.last_exit is None and starts > 0:
            self.last_exit = {"reason": "unclean", "at": None,
                              "detail": "the last run left no exit record (power cut, "
                                        "SIGKILL or a hard hang)"}
        try:
            d.mkdir(parents=True, exist_ok=True)
            _write(d / RUNS_FILE, {"starts": starts + 1, "startedAt": _now()})
            with contextlib.suppress(FileNotFoundError):
                (d / EXIT_FILE).unlink()
            self.starts = starts + 1
        except OSError as e:
            log.error("cannot count this start in %s: %s (health shows no restarts)", d, e)
        return self

    def end(self, reason: str, detail: str = "") -> None:
        """Record why this run ends (also provisionally, see :meth:`clear_end`)."""
        write_exit(self.directory, reason, detail)

    def clear_end(self) -> None:
        """Forget a provisional exit record (a stuck thread that recovered)."""
        with contextlib.suppress(OSError):
            (self.directory / EXIT_FILE).unlink()

    def figures(self) -> dict[str, Any]:
        """``restarts`` and ``lastExit`` for health."""
        return {"restarts": self.starts, "lastExit": self.last_exit}


def from_systemd(env: Mapping[str, str]) -> tuple[str, str] | None:
    """Reason and detail from the variables systemd gives ``ExecStopPost=`` commands
    (``SERVICE_RESULT``, ``EXIT_CODE``, ``EXIT_STATUS``); None when not run by systemd."""
    result = env.get("SERVICE_RESULT", "")
    if not result:
        return None
    code, status = env.get("EXIT_CODE", ""), env.get("EXIT_STATUS", "")
    seen = f"systemd: {result}" + (f", {code} {status}" if code else "")
    if result == "success":
        return "clean", seen
    if result == "watchdog":
        return "watchdog", seen + " (no WATCHDOG=1 within WatchdogSec)"
    if result == "timeout":
        return "timeout", seen + " (start or stop took longer than the unit allows)"
    return "crash", seen


def record_from_systemd(directory: Path, env: Mapping[str, str]) -> str | None:
    """The ``ExecStopPost=`` hook: merge systemd's view into the exit record. The agent's
    own record is kept when systemd agrees (its detail is richer, e.g. which thread was
    stuck); systemd's wins when it saw something the agent could not (a kill, a watchdog).
    Returns the reason recorded (None: not run by systemd, nothing done)."""
    seen = from_systemd(env)
    if seen is None:
        return None
    reason, detail = seen
    own = read_exit(directory)
    if own is not None and reason == "clean":
        return own["reason"]            # the agent's own account of a normal exit
    if own is not None and own["reason"] == reason:
        detail = f"{own['detail']}; {detail}" if own["detail"] else detail
    write_exit(directory, reason, detail)
    return reason
