"""Motion gating: still scenes skip the detector, moving ones do not, noise is not motion."""

from __future__ import annotations

import numpy as np

from agent.vision.detect import load_detector
from agent.vision.motion import MotionGate
from agent.vision.offline import lines_from_args
from agent.vision.pipeline import CameraPipeline, PipelineSettings
from sim.traffic import SceneConfig, TrafficScene
from tests.conftest import SIMNET


def test_still_noisy_scene_is_not_motion_and_a_vehicle_is() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(60, 200, (360, 640, 3)).astype(np.uint8)
    gate = MotionGate(threshold=0.001)
    assert gate.moving(base)  # first frame: nothing to compare with
    for _ in range(5):
        noisy = np.clip(base.astype(int) + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)
        assert not gate.moving(noisy), gate.last_fraction
    moved = base.copy()
    moved[100:130, 300:315] = 20  # a motorbike-sized dark blob appears
    assert gate.moving(moved)


def test_gating_skips_the_detector_on_an_empty_road() -> None:
    scene = TrafficScene(SceneConfig(vehicles_per_minute=0), seed=1)
    pipe = CameraPipeline(load_detector(SIMNET), PipelineSettings(
        lines=lines_from_args(["115,198,524,198"]), fps=15, motion=True, keepalive_s=2.0))
    for i in range(90):
        scene.step()
        pipe.process(scene.render(), i)
    # 6 s of empty road: the first frame, then one keep-alive detection every 2 s
    assert pipe.frames_detected <= 4
    assert pipe.frames_skipped_motion >= 85
