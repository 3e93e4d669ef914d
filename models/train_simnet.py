"""Train and export ``simnet``: the repo's own tiny vehicle detector, for the simulator only.

It learns from frames rendered by ``sim.traffic.random_training_frame`` (the same
drawing code as the simulated camera) and is exported to ONNX with a YOLOv8-style
head, ``[1, 4 + 4, N]`` (box centre/size in input pixels, then per-class scores),
so it runs through the very same onnxruntime backend as real YOLO exports.

Reproducible: fixed seeds, CPU only, about ten minutes on two cores::

    python -m venv /tmp/train && /tmp/train/bin/pip install torch==2.13.0 onnx \
        numpy opencv-python-headless pyyaml
    PYTHONPATH=. /tmp/train/bin/python models/train_simnet.py        # writes models/simnet.onnx + card

torch and onnx are build-time tools for this script only; the agent never imports them.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from sim.render import SIM_CLASSES
from sim.traffic import SceneConfig, random_training_frame

INPUT = 320
STRIDE = 8
GRID = INPUT // STRIDE
NC = len(SIM_CLASSES)
BOX_UNIT = 16.0  # w, h = exp(t) * BOX_UNIT pixels


def letterbox(img: np.ndarray, size: int = INPUT) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Resize keeping aspect and pad with grey 114 to ``size``x``size`` (same as the agent)."""
    h, w = img.shape[:2]
    r = min(size / h, size / w)
    nh, nw = round(h * r), round(w * r)
    out = np.full((size, size, 3), 114, np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out, r, (left, top)


def conv(cin: int, cout: int, stride: int = 1, dil: int = 1) -> nn.Sequential:
    """3x3 conv, batch norm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, dil, dilation=dil, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SimNet(nn.Module):
    """Backbone to a stride-8 grid, one anchor-free prediction per cell."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(3, 16, 2), conv(16, 32, 2), conv(32, 32),
                                  conv(32, 64, 2), conv(64, 64), conv(64, 64, dil=2),
                                  conv(64, 64, dil=4))
        self.head = nn.Conv2d(64, 1 + NC + 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # raw [B, 9, G, G]
        return self.head(self.body(x))


class Exported(nn.Module):
    """Wraps SimNet with input scaling and box decoding: output ``[1, 4 + NC, G*G]``."""

    def __init__(self, net: SimNet) -> None:
        super().__init__()
        self.net = net
        gy, gx = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
        self.register_buffer("gx", gx.reshape(1, 1, -1).float())
        self.register_buffer("gy", gy.reshape(1, 1, -1).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.net(x / 255.0).flatten(2)  # [1, 9, N]
        obj = torch.sigmoid(raw[:, 0:1])
        cls = torch.softmax(raw[:, 1:1 + NC], dim=1) * obj
        t = raw[:, 1 + NC:]
        cx = (self.gx + torch.sigmoid(t[:, 0:1]) * 2 - 0.5) * STRIDE
        cy = (self.gy + torch.sigmoid(t[:, 1:2]) * 2 - 0.5) * STRIDE
        wh = torch.exp(t[:, 2:4].clamp(-4, 4)) * BOX_UNIT
        return torch.cat([cx, cy, wh, cls], dim=1)


def make_dataset(n: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Render ``n`` letterboxed training images (with scale jitter) and their boxes."""
    rng = np.random.default_rng(seed)
    xs = np.empty((n, 3, INPUT, INPUT), np.uint8)
    ys: list[np.ndarray] = []
    sizes = [(640, 360), (640, 480), (480, 270), (800, 450)]
    for i in range(n):
        w, h = sizes[int(rng.integers(len(sizes)))]
        img, labels = random_training_frame(rng, SceneConfig(width=640, height=360))
        if (w, h) != (640, 360):
            sx, sy = w / 640, h / 360
            img = cv2.resize(img, (w, h))
            labels = [(c, (b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy)) for c, b in labels]
        lb, r, (left, top) = letterbox(img)
        if rng.random() < 0.5:
            lb = lb[:, ::-1]
            labels = [(c, (w - b[2], b[1], w - b[0], b[3])) for c, b in labels]
        xs[i] = lb.transpose(2, 0, 1)
        ys.append(np.array([[c, b[0] * r + left, b[1] * r + top, b[2] * r + left, b[3] * r + top]
                            for c, b in labels], np.float32).reshape(-1, 5))
    return xs, ys


def build_targets(ys: list[np.ndarray]) -> tuple[torch.Tensor, ...]:
    """Assign each box to its centre cell and the two nearest neighbours (YOLOv5 style)."""
    b = len(ys)
    obj = torch.zeros(b, GRID, GRID)
    cls = torch.full((b, GRID, GRID), -1, dtype=torch.long)
    box = torch.zeros(b, 4, GRID, GRID)
    area = torch.full((b, GRID, GRID), 1e9)
    for i, y in enumerate(ys):
        for c, x1, y1, x2, y2 in y:
            x1, y1, x2, y2 = float(x1), float(y1), float(x2), float(y2)
            cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
            gx, gy = cx / STRIDE, cy / STRIDE
            ix, iy = int(gx), int(gy)
            cells = [(ix, iy), (ix + (1 if gx - ix > 0.5 else -1), iy),
                     (ix, iy + (1 if gy - iy > 0.5 else -1))]
            for jx, jy in cells:
                if not (0 <= jx < GRID and 0 <= jy < GRID) or area[i, jy, jx] < w * h:
                    continue
                obj[i, jy, jx] = 1
                cls[i, jy, jx] = int(c)
                area[i, jy, jx] = w * h
                box[i, :, jy, jx] = torch.tensor([(gx - jx + 0.5) / 2, (gy - jy + 0.5) / 2,
                                                  np.log(w / BOX_UNIT), np.log(h / BOX_UNIT)])
    return obj, cls, box


def loss_fn(raw: torch.Tensor, obj: torch.Tensor, cls: torch.Tensor, box: torch.Tensor
            ) -> torch.Tensor:
    """Objectness BCE everywhere, class CE and box L1 on positive cells."""
    lo = nn.functional.binary_cross_entropy_with_logits(raw[:, 0], obj, pos_weight=torch.tensor(4.0))
    pos = obj > 0
    if not pos.any():
        return lo
    logits = raw[:, 1:1 + NC].permute(0, 2, 3, 1)[pos]
    lc = nn.functional.cross_entropy(logits, cls[pos])
    t = raw[:, 1 + NC:].permute(0, 2, 3, 1)[pos]
    tb = box.permute(0, 2, 3, 1)[pos]
    lxy = nn.functional.l1_loss(torch.sigmoid(t[:, :2]), tb[:, :2].clamp(0, 1))
    lwh = nn.functional.l1_loss(t[:, 2:], tb[:, 2:])
    return lo + lc + 5 * lxy + 2 * lwh


def main(argv: list[str] | None = None) -> int:
    """Train, export to ONNX and write the model card's sha256."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2400)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("simnet.onnx"))
    a = p.parse_args(argv)
    torch.manual_seed(a.seed)
    torch.set_num_threads(2)
    t0 = time.monotonic()
    xs, ys = make_dataset(a.images, a.seed)
    print(f"rendered {a.images} training images in {time.monotonic() - t0:.0f} s", flush=True)
    net = SimNet()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    bs = 32
    steps = a.epochs * (a.images // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    rng = np.random.default_rng(a.seed)
    step = 0
    for epoch in range(a.epochs):
        order = rng.permutation(a.images)
        total = 0.0
        for k in range(a.images // bs):
            idx = order[k * bs:(k + 1) * bs]
            x = torch.from_numpy(xs[idx].astype(np.float32) / 255.0)
            obj, cls, box = build_targets([ys[i] for i in idx])
            loss = loss_fn(net(x), obj, cls, box)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            total += float(loss)
        print(f"epoch {epoch + 1}/{a.epochs} loss {total / (a.images // bs):.4f} "
              f"({time.monotonic() - t0:.0f} s)", flush=True)
    net.eval()
    model = Exported(net).eval()
    dummy = torch.zeros(1, 3, INPUT, INPUT)
    torch.onnx.export(model, (dummy,), str(a.out), input_names=["images"], output_names=["output"],
                      opset_version=17, dynamo=False)
    digest = hashlib.sha256(a.out.read_bytes()).hexdigest()
    print(f"wrote {a.out} ({a.out.stat().st_size} bytes) sha256 {digest}")
    card = a.out.with_suffix(".yaml")
    if card.exists():
        text = card.read_text().splitlines()
        text = [f"sha256: {digest}" if ln.startswith("sha256:") else ln for ln in text]
        card.write_text("\n".join(text) + "\n")
        print(f"updated sha256 in {card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
