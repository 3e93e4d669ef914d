"""The count-quality meter, rule by rule (``agent.vision.quality``), on synthetic frames: a
textured road, a block that crosses the counting line, boxes given or not (what a detector
saw or missed). Then the real pipeline on a simulator clip, clear and washed out."""

from __future__ import annotations

import numpy as np
import pytest

from agent.vision.quality import QualityMeter, QualitySettings

W, H, FPS = 320, 180, 15.0
LINE = ((0.0, 90.0), (319.0, 90.0))


#: the road's fixed texture: a gradient, lane marks and grain (a real picture's spread)
TEXTURE = (np.linspace(-20, 20, H)[:, None] + np.random.default_rng(0).integers(-8, 9, (H, W))
           + np.where((np.arange(W) // 40) % 2 == 0, 0, 6)[None, :]).astype(np.int16)


def road(rng: np.random.Generator, colour: bool = True, level: int = 110) -> np.ndarray:
    """A textured road (a blue tint unless ``colour`` is False) with sensor noise."""
    base = np.repeat((level + TEXTURE)[:, :, None], 3, axis=2)
    if colour:
        base[:, :, 0] += 30
    return np.clip(base + rng.integers(-3, 4, (H, W, 3)), 0, 255).astype(np.uint8)


def crossing(rng: np.random.Generator, frames: int = 30, x: int = 100, bright: int = 230,
             colour: bool = True, level: int = 110):
    """Frames of one block driving down across the line; yields (image, its box)."""
    for i in range(frames):
        img = road(rng, colour, level)
        y = int(20 + i * 140 / frames)
        img[y:y + 24, x:x + 40] = bright
        yield img, np.array([[x, y, x + 40, y + 24]], np.float32)


def still(rng: np.random.Generator, frames: int, colour: bool = True, level: int = 110):
    for _ in range(frames):
        yield road(rng, colour, level), np.zeros((0, 4), np.float32)


class Feed:
    """Frames into a meter with a running index; ``seen``: pass the boxes (the detector saw
    the vehicle) or none (it missed it)."""

    def __init__(self, **settings) -> None:
        self.meter = QualityMeter([LINE], FPS, QualitySettings(**settings))
        self.i = 0
        self.rng = np.random.default_rng(3)

    def run(self, frames, seen: bool = True):
        v = None
        for img, boxes in frames:
            v = self.meter.observe(img, self.i, boxes if seen else np.zeros((0, 4), np.float32),
                                   np.ones(len(boxes), np.float32) * 0.8 if seen else None)
            self.i += 1
        return v

    def vehicles(self, n: int, seen: bool):
        for _ in range(n):
            self.run(crossing(self.rng), seen)
            self.run(still(self.rng, 10))
        return self.meter.verdict()


def test_vehicles_the_detector_sees_are_good() -> None:
    f = Feed()
    v = f.vehicles(6, seen=True)
    assert v.good and v.reasons == ()
    s = f.meter.take().summary()
    assert s["grade"] == "good" and s["motionEpisodes"] >= 6 and s["agreement"] == 1.0
    assert s["meanConfidence"] == pytest.approx(0.8) and s["scene"] == "day"


def test_motion_the_detector_misses_makes_the_counts_poor() -> None:
    f = Feed(min_missed=3)
    f.vehicles(2, seen=False)
    assert f.meter.verdict().good                       # two misses: not enough evidence
    v = f.vehicles(1, seen=False)
    assert not v.good and "motion at the line, no vehicle detected" in v.reasons[0]
    s = f.meter.take().summary()
    assert s["grade"] == "poor" and s["agreement"] == 0.0
    assert s["reasons"] == ["motion at the line, no vehicle detected"]


def test_misses_that_are_a_minority_of_the_episodes_are_good() -> None:
    f = Feed(min_missed=3, max_missed=0.5)
    f.vehicles(8, seen=True)
    assert f.vehicles(3, seen=False).good                # 3 of 11 missed: under half


def test_a_quiet_road_is_judged_by_episodes_not_seconds() -> None:
    """A vehicle every few minutes (a quiet road at night, where dimming matters): two
    vehicles the detector missed, however far apart, make the counts poor."""
    f = Feed(min_missed=2)
    f.vehicles(1, seen=False)
    f.run(still(f.rng, int(300 * FPS)))                  # five quiet minutes
    assert f.meter.verdict().good
    v = f.vehicles(1, seen=False)
    assert not v.good and "2 of the last 2 episodes" in v.reasons[0]


def test_a_blind_detector_is_never_trusted_again_on_its_own() -> None:
    """Poor for unexplained motion stays poor, however long the road is quiet, until the
    latest recover_episodes episodes were all explained (the lamps do not hunt)."""
    f = Feed(min_missed=2, recover_episodes=3)
    f.vehicles(3, seen=False)
    assert not f.meter.verdict().good
    f.run(still(f.rng, int(600 * FPS)))                  # ten quiet minutes: no evidence
    assert not f.meter.verdict().good
    f.vehicles(2, seen=True)
    assert not f.meter.verdict().good                    # two seen: not yet
    assert f.vehicles(1, seen=True).good                 # three seen in a row: trusted


def test_misses_older_than_the_window_are_forgotten() -> None:
    f = Feed(min_missed=2, window_s=10.0)
    f.vehicles(1, seen=False)
    f.run(still(f.rng, int(12 * FPS)))
    assert f.vehicles(1, seen=False).good                # the first left the window


def test_an_empty_road_with_a_good_picture_is_good() -> None:
    f = Feed()
    assert f.run(still(f.rng, int(30 * FPS))).good
    assert f.meter.take().summary()["motionEpisodes"] == 0


@pytest.mark.parametrize("picture", ["black", "white", "uniform", "glare"])
def test_a_blinded_picture_is_poor(picture: str) -> None:
    f = Feed(recover_s=0.0)
    img = {"black": np.zeros((H, W, 3), np.uint8), "white": np.full((H, W, 3), 255, np.uint8),
           "uniform": np.full((H, W, 3), 128, np.uint8)}.get(picture)
    if img is None:                                       # glare: 40 % of the picture saturated
        img = road(f.rng)
        img[:72] = 255
    v = f.run((img, np.zeros((0, 4), np.float32)) for _ in range(int(6 * FPS)))
    assert not v.good and v.reasons[0].startswith("picture blinded")
    assert f.meter.take().summary()["scene"] == "blinded"
    assert f.run(still(f.rng, int(11 * FPS))).good       # the picture is back


def test_a_busy_band_is_cut_into_episodes() -> None:
    """Dense traffic that keeps the band moving all the time still makes episodes (one per
    max_s): a blind detector under a swarm is found, not hidden in one endless episode."""
    f = Feed(max_s=1.0, min_missed=3)
    rng = np.random.default_rng(5)

    def swarm(n: int):
        for i in range(n):
            img = road(rng)
            for k in range(6):                            # blocks at staggered phases
                y = int(60 + ((i * 3 + k * 9) % 60))
                img[y:y + 12, 20 + 50 * k:40 + 50 * k] = 230
            yield img, np.zeros((0, 4), np.float32)
    v = f.run(swarm(int(6 * FPS)), seen=False)
    assert not v.good
    assert f.meter.take().episodes >= 4


def test_a_box_that_does_not_move_explains_nothing() -> None:
    """A parked car (or a false detection) boxed on the band beside the lane: the vehicles
    passing unseen are still unexplained (any box on the band explained them all)."""
    f = Feed(min_missed=2)
    parked = np.array([[250, 80, 300, 100]], np.float32)
    for _ in range(3):
        for img, _box in crossing(f.rng, x=60):
            img[80:100, 250:300] = 40
            f.meter.observe(img, f.i, parked)
            f.i += 1
        f.run(still(f.rng, 10))
    assert not f.meter.verdict().good


def test_a_shaking_camera_is_no_evidence() -> None:
    """The whole picture moving (a camera shaking in the wind) is left out, not taken for
    vehicles the detector missed."""
    f = Feed()
    for k in range(int(30 * FPS)):
        img = np.roll(road(f.rng), (k % 3) - 1, axis=0)
        f.meter.observe(img, f.i, np.zeros((0, 4), np.float32))
        f.i += 1
    assert f.meter.verdict().good and f.meter.take().episodes == 0


def test_boxes_that_are_not_numbers_are_no_boxes() -> None:
    """A NaN or infinite box (a damaged model's output) is ignored, never an exception in
    the camera's thread."""
    f = Feed()
    bad = np.array([[np.nan, 1, 2, 3], [0, -np.inf, np.inf, 5], [1e30, 1e30, 2e30, 2e30]],
                   np.float32)
    for img, box in crossing(f.rng):
        f.meter.observe(img, f.i, np.concatenate([bad, box]))
        f.i += 1
    assert f.meter.verdict().good


@pytest.mark.parametrize(("colour", "level", "scene"), [(True, 110, "day"), (True, 40, "night"),
                                                         (False, 110, "ir")])
def test_each_frame_is_labelled_by_its_scene(colour: bool, level: int, scene: str) -> None:
    f = Feed()
    f.run(still(f.rng, 10, colour=colour, level=level))
    assert f.meter.take().summary()["scene"] == scene


def test_take_hands_each_frame_to_one_interval() -> None:
    f = Feed()
    f.run(still(f.rng, 7))
    a = f.meter.take()
    f.run(still(f.rng, 5))
    b = f.meter.take()
    assert (a.frames, b.frames) == (7, 5)
    a.add(b)
    assert a.frames == 12 and a.summary()["poorShare"] == 0.0


def test_the_pipeline_finds_a_washed_out_picture_and_not_a_clear_one(tmp_path) -> None:
    """simnet on a simulator clip: the clear picture's motion is all explained; the same clip
    washed out like a high-gain night CCTV (sim.traffic.washout) leaves the detector blind
    while the meter still sees the motion, and the counts turn poor."""
    import cv2

    from agent.vision.counter import Line
    from agent.vision.detect import load_detector
    from agent.vision.pipeline import CameraPipeline, PipelineSettings
    from sim.traffic import SceneConfig, washout, write_clip
    from tests.conftest import SIMNET

    cfg = SceneConfig(vehicles_per_minute=60.0)
    clip = tmp_path / "c.avi"
    write_clip(clip, 40, 4, cfg)
    y = round(cfg.height * cfg.line_y_frac)
    det = load_detector(SIMNET, {"car", "motorbike", "bus", "truck"})
    results = {}
    for washed in (False, True):
        p = CameraPipeline(det, PipelineSettings(lines=[Line.make("main", ((0, y), (cfg.width - 1, y)))],
                                                 fps=cfg.fps))
        cap, rng, i, poor = cv2.VideoCapture(str(clip)), np.random.default_rng(1), 0, 0
        while True:
            ok, img = cap.read()
            if not ok:
                break
            p.process(washout(img, rng) if washed else img, i)
            poor += not p.quality.verdict().good
            i += 1
        results[washed] = (poor / i, p.quality.take().summary())
    clear, washed = results[False], results[True]
    assert clear[0] == 0.0 and clear[1]["agreement"] == 1.0 and clear[1]["scene"] == "day"
    assert washed[1]["grade"] == "poor" and washed[0] > 0.5 and washed[1]["scene"] == "ir"


def test_the_interval_records_carry_the_quality_and_a_checkpoint_keeps_it() -> None:
    """The aggregator folds each frame's tally into the open interval; a crash's checkpoint
    carries it to the record that closes the interval (contract: traffic ``quality``)."""
    from agent.uplink.contract import traffic_message
    from agent.vision.aggregates import IntervalAggregator

    f = Feed(min_missed=1, max_missed=0.1)
    agg = IntervalAggregator("pole-1", "lab", "cam1", {"main": ("down", "up")}, [], 60, 120.0, 0.0)
    for img, _seen in crossing(f.rng):            # the detector misses it
        f.meter.observe(img, f.i, np.zeros((0, 4), np.float32))
        f.i += 1
        agg.add_quality(f.meter.take())
    for img, boxes in still(f.rng, 10):
        f.meter.observe(img, f.i, boxes)
        f.i += 1
        agg.add_quality(f.meter.take())
    cp = agg.checkpoint(150.0)
    again = IntervalAggregator("pole-1", "lab", "cam1", {"main": ("down", "up")}, [], 60, 200.0, 0.0)
    rec = again.restore(cp, "live")[0]
    assert rec.quality["grade"] == "poor" and rec.quality["motionEpisodes"] == 1
    assert rec.quality["reasons"] == ["motion at the line, no vehicle detected"]
    assert rec.to_json()["count_quality"]["motion_episodes"] == 1
    msg = traffic_message(rec, "2026-12-07T00:00:00Z")
    assert msg["quality"]["grade"] == "poor" and msg["quality"]["agreement"] == 0.0


def test_poor_counts_are_not_trusted_by_the_lighting() -> None:
    """The lighting's flow: a camera whose counts are poor gives no flow (the step's
    fallback), with the reason; good again, the flow is back."""
    from agent.lighting.flow import RollingFlow, TrafficSample

    flow = RollingFlow(window_s=3600, min_coverage_s=10, stale_s=60)
    flow.add(TrafficSample("cam1", 100.0, 60.0, {"car": 10}))
    assert flow.reading(["cam1"], 101.0).flow is not None
    flow.judged("cam1", ("motion at the line, no vehicle detected: 4 of 5 episodes",))
    r = flow.reading(["cam1"], 101.0)
    assert r.flow is None and r.reason.startswith("camera cam1: counts not trusted: motion at")
    flow.judged("cam1", ())
    assert flow.reading(["cam1"], 101.0).flow is not None


def test_poor_intervals_are_never_traffic() -> None:
    """An hour of poor (under)counts, then the counts are trusted again: the lighting's flow
    holds only the good intervals, so the poor hour's undercount cannot dim the road."""
    from agent.lighting.flow import RollingFlow
    from agent.records import TrafficRecord
    from agent.runner import traffic_samples

    def rec(end: float, n: int, grade: str) -> TrafficRecord:
        return TrafficRecord("p", "s", "cam1", end - 60, end, 60, False, 900, 900, 0, 0, 900, 900,
                             5.0, 0, False, False, "live", {"down": {"car": n}}, line="main",
                             quality={"grade": grade})

    flow = RollingFlow(window_s=3600, min_coverage_s=120, stale_s=600)
    for k in range(50):                                   # 50 poor minutes: nothing counted
        flow.add(*traffic_samples([rec(60.0 * (k + 1), 0, "poor")], 60.0 * (k + 1)))
    flow.seen("cam1", 3000.0)
    assert flow.reading(["cam1"], 3000.0).flow is None    # no coverage from poor intervals
    for k in range(50, 53):                               # then three good minutes, 12 a minute
        flow.add(*traffic_samples([rec(60.0 * (k + 1), 12, "good")], 60.0 * (k + 1)))
    flow.seen("cam1", 3180.0)
    r = flow.reading(["cam1"], 3180.0)
    assert r.flow is not None and r.flow.vehicles_per_hour == pytest.approx(720.0)
