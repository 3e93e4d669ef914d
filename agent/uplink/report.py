"""The reporter: the only caller of the contract builders and the outbox.

Everything the pole tells the platform passes through :meth:`Reporter.publish` as a typed
record (``agent.records``): it is built into its contract message, stamped and committed
to the durable outbox, and the uplink sends it when it can. Safe to call from any thread
(the lighting thread, the main loop). Without MQTT the records are only logged. A message
the outbox refuses (a full or broken disk) is counted and logged, never raised: reporting
must not stop the lamps or the counting.
"""

from __future__ import annotations

import logging
from collections import deque
from datetime import UTC, datetime
from typing import Any

from agent.clock import Clock
from agent.records import (
    DiagnosticsRecord,
    EventRecord,
    HealthRecord,
    LightingRecord,
    TrafficRecord,
)
from agent.uplink.contract import (
    diagnostics_message,
    event_message,
    health_message,
    lighting_message,
    response_message,
    traffic_message,
)
from agent.uplink.mqtt import Uplink
from agent.uplink.outbox import Outbox

log = logging.getLogger(__name__)

Record = TrafficRecord | LightingRecord | EventRecord | DiagnosticsRecord | HealthRecord


class Reporter:
    """See the module docstring."""

    def __init__(self, device: str, site: str, clock: Clock, outbox: Outbox | None = None,
                 uplink: Uplink | None = None) -> None:
        self.device, self.site = device, site
        self.clock = clock
        self.outbox = outbox
        self.uplink = uplink
        self.published: deque[tuple[str, dict[str, Any]]] = deque(maxlen=2000)
        self.refused = 0                 # messages the outbox could not take
        self.last_error = ""

    def ts(self) -> str:
        """Now, on the agent's clock, ISO-8601 UTC with milliseconds."""
        return datetime.fromtimestamp(self.clock.time(), UTC).isoformat(
            timespec="milliseconds").replace("+00:00", "Z")

    def publish(self, rec: Record) -> None:
        """Turn ``rec`` into its message and queue it."""
        ts, dev, site = self.ts(), self.device, self.site
        if isinstance(rec, TrafficRecord):
            self._put("traffic", rec.camera, traffic_message(rec, ts))
        elif isinstance(rec, LightingRecord):
            self._put("lighting", rec.group, lighting_message(rec, dev, site, ts))
        elif isinstance(rec, EventRecord):
            level = logging.WARNING if rec.severity != "info" else logging.INFO
            log.log(level, "event %s %s: %s", rec.event, rec.subject, rec.detail)
            self._put("event", None, event_message(rec, dev, site, ts))
        elif isinstance(rec, DiagnosticsRecord):
            self._put("diagnostics", rec.group, diagnostics_message(rec, dev, site, ts))
        elif isinstance(rec, HealthRecord):
            self._put("health", None, health_message(rec, dev, site, ts))
        else:
            raise TypeError(f"not a record: {type(rec).__name__}")

    def respond(self, correlation_id: str | None, command: str | None, error: str | None,
                data: dict[str, Any] | None = None) -> None:
        """Answer a command on ``…/cmd/response``."""
        self._put("cmd/response", None, response_message(self.device, self.site, self.ts(),
                                                         correlation_id, command, error, data))

    def _put(self, kind: str, name: str | None, body: dict[str, Any]) -> None:
        self.published.append((kind, body))
        if self.outbox is None or self.uplink is None:
            return
        try:
            self.outbox.put(self.uplink.topic(kind, name), body)
        except Exception as e:  # sqlite3 errors (disk full, read-only, corrupt), OSError
            self.refused += 1
            self.last_error = f"{type(e).__name__}: {e}"
            log.error("outbox refused a %s message (%d so far): %s", kind, self.refused,
                      self.last_error)
