"""Synthetic traffic camera with known ground truth.

A two-carriageway road seen from a pole: vehicles of four classes (motorbikes are the
majority, as in the cities polelink serves) move up and down the image at varied
speeds, keeping a safe gap to the vehicle ahead so that moderate traffic never
overlaps. Every crossing of the counting line by a vehicle's box centre is recorded
with the same rule and JSON layout as the hand-made ground truth in ``../shared/data``.

Command line::

    python -m sim.traffic --out clip.mp4 --seconds 60 --seed 1      # clip + clip.gt.json
    python -m sim.traffic --serve 127.0.0.1:8554 --seed 1           # live MJPEG over HTTP

From code: :func:`simulate` returns frames and events; :class:`TrafficScene` steps
one frame at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from sim.render import (
    NOMINAL_SIZE,
    SIM_CLASSES,
    Sprite,
    draw_sprite,
    finish_frame,
    make_background,
    random_look,
)

#: Default share of each class in the traffic (motorbike-dominated city traffic).
DEFAULT_MIX: dict[str, float] = {"motorbike": 0.6, "car": 0.26, "truck": 0.07, "bus": 0.07}


@dataclass
class SceneConfig:
    """Geometry and traffic parameters of a simulated camera."""

    width: int = 640
    height: int = 360
    fps: float = 15.0
    lanes_per_side: int = 3
    vehicles_per_minute: float = 40.0
    speed_px_s: tuple[float, float] = (70.0, 190.0)
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    line_y_frac: float = 0.55
    noise: float = 3.0
    #: Static objects drawn over the traffic (tree crowns, sign gantries), as fractions of
    #: the frame ``(x0, y0, x1, y1)``: vehicles behind them are hidden, not gone.
    occluders: list[tuple[float, float, float, float]] = field(default_factory=list)

    @property
    def road(self) -> tuple[int, int]:
        """Horizontal extent of the road in pixels."""
        return int(self.width * 0.18), int(self.width * 0.82)

    @property
    def line(self) -> tuple[int, int, int, int]:
        """The counting line across the whole road: ``(x1, y1, x2, y2)``."""
        y = round(self.height * self.line_y_frac)
        x0, x1 = self.road
        return (x0, y, x1, y)


@dataclass
class Vehicle:
    """A simulated vehicle and its state."""

    vid: int
    sprite: Sprite
    lane: int
    speed: float  # desired speed, px/s
    up: bool
    base_w: float  # size at the bottom of the image (perspective factor 1)
    base_l: float


def _perspective(y: float, height: int) -> float:
    """Scale factor: vehicles far away (top of the image) look smaller."""
    return 0.72 + 0.28 * float(np.clip(y / height, 0.0, 1.0))


class TrafficScene:
    """Steps the traffic one frame at a time and renders it."""

    def __init__(self, cfg: SceneConfig, seed: int) -> None:
        self.cfg = cfg
        self.rng = np.random.default_rng(seed)
        self.background = make_background(cfg.width, cfg.height, cfg.road, cfg.lanes_per_side,
                                          self.rng)
        self.gain = float(self.rng.uniform(0.85, 1.15))
        self.vehicles: list[Vehicle] = []
        self.frame_index = -1
        self._next_id = 0
        self._classes = list(cfg.mix)
        probs = np.array([cfg.mix[c] for c in self._classes], float)
        self._probs = probs / probs.sum()
        x0, x1 = cfg.road
        mid = (x0 + x1) / 2
        lane_w = (mid - 4 - x0) / cfg.lanes_per_side
        # lanes 0..n-1 on the left carriageway (downwards), n..2n-1 on the right (upwards)
        self.lane_x = [x0 + lane_w * (k + 0.5) for k in range(cfg.lanes_per_side)]
        self.lane_x += [mid + 4 + lane_w * (k + 0.5) for k in range(cfg.lanes_per_side)]
        self.lane_w = lane_w

    def _spawn(self) -> None:
        cfg = self.cfg
        lane = int(self.rng.integers(len(self.lane_x)))
        up = lane >= cfg.lanes_per_side
        cls = str(self.rng.choice(self._classes, p=self._probs))
        w0, l0 = NOMINAL_SIZE[cls]
        size = float(self.rng.uniform(0.88, 1.12))
        y = cfg.height + l0 if up else -l0
        # keep a gap to the last vehicle in that lane, or give up this arrival
        for v in self.vehicles:
            if v.lane == lane:
                gap = (v.sprite.cy - y) if not up else (y - v.sprite.cy)
                if abs(gap) < (v.sprite.length + l0) / 2 + 25:
                    return
        lateral = 0.0
        if cls == "motorbike":
            lateral = float(self.rng.uniform(-0.25, 0.25)) * self.lane_w
        c1, c2 = random_look(self.rng)
        k = _perspective(y, cfg.height)
        s = Sprite(cls, self.lane_x[lane] + lateral, y, w0 * size * k, l0 * size * k, up, c1, c2)
        lo, hi = cfg.speed_px_s
        speed = float(self.rng.uniform(lo, hi)) * (0.8 if cls in ("bus", "truck") else 1.0)
        self.vehicles.append(Vehicle(self._next_id, s, lane, speed, up, w0 * size, l0 * size))
        self._next_id += 1

    def step(self) -> None:
        """Advance the scene by one frame: arrivals, car-following, departures."""
        cfg = self.cfg
        self.frame_index += 1
        dt = 1.0 / cfg.fps
        rate = cfg.vehicles_per_minute / 60.0 * dt
        for _ in range(int(self.rng.poisson(rate))):
            self._spawn()
        # car following: never closer than a safe gap to the vehicle ahead in the lane
        by_lane: dict[int, list[Vehicle]] = {}
        for v in self.vehicles:
            by_lane.setdefault(v.lane, []).append(v)
        for lane_vs in by_lane.values():
            up = lane_vs[0].up
            lane_vs.sort(key=lambda v: v.sprite.cy if up else -v.sprite.cy)  # leader first
            leader: Vehicle | None = None
            for v in lane_vs:
                move = v.speed * dt
                if leader is not None:
                    gap = abs(leader.sprite.cy - v.sprite.cy) - (leader.sprite.length
                                                                 + v.sprite.length) / 2
                    move = max(0.0, min(move, gap - 12.0))
                v.sprite.cy += -move if up else move
                k = _perspective(v.sprite.cy, cfg.height)
                v.sprite.w, v.sprite.length = v.base_w * k, v.base_l * k
                leader = v
        self.vehicles = [v for v in self.vehicles
                         if -200 < v.sprite.cy < cfg.height + 200]

    def render(self) -> np.ndarray:
        """Render the current frame (BGR uint8)."""
        img = self.background.copy()
        for v in sorted(self.vehicles, key=lambda v: v.sprite.length):
            draw_sprite(img, v.sprite)
        h, w = img.shape[:2]
        for x0, y0, x1, y1 in self.cfg.occluders:
            # foliage green with a darker rim, so it reads as an object, not as road
            p0, p1 = (round(x0 * w), round(y0 * h)), (round(x1 * w), round(y1 * h))
            cv2.rectangle(img, p0, p1, (40, 90, 45), -1)
            cv2.rectangle(img, p0, p1, (25, 60, 30), 2)
        return finish_frame(img, self.rng, self.cfg.noise, self.gain)


@dataclass
class Crossing:
    """A ground-truth crossing of the counting line by a vehicle's box centre."""

    frame: int
    direction: str
    cls: str
    x: int
    vehicle: int


def run_scene(cfg: SceneConfig, seed: int, n_frames: int) -> Iterator[tuple[np.ndarray, list[Crossing]]]:
    """Yield ``(frame, crossings in this frame)`` for ``n_frames`` frames.

    The rule matches ``../shared/data/*.gt.json``: a crossing is recorded in the first
    frame in which the box centre is past the line; vehicles are born off-screen.
    """
    scene = TrafficScene(cfg, seed)
    lx1, ly, lx2, _ = cfg.line
    last_side: dict[int, float] = {}
    for _ in range(n_frames):
        scene.step()
        events: list[Crossing] = []
        for v in scene.vehicles:
            side = v.sprite.cy - ly
            prev = last_side.get(v.vid)
            if prev is not None and prev * side <= 0 and side != 0 and lx1 <= v.sprite.cx <= lx2:
                direction = "up" if side < 0 else "down"
                events.append(Crossing(scene.frame_index, direction, v.sprite.cls,
                                       round(v.sprite.cx), v.vid))
            if side != 0:
                last_side[v.vid] = side
        yield scene.render(), events


def ground_truth(cfg: SceneConfig, seed: int, n_frames: int, events: list[Crossing],
                 clip_name: str) -> dict:
    """Build the ground-truth document (same layout as the shared clip's ``.gt.json``)."""
    totals: dict[str, dict[str, int]] = {d: {c: 0 for c in SIM_CLASSES} for d in ("up", "down")}
    for e in events:
        totals[e.direction][e.cls] += 1
    by_dir = {d: sum(totals[d].values()) for d in totals}
    return {
        "clip": clip_name,
        "generator": {"tool": "sim.traffic", "seed": seed, "fps": cfg.fps,
                      "vehicles_per_minute": cfg.vehicles_per_minute, "mix": cfg.mix},
        "frame_size": [cfg.width, cfg.height],
        "occluders": [list(o) for o in cfg.occluders],
        "fps": cfg.fps,
        "frame_count": n_frames,
        "line": list(cfg.line),
        "rule": "A vehicle is counted once when the centre of its box crosses the line; "
                "'frame' is the first frame in which the centre is past the line; "
                "up/down in image terms.",
        "events": [{"frame": e.frame, "direction": e.direction, "class": e.cls, "x": e.x,
                    "vehicle": e.vehicle} for e in events],
        "totals": {**totals, "all": sum(by_dir.values()), "all_by_direction": by_dir},
    }


def write_clip(out: Path, seconds: float, seed: int, cfg: SceneConfig | None = None,
               progress: bool = False) -> dict:
    """Render a clip to ``out`` and its ground truth to ``out.with_suffix('.gt.json')``."""
    cfg = cfg or SceneConfig()
    n = round(seconds * cfg.fps)
    out.parent.mkdir(parents=True, exist_ok=True)
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if out.suffix.lower() == ".avi" else "mp4v"))
    writer = cv2.VideoWriter(str(out), fourcc, cfg.fps, (cfg.width, cfg.height))
    if not writer.isOpened():
        raise RuntimeError(f"cannot open a video writer for {out} (try a .avi or .mp4 name)")
    events: list[Crossing] = []
    try:
        for i, (frame, ev) in enumerate(run_scene(cfg, seed, n)):
            writer.write(frame)
            events.extend(ev)
            if progress and (i % max(1, n // 20) == 0 or i == n - 1):
                print(f"\rrendering {i + 1}/{n} frames, {len(events)} crossings",
                      end="", file=sys.stderr, flush=True)
    finally:
        writer.release()
        if progress:
            print(file=sys.stderr)
    gt = ground_truth(cfg, seed, n, events, out.name)
    out.with_suffix(".gt.json").write_text(json.dumps(gt, indent=1))
    return gt


def random_training_frame(rng: np.random.Generator, cfg: SceneConfig | None = None
                          ) -> tuple[np.ndarray, list[tuple[int, tuple[float, float, float, float]]]]:
    """Render one frame with vehicles at random places and return it with its labels.

    Labels are ``(class_id, (x1, y1, x2, y2))`` clipped to the frame; used to train the
    repo's own simulator model.
    """
    cfg = cfg or SceneConfig()
    scene = TrafficScene(cfg, int(rng.integers(1 << 31)))
    n = int(rng.integers(0, 14))
    sprites: list[Sprite] = []
    for _ in range(n):
        lane = int(rng.integers(len(scene.lane_x)))
        up = lane >= cfg.lanes_per_side
        cls = str(rng.choice(list(DEFAULT_MIX), p=np.array(list(DEFAULT_MIX.values()))
                             / sum(DEFAULT_MIX.values())))
        w0, l0 = NOMINAL_SIZE[cls]
        cy = float(rng.uniform(-0.3 * l0, cfg.height + 0.3 * l0))
        k = _perspective(cy, cfg.height) * float(rng.uniform(0.85, 1.15))
        lateral = float(rng.uniform(-0.3, 0.3)) * scene.lane_w if cls == "motorbike" else 0.0
        c1, c2 = random_look(rng)
        s = Sprite(cls, scene.lane_x[lane] + lateral, cy, w0 * k, l0 * k, up, c1, c2)
        if any(_overlap(s, o) > 0.3 for o in sprites):
            continue
        sprites.append(s)
    img = scene.background.copy()
    for s in sorted(sprites, key=lambda s: s.length):
        draw_sprite(img, s)
    img = finish_frame(img, rng, cfg.noise * float(rng.uniform(0.5, 2.0)),
                       float(rng.uniform(0.7, 1.3)))
    labels = []
    for s in sprites:
        x1, y1, x2, y2 = s.box()
        x1, y1 = max(0.0, x1), max(0.0, y1)
        x2, y2 = min(cfg.width - 1.0, x2), min(cfg.height - 1.0, y2)
        if x2 - x1 > 4 and y2 - y1 > 6:
            labels.append((SIM_CLASSES.index(s.cls), (x1, y1, x2, y2)))
    return img, labels


def _overlap(a: Sprite, b: Sprite) -> float:
    ax1, ay1, ax2, ay2 = a.box()
    bx1, by1, bx2, by2 = b.box()
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    return inter / max(1e-6, min((ax2 - ax1) * (ay2 - ay1), (bx2 - bx1) * (by2 - by1)))


def washout(img: np.ndarray, rng: np.random.Generator, contrast: float = 0.35,
            noise: float = 25.0) -> np.ndarray:
    """A picture as a high-gain night CCTV gives it: grey, flat (``contrast`` of its
    luma's spread around a mid grey) and noisy (``noise``: the standard deviation of the
    gain's noise, 0–255). Vehicles still move visibly; a detector trained on clear
    pictures no longer sees them (the simulator's simnet: none at the defaults)."""
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
    out = 140.0 + (g - float(g.mean())) * contrast + rng.normal(0.0, noise, g.shape)
    return cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_GRAY2BGR)


def live_frames(cfg: SceneConfig, seed: int, washout_file: Path | None = None
                ) -> Iterator[np.ndarray]:
    """Endless frames of the scene (for serving live); washed out (:func:`washout`) while
    ``washout_file`` exists, so a test can turn the picture bad and good again."""
    scene = TrafficScene(cfg, seed)
    rng = np.random.default_rng(seed)
    while True:
        scene.step()
        frame = scene.render()
        yield washout(frame, rng) if washout_file is not None and washout_file.exists() \
            else frame


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: render a clip with ground truth, or serve frames live."""
    p = argparse.ArgumentParser(prog="python -m sim.traffic", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="video file to write (.mp4 or .avi); "
                   "ground truth goes next to it as NAME.gt.json")
    p.add_argument("--serve", metavar="HOST:PORT",
                   help="serve live MJPEG over HTTP instead (loopback only by default)")
    p.add_argument("--seconds", type=float, default=60.0, help="clip length (default 60)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--fps", type=float, default=15.0, help="frame rate (default 15)")
    p.add_argument("--size", default="640x360", help="frame size WxH (default 640x360)")
    p.add_argument("--density", type=float, default=40.0,
                   help="arrivals per minute over all lanes (default 40: moderate)")
    p.add_argument("--line-at", type=float, default=0.55, metavar="FRAC",
                   help="counting line height as a fraction of the frame (default 0.55; "
                        "0.85 puts it where vehicles coming up enter the picture)")
    p.add_argument("--occluder", action="append", default=[], metavar="X0,Y0,X1,Y1",
                   help="a static object over the road, in fractions of the frame; repeatable")
    p.add_argument("--washout-file", type=Path, metavar="PATH",
                   help="with --serve: while PATH exists, frames are washed out like a "
                        "high-gain night CCTV (grey, flat, noisy): vehicles still move, the "
                        "detector no longer sees them")
    a = p.parse_args(argv)
    if not 0.05 <= a.line_at <= 0.95:
        p.error(f"--line-at must be between 0.05 and 0.95, got {a.line_at}")
    occluders = []
    for spec in a.occluder:
        try:
            x0, y0, x1, y1 = (float(v) for v in spec.split(","))
        except ValueError:
            p.error(f"--occluder expects four fractions X0,Y0,X1,Y1, got {spec!r}")
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            p.error(f"--occluder needs 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {spec!r}")
        occluders.append((x0, y0, x1, y1))
    try:
        w, h = (int(v) for v in a.size.lower().split("x"))
    except ValueError:
        p.error(f"--size must look like 640x360, got {a.size!r}")
    cfg = SceneConfig(width=w, height=h, fps=a.fps, vehicles_per_minute=a.density,
                      line_y_frac=a.line_at, occluders=occluders)
    if a.serve:
        from sim.mjpeg import serve_forever

        host, _, port = a.serve.rpartition(":")
        serve_forever(host or "127.0.0.1", int(port), live_frames(cfg, a.seed, a.washout_file),
                      cfg.fps)
        return 0
    if not a.out:
        p.error("give --out FILE or --serve HOST:PORT")
    t0 = time.monotonic()
    gt = write_clip(a.out, a.seconds, a.seed, cfg, progress=True)
    print(f"wrote {a.out} ({gt['frame_count']} frames, {time.monotonic() - t0:.1f} s) and "
          f"{a.out.with_suffix('.gt.json')}: {gt['totals']['all']} crossings "
          f"(up {gt['totals']['all_by_direction']['up']}, "
          f"down {gt['totals']['all_by_direction']['down']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
