"""flash.sh node: refusals, the plan (esptool / UF2), and a real copy + verification.

The board is a pty with the raw REPL protocol in front of the real MicroPython unix port
(tests/fake_board.py): mpremote's exec and fs cp, mkdir, and the sha256 verification run
for real. Not exercised without a board: esptool and the UF2 copy (only their plan is
checked), USB detection on real hardware (only the sysfs lookup, on a built tree), mip.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from fake_board import FakeBoard, micropython_binary

REPO = Path(__file__).resolve().parents[1]
FLASH = REPO / "flash.sh"
MICROPYTHON = micropython_binary(REPO)
UMQTT = REPO.parent / "shared" / "micropython-lib"
spec = importlib.util.spec_from_file_location("flash_node", REPO / "deploy" / "flash" / "node.py")
assert spec and spec.loader
node = importlib.util.module_from_spec(spec)
spec.loader.exec_module(node)

needs_board = pytest.mark.skipif(
    MICROPYTHON is None or shutil.which("mpremote", path=str(Path(sys.executable).parent)) is None,
    reason="needs ../shared/bin/micropython and mpremote (pip install -e '.[node]')")


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """A two-file application in the manifest layout (test data, not the node app)."""
    root = tmp_path / "app"
    (root / "node").mkdir(parents=True)
    (root / "node" / "main.py").write_text(
        "import json\nfrom polenode import lamp\n"
        "print('node', json.load(open('config.json'))['device'], lamp.level())\n")
    (root / "node" / "lamp.py").write_text("def level():\n    return 100\n")
    (root / "node" / "manifest.txt").write_text(
        "# repo path -> device path\nnode/main.py main.py\nnode/lamp.py lib/polenode/lamp.py\n")
    return root


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A node config."""
    p = tmp_path / "node-0042.json"
    p.write_text((REPO / "node" / "config.example.json").read_text())
    return p


@pytest.fixture
def board(tmp_path: Path):
    """A MicroPython board on a pty."""
    if MICROPYTHON is None:
        pytest.skip("needs ../shared/bin/micropython")
    b = FakeBoard(MICROPYTHON, tmp_path / "board")
    yield b
    b.close()


def flash(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run flash.sh node with the test venv's python."""
    env = dict(os.environ, PYTHON=sys.executable)
    return subprocess.run([str(FLASH), "node", *args], capture_output=True, text=True, input=stdin,
                          env=env, timeout=120)


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@needs_board
def test_copies_compiles_and_verifies_on_real_micropython(app, config, board, tmp_path):
    args = ["--port", board.port, "--config", str(config), "--board", "esp32", "--app", str(app)]
    if UMQTT.is_dir():
        args += ["--umqtt", str(UMQTT)]
    r = flash(*args)
    assert r.returncode == 0, r.stderr
    assert "verified: " in r.stderr
    root = board.root
    assert sha(root / "config.json") == sha(config)
    assert sha(root / "main.py") == sha(app / "node" / "main.py")
    assert (root / "lib" / "polenode" / "lamp.mpy").read_bytes()[:1] == b"M"  # an .mpy, not source
    assert not (root / "lib" / "polenode" / "lamp.py").exists()
    # what was copied runs on the interpreter: main.py imports the compiled module
    run = subprocess.run([str(MICROPYTHON), "main.py"], cwd=root, capture_output=True, text=True,
                         env={"MICROPYPATH": "lib"}, timeout=30)
    assert run.stdout.strip() == "node node-0042 100", run.stderr
    if UMQTT.is_dir():
        run = subprocess.run([str(MICROPYTHON), "-c", "from umqtt.robust import MQTTClient; print('ok')"],
                             cwd=root, capture_output=True, text=True, env={"MICROPYPATH": "lib"}, timeout=30)
        assert run.stdout.strip() == "ok", run.stderr


@needs_board
def test_verify_only_names_a_file_that_differs(app, config, board):
    args = ["--port", board.port, "--config", str(config), "--board", "esp32", "--app", str(app),
            "--umqtt", str(UMQTT)] if UMQTT.is_dir() else None
    if args is None:
        pytest.skip("needs ../shared/micropython-lib")
    assert flash(*args).returncode == 0
    assert flash(*args, "--verify-only").returncode == 0
    (board.root / "lib" / "polenode" / "lamp.mpy").write_bytes(b"M\x06garbage")
    r = flash(*args, "--verify-only")
    assert r.returncode == 3
    assert "VERIFY FAILED: lib/polenode/lamp.mpy on the board has sha256" in r.stderr
    (board.root / "config.json").unlink()
    r = flash(*args, "--verify-only")
    assert r.returncode == 3 and "VERIFY FAILED: config.json is not on the board" in r.stderr


def test_plan_esp32_erases_then_writes_at_0x1000_and_touches_nothing(app, config, board, tmp_path):
    fw = tmp_path / "ESP32_GENERIC-v1.24.bin"
    fw.write_bytes(b"\xe9" + bytes(4095))
    r = flash("--port", board.port, "--config", str(config), "--board", "esp32", "--app", str(app),
              "--firmware", str(fw), "--dry-run")
    assert r.returncode == 0, r.stderr
    lines = [x.strip() for x in r.stdout.splitlines()]
    erase = f"esptool.py --chip esp32 --port {board.port} erase_flash"
    write = f"esptool.py --chip esp32 --port {board.port} write_flash -z 0x1000 {fw}"
    assert lines.index(erase) < lines.index(write)
    assert not any("mip install" in ln for ln in lines)     # no network: own MQTT client
    assert any(x.endswith(":lib/polenode/lamp.mpy") for x in lines)
    assert list(board.root.iterdir()) == []


def test_plan_rp2040_copies_the_uf2_to_the_drive(app, config, board, tmp_path):
    fw = tmp_path / "RPI_PICO-v1.24.uf2"
    fw.write_bytes((0x0A324655).to_bytes(4, "little") + (0x9E5D5157).to_bytes(4, "little") + bytes(504))
    drive = tmp_path / "RPI-RP2"
    drive.mkdir()
    (drive / "INFO_UF2.TXT").write_text("UF2 Bootloader v3.0\nModel: Raspberry Pi RP2\nBoard-ID: RPI-RP2\n")
    r = flash("--port", board.port, "--config", str(config), "--board", "rp2040", "--app", str(app),
              "--firmware", str(fw), "--uf2-drive", str(drive), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert f"  cp {fw} {drive}/" in r.stdout.splitlines()
    assert not (drive / fw.name).exists()


@pytest.mark.parametrize("case, code, message", [
    ("regular-file", 1, "not a serial device (not a character device)"),
    ("missing", 1, "no such file or directory"),
    ("dev-null", 1, "not a serial device (not a terminal)"),
    ("no-board", 1, "unknown board (no USB VID:PID): give --board esp32 or --board rp2040"),
    ("uf2-for-esp32", 1, "not an ESP32 firmware image"),
    ("bin-for-rp2040", 1, "not a UF2 file"),
    ("bad-json", 1, "node-0042.json:2:1: not valid JSON"),
    ("node-rules", 1, "latitude: expected a number in -90..90, got 95"),
    ("node-tz", 1, "tz: expected a POSIX TZ rule"),
    ("manifest-missing-file", 1, "manifest.txt:4: node/gone.py: no such file"),
    ("syntax-error", 1, "lamp.py: mpy-cross:"),
    ("wrong-answer", 1, "refused: 'nope' is not"),
    ("bad-board", 2, "--board: invalid choice"),
    ("no-port", 2, "the following arguments are required: --port"),
])
def test_refusals_are_one_line_and_write_nothing(case, code, message, app, config, board, tmp_path):
    port, extra = board.port, ["--board", "esp32"]
    bin_fw = tmp_path / "fw.bin"
    bin_fw.write_bytes(b"\xe9" + bytes(100))
    if case == "regular-file":
        port = str(config)
    elif case == "missing":
        port = "/dev/ttyUSB-none"
    elif case == "dev-null":
        port = "/dev/null"
    elif case == "no-board":
        extra = []
    elif case == "uf2-for-esp32":
        uf2 = tmp_path / "fw.uf2"
        uf2.write_bytes(bytes(512))
        extra += ["--firmware", str(uf2)]
    elif case == "bin-for-rp2040":
        extra = ["--board", "rp2040", "--firmware", str(bin_fw)]
    elif case == "bad-json":
        config.write_text('{"id": "x",\n}\n')
    elif case in ("node-rules", "node-tz"):      # valid JSON the node itself refuses
        text = config.read_text()
        config.write_text(text.replace('"latitude": 53.55', '"latitude": 95')
                          if case == "node-rules" else
                          text.replace('"CET-1CEST,M3.5.0,M10.5.0/3"', '"Europe/Berlin"'))
    elif case == "manifest-missing-file":
        with (app / "node" / "manifest.txt").open("a") as f:
            f.write("node/gone.py lib/gone.py\n")
    elif case == "syntax-error":
        (app / "node" / "lamp.py").write_text("def level(:\n")
    elif case == "wrong-answer":
        extra += ["--firmware", str(bin_fw)]
    elif case == "bad-board":
        extra = ["--board", "esp8266"]
    args = ["--port", port, "--config", str(config), "--app", str(app), *extra]
    if case == "no-port":
        args = args[2:]
    r = flash(*args, stdin="nope\n")
    assert r.returncode == code, r.stderr
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert list(board.root.iterdir()) == []


def test_usb_ids_from_sysfs_name_the_board(tmp_path):
    usb = tmp_path / "devices" / "usb1" / "1-1"
    iface = usb / "1-1:1.0"
    iface.mkdir(parents=True)
    (usb / "idVendor").write_text("10c4\n")
    (usb / "idProduct").write_text("ea60\n")
    (tmp_path / "class" / "ttyUSB0").mkdir(parents=True)
    (tmp_path / "class" / "ttyUSB0" / "device").symlink_to(iface)
    assert node.usb_id("/dev/ttyUSB0", tmp_path / "class") == "10c4:ea60"
    assert node.BOARDS["10c4:ea60"] == "esp32" and node.BOARDS["2e8a:0005"] == "rp2040"
    assert node.usb_id("/dev/ttyUSB9", tmp_path / "class") is None


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_manifest_parser_refuses_or_parses(tmp_path_factory, text):
    d = tmp_path_factory.mktemp("m") / "node"
    d.mkdir()
    (d / "manifest.txt").write_text(text)
    try:
        files = node.read_manifest(d / "manifest.txt")
    except node.Refused as e:
        assert str(e).startswith(str(d / "manifest.txt"))
    else:
        assert all(src.is_file() and ".." not in Path(dst).parts for src, dst in files)


def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed")
    subprocess.run(["shellcheck", str(FLASH)], check=True)
