"""Build the Pi's offline wheelhouse: ``python -m deploy.pi.wheelhouse`` (``make wheelhouse``).

Downloads the aarch64 wheel of every package pinned in ``requirements-bookworm-arm64.txt``
(``pip download --only-binary=:all: --require-hashes`` for the target in ``target.py``:
an sdist, a missing aarch64 wheel, an unpinned dependency or a wrong hash stops it),
builds the agent's own wheel (``pip wheel --no-deps .``), copies the requirements file
in, drops wheels that are no longer pinned, and prints every wheel with its kind (pure
Python or compiled) and size, and the total. The folder is all a Pi needs to install the
agent without a network::

    python3 -m venv /opt/polelink/venv
    /opt/polelink/venv/bin/pip install --no-index --find-links DIR --require-hashes -r DIR/requirements.txt
    /opt/polelink/venv/bin/pip install --no-index --no-deps DIR/polelink-*.whl
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from deploy.pi import target

PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s;]+)")


def canonical(name: str) -> str:
    """A distribution name as wheel files and pins compare it (PEP 503, ``_`` for ``-``)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def pinned(requirements: Path) -> dict[str, str]:
    """``{canonical name: version}`` of every pin in a requirements file."""
    pins = {}
    for line in requirements.read_text().splitlines():
        m = PIN.match(line)
        if m:
            pins[canonical(m.group(1))] = m.group(2)
    return pins


def wheel_kind(wheel: str) -> str:
    """``pure`` for a pure-Python wheel, else its platform tag(s)."""
    plat = wheel[: -len(".whl")].rsplit("-", 1)[-1]
    return "pure" if plat == "any" else plat


def run(cmd: list[str], what: str) -> None:
    """Run ``cmd``; on failure, raise SystemExit with one line saying ``what`` failed and pip's tail."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip() and "is ignored" not in ln][-6:]
        raise SystemExit(f"wheelhouse: {what} failed (exit {proc.returncode}):\n" + "\n".join(tail))


def build(out: Path, requirements: Path) -> list[Path]:
    """Fill ``out`` with the pinned aarch64 wheels and the agent's wheel; return the wheels."""
    out.mkdir(parents=True, exist_ok=True)
    print(f"downloading the aarch64 wheels pinned in {requirements.relative_to(target.ROOT)} ...",
          file=sys.stderr, flush=True)
    run([sys.executable, "-m", "pip", "download", "--quiet", "--require-hashes", *target.pip_target_args(),
         "-r", str(requirements), "-d", str(out)], "pip download")
    for old in out.glob("polelink-*.whl"):
        old.unlink()
    print("building the agent's wheel ...", file=sys.stderr, flush=True)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", str(target.ROOT), "-w", str(out)],
        "pip wheel")
    shutil.copyfile(requirements, out / "requirements.txt")
    pins = pinned(requirements)
    wheels = []
    for whl in sorted(out.glob("*.whl")):
        name, version = whl.name.split("-")[:2]
        if canonical(name) == "polelink" or pins.get(canonical(name)) == version:
            wheels.append(whl)
        else:
            whl.unlink()  # pinned once, no longer
    missing = sorted(set(pins) - {canonical(w.name.split("-")[0]) for w in wheels})
    if missing:
        raise SystemExit(f"wheelhouse: no wheel for pinned {', '.join(missing)}")
    return wheels


def main(argv: list[str] | None = None) -> int:
    """Build the wheelhouse and print its contents and size."""
    ap = argparse.ArgumentParser(prog="python -m deploy.pi.wheelhouse", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=target.WHEELHOUSE,
                    help="folder (default var/wheelhouse/aarch64)")
    ap.add_argument("--requirements", type=Path, default=target.REQUIREMENTS)
    args = ap.parse_args(argv)
    wheels = build(args.out.resolve(), args.requirements.resolve())
    total = 0
    pure = 0
    for whl in wheels:
        size = whl.stat().st_size
        total += size
        kind = wheel_kind(whl.name)
        pure += kind == "pure"
        print(f"  {size / 1e6:7.2f} MB  {'pure Python' if kind == 'pure' else kind:<60} {whl.name}")
    mb = round(total / 1e6, 1)
    print(f"{args.out}: {len(wheels)} wheels ({pure} pure Python, "
          f"{len(wheels) - pure} compiled for aarch64), {mb} MB")
    print(json.dumps({"wheels": len(wheels), "pure_python": pure, "compiled": len(wheels) - pure,
                      "wheelhouse_mb": mb}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
