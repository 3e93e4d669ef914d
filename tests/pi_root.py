"""The emulated arm64 Pi root for the aarch64 test and bench: build it, install, run in it.

``deploy/pi/arm64-root.sh`` does the privileged work (binfmt_misc, debootstrap, chroot);
this module drives it from Python and lays out a small app tree inside the root (the
demo config, the simulator models and a simulated clip) so that ``agent`` runs there on
the same files as on this machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "pi" / "arm64-root.sh"
DEFAULT_ROOT = REPO / "var" / "pi" / "bookworm-arm64"
APP = "/opt/polelink/app"  # inside the root
AGENT = "/opt/polelink/venv/bin/agent"  # inside the root
CANNOT = 77  # arm64-root.sh: this machine cannot do a step


class CannotEmulate(RuntimeError):
    """This machine cannot do one of the steps; the message says which and why."""


@dataclass
class PiRoot:
    """A built arm64 root with the wheelhouse installed and the app tree in place."""

    path: Path
    venv_mb: int
    wheelhouse_mb: float

    def app(self, rel: str) -> str:
        """The path, inside the root, of ``rel`` in the app tree."""
        return f"{APP}/{rel}"

    def run(self, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        """Run a command inside the root (emulated, no network); never raises on exit code."""
        return subprocess.run(["bash", str(SCRIPT), "run", "--root", str(self.path), "--", *args],
                              capture_output=True, text=True, timeout=timeout)


def _script(*args: str, timeout: float = 3600) -> str:
    proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode == CANNOT:
        raise CannotEmulate(proc.stderr.strip().splitlines()[-1])
    if proc.returncode:
        raise RuntimeError(f"arm64-root.sh {args[0]} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout


def make_clip(out: Path, seconds: int = 6, seed: int = 6, density: int = 150, fps: int = 5) -> dict:
    """Render a simulator clip with ``python -m sim.traffic``; return its ground truth.

    The default is short and dense (30 frames at 5 fps, 13 crossings): under qemu-user
    on this project's machines ``agent count`` takes 6 to 12 s a frame, so every frame counts.
    """
    subprocess.run([sys.executable, "-m", "sim.traffic", "--out", str(out), "--seconds", str(seconds),
                    "--seed", str(seed), "--density", str(density), "--fps", str(fps)],
                   check=True, capture_output=True, cwd=REPO)
    return json.loads(out.with_suffix(".gt.json").read_text())


def prepare(root: Path = DEFAULT_ROOT, clip: Path | None = None) -> PiRoot:
    """Build the wheelhouse and the root, install offline, and copy the app tree in.

    The app tree mirrors the repo's: ``config/sim-demo.yaml``, ``models/simnet*`` and the
    clip at ``var/demo/clip.mp4``, where the demo config expects it.
    """
    if os.geteuid() != 0:
        raise CannotEmulate("cannot chroot into the arm64 root: needs root (chroot, mount, unshare)")
    proc = subprocess.run([sys.executable, "-m", "deploy.pi.wheelhouse"], capture_output=True, text=True,
                          cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"make wheelhouse failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    wheelhouse_mb = json.loads(proc.stdout.strip().splitlines()[-1])["wheelhouse_mb"]
    _script("build", "--root", str(root))
    venv_mb = json.loads(_script("install", "--root", str(root)).strip().splitlines()[-1])["venv_mb"]
    app = root / APP.lstrip("/")
    shutil.rmtree(app, ignore_errors=True)
    (app / "config").mkdir(parents=True)
    (app / "models").mkdir()
    (app / "var" / "demo").mkdir(parents=True)
    shutil.copy(REPO / "config" / "sim-demo.yaml", app / "config")
    for f in (REPO / "models").glob("simnet*"):
        if f.suffix in (".yaml", ".onnx", ".tflite"):
            shutil.copy(f, app / "models")
    if clip is not None:
        shutil.copy(clip, app / "var" / "demo" / "clip.mp4")
    return PiRoot(root, venv_mb, wheelhouse_mb)
