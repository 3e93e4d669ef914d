"""Convert the test models of ``tests/head_specs.py`` to TFLite: float32, int8 and uint8
(full integer quantisation, quantised input and outputs).

A build tool for the tests, run by an interpreter that has TensorFlow (the project's test
venv, or the one ``POLELINK_TF_PYTHON`` names); the tests run the files with
tflite-runtime. Usage::

    python tests/tflite_models.py OUT_DIR

writes ``OUT_DIR/<case>_<variant>.tflite`` and prints one line per file.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import tensorflow as tf

from tests.head_specs import SIZE, Case, Output, cases, kernels

VARIANTS = ("float", "int8", "uint8")


def _output(o: Output, x: tf.Tensor, ks: list[list[np.ndarray]], done: dict) -> tf.Tensor:
    if o.layout == "count":
        return tf.reshape(tf.reduce_sum(tf.cast(done[o.count_of] > 0.5, tf.float32)), [1])
    levels = []
    for s, pre, kl in zip(o.strides, o.pre, ks, strict=True):
        parts, c0 = [], 0
        for g, k in zip(o.groups, kl, strict=True):
            y = tf.nn.conv2d(x, tf.constant(k.transpose(2, 3, 1, 0)), s, "VALID")
            y = y + tf.constant(pre[None, :, :, c0:c0 + g.n])
            parts.append(tf.sigmoid(y) if g.act == "sigmoid" else y)
            c0 += g.n
        y = tf.concat(parts, -1) if len(parts) > 1 else parts[0]
        levels.append(tf.reshape(y, [1, -1, o.channels]))
    y = tf.concat(levels, 1) if len(levels) > 1 else levels[0]
    if o.layout == "channels_first":
        y = tf.transpose(y, [0, 2, 1])
    elif o.layout == "flat":
        y = tf.reshape(y, [1, -1])
    return y


def module(case: Case) -> tf.Module:
    """The case's model as a TF module with one signature (output names = keys)."""
    ks = kernels(case)
    m = tf.Module()

    @tf.function(input_signature=[tf.TensorSpec([1, SIZE, SIZE, 3], tf.float32,
                                                 name="images")])
    def serve(x: tf.Tensor) -> dict[str, tf.Tensor]:
        done: dict[str, tf.Tensor] = {}
        for o, k in zip(case.outputs, ks, strict=True):
            done[o.name] = _output(o, x, k, done)
        return done

    m.serve = serve
    return m


def convert(case: Case, variant: str) -> bytes:
    """One case in one variant as .tflite bytes."""
    m = module(case)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([m.serve.get_concrete_function()],
                                                           m)
    if variant != "float":
        rng = np.random.default_rng(0)

        def representative():
            # black frames (the tests' frame) and faint noise: the ranges stay those of the
            # constant maps, so quantisation keeps the encoded boxes and scores precise
            for i in range(8):
                yield [(rng.random((1, SIZE, SIZE, 3)) * 4 * (i % 2)).astype(np.float32)]

        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = \
            tf.int8 if variant == "int8" else tf.uint8
    return conv.convert()


def main(argv: list[str]) -> int:
    """Write every case in every variant to ``argv[0]``."""
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for case in cases():
        for v in VARIANTS:
            path = out / f"{case.name}_{v}.tflite"
            path.write_bytes(convert(case, v))
            print(f"{path.name} {path.stat().st_size} bytes")
    print(f"converted in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
