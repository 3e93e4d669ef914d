"""The onnxruntime runtime (CPU)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from agent.settings.modelcard import ModelCard, ModelError
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
        self._names = [self.outputs[0].name] if self.outputs else []
        self._infos = self.outputs[:1]

    def bind(self, names: list[str]) -> None:
        """Choose the outputs :meth:`run` returns, in this order."""
        idx = [find_output(self.outputs, n) for n in names]
        if min(idx, default=0) < 0:
            raise ModelError(f"no output named {names[idx.index(-1)]!r}")
        self._infos = [self.outputs[i] for i in idx]
        self._names = [o.name for o in self._infos]

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        """Run the model; the bound outputs as float32."""
        outs = self.session.run(self._names, {self.inputs[0].name: tensor})
        return [dequantise(np.asarray(a), i) for a, i in zip(outs, self._infos, strict=True)]
