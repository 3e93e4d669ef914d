"""Store-and-forward outbox in SQLite: nothing leaves the pole before it is on disk.

- :meth:`Outbox.put` stamps a message with the store's next ``seq`` (persisted,
  monotonically increasing across restarts) and a ``msg_id`` ``device:epoch:seq``. The
  *epoch* is random, chosen when the store file is created, so ids stay unique when the
  file is deleted or quarantined and ``seq`` starts again at 1. It commits the message
  (WAL journal, ``synchronous=FULL``) before returning, so a power cut or SIGKILL right
  after loses nothing.
- The uplink takes :meth:`pending` messages in order. A message leaves the store only when
  it is *delivered*: :meth:`free` deletes the ``seq`` ranges the platform acknowledged as
  stored (end-to-end acknowledgement, ``agent/uplink/mqtt.py``), or, with a platform that
  does not acknowledge, :meth:`ack_many` deletes what the broker acknowledged. After a
  reconnect or a restart the same messages, with the same ``seq`` and ``msg_id``, are
  sent again; the platform drops repeats by ``msg_id``.
- Bounded (``max_messages``): when full, the oldest are dropped and counted (persisted),
  and one ``outbox_overflow`` notice names what went (count, ``seq`` range, time span; at
  most one a minute while it lasts, and one when it ends). A loss is never silent.
- **Epoch continuity**: a small side record beside the file (``outbox.db.epoch``: epoch,
  last ``seq``, when) is rewritten every 100 messages or 5 minutes, and on close. A store that
  has to start a new epoch (its file was deleted, or was corrupt beyond its meta) raises
  ``outbox_lost`` naming the old epoch and its last ``seq`` known, so the platform can
  count what went. A file deleted *while the agent runs* is rebuilt from the open
  connection at once: nothing is lost.

It cannot take the agent down (every failure below ends in a :class:`Notice` for the
runner to raise as an event, never in an exception out of :meth:`put` or :meth:`pending`):

- **disk full** (or any failed write): the message waits, unstamped and in order, in a
  bounded memory *spill* and is committed as soon as a write works again. If the agent
  stops first, what was still held is counted (by kind, with the event names and
  command correlation ids) into ``outbox.db.unwritten``, a small file whose blocks were
  allocated at start and which is overwritten in place, so it can be written on a full
  disk; the next start raises ``outbox_unwritten`` (alarm) with that record;
- **read-only or unopenable file**: the store runs in memory (not durable: a notice says
  so) until the agent is restarted with a writable file;
- **corrupt file** (found by ``PRAGMA quick_check`` at open, or by a failed read later):
  every row that can still be read is copied into a fresh file, and the corrupt file is
  kept beside it as ``outbox.db.corrupt-<time>`` for inspection, never deleted;
- **a corrupt row** (undecodable topic, payload that does not parse as a JSON object
  whose ``msg_id`` names the row's ``seq``, impossible QoS): moved to the ``quarantine``
  table of the same file (raw bytes kept) and skipped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Messages kept in memory while the disk refuses writes (then the oldest are dropped).
SPILL_MAX = 10_000
#: At most one ``outbox_overflow`` notice per this many seconds while the store is full.
OVERFLOW_NOTICE_S = 60.0
#: The side record (epoch, last seq) is rewritten when ``seq`` moved and this long has
#: passed, or :data:`SIDE_RECORD_SEQS` messages were queued since (card wear: a few MB a day).
SIDE_RECORD_S = 300.0
SIDE_RECORD_SEQS = 100
#: How often the file is checked for having been deleted or replaced under us (a stat).
INODE_CHECK_S = 1.0
#: Size of the record, written in place at stop, of messages that were held in memory and
#: could not be written (``outbox.db.unwritten``). Its blocks are allocated at start, so
#: it can be written on a disk that has since filled up.
UNWRITTEN_BYTES = 1024
_KINDS = ("status", "health", "event")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL,
        qos INTEGER NOT NULL, retain INTEGER NOT NULL, seq INTEGER NOT NULL,
        created REAL NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS outbox_seq ON outbox (seq)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER)",
    """CREATE TABLE IF NOT EXISTS quarantine (
        id INTEGER, topic BLOB, payload BLOB, reason TEXT, ts REAL)""",
)


class OutboxError(Exception):
    """The outbox cannot do what was asked (the message says why)."""


@dataclass(frozen=True)
class Message:
    """One queued message."""

    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    seq: int


@dataclass(frozen=True)
class Notice:
    """Something the outbox had to do that the platform must hear about."""

    event: str   # outbox_degraded | outbox_quarantined | outbox_rows_quarantined |
                 # outbox_overflow | outbox_lost
    severity: str         # alarm | warning | info
    detail: dict[str, Any] = field(default_factory=dict)


class Outbox:
    """A durable, bounded, ordered message queue; thread-safe; see the module docstring."""

    def __init__(self, path: Path | str, device: str, max_messages: int = 100_000) -> None:
        self.path = Path(path)
        self.device = device
        self.max_messages = max_messages
        self._lock = threading.RLock()
        self._notices: list[Notice] = []
        self._spill: deque[tuple[str, dict[str, Any], int, bool]] = deque()
        self.spill_dropped = 0
        self.write_error = ""            # the last failed write, "" once writes work again
        self.degraded = ""               # why the store is in memory, "" when on disk
        self.side_path = self.path.with_name(self.path.name + ".epoch")
        self._overflow: dict[str, Any] | None = None     # dropped since the last notice
        self._overflowing = False                        # the last commit dropped some
        self._overflow_said = -OVERFLOW_NOTICE_S
        self.last_overflow: dict[str, Any] | None = None
        self.lost: dict[str, Any] | None = None         # the epoch this one replaced
        self._side_written = -SIDE_RECORD_S
        self._side_seq = -1
        self._seq_mem = -1                  # the last seq handed out, as far as known here
        self._inode_checked = time.monotonic()
        existed = self.path.exists()
        self._opened_corrupt = False
        self._lost_unqueued = False         # an outbox_lost said, its event not yet queued
        self.db = self._open()
        self._epoch = self._read_epoch()
        self._ino = self._inode()
        self._continuity(existed)
        self._write_side(force=True)
        self.unwritten_path = self.path.with_name(self.path.name + ".unwritten")
        self._unwritten_said: dict[str, Any] | None = None
        self._take_unwritten()

    def _read_epoch(self) -> str:
        return f"{self._meta('epoch'):08x}"

    # -- opening -------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                db = self._connect(self.path)
            except sqlite3.DatabaseError as e:
                if not _is_corruption(e):
                    raise
                return self._quarantine_and_salvage(str(e))
            bad = self._check(db)
            if bad:
                db.close()
                db = self._quarantine_and_salvage(bad)
            return db
        except (sqlite3.Error, OSError) as e:
            reason = f"{self.path}: {type(e).__name__}: {e}"
            self.degraded = reason
            log.error("outbox: cannot use %s; holding messages in memory (not durable)",
                      reason)
            self._notify("outbox_degraded", "alarm", {
                "path": str(self.path), "error": f"{type(e).__name__}: {e}",
                "durable": False, "action": "free space or fix permissions, then restart"})
            return self._connect(":memory:")

    def _connect(self, where: Path | str) -> sqlite3.Connection:
        db = sqlite3.connect(str(where), check_same_thread=False, isolation_level=None,
                             timeout=5)
        try:
            if str(where) != ":memory:":
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
            for stmt in _SCHEMA:
                db.execute(stmt)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('epoch', ?)",
                       (int.from_bytes(os.urandom(4), "big"),))
            for key in ("seq", "dropped", "boots", "quarantined"):
                db.execute("INSERT OR IGNORE INTO meta VALUES (?, 0)", (key,))
        except BaseException:
            db.close()
            raise
        return db

    @staticmethod
    def _check(db: sqlite3.Connection) -> str:
        """'' when the file is sound, otherwise what ``quick_check`` found."""
        try:
            rows = db.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as e:
            return str(e)
        found = "; ".join(str(r[0]) for r in rows[:3])
        return "" if found == "ok" else found

    def _quarantine_and_salvage(self, why: str) -> sqlite3.Connection:
        """Move the corrupt file aside (kept), copy what can be read into a fresh one."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        kept = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, Path(str(kept) + suffix))
        self._opened_corrupt = True
        rows, meta = _salvage(kept)
        db = self._connect(self.path)
        with _transaction(db):
            for key in ("seq", "dropped", "boots", "epoch"):
                if key in meta:
                    db.execute("UPDATE meta SET value=? WHERE key=?", (meta[key], key))
            db.executemany("INSERT INTO outbox (topic, payload, qos, retain, seq, created) "
                           "VALUES (?, ?, ?, ?, ?, ?)", rows)
            if rows and "epoch" in meta:    # never hand out a seq a salvaged row holds
                db.execute("UPDATE meta SET value=MAX(value, ?) WHERE key='seq'",
                           (max(r[4] for r in rows),))
        log.error("outbox: %s is corrupt (%s); kept as %s, %d message(s) salvaged",
                  self.path, why, kept, len(rows))
        self._notify("outbox_quarantined", "alarm", {
            "path": str(self.path), "kept_as": str(kept), "problem": why[:300],
            "salvaged": len(rows), "epoch_kept": "epoch" in meta})
        return db

    # -- epoch continuity ----------------------------------------------------------------
    def _read_side(self) -> dict[str, Any] | None:
        """The side record, when it exists and makes sense (it is small: read whole)."""
        try:
            if self.side_path.stat().st_size > 4096:
                return None
            rec = json.loads(self.side_path.read_text())
        except (OSError, ValueError):
            return None
        if not (isinstance(rec, dict) and isinstance(rec.get("epoch"), str)
                and isinstance(rec.get("seq"), int) and isinstance(rec.get("ts"), str)):
            return None
        return rec

    def _continuity(self, existed: bool) -> None:
        """A new epoch where the side record names another one: the old one's history is
        lost (from what was still queued in it); say so, once, with what is known."""
        if self.degraded:
            return
        rec = self._read_side()
        if rec is None:
            return
        if rec["epoch"] == self._epoch:
            seq = self._meta("seq")
            if rec["seq"] > seq:            # an older copy of the file, or lost writes:
                ahead = rec["seq"] + SIDE_RECORD_SEQS      # never reuse a msg_id
                with _transaction(self.db):
                    self.db.execute("UPDATE meta SET value=? WHERE key='seq'", (ahead,))
                log.error("outbox: %s is behind its side record (seq %d < %d): an older copy "
                          "or lost writes; seq continues at %d", self.path, seq, rec["seq"],
                          ahead + 1)
                self._notify("outbox_degraded", "alarm", {
                    "path": str(self.path), "behind": True, "fileSeq": seq,
                    "recordSeq": rec["seq"], "continuesAt": ahead + 1})
            return
        reason = ("the outbox file was missing" if not existed else
                  "the outbox file was corrupt" if self._opened_corrupt else
                  "the outbox file was replaced by another")
        self.lost = {"previousEpoch": rec["epoch"], "previousSeqAtLeast": rec["seq"],
                     "recordedAt": rec["ts"], "epoch": self._epoch, "reason": reason}
        log.error("outbox: %s: epoch %s (last seq %d or later, recorded %s) is lost; "
                  "starting epoch %s", reason, rec["epoch"], rec["seq"], rec["ts"],
                  self._epoch)
        self._notify("outbox_lost", "alarm", {**self.lost, "path": str(self.path)})
        self._lost_unqueued = True

    def _write_side(self, force: bool = False) -> None:
        """Rewrite the side record (atomically) when ``seq`` moved and it is due. Not while
        an ``outbox_lost`` event is not yet queued: a crash before then says it again."""
        if self.degraded or self._lost_unqueued:
            return
        now = time.monotonic()
        if not force and (self._seq_mem == self._side_seq or (
                now - self._side_written < SIDE_RECORD_S
                and self._seq_mem - self._side_seq < SIDE_RECORD_SEQS)):
            return                          # (checked on every network pass: no query)
        seq = self.last_seq
        tmp = self.side_path.with_name(self.side_path.name + ".tmp")
        try:
            with open(tmp, "w") as f:
                json.dump({"epoch": self._epoch, "seq": seq,
                           "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.side_path)
        except OSError as e:
            log.warning("outbox: cannot write %s (%s)", self.side_path, e)
            return
        self._side_written, self._side_seq = now, seq

    def _inode(self) -> int:
        try:
            return os.stat(self.path).st_ino
        except OSError:
            return -1

    def _check_file(self) -> None:
        """Every few seconds: was the file deleted or replaced under us? Then rebuild it
        from the open connection (nothing is lost) and carry on in the same epoch."""
        now = time.monotonic()
        if self.degraded or now - self._inode_checked < INODE_CHECK_S:
            return
        self._inode_checked = now
        if self._inode() == self._ino:
            return
        rebuilt = self.path.with_name(self.path.name + ".rebuild")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)   # the folder may be gone too
            with contextlib.suppress(FileNotFoundError):
                rebuilt.unlink()
            self.db.execute("VACUUM INTO ?", (str(rebuilt),))
            self.db.close()
            for suffix in ("-wal", "-shm"):     # the replaced file's, if any are left
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(str(self.path) + suffix)
            os.replace(rebuilt, self.path)
            self.db = self._connect(self.path)
        except (sqlite3.Error, OSError) as e:
            log.error("outbox: %s was removed and cannot be rebuilt (%s)", self.path, e)
            self._recover(f"file removed, rebuild failed: {e}")
            self._ino = self._inode()
            return
        self._ino = self._inode()
        log.error("outbox: %s was deleted or replaced while running; rebuilt with the %d "
                  "message(s) it held", self.path, len(self))
        self._notify("outbox_degraded", "warning", {
            "path": str(self.path), "recreated": True, "lost": 0, "queued": len(self)})
        self._write_side(force=True)

    # -- held in memory at stop -----------------------------------------------------------
    def _take_unwritten(self) -> None:
        """At start: report what the last run held in memory and could not write (one
        ``outbox_unwritten`` alarm), then leave the record blank and allocated."""
        p = self.unwritten_path
        try:
            with open(p, "rb") as f:
                raw = f.read(UNWRITTEN_BYTES + 1)
        except FileNotFoundError:
            raw = b""
        except OSError as e:
            log.warning("outbox: cannot read %s (%s)", p, e)
            return
        text = raw.strip(b" \n\x00")
        if text:
            try:
                rec = json.loads(text)
                if not isinstance(rec, dict) or not isinstance(rec.get("count"), int):
                    raise ValueError("not a record")
            except (ValueError, RecursionError):
                rec = {"count": None, "unreadable": text[:200].decode("utf-8", "replace")}
            log.error("outbox: the last run stopped holding %s message(s) in memory that "
                      "could not be written (disk full or failing): %s",
                      rec.get("count"), json.dumps(rec)[:400])
            self._notify("outbox_unwritten", "alarm", {**rec, "path": str(p)})
            self._unwritten_said = rec      # blanked once its event is on disk
        elif len(raw) != UNWRITTEN_BYTES:
            self._blank_unwritten()

    def _blank_unwritten(self) -> None:
        """Allocate the record's blocks now, while the disk has room (real bytes, not a
        hole), so that a stop on a full disk can overwrite them."""
        try:
            fd = os.open(self.unwritten_path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, b" " * UNWRITTEN_BYTES, 0)
                os.ftruncate(fd, UNWRITTEN_BYTES)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            log.warning("outbox: cannot prepare %s (%s): messages held in memory at a stop "
                        "on a full disk would be lost without a record", self.unwritten_path, e)

    def _held(self) -> list[tuple[str, dict[str, Any]]]:
        """Messages that exist only in memory: the spill, and every row of a store that
        runs in memory (degraded)."""
        out = [(t, b) for t, b, _q, _r in self._spill]
        if self.degraded:
            with contextlib.suppress(sqlite3.Error):
                for topic, payload in self.db.execute(
                        "SELECT CAST(topic AS TEXT), payload FROM outbox ORDER BY id"):
                    try:
                        body = json.loads(payload)
                    except (ValueError, TypeError):
                        body = {}
                    out.append((str(topic), body if isinstance(body, dict) else {}))
        return out

    def _record_unwritten(self, held: list[tuple[str, dict[str, Any]]]) -> None:
        """At stop, with messages held only in memory: count them into the record."""
        kinds: dict[str, int] = {}
        events: list[str] = []
        cids: list[str] = []
        for topic, body in held:
            parts = topic.split("/")
            # <prefix>/<site>/<device>/<kind>[/<name>]: the kind, cmd/response whole
            kind = ("cmd/response" if parts[-2:] == ["cmd", "response"] else
                    parts[-1] if parts[-1] in _KINDS or len(parts) < 2 else parts[-2])
            kinds[kind] = kinds.get(kind, 0) + 1
            if isinstance(body.get("event"), str) and len(events) < 10:
                events.append(body["event"][:40])
            if isinstance(body.get("correlation_id"), str) and len(cids) < 5:
                cids.append(body["correlation_id"][:64])
        ts = [b.get("ts") for _t, b in held if isinstance(b.get("ts"), str)]
        rec: dict[str, Any] = {"count": len(held), "kinds": kinds,
                               "afterSeq": self._seq_mem if self._seq_mem > 0 else None,
                               "epoch": self._epoch, "stoppedAt": _iso(time.time()),
                               "events": events, "correlationIds": cids}
        if ts:
            rec["from"], rec["to"] = min(ts)[:30], max(ts)[:30]
        if self._unwritten_said is not None:     # earlier runs', never reported: kept, summed
            rec["earlier"] = _sum_unwritten(self._unwritten_said)
        data = json.dumps(rec, separators=(",", ":")).encode()
        while len(data) > UNWRITTEN_BYTES and (rec["correlationIds"] or rec["events"]):
            (rec["correlationIds"] or rec["events"]).pop()
            data = json.dumps(rec, separators=(",", ":")).encode()
        if len(data) > UNWRITTEN_BYTES:
            rec = {"count": rec["count"], "epoch": self._epoch, "stoppedAt": rec["stoppedAt"]}
            data = json.dumps(rec, separators=(",", ":")).encode()
        try:
            fd = os.open(self.unwritten_path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, data.ljust(UNWRITTEN_BYTES, b" "), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            log.error("outbox: %d message(s) held in memory could not be written and are "
                      "lost, and %s cannot record them (%s): %s", len(held),
                      self.unwritten_path, e, json.dumps(kinds))
            return
        log.error("outbox: %d message(s) held in memory could not be written (%s); counted "
                  "in %s, reported as outbox_unwritten at the next start", len(held),
                  json.dumps(kinds), self.unwritten_path)

    # -- helpers -------------------------------------------------------------------------
    def _notify(self, event: str, severity: str, detail: dict[str, Any]) -> None:
        self._notices.append(Notice(event, severity, detail))

    def take_notices(self) -> list[Notice]:
        """Notices since the last call (the runner turns them into events); what overflow
        dropped is said at most once a minute while it goes on, with everything dropped
        since, and at once when it has stopped (a message was queued without a drop)."""
        with self._lock:
            now = time.monotonic()
            if self._overflow and (now - self._overflow_said >= OVERFLOW_NOTICE_S
                                   or not self._overflowing):
                o, self._overflow = self._overflow, None
                self._overflow_said = now
                self.last_overflow = o
                self._notify("outbox_overflow", "alarm", {**o, "cap": self.max_messages,
                                                          "epoch": self._epoch})
            out, self._notices = self._notices, []
        return out

    def _note_dropped(self, n: int, seqs: tuple[int, int] | None,
                      span: tuple[float, float] | None, unstamped: bool = False) -> None:
        """Add dropped messages to the overflow notice being gathered."""
        o = self._overflow or {"dropped": 0, "droppedUnstamped": 0}
        if unstamped:
            o["droppedUnstamped"] += n
        else:
            o["dropped"] += n
        if seqs:
            o["firstSeq"] = min(o.get("firstSeq", seqs[0]), seqs[0])
            o["lastSeq"] = max(o.get("lastSeq", seqs[1]), seqs[1])
        if span:
            o["from"] = min(o.get("from", _iso(span[0])), _iso(span[0]))
            o["to"] = max(o.get("to", _iso(span[1])), _iso(span[1]))
        self._overflow = o

    def _carry_overflow(self, raw: bytes) -> None:
        """A dropped ``outbox_overflow`` alarm: add what it named (count, seq range, time
        span) to the overflow notice being gathered."""
        try:
            d = json.loads(raw).get("detail") or {}
        except (ValueError, AttributeError, RecursionError):
            return
        o = self._overflow or {"dropped": 0, "droppedUnstamped": 0}
        for key in ("dropped", "droppedUnstamped"):
            if isinstance(d.get(key), int):
                o[key] += d[key]
        for key, pick, typ in (("firstSeq", min, int), ("lastSeq", max, int),
                               ("from", min, str), ("to", max, str)):
            v = d.get(key)
            if isinstance(v, typ) and not isinstance(v, bool):
                o[key] = pick(o[key], v) if key in o else v
        o["carried"] = o.get("carried", 0) + 1
        self._overflow = o

    def _meta(self, key: str) -> int:
        return int(self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()[0])

    @property
    def epoch(self) -> str:
        """This store's epoch (8 hex digits), part of every ``msg_id``."""
        return self._epoch

    def next_boot(self) -> int:
        """Count one more start of the agent (Sparkplug's birth/death sequence)."""
        with self._lock:
            try:
                with _transaction(self.db):
                    self.db.execute("UPDATE meta SET value=value+1 WHERE key='boots'")
            except sqlite3.Error as e:
                self._write_failed(e)
            return self._meta("boots")

    # -- writing -------------------------------------------------------------------------
    def put(self, topic: str, body: dict[str, Any], qos: int = 1,
            retain: bool = False) -> dict[str, Any] | None:
        """Stamp and durably queue a message; returns the stamped body. When the disk
        refuses, returns None: the message waits in memory (in order) and is committed by a
        later :meth:`put` or :meth:`retry`."""
        with self._lock:
            self._spill.append((topic, body, qos, retain))
            if len(self._spill) > SPILL_MAX:
                self._spill.popleft()
                self.spill_dropped += 1
                self._note_dropped(1, None, (time.time(), time.time()), unstamped=True)
            self._check_file()          # (also while offline: the uplink's passes stop)
            stamped = self._commit_spill()
            if stamped is not None and self._lost_unqueued and body.get("event") == "outbox_lost":
                self._lost_unqueued = False             # the event is on disk: the record
                self._write_side(force=True)            # may name the new epoch now
            if stamped is not None and self._unwritten_said is not None \
                    and body.get("event") == "outbox_unwritten":
                self._unwritten_said = None             # on disk: the record may go
                self._blank_unwritten()
            self._write_side()
            return stamped

    def retry(self) -> None:
        """Try again to commit messages that a failed write left in memory; check that the
        file is still there; rewrite the side record when due (every network pass)."""
        with self._lock:
            self._check_file()
            if self._spill:
                self._commit_spill()
            self._write_side()

    def _commit_spill(self) -> dict[str, Any] | None:
        stamped: dict[str, Any] | None = None
        dropped: tuple[int, tuple[int, int], tuple[float, float]] | None = None
        earlier: list[bytes] = []
        try:
            with _transaction(self.db):
                epoch = f"{self._meta('epoch'):08x}"
                for topic, body, qos, retain in self._spill:
                    self.db.execute("UPDATE meta SET value=value+1 WHERE key='seq'")
                    seq = self._meta("seq")
                    stamped = {**body, "seq": seq, "msg_id": f"{self.device}:{epoch}:{seq}"}
                    self.db.execute(
                        "INSERT INTO outbox (topic, payload, qos, retain, seq, created) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (topic, json.dumps(stamped, separators=(",", ":")).encode(), qos,
                         int(retain), seq, time.time()))
                n = self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
                if n > self.max_messages:
                    over = n - self.max_messages
                    lo, hi, t0, t1 = self.db.execute(
                        "SELECT MIN(seq), MAX(seq), MIN(created), MAX(created) FROM (SELECT "
                        "seq, created FROM outbox ORDER BY id LIMIT ?)", (over,)).fetchone()
                    dropped = (over, (lo, hi), (t0, t1))
                    # an earlier overflow alarm among them: what it named is carried into
                    # the next one, or a second overflow would make the first loss silent
                    earlier = [bytes(r[0]) for r in self.db.execute(
                        "SELECT payload FROM (SELECT payload, topic FROM outbox ORDER BY id "
                        "LIMIT ?) WHERE topic LIKE '%/event' AND instr(payload, ?) > 0",
                        (over, b'"event":"outbox_overflow"'))]
                    self.db.execute("DELETE FROM outbox WHERE id IN (SELECT id FROM outbox "
                                    "ORDER BY id LIMIT ?)", (over,))
                    self.db.execute("UPDATE meta SET value=value+? WHERE key='dropped'",
                                    (over,))
        except sqlite3.Error as e:
            self._write_failed(e)
            return None
        self._spill.clear()
        if stamped is not None:
            self._seq_mem = stamped["seq"]
        self._overflowing = dropped is not None
        if dropped:
            self._note_dropped(*dropped)
            for raw in earlier:
                self._carry_overflow(raw)
        if self.write_error:
            log.info("outbox: writes work again (%s)", self.path)
            self._notify("outbox_degraded", "info", {"path": str(self.path), "recovered": True})
            self.write_error = ""
        return stamped

    def _write_failed(self, e: sqlite3.Error) -> None:
        if isinstance(e, sqlite3.DatabaseError) and _is_corruption(e):
            self._recover(str(e))
            return
        if not self.write_error:
            log.error("outbox: write failed (%s); holding messages in memory", e)
            self._notify("outbox_degraded", "alarm", {
                "path": str(self.path), "error": f"{type(e).__name__}: {e}",
                "durable": False, "held_in_memory_max": SPILL_MAX})
        self.write_error = f"{type(e).__name__}: {e}"

    def _recover(self, why: str) -> None:
        """Corruption found while running: quarantine the file and carry on with a new one."""
        if self.degraded:
            return
        old_epoch, old_seq = self._epoch, max(self._side_seq, self._seq_mem, self._count(
            "SELECT value FROM meta WHERE key='seq'"))
        with contextlib.suppress(sqlite3.Error):
            self.db.close()
        try:
            self.db = self._quarantine_and_salvage(why)
        except (sqlite3.Error, OSError) as e:
            self.degraded = f"{self.path}: {e}"
            self._notify("outbox_degraded", "alarm", {"path": str(self.path),
                                                      "error": str(e), "durable": False})
            self.db = self._connect(":memory:")
        self._epoch = self._read_epoch()
        if self._epoch != old_epoch:
            self.lost = {"previousEpoch": old_epoch, "previousSeqAtLeast": old_seq,
                         "recordedAt": _iso(time.time()), "epoch": self._epoch,
                         "reason": f"the outbox file was corrupt: {why[:200]}"}
            self._notify("outbox_lost", "alarm", {**self.lost, "path": str(self.path)})
            self._lost_unqueued = True
        self._ino = self._inode()           # the new file is ours: not a deletion
        self._write_side(force=True)

    # -- reading -------------------------------------------------------------------------
    def pending(self, limit: int = 100, after_id: int = 0) -> list[Message]:
        """The oldest queued messages (with id > ``after_id``), in order; rows that cannot
        be sent are quarantined and skipped."""
        with self._lock:
            for _attempt in range(2):
                try:
                    return self._pending(limit, after_id)
                except sqlite3.DatabaseError as e:
                    if not _is_corruption(e):
                        log.error("outbox: cannot read (%s)", e)
                        return []
                    self._recover(str(e))
                    after_id = 0
            return []

    def _pending(self, limit: int, after_id: int) -> list[Message]:
        rows = self.db.execute(
            "SELECT id, CAST(topic AS BLOB), payload, qos, retain, seq FROM outbox "
            "WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
        good: list[Message] = []
        bad: list[tuple[int, bytes, bytes, str, object]] = []
        for rid, topic, payload, qos, retain, seq in rows:
            problem = _row_problem(topic, payload, qos, seq)
            if problem:
                bad.append((rid, bytes(topic or b""), bytes(payload or b""), problem, seq))
            else:
                good.append(Message(rid, bytes(topic).decode(), bytes(payload), qos,
                                    bool(retain), int(seq)))
        if bad:
            self._quarantine_rows(bad)
        return good

    def _quarantine_rows(self, bad: list[tuple[int, bytes, bytes, str, object]]) -> None:
        try:
            with _transaction(self.db):
                self.db.executemany("INSERT INTO quarantine VALUES (?, ?, ?, ?, ?)",
                                    [(r, t, p, why, time.time()) for r, t, p, why, _ in bad])
                self.db.executemany("DELETE FROM outbox WHERE id=?", [(r[0],) for r in bad])
                self.db.execute("UPDATE meta SET value=value+? WHERE key='quarantined'",
                                (len(bad),))
        except sqlite3.Error as e:
            self._write_failed(e)
            return
        log.error("outbox: %d unreadable message(s) moved to the quarantine table of %s: %s",
                  len(bad), self.path, bad[0][3])
        self._notify("outbox_rows_quarantined", "alarm", {
            "path": str(self.path), "rows": [r[0] for r in bad][:20], "problem": bad[0][3],
            # the data seqs the platform will miss: a gap it can explain, not a mystery
            "seqs": [r[4] for r in bad if isinstance(r[4], int)][:20]})

    def ack_many(self, message_ids: list[int]) -> None:
        """Forget several acknowledged messages in one transaction (one fsync). A failed
        delete only means the messages are sent again (same msg_id)."""
        if not message_ids:
            return
        with self._lock:
            try:
                with _transaction(self.db):
                    self.db.executemany("DELETE FROM outbox WHERE id=?",
                                        [(i,) for i in message_ids])
            except sqlite3.Error as e:
                self._write_failed(e)
                return
            self._overflowing = False

    def free(self, epoch: str, ranges: list[tuple[int, int]]) -> int:
        """The platform has stored these ``seq`` ranges of ``epoch``: forget exactly those
        rows (their ``msg_id`` names that epoch: rows salvaged from a replaced file keep
        their old epoch), in one transaction. Returns how many went; -1 when the delete
        failed (the rows stay and are sent again)."""
        if not ranges:
            return 0
        prefix = f'"msg_id":"{self.device}:{epoch}:'.encode()
        with self._lock:
            try:
                with _transaction(self.db):
                    before = self.db.total_changes
                    self.db.executemany(
                        "DELETE FROM outbox WHERE seq BETWEEN ? AND ? AND instr(payload, ?) > 0",
                        [(a, b, prefix) for a, b in ranges])
                    n = self.db.total_changes - before
            except (sqlite3.Error, OverflowError, ValueError) as e:
                if isinstance(e, sqlite3.Error):
                    self._write_failed(e)
                return -1
            if n:
                self._overflowing = False       # room again: what overflow dropped is said
            return n

    def ack(self, message_id: int) -> None:
        """The broker has one message: forget it."""
        self.ack_many([message_id])

    # -- figures -------------------------------------------------------------------------
    def _count(self, sql: str, default: int = 0) -> int:
        with self._lock:
            try:
                return int(self.db.execute(sql).fetchone()[0])
            except sqlite3.Error:
                return default

    def __len__(self) -> int:
        return self._count("SELECT COUNT(*) FROM outbox") + len(self._spill)

    @property
    def dropped(self) -> int:
        """Messages dropped because the outbox was full (ever), or the memory spill was."""
        return self._count("SELECT value FROM meta WHERE key='dropped'") + self.spill_dropped

    @property
    def quarantined(self) -> int:
        """Rows moved to quarantine (ever, in this file)."""
        return self._count("SELECT value FROM meta WHERE key='quarantined'")

    @property
    def last_seq(self) -> int:
        """The last ``seq`` handed out."""
        return self._count("SELECT value FROM meta WHERE key='seq'")

    def figures(self) -> dict[str, Any]:
        """For health: queued, dropped, quarantined, held in memory, durable or not."""
        out: dict[str, Any] = {
            "queued": len(self), "dropped": self.dropped, "quarantined": self.quarantined,
            "heldInMemory": len(self._spill), "durable": not self.degraded
            and not self.write_error, "epoch": self.epoch}
        if self.last_overflow or self._overflow:
            out["lastOverflow"] = {**(self._overflow or self.last_overflow or {})}
        if self.lost:
            out["previousEpoch"] = {k: self.lost[k] for k in
                                    ("previousEpoch", "previousSeqAtLeast", "recordedAt")}
        return out

    def close(self) -> None:
        """Close the database. Messages still held in memory (the disk refused them) are
        counted into ``outbox.db.unwritten`` and reported at the next start."""
        with self._lock:
            self.retry()
            held = self._held()
            if held:
                self._record_unwritten(held)
            self._write_side(force=True)
            with contextlib.suppress(sqlite3.Error):
                self.db.close()


def _sum_unwritten(said: dict[str, Any]) -> dict[str, Any]:
    """The record of runs before this one that were never reported (``said`` and what it
    carried as ``earlier``), summed: how many runs and messages, by kind, the time span."""
    out: dict[str, Any] = {"runs": 0, "count": 0, "kinds": {}}
    for part in (said.get("earlier"), said):
        if not isinstance(part, dict):
            continue
        runs = part.get("runs", 1) if part is said.get("earlier") else 1
        out["runs"] += runs if isinstance(runs, int) and not isinstance(runs, bool) else 1
        if isinstance(part.get("count"), int) and not isinstance(part.get("count"), bool):
            out["count"] += part["count"]
        if isinstance(part.get("kinds"), dict):
            for k, n in list(part["kinds"].items())[:20]:
                if isinstance(n, int) and not isinstance(n, bool):
                    out["kinds"][str(k)[:40]] = out["kinds"].get(str(k)[:40], 0) + n
        for key, pick in (("from", min), ("to", max)):
            v = part.get(key)
            if isinstance(v, str):
                out[key] = pick(out[key], v[:30]) if key in out else v[:30]
        if isinstance(part.get("stoppedAt"), str) and part is said:
            out["stoppedAt"] = part["stoppedAt"][:30]
    return out


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE … COMMIT; on any failure a ROLLBACK that cannot hide the error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _is_corruption(e: sqlite3.Error) -> bool:
    text = str(e).lower()
    return "malformed" in text or "not a database" in text or "corrupt" in text


def _row_problem(topic: bytes | None, payload: bytes | None, qos: object,
                 seq: object = None) -> str:
    """Why a stored row cannot be sent as it is ('' when it can): its topic, its QoS, and
    its payload, which must parse as a JSON object whose ``msg_id`` is a string naming the
    row's own ``seq`` (``device:epoch:seq``) when the row has one."""
    try:
        t = bytes(topic or b"").decode("utf-8")
    except UnicodeDecodeError:
        return "topic is not UTF-8"
    if not t or "\x00" in t or "+" in t or "#" in t:
        return "topic is not a publishable topic"
    if qos not in (0, 1, 2):
        return f"impossible qos {qos!r}"
    raw = bytes(payload or b"")
    # a full parse: a row that keeps its braces and its msg_id but is not JSON must not
    # reach the platform (bench/uplink.py measures the replay with it)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "payload is not UTF-8"
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        return "payload is not JSON"
    if not isinstance(body, dict):
        return "payload is not a JSON object"
    msg_id = body.get("msg_id")
    if not isinstance(msg_id, str) or not msg_id:
        return "payload has no msg_id"
    if isinstance(seq, int) and not isinstance(seq, bool) \
            and msg_id.rsplit(":", 1)[-1] != str(seq):
        return f"payload's msg_id {msg_id[:80]!r} does not name the row's seq {seq}"
    return ""


def _salvage(path: Path) -> tuple[list[tuple], dict[str, int]]:
    """Every outbox row and meta value that can still be read from a corrupt file."""
    rows: list[tuple] = []
    meta: dict[str, int] = {}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error:
        return rows, meta
    try:
        with contextlib.suppress(sqlite3.Error):
            for k, v in db.execute("SELECT key, value FROM meta"):
                if isinstance(k, str) and isinstance(v, int):
                    meta[k] = v
        last = 0
        while True:            # row by row, stepping over what cannot be read
            try:
                r = db.execute("SELECT id, CAST(topic AS BLOB), payload, qos, retain, seq, "
                               "created FROM outbox WHERE id > ? ORDER BY id LIMIT 1",
                               (last,)).fetchone()
            except sqlite3.Error:
                last += 1
                if last > meta.get("seq", 0) + 1:
                    break
                continue
            if r is None:
                break
            last = r[0]
            if not _row_problem(r[1], r[2], r[3], r[5]):
                rows.append((bytes(r[1]).decode(), bytes(r[2]), r[3], r[4], r[5], r[6]))
    finally:
        db.close()
    return rows, meta
