"""Runtimes: what runs a model file. Each gives the model's tensors as :class:`TensorInfo`
and turns an input tensor into float32 outputs (dequantised where the model is quantised).

The registry maps a card's ``backend`` to its runtime; heads (``detect.heads``) never
know which runtime produced their arrays.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from agent.settings.modelerror import ModelError

if TYPE_CHECKING:
    from agent.settings.modelcard import ModelCard


@dataclass(frozen=True)
class TensorInfo:
    """One input or output of a model: name, shape (``None`` where dynamic), dtype and,
    for quantised tensors, ``scale``/``zero_point`` (real = (q - zero_point) * scale)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    scale: float = 0.0
    zero_point: int = 0
    aliases: tuple[str, ...] = ()

    @property
    def quantised(self) -> bool:
        """Whether the tensor holds quantised integers (with a scale)."""
        return self.scale > 0 and self.dtype in ("int8", "uint8", "int16", "int32")

    def describe(self) -> str:
        """``'name' [1, 84, 8400] float32`` (with the tensor name where it differs)."""
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        alias = f" (tensor {self.aliases[0]!r})" if self.aliases else ""
        q = f" quantised scale {self.scale:.4g} zero point {self.zero_point}" \
            if self.quantised else ""
        return f"{self.name!r}{alias} [{dims}] {self.dtype}{q}"


def describe_outputs(outputs: list[TensorInfo]) -> str:
    """Every output of a model with its name and shape, for error messages."""
    return f"the model's {len(outputs)} output{'s' if len(outputs) != 1 else ''}: " + \
        "; ".join(o.describe() for o in outputs)


def dequantise(a: np.ndarray, info: TensorInfo) -> np.ndarray:
    """Quantised integers → float32 with the tensor's scale and zero point."""
    if info.quantised:
        return (a.astype(np.float32) - np.float32(info.zero_point)) * np.float32(info.scale)
    return a if a.dtype == np.float32 else a.astype(np.float32)


def to_input(x: np.ndarray, info: TensorInfo) -> np.ndarray:
    """A pre-processed tensor (float32 or uint8) in the model input's dtype: quantised with
    the input's scale and zero point where the model takes quantised integers."""
    want = np.dtype(info.dtype)
    if x.dtype == want:
        return x
    if info.quantised:
        lim = np.iinfo(want)
        q = np.rint(x.astype(np.float32) / np.float32(info.scale)) + info.zero_point
        return np.clip(q, lim.min, lim.max).astype(want)
    if want.kind == "f":
        return x.astype(want)
    raise ModelError(f"the model's input {info.name!r} is {info.dtype} without quantisation "
                     f"parameters; the card's input.dtype must be {info.dtype}")


class RuntimeUnavailable(Exception):
    """The model's runtime cannot run now: its process crashed, hung or is restarting
    (``agent.vision.detect.isolated``). Not the model's fault: the camera waits
    ``retry_in_s`` and tries again, where a :class:`ModelError` stops it."""

    def __init__(self, reason: str, retry_in_s: float = 0.0) -> None:
        super().__init__(reason)
        self.retry_in_s = max(0.0, float(retry_in_s))


class Runtime(Protocol):
    """A loaded model: its tensors, and a way to run it."""

    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    def bind(self, names: list[str]) -> None:
        """Choose the outputs :meth:`run` returns, in this order (names or aliases)."""
        ...

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Run the model; the bound outputs as float32 (thread-safe)."""
        ...


def find_output(outputs: list[TensorInfo], name: str) -> int:
    """Index of the output called ``name`` (or with that alias); -1 if none."""
    for i, o in enumerate(outputs):
        if o.name == name or name in o.aliases:
            return i
    return -1


def _onnx(card: ModelCard, threads: int) -> Runtime:
    from agent.vision.detect.runtime_onnx import OnnxRuntime

    return OnnxRuntime(card, threads)


def _tflite(card: ModelCard, threads: int) -> Runtime:
    from agent.vision.detect.runtime_tflite import TfliteRuntime

    return TfliteRuntime(card, threads)


#: card ``backend`` → runtime factory
RUNTIMES: dict[str, Callable[[ModelCard, int], Runtime]] = {
    "onnxruntime": _onnx,
    "tflite": _tflite,
}


def open_runtime(card: ModelCard, threads: int = 1) -> Runtime:
    """Load the card's model file with the card's runtime."""
    return RUNTIMES[card.backend](card, threads)


#: Runtimes whose one loaded model serves several threads at once without a lock
#: (onnxruntime's ``InferenceSession.run`` is thread-safe and runs calls in parallel; a
#: TFLite interpreter is not, so sharing one would serialise the cameras).
SHAREABLE = frozenset({"onnxruntime"})


class SharedRuntimes:
    """One loaded model per (card, threads) for the cameras of one agent.

    Each camera's :class:`ModelDetector` keeps its own classes, thresholds and
    pre-processing; the model session (weights, memory arena, about half of a camera's
    memory) is loaded once. Only runtimes in :data:`SHAREABLE` are shared. Held weakly:
    once no detector uses a model (a reload dropped the camera), it is freed. A card is
    identified by its resolved path and modification time, so an edited card loads anew.
    """

    def __init__(self) -> None:
        self._loaded: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def get(self, card: ModelCard, threads: int = 1) -> Runtime:
        """The shared runtime for ``card`` (loaded on first use), or a fresh one for a
        runtime that cannot be shared."""
        if card.backend not in SHAREABLE:
            return open_runtime(card, threads)
        key = card_key(card, threads)
        with self._lock:
            rt = self._loaded.get(key)
            if rt is None:
                rt = open_runtime(card, threads)
                self._loaded[key] = rt
            return rt

    def __len__(self) -> int:
        return len(self._loaded)


def card_key(card: ModelCard, threads: int) -> tuple:
    """What identifies a loaded model: the card's resolved path and modification time, the
    model file, the backend and the threads."""
    path = Path(card.card_path).resolve()
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        stamp = 0
    return (str(path), stamp, str(card.file), card.backend, int(threads))
