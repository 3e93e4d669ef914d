"""The typed records that travel the data path: vision and lighting produce them, the
reporter (``agent.uplink.report``) turns them into contract messages, the JSON-lines sink
writes the traffic ones. Times are epoch seconds; :func:`iso` formats them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from drivers.bus import LampStatus, LuminaireDiagnostics

TRAFFIC_SCHEMA = "polelink/traffic-aggregate/1"


def iso(t: float) -> str:
    """UTC ISO-8601 time with a Z suffix (whole seconds)."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class TrafficRecord:
    """One camera's counts on one line (or in one zone) over one interval."""

    device: str
    site: str
    camera: str
    start: float
    end: float
    interval_s: int
    partial: bool
    frames_analysed: int
    frames_detected: int
    frames_dropped: int
    frames_late: int
    frames_expected: int | None
    frames_good: int                       # analysed, neither blinded nor frozen
    detector_latency_ms_mean: float | None
    id_switches: int
    camera_blinded: bool
    camera_frozen: bool
    camera_state: str                      # the source's state when the interval closed
    counts: dict[str, dict[str, int]]      # direction (or "inside") → class → count
    line: str | None = None
    zone: str | None = None
    partial_reason: str = ""               # why partial: started, stopped, recovered, …
    #: the counts' quality over the interval (agent.vision.quality: QualityTally.summary)
    quality: dict[str, Any] | None = None

    @property
    def total(self) -> int:
        """All counts of the record."""
        return sum(sum(per.values()) for per in self.counts.values())

    @property
    def detector_runs_per_s(self) -> float:
        """Detector runs per second of the interval (the schedule's CPU cost)."""
        span = self.end - self.start
        return round(self.frames_detected / span, 2) if span > 0 else 0.0

    @property
    def covered_s(self) -> float:
        """Seconds of this interval the camera really watched (good frames vs expected)."""
        span = max(0.0, self.end - self.start)
        if self.frames_good <= 0:
            return 0.0
        if self.frames_expected:
            return span * min(1.0, self.frames_good / self.frames_expected)
        return span

    def to_json(self) -> dict[str, Any]:
        """The JSON-lines form (``polelink/traffic-aggregate/1``)."""
        out: dict[str, Any] = {
            "schema": TRAFFIC_SCHEMA, "device": self.device, "site": self.site,
            "camera": self.camera, "interval_start": iso(self.start),
            "interval_end": iso(self.end), "interval_s": self.interval_s,
            "partial": self.partial,
            **({"partial_reason": self.partial_reason} if self.partial_reason else {}),
            "frames_analysed": self.frames_analysed,
            "frames_detected": self.frames_detected,
            "detector_runs_per_s": self.detector_runs_per_s, "frames_dropped": self.frames_dropped,
            "frames_late": self.frames_late, "frames_expected": self.frames_expected,
            "detector_latency_ms_mean": self.detector_latency_ms_mean,
            "id_switches": self.id_switches, "camera_blinded": self.camera_blinded,
            "camera_frozen": self.camera_frozen, "camera_state": self.camera_state}
        if self.quality is not None:
            out["count_quality"] = {_snake(k): v for k, v in self.quality.items()}
        if self.line is not None:
            out["line"] = self.line
        else:
            out["zone"] = self.zone
        out["counts"] = self.counts
        out["total"] = self.total
        return out


def _snake(name: str) -> str:
    """``poorShare`` → ``poor_share`` (the JSON-lines records' spelling)."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


@dataclass(frozen=True)
class LightingRecord:
    """One luminaire group over one reporting interval."""

    group: str
    start: float
    end: float
    partial: bool
    mode: str
    reasons: tuple[str, ...]
    step: str
    target_pct: float
    actual_pct: float | None
    safe_pct: float
    lamps: tuple[LampStatus, ...]
    power_w: float | None
    energy_wh: float | None                 # the counters' sum, where the gear has them
    energy_saved_wh: float                  # this interval (never negative)
    energy_saved_total_wh: float            # since the agent started
    energy_saved_uncertainty_wh: float | None
    energy_saved_source: str
    bus_error: str | None
    clock_trusted: bool
    override: dict[str, Any] | None = None


@dataclass(frozen=True)
class EventRecord:
    """Something that changed (an alarm, or its end)."""

    event: str
    severity: str                           # info | warning | alarm
    subject: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DiagnosticsRecord:
    """A group's luminaires' slow figures (D4i: temperatures, on-time, inventory)."""

    group: str
    luminaires: tuple[LuminaireDiagnostics, ...]


@dataclass(frozen=True)
class HealthRecord:
    """The pole's health at one moment."""

    system: dict[str, Any]
    uptime_s: float
    outbox: dict[str, Any]
    cameras: dict[str, str]
    clock: dict[str, Any]
    lighting: dict[str, Any]
    uplink: dict[str, Any] = field(default_factory=dict)
    #: ``restarts`` and ``lastExit`` (see ``agent.service.runs``); empty outside ``agent run``
    service: dict[str, Any] = field(default_factory=dict)
    #: each camera's count quality now: ``{"trusted": bool, "reasons": [...]}``
    count_quality: dict[str, Any] = field(default_factory=dict)
