"""The platform simulator's memory: every received message in SQLite, with gap/duplicate
accounting per device (``seq`` gaps = lost messages; a repeated ``msg_id`` = duplicate).

Gaps are counted per outbox *epoch* (the middle part of ``device:epoch:seq``): a pole
whose outbox file was replaced starts ``seq`` again at 1 in a new epoch, which is not a
gap. Status messages (birth, will) carry no data ``seq``: their repeats are counted apart
(``status_repeats``) so that connection noise never looks like lost or doubled data.
Restarted on the same file, the store rebuilds its ledgers from what it kept."""

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

    seen: dict[str, set[int]] = field(default_factory=dict)   # epoch → data seqs seen
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
        return sum(max(s) - min(s) + 1 - len(s) for s in self.seen.values())


def epoch_of(msg_id: str) -> str:
    """The epoch part of ``device:epoch:seq`` ('' for an older ``device:seq``)."""
    parts = msg_id.split(":")
    return parts[1] if len(parts) == 3 else ""


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
        for device, kind, seq, msg_id in self.db.execute(
                "SELECT device, kind, seq, msg_id FROM messages WHERE valid=1"):
            self.msg_ids.add(msg_id)
            if kind != "status":
                self.ledgers.setdefault(device, DeviceLedger()).add(epoch_of(msg_id), seq)

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
                if kind == "status":
                    led.status_repeats += 1
                else:
                    led.duplicates += 1
                return "duplicate", []
            self.msg_ids.add(msg["msg_id"])
            if kind != "status":
                led.add(epoch_of(msg["msg_id"]), msg["seq"])
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
                        "max_seq": led.max_seq, "epochs": led.epochs,
                        "status_repeats": led.status_repeats, "status": self.status.get(d, {}).get("state")}
                    for d, led in self.ledgers.items()}
