"""The Pi's pinned requirements agree with setup.cfg, and the wheelhouse tooling targets the Pi.

Offline and fast (runs in ``make test``): the download and the emulated install are in
``test_pi_arm64.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys

from packaging.markers import default_environment
from packaging.requirements import Requirement

from deploy.pi import lock, target, wheelhouse
from tests.conftest import ROOT

PI_ENV = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.2",
          "platform_system": "Linux", "platform_machine": "aarch64", "sys_platform": "linux"}
LINE = re.compile(r"^([A-Za-z0-9_.-]+)==(\S+) --hash=sha256:([0-9a-f]{64})$")


def pins() -> dict[str, str]:
    """``{canonical name: version}`` of the committed requirements file, each line checked."""
    out = {}
    for line in target.REQUIREMENTS.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        m = LINE.match(line)
        assert m, f"not an exact pin with a sha256: {line!r}"
        name = wheelhouse.canonical(m.group(1))
        assert name not in out, f"pinned twice: {name}"
        out[name] = m.group(2)
    return out


def test_every_install_requires_is_pinned_within_its_range() -> None:
    pinned = pins()
    for spec in lock.install_requires(ROOT / "setup.cfg"):
        req = Requirement(spec)
        if req.marker is not None and not req.marker.evaluate(PI_ENV):
            continue
        name = wheelhouse.canonical(req.name)
        assert name in pinned, f"{req.name} (setup.cfg) is not pinned for the Pi: run make pi-lock"
        assert req.specifier.contains(pinned[name], prereleases=True), \
            f"{req.name}=={pinned[name]} is outside setup.cfg's {req.specifier}: run make pi-lock"
    # the runtimes the issue names are all there, numpy 1.x for tflite-runtime 2.14
    assert {"onnxruntime", "opencv_python_headless", "tflite_runtime", "pydantic_core", "lap",
            "python_dali", "cryptography"} <= set(pinned)
    assert pinned["numpy"].startswith("1.") and "scipy" not in pinned


def test_pins_note_each_wheel_and_whether_it_is_pure_python() -> None:
    lines = target.REQUIREMENTS.read_text().splitlines()
    for i, line in enumerate(lines):
        if LINE.match(line):
            note = lines[i - 1]
            assert note.startswith("# ") and ".whl (" in note, f"no wheel note above {line!r}"
            wheel = note[2:].split(" ")[0]
            assert wheelhouse.canonical(wheel.split("-")[0]) == wheelhouse.canonical(line.split("==")[0])
            kind = wheelhouse.wheel_kind(wheel)
            assert ("pure Python" in note) == (kind == "pure")
            if kind != "pure":  # an aarch64 wheel that Bookworm's glibc 2.36 can load
                assert set(kind.split(".")) & set(target.platform_tags()), note


def test_platform_tags_cover_bookworm_glibc() -> None:
    tags = target.platform_tags()
    assert "manylinux_2_34_aarch64" in tags  # tflite-runtime 2.14
    assert "manylinux_2_17_aarch64" in tags and "manylinux2014_aarch64" in tags
    assert "manylinux_2_36_aarch64" in tags and "manylinux_2_37_aarch64" not in tags
    args = target.pip_target_args()
    assert args[args.index("--abi") + 1] == "cp311" and "--only-binary=:all:" in args


def test_wheelhouse_and_lock_explain_themselves() -> None:
    for module in ("deploy.pi.wheelhouse", "deploy.pi.lock"):
        proc = subprocess.run([sys.executable, "-m", module, "--help"],
                              capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0 and "usage:" in proc.stdout


def test_arm64_root_script_says_what_it_needs() -> None:
    proc = subprocess.run(["bash", str(ROOT / "deploy" / "pi" / "arm64-root.sh"), "frobnicate"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "arm64-root.sh build" in proc.stderr
