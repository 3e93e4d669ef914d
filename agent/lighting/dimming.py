"""The local dimming model: ``models/dimming.onnx``, checked against its card.

:class:`DimmingModel` loads the model named by ``models/dimming.md``'s front matter,
checks its sha256, its input and output against the card, and :func:`features` computes
the model's input rows (``models/train_dimming.py`` trains on exactly this function). The
model only *proposes* a level; ``agent.lighting.envelope`` bounds it by the adaptive rule,
the schedule step and the class floor. A missing, corrupt or mismatched model raises
:class:`DimmingModelError`; the lighting service then holds adaptive steps at the safe
level and reports why.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import numpy as np
import yaml
from numpy.typing import ArrayLike

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


def propose_pct(model: DimmingModel, hour: float, sun_elev: float, vph: float, peak_vph: float,
                heavy: float, moto: float, design_class: int) -> float | None:
    """The model's level in percent for one situation; None when its output is unusable
    (not finite or outside 0–1) or inference fails."""
    try:
        share = float(model.predict(features(hour, sun_elev, vph, peak_vph, heavy, moto,
                                             design_class))[0])
    except Exception as e:  # onnxruntime's own exception types
        log.error("dimming model failed: %s", e)
        return None
    return 100.0 * share if np.isfinite(share) and 0.0 <= share <= 1.0 else None
