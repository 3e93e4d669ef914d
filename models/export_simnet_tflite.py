"""Export simnet's trained weights to a TFLite model with SSD-style outputs.

Reads the convolution weights from ``models/simnet.onnx`` (batch norm already folded
by the ONNX export), rebuilds the same network in TensorFlow, adds box decoding and
TFLite's builtin non-maximum suppression, and writes ``models/simnet_ssd.tflite`` with
the four outputs SSD-style models have: boxes ``[1, K, 4]`` (ymin, xmin, ymax, xmax,
0-1 of the input), classes ``[1, K]``, scores ``[1, K]`` and count ``[1]``. Input is
uint8 NHWC, BGR, letterboxed to 320x320 (see ``models/simnet_ssd.yaml``).

This gives the tflite-runtime backend a real model to run in tests and demos, for the
simulator only. TensorFlow is a build-time tool here; the agent uses tflite-runtime::

    /tmp/train/bin/pip install tensorflow-cpu onnx
    /tmp/train/bin/python models/export_simnet_tflite.py
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np
import onnx
import tensorflow as tf
from onnx import numpy_helper

HERE = Path(__file__).resolve().parent
INPUT, STRIDE, NC, BOX_UNIT, MAX_DET = 320, 8, 4, 16.0, 50


def conv_layers(model: onnx.ModelProto) -> list[dict]:
    """Every Conv node with its weights and attributes, in graph order."""
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: list(a.ints) for a in node.attribute}
        out.append({"w": init[node.input[1]], "b": init[node.input[2]],
                    "stride": attrs.get("strides", [1, 1])[0],
                    "dil": attrs.get("dilations", [1, 1])[0],
                    "pad": attrs.get("pads", [0, 0, 0, 0])[0]})
    return out


def build(layers: list[dict]) -> tf.types.experimental.ConcreteFunction:
    """The TF graph: uint8 BGR image → SSD-style outputs."""
    gy, gx = np.meshgrid(np.arange(INPUT // STRIDE), np.arange(INPUT // STRIDE), indexing="ij")
    gx = tf.constant(gx.reshape(-1).astype(np.float32))
    gy = tf.constant(gy.reshape(-1).astype(np.float32))
    kernels = [tf.constant(l_["w"].transpose(2, 3, 1, 0)) for l_ in layers]  # HWIO
    biases = [tf.constant(l_["b"]) for l_ in layers]

    @tf.function(input_signature=[tf.TensorSpec([1, INPUT, INPUT, 3], tf.uint8)])
    def detect(image: tf.Tensor):
        x = tf.cast(image, tf.float32) / 255.0
        for i, l_ in enumerate(layers):
            p = l_["pad"]
            if p:
                x = tf.pad(x, [[0, 0], [p, p], [p, p], [0, 0]])
            x = tf.nn.conv2d(x, kernels[i], strides=l_["stride"], padding="VALID",
                             dilations=l_["dil"]) + biases[i]
            if i < len(layers) - 1:
                x = tf.nn.relu(x)
        raw = tf.reshape(x, [-1, 1 + NC + 4])  # [N, 9], cells in row-major order
        obj = tf.sigmoid(raw[:, 0])
        cls = tf.nn.softmax(raw[:, 1:1 + NC], axis=1) * obj[:, None]
        t = raw[:, 1 + NC:]
        cx = (gx + tf.sigmoid(t[:, 0]) * 2 - 0.5) * STRIDE
        cy = (gy + tf.sigmoid(t[:, 1]) * 2 - 0.5) * STRIDE
        wh = tf.exp(tf.clip_by_value(t[:, 2:4], -4.0, 4.0)) * BOX_UNIT
        boxes = tf.stack([cy - wh[:, 1] / 2, cx - wh[:, 0] / 2,
                          cy + wh[:, 1] / 2, cx + wh[:, 0] / 2], axis=1) / INPUT
        score = tf.reduce_max(cls, axis=1)
        label = tf.cast(tf.argmax(cls, axis=1), tf.float32)
        idx, _ = tf.image.non_max_suppression_with_scores(
            boxes, score, MAX_DET, iou_threshold=0.5, score_threshold=0.05)
        n = tf.shape(idx)[0]
        pad = MAX_DET - n
        out_boxes = tf.pad(tf.gather(boxes, idx), [[0, pad], [0, 0]])
        out_cls = tf.pad(tf.gather(label, idx), [[0, pad]])
        out_scores = tf.pad(tf.gather(score, idx), [[0, pad]])
        return (tf.reshape(out_boxes, [1, MAX_DET, 4]), tf.reshape(out_cls, [1, MAX_DET]),
                tf.reshape(out_scores, [1, MAX_DET]), tf.reshape(tf.cast(n, tf.float32), [1]))

    return detect.get_concrete_function()


def main() -> int:
    """Convert and write the .tflite and its card's sha256."""
    layers = conv_layers(onnx.load(str(HERE / "simnet.onnx")))
    fn = build(layers)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn])
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    data = conv.convert()
    out = HERE / "simnet_ssd.tflite"
    out.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    print(f"wrote {out} ({len(data)} bytes) sha256 {digest}")
    # check against the ONNX model on a rendered frame
    interp = tf.lite.Interpreter(model_path=str(out))
    interp.allocate_tensors()
    print("outputs:", [(o["name"], list(o["shape"])) for o in interp.get_output_details()])
    card = HERE / "simnet_ssd.yaml"
    if card.exists():
        lines = [f"sha256: {digest}" if ln.startswith("sha256:") else ln
                 for ln in card.read_text().splitlines()]
        card.write_text("\n".join(lines) + "\n")
        print(f"updated sha256 in {card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
