"""The platform simulator's memory: every received message in SQLite, with gap/duplicate
accounting per device (``seq`` gaps = lost messages; a repeated ``msg_id`` = duplicate)."""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass, field
from typing import Any

from agent.uplink.contract import errors, kind_of


@dataclass
class DeviceLedger:
    """What the platform knows about one device's message stream."""

    first_seq: int | None = None
    max_seq: int = 0
    seen: set[int] = field(default_factory=set)
    duplicates: int = 0
    invalid: int = 0

    @property
    def gaps(self) -> int:
        """Data seqs missing between the first one seen and the highest."""
        if self.first_seq is None:
            return 0
        return (self.max_seq - self.first_seq + 1) - len(self.seen)


class Store:
    """SQLite store + ledgers; thread-safe."""

    def __init__(self, path: str = ":memory:") -> None:
        self.db = sqlite3.connect(path, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("""CREATE TABLE IF NOT EXISTS messages (
            id INTEGER PRIMARY KEY, received REAL, topic TEXT, device TEXT, site TEXT,
            kind TEXT, seq INTEGER, msg_id TEXT UNIQUE, valid INTEGER, errors TEXT,
            payload TEXT)""")
        self.lock = threading.Lock()
        self.ledgers: dict[str, DeviceLedger] = {}
        self.msg_ids: set[str] = set()
        self.status: dict[str, dict] = {}

    def add(self, topic: str, raw: bytes, received: float) -> tuple[str, list[str]]:
        """Store one message; returns ``(outcome, schema errors)``; outcome is ``stored``,
        ``duplicate``, ``invalid`` or ``command`` (the platform's own commands, ignored)."""
        if topic.endswith("/cmd"):
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
        with self.lock:
            led = self.ledgers.setdefault(device, DeviceLedger())
            if probs or msg is None:
                led.invalid += 1
                self.db.execute("INSERT INTO messages (received, topic, device, valid, errors, "
                                "payload) VALUES (?, ?, ?, 0, ?, ?)",
                                (received, topic, device, json.dumps(probs), raw[:2000]
                                 .decode("utf-8", "replace")))
                return "invalid", probs
            kind = kind_of(msg)
            if kind == "status":
                self.status[device] = msg
            if msg["msg_id"] in self.msg_ids:
                led.duplicates += 1
                return "duplicate", []
            self.msg_ids.add(msg["msg_id"])
            if kind != "status":
                seq = msg["seq"]
                if led.first_seq is None or seq < led.first_seq:
                    led.first_seq = seq if led.first_seq is None else led.first_seq
                led.seen.add(seq)
                led.max_seq = max(led.max_seq, seq)
            self.db.execute("INSERT INTO messages (received, topic, device, site, kind, seq, "
                            "msg_id, valid, errors, payload) VALUES (?,?,?,?,?,?,?,1,'[]',?)",
                            (received, topic, device, msg["site"], kind, msg["seq"],
                             msg["msg_id"], json.dumps(msg)))
            self.db.commit()
            return "stored", []

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
                        "max_seq": led.max_seq, "status": self.status.get(d, {}).get("state")}
                    for d, led in self.ledgers.items()}
