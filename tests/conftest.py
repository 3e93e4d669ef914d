"""Shared fixtures: simulated clips with ground truth, the repo model, the shared folder."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from sim.traffic import SceneConfig, write_clip

# Property tests judge what the code does, never how fast: no per-example deadline and no
# "too slow" health check, which a machine busy with a second test run would trip.
settings.register_profile("polelink", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("polelink")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SIMNET = ROOT / "models" / "simnet.yaml"
YOLOX = ROOT / "models" / "yolox_nano.yaml"
MOTORWAY = SHARED / "data" / "motorway-cctv-320x240.avi"


def pytest_configure(config: pytest.Config) -> None:
    """Start every process as a terminal would. A suite started in the background by a
    non-interactive shell (``make test &``) inherits SIGINT *ignored*, and so would every
    process it starts: Python then installs no KeyboardInterrupt handler and bash cannot
    trap INT, so the tests of what Ctrl-C does would see nothing happen (this once looked
    like a timing failure under load)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def need_shared(*paths: Path) -> None:
    """Skip the calling test, with a clear message, when ../shared files are absent."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"needs ../shared (not in a fresh clone): missing {', '.join(missing)}")


@pytest.fixture(scope="session")
def sim_clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A 40 s simulated clip at moderate density (15 fps) and its ground truth."""
    out = tmp_path_factory.mktemp("sim") / "clip.avi"
    gt = write_clip(out, 40, seed=11, cfg=SceneConfig(vehicles_per_minute=40))
    return out, gt


@pytest.fixture(scope="session")
def sim_clip_5fps(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A 60 s simulated clip at 5 fps: fast vehicles move far between frames."""
    out = tmp_path_factory.mktemp("sim5") / "clip.avi"
    gt = write_clip(out, 60, seed=12, cfg=SceneConfig(fps=5, vehicles_per_minute=40))
    return out, gt


def load_json(path: Path) -> dict:
    """Read a JSON file."""
    return json.loads(Path(path).read_text())


@pytest.fixture
def city_stack(tmp_path: Path, sim_clip: tuple[Path, dict]):
    """A mosquitto, a DALI emulator, the platform simulator and a pole config tying them
    to the simulated clip: ``(broker, emulator, platform, config path)``; stopped after."""
    from sim.dali import DaliEmulator, make_gear
    from sim.platform import PlatformSim
    from tests.mqtt_broker import Broker
    from tests.test_agent_mqtt import config_text

    broker = Broker(tmp_path).start()
    emu = DaliEmulator(make_gear(2), "hat").start()
    platform = PlatformSim(port=broker.port).start()
    video, gt = sim_clip
    cfg = tmp_path / "pole.yaml"
    cfg.write_text(config_text(tmp_path, video, gt["line"], broker.port, emu.path))
    yield broker, emu, platform, cfg
    platform.stop()
    emu.stop()
    broker.stop()
