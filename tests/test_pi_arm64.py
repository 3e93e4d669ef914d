"""The agent on the Pi's architecture: the aarch64 wheelhouse installs offline in an emulated
Raspberry Pi OS Bookworm root, and ``agent validate`` and ``agent count`` run there with
both the ONNX and the TFLite model, counting exactly what they count on this machine.

Opt-in (``make pi-test``, or ``POLELINK_ARM64_TEST=1``): it needs root, debootstrap,
qemu-user-static with binfmt_misc, the Debian mirror and the package index, and takes
minutes. When this machine cannot do a step, the test skips with the step and the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pi_root import REPO, CannotEmulate, PiRoot, make_clip, prepare

pytestmark = pytest.mark.slow

if os.environ.get("POLELINK_ARM64_TEST") != "1":
    pytest.skip("arm64 emulation test is opt-in: make pi-test (POLELINK_ARM64_TEST=1); needs root, "
                "debootstrap, qemu-user-static, the Debian mirror and the package index",
                allow_module_level=True)

CARDS = {"onnx": "simnet.yaml", "tflite": "simnet_ssd.yaml"}


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A simulated clip and its ground truth."""
    out = tmp_path_factory.mktemp("pi") / "clip.mp4"
    return out, make_clip(out)


@pytest.fixture(scope="module")
def pi(clip: tuple[Path, dict]) -> PiRoot:
    """The arm64 root with the wheelhouse installed offline and the app tree copied in."""
    try:
        return prepare(clip=clip[0])
    except CannotEmulate as exc:
        pytest.skip(str(exc))


def count_args(gt: dict) -> list[str]:
    """``agent count`` options for the clip's counting line."""
    x1, y1, x2, y2 = gt["line"]
    return ["--line", f"{x1},{y1},{x2},{y2},main", "--json", "-q"]


def crossings(doc: dict) -> tuple[dict, list[tuple]]:
    """Totals per line and every crossing (frame, line, direction, class) of an ``agent count --json``."""
    return doc["lines"], [(e["frame"], e["line"], e["direction"], e["class"]) for e in doc["events"]]


def test_the_root_is_aarch64_and_imports_every_runtime(pi: PiRoot) -> None:
    code = ("import platform, cv2, onnxruntime, tflite_runtime.interpreter, lap, pydantic_core, "
            "cryptography.hazmat.primitives.asymmetric.ed25519 as e; e.Ed25519PrivateKey.generate(); "
            "print(platform.machine(), cv2.__version__, onnxruntime.__version__)")
    proc = pi.run("/opt/polelink/venv/bin/python", "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "aarch64"
    assert pi.venv_mb > 50 and pi.wheelhouse_mb > 50


@pytest.mark.parametrize("runtime", list(CARDS))
def test_validate_checks_models_under_emulation(pi: PiRoot, runtime: str) -> None:
    demo = pi.path / pi.app("config/sim-demo.yaml").lstrip("/")
    cfg = demo.with_name(f"pole-{runtime}.yaml")
    cfg.write_text(demo.read_text().replace("../models/simnet.yaml", f"../models/{CARDS[runtime]}"))
    proc = pi.run("/opt/polelink/venv/bin/agent", "validate", "--check-models", pi.app(f"config/{cfg.name}"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "simulator_top_down" in proc.stdout
    bad = pi.run("/opt/polelink/venv/bin/agent", "validate", pi.app("config/missing.yaml"))
    assert bad.returncode == 1 and "Traceback" not in bad.stderr


@pytest.mark.parametrize("runtime", list(CARDS))
def test_counts_under_emulation_equal_this_machine(pi: PiRoot, clip: tuple[Path, dict], runtime: str) -> None:
    video, gt = clip
    here = subprocess.run([sys.executable, "-m", "agent", "count", str(video), "--model",
                           str(REPO / "models" / CARDS[runtime]), *count_args(gt)],
                          capture_output=True, text=True, check=True, cwd=REPO)
    there = pi.run("/opt/polelink/venv/bin/agent", "count", pi.app("var/demo/clip.mp4"), "--model",
                   pi.app(f"models/{CARDS[runtime]}"), *count_args(gt))
    assert there.returncode == 0, there.stderr
    totals, events = crossings(json.loads(there.stdout))
    assert (totals, events) == crossings(json.loads(here.stdout))
    assert totals["main"]["total"] == len(gt["events"]) > 0
