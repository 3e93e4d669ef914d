"""Traffic flow for dimming: a rolling hourly volume per camera, and whether to trust it.

Each closed traffic interval adds a :class:`TrafficSample` (the busiest counting line's
counts stand for the road, as a camera usually watches both directions of one road). The
flow is the sum over the last ``window_s`` (one hour) divided by the seconds the camera
actually covered, so one busy 10 s interval cannot swing the level: the volume the
adaptive rule and the model see is an hourly one, not one interval scaled up.

The flow is **not trusted** (the schedule's fallback level applies) when a camera has
delivered no good frame for ``stale_s`` (dead, unplugged, blinded or frozen: the running
agent reports each camera's last good frame continuously through :meth:`RollingFlow.seen`,
so staleness does not wait for an interval to close), when a camera's counts are poor
(:meth:`RollingFlow.judged`: motion crosses its lines that its detector does not see, or
its picture is blinded; ``agent.vision.quality``, with its own hysteresis), or when less
than ``min_coverage_s`` of the window is covered (just started, or a long outage).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

HEAVY = ("bus", "truck")


@dataclass(frozen=True)
class TrafficSample:
    """One camera's counts over one interval (``covered_s`` seconds actually seen)."""

    camera: str
    mono_end: float
    covered_s: float
    counts: dict[str, int]


@dataclass(frozen=True)
class TrafficFlow:
    """Hourly traffic: vehicles/hour and the heavy and motorbike shares."""

    vehicles_per_hour: float
    heavy_share: float
    motorbike_share: float
    covered_s: float


@dataclass(frozen=True)
class FlowReading:
    """The flow for a set of cameras, or why there is none to trust."""

    flow: TrafficFlow | None
    reason: str = ""


class RollingFlow:
    """Per-camera windows of samples; see the module docstring."""

    def __init__(self, window_s: float = 3600.0, min_coverage_s: float = 600.0,
                 stale_s: float = 300.0) -> None:
        self.configure(window_s, min_coverage_s, stale_s)
        self._samples: dict[str, deque[TrafficSample]] = {}
        self._last_seen: dict[str, float] = {}     # camera → mono of its last frames
        self._poor: dict[str, tuple[str, ...]] = {}  # camera → why its counts are poor
        #: True when liveness comes from the cameras themselves (``seen``, each frame's
        #: capture time): a closed interval then refreshes nothing (its close time is not a
        #: frame: it re-trusted a dead camera until the next staleness check)
        self.external_liveness = False

    def configure(self, window_s: float, min_coverage_s: float, stale_s: float) -> None:
        """Set the window, the coverage it needs and the staleness limit (samples stay)."""
        self.window_s = window_s
        self.min_coverage_s = min(min_coverage_s, window_s)
        self.stale_s = stale_s

    def add(self, sample: TrafficSample) -> None:
        """One closed interval of one camera (an interval without frames says the camera
        saw nothing: it does not count as coverage, and does not refresh the camera)."""
        q = self._samples.setdefault(sample.camera, deque())
        if sample.covered_s > 0:
            q.append(sample)
            if not self.external_liveness:
                self.seen(sample.camera, sample.mono_end)
        while q and q[0].mono_end < sample.mono_end - self.window_s:
            q.popleft()

    def seen(self, camera: str, mono: float) -> None:
        """The camera delivered a good frame at ``mono`` (liveness, between intervals)."""
        self._last_seen[camera] = max(mono, self._last_seen.get(camera, mono))

    def judged(self, camera: str, poor: tuple[str, ...]) -> None:
        """The camera's count-quality verdict now: why its counts are poor (empty: good)."""
        self._poor[camera] = tuple(poor)

    def reading(self, cameras: list[str], now_mono: float) -> FlowReading:
        """The combined hourly flow of ``cameras`` at ``now_mono``, or why it is not trusted."""
        if not cameras:
            return FlowReading(None, "no camera feeds this group")
        vph = heavy = moto = 0.0
        covered_min = float("inf")
        for cam in cameras:
            last = self._last_seen.get(cam)
            if last is None:
                return FlowReading(None, f"no traffic data from camera {cam} yet")
            age = now_mono - last
            if age > self.stale_s:
                return FlowReading(None, f"no traffic data from camera {cam} for {age:.0f} s "
                                         f"(stale after {self.stale_s:g} s)")
            if self._poor.get(cam):
                return FlowReading(None, f"camera {cam}: counts not trusted: "
                                         f"{self._poor[cam][0]}")
            window = [s for s in self._samples.get(cam, ()) if s.mono_end >= now_mono
                      - self.window_s]
            covered = sum(s.covered_s for s in window)
            if covered <= 0 or covered < self.min_coverage_s:
                return FlowReading(None, f"camera {cam}: only {covered:.0f} s of traffic data "
                                         f"in the last {self.window_s:g} s (dimming needs "
                                         f"{self.min_coverage_s:g} s)")
            counts: dict[str, int] = {}
            for s in window:
                for cls, n in s.counts.items():
                    counts[cls] = counts.get(cls, 0) + n
            total = sum(counts.values())
            v = total * 3600 / covered
            vph += v
            heavy += v * (sum(counts.get(c, 0) for c in HEAVY) / total if total else 0.0)
            moto += v * (counts.get("motorbike", 0) / total if total else 0.0)
            covered_min = min(covered_min, covered)
        w = vph or 1.0
        return FlowReading(TrafficFlow(vph, heavy / w, moto / w, covered_min))
