"""flash.sh, the real script: images built here (sfdisk, mkfs.vfat --offset, mke2fs -d; no mount, no
loop device) are flashed to files and every injected file is read back with mtools and debugfs.

The only fake is the disk facts for --device (POLELINK_FLASH_LSBLK_JSON / POLELINK_FLASH_MOUNTS): a CI
machine has no removable disk. A device the recorded lsblk lists is a plain file standing in for it.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
FLASH = ROOT / "flash.sh"
TOOLS = {"sfdisk": "fdisk", "mkfs.vfat": "dosfstools", "mcopy": "mtools", "mtype": "mtools",
         "mdir": "mtools", "debugfs": "e2fsprogs", "mke2fs": "e2fsprogs", "e2fsck": "e2fsprogs"}
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
MiB = 1024 * 1024
BOOT_START, BOOT_SIZE, ROOT_START = 1 * MiB, 8 * MiB, 9 * MiB
IMAGE_SIZE = 20 * MiB
SECRET = "mqtt_password: s3cr3t-never-on-fat-0042"
# a pole file `agent validate` passes on its own (flash.sh runs it before writing)
POLE_CONFIG = """\
device:
  id: pole-0042
  site: hanoi-d1
cameras:
  - name: north
    source: {kind: stream, url: "rtsp://192.0.2.42:554/stream1"}
    detector: {model: "pkg:models/yolox_nano.yaml"}
    lines:
      - name: main
        points: [[40, 150], [280, 150]]
"""
CMDLINE = "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 rootwait quiet"


def _need_tools() -> None:
    missing = sorted({f"{t} ({pkg})" for t, pkg in TOOLS.items() if shutil.which(t) is None
                      and not Path("/usr/sbin", t).exists() and not Path("/sbin", t).exists()})
    if missing:
        msg = "flash tests need " + ", ".join(missing) + " (CI installs the Debian packages)"
        if IN_CI:
            pytest.fail(msg + " (in CI this is an error, not a skip)")
        pytest.skip(msg)


@pytest.fixture(autouse=True)
def _tools() -> None:
    os.environ["PATH"] = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    _need_tools()


def _lib(name: str):
    spec = importlib.util.spec_from_file_location(f"flash_{name}", ROOT / "deploy" / "flash" / f"{name}.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def sh(*cmd: str | Path, **kw) -> subprocess.CompletedProcess:
    """Run a tool, failing the test with its stderr if it fails."""
    r = subprocess.run([str(c) for c in cmd], capture_output=True, **kw)
    assert r.returncode == 0, f"{cmd}: {r.stderr!r}"
    return r


def build_image(tmp: Path, *, cloud_init_boot: bool = False, cloud_init_root: bool = False,
                fstab_boot: str = "/boot/firmware", image_size: int = IMAGE_SIZE,
                boot_size: int = BOOT_SIZE, root_block: int | None = None,
                agent_release: str | None = None, python: str | None = "3.11",
                elf_machine: int = 183) -> Path:
    """A Raspberry Pi OS-like image: MBR, FAT32-type boot (cmdline.txt, config.txt), ext4 root
    (small unless told: ``image_size``, ``boot_size``; ``root_block`` the ext4 block size) with
    a /usr/bin/python3 of Bookworm's version for aarch64 unless told (its ELF header only). A
    sparse file: only what mkfs writes takes room."""
    tmp.mkdir(parents=True, exist_ok=True)
    img = tmp / "raspios.img"
    root_start = BOOT_START + boot_size
    with open(img, "wb") as f:
        f.truncate(image_size)
    table = (f"label: dos\nlabel-id: 0x4e639091\nstart={BOOT_START // 512}, size={boot_size // 512}, type=c\n"
             f"start={root_start // 512}, type=83\n")
    sh("sfdisk", "-q", img, input=table.encode())
    sh("mkfs.vfat", f"--offset={BOOT_START // 512}", "-n", "bootfs", img, str(boot_size // 1024))
    boot = tmp / "bootfiles"
    boot.mkdir()
    (boot / "cmdline.txt").write_text(CMDLINE + "\n")
    (boot / "config.txt").write_text("arm_64bit=1\n")
    if cloud_init_boot:
        (boot / "user-data").write_text("#cloud-config\n{}\n")
        (boot / "meta-data").write_text("instance-id: rpi\n")
    for f in boot.iterdir():
        sh("mcopy", "-i", f"{img}@@{BOOT_START}", f, f"::{f.name}",
           env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    rootfs = tmp / "rootfs"
    for d in ("etc/systemd/system/multi-user.target.wants", "var/lib", "usr/bin", "boot/firmware"):
        (rootfs / d).mkdir(parents=True)
    (rootfs / "etc/hostname").write_text("raspberrypi\n")
    (rootfs / "etc/fstab").write_text("proc /proc proc defaults 0 0\n"
                                      f"PARTUUID=4e639091-01 {fstab_boot} vfat defaults 0 2\n"
                                      "PARTUUID=4e639091-02 / ext4 defaults,noatime 0 1\n")
    if python:          # /usr/bin/python3 -> python3.N, an ELF for elf_machine (183: aarch64)
        (rootfs / f"usr/bin/python{python}").write_bytes(
            b"\x7fELF\x02\x01\x01" + bytes(9) + (2).to_bytes(2, "little")
            + elf_machine.to_bytes(2, "little") + bytes(44))
        (rootfs / "usr/bin/python3").symlink_to(f"python{python}")
    if agent_release:   # a golden image: the agent installed, `current` pointing at it
        agent = rootfs / f"var/lib/polelink/releases/{agent_release}/venv/bin/agent"
        agent.parent.mkdir(parents=True)
        agent.write_text("#!/bin/sh\n")
        agent.chmod(0o755)
        (rootfs / "var/lib/polelink/current").symlink_to(f"releases/{agent_release}")
    if cloud_init_root:
        (rootfs / "etc/cloud").mkdir()
        (rootfs / "etc/cloud/cloud.cfg").write_text("datasource_list: [NoCloud]\n")
    sh("mke2fs", "-q", "-t", "ext4", "-d", rootfs, *(["-b", str(root_block)] if root_block else []),
       "-E", f"offset={root_start}", img, f"{(image_size - root_start) // 1024}k")
    return img


PI_PINS = ROOT / "deploy" / "pi" / "requirements-bookworm-arm64.txt"


def stub_pi_wheels(d: Path, skip: str = "") -> Path:
    """Stand-ins for the Pi's wheelhouse (``make wheelhouse``: 83 MB of aarch64 wheels from the
    package index, which tests do not download): one wheel per pin of the Pi's lock file, under
    the real wheel's file name (its aarch64 tags), holding only its metadata. pip resolves
    against names, versions and tags, so ``pip install --dry-run`` for the Pi treats them as
    the real ones; that the real wheels install and run on aarch64 is ``make pi-test``'s.
    ``skip``: a distribution left out."""
    d.mkdir(parents=True, exist_ok=True)
    for name in re.findall(r"^# (\S+\.whl) ", PI_PINS.read_text(), re.M):
        dist, version = name.split("-")[:2]
        if dist == skip:
            continue
        info = f"{dist}-{version}.dist-info"
        with zipfile.ZipFile(d / name, "w") as z:
            z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
            z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: polelink-tests\n"
                       "Root-Is-Purelib: false\n")
            z.writestr(f"{info}/RECORD", "")
    return d


_DEPS: list[Path] = []


def pi_deps() -> Path:
    """This process's folder of stub Pi wheels (see stub_pi_wheels), made once."""
    if not _DEPS:
        d = Path(tempfile.mkdtemp(prefix="polelink-pi-deps-"))
        atexit.register(shutil.rmtree, d, True)
        _DEPS.append(stub_pi_wheels(d))
    return _DEPS[0]


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The agent's wheel (built once, as flash.sh would), the Pi's dependencies (stand-ins: see
    stub_pi_wheels) and a second, tiny wheel."""
    d = stub_pi_wheels(tmp_path_factory.mktemp("wheelhouse"))
    src = tmp_path_factory.mktemp("src") / "polelink"  # a copy: no build/ left in the checkout
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", "var", "out", ".*_cache", ".hypothesis"))
    sh(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", d, src)
    with zipfile.ZipFile(d / "tinydep-1.0-py3-none-any.whl", "w") as z:
        z.writestr("tinydep/__init__.py", "")
    return d


@pytest.fixture
def pole_files(tmp_path: Path) -> dict[str, Path]:
    """A pole's config, secrets and site file."""
    files = {"config": tmp_path / "pole-0042.yaml", "secrets": tmp_path / "pole-0042.secrets.yaml",
             "site": tmp_path / "site.yaml"}
    files["config"].write_text(POLE_CONFIG)
    files["secrets"].write_text(SECRET + "\n")
    files["secrets"].chmod(0o644)  # flash.sh must make it 0600 whatever it was here
    files["site"].write_text("mqtt:\n  host: broker.example\n")
    # the same pole file building on the site file (flash.sh refuses a --site nothing extends)
    files["extending"] = tmp_path / "extending" / "pole-0042.yaml"
    files["extending"].parent.mkdir()
    files["extending"].write_text("extends: site.yaml\n" + POLE_CONFIG)
    return files


def flash(*args: str | Path, env: dict | None = None, stdin: str = "", deps: bool = True
          ) -> subprocess.CompletedProcess:
    """Run the real flash.sh. ``deps``: when the arguments name no --wheelhouse, give it one of
    the Pi's dependencies only (flash.sh builds the agent's wheel): it requires one."""
    if deps and args and str(args[0]).startswith("-") and "--wheelhouse" not in map(str, args):
        args = ("--wheelhouse", pi_deps(), *args)
    return subprocess.run(["bash", str(FLASH), *map(str, args)], capture_output=True, text=True, input=stdin,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})}, timeout=300)


class Card:
    """Reads a flashed image back the way a technician's tools would: mtools and debugfs."""

    def __init__(self, path: Path, root_start: int = ROOT_START) -> None:
        self.path = path
        self.root = f"{path}?offset={root_start}"

    def boot_names(self) -> set[str]:
        out = sh("mdir", "-b", "-i", f"{self.path}@@{BOOT_START}", "::",
                 env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout.decode()
        return {ln.strip().removeprefix("::/") for ln in out.splitlines() if ln.strip()}

    def boot(self, name: str) -> str:
        return sh("mtype", "-i", f"{self.path}@@{BOOT_START}", f"::{name}",
                  env={**os.environ, "MTOOLS_SKIP_CHECK": "1"}).stdout.decode()

    def stat(self, path: str) -> dict[str, str]:
        out = sh("debugfs", "-R", f"stat {path}", self.root).stdout.decode()
        facts = dict(re.findall(r"(Type|Mode|User|Group):\s+(\S+)", out))
        link = re.search(r'Fast link dest: "(.*)"', out)
        if link:
            facts["link"] = link.group(1)
        return facts

    def read(self, path: str) -> bytes:
        assert self.stat(path).get("Type") == "regular", f"{path} is not on the root partition"
        return sh("debugfs", "-R", f"cat {path}", self.root).stdout

    def ls(self, path: str) -> list[str]:
        out = sh("debugfs", "-R", f"ls -p {path}", self.root).stdout.decode()
        names = [f.split("/")[5] for f in out.splitlines() if f.count("/") >= 6]
        return [n for n in names if n not in (".", "..")]


def assert_pole_files(card: Card, files: dict[str, Path], wheels: Path) -> None:
    """The pole's files, the unit, the wheels: content, mode, owner."""
    expect = {"/etc/polelink/pole.yaml": (files["config"], "0644"),
              "/etc/polelink/site.yaml": (files["site"], "0644"),
              "/etc/polelink/secrets.yaml": (files["secrets"], "0600"),
              "/etc/systemd/system/polelink.service": (ROOT / "deploy/systemd/polelink.service", "0644"),
              "/usr/lib/sysusers.d/polelink.conf": (ROOT / "deploy/systemd/polelink.sysusers.conf", "0644"),
              "/usr/local/lib/polelink/update-guard.py": (ROOT / "agent/update/guard.py", "0644"),
              "/etc/systemd/system/polelink-update-guard.service":
                  (ROOT / "deploy/systemd/polelink-update-guard.service", "0644"),
              "/etc/systemd/system/polelink-update-guard.timer":
                  (ROOT / "deploy/systemd/polelink-update-guard.timer", "0644")}
    for dest, (src, mode) in expect.items():
        assert card.read(dest) == src.read_bytes(), dest
        st_ = card.stat(dest)
        assert (st_["Mode"], st_["User"], st_["Group"]) == (mode, "0", "0"), (dest, st_)
    assert card.stat("/etc/polelink")["Mode"] == "0755"
    link = card.stat("/etc/systemd/system/multi-user.target.wants/polelink.service")
    assert link == {**link, "Type": "symlink", "link": "/etc/systemd/system/polelink.service"}
    timer = card.stat("/etc/systemd/system/timers.target.wants/polelink-update-guard.timer")
    assert timer == {**timer, "Type": "symlink",
                     "link": "/etc/systemd/system/polelink-update-guard.timer"}
    dropin = card.read("/etc/systemd/system/polelink.service.d/10-first-boot.conf").decode()
    assert "ConditionPathExists=/var/lib/polelink/current/venv/bin/agent" in dropin
    rel = "/var/lib/polelink/releases/0.1.0"
    assert card.stat("/var/lib/polelink")["Mode"] == "0750"
    assert sorted(card.ls(f"{rel}/wheels")) == sorted(p.name for p in wheels.glob("*.whl"))
    for whl in wheels.glob("*.whl"):
        assert card.read(f"{rel}/wheels/{whl.name}") == whl.read_bytes()
        assert card.stat(f"{rel}/wheels/{whl.name}")["Mode"] == "0644"
    assert card.read(f"{rel}/README.md") == (ROOT / "README.md").read_bytes()
    pages = sorted((ROOT / "docs" / "technicians").glob("*.md"))   # what the README links
    assert sorted(card.ls(f"{rel}/docs/technicians")) == [p.name for p in pages]
    for page in pages:
        assert card.read(f"{rel}/docs/technicians/{page.name}") == page.read_bytes()
    # the secret is nowhere on the FAT boot partition (anyone with the card could read it)
    with open(card.path, "rb") as f:
        f.seek(BOOT_START)
        assert SECRET.encode() not in f.read(BOOT_SIZE)
    # and the ext4 root is still a clean file system
    r = subprocess.run(["e2fsck", "-fn", card.root], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_firstrun_image_building_the_wheel_itself(tmp_path: Path, pole_files: dict[str, Path]) -> None:
    """An image without cloud-init gets firstrun.sh and the cmdline.txt hook; flash.sh builds the wheel."""
    pole_files = {**pole_files, "config": pole_files["extending"]}
    img = build_image(tmp_path / "img")
    out = tmp_path / "out.img"
    r = flash("--image", img, "--config", pole_files["config"], "--secrets", pole_files["secrets"],
              "--site", pole_files["site"], "--to-file", out)
    assert r.returncode == 0, r.stderr
    assert "first boot: firstrun" in r.stderr and "verified: sha256" in r.stderr
    assert "building the agent's wheel" in r.stderr
    card = Card(out)
    built = tmp_path / "built"   # what the card should hold: the wheelhouse and the built wheel
    shutil.copytree(pi_deps(), built)
    (built / "polelink-0.1.0-py3-none-any.whl").write_bytes(
        card.read("/var/lib/polelink/releases/0.1.0/wheels/polelink-0.1.0-py3-none-any.whl"))
    with zipfile.ZipFile(built / "polelink-0.1.0-py3-none-any.whl") as z:
        assert "agent/cli/main.py" in z.namelist() or any(n.startswith("agent/") for n in z.namelist())
    assert_pole_files(card, pole_files, built)
    names = card.boot_names()
    assert "firstrun.sh" in names and "user-data" not in names
    script = card.boot("firstrun.sh")
    assert script.startswith("#!/bin/bash")
    assert "useradd --system --user-group" in script and "usermod -a -G dialout,video polelink" in script
    assert ("pip install --no-index --find-links /var/lib/polelink/releases/0.1.0/wheels "
            "polelink==0.1.0") in script
    assert "mv -T /var/lib/polelink/current.new /var/lib/polelink/current" in script
    assert "systemctl enable polelink.service" in script and "hostname" in script and "pole-0042" in script
    cmdline = card.boot("cmdline.txt")
    assert cmdline.count("\n") == 1 and cmdline.startswith(CMDLINE + " ")
    assert "systemd.run=/boot/firmware/firstrun.sh systemd.run_success_action=reboot" in cmdline
    if shutil.which("shellcheck"):
        sc = subprocess.run(["shellcheck", "-"], input=script, capture_output=True, text=True)
        assert sc.returncode == 0, sc.stdout


def test_firstrun_path_follows_the_images_fstab(tmp_path: Path, pole_files: dict[str, Path],
                                                wheelhouse: Path) -> None:
    """An older image mounting the FAT at /boot gets systemd.run=/boot/firstrun.sh."""
    img = build_image(tmp_path / "img", fstab_boot="/boot")
    out = tmp_path / "out.img"
    r = flash("--image", img, "--config", pole_files["config"], "--wheelhouse", wheelhouse, "--to-file", out)
    assert r.returncode == 0, r.stderr
    assert "systemd.run=/boot/firstrun.sh " in Card(out).boot("cmdline.txt")
    assert "BOOT=/boot\n" in Card(out).boot("firstrun.sh")


@pytest.mark.parametrize("where", ["boot", "root"])
def test_cloud_init_image(tmp_path: Path, pole_files: dict[str, Path], wheelhouse: Path, where: str) -> None:
    """cloud-init found on the boot partition or in the root: user-data, meta-data, network-config."""
    pole_files = {**pole_files, "config": pole_files["extending"]}
    img = build_image(tmp_path / "img", cloud_init_boot=where == "boot", cloud_init_root=where == "root")
    out = tmp_path / "out.img"
    r = flash("--image", img, "--config", pole_files["config"], "--secrets", pole_files["secrets"],
              "--site", pole_files["site"], "--wheelhouse", wheelhouse, "--to-file", out)
    assert r.returncode == 0, r.stderr
    assert "first boot: cloud-init" in r.stderr
    card = Card(out)
    assert_pole_files(card, pole_files, wheelhouse)
    names = card.boot_names()
    assert {"user-data", "meta-data", "network-config"} <= names and "firstrun.sh" not in names
    assert card.boot("cmdline.txt") == CMDLINE + "\n"  # untouched
    ud = card.boot("user-data")
    assert ud.startswith("#cloud-config\n")
    doc = json.loads(ud.split("\n", 2)[2])  # JSON is YAML: cloud-init reads it as such
    assert doc["hostname"] == "pole-0042"
    user = doc["users"][1]
    assert user["name"] == "polelink" and user["system"] is True and user["groups"] == "dialout,video"
    script = doc["runcmd"][0][2]
    assert doc["runcmd"][0][:2] == ["sh", "-ec"]
    order = ["python3 -m venv /var/lib/polelink/releases/0.1.0/venv",
             "pip install --no-index --find-links /var/lib/polelink/releases/0.1.0/wheels polelink==0.1.0",
             "mv -T /var/lib/polelink/current.new /var/lib/polelink/current",
             "systemctl enable polelink.service", "systemctl start --no-block polelink.service"]
    assert [script.index(s) for s in order] == sorted(script.index(s) for s in order)
    assert "local-hostname: pole-0042" in card.boot("meta-data")
    assert "dhcp4: true" in card.boot("network-config")


def test_xz_image_and_network_config(tmp_path: Path, pole_files: dict[str, Path], wheelhouse: Path) -> None:
    """An .img.xz is streamed; the result equals flashing the raw image; --network-config is used."""
    img = build_image(tmp_path / "img", cloud_init_boot=True)
    xz = tmp_path / "raspios.img.xz"
    xz.write_bytes(lzma.compress(img.read_bytes(), preset=1))
    net = tmp_path / "net.yaml"
    net.write_text("network:\n  version: 2\n  ethernets:\n    eth0:\n      addresses: [10.1.2.3/24]\n")
    out = tmp_path / "out.img"
    r = flash("--image", xz, "--config", pole_files["config"], "--wheelhouse", wheelhouse,
              "--network-config", net, "--hostname", "pole-x", "--to-file", out)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size == IMAGE_SIZE
    card = Card(out)
    assert card.boot("network-config") == net.read_text()
    assert '"hostname": "pole-x"' in card.boot("user-data")
    assert card.read("/etc/polelink/pole.yaml") == pole_files["config"].read_bytes()
    # no --secrets: an empty one, 0600 (the unit's LoadCredential= needs the file)
    assert b"{}" in card.read("/etc/polelink/secrets.yaml")
    assert card.stat("/etc/polelink/secrets.yaml")["Mode"] == "0600"


def test_corrupted_write_is_caught(tmp_path: Path, pole_files: dict[str, Path], wheelhouse: Path) -> None:
    """A byte that reads back differently (the test hook flips it) fails verification: exit 3."""
    img = build_image(tmp_path / "img")
    out = tmp_path / "out.img"
    r = flash("--image", img, "--config", pole_files["config"], "--wheelhouse", wheelhouse, "--to-file", out,
              env={"POLELINK_FLASH_TEST_CORRUPT_AT": str(ROOT_START + 4 * MiB + 17)})
    assert r.returncode == 3, r.stderr
    assert "VERIFY FAILED" in r.stderr and "Do not use this card" in r.stderr
    assert "installing polelink" not in r.stderr  # nothing injected into a bad card
    assert "Traceback" not in r.stderr


def test_a_file_that_is_not_an_image(tmp_path: Path, pole_files: dict[str, Path], wheelhouse: Path) -> None:
    """Not a partitioned image: one clear line, exit 1."""
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\x00" * MiB)
    r = flash("--image", junk, "--config", pole_files["config"], "--wheelhouse", wheelhouse,
              "--to-file", tmp_path / "out.img")
    assert r.returncode == 1, r.stderr
    assert "no FAT boot partition" in r.stderr or "no partition table" in r.stderr
    assert "Traceback" not in r.stderr


# ---- the target: every refusal, with recorded disk facts ---------------------------------------

def _row(name: str, path: Path | str, kind: str = "disk", rm: bool = True, size: int = 64 * MiB,
         serial: str | None = "SN0042", mounts: list | None = None, parent: str | None = None) -> dict:
    return {"name": name, "path": str(path), "type": kind, "rm": rm, "size": size, "model": "SD Card Reader",
            "serial": serial, "mountpoints": mounts or [None], "pkname": parent}


@pytest.fixture
def disks(tmp_path: Path) -> dict:
    """Recorded lsblk and mount table: stand-in files for the devices, and the env pointing at them."""
    dev = tmp_path / "dev"
    dev.mkdir()
    names = ["sdz", "sdz1", "vda", "vda1", "sdy", "loop0", "sdx", "sdx1", "sdw", "sdw1", "sdv", "sdu"]
    for n in names:
        (dev / n).write_bytes(b"")
    rows = [
        _row("sdz", dev / "sdz"), _row("sdz1", dev / "sdz1", "part", parent="sdz"),
        _row("vda", dev / "vda", rm=False, size=256 * 10**9, serial=None),
        _row("vda1", dev / "vda1", "part", rm=False, mounts=["/"], parent="vda"),
        _row("sdy", dev / "sdy", rm=False, serial="INTERNAL1"),
        _row("loop0", dev / "loop0", "loop", rm=False, serial=None),
        _row("sdx", dev / "sdx"),
        _row("sdx1", dev / "sdx1", "part", mounts=["/media/tech/bootfs"], parent="sdx"),
        _row("sdw", dev / "sdw"), _row("sdw1", dev / "sdw1", "part", parent="sdw"),
        _row("sdv", dev / "sdv", size=1 * MiB), _row("sdu", dev / "sdu", serial=None),
    ]
    lsblk = tmp_path / "lsblk.json"
    lsblk.write_text(json.dumps({"blockdevices": rows}))
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/vda1 / ext4 rw 0 0\n{dev / 'sdw1'} /mnt/card\\040x vfat rw 0 0\n")
    env = {"POLELINK_FLASH_LSBLK_JSON": str(lsblk), "POLELINK_FLASH_MOUNTS": str(mounts)}
    return {"dev": dev, "env": env}


@pytest.fixture
def small_image(tmp_path: Path) -> Path:
    """One image for the refusal tests."""
    return build_image(tmp_path / "img")


@pytest.mark.parametrize(("device", "extra", "stdin", "message"), [
    ("vda", ["--yes", "--expect-serial", "x"], "", "holds the running system"),
    ("vda1", ["--yes", "--expect-serial", "x"], "", "is a partition, not a whole disk: give"),
    ("sdz1", ["--yes", "--expect-serial", "SN0042"], "", "is a partition, not a whole disk: give"),
    ("sdy", ["--yes", "--expect-serial", "INTERNAL1"], "", "is not a removable disk"),
    ("loop0", [], "", "is a loop device"),
    ("sdx", ["--yes", "--expect-serial", "SN0042"], "", "has a mounted partition"),
    ("sdw", ["--yes", "--expect-serial", "SN0042"], "", "mounted partition"),  # only in /proc/mounts
    ("sdv", ["--yes", "--expect-serial", "SN0042"], "", "too small"),
    ("sdz", ["--yes", "--expect-serial", "SN0043"], "", "not 'SN0043'"),
    ("sdz", [], "SN0043\n", "is not the serial"),
    ("sdz", [], "", "no answer on stdin"),
    ("notlisted", [], "", "is not a block device"),
    ("missing", [], "", "no such device"),
])
def test_refusals(tmp_path: Path, disks: dict, small_image: Path, pole_files: dict[str, Path],
                  wheelhouse: Path, device: str, extra: list[str], stdin: str, message: str) -> None:
    """Every refusal is one line, exit 1, and nothing is written to the device."""
    path = disks["dev"] / device
    if device == "notlisted":
        path.write_bytes(b"keep")
    before = path.read_bytes() if path.exists() else None
    r = flash("--image", small_image, "--config", pole_files["config"], "--wheelhouse", wheelhouse,
              "--device", path, *extra, env=disks["env"], stdin=stdin)
    assert r.returncode == 1, r.stderr
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert (path.read_bytes() if path.exists() else None) == before  # not a byte written


def test_real_block_device_that_is_not_removable(pole_files: dict[str, Path], small_image: Path,
                                                 wheelhouse: Path) -> None:
    """Without the recorded facts flash.sh asks the real lsblk: this machine's system disk is refused."""
    root_dev = subprocess.run(["findmnt", "-n", "-o", "SOURCE", "/"], capture_output=True,
                              text=True).stdout.strip()
    if not root_dev.startswith("/dev/") or not Path(root_dev).exists():
        pytest.skip(f"/ is not on a block device here ({root_dev or 'unknown'})")
    r = flash("--image", small_image, "--config", pole_files["config"], "--wheelhouse", wheelhouse,
              "--device", root_dev, "--yes", "--expect-serial", "x")
    assert r.returncode == 1 and "refused" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_typed_serial_writes_the_card(disks: dict, small_image: Path, pole_files: dict[str, Path],
                                      wheelhouse: Path) -> None:
    """The right card with its serial typed: facts shown, written, verified, files read back."""
    pole_files = {**pole_files, "config": pole_files["extending"]}
    dev = disks["dev"] / "sdz"
    r = flash("--image", small_image, "--config", pole_files["config"], "--secrets", pole_files["secrets"],
              "--site", pole_files["site"], "--wheelhouse", wheelhouse, "--device", dev,
              env=disks["env"], stdin="SN0042\n")
    assert r.returncode == 0, r.stderr
    assert "TEST MODE" in r.stderr and "SD Card Reader" in r.stderr and "67.1 MB" in r.stderr
    assert "SN0042" in r.stderr and "ERASED" in r.stderr
    assert_pole_files(Card(dev), pole_files, wheelhouse)


def test_unattended_without_serial_uses_the_disk_name(disks: dict, small_image: Path,
                                                      pole_files: dict[str, Path], wheelhouse: Path) -> None:
    """A reader that reports no serial: the disk's name stands for it."""
    dev = disks["dev"] / "sdu"
    r = flash("--image", small_image, "--config", pole_files["config"], "--wheelhouse", wheelhouse,
              "--device", dev, "--yes", "--expect-serial", "sdu", env=disks["env"])
    assert r.returncode == 0, r.stderr
    assert Card(dev).read("/etc/polelink/pole.yaml") == pole_files["config"].read_bytes()


@pytest.mark.parametrize(("args", "message"), [
    (["node"], "the following arguments are required: --port, --config"),
    (["bogus"], "unknown subcommand 'bogus'"),
    (["--config", "x.yaml", "--to-file", "o.img"], "--image is required"),
    (["--image", "i.img", "--to-file", "o.img"], "--config is required"),
    (["--image", "i.img", "--config", "c.yaml"], "give --device"),
    (["--image", "i", "--config", "c", "--device", "/dev/null", "--to-file", "o"], "not both"),
    (["--image", "i", "--config", "c", "--device", "/dev/null", "--yes"], "--yes needs --expect-serial"),
    (["--image", "i", "--config", "c", "--to-file", "o", "--provision", "x"], "--provision must be"),
    (["--frobnicate"], "unknown option '--frobnicate'"),
    (["--image"], "--image needs a value"),
])
def test_usage_errors(args: list[str], message: str) -> None:
    """Usage errors: one line, exit 2."""
    r = flash(*args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_input_errors(tmp_path: Path, pole_files: dict[str, Path], small_image: Path) -> None:
    """Missing files, an existing output, a bad hostname: one line naming the option, exit 1."""
    out = tmp_path / "exists.img"
    out.write_bytes(b"x")
    cases = [
        (["--image", tmp_path / "nope.img", "--config", pole_files["config"], "--to-file", tmp_path / "o"],
         "--image", "no such file"),
        (["--image", small_image, "--config", tmp_path, "--to-file", tmp_path / "o"],
         "--config", "not a regular"),
        (["--image", small_image, "--config", pole_files["config"], "--wheelhouse", tmp_path / "none",
          "--to-file", tmp_path / "o"], "--wheelhouse", "not a directory"),
        (["--image", small_image, "--config", pole_files["config"], "--wheelhouse", tmp_path,
          "--to-file", tmp_path / "o"], "--wheelhouse", "no .whl files"),
        (["--image", small_image, "--config", pole_files["config"], "--to-file", out],
         "--to-file", "--force"),
        (["--image", small_image, "--config", pole_files["config"], "--hostname", "Bad_Name",
          "--to-file", tmp_path / "o"], "hostname", "not valid"),
    ]
    for args, option, message in cases:
        r = flash(*args)
        assert r.returncode == 1, (args, r.stderr)
        assert option in r.stderr and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert out.read_bytes() == b"x"


def test_shellcheck_clean() -> None:
    """flash.sh is shellcheck clean (skipped without shellcheck, except in CI)."""
    if shutil.which("shellcheck") is None:
        if IN_CI:
            pytest.fail("shellcheck is not installed (CI installs the Debian package)")
        pytest.skip("shellcheck is not installed (CI installs the Debian package)")
    r = subprocess.run(["shellcheck", str(FLASH)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


# ---- the parsers, fuzzed -----------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30), max_size=12))
def test_cmdline_hook_fuzz(tokens: list[str]) -> None:
    """Whatever cmdline.txt holds, the result is one line with the hook exactly once, at its end."""
    firstboot = _lib("firstboot")
    out = firstboot.add_hook(" ".join(tokens) + "\n", "/boot/firmware/firstrun.sh")
    assert out.endswith("\n") and out.count("\n") == 1
    assert out.count("systemd.run=") == 1
    hook = ("systemd.run=/boot/firmware/firstrun.sh systemd.run_success_action=reboot "
            "systemd.unit=kernel-command-line.target")
    assert out.rstrip("\n").endswith(hook)
    assert firstboot.add_hook(out, "/boot/firmware/firstrun.sh") == out  # idempotent


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_mounts_parser_fuzz(text: str) -> None:
    """Any mount table text parses to pairs or is refused with a ValueError, never anything else."""
    disks_mod = _lib("disks")
    try:
        pairs = disks_mod.parse_mounts(text)
    except (UnicodeDecodeError, UnicodeEncodeError, ValueError):
        return
    assert all(isinstance(a, str) and isinstance(b, str) for a, b in pairs)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.fixed_dictionaries({
    "name": st.sampled_from(["sda", "sda1", "sdb", "sdb1", "mmcblk0", "loop0", "dm-0"]),
    "type": st.sampled_from(["disk", "part", "loop", "crypt", "rom"]),
    "rm": st.sampled_from([True, False, "1", "0", None]),
    "size": st.integers(0, 10**12),
    "serial": st.one_of(st.none(), st.text(max_size=8)),
    "mountpoints": st.lists(st.one_of(st.none(), st.sampled_from(["/", "/boot", "[SWAP]", "/media/x"])),
                            max_size=2),
    "pkname": st.one_of(st.none(), st.sampled_from(["sda", "sdb", "sda1", "mmcblk0"])),
}), max_size=8), st.sampled_from(["sda", "sdb", "mmcblk0", "sda1"]))
def test_disk_check_fuzz(rows: list[dict], name: str) -> None:
    """On any lsblk facts the check either refuses or returns a removable, unmounted, non-system disk."""
    disks_mod = _lib("disks")
    for r in rows:
        r["path"] = "/dev/" + r["name"]
    parsed = disks_mod.parse_lsblk(json.dumps({"blockdevices": rows}))
    try:
        row = disks_mod.check("/dev/" + name, parsed, [], is_block=True)
    except disks_mod.Refused as e:
        assert str(e) and "\n" not in str(e)
        return
    tree = disks_mod.descendants(parsed, row.name)
    assert row.type == "disk" and row.removable and row.size > 0
    assert not any(r.mountpoints for r in tree)


def test_image_copy_progress_is_not_a_traceback(tmp_path: Path) -> None:
    """imagecopy on an unreadable target: one line, exit 3."""
    r = subprocess.run([sys.executable, str(ROOT / "deploy/flash/imagecopy.py"), "hash",
                        str(tmp_path / "absent"), "10"], capture_output=True, text=True)
    assert r.returncode == 3 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1
    assert f"reading {tmp_path / 'absent'} back failed" in r.stderr


def test_read_back_catches_a_file_that_differs(tmp_path: Path, pole_files: dict[str, Path],
                                               wheelhouse: Path) -> None:
    """The injector's read-back is not a formality: a manifest that differs from the card fails, exit 3."""
    img = build_image(tmp_path / "img")
    out = tmp_path / "out.img"
    r = flash("--image", img, "--config", pole_files["config"], "--wheelhouse", wheelhouse, "--to-file", out)
    assert r.returncode == 0, r.stderr
    other = tmp_path / "other.yaml"
    other.write_text("device:\n  id: pole-9999\n")
    inject = ROOT / "deploy" / "flash" / "inject.py"
    for line, what in [(f"root\t0644\t{other}\t/etc/polelink/pole.yaml", "differs"),
                       (f"root\t0600\t{pole_files['config']}\t/etc/polelink/pole.yaml", "mode 0600"),
                       (f"boot\t-\t{other}\t/cmdline.txt", "boot:/cmdline.txt differs"),
                       ("link\t-\t/nowhere\t/etc/systemd/system/multi-user.target.wants/polelink.service",
                        "not a symlink to /nowhere")]:
        manifest = tmp_path / "manifest"
        manifest.write_text(line + "\n")
        v = subprocess.run([sys.executable, str(inject), "verify", str(out), str(manifest)],
                           capture_output=True, text=True)
        assert v.returncode == 3 and what in v.stderr and "Traceback" not in v.stderr, (line, v.stderr)


def test_an_output_file_system_too_small_is_found_before_writing(
        tmp_path: Path, pole_files: dict[str, Path], small_image: Path, wheelhouse: Path) -> None:
    """--to-file on a file system with less room than the image: refused before writing, one line
    with both figures (it was found only while writing, as "No space left on device"). A real
    small file system: a 12 MiB tmpfs in a mount namespace of its own (unshare -rm)."""
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user and mount namespaces here (unshare -rm) for a small file system")
    script = (f'mount -t tmpfs -o size=12m tmpfs {small} && exec bash {FLASH} --image {small_image} '
              f'--config {pole_files["config"]} --wheelhouse {wheelhouse} --to-file {small}/o.img')
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 1, r.stderr
    assert f"--to-file {small}/o.img: {small} has 12 MB free, the image needs 21 MB" in r.stderr, r.stderr
    assert "writing" not in r.stderr and r.stderr.count("flash.sh:") == 1


def test_wheelhouse_too_big_for_the_root(tmp_path: Path, pole_files: dict[str, Path],
                                         wheelhouse: Path) -> None:
    """More wheels than the root partition holds: one line with the figures and the margin, found in
    the image before writing anything (exit 1, no output file)."""
    big = tmp_path / "big"
    shutil.copytree(wheelhouse, big)
    with zipfile.ZipFile(big / "huge-1.0-py3-none-any.whl", "w", zipfile.ZIP_STORED) as z:
        z.writestr("huge/blob.bin", os.urandom(16 * MiB))
    img = build_image(tmp_path / "img")
    out = tmp_path / "out.img"
    r = flash("--image", img, "--config", pole_files["config"], "--wheelhouse", big, "--to-file", out)
    assert r.returncode == 1, r.stderr
    assert re.search(r"root partition has [\d.]+ MB free, the agent and the pole's files need [\d.]+ MB, "
                     r"[\d.]+ MB with the margin \(5 % and 1 MB\)", r.stderr), r.stderr
    assert "Traceback" not in r.stderr and "writing" not in r.stderr
    assert not out.exists() and sorted(os.listdir(tmp_path)) == [
        "big", "extending", "img", "pole-0042.secrets.yaml", "pole-0042.yaml", "site.yaml"]


# ---- hostile inputs: nothing but the intended target is ever written or deleted --------------

def _untouched(path: Path) -> tuple:
    """What a path is, to compare before and after a run (kind, content of a regular file)."""
    if path.is_symlink():
        return ("link", os.readlink(path))
    if not path.exists():
        return ("absent",)
    if path.is_file():
        return ("file", path.read_bytes())
    return ("other", path.stat().st_mode)


def _no_leftovers(directory: Path) -> None:
    assert not list(directory.glob(".polelink-flash.*")), list(directory.iterdir())


@pytest.mark.parametrize("what", ["image", "secrets", "config", "fifo", "directory", "dangling-link",
                                  "link-to-output"])
def test_to_file_refuses_what_is_not_its_output(tmp_path: Path, pole_files: dict[str, Path],
                                                small_image: Path,
                                                wheelhouse: Path, what: str) -> None:
    """--to-file X --force never deletes or overwrites an input, a non-regular file or through a link."""
    target = {"image": small_image, "secrets": pole_files["secrets"], "config": pole_files["config"],
              "fifo": tmp_path / "fifo", "directory": tmp_path / "adir",
              "dangling-link": tmp_path / "dangling.img", "link-to-output": tmp_path / "l.img"}[what]
    if what == "fifo":
        os.mkfifo(target)
    elif what == "directory":
        target.mkdir()
    elif what == "dangling-link":
        target.symlink_to(tmp_path / "elsewhere.img")
    elif what == "link-to-output":
        (tmp_path / "real.img").write_bytes(b"old")
        target.symlink_to(tmp_path / "real.img")
    before = {p: _untouched(p) for p in (target, small_image, pole_files["secrets"],
                                         tmp_path / "elsewhere.img",
                                         tmp_path / "real.img")}
    r = flash("--image", small_image, "--config", pole_files["config"], "--secrets", pole_files["secrets"],
              "--wheelhouse", wheelhouse, "--to-file", target, "--force")
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("flash.sh: --to-file "), r.stderr
    assert {p: _untouched(p) for p in before} == before
    _no_leftovers(tmp_path)


def test_a_device_that_vanished_is_never_created(tmp_path: Path, small_image: Path) -> None:
    """The copier opens a card without O_CREAT and wants a block device (outside TEST MODE) right before
    writing: a card pulled out after the checks does not become a file at its path."""
    env = {k: v for k, v in os.environ.items() if k != "POLELINK_FLASH_LSBLK_JSON"}
    gone = tmp_path / "sdq"
    plain = tmp_path / "sdp"
    plain.write_bytes(b"KEEP")
    for dev, message in ((gone, "No such file"), (plain, "no longer a block device")):
        r = subprocess.run([sys.executable, str(ROOT / "deploy/flash/imagecopy.py"), "write",
                            str(small_image),
                            str(dev), "device", "/dev/sdq"], capture_output=True, text=True, env=env)
        assert r.returncode == 1 and message in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert "nothing written" in r.stderr
    assert not gone.exists() and plain.read_bytes() == b"KEEP"


def test_device_listed_by_lsblk_must_be_a_block_device_outside_test_mode(tmp_path: Path) -> None:
    """disks.check no longer takes a listed path for a block device: only TEST MODE's files may stand in."""
    disks_mod = _lib("disks")
    rows = disks_mod.parse_lsblk(json.dumps({"blockdevices": [_row("sdq", tmp_path / "sdq")]}))
    with pytest.raises(disks_mod.Refused, match="not a block device"):
        disks_mod.check(str(tmp_path / "sdq"), rows, [], is_block=False)
    assert disks_mod.check(str(tmp_path / "sdq"), rows, [], is_block=True).name == "sdq"


# ---- the pole's files are validated before writing ----------------------------------------------

def test_invalid_config_is_refused_before_writing(tmp_path: Path, pole_files: dict[str, Path],
                                                  small_image: Path, wheelhouse: Path) -> None:
    """`agent validate` runs on the files as the pole will have them: its located error, one line, exit 1."""
    bad = tmp_path / "pole-0043.yaml"
    bad.write_text("device:\n  id: pole-0043\n  site: hanoi-d1\n")  # no cameras
    out = tmp_path / "out.img"
    r = flash("--image", small_image, "--config", bad, "--wheelhouse", wheelhouse, "--to-file", out)
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"flash.sh: --config {bad} is not valid on the pole: {bad}:1:1: cameras"), r.stderr
    assert "writing" not in r.stderr and not out.exists()
    _no_leftovers(tmp_path)


def test_site_and_secrets_are_validated_as_on_the_pole(tmp_path: Path, small_image: Path,
                                                       wheelhouse: Path) -> None:
    """A pole file that extends site.yaml and uses a secret: validated with --site and --secrets, and the
    site file's error is reported at the technician's site file, not at a copy."""
    pole = tmp_path / "pole-0044.yaml"
    pole.write_text("extends: site.yaml\n" + POLE_CONFIG.replace("  site: hanoi-d1\n", ""))
    site = tmp_path / "city-site.yaml"
    site.write_text("device:\n  site: hanoi-d1\n"
                    "mqtt:\n  host: broker.example\n  password: !secret mqtt_password\n")
    secrets = tmp_path / "s.yaml"
    secrets.write_text('mqtt_password: "pw"\n')
    out = tmp_path / "out.img"
    base = ["--image", small_image, "--config", pole, "--wheelhouse", wheelhouse, "--to-file", out]
    r = flash(*base)  # no --site: the pole would have no site.yaml
    assert r.returncode == 1 and not out.exists(), r.stderr
    assert f"{pole}:1:10: extends: the file it extends, /etc/polelink/site.yaml, does not exist" in r.stderr
    assert r.stderr.endswith("give --site FILE, the site file the pole file extends (flash.sh was "
                             "given none)\n") and "polelink-flash" not in r.stderr, r.stderr
    r = flash(*base, "--site", site)  # no --secrets: the pole would have an empty one
    assert r.returncode == 1 and "mqtt_password" in r.stderr and not out.exists(), r.stderr
    assert "/etc/polelink/secrets.yaml" in r.stderr and "give --secrets FILE" in r.stderr, r.stderr
    assert "polelink-flash" not in r.stderr and r.stderr.count("flash.sh:") == 1
    other = tmp_path / "pole-0045.yaml"     # extends a name the pole will not have
    other.write_text(pole.read_text().replace("extends: site.yaml", "extends: city-site.yaml"))
    r = flash(*base[:3], other, *base[4:], "--site", site, "--secrets", secrets)
    assert r.returncode == 1 and "/etc/polelink/city-site.yaml, does not exist" in r.stderr, r.stderr
    assert "the pole file must say 'extends: site.yaml'" in r.stderr
    plain = tmp_path / "plain" / "pole-0044.yaml"    # a --site that nothing extends
    plain.parent.mkdir()
    plain.write_text(POLE_CONFIG)
    r = flash(*base[:3], plain, *base[4:], "--site", site)
    assert r.returncode == 1 and f"--site {site}: the pole file" in r.stderr, r.stderr
    assert "does not extend it" in r.stderr and not out.exists()
    r = flash(*base, "--site", site, "--secrets", secrets)
    assert r.returncode == 0, r.stderr
    out.unlink()
    site.write_text("device:\n  site: hanoi-d1\naggregates:\n  interval_s: -5\n")
    r = flash(*base, "--site", site, "--secrets", secrets)
    assert r.returncode == 1 and f"{site}:4:" in r.stderr and r.stderr.strip().count("\n") <= 2, r.stderr
    assert not out.exists()


@pytest.mark.parametrize("where", ["pole", "site"])
def test_an_error_is_reported_in_the_file_that_holds_the_value(tmp_path: Path, small_image: Path,
                                                               wheelhouse: Path, where: str) -> None:
    """The README's own pole and site files, as a field crew flashes them: a lighting group
    naming an unknown camera in the pole file is reported at the pole file's line (it was
    reported at the site file's first key), a bad value of the site file at the site file's."""
    crew = tmp_path / "crew"
    crew.mkdir()
    pole = (ROOT / "config/example-pole-0042.yaml").read_text().replace(
        "extends: example-site.yaml", "extends: site.yaml")
    site = (ROOT / "config/example-site.yaml").read_text()
    if where == "pole":
        lines = pole.splitlines(keepends=True)
        n = next(i for i, ln in enumerate(lines) if "cameras: [north]" in ln) + 1
        lines[n - 1] = lines[n - 1].replace("[north]", "[nroth]")
        pole = "".join(lines)
        expect = (f"{crew}/pole-0042.yaml:{n}:",
                  "group 'street' names unknown camera(s) nroth; cameras: north")
    else:
        lines = site.splitlines(keepends=True)
        n = next(i for i, ln in enumerate(lines) if ln.strip().startswith("interval_s:")) + 1
        lines[n - 1] = re.sub(r"interval_s: \d+", "interval_s: -5", lines[n - 1])
        site = "".join(lines)
        expect = (f"{crew}/site.yaml:{n}:", "aggregates.interval_s")
    (crew / "pole-0042.yaml").write_text(pole)
    (crew / "site.yaml").write_text(site)
    shutil.copy(ROOT / "config/example.secrets.yaml", crew / "secrets.yaml")
    out = tmp_path / "out.img"
    r = flash("--image", small_image, "--config", crew / "pole-0042.yaml", "--site", crew / "site.yaml",
              "--secrets", crew / "secrets.yaml", "--wheelhouse", wheelhouse, "--to-file", out)
    assert r.returncode == 1 and not out.exists(), r.stderr
    assert all(e in r.stderr for e in expect), r.stderr
    assert r.stderr.count("flash.sh:") == 1 and "Traceback" not in r.stderr


def test_no_validate_when_the_agent_does_not_import(tmp_path: Path, pole_files: dict[str, Path],
                                                    small_image: Path, wheelhouse: Path) -> None:
    """A python that cannot import the agent: one line saying so, refused; --no-validate flashes anyway."""
    fake = tmp_path / "fake"
    (fake / "pydantic").mkdir(parents=True)
    (fake / "pydantic" / "__init__.py").write_text("raise ImportError('no pydantic here')\n")
    out = tmp_path / "out.img"
    args = ["--image", small_image, "--config", pole_files["config"], "--wheelhouse", wheelhouse,
            "--to-file", out]
    r = flash(*args, env={"PYTHONPATH": str(fake)})
    assert r.returncode == 1 and "the agent does not import" in r.stderr, r.stderr
    assert "--no-validate" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("flash.sh: cannot validate") and not out.exists()
    r = flash(*args, "--no-validate", env={"PYTHONPATH": str(fake)})
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(("content", "message"), [
    (b"network:\n  version: 2\n  ethernets: [\n", "not valid YAML"),
    (b"network: \xff\xfe\n", "not UTF-8"),
    (b"- a list\n", "not a YAML mapping"),
])
def test_bad_network_config_is_refused_before_writing(tmp_path: Path, pole_files: dict[str, Path],
                                                      wheelhouse: Path, content: bytes, message: str) -> None:
    """--network-config is read as YAML before writing: one line, exit 1."""
    img = build_image(tmp_path / "img", cloud_init_boot=True)
    net = tmp_path / "net.yaml"
    net.write_bytes(content)
    out = tmp_path / "out.img"
    r = flash("--image", img, "--config", pole_files["config"], "--wheelhouse", wheelhouse,
              "--network-config", net, "--to-file", out)
    assert r.returncode == 1 and message in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("flash.sh: --network-config") and not out.exists()
    assert "Traceback" not in r.stderr


# ---- the image is inspected before writing --------------------------------------------------------

def _mtools(*args: str | Path) -> None:
    sh(*args, env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})


@pytest.mark.parametrize("defect", ["no-table", "one-partition", "no-cmdline", "no-cmdline-xz",
                                    "network-config-on-firstrun", "cmdline-not-utf8", "corrupt-xz"])
def test_bad_image_is_refused_before_writing(tmp_path: Path, pole_files: dict[str, Path], wheelhouse: Path,
                                             defect: str) -> None:
    """Whatever is wrong with the image is found before a byte is written: exit 1, one line, no output."""
    img = build_image(tmp_path / "img")
    extra: list[str | Path] = []
    if defect == "no-table":
        img.write_bytes(b"\x00" * IMAGE_SIZE)
    elif defect == "one-partition":
        sh("sfdisk", "-q", "--delete", img, "2")
    elif defect.startswith("no-cmdline"):
        _mtools("mdel", "-i", f"{img}@@{BOOT_START}", "::cmdline.txt")
    elif defect == "network-config-on-firstrun":
        (tmp_path / "net.yaml").write_text("network:\n  version: 2\n")
        extra = ["--network-config", tmp_path / "net.yaml"]
    elif defect == "cmdline-not-utf8":
        (tmp_path / "cmdline.txt").write_bytes(b"console=tty1 root=/dev/\xff rootwait\n")
        _mtools("mcopy", "-o", "-i", f"{img}@@{BOOT_START}", tmp_path / "cmdline.txt", "::cmdline.txt")
    if defect.endswith("xz"):
        data = lzma.compress(img.read_bytes(), preset=1)
        if defect == "corrupt-xz":
            data = data[:200] + bytes(b ^ 0x55 for b in data[200:400]) + data[400:]
        img = tmp_path / "raspios.img.xz"
        img.write_bytes(data)
    out = tmp_path / "out.img"
    r = flash("--image", img, "--config", pole_files["config"], "--wheelhouse", wheelhouse, "--to-file", out,
              *extra)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("flash.sh: "), r.stderr
    assert "==> writing" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not out.exists()
    _no_leftovers(tmp_path)


def test_xz_firstrun_image(tmp_path: Path, pole_files: dict[str, Path], wheelhouse: Path) -> None:
    """An .xz firstrun image: inspected from its uncompressed start; flavour and boot dir after writing."""
    img = build_image(tmp_path / "img")
    xz = tmp_path / "raspios.img.xz"
    xz.write_bytes(lzma.compress(img.read_bytes(), preset=1))
    out = tmp_path / "out.img"
    r = flash("--image", xz, "--config", pole_files["config"], "--wheelhouse", wheelhouse, "--to-file", out)
    assert r.returncode == 0, r.stderr
    assert "first boot: firstrun" in r.stderr
    assert Card(out).boot("cmdline.txt").startswith(CMDLINE + " systemd.run=/boot/firmware/firstrun.sh ")


@pytest.mark.parametrize("case", ["none", "x86_64", "missing-numpy", "other-python"])
def test_no_card_that_cannot_install_the_agent(tmp_path: Path, pole_files: dict[str, Path],
                                               small_image: Path, case: str) -> None:
    """A wheelhouse is required, and before anything is written pip checks, offline, that
    polelink installs from it alone on the Pi (aarch64, CPython 3.11). Without one, or with one
    of this machine's wheels, flash.sh said "done" about a card whose first boot could never
    install the agent (``numpy<2,>=1.26`` not found)."""
    out = tmp_path / "out.img"
    base = ("--image", small_image, "--config", pole_files["config"], "--to-file", out)
    if case == "none":
        r = flash(*base, deps=False)
        assert r.returncode == 2, r.stderr
        assert "--wheelhouse DIR is required" in r.stderr and "make wheelhouse" in r.stderr
    else:
        wh = stub_pi_wheels(tmp_path / "wh", skip="numpy")
        if case == "x86_64":
            (wh / "numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl").write_bytes(
                (pi_deps() / "numpy-1.26.4-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
                 ).read_bytes())
        elif case == "other-python":
            (wh / "numpy-1.26.4-cp312-cp312-manylinux_2_17_aarch64.manylinux2014_aarch64.whl").write_bytes(
                (pi_deps() / "numpy-1.26.4-cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64.whl"
                 ).read_bytes())
        r = flash(*base, "--wheelhouse", wh)
        assert r.returncode == 1, r.stderr
        assert f"--wheelhouse {wh}: polelink 0.1.0 cannot install from it on the Pi" in r.stderr
        assert "numpy" in r.stderr and "make wheelhouse" in r.stderr
    assert r.stderr.count("flash.sh:") == 1 and "Traceback" not in r.stderr
    assert not out.exists() and "writing" not in r.stderr
    _no_leftovers(tmp_path)


@pytest.mark.parametrize(("kind", "holds"), [("raw", True), ("raw", False), ("xz", True), ("xz", False)])
def test_an_image_that_already_holds_the_agent(tmp_path: Path, pole_files: dict[str, Path], kind: str,
                                               holds: bool) -> None:
    """--agent-in-image instead of a wheelhouse: the image's own release is used (first boot
    installs nothing). An image without one is refused before writing (raw), or after writing
    an .xz, whose root is known only then (exit 3, the output removed): never "done"."""
    img = build_image(tmp_path / "img", agent_release="0.3.1" if holds else None)
    if kind == "xz":
        img = xz_of(img, tmp_path / "golden.img.xz")
    out = tmp_path / "out.img"
    r = flash("--image", img, "--config", pole_files["config"], "--agent-in-image", "--to-file", out,
              deps=False)
    if holds:
        assert r.returncode == 0, r.stderr
        assert "done: " in r.stderr and "polelink 0.3.1 for pole-0042" in r.stderr
        card = Card(out)
        script = card.boot("firstrun.sh")
        assert "pip install" not in script and "-m venv" not in script
        assert "usermod -a -G dialout,video polelink" in script and "systemctl enable polelink" in script
        assert card.stat("/var/lib/polelink/current")["link"] == "releases/0.3.1"
        assert "wheels" not in card.ls("/var/lib/polelink/releases/0.3.1")
        assert card.read("/etc/polelink/pole.yaml") == pole_files["config"].read_bytes()
    else:
        assert r.returncode == (1 if kind == "raw" else 3), r.stderr
        assert "--agent-in-image: the image holds no agent" in r.stderr and "--wheelhouse" in r.stderr
        assert not out.exists() and "Traceback" not in r.stderr
        assert ("writing" in r.stderr) == (kind == "xz")
    r = flash("--image", img, "--config", pole_files["config"], "--agent-in-image", "--to-file", out,
              "--force", "--wheelhouse", pi_deps())
    assert r.returncode == 2 and "give --wheelhouse or --agent-in-image, not both" in r.stderr


@pytest.mark.parametrize(("kind", "python", "machine", "message"), [
    ("raw", "3.11", 40, "the image is for armhf (32-bit ARM) (its /usr/bin/python3.11)"),
    ("xz", "3.11", 40, "the image is for armhf (32-bit ARM) (its /usr/bin/python3.11)"),
    ("raw", "3.13", 183, "the image's Python is 3.13 (/usr/bin/python3 -> python3.13)"),
    ("xz", "3.13", 183, "the image's Python is 3.13 (/usr/bin/python3 -> python3.13)"),
    ("raw", None, 183, "the image has no /usr/bin/python3"),
])
def test_an_image_whose_python_the_wheels_do_not_fit(tmp_path: Path, pole_files: dict[str, Path],
                                                      wheelhouse: Path, kind: str, python: str | None,
                                                      machine: int, message: str) -> None:
    """The wheelhouse is for CPython 3.11 on aarch64 (Raspberry Pi OS Bookworm, 64-bit): a
    32-bit image or a Trixie one (Python 3.13) could never install it, and flash.sh said
    "done". Refused before writing a raw image; an .xz's root is known after writing: exit
    3, the output removed."""
    img = build_image(tmp_path / "img", python=python, elf_machine=machine)
    if kind == "xz":
        img = xz_of(img, tmp_path / "raspios.img.xz")
    out = tmp_path / "out.img"
    r = flash("--image", img, "--config", pole_files["config"], "--wheelhouse", wheelhouse, "--to-file", out)
    assert r.returncode == (1 if kind == "raw" else 3), r.stderr
    assert message in r.stderr and r.stderr.count("flash.sh:") == 1, r.stderr
    assert ("writing" in r.stderr) == (kind == "xz") and not out.exists() and "Traceback" not in r.stderr
    _no_leftovers(tmp_path)


@pytest.mark.parametrize("defect", ["cut-short", "root-third", "linux-not-ext-first"])
def test_partition_layouts_beyond_the_usual(tmp_path: Path, pole_files: dict[str, Path], wheelhouse: Path,
                                            defect: str) -> None:
    """An image cut short (its partitions end past its end: an incomplete download) is refused
    before writing, raw or .xz; a root that is the third partition is found in an .xz too (only
    the first two were unpacked); a Linux partition that is not ext before the root is passed
    over (the first one was taken, and refused)."""
    img = build_image(tmp_path / "img", image_size=32 * MiB)
    if defect == "cut-short":
        with open(img, "r+b") as f:
            f.truncate(26 * MiB)
    else:   # a third partition after the root: the ext4 root moves there, a swap-like one before
        table = (f"label: dos\nlabel-id: 0x4e639091\nstart={BOOT_START // 512}, size={BOOT_SIZE // 512}, "
                 f"type=c\nstart={ROOT_START // 512}, size={4 * MiB // 512}, "
                 f"type={'82' if defect == 'root-third' else '83'}\nstart={(ROOT_START + 4 * MiB) // 512}, "
                 "type=83\n")
        sh("sfdisk", "-q", "--no-reread", img, input=table.encode())
        with open(img, "r+b") as f:          # partition 2: no file system (the old root's gone)
            f.seek(ROOT_START)
            f.write(bytes(4 * MiB))
        root = tmp_path / "rootfs2"
        shutil.copytree(tmp_path / "img" / "rootfs", root, symlinks=True)
        sh("mke2fs", "-q", "-F", "-t", "ext4", "-d", root, "-E", f"offset={ROOT_START + 4 * MiB}", img,
           f"{(32 * MiB - ROOT_START - 4 * MiB) // 1024}k")
    for name, image in (("raw", img), ("xz", xz_of(img, tmp_path / "raspios.img.xz"))):
        out = tmp_path / f"out-{name}.img"
        r = flash("--image", image, "--config", pole_files["config"], "--wheelhouse", wheelhouse,
                  "--to-file", out)
        if defect == "cut-short":
            assert r.returncode == 1 and "the image is cut short" in r.stderr, (name, r.stderr)
            assert not out.exists() and "writing" not in r.stderr
        else:
            assert r.returncode == 0, (name, r.stderr)
            assert Card(out, root_start=ROOT_START + 4 * MiB).read("/etc/polelink/pole.yaml") == \
                pole_files["config"].read_bytes()


def _rewrite_wheel(src: Path, dst: Path, change) -> Path:
    """A copy of the wheel ``src`` at ``dst`` with ``change(name, data)`` applied to each member."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, change(info.filename, zin.read(info.filename)))
    return dst


@pytest.mark.parametrize("case", ["direct-url", "bad-crc", "tags-lie", "other-version"])
def test_wheels_that_would_make_a_card_that_cannot_run(
        tmp_path: Path, pole_files: dict[str, Path], small_image: Path, wheelhouse: Path, case: str) -> None:
    """What pip's dry run alone let through, each refused before writing in one line: a
    dependency by direct URL (fetched here, absent on the Pi), a wheel whose content fails
    its CRC (pip on the Pi would stop there), a wheel whose WHEEL file names another machine
    than its file name, an agent wheel that is not this checkout's (the unit and update
    guard on the card are the checkout's)."""
    wh = tmp_path / "wh"
    shutil.copytree(wheelhouse, wh)
    agent = next(wh.glob("polelink-*.whl"))
    numpy = next(wh.glob("numpy-*.whl"))
    if case == "direct-url":
        elsewhere = stub_pi_wheels(tmp_path / "elsewhere")
        dep = next(elsewhere.glob("six-*.whl")).as_uri()
        line = f"\nRequires-Dist: six @ {dep}".encode()        # among the headers, first
        _rewrite_wheel(agent, tmp_path / agent.name, lambda n, d: d.replace(b"\nRequires-Dist:", line
                       + b"\nRequires-Dist:", 1) if n.endswith(".dist-info/METADATA") else d)
        shutil.move(tmp_path / agent.name, agent)
        (wh / next(wh.glob("six-*.whl")).name).unlink()
        expect = f"six would come from {dep}, not from the wheelhouse"
    elif case == "bad-crc":
        data = bytearray(numpy.read_bytes())
        at = data.index(b"Version: 1.26.4")
        data[at] ^= 0x20                                  # 'V' -> 'v': the stored bytes change
        numpy.write_bytes(bytes(data))
        expect = f"wheel {numpy.name}: damaged: numpy-1.26.4.dist-info/METADATA fails its CRC check"
    elif case == "tags-lie":
        tag = b"Tag: cp311-cp311-manylinux_2_17_x86_64\n"
        _rewrite_wheel(numpy, tmp_path / numpy.name, lambda n, d: d + tag if n.endswith("/WHEEL") else d)
        shutil.move(tmp_path / numpy.name, numpy)
        expect = "its WHEEL file says cp311-cp311-manylinux_2_17_x86_64, its name"
    else:
        agent.rename(wh / "polelink-0.0.9-py3-none-any.whl")
        expect = "its agent is polelink 0.0.9, this checkout is 0.1.0"
    out = tmp_path / "out.img"
    r = flash("--image", small_image, "--config", pole_files["config"], "--wheelhouse", wh, "--to-file", out)
    assert r.returncode == 1 and expect in r.stderr, r.stderr
    assert r.stderr.count("flash.sh:") == 1 and not out.exists() and "writing" not in r.stderr


def test_an_agent_wheel_named_in_other_letters_is_the_agents(tmp_path: Path, pole_files: dict[str, Path],
                                                              small_image: Path, wheelhouse: Path) -> None:
    """PoleLink-0.1.0-….whl is the agent's wheel (distribution names ignore case): used as it
    is, not a second one built beside it."""
    wh = tmp_path / "wh"
    shutil.copytree(wheelhouse, wh)
    agent = next(wh.glob("polelink-*.whl"))
    agent.rename(wh / agent.name.replace("polelink", "PoleLink"))
    out = tmp_path / "out.img"
    r = flash("--image", small_image, "--config", pole_files["config"], "--wheelhouse", wh, "--to-file", out)
    assert r.returncode == 0, r.stderr
    assert "building the agent's wheel" not in r.stderr
    wheels = Card(out).ls("/var/lib/polelink/releases/0.1.0/wheels")
    assert [w for w in wheels if w.lower().startswith("polelink-")] == ["PoleLink-0.1.0-py3-none-any.whl"]


def test_a_tmpdir_without_room_is_one_line(tmp_path: Path, pole_files: dict[str, Path], small_image: Path,
                                           wheelhouse: Path) -> None:
    """TMPDIR on a file system too small for the work (a copy of the wheelhouse, the image's
    start): one line naming TMPDIR and the figures, not cp's own error."""
    small = tmp_path / "smalltmp"
    small.mkdir()
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no user and mount namespaces here (unshare -rm) for a small file system")
    out = tmp_path / "out.img"
    script = (f'mount -t tmpfs -o size=3m tmpfs {small} && TMPDIR={small} exec bash {FLASH} --image '
              f'{small_image} --config {pole_files["config"]} --wheelhouse {wheelhouse} --to-file {out}')
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 1 and f"TMPDIR {small} has 3 MB free, flash.sh needs about" in r.stderr, r.stderr
    assert "set TMPDIR to a folder with room" in r.stderr and r.stderr.count("\n") == 1 and not out.exists()


def test_a_damaged_xz_is_one_line(tmp_path: Path, pole_files: dict[str, Path], wheelhouse: Path) -> None:
    """An .xz cut in half (an interrupted download): one line, nothing written."""
    xz = xz_of(build_image(tmp_path / "img"), tmp_path / "raspios.img.xz")
    cut = tmp_path / "cut.img.xz"
    cut.write_bytes(xz.read_bytes()[: xz.stat().st_size // 2])
    out = tmp_path / "out.img"
    r = flash("--image", cut, "--config", pole_files["config"], "--wheelhouse", wheelhouse, "--to-file", out)
    assert r.returncode == 1 and "the .xz image is damaged" in r.stderr, r.stderr
    assert r.stderr.count("\n") == 1 and not out.exists()


def test_a_python_without_pip_cannot_check_the_wheelhouse(tmp_path: Path, pole_files: dict[str, Path],
                                                           small_image: Path, wheelhouse: Path) -> None:
    """PYTHON without pip (Debian's python3 without python3-pip): one line saying so and what
    to use, never pip's "No module named pip" as if it were the wheelhouse's fault."""
    import venv

    venv.EnvBuilder(with_pip=False).create(tmp_path / "bare")
    out = tmp_path / "out.img"
    r = flash("--image", small_image, "--config", pole_files["config"], "--wheelhouse", wheelhouse,
              "--no-validate", "--to-file", out, env={"PYTHON": str(tmp_path / "bare" / "bin" / "python")})
    assert r.returncode == 1 and not out.exists(), r.stderr
    assert f"cannot check --wheelhouse {wheelhouse}: " in r.stderr and "has no pip" in r.stderr, r.stderr
    assert "make .venv/bin/agent" in r.stderr and r.stderr.count("flash.sh:") == 1


def xz_of(img: Path, out: Path) -> Path:
    """``img`` compressed to ``out`` (.xz, preset 0), streamed: the big images never sit in memory."""
    comp = lzma.LZMACompressor(preset=0)
    with open(img, "rb") as src, open(out, "wb") as dst:
        while chunk := src.read(4 * MiB):
            dst.write(comp.compress(chunk))
        dst.write(comp.flush())
    return out


def test_xz_image_whose_root_has_more_than_16_block_groups(tmp_path: Path, pole_files: dict[str, Path],
                                                           wheelhouse: Path) -> None:
    """Only the start of an .xz image's root is unpacked before writing: the root's free space
    comes from its superblock alone. A root of more than 16 block groups (flex_bg) keeps the
    bitmaps of groups 16 and on far past that start, and reading them (debugfs stats) failed:
    "cannot read the root partition's superblock" on every real Raspberry Pi OS image. 1 KiB
    blocks make 18 groups of a 140 MiB root, cheaply."""
    img = build_image(tmp_path / "img", image_size=150 * MiB, root_block=1024, cloud_init_boot=True)
    groups = sh("dumpe2fs", f"{img}?offset={ROOT_START}").stdout.decode().count("\nGroup ")
    assert groups > 16
    out = tmp_path / "out.img"
    r = flash("--image", xz_of(img, tmp_path / "raspios.img.xz"), "--config", pole_files["config"],
              "--wheelhouse", wheelhouse, "--to-file", out)
    assert r.returncode == 0, r.stderr
    card = Card(out)
    assert card.read("/etc/polelink/pole.yaml") == pole_files["config"].read_bytes()
    assert "e2fsck: clean" in r.stderr


def _raspios_geometry_xz(tmp_path: Path) -> Path:
    """A stand-in Raspberry Pi OS Bookworm image to the real geometry (4 MiB, a 512 MiB FAT,
    then a 2,116 MiB ext4 of 4 KiB blocks: 17 block groups), as .xz; built once and kept
    in the user's cache (it takes a minute), rebuilt when this builder changes."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "polelink-tests"
    xz = cache / "raspios-geometry-v2.img.xz"
    if not xz.exists():
        img = build_image(tmp_path / "geometry", image_size=(4 + 512 + 2116) * MiB - 3 * MiB,
                          boot_size=512 * MiB)
        cache.mkdir(parents=True, exist_ok=True)
        part = xz_of(img, cache / f".raspios-geometry.{os.getpid()}.xz")
        os.replace(part, xz)                     # whole or not at all (two workers may build it)
        img.unlink()
    return xz


def test_xz_image_at_the_real_raspberry_pi_os_geometry(tmp_path: Path, pole_files: dict[str, Path],
                                                      wheelhouse: Path) -> None:
    """The README's own example: a real-sized .img.xz (512 MiB boot, 2 GiB root) written and
    verified (2.6 GB written and read back)."""
    xz = _raspios_geometry_xz(tmp_path)
    out = tmp_path / "out.img"
    r = flash("--image", xz, "--config", pole_files["config"], "--wheelhouse", wheelhouse, "--to-file", out)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size == (4 + 512 + 2116) * MiB - 3 * MiB
    card = Card(out, root_start=BOOT_START + 512 * MiB)
    assert card.read("/etc/polelink/pole.yaml") == pole_files["config"].read_bytes()
    assert "first boot: firstrun" in r.stderr


# ---- one flash.sh per target; e2fsck in the verification ------------------------------------------

def test_a_locked_target_is_refused(tmp_path: Path, disks: dict, pole_files: dict[str, Path],
                                    small_image: Path,
                                    wheelhouse: Path) -> None:
    """Another flash.sh holding the card (or the output directory) makes a second one stop, exit 1."""
    import fcntl

    dev = disks["dev"] / "sdz"
    outdir = tmp_path / "outdir"
    outdir.mkdir()
    for path, args, env in ((dev, ["--device", dev, "--yes", "--expect-serial", "SN0042"], disks["env"]),
                            (outdir, ["--to-file", outdir / "o.img"], {})):
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            r = flash("--image", small_image, "--config", pole_files["config"], "--wheelhouse", wheelhouse,
                      *args, env=env)
        finally:
            os.close(fd)
        assert r.returncode == 1 and "another flash.sh" in r.stderr, r.stderr
        assert r.stderr.strip().splitlines()[-1].startswith("flash.sh: ")
    assert dev.read_bytes() == b"" and list(outdir.iterdir()) == []


def test_two_concurrent_runs_on_one_output(tmp_path: Path, pole_files: dict[str, Path], small_image: Path,
                                           wheelhouse: Path) -> None:
    """Two runs started together on one --to-file: one is done, the other refused; the file is whole."""
    out = tmp_path / "out.img"
    cmd = ["bash", str(FLASH), "--image", str(small_image), "--config", str(pole_files["config"]),
           "--wheelhouse", str(wheelhouse), "--to-file", str(out), "--force"]
    env = {**os.environ, "PYTHON": sys.executable}
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = sorted((p.wait(timeout=300), p.stderr.read()) for p in procs)  # type: ignore[union-attr]
    assert [rc for rc, _ in results] == [0, 1], results
    assert "another flash.sh" in results[1][1]
    assert Card(out).read("/etc/polelink/pole.yaml") == pole_files["config"].read_bytes()
    r = subprocess.run(["e2fsck", "-fn", Card(out).root], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout


def test_verification_runs_e2fsck(tmp_path: Path, pole_files: dict[str, Path], wheelhouse: Path) -> None:
    """A root file system e2fsck finds wrong fails the read-back, exit 3, even when the files read back."""
    img = build_image(tmp_path / "img")
    out = tmp_path / "out.img"
    assert flash("--image", img, "--config", pole_files["config"], "--wheelhouse", wheelhouse,
                 "--to-file", out).returncode == 0
    sh("debugfs", "-w", "-R", "sif /etc/hostname links_count 5", Card(out).root)
    manifest = tmp_path / "manifest"
    manifest.write_text(f"root\t0644\t{pole_files['config']}\t/etc/polelink/pole.yaml\n")
    v = subprocess.run([sys.executable, str(ROOT / "deploy/flash/inject.py"), "verify", str(out),
                        str(manifest)],
                       capture_output=True, text=True)
    assert v.returncode == 3 and "e2fsck -fn" in v.stderr and v.stderr.count("\n") == 1, v.stderr


# ---- the cmdline.txt hook comes and goes word by word ---------------------------------------------

def test_cmdline_hook_keeps_every_other_word() -> None:
    """An older hook in the middle of the line: only its words go, root= and what follows stay."""
    firstboot = _lib("firstboot")
    line = ("console=tty1 systemd.run=/boot/old.sh systemd.run_success_action=reboot "
            "systemd.unit=kernel-command-line.target root=PARTUUID=4e639091-02 rootwait "
            "systemd.unit=rescue.target")
    out = firstboot.add_hook(line + "\n", "/boot/firmware/firstrun.sh")
    assert out == ("console=tty1 root=PARTUUID=4e639091-02 rootwait systemd.unit=rescue.target "
                   "systemd.run=/boot/firmware/firstrun.sh systemd.run_success_action=reboot "
                   "systemd.unit=kernel-command-line.target\n")


def test_firstrun_removes_only_its_hook(tmp_path: Path) -> None:
    """firstrun.sh's own clean-up, run on a boot directory: the hook's words go, root= and the rest stay."""
    firstboot = _lib("firstboot")
    script = firstboot.firstrun("0.1.0", "pole-0042", str(tmp_path))
    start, end = script.index('rm -f "$BOOT/firstrun.sh"'), script.index('echo "polelink first boot finished')
    cleanup = script[start:end]
    hooked = firstboot.add_hook("console=tty1 " + CMDLINE + "\n", f"{tmp_path}/firstrun.sh")
    # the Imager may put the hook before other words; they must survive too
    hooked = hooked.replace("console=tty1 ", "console=tty1 systemd.run=/x systemd.run_failure_action=none ",
                            1)
    (tmp_path / "cmdline.txt").write_text(hooked)
    (tmp_path / "firstrun.sh").write_text("x")
    sh("bash", "-euc", f"BOOT={tmp_path}\n{cleanup}")
    assert (tmp_path / "cmdline.txt").read_text() == "console=tty1 " + CMDLINE + "\n"
    assert not (tmp_path / "firstrun.sh").exists()


# ---- partitions lsblk gives without their disk ---------------------------------------------------

def test_a_partition_without_pkname_is_tied_or_refused() -> None:
    """A partition with no pkname is tied to its disk by name (sdb1, mmcblk0p1), or the disk is refused."""
    disks_mod = _lib("disks")

    def rows(*extra: dict) -> list:
        return disks_mod.parse_lsblk(json.dumps({"blockdevices": [_row("sdb", "/dev/sdb"), *extra]}))

    with pytest.raises(disks_mod.Refused, match="holds the running system"):
        disks_mod.check("/dev/sdb", rows(_row("sdb2", "/dev/sdb2", "part", mounts=["/"])), [], True)
    with pytest.raises(disks_mod.Refused, match="mounted partition"):
        disks_mod.check("/dev/sdb", rows(_row("sdb1", "/dev/sdb1", "part", mounts=["/media/x"])), [], True)
    mmc = disks_mod.parse_lsblk(json.dumps({"blockdevices": [
        _row("mmcblk0", "/dev/mmcblk0"), _row("mmcblk0p1", "/dev/mmcblk0p1", "part"),
        _row("mmcblk0p2", "/dev/mmcblk0p2", "part")]}))
    disks_mod.check("/dev/mmcblk0", mmc, [("/dev/mmcblk0p2", "/media/y")][:0], True)
    with pytest.raises(disks_mod.Refused, match="mounted partition"):
        disks_mod.check("/dev/mmcblk0", mmc, [("/dev/mmcblk0p2", "/media/y")], True)
    with pytest.raises(disks_mod.Refused, match="without its disk"):
        disks_mod.check("/dev/sdb", rows(_row("dm-3", "/dev/dm-3", "crypt", mounts=["/"])), [], True)


# ---- interrupted, or failed after writing: nothing partial left -----------------------------------

def _flash_with_python(wrapper: Path, tmp_path: Path, image: Path, pole_files: dict[str, Path],
                       wheelhouse: Path) -> tuple[subprocess.Popen, str, Path]:
    """flash.sh --to-file out/o.img in a session of its own (a terminal's process group) with
    ``wrapper`` (made executable) as its PYTHON: the process, its stderr and the output path."""
    wrapper.chmod(0o755)
    out = tmp_path / "out" / "o.img"
    out.parent.mkdir()
    p = subprocess.Popen(["bash", str(FLASH), "--image", str(image), "--config",
                          str(pole_files["config"]), "--wheelhouse", str(wheelhouse), "--to-file", str(out)],
                         stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHON": str(wrapper)}, start_new_session=True)
    _, err = p.communicate(timeout=120)
    return p, err, out


def test_interrupt_while_writing_leaves_no_partial_output(tmp_path: Path, pole_files: dict[str, Path],
                                                          small_image: Path, wheelhouse: Path) -> None:
    """Ctrl-C (SIGINT to the process group) during the write: one line, exit 3, no output file."""
    wrapper = tmp_path / "python"
    wrapper.write_text(f"""#!/bin/bash
if [[ "$1" == */imagecopy.py && "$2" == write ]]; then
    "{sys.executable}" "$@"; kill -INT -- -"$(ps -o pgid= $$ | tr -d ' ')"; sleep 5; exit 130
fi
exec "{sys.executable}" "$@"
""")
    p, err, out = _flash_with_python(wrapper, tmp_path, small_image, pole_files, wheelhouse)
    assert p.returncode == 3, err
    assert err.strip().splitlines()[-1] == \
        f"flash.sh: interrupted: the partial output was removed, nothing at {out}"
    assert "Traceback" not in err and list(out.parent.iterdir()) == []


INTERRUPTER = """#!{python}
# flash.sh's PYTHON for the test: runs the helper step STEP and presses Ctrl-C (SIGINT to the
# whole process group, as a terminal does) once the helper is mid-step: when it has started a
# program of its own (agent validate, pip, mdir, debugfs). Any other call runs as it is.
import os, signal, subprocess, sys, time
args = sys.argv[1:]
script = args[2:] if args[:1] == ["-c"] else args          # flash.sh's helper launcher: -c CODE SCRIPT
if len(script) >= 2 and os.path.basename(script[0]) + " " + script[1] == {step!r}:
    signal.signal(signal.SIGINT, signal.SIG_IGN)          # this wrapper outlives the Ctrl-C
    p = subprocess.Popen([{python!r}, *args],
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    children = "/proc/%d/task/%d/children" % (p.pid, p.pid)
    while p.poll() is None and not open(children).read().strip():
        time.sleep(0.005)
    if p.poll() is None:
        open({mark!r}, "w").close()
        os.killpg(os.getpgrp(), signal.SIGINT)
    rc = p.wait()
    if rc < 0:                                            # died of it: so does this wrapper
        signal.signal(-rc, signal.SIG_DFL)
        os.kill(os.getpid(), -rc)
    sys.exit(rc)
os.execv({python!r}, [{python!r}, *args])
"""


@pytest.mark.parametrize(("step", "code", "last"), [
    ("checks.py validate", 1, "flash.sh: interrupted: nothing written"),
    ("checks.py installable", 1, "flash.sh: interrupted: nothing written"),
    ("inject.py inspect", 1, "flash.sh: interrupted: nothing written"),
    ("inject.py write", 3, "flash.sh: interrupted: the partial output was removed, nothing at {out}"),
])
def test_ctrl_c_anywhere_is_one_line(tmp_path: Path, pole_files: dict[str, Path], small_image: Path,
                                     wheelhouse: Path, step: str, code: int, last: str) -> None:
    """Ctrl-C during validation, the wheelhouse check, the image's inspection or the install
    step: one line saying what it left behind, never a KeyboardInterrupt traceback first."""
    mark = tmp_path / "interrupted"
    wrapper = tmp_path / "python"
    wrapper.write_text(INTERRUPTER.format(python=sys.executable, step=step, mark=str(mark)))
    p, err, out = _flash_with_python(wrapper, tmp_path, small_image, pole_files, wheelhouse)
    assert mark.exists(), f"the step {step} ended before it could be interrupted: {err}"
    assert p.returncode == code, err
    assert err.strip().splitlines()[-1] == last.format(out=out), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and err.count("flash.sh:") == 1, err
    assert list(out.parent.iterdir()) == []


def test_copier_interrupted_is_silent(tmp_path: Path) -> None:
    """imagecopy.py on Ctrl-C: no traceback (flash.sh says it in one line), exit 130."""
    import signal

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    p = subprocess.Popen([sys.executable, str(ROOT / "deploy/flash/imagecopy.py"), "hash", str(fifo), "100"],
                         stderr=subprocess.PIPE, text=True)
    with open(fifo, "wb"):  # returns once the copier has opened the FIFO: it is reading
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    assert p.returncode == 130 and err == "", err


def test_failed_verification_leaves_no_output(tmp_path: Path, pole_files: dict[str, Path], small_image: Path,
                                              wheelhouse: Path) -> None:
    """A failure after the write began removes the partial --to-file output: a rerun needs no --force."""
    out = tmp_path / "out" / "o.img"
    out.parent.mkdir()
    r = flash("--image", small_image, "--config", pole_files["config"], "--wheelhouse", wheelhouse,
              "--to-file", out, env={"POLELINK_FLASH_TEST_CORRUPT_AT": str(ROOT_START + 17)})
    assert r.returncode == 3 and "VERIFY FAILED" in r.stderr
    assert list(out.parent.iterdir()) == []


# ---- every error one line ------------------------------------------------------------------------

@pytest.mark.parametrize("doc", ['[]', '{"blockdevices":[1]}', '{"blockdevices":{"a":1}}',
                                 '{"blockdevices":[{"name":"sdz","children":"x"}]}',
                                 '{"blockdevices":[{"name":"sdz","size":[1]}]}', 'not json'])
def test_odd_lsblk_output_is_one_line(tmp_path: Path, disks: dict, small_image: Path,
                                      pole_files: dict[str, Path],
                                      wheelhouse: Path, doc: str) -> None:
    """lsblk output of any shape: 'cannot read the disk facts', one line, exit 1 (nothing written)."""
    lsblk = tmp_path / "odd.json"
    lsblk.write_text(doc)
    dev = disks["dev"] / "sdz"
    r = flash("--image", small_image, "--config", pole_files["config"], "--wheelhouse", wheelhouse,
              "--device", dev, "--yes", "--expect-serial", "SN0042",
              env={**disks["env"], "POLELINK_FLASH_LSBLK_JSON": str(lsblk)})
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("flash.sh: cannot read the disk facts"), r.stderr
    assert "Traceback" not in r.stderr and dev.read_bytes() == b""


@pytest.mark.parametrize("what", ["dangling", "loop", "dash"])
def test_odd_device_paths_are_one_line(tmp_path: Path, disks: dict, small_image: Path,
                                       pole_files: dict[str, Path], wheelhouse: Path, what: str) -> None:
    """--device a dangling symlink, a symlink loop, a name starting with '-': one line, exit 1."""
    if what == "dangling":
        dev = tmp_path / "dangling"
        dev.symlink_to(tmp_path / "nowhere")
    elif what == "loop":
        dev = tmp_path / "loop"
        dev.symlink_to(dev)
    else:
        dev = Path("-sdb")
    r = flash("--image", small_image, "--config", pole_files["config"], "--wheelhouse", wheelhouse,
              "--device", dev, "--yes", "--expect-serial", "x", env=disks["env"])
    assert r.returncode == 1, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "TEST MODE" not in ln]
    assert len(lines) == 1 and lines[0].startswith("flash.sh: "), r.stderr
    assert not (tmp_path / "nowhere").exists()


def test_terminal_escapes_in_disk_facts_are_not_printed(tmp_path: Path, disks: dict, small_image: Path,
                                                        pole_files: dict[str, Path],
                                                        wheelhouse: Path) -> None:
    """A model or serial with terminal escapes is shown with '?' in their place."""
    lsblk = tmp_path / "esc.json"
    row = _row("sdz", disks["dev"] / "sdz", serial="SN\x1b[2J42")
    row["model"] = "Evil\x1b]0;pwned\x07Reader"
    lsblk.write_text(json.dumps({"blockdevices": [row]}))
    r = flash("--image", small_image, "--config", pole_files["config"], "--wheelhouse", wheelhouse,
              "--device", disks["dev"] / "sdz", "--yes", "--expect-serial", "SN?[2J42",
              env={**disks["env"], "POLELINK_FLASH_LSBLK_JSON": str(lsblk)})
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stderr and "\x07" not in r.stderr
    assert "model:  Evil?]0;pwned?Reader" in r.stderr


# ---- names and paths checked up front -------------------------------------------------------------

@pytest.mark.parametrize(("name", "kind"), [
    ("my wheel-1.0-py3-none-any.whl", "file"), ('a"b-1.0-py3-none-any.whl', "file"),
    ("polelink-1.0.whl", "polelink"), ("polelink-..-...whl", "polelink"),
    ("polelink-1.x-py3-none-any.whl", "polelink"), ("empty-1.0-py3-none-any.whl", "empty"),
    ("loop-1.0-py3-none-any.whl", "loop"), ("dir-1.0-py3-none-any.whl", "dir"),
])
def test_bad_wheels_are_refused_up_front(tmp_path: Path, pole_files: dict[str, Path], small_image: Path,
                                         wheelhouse: Path, name: str, kind: str) -> None:
    """A wheel debugfs cannot take, a version that is not PEP 440, an empty or unreadable wheel: exit 1
    before writing, one line."""
    house = tmp_path / "house"
    shutil.copytree(wheelhouse, house)
    target = house / name
    if kind == "polelink":
        for old in house.glob("polelink-*.whl"):
            old.rename(target)
    elif kind == "empty":
        target.write_bytes(b"")
    elif kind == "loop":
        target.symlink_to(target)
    elif kind == "dir":
        target.mkdir()
    else:
        shutil.copy(house / "tinydep-1.0-py3-none-any.whl", target)
    out = tmp_path / "out.img"
    r = flash("--image", small_image, "--config", pole_files["config"], "--wheelhouse", house,
              "--to-file", out)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("flash.sh: wheel "), r.stderr
    assert not out.exists()


@pytest.mark.parametrize("name", ["q?x.img", "a@@1.img", "sp ace.img"])
def test_output_names_debugfs_cannot_take(tmp_path: Path, pole_files: dict[str, Path], small_image: Path,
                                          wheelhouse: Path, name: str) -> None:
    """--to-file names with '?', '@@' or white space: refused up front, one line."""
    r = flash("--image", small_image, "--config", pole_files["config"], "--wheelhouse", wheelhouse,
              "--to-file", tmp_path / name)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "--to-file" in r.stderr, r.stderr
    assert not (tmp_path / name).exists()


def test_tmpdir_with_a_space(tmp_path: Path, pole_files: dict[str, Path], small_image: Path,
                             wheelhouse: Path) -> None:
    """A TMPDIR debugfs cannot take: refused before anything, one line."""
    (tmp_path / "sp ace").mkdir()
    r = flash("--image", small_image, "--config", pole_files["config"], "--wheelhouse", wheelhouse,
              "--to-file", tmp_path / "o.img", env={"TMPDIR": str(tmp_path / "sp ace")})
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "TMPDIR" in r.stderr, r.stderr
    assert not (tmp_path / "o.img").exists()


# ---- the technicians' examples (docs/technicians), run as written -------------------------------

def _doc_commands(page: str, containing: str) -> list[str]:
    """The commands of the docs page's console block holding ``containing`` (the block is
    marked as not run by the docs' own example test, which cannot write a card: it is run
    here, with the card swapped for an image file)."""
    from tests.docs_examples import blocks, parse_console

    found = [b for b in blocks(ROOT / "docs" / page) if b.lang == "console" and containing in b.body]
    assert len(found) == 1, f"docs/{page}: {len(found)} console blocks hold {containing!r}"
    return [c.text for c in parse_console(found[0].body)]


def _stage_wheelhouse(cwd: Path, wheelhouse: Path) -> None:
    """``var/wheelhouse/aarch64`` under ``cwd`` as `make wheelhouse` leaves it (stand-ins for the
    Pi's wheels, the agent's real wheel), so the examples' own paths work."""
    shutil.copytree(wheelhouse, cwd / "var" / "wheelhouse" / "aarch64")


def test_the_docs_flash_example_runs_as_written(tmp_path: Path, wheelhouse: Path) -> None:
    """The technicians' flash command, with only the card swapped for --to-file and the image for a
    stand-in at the real geometry's kind (.img.xz): its --wheelhouse folder is the one `make
    wheelhouse` fills, and the crew's files as the docs describe them validate and install."""
    from deploy.pi.target import WHEELHOUSE

    commands = [c for c in _doc_commands("technicians/flashing.md", "./flash.sh --image")
                if not c.startswith("make ")]
    assert len(commands) == 1, commands
    command = commands[0]
    assert f"--wheelhouse {WHEELHOUSE.relative_to(ROOT)} " in command
    image = re.search(r"--image (\S+\.img\.xz)", command).group(1)  # an .img.xz, as downloaded
    cwd = tmp_path / "work"
    cwd.mkdir()
    _stage_wheelhouse(cwd, wheelhouse)
    xz_of(build_image(tmp_path / "img"), cwd / image)
    (cwd / "pole-0042.yaml").write_text("extends: site.yaml\n" + POLE_CONFIG)
    (cwd / "site.yaml").write_text("mqtt:\n  host: broker.example\n")
    (cwd / "pole-0042.secrets.yaml").write_text(SECRET + "\n")
    command = command.replace("sudo ./flash.sh", f"bash {FLASH}").replace("--device /dev/sdb",
                                                                          "--to-file out.img")
    r = subprocess.run(command, shell=True, cwd=cwd, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 0, (command, r.stderr)
    assert "done: out.img holds the image and polelink 0.1.0 for pole-0042" in r.stderr


def test_the_docs_bundle_example_runs_as_written(tmp_path: Path, wheelhouse: Path) -> None:
    """The technicians' bundle commands (all but `make wheelhouse`, which needs the package index):
    the version comes from the checkout, so it matches the agent's wheel, and the bundle
    builds and verifies."""
    commands = _doc_commands("technicians/updates.md", "agent bundle build")
    cwd = tmp_path / "work"
    cwd.mkdir()
    _stage_wheelhouse(cwd, wheelhouse)
    (cwd / "models").symlink_to(ROOT / "models")
    (cwd / ".venv").mkdir()                # the checkout's .venv/bin: this test's interpreter's
    (cwd / ".venv" / "bin").symlink_to(Path(sys.executable).parent)
    keygen = subprocess.run([sys.executable, "-m", "agent", "bundle", "keygen", "--out",
                             "site-updates.pem"], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert keygen.returncode == 0, keygen.stderr
    script = "set -e\n" + "\n".join(c for c in commands if not c.startswith("make "))
    r = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, (script, r.stderr)
    assert "OK: version 0.1.0" in r.stdout and (cwd / "polelink-0.1.0.bundle").exists(), r.stdout
