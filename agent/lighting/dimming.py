"""The local dimming model: ``models/dimming.onnx``, checked against its card.

:class:`DimmingModel` loads the model named by ``models/dimming.md``'s front matter,
checks its sha256, its input and output against the card (the model runs in a process of
its own: ``agent.vision.detect.isolated``), and :func:`features` computes
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
from typing import TYPE_CHECKING

import numpy as np
import yaml
from numpy.typing import ArrayLike

if TYPE_CHECKING:
    from agent.vision.detect.isolated import ModelHosts

log = logging.getLogger(__name__)

FEATURES = ("hour_sin", "hour_cos", "sun_elevation", "relative_volume", "log_volume",
            "heavy_share", "motorbike_share", "design_class")


#: Seconds one proposal may take in the model process (a few microseconds of arithmetic:
#: longer is a hung runtime, and the lighting thread waits for it).
RUN_DEADLINE_S = 1.0
#: Seconds the model process may take to start (at a start or a reload, off the lighting
#: thread).
LOAD_DEADLINE_S = 20.0


class DimmingModelError(Exception):
    """The dimming model is missing, corrupt or does not match its card."""


class DimmingModel:
    """``models/dimming.onnx`` checked against the front matter of ``models/dimming.md``."""

    def __init__(self, card_path: Path, models: ModelHosts | None = None) -> None:
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
        # onnxruntime runs in a process of its own (agent.vision.detect.isolated): this is
        # the lighting thread's model, and native code that crashes or hangs must not
        # reach the process that drives the lamps. With the agent's ``models`` it shares
        # the cameras' model process; never waits for it to start again (background)
        from agent.settings.modelcard import ModelError
        from agent.vision.detect.isolated import ModelFile, ModelHosts

        self._own = models is None
        self.models = ModelHosts(first_load_deadline_s=LOAD_DEADLINE_S) if models is None \
            else models
        try:
            self.runtime = self.models.get(ModelFile(card_path, self.file, sha),
                                           run_timeout_s=RUN_DEADLINE_S, background=True)
        except ModelError as e:
            raise DimmingModelError(f"cannot load {self.file}: {e}") from None
        self.host = self.runtime.host
        if len(self.runtime.inputs) != 1 or len(self.runtime.outputs) != 1:
            raise DimmingModelError(f"{card_path}: the model has {len(self.runtime.inputs)} "
                                    f"inputs and {len(self.runtime.outputs)} outputs, the "
                                    f"card says one of each")
        i, o = self.runtime.inputs[0], self.runtime.outputs[0]
        if i.name != inp["name"] or i.shape[-1:] != (len(FEATURES),) \
                or o.name != out["name"] or o.shape[-1:] != (1,):
            dims = [("N" if d is None else d) for d in i.shape], \
                [("N" if d is None else d) for d in o.shape]
            raise DimmingModelError(f"{card_path}: card says {inp['name']}[N,{len(FEATURES)}]"
                                    f" → {out['name']}[N,1], model has {i.name}{dims[0]} → "
                                    f"{o.name}{dims[1]}")
        #: why the model cannot run now ("" while it can), told once per outage
        self.down = ""

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Level shares (0–1) for feature rows (RuntimeUnavailable while the model process
        is down or restarting)."""
        return self.runtime.run(np.ascontiguousarray(features, np.float32))[0][:, 0]

    def close(self) -> None:
        """Close the model's lane (and its process, unless it is the agent's)."""
        self.runtime.close()
        if self._own:
            self.models.close()


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
    from agent.vision.detect.runtime import RuntimeUnavailable

    try:
        share = float(model.predict(features(hour, sun_elev, vph, peak_vph, heavy, moto,
                                             design_class))[0])
    except RuntimeUnavailable as e:  # its process is down: told once, until it is back
        if not model.down:
            log.error("dimming model: %s; adaptive steps stay at the safe level meanwhile", e)
        model.down = str(e)
        return None
    except Exception as e:  # the runtime's own errors
        log.error("dimming model failed: %s", e)
        return None
    if model.down:
        log.warning("dimming model: its process is back")
        model.down = ""
    return 100.0 * share if np.isfinite(share) and 0.0 <= share <= 1.0 else None
