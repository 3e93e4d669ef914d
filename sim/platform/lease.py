"""Who among the platform's consumers owns the primary host STATE: a lease in the shared
store.

Several consumers may share one subscription and one database (``--share``); only one of
them may speak for the platform on ``<prefix>/STATE/<host_id>``, or the will of any one
that dies would tell every pole to hold its data while the others still store it. The
lease is a row of the shared SQLite file: ``(holder, expires, ts)``, taken in one
``BEGIN IMMEDIATE`` transaction when it is free or expired, renewed by its holder well
before it expires. A holder that dies or hangs stops renewing, and another consumer takes
the lease over after ``ttl_s``. ``ts`` is the newest STATE timestamp any holder used (ms):
a successor announces with a later one, so poles never take its ``online`` for an old
message. A store in memory (one process) always holds its own lease.

(The PostgreSQL ingest would use the same row, or a session advisory lock; this one is
the demo platform's.)
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import time


class StateLease:
    """The STATE lease of ``host_id`` in the store at ``path``; see the module docstring."""

    def __init__(self, path: str, holder: str, host_id: str, ttl_s: float = 3.0) -> None:
        # one name per process: two consumers started with one client id (a username made
        # the client id) must never both believe they hold it
        self.holder = f"{holder}/{os.getpid()}.{secrets.token_hex(3)}"
        self.name, self.ttl_s = f"state/{host_id}", ttl_s
        self.memory = path == ":memory:"
        self.held = self.memory
        self._ts = 0
        self.db: sqlite3.Connection | None = None
        if not self.memory:
            self.db = sqlite3.connect(path, check_same_thread=False, timeout=10,
                                      isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS lease (name TEXT PRIMARY KEY, "
                            "holder TEXT, expires REAL, ts INTEGER)")

    def renew(self, now: float | None = None) -> bool:
        """Take the lease when it is free or expired, or renew ours; True while we hold it.
        A database that cannot be written this time keeps what we had until it expires."""
        if self.db is None:
            return True
        t = time.time() if now is None else now
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                row = self.db.execute("SELECT holder, expires, ts FROM lease WHERE name=?",
                                      (self.name,)).fetchone()
                mine = row is not None and row[0] == self.holder
                if row is None or mine or row[1] < t:
                    self._ts = max(self._ts, int(row[2] or 0) if row else 0)
                    self.db.execute("INSERT OR REPLACE INTO lease VALUES (?, ?, ?, ?)",
                                    (self.name, self.holder, t + self.ttl_s, self._ts))
                    self.held = True
                else:
                    self._ts = max(self._ts, int(row[2] or 0))
                    self.held = False
                self.db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
                raise
        except sqlite3.Error:
            return self.held
        return self.held

    def next_ts(self, now_ms: int | None = None) -> int:
        """A STATE timestamp later than any holder's so far (recorded with the lease)."""
        t = int(time.time() * 1000) if now_ms is None else now_ms
        self._ts = max(t, self._ts + 1)
        if self.db is not None and self.held:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("UPDATE lease SET ts=MAX(ts, ?) WHERE name=? AND holder=?",
                                (self._ts, self.name, self.holder))
        return self._ts

    def release(self) -> None:
        """Give the lease up now (a clean stop): a successor need not wait for expiry."""
        if self.db is not None and self.held:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("UPDATE lease SET expires=0 WHERE name=? AND holder=?",
                                (self.name, self.holder))
        self.held = self.memory

    def close(self) -> None:
        """Close the database connection."""
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
            self.db = None
