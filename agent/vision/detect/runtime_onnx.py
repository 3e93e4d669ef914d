"""The onnxruntime runtime (CPU)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from agent.settings.modelerror import ModelError

if TYPE_CHECKING:
    from agent.settings.modelcard import ModelCard
from agent.vision.detect.runtime import TensorInfo, dequantise, find_output

_DTYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int8)": "int8",
           "tensor(float16)": "float16", "tensor(int32)": "int32", "tensor(int64)": "int64",
           "tensor(double)": "float64"}


def _info(arg: ort.NodeArg) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) else None for d in (arg.shape or []))
    return TensorInfo(arg.name, shape, _DTYPES.get(arg.type, arg.type))


class OnnxRuntime:
    """An ONNX model on onnxruntime's CPU provider; ``run`` is thread-safe."""

    def __init__(self, card: ModelCard, threads: int = 1) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(card.file), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"{card.card_path}: cannot load {card.file} with onnxruntime: "
                             f"{str(e).splitlines()[0]}") from None
        self.inputs = [_info(a) for a in self.session.get_inputs()]
        self.outputs = [_info(a) for a in self.session.get_outputs()]
        self._bound = [0] if self.outputs else []

    def select(self, names: list[str]) -> list[int]:
        """Indices of the outputs called ``names`` (in this order)."""
        idx = [find_output(self.outputs, n) for n in names]
        if min(idx, default=0) < 0:
            raise ModelError(f"no output named {names[idx.index(-1)]!r}")
        return idx

    def bind(self, names: list[str]) -> None:
        """Choose the outputs :meth:`run` returns, in this order."""
        self._bound = self.select(names)

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Run the model; the bound outputs as float32."""
        return self.run_indices(tensor, self._bound)

    def run_indices(self, tensor: np.ndarray, idx: list[int]) -> list[np.ndarray]:
        """Run the model; the outputs at ``idx`` (see :meth:`select`) as float32."""
        infos = [self.outputs[i] for i in idx]
        outs = self.session.run([o.name for o in infos], {self.inputs[0].name: tensor})
        return [dequantise(np.asarray(a), i) for a, i in zip(outs, infos, strict=True)]
