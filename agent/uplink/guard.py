"""Commands that are authentic, fresh and run once.

The dispatcher (``agent.uplink.commands``) asks :class:`CommandGuard` about every command
that parsed and passed its schema, before any handler runs:

- **fresh**: ``expires`` (ISO-8601 with a zone) must be in the future on the agent's
  clock, and no further ahead than ``max_ttl_s``, so a captured command is useless later;
- **for us**: when a command names ``device`` / ``site``, they must be ours (a signed
  command always names them, so a signature for pole A cannot drive pole B);
- **authentic** (when a verify key is configured): ``signature`` is an Ed25519
  signature, base64, over :func:`canonical` of the command without its ``signature``;
- **once**: a ``correlation_id`` is run at most once. Ids are remembered in SQLite
  (``commands.db``) until their command has expired, so the window survives restarts and
  stays bounded (an expired command is refused anyway). If that file cannot be written,
  ids are remembered in memory and the health says the window is not durable.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import sqlite3
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Remembered correlation ids at most (the oldest-expiring are forgotten first).
MAX_REMEMBERED = 100_000


class Refused(Exception):
    """The command must not run (the message says why, for the response)."""


def canonical(msg: dict[str, Any]) -> bytes:
    """The bytes a command signature covers: the command without ``signature``, keys
    sorted at every level, no whitespace, UTF-8 (``json.dumps(..., sort_keys=True,
    separators=(",", ":"), ensure_ascii=False)``)."""
    body = {k: v for k, v in msg.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def load_public_key(path: Path) -> Any:
    """An Ed25519 public key from a PEM file (ValueError with the reason otherwise)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        key = load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a PEM public key: {e}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return key


def parse_expiry(text: Any) -> float:
    """``expires`` as a POSIX time (Refused when it is not a date-time with a zone)."""
    if not isinstance(text, str) or len(text) > 40:
        raise Refused("expires must be an ISO-8601 date-time with a zone")
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Refused(f"expires {text!r} is not an ISO-8601 date-time") from None
    if when.tzinfo is None:
        raise Refused(f"expires {text!r} has no time zone (add Z or +hh:mm)")
    return when.timestamp()


class ReplayWindow:
    """Correlation ids seen, each kept until its command expires; see the module docstring."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.durable = False
        self.error = ""
        self._lock = threading.Lock()
        self._memory: dict[str, tuple[float, float]] = {}
        self.db: sqlite3.Connection | None = None
        if path is not None:
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None,
                                     timeout=5)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("CREATE TABLE IF NOT EXISTS seen (cid TEXT PRIMARY KEY, "
                           "expires REAL NOT NULL, received REAL NOT NULL)")
                db.execute("SELECT COUNT(*) FROM seen").fetchone()
                self.db, self.durable = db, True
            except (sqlite3.Error, OSError) as e:
                self.error = f"{path}: {type(e).__name__}: {e}"
                log.error("commands: cannot keep the replay window on disk (%s); in memory "
                          "only, so a restart forgets it", self.error)

    def first_time(self, cid: str, expires: float, now: float) -> float | None:
        """Remember ``cid``; ``None`` when it is new, else when it was first received."""
        with self._lock:
            if self.db is not None:
                try:
                    return self._db_first_time(cid, expires, now)
                except sqlite3.Error as e:
                    self.error, self.durable = f"{type(e).__name__}: {e}", False
                    log.error("commands: replay window write failed (%s); in memory", e)
                    with contextlib.suppress(sqlite3.Error):
                        self.db.close()
                    self.db = None
            seen = self._memory.get(cid)
            if seen is not None and seen[0] >= now:
                return seen[1]
            self._memory[cid] = (expires, now)
            if len(self._memory) > MAX_REMEMBERED:
                self._memory = {k: v for k, v in self._memory.items() if v[0] >= now}
                while len(self._memory) > MAX_REMEMBERED:
                    del self._memory[min(self._memory, key=lambda k: self._memory[k][0])]
            return None

    def _db_first_time(self, cid: str, expires: float, now: float) -> float | None:
        assert self.db is not None
        row = self.db.execute("SELECT received, expires FROM seen WHERE cid=?",
                              (cid,)).fetchone()
        if row is not None and row[1] >= now:
            return float(row[0])
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.execute("INSERT OR REPLACE INTO seen VALUES (?, ?, ?)", (cid, expires, now))
            self.db.execute("DELETE FROM seen WHERE expires < ?", (now,))
            n = self.db.execute("SELECT COUNT(*) FROM seen").fetchone()[0]
            if n > MAX_REMEMBERED:
                self.db.execute("DELETE FROM seen WHERE cid IN (SELECT cid FROM seen ORDER BY "
                                "expires LIMIT ?)", (n - MAX_REMEMBERED,))
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
            raise
        return None


class CommandGuard:
    """Freshness, target, signature and once-only checks; see the module docstring."""

    def __init__(self, device: str, site: str, replay: ReplayWindow, max_ttl_s: float,
                 verify_key: Any | None = None) -> None:
        self.device, self.site = device, site
        self.replay = replay
        self.max_ttl_s = max_ttl_s
        self.verify_key = verify_key
        self.replays = 0

    def check(self, msg: dict[str, Any], now: float) -> None:
        """Raise :class:`Refused` unless ``msg`` may run now (and remember it)."""
        expires = parse_expiry(msg.get("expires"))
        if expires <= now:
            raise Refused(f"expired at {msg['expires']} (agent clock "
                          f"{datetime.fromtimestamp(now).astimezone().isoformat()}); not run")
        if expires > now + self.max_ttl_s + 60:
            raise Refused(f"expires more than {self.max_ttl_s} s ahead; not run")
        for key, ours in (("device", self.device), ("site", self.site)):
            if key in msg and msg[key] != ours:
                raise Refused(f"addressed to {key} {str(msg[key])[:64]!r}, this is {ours!r}")
        if self.verify_key is not None:
            self._verify(msg)
        first = self.replay.first_time(msg["correlation_id"], expires, now)
        if first is not None:
            self.replays += 1
            raise Refused(f"duplicate: correlation_id {msg['correlation_id']!r} was already "
                          f"received at {datetime.fromtimestamp(first).astimezone().isoformat()}"
                          "; not run again")

    def _verify(self, msg: dict[str, Any]) -> None:
        from cryptography.exceptions import InvalidSignature

        if "device" not in msg or "site" not in msg:
            raise Refused("a signed command must name its device and site")
        sig = msg.get("signature")
        if not isinstance(sig, str):
            raise Refused("this pole only accepts signed commands: signature missing")
        try:
            raw = base64.b64decode(sig, validate=True)
            self.verify_key.verify(raw, canonical(msg))
        except (binascii.Error, ValueError, InvalidSignature):
            raise Refused("signature does not verify with this site's key; not run") from None
