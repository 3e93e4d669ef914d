"""The TFLite runtime (tflite-runtime, or ai-edge-litert where it has no wheel).

Outputs are named by the model's signature keys where it has a signature (the names a
converter was given), with the raw tensor names as aliases. Quantised int8/uint8 tensors
carry their scale and zero point: inputs are quantised and outputs dequantised here.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np

from agent.settings.modelerror import ModelError

if TYPE_CHECKING:
    from agent.settings.modelcard import ModelCard
from agent.vision.detect.probe import probe_tflite
from agent.vision.detect.runtime import TensorInfo, dequantise, find_output
from agent.vision.detect.tflitecheck import BadFlatbuffer, check_tflite


def _interpreter(path: str, threads: int):
    try:
        from tflite_runtime.interpreter import Interpreter
    except ImportError:  # pragma: no cover - depends on the platform's wheel
        try:
            from ai_edge_litert.interpreter import Interpreter  # type: ignore[no-redef]
        except ImportError:
            raise ModelError("no TFLite runtime installed: pip install tflite-runtime "
                             "(or ai-edge-litert where tflite-runtime has no wheel)") from None
    return Interpreter(model_path=path, num_threads=threads)


def _info(d: dict, name: str | None = None) -> TensorInfo:
    scale, zp = d.get("quantization", (0.0, 0))
    return TensorInfo(name or d["name"], tuple(int(x) for x in d["shape"]),
                      np.dtype(d["dtype"]).name, float(scale), int(zp),
                      (d["name"],) if name and name != d["name"] else ())


class TfliteRuntime:
    """A .tflite model on the TFLite interpreter; ``run`` is serialised by a lock (one
    interpreter holds one set of tensors) and returns copies."""

    def __init__(self, card: ModelCard, threads: int = 1) -> None:
        try:                            # a file that would crash the runtime: refused here
            check_tflite(card.file)
        except BadFlatbuffer as e:
            raise ModelError(f"{card.card_path}: {card.file}: {e}; not opened") from None
        except OSError:
            pass                        # the load below reports a missing or unreadable file
        probe_tflite(card.file, card.card_path)
        try:
            self.interp = _interpreter(str(card.file), threads)
            self.interp.allocate_tensors()
        except ModelError:
            raise
        except Exception as e:
            raise ModelError(f"{card.card_path}: cannot load {card.file} with the TFLite "
                             f"runtime: {str(e).splitlines()[0]}") from None
        self._lock = threading.Lock()
        keys: dict[int, str] = {}
        try:
            sigs = self.interp.get_signature_list()
            if len(sigs) == 1:
                runner = self.interp.get_signature_runner(next(iter(sigs)))
                keys = {d["index"]: k for k, d in runner.get_output_details().items()}
        except Exception:  # no usable signature: tensor names
            keys = {}
        self._in = self.interp.get_input_details()
        self.inputs = [_info(d) for d in self._in]
        outs = self.interp.get_output_details()
        self.outputs = [_info(d, keys.get(d["index"])) for d in outs]
        self._index = [d["index"] for d in outs]
        self._bound = [0] if outs else []

    def select(self, names: list[str]) -> list[int]:
        """Indices of the outputs called ``names`` (names or tensor names, in this order)."""
        idx = [find_output(self.outputs, n) for n in names]
        if min(idx, default=0) < 0:
            raise ModelError(f"no output named {names[idx.index(-1)]!r}")
        return idx

    def bind(self, names: list[str]) -> None:
        """Choose the outputs :meth:`run` returns, in this order (names or tensor names)."""
        self._bound = self.select(names)

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Run the model; the bound outputs as float32."""
        return self.run_indices(tensor, self._bound)

    def run_indices(self, tensor: np.ndarray, idx: list[int]) -> list[np.ndarray]:
        """Run the model; the outputs at ``idx`` (see :meth:`select`) as float32 copies."""
        with self._lock:
            self.interp.set_tensor(self._in[0]["index"], tensor)
            self.interp.invoke()
            raw = [self.interp.get_tensor(self._index[i]) for i in idx]
        return [dequantise(a, self.outputs[i]) for a, i in zip(raw, idx, strict=True)]
