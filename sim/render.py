"""Drawing of the synthetic traffic scene: road background and vehicle sprites.

Kept apart from the traffic model (``sim.traffic``) so that the model trainer
(``models/train_simnet.py``) can render random labelled frames with the very
same look as the simulated camera.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

#: Vehicle classes the simulator draws, in the order of the repo model's class ids.
SIM_CLASSES: tuple[str, ...] = ("car", "motorbike", "bus", "truck")

#: Nominal (width, length) in pixels at full scale, for a 640x360 frame.
NOMINAL_SIZE: dict[str, tuple[float, float]] = {
    "car": (34.0, 62.0),
    "motorbike": (15.0, 32.0),
    "bus": (46.0, 128.0),
    "truck": (44.0, 104.0),
}

_BODY_COLOURS = [
    (200, 200, 205), (40, 40, 45), (30, 30, 160), (160, 60, 30), (30, 120, 40),
    (230, 230, 230), (20, 140, 200), (90, 90, 95), (150, 20, 120), (60, 160, 200),
]


@dataclass
class Sprite:
    """One vehicle to draw: class, centre, size (w across, l along motion) and look."""

    cls: str
    cx: float
    cy: float
    w: float
    length: float
    heading_up: bool
    colour: tuple[int, int, int]
    colour2: tuple[int, int, int]

    def box(self) -> tuple[float, float, float, float]:
        """Axis-aligned box ``(x1, y1, x2, y2)`` of the whole sprite (rider included)."""
        return (self.cx - self.w / 2, self.cy - self.length / 2,
                self.cx + self.w / 2, self.cy + self.length / 2)


def random_look(rng: np.random.Generator) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Pick a body colour and a secondary colour (cargo box, rider's shirt)."""
    c1 = _BODY_COLOURS[int(rng.integers(len(_BODY_COLOURS)))]
    c2 = _BODY_COLOURS[int(rng.integers(len(_BODY_COLOURS)))]
    jitter = rng.integers(-15, 16, size=3)
    c1 = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(c1, jitter, strict=False))
    return c1, c2  # type: ignore[return-value]


def make_background(width: int, height: int, road: tuple[int, int], lanes_per_side: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Render a static road scene: verges, asphalt with texture, lane marks and a median."""
    img = np.empty((height, width, 3), np.uint8)
    verge = np.array([60, 110, 70], np.float32) + rng.uniform(-15, 15, 3)
    img[:] = verge.astype(np.uint8)
    x0, x1 = road
    grey = float(rng.uniform(85, 125))
    img[:, x0:x1] = int(grey)
    noise = rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    img = np.clip(img.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    mid = (x0 + x1) // 2
    cv2.rectangle(img, (mid - 4, 0), (mid + 4, height), (60, 140, 60), -1)
    lane_w = (mid - 4 - x0) / lanes_per_side
    for side in (0, 1):
        base = x0 if side == 0 else mid + 4
        for k in range(1, lanes_per_side):
            x = int(base + k * lane_w)
            for y in range(0, height, 40):
                cv2.line(img, (x, y), (x, y + 18), (220, 220, 220), 2)
    cv2.line(img, (x0 + 2, 0), (x0 + 2, height), (230, 230, 230), 2)
    cv2.line(img, (x1 - 3, 0), (x1 - 3, height), (230, 230, 230), 2)
    return img


def draw_sprite(img: np.ndarray, s: Sprite) -> None:
    """Draw one vehicle, seen from above and slightly behind, onto ``img`` in place."""
    x1, y1, x2, y2 = (round(v) for v in s.box())
    w, length = x2 - x1, y2 - y1
    front_top = s.heading_up  # the vehicle's front is at the top when heading up
    # soft shadow
    cv2.rectangle(img, (x1 + 3, y1 + 4), (x2 + 3, y2 + 4), (45, 45, 45), -1)
    if s.cls == "motorbike":
        cx = (x1 + x2) // 2
        cv2.rectangle(img, (cx - max(2, w // 5), y1), (cx + max(2, w // 5), y2), (25, 25, 25), -1)
        ry = y1 + length // 2
        cv2.ellipse(img, (cx, ry), (max(3, w // 2), max(4, length // 4)), 0, 0, 360, s.colour2, -1)
        hy = ry - length // 6 if front_top else ry + length // 6
        cv2.circle(img, (cx, hy), max(3, w // 3), s.colour, -1)
        return
    if s.cls == "truck":
        cab = int(length * 0.28)
        if front_top:
            cv2.rectangle(img, (x1, y1), (x2, y1 + cab), s.colour, -1)
            cv2.rectangle(img, (x1, y1 + cab + 2), (x2, y2), s.colour2, -1)
            cv2.rectangle(img, (x1 + 3, y1 + 3), (x2 - 3, y1 + cab // 2), (40, 40, 50), -1)
        else:
            cv2.rectangle(img, (x1, y2 - cab), (x2, y2), s.colour, -1)
            cv2.rectangle(img, (x1, y1), (x2, y2 - cab - 2), s.colour2, -1)
            cv2.rectangle(img, (x1 + 3, y2 - cab // 2), (x2 - 3, y2 - 3), (40, 40, 50), -1)
        cv2.rectangle(img, (x1, y1), (x2, y2), (30, 30, 30), 1)
        return
    cv2.rectangle(img, (x1, y1), (x2, y2), s.colour, -1)
    cv2.rectangle(img, (x1, y1), (x2, y2), (30, 30, 30), 1)
    glass = (50, 45, 40)
    if s.cls == "bus":
        for side_x in (x1 + 2, x2 - 6):
            cv2.rectangle(img, (side_x, y1 + 8), (side_x + 4, y2 - 8), glass, -1)
        fy = y1 + 3 if front_top else y2 - 12
        cv2.rectangle(img, (x1 + 3, fy), (x2 - 3, fy + 9), glass, -1)
        return
    # car: windscreen, roof, rear window
    ws = int(length * 0.22)
    if front_top:
        cv2.rectangle(img, (x1 + 3, y1 + ws // 2), (x2 - 3, y1 + ws + ws // 2), glass, -1)
        cv2.rectangle(img, (x1 + 4, y2 - ws), (x2 - 4, y2 - ws // 2), glass, -1)
    else:
        cv2.rectangle(img, (x1 + 3, y2 - ws - ws // 2), (x2 - 3, y2 - ws // 2), glass, -1)
        cv2.rectangle(img, (x1 + 4, y1 + ws // 2), (x2 - 4, y1 + ws), glass, -1)


def finish_frame(img: np.ndarray, rng: np.random.Generator, noise: float = 3.0,
                 gain: float = 1.0) -> np.ndarray:
    """Apply sensor-like effects (gain and per-frame noise) to a rendered frame."""
    out = img.astype(np.float32) * gain
    if noise > 0:
        out += rng.normal(0, noise, img.shape).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)
