"""Stage the lamp node's files as ``flash.sh node`` puts them on a board, for the MicroPython
unix port: the files of ``node/manifest.txt`` compiled to ``.mpy`` by the same code
(``deploy/flash/node.py``), ``main.py`` kept as source, umqtt under ``lib/``. Tests, the demo
and the bench run the node from here, so they run what a board runs (a board compiles no
source: compiling ``app.py`` alone needs more than a small heap has to spare).

Usage: ``python -m sim.nodestage DIR`` (prints the MICROPYPATH to use).
"""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
UMQTT = ROOT.parent / "shared" / "micropython-lib"


@cache
def _flash_node() -> ModuleType:
    spec = importlib.util.spec_from_file_location("polelink_flash_node",
                                                  ROOT / "deploy" / "flash" / "node.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def stage(dest: Path, umqtt: Path = UMQTT, app: Path = ROOT) -> str:
    """Write the node's files (of the checkout ``app``) into ``dest``; returns the
    MICROPYPATH (``dest:dest/lib``). Raises the flasher's ``Refused`` (one line) when a file
    does not compile."""
    fn = _flash_node()
    files = fn.read_manifest(app / "node" / "manifest.txt") + fn.umqtt_files(umqtt)
    dest.mkdir(parents=True, exist_ok=True)
    for local, device in fn.compile_files(files, dest):
        target = dest / device
        if local != target:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(local.read_bytes())
    return f"{dest}:{dest / 'lib'}"


def main(argv: list[str]) -> int:
    """``python -m sim.nodestage DIR``."""
    if len(argv) != 1:
        print("usage: python -m sim.nodestage DIR", file=sys.stderr)
        return 2
    try:
        print(stage(Path(argv[0])))
    except Exception as e:  # the flasher's Refused: one line
        print(f"nodestage: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
