"""The dimming policy: traffic + time → the ONNX dimming model → the safety envelope.

Each interval and luminaire group, :meth:`DimmingPolicy.decide` computes the model's
features from the live traffic flow (vehicles/hour by class from the counter), the local
hour and the sun's elevation (from the pole's latitude/longitude), runs
``models/dimming.onnx`` and passes its proposal through :class:`SafetyEnvelope`. Trust
checks feed the envelope's fail-safe:

- camera: traffic figures older than ``camera_stale_s`` (or none at all) are not trusted;
- model: a missing, corrupt or card-mismatched file, an inference error or an output
  outside 0–1 is not trusted (the policy keeps running, at the safe level);
- clock: :class:`ClockGuard` distrusts the wall clock when it disagrees with the monotonic
  clock by more than ``max_jump_s`` (a jump), or says a year before 2024 (an unset RTC),
  for ``hold_s`` after the last such sign.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml
from numpy.typing import ArrayLike

from agent.lighting.astro import local_hour, solar_elevation
from agent.lighting.envelope import Decision, EnvelopeSettings, Inputs, SafetyEnvelope

log = logging.getLogger(__name__)

FEATURES = ("hour_sin", "hour_cos", "sun_elevation", "relative_volume", "log_volume",
            "heavy_share", "motorbike_share", "design_class")


class DimmingModelError(Exception):
    """The dimming model is missing, corrupt or does not match its card."""


class DimmingModel:
    """``models/dimming.onnx`` checked against the front matter of ``models/dimming.md``."""

    def __init__(self, card_path: Path) -> None:
        card_path = Path(card_path)
        try:
            text = card_path.read_text(encoding="utf-8")
        except OSError as e:
            raise DimmingModelError(f"cannot read model card {card_path}: {e}") from None
        m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
        if not m:
            raise DimmingModelError(f"{card_path}: no '---' front matter with the model's "
                                    f"file, sha256, input and output")
        try:
            card = yaml.safe_load(m.group(1))
            self.file = card_path.parent / card["file"]
            sha, inp, out = card["sha256"], card["input"], card["output"]
            feats = tuple(inp["features"])
        except (yaml.YAMLError, KeyError, TypeError) as e:
            raise DimmingModelError(f"{card_path}: bad front matter: {e}") from None
        if feats != FEATURES:
            raise DimmingModelError(f"{card_path}: card lists features {feats}, the agent "
                                    f"computes {FEATURES}")
        try:
            data = self.file.read_bytes()
        except OSError as e:
            raise DimmingModelError(f"{card_path}: model file {self.file}: {e}") from None
        if hashlib.sha256(data).hexdigest() != sha:
            raise DimmingModelError(f"{card_path}: {self.file} does not match the card's "
                                    f"sha256 (corrupt or replaced)")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own exception types
            raise DimmingModelError(f"{card_path}: cannot load {self.file}: "
                                    f"{str(e).splitlines()[0]}") from None
        i, o = self.session.get_inputs()[0], self.session.get_outputs()[0]
        if i.name != inp["name"] or i.shape[-1] != len(FEATURES) or o.name != out["name"] \
                or o.shape[-1] != 1:
            raise DimmingModelError(f"{card_path}: card says {inp['name']}[N,{len(FEATURES)}]"
                                    f" → {out['name']}[N,1], model has {i.name}{i.shape} → "
                                    f"{o.name}{o.shape}")
        self.input_name, self.output_name = i.name, o.name

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Level shares (0–1) for feature rows."""
        return self.session.run([self.output_name],
                                {self.input_name: features.astype(np.float32)})[0][:, 0]


def features(hour: ArrayLike, sun_elev: ArrayLike, vph: ArrayLike, peak_vph: ArrayLike,
             heavy: ArrayLike, moto: ArrayLike, design_class: ArrayLike) -> np.ndarray:
    """The model's input rows ``[N, 8]`` (see ``models/dimming.md``), for scalars (one row)
    or arrays; ``models/train_dimming.py`` trains on exactly this function."""
    hour, sun_elev, vph, peak_vph, heavy, moto, design_class = (
        np.atleast_1d(np.asarray(v, np.float64))
        for v in (hour, sun_elev, vph, peak_vph, heavy, moto, design_class))
    return np.stack([np.sin(2 * np.pi * hour / 24), np.cos(2 * np.pi * hour / 24),
                     sun_elev / 90, np.clip(vph / peak_vph, 0.0, 2.0),
                     np.log1p(np.maximum(vph, 0.0)) / np.log1p(5000), heavy, moto,
                     design_class / 6], 1).astype(np.float32)


class ClockGuard:
    """Watches the wall clock against the monotonic clock; see the module docstring."""

    def __init__(self, max_jump_s: float = 120.0, hold_s: float = 600.0,
                 min_year: int = 2024) -> None:
        self.max_jump_s = max_jump_s
        self.hold_s = hold_s
        self.min_year = min_year
        self._last: tuple[float, float] | None = None
        self._bad_until = -math.inf
        self.last_reason = ""

    def check(self, wall: float, mono: float) -> bool:
        """True when ``wall`` (epoch seconds) can be trusted at monotonic time ``mono``."""
        if datetime.fromtimestamp(wall, UTC).year < self.min_year:
            self._bad_until = mono + self.hold_s
            self.last_reason = f"wall clock not set (year before {self.min_year})"
        elif self._last is not None:
            w0, m0 = self._last
            jump = (wall - w0) - (mono - m0)
            if abs(jump) > self.max_jump_s:
                self._bad_until = mono + self.hold_s
                self.last_reason = f"wall clock jumped {jump:+.0f} s"
        self._last = (wall, mono)
        return mono >= self._bad_until


@dataclass
class TrafficFlow:
    """Traffic over the last hour (or scaled to an hour) from the counter."""

    vehicles_per_hour: float
    heavy_share: float
    motorbike_share: float
    updated_monotonic: float

    @staticmethod
    def from_counts(counts: dict[str, int], seconds: float, now_monotonic: float) -> TrafficFlow:
        """From counts by class over ``seconds``."""
        total = sum(counts.values())
        vph = total * 3600 / max(seconds, 1.0)
        heavy = (counts.get("bus", 0) + counts.get("truck", 0)) / total if total else 0.0
        moto = counts.get("motorbike", 0) / total if total else 0.0
        return TrafficFlow(vph, heavy, moto, now_monotonic)


@dataclass
class GroupSettings:
    """One luminaire group's lighting parameters."""

    design_class: int = 3
    design_peak_vph: float = 1200.0
    envelope: EnvelopeSettings | None = None


class DimmingPolicy:
    """Decides one group's level each interval; never raises (faults → fail-safe)."""

    def __init__(self, card_path: Path, latitude: float, longitude: float,
                 group: GroupSettings, camera_stale_s: float = 300.0,
                 clock: ClockGuard | None = None, dark_lux: float = 50.0) -> None:
        self.lat, self.lon = latitude, longitude
        self.dark_lux = dark_lux
        self.group = group
        self.camera_stale_s = camera_stale_s
        self.clock = clock or ClockGuard()
        self.envelope = SafetyEnvelope(group.envelope or EnvelopeSettings())
        self.model: DimmingModel | None = None
        self.model_error = ""
        try:
            self.model = DimmingModel(card_path)
        except DimmingModelError as e:
            self.model_error = str(e)
            log.error("dimming model unusable, lamps stay at the safe level: %s", e)

    def decide(self, flow: TrafficFlow | None, wall: float | None = None,
               mono: float | None = None, override_pct: float | None = None,
               override_until_monotonic: float | None = None,
               ambient_lux: float | None = None) -> Decision:
        """This interval's decision for the group.

        ``ambient_lux`` (a light sensor, when the pole has one) can only switch the lamps
        *on* against the sun's position (a storm at noon: full design level), never off:
        a faulty sensor reading "bright" at night must not darken the street.
        """
        wall = time.time() if wall is None else wall
        mono = time.monotonic() if mono is None else mono
        clock_ok = self.clock.check(wall, mono)
        when = datetime.fromtimestamp(wall, UTC)
        sun = solar_elevation(self.lat, self.lon, when) if clock_ok else None
        env = self.envelope.s
        if sun is not None and ambient_lux is not None and ambient_lux < self.dark_lux \
                and sun >= env.dark_below_deg:
            sun = (env.dark_below_deg + env.dim_below_deg) / 2  # dark by day: lit, not dimmed
        camera_ok = flow is not None and mono - flow.updated_monotonic <= self.camera_stale_s
        proposal, model_ok = None, self.model is not None
        if model_ok and camera_ok and sun is not None and flow is not None:
            try:
                x = features(local_hour(self.lon, when), sun, flow.vehicles_per_hour,
                             self.group.design_peak_vph, flow.heavy_share,
                             flow.motorbike_share, self.group.design_class)
                share = float(self.model.predict(x)[0])  # type: ignore[union-attr]
                if math.isfinite(share) and 0.0 <= share <= 1.0:
                    proposal = 100.0 * share
                else:
                    model_ok = False
            except Exception as e:
                log.error("dimming model failed: %s", e)
                model_ok = False
        decision = self.envelope.apply(Inputs(
            proposal_pct=proposal, sun_elevation_deg=sun,
            now_monotonic=mono, camera_ok=camera_ok, model_ok=model_ok, clock_ok=clock_ok,
            override_pct=override_pct, override_until_monotonic=override_until_monotonic))
        if not clock_ok and self.clock.last_reason:
            decision.reasons.append(self.clock.last_reason)
        if self.model is None and self.model_error:
            decision.reasons.append(self.model_error)
        return decision


def energy_saved_wh(rated_w: float, level_pct: float, seconds: float,
                    measured_wh: float | None = None) -> float:
    """Energy saved against full power over ``seconds``.

    With a D4i/controller reading (``measured_wh``) it is rated energy minus measured;
    otherwise rated power × (1 − level share), a linear power model of LED drivers.
    """
    full = rated_w * seconds / 3600
    used = measured_wh if measured_wh is not None else full * min(max(level_pct, 0), 100) / 100
    return max(0.0, full - used)
