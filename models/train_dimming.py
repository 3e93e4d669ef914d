"""Train ``models/dimming.onnx``: the local dimming model, from a documented rule set.

The data set is generated from traffic-adaptive lighting practice after EN 13201-1 /
CEN/TR 13201-1 (selection of M lighting classes): the design class of a road is kept at
peak traffic and stepped down as the hourly volume falls relative to the design peak
(the thresholds and luminances are in ``models/dimming.md``). A small MLP (8→16→16→1)
learns the rule as a smooth function, trained with NumPy (full-batch Adam), and is
exported to ONNX with ``onnx.helper``. Reproducible (seed 11), a few seconds on a laptop::

    python models/train_dimming.py            # writes models/dimming.onnx, prints its errors

Only numpy and onnx are needed (``pip install -e '.[dev]'``).
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path

import numpy as np

from agent.lighting.dimming import FEATURES, features
from agent.lighting.rule import rule_share

HERE = Path(__file__).resolve().parent

def dataset(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random night situations and the rule's level for each."""
    hour = rng.uniform(0, 24, n)
    sun = rng.uniform(-60, -1, n)
    peak = rng.uniform(300, 3000, n)
    rel = np.exp(rng.uniform(np.log(0.005), np.log(1.5), n))
    vph = rel * peak
    heavy = rng.beta(1.2, 6, n)
    moto = rng.beta(2, 2, n)
    design = rng.integers(1, 6, n)  # M1..M5 (M6 cannot step down)
    x = features(hour, sun, vph, peak, heavy, moto, design)
    y = np.array([rule_share(int(d), float(r), float(h), float(m))
                  for d, r, h, m in zip(design, rel, heavy, moto, strict=True)], np.float32)
    return x, y[:, None]


def train(seed: int = 11, steps: int = 4000) -> dict[str, np.ndarray]:
    """Fit the MLP with full-batch Adam on a mean-squared error."""
    rng = np.random.default_rng(seed)
    x, y = dataset(40000, rng)
    sizes = [x.shape[1], 16, 16, 1]
    p = {}
    for i in range(3):
        p[f"W{i}"] = rng.normal(0, np.sqrt(2 / sizes[i]), (sizes[i], sizes[i + 1])).astype(np.float32)
        p[f"b{i}"] = np.zeros(sizes[i + 1], np.float32)
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(v) for k, v in p.items()}
    lr, b1, b2 = 0.01, 0.9, 0.999
    for t in range(1, steps + 1):
        h0 = np.maximum(x @ p["W0"] + p["b0"], 0)
        h1 = np.maximum(h0 @ p["W1"] + p["b1"], 0)
        out = 1 / (1 + np.exp(-(h1 @ p["W2"] + p["b2"])))
        d = 2 * (out - y) / len(x) * out * (1 - out)
        g = {"W2": h1.T @ d, "b2": d.sum(0)}
        d1 = (d @ p["W2"].T) * (h1 > 0)
        g["W1"], g["b1"] = h0.T @ d1, d1.sum(0)
        d0 = (d1 @ p["W1"].T) * (h0 > 0)
        g["W0"], g["b0"] = x.T @ d0, d0.sum(0)
        for k in p:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            p[k] -= lr * (m[k] / (1 - b1 ** t)) / (np.sqrt(v[k] / (1 - b2 ** t)) + 1e-8)
        if t % 1000 == 0:
            print(f"step {t}: mse {float(((out - y) ** 2).mean()):.5f}", flush=True)
    return p


def export(p: dict[str, np.ndarray], path: Path) -> None:
    """Write the MLP as an ONNX graph: features [N, 8] → level [N, 1] (0–1)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("MatMul", ["features", "W0"], ["a0"]),
             helper.make_node("Add", ["a0", "b0"], ["z0"]),
             helper.make_node("Relu", ["z0"], ["h0"]),
             helper.make_node("MatMul", ["h0", "W1"], ["a1"]),
             helper.make_node("Add", ["a1", "b1"], ["z1"]),
             helper.make_node("Relu", ["z1"], ["h1"]),
             helper.make_node("MatMul", ["h1", "W2"], ["a2"]),
             helper.make_node("Add", ["a2", "b2"], ["z2"]),
             helper.make_node("Sigmoid", ["z2"], ["level"])]
    graph = helper.make_graph(
        nodes, "polelink_dimming",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", len(FEATURES)])],
        [helper.make_tensor_value_info("level", TensorProto.FLOAT, ["N", 1])],
        initializer=[numpy_helper.from_array(v, k) for k, v in sorted(p.items())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="polelink models/train_dimming.py")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def main() -> int:
    """Train, export, evaluate on held-out data, update the card's sha256."""
    p = train()
    out = HERE / "dimming.onnx"
    export(p, out)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x, y = dataset(10000, np.random.default_rng(99))
    pred = sess.run(None, {"features": x})[0]
    err = np.abs(pred - y)
    print(f"held-out: mean abs error {err.mean() * 100:.2f} points of level, "
          f"p99 {np.percentile(err, 99) * 100:.1f}, max {err.max() * 100:.1f}")
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    card = HERE / "dimming.md"
    if card.exists():
        card.write_text(re.sub(r"^sha256: .*$", f"sha256: {digest}", card.read_text(),
                               flags=re.M))
    print(f"wrote {out} ({out.stat().st_size} bytes) sha256 {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
