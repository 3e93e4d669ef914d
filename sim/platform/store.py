"""The platform simulator's memory: every received message in SQLite, with gap/duplicate
accounting per device (``seq`` gaps = lost messages; a repeated ``msg_id`` = duplicate).

Gaps are counted per outbox *epoch* (the middle part of ``device:epoch:seq``): a pole
whose outbox file was replaced starts ``seq`` again at 1 in a new epoch, which is not a
gap. Status messages (birth, will) carry no data ``seq``: their repeats are counted apart
(``status_repeats``) so that connection noise never looks like lost or doubled data.
Restarted on the same file, the store rebuilds its ledgers from what it kept.

Every data message it stores (valid or not, once it has a ``device:epoch:seq`` id) is
also what it **acknowledges**: :meth:`Store.take_acks` gives, per device and epoch that
received messages since the last call, the ``seq`` ranges the store holds (read from the
database, so several consumers sharing one file and one subscription acknowledge the
shared store, never one consumer's view). An ``outbox_lost`` event names the tail of an
old epoch that will never come: it counts as gaps.

Lamp nodes (``role: "node"`` in their messages) are also kept apart, valid or not, newest
per kind (``status``, ``lighting``, ``health``), so that the dashboard shows them even where
the contract has no schema for a node message (such a message still counts as invalid)."""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.uplink.contract import errors, kind_of


@dataclass
class DeviceLedger:
    """What the platform knows about one device's message stream."""

    seen: dict[str, set[int]] = field(default_factory=dict)   # epoch → data seqs seen
    declared: dict[str, int] = field(default_factory=dict)    # epoch → last seq (outbox_lost)
    duplicates: int = 0
    status_repeats: int = 0
    invalid: int = 0

    def add(self, epoch: str, seq: int) -> None:
        """One data message."""
        self.seen.setdefault(epoch, set()).add(seq)

    @property
    def max_seq(self) -> int:
        """The highest data seq of the newest epoch seen."""
        return max(max(s) for s in self.seen.values()) if self.seen else 0

    @property
    def epochs(self) -> int:
        """Outbox epochs seen (more than one: the pole's store was replaced)."""
        return len(self.seen)

    @property
    def gaps(self) -> int:
        """Data seqs missing between the first one seen and the highest, per epoch."""
        out = sum(max(s) - min(s) + 1 - len(s) for s in self.seen.values())
        for epoch, last in self.declared.items():     # a lost epoch's tail that never came
            s = self.seen.get(epoch)
            if s and last > max(s):
                out += last - max(s)
        return out

    def lost_epoch(self, detail: dict[str, Any]) -> None:
        """An ``outbox_lost`` event: the old epoch went up to at least this seq."""
        e, last = detail.get("previousEpoch"), detail.get("previousSeqAtLeast")
        if isinstance(e, str) and isinstance(last, int) and not isinstance(last, bool):
            self.declared[e] = max(self.declared.get(e, 0), last)


def node_kind(msg: dict[str, Any], topic: str) -> str:
    """A node message's kind: from its schema id (``polelink/node-lighting/1`` and
    ``polelink/lighting/1`` are both ``lighting``), else the topic's last level."""
    s = msg.get("schema")
    if isinstance(s, str) and s.count("/") == 2:
        k = s.split("/")[1]
        return k.removeprefix("node-")
    return topic.rsplit("/", 1)[-1]


def interval_key(kind: str | None, msg: dict[str, Any]) -> str | None:
    """A traffic record's interval (camera, line or zone, start): one row per interval,
    whatever its ``msg_id``."""
    if kind != "traffic":
        return None
    where = msg.get("line") if msg.get("line") is not None else f"zone:{msg.get('zone')}"
    return f"{msg.get('camera')}|{where}|{msg['samplingPeriod']['start']}"


def epoch_of(msg_id: str) -> str:
    """The epoch part of ``device:epoch:seq`` ('' for an older ``device:seq``)."""
    parts = msg_id.split(":")
    return parts[1] if len(parts) == 3 else ""


_MSG_ID = re.compile(rb'"msg_id"\s*:\s*"([a-z0-9_-]{1,63}:[0-9a-f]{1,16}:[0-9]{1,18})"')

#: At most this many ranges in one acknowledgement (from the lowest seq just received).
ACK_RANGES = 256


def data_id(raw: bytes) -> tuple[str, str, int] | None:
    """``(msg_id, epoch, seq)`` of an outbox data message, even one that fails its schema
    (it is stored, so it is acknowledged); None for status messages and anything else."""
    try:
        msg = json.loads(raw)
        mid = msg["msg_id"]
    except (ValueError, TypeError, KeyError, RecursionError):
        # not JSON (a damaged payload): it is kept as invalid, so it is acknowledged too,
        # or its pole would send it for ever
        m = _MSG_ID.search(bytes(raw[:65536]))
        if m is None:
            return None
        mid = m.group(1).decode("ascii")
    if not isinstance(mid, str) or len(mid) > 300:
        return None
    parts = mid.split(":")
    if len(parts) != 3 or not parts[2].isdigit() or not parts[2].isascii():
        return None
    seq = int(parts[2])
    return (mid, parts[1], seq) if 1 <= seq < 2**62 else None


class Store:
    """SQLite store + ledgers; thread-safe."""

    def __init__(self, path: str = ":memory:") -> None:
        self.db = sqlite3.connect(path, check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("""CREATE TABLE IF NOT EXISTS messages (
            id INTEGER PRIMARY KEY, received REAL, topic TEXT, device TEXT, site TEXT,
            kind TEXT, seq INTEGER, msg_id TEXT UNIQUE, valid INTEGER, errors TEXT,
            payload TEXT, epoch TEXT, data INTEGER, interval_key TEXT)""")
        cols = {r[1] for r in self.db.execute("PRAGMA table_info(messages)")}
        for col, typ in (("epoch", "TEXT"), ("data", "INTEGER"), ("interval_key", "TEXT")):
            if col not in cols:         # a file from before acknowledgements
                try:
                    self.db.execute(f"ALTER TABLE messages ADD COLUMN {col} {typ}")
                except sqlite3.OperationalError as e:   # another consumer added it first
                    if "duplicate column" not in str(e):
                        raise
        if "epoch" not in cols:         # rows stored before: acknowledged like new ones
            self.db.execute(
                "UPDATE messages SET epoch = substr(msg_id, instr(msg_id, ':') + 1, "
                "instr(substr(msg_id, instr(msg_id, ':') + 1), ':') - 1), data = 1 "
                "WHERE valid = 1 AND kind != 'status' AND msg_id LIKE '%:%:%'")
        self.db.execute("CREATE INDEX IF NOT EXISTS messages_ack ON messages "
                        "(device, epoch, seq) WHERE data=1")
        self.db.execute("CREATE INDEX IF NOT EXISTS messages_interval ON messages "
                        "(device, kind, interval_key) WHERE interval_key IS NOT NULL")
        self.db.commit()
        self.lock = threading.Lock()
        # (topic base, epoch) → (lowest seq, messages, since when) not yet acknowledged
        self._to_ack: dict[tuple[str, str], tuple[int, int, float]] = {}
        self.ledgers: dict[str, DeviceLedger] = {}
        self.msg_ids: set[str] = set()
        self.status: dict[str, dict] = {}
        self.nodes: dict[str, dict[str, dict]] = {}   # device → kind → newest node message
        for device, kind, seq, msg_id in self.db.execute(
                "SELECT device, kind, seq, msg_id FROM messages WHERE valid=1"):
            self.msg_ids.add(msg_id)
            if kind != "status":
                self.ledgers.setdefault(device, DeviceLedger()).add(epoch_of(msg_id), seq)
        for device, payload in self.db.execute(
                "SELECT device, payload FROM messages WHERE kind='event' AND valid=1 AND "
                "payload LIKE '%outbox_lost%'"):
            m = json.loads(payload)
            if m.get("event") == "outbox_lost" and isinstance(m.get("detail"), dict):
                self.ledgers.setdefault(device, DeviceLedger()).lost_epoch(m["detail"])

    def add(self, topic: str, raw: bytes, received: float) -> tuple[str, list[str]]:
        """Store one message; returns ``(outcome, schema errors)``; outcome is ``stored``,
        ``duplicate``, ``invalid`` or ``command`` (the platform's own commands, ignored)."""
        if topic.endswith("/cmd") or topic.endswith("/ack"):
            return "command", []
        try:
            msg = json.loads(raw)
        except (UnicodeDecodeError, ValueError) as e:
            msg, probs = None, [f"not JSON: {e}"]
        else:
            kind = kind_of(msg)
            probs = errors(kind, msg) if kind else ["no known 'schema' field"]
        parts = topic.split("/")
        device = parts[2] if len(parts) > 2 else "?"
        base = "/".join(parts[:3])
        ident = data_id(raw) if msg is not None and kind_of(msg) != "status" else None
        with self.lock:
            if isinstance(msg, dict) and msg.get("role") == "node":
                self.nodes.setdefault(device, {})[node_kind(msg, topic)] = msg
            led = self.ledgers.setdefault(device, DeviceLedger())
            if probs or msg is None:
                led.invalid += 1
                # kept whole when it is a pole's data message: it is acknowledged (the pole
                # frees it), so this row is where it lives now
                try:
                    self.db.execute(
                        "INSERT INTO messages (received, topic, device, valid, errors, "
                        "payload, msg_id, epoch, seq, data) VALUES (?,?,?,0,?,?,?,?,?,?)",
                        (received, topic, device, json.dumps(probs),
                         raw.decode("utf-8", "replace") if ident else
                         raw[:2000].decode("utf-8", "replace"),
                         *(ident or (None, None, None)), 1 if ident else None))
                    self.db.commit()
                except sqlite3.IntegrityError:
                    self.db.rollback()
                if ident:
                    self._ack_later(base, ident[1], ident[2])
                return "invalid", probs
            kind = kind_of(msg)
            if kind == "status":
                self.status[device] = msg
            if msg["msg_id"] in self.msg_ids:
                if kind == "status":
                    led.status_repeats += 1
                else:
                    led.duplicates += 1
                    if ident:
                        self._ack_later(base, ident[1], ident[2])
                return "duplicate", []
            epoch = epoch_of(msg["msg_id"])
            key = interval_key(kind, msg)
            repeat = key is not None and self.db.execute(
                "SELECT 1 FROM messages WHERE device=? AND kind=? AND interval_key=?",
                (device, kind, key)).fetchone() is not None
            if repeat:
                # the same interval again under a new msg_id (closed again from a
                # checkpoint after a crash): the first one stands; this one is kept as a
                # 'repeat' row, so that its seq is acknowledged and is no gap
                kind, key = "repeat", None
            try:
                self.db.execute(
                    "INSERT INTO messages (received, topic, device, site, kind, seq, msg_id, "
                    "valid, errors, payload, epoch, data, interval_key) "
                    "VALUES (?,?,?,?,?,?,?,1,'[]',?,?,?,?)",
                    (received, topic, device, msg["site"], kind, msg["seq"], msg["msg_id"],
                     json.dumps(msg), epoch, 1 if ident else None, key))
                self.db.commit()
            except sqlite3.IntegrityError:      # another consumer of the file stored it
                self.db.rollback()
                self.msg_ids.add(msg["msg_id"])
                if kind != "status":
                    led.duplicates += 1
                    if ident:
                        self._ack_later(base, ident[1], ident[2])
                return "duplicate", []
            self.msg_ids.add(msg["msg_id"])
            if kind != "status":
                led.add(epoch, msg["seq"])
            if repeat:
                led.duplicates += 1
                if ident:
                    self._ack_later(base, ident[1], ident[2])
                return "duplicate", []
            if kind == "event" and msg.get("event") == "outbox_lost":
                led.lost_epoch(msg.get("detail") or {})
            if ident:
                self._ack_later(base, ident[1], ident[2])
            return "stored", []

    def _ack_later(self, base: str, epoch: str, seq: int) -> None:
        key = (base, epoch)
        low, n, since = self._to_ack.get(key, (seq, 0, time.monotonic()))
        self._to_ack[key] = (min(low, seq), n + 1, since)

    def take_acks(self, max_age_s: float = 0.0, min_count: int = 1
                  ) -> list[tuple[str, str, list[list[int]]]]:
        """``(topic base, epoch, ranges)`` for every device and epoch with data stored and
        not yet acknowledged for ``max_age_s`` or ``min_count`` messages (by default: all):
        the ``seq`` ranges the shared store holds, from the lowest seq received since
        (at most :data:`ACK_RANGES`)."""
        now = time.monotonic()
        with self.lock:
            todo = {k: v for k, v in self._to_ack.items()
                    if v[1] >= min_count or now - v[2] >= max_age_s}
            for k in todo:
                del self._to_ack[k]
            out = []
            for (base, epoch), (low, _n, _t) in todo.items():
                device = base.split("/")[2] if base.count("/") >= 2 else "?"
                rows = self.db.execute(
                    "SELECT MIN(seq), MAX(seq) FROM (SELECT seq, seq - ROW_NUMBER() OVER "
                    "(ORDER BY seq) AS g FROM messages WHERE device=? AND epoch=? AND data=1 "
                    "AND seq >= ?) GROUP BY g ORDER BY 1 LIMIT ?",
                    (device, epoch, low, ACK_RANGES)).fetchall()
                if rows:
                    out.append((base, epoch, [[a, b] for a, b in rows]))
        return out

    def latest(self, kind: str, limit: int = 200) -> list[dict[str, Any]]:
        """The newest stored messages of one kind, oldest first."""
        with self.lock:
            rows = self.db.execute("SELECT payload FROM messages WHERE kind=? AND valid=1 "
                                   "ORDER BY id DESC LIMIT ?", (kind, limit)).fetchall()
        return [json.loads(r[0]) for r in reversed(rows)]

    def summary(self) -> dict[str, Any]:
        """Per device: gaps, duplicates, invalid, last status."""
        with self.lock:
            return {d: {"gaps": led.gaps, "duplicates": led.duplicates, "invalid": led.invalid,
                        "max_seq": led.max_seq, "epochs": led.epochs,
                        "status_repeats": led.status_repeats, "status": self.status.get(d, {}).get("state")}
                    for d, led in self.ledgers.items()}

    # -- read side: what the dashboard shows ------------------------------------------------
    def node_views(self) -> dict[str, dict[str, Any]]:
        """Per lamp node: what the dashboard shows of it (level, clock state, memory, status),
        each field only when it has the expected type (anyone can publish anything)."""
        def pick(m: dict, key: str, typ: type | tuple[type, ...]) -> Any:
            v = m.get(key)
            return v if isinstance(v, typ) and not isinstance(v, bool) else None
        with self.lock:
            nodes = {d: dict(k) for d, k in self.nodes.items()}
        out: dict[str, dict[str, Any]] = {}
        for dev, kinds in nodes.items():
            lt, h, st = kinds.get("lighting", {}), kinds.get("health", {}), kinds.get("status", {})
            newest = max(kinds.values(), key=lambda m: str(m.get("ts", "")))
            out[dev] = {"site": pick(newest, "site", str) or "",
                        "status": pick(st, "state", str),
                        "level": pick(lt, "levelPct", (int, float)),
                        "clock": pick(lt, "clock", str), "source": pick(lt, "source", str),
                        "ts": pick(lt, "ts", str),
                        "memFree": pick(h, "memFree", int),
                        "memAllocPeak": pick(h, "memAllocPeak", int),
                        "outbox": pick(h, "outbox", int),
                        "outboxDropped": pick(h, "outboxDropped", int),
                        "uptimeS": pick(h, "uptimeS", (int, float))}
        return out

    def devices(self) -> dict[str, dict[str, Any]]:
        """Per device (as named by its topics): when any message of any kind (valid or not)
        last arrived (``received``, platform clock) and the site of its newest valid one."""
        with self.lock:
            seen = self.db.execute("SELECT device, MAX(received) FROM messages "
                                   "GROUP BY device").fetchall()
            sites = self.db.execute(
                "SELECT device, site FROM messages WHERE id IN (SELECT MAX(id) FROM messages "
                "WHERE valid=1 GROUP BY device)").fetchall()
        site = dict(sites)
        return {d: {"last_seen": t, "site": site.get(d) or ""} for d, t in seen}

    def recent(self, kind: str, device: str, limit: int = 200) -> list[dict[str, Any]]:
        """One device's newest stored messages of one kind, oldest first."""
        with self.lock:
            rows = self.db.execute("SELECT payload FROM messages WHERE kind=? AND device=? "
                                   "AND valid=1 ORDER BY id DESC LIMIT ?",
                                   (kind, device, limit)).fetchall()
        return [json.loads(r[0]) for r in reversed(rows)]

    def newest(self, kind: str) -> dict[str, dict[str, Any]]:
        """Per device, its newest stored message of one kind (e.g. the latest ``health``)."""
        with self.lock:
            rows = self.db.execute(
                "SELECT device, payload FROM messages WHERE id IN (SELECT MAX(id) FROM "
                "messages WHERE kind=? AND valid=1 GROUP BY device)", (kind,)).fetchall()
        return {d: json.loads(p) for d, p in rows}


# an alarm's subject recovers with these events (the agent's pairs: runner.py, lighting/service.py)
RECOVERS = {"camera_restored": "camera_lost", "bus_restored": "bus_fault",
            "lamp_restored": "lamp_failure", "luminaire_restored": "luminaire_unreachable",
            "failsafe_left": "failsafe_entered", "clock_trusted": "clock_untrusted"}


def active_alarms(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The alarms still standing after ``events`` (one device's, in ``seq`` order): an
    ``alarm`` event stands until a later event for the same subject says it recovered (its
    pair in :data:`RECOVERS`, or the same event with ``detail.recovered: true``)."""
    active: dict[tuple[str, str], dict[str, Any]] = {}
    for e in sorted(events, key=lambda m: m.get("seq", 0)):
        name, subject = e.get("event"), e.get("subject")
        detail = e.get("detail") if isinstance(e.get("detail"), dict) else {}
        if detail.get("recovered") is True:
            active.pop((name, subject), None)
        elif name in RECOVERS:
            active.pop((RECOVERS[name], subject), None)
        elif e.get("severity") == "alarm":
            first = active.get((name, subject))
            active[(name, subject)] = {"event": name, "subject": subject, "ts": e.get("ts"),
                                       "since": first["since"] if first else e.get("ts"),
                                       "detail": detail}
    return list(active.values())


def _epoch(ts: str) -> float | None:
    """Seconds since the epoch of an ISO time, or None if Python cannot read it."""
    try:
        t = datetime.fromisoformat(ts.replace("Z", "+00:00").replace("z", "+00:00"))
        return t.timestamp() if t.tzinfo else None
    except (ValueError, OverflowError, OSError):
        return None


def traffic_view(records: list[dict[str, Any]], slots: int = 40) -> dict[str, Any]:
    """One device's counting-line traffic records on a time axis: the last ``slots``
    intervals (by ``samplingPeriod.start``) up to the newest, each with its total over all
    lines, or ``None`` where no record arrived (a gap); and the newest interval broken down
    per camera, line and direction, per road-user class."""
    timed = [(r, _epoch(r["samplingPeriod"]["start"])) for r in records if "line" in r]
    timed = [(r, t) for r, t in timed if t is not None]
    if not timed:
        return {"interval_s": None, "slots": [], "missing": 0, "latest": None}
    recs, starts = [r for r, _ in timed], [t for _, t in timed]
    full = [r["samplingPeriod"]["seconds"] for r in recs if not r["samplingPeriod"]["partial"]]
    nominal = max(set(full), key=full.count) if full else max(
        r["samplingPeriod"]["seconds"] for r in recs)
    interval = float(min(max(1.0, nominal), 86400.0)) if math.isfinite(nominal) else 60.0
    last = max(starts)
    first = max(min(starts), last - (slots - 1) * interval)
    n = int((last - first) // interval) + 1
    origin = last - (n - 1) * interval
    axis: list[dict[str, Any]] = [
        {"start": datetime.fromtimestamp(origin + i * interval, UTC).strftime(
            "%Y-%m-%dT%H:%M:%SZ"), "total": None, "partial": False} for i in range(n)]
    newest: list[dict[str, Any]] = []
    for r, t in zip(recs, starts, strict=True):
        i = int((t - origin) // interval)
        if not 0 <= i < n:
            continue
        s = axis[i]
        s["total"] = (s["total"] or 0) + r["totalCount"]
        s["partial"] = s["partial"] or r["samplingPeriod"]["partial"]
        if i == n - 1:
            newest.append(r)
    rows: dict[tuple[str, str, str], dict[str, int]] = {}
    for r in newest:
        for c in r["roadUserCounts"]:
            per = rows.setdefault((r["camera"], r["line"], c["direction"]), {})
            per[c["roadUserType"]] = per.get(c["roadUserType"], 0) + c["count"]
    by_class: dict[str, int] = {}
    by_direction: dict[str, int] = {}
    for (_cam, _line, direction), per in rows.items():
        for cls, k in per.items():
            by_class[cls] = by_class.get(cls, 0) + k
            by_direction[direction] = by_direction.get(direction, 0) + k
    latest = {"start": axis[-1]["start"], "total": axis[-1]["total"],
              "partial": axis[-1]["partial"],
              "rows": [{"camera": c, "line": ln, "direction": d, "counts": per,
                        "total": sum(per.values())}
                       for (c, ln, d), per in sorted(rows.items())],
              "by_class": by_class, "by_direction": by_direction,
              "cameras": {r["camera"]: r["quality"].get("cameraState") for r in newest}}
    return {"interval_s": interval, "slots": axis,
            "missing": sum(1 for s in axis if s["total"] is None), "latest": latest}
