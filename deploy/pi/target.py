"""The Pi the wheelhouse is built for: Raspberry Pi OS Bookworm, aarch64, CPython 3.11, glibc 2.36.

One place for the interpreter and platform tags that ``lock.py`` resolves against and
``wheelhouse.py`` downloads for, so that the pins and the wheels always agree.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "deploy" / "pi" / "requirements-bookworm-arm64.txt"
WHEELHOUSE = ROOT / "var" / "wheelhouse" / "aarch64"

PYTHON_VERSION = "3.11"
IMPLEMENTATION = "cp"
ABI = "cp311"
ARCH = "aarch64"
GLIBC = (2, 36)  # Debian 12 "bookworm", which Raspberry Pi OS Bookworm is built on


def platform_tags() -> list[str]:
    """Every manylinux tag a Bookworm Pi's pip accepts, newest first.

    pip on the Pi accepts ``manylinux_2_X_aarch64`` for every X up to its glibc's minor
    (2.17 is the oldest aarch64 manylinux), plus the legacy alias ``manylinux2014``. ``pip
    download --platform`` does not widen a tag by itself, so all of them are listed:
    tflite-runtime 2.14, for one, is tagged ``manylinux_2_34`` only, onnxruntime
    ``manylinux_2_28``.
    """
    tags = [f"manylinux_{GLIBC[0]}_{minor}_{ARCH}" for minor in range(GLIBC[1], 16, -1)]
    return [*tags, f"manylinux2014_{ARCH}"]


def pip_target_args() -> list[str]:
    """The ``pip download``/``pip install --dry-run`` options that describe the Pi."""
    args: list[str] = []
    for tag in platform_tags():
        args += ["--platform", tag]
    return [*args, "--python-version", PYTHON_VERSION, "--implementation", IMPLEMENTATION,
            "--abi", ABI, "--only-binary=:all:"]
