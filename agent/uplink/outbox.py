"""Store-and-forward outbox in SQLite: nothing leaves the pole before it is on disk.

- :meth:`Outbox.put` stamps a message with the device's next ``seq`` (persisted,
  monotonically increasing across restarts) and a stable ``msg_id`` (``device:seq``). It
  commits the message (WAL journal, ``synchronous=FULL``) before returning, so a power
  cut or SIGKILL right after loses nothing.
- The uplink takes :meth:`pending` messages in order and :meth:`ack` deletes each one
  only once the broker has acknowledged it (PUBACK). After a reconnect or a restart the
  same messages, with the same ``seq`` and ``msg_id``, are sent again. The platform drops
  repeats by ``msg_id``.
- The outbox is bounded (``max_messages``). When full, the oldest messages are dropped,
  and the count of dropped messages is kept (persisted) for the uplink to report as an
  event. A loss is never silent.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Message:
    """One queued message."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    seq: int


class Outbox:
    """A durable, bounded, ordered message queue; thread-safe."""

    def __init__(self, path: Path, device: str, max_messages: int = 100_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.device = device
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self.db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("""CREATE TABLE IF NOT EXISTS outbox (
                id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,
                qos INTEGER NOT NULL, retain INTEGER NOT NULL, seq INTEGER NOT NULL,
                created REAL NOT NULL)""")
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER)")
        for key in ("seq", "dropped", "boots"):
            self.db.execute("INSERT OR IGNORE INTO meta VALUES (?, 0)", (key,))

    def _meta(self, key: str) -> int:
        return int(self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])

    def next_boot(self) -> int:
        """Count one more start of the agent (Sparkplug's birth/death sequence)."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("UPDATE meta SET value=value+1 WHERE key='boots'")
            boots = self._meta("boots")
            self.db.execute("COMMIT")
            return boots

    def _bump(self) -> int:
        self.db.execute("UPDATE meta SET value=value+1 WHERE key='seq'")
        return self._meta("seq")

    def put(self, topic: str, body: dict[str, Any], qos: int = 1, retain: bool = False) -> dict:
        """Stamp and durably queue a message; returns the stamped body."""
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                seq = self._bump()
                stamped = {**body, "seq": seq, "msg_id": f"{self.device}:{seq}"}
                self.db.execute(
                    "INSERT INTO outbox (topic, payload, qos, retain, seq, created) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (topic, json.dumps(stamped, separators=(",", ":")).encode(), qos,
                     int(retain), seq, time.time()))
                n = self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
                if n > self.max_messages:
                    over = n - self.max_messages
                    self.db.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox "
                                    "ORDER BY id LIMIT ?)", (over,))
                    self.db.execute("UPDATE meta SET value=value+? WHERE key='dropped'", (over,))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            return stamped

    def pending(self, limit: int = 100, after_id: int = 0) -> list[Message]:
        """The oldest queued messages (with id > ``after_id``), in order."""
        with self._lock:
            rows = self.db.execute(
                "SELECT id, topic, payload, qos, retain, seq FROM outbox WHERE id > ? "
                "ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
        return [Message(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5]) for r in rows]

    def ack(self, message_id: int) -> None:
        """The broker has the message: forget it."""
        with self._lock:
            self.db.execute("DELETE FROM outbox WHERE id=?", (message_id,))

    def ack_many(self, message_ids: list[int]) -> None:
        """Forget several acknowledged messages in one transaction (one fsync)."""
        if not message_ids:
            return
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("DELETE FROM outbox WHERE id=?", [(i,) for i in message_ids])
            self.db.execute("COMMIT")

    def __len__(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    @property
    def dropped(self) -> int:
        """Messages dropped because the outbox was full (ever)."""
        with self._lock:
            return self._meta("dropped")

    @property
    def last_seq(self) -> int:
        """The last ``seq`` handed out."""
        with self._lock:
            return self._meta("seq")

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self.db.close()
