"""Stage the lamp node's files as ``flash.sh node`` puts them on a board, for the MicroPython
unix port: the files of ``node/manifest.txt`` compiled to ``.mpy`` by the same code
(``deploy/flash/node.py``), ``main.py`` kept as source (umqtt under ``lib/`` too, for an older
node that imports it). Tests, the demo
and the bench run the node from here, so they run what a board runs (a board compiles no
source: compiling ``app.py`` alone needs more than a small heap has to spare).

With ``romfs`` the compiled modules also go into ``DIR/romfs.img``, a MicroPython ROM file
system (``mpremote``'s writer, the image ``mpremote romfs deploy`` puts in a board's romfs
partition), and ``DIR/romboot.py`` emulates what such a board's firmware does at start:
the image is mapped outside the heap (``mmap`` through ``ffi``) and mounted at ``/rom``
ahead of the path, so the modules' code runs in place and only their objects take heap.
Start the node as ``micropython DIR/romboot.py DIR/main.py CONFIG ...``.

Usage: ``python -m sim.nodestage DIR [--romfs]`` (prints the MICROPYPATH to use).
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


ROMBOOT = """# the firmware's part on a board with a romfs partition (sim/nodestage.py)
import sys, os, vfs, ffi, uctypes
_libc = ffi.open("libc.so.6")
_img = (sys.argv[0].rsplit("/", 1)[0] if "/" in sys.argv[0] else ".") + "/romfs.img"
_size = os.stat(_img)[6]
_fd = _libc.func("i", "open", "si")(_img, 0)
_addr = _libc.func("p", "mmap", "pLiiil")(None, _size, 1, 2, _fd, 0)
vfs.mount(vfs.VfsRom(uctypes.bytearray_at(_addr, _size)), "/rom")
sys.path.insert(0, "/rom/lib")
sys.path.insert(0, "/rom")
sys.argv.pop(0)
del _libc, _img, _size, _fd, _addr
with open(sys.argv[0]) as _f:
    _src = _f.read()
exec(_src, {"__name__": "__main__"})
"""


def romfs_image(files: list[tuple[Path, str]]) -> bytes:
    """A ROM file system holding ``files`` (local path, device path)."""
    from mpremote.romfs import VfsRomWriter
    tree: dict = {}
    for local, device in files:
        node = tree
        *dirs, name = device.split("/")
        for d in dirs:
            node = node.setdefault(d, {})
        node[name] = local.read_bytes()
    w = VfsRomWriter()

    def put(node: dict) -> None:
        for name in sorted(node):
            if isinstance(node[name], dict):
                w.opendir(name)
                put(node[name])
                w.closedir()
            else:
                w.mkfile(name, node[name])
    put(tree)
    return w.finalise()


def stage(dest: Path, umqtt: Path = UMQTT, app: Path = ROOT, romfs: bool = False) -> str:
    """Write the node's files (of the checkout ``app``) into ``dest``; returns the
    MICROPYPATH (``dest:dest/lib``). Raises the flasher's ``Refused`` (one line) when a file
    does not compile. ``romfs``: also ``romfs.img`` and ``romboot.py`` (module docstring)."""
    fn = _flash_node()
    # umqtt only for an older node (bench/node_campaign.py --app): this one has its own client
    files = fn.read_manifest(app / "node" / "manifest.txt") + \
        (fn.umqtt_files(umqtt) if umqtt.is_dir() else [])
    dest.mkdir(parents=True, exist_ok=True)
    staged = []
    for local, device in fn.compile_files(files, dest):
        target = dest / device
        if local != target:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(local.read_bytes())
        staged.append((target, device))
    if romfs:
        code = [(t, d) for t, d in staged if d.endswith(".mpy")]
        (dest / "romfs.img").write_bytes(romfs_image(code))
        (dest / "romboot.py").write_text(ROMBOOT)
    return f"{dest}:{dest / 'lib'}"


def main(argv: list[str]) -> int:
    """``python -m sim.nodestage DIR``."""
    romfs = "--romfs" in argv
    argv = [a for a in argv if a != "--romfs"]
    if len(argv) != 1:
        print("usage: python -m sim.nodestage DIR [--romfs]", file=sys.stderr)
        return 2
    try:
        print(stage(Path(argv[0]), romfs=romfs))
    except Exception as e:  # the flasher's Refused: one line
        print(f"nodestage: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
