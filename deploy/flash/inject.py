"""Put files into a written image's partitions without mounting: flash.sh's injector.

The boot partition (FAT) is written with mtools at its byte offset (``mcopy -i TARGET@@OFFSET``),
the root partition (ext4) with ``debugfs -w 'TARGET?offset=OFFSET'``: no mount, no loop device, so
it works on an image file as an unprivileged user and on a card as root alike.

``inject.py layout TARGET``             the partitions (sfdisk --json): JSON {boot, root} byte offsets
``inject.py detect TARGET``             the first-boot flavour: JSON {flavour, boot_dir, why}
``inject.py write TARGET MANIFEST``     copies what the manifest lists
``inject.py verify TARGET MANIFEST``    reads every listed file back: content, mode, owner; then
                                        ``e2fsck -fn`` checks the root file system
``inject.py inspect IMAGE CMDLINE_OUT [--boot-only]``
                                        before writing: the partitions, the boot partition, its
                                        cmdline.txt (copied to CMDLINE_OUT when there is one), the
                                        root's free space and the flavour (with --boot-only, for the
                                        partial copy of an .xz, only what the boot partition shows:
                                        flavour "" when it does not tell); JSON on stdout
``inject.py space IMAGE MANIFEST``      before writing: refuses when the root has not room for it
``inject.py installed TARGET [--before]`` the version of the agent the image already holds
                                        (``--agent-in-image``); exit 1 before writing, 3 after
``inject.py python TARGET [--before]``  the image's /usr/bin/python3 is CPython 3.11 on aarch64
                                        (what the wheelhouse is for); exit 1 before writing, 3 after

A manifest line is ``FS<TAB>MODE<TAB>SOURCE<TAB>DEST`` with FS ``root`` or ``boot`` (MODE is octal,
ignored on FAT, which has no permissions), ``dir<TAB>MODE<TAB>-<TAB>DEST`` for a root directory, or
``link<TAB>-<TAB>LINK_TARGET<TAB>DEST`` for a root symlink. Everything on root is owned by 0:0.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

FAT_TYPES = {"1", "4", "6", "b", "c", "e", "ebd0a0a2-b9e5-4433-87c0-68b6b72699c7",
             "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"}
LINUX_TYPES = {"83", "0fc63daf-8483-4772-8e79-3d69d8477de4", "b921b045-1df0-41c3-af44-4c6f280d3fae",
               "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"}
# debugfs exits 0 whatever happens: its stderr is read instead, and these lines are harmless
BENIGN = (re.compile(r"^debugfs \d"), re.compile(r"directory already exists"),
          re.compile(r"^rm: File not found by ext2_lookup"))


class InjectError(Exception):
    """One line for the technician: what failed, where."""


@dataclass(frozen=True)
class Entry:
    """One manifest line."""

    fs: str
    mode: int | None
    source: str
    dest: str


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
    """Run a tool, capturing its output; a missing tool is an InjectError naming it."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    except FileNotFoundError as e:
        raise InjectError(f"{cmd[0]} is not installed") from e


def layout(target: str) -> dict[str, int]:
    """Byte offsets and sizes of the boot (first FAT) and root (first Linux) partitions."""
    r = run(["sfdisk", "--json", target])
    if r.returncode != 0:
        raise InjectError(f"no partition table on the image ({r.stderr.strip() or 'sfdisk failed'})")
    try:
        table = json.loads(r.stdout)["partitiontable"]
        sector = int(table.get("sectorsize", 512))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InjectError("cannot read the image's partition table (sfdisk --json)") from None
    boot, linux = None, []
    for n, p in enumerate(table.get("partitions", []), 1):
        kind = str(p.get("type", "")).lower()
        if boot is None and kind in FAT_TYPES:
            boot = p
        elif kind in LINUX_TYPES:
            linux.append((n, p))
    if boot is None or not linux:
        raise InjectError("the image has no FAT boot partition and Linux root partition "
                          "(is it a Raspberry Pi OS image?)")
    size = os.path.getsize(target) if os.path.isfile(target) else None
    last = max(int(p["start"]) + int(p["size"]) for p in table.get("partitions", [])) * sector
    if size is not None and last > size:
        raise InjectError(f"the image is cut short: its partitions end at byte {last}, the image has "
                          f"{size} (an incomplete download or copy?)")
    with open(target, "rb") as f:
        for _n, root in linux:                 # the root: the first Linux partition that is ext
            f.seek(root["start"] * sector + 1024 + 56)
            if f.read(2) == b"\x53\xef":
                break
        else:
            raise InjectError("the image has no ext2/3/4 root partition (Linux partition(s) "
                              f"{', '.join(str(n) for n, _ in linux)}: none is ext2/3/4)")
    return {"boot": boot["start"] * sector, "boot_size": boot["size"] * sector,
            "root": root["start"] * sector, "root_size": root["size"] * sector}


def _root(target: str, offsets: dict[str, int]) -> str:
    return f"{target}?offset={offsets['root']}"


def _boot(target: str, offsets: dict[str, int]) -> str:
    return f"{target}@@{offsets['boot']}"


def _mtools_env() -> dict[str, str]:
    return {**os.environ, "MTOOLS_SKIP_CHECK": "1", "MTOOLS_NO_VFAT": "0"}


def root_read(target: str, offsets: dict[str, int], path: str) -> bytes | None:
    """A file's content from the root partition, or None when it is not there. Read-only
    lookups open the file system with ``debugfs -c`` (no allocation bitmaps), which the
    partial copy of an .xz image can answer as well as the whole image."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "f"
        run(["debugfs", "-c", "-R", f"dump {path} {out}", _root(target, offsets)])
        stat = run(["debugfs", "-c", "-R", f"stat {path}", _root(target, offsets)]).stdout
        if "Type: regular" not in stat or not out.exists():
            return None
        return out.read_bytes()


def root_exists(target: str, offsets: dict[str, int], path: str) -> bool:
    """True when the root partition has something at path."""
    return "Inode:" in run(["debugfs", "-c", "-R", f"stat {path}", _root(target, offsets)]).stdout


def root_dirs(target: str, offsets: dict[str, int], paths: list[str]) -> set[str]:
    """Which of ``paths`` are directories on the root partition already (one debugfs run)."""
    if not paths:
        return set()
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs", delete=False) as f:
        f.write("".join(f"stat {p}\n" for p in paths))
    try:
        out = run(["debugfs", "-c", "-f", f.name, _root(target, offsets)]).stdout
    finally:
        os.unlink(f.name)
    found, current = set(), None
    for line in out.splitlines():
        if line.startswith("debugfs: stat "):
            current = line.removeprefix("debugfs: stat ").strip()
        elif current and re.match(r"Inode: \d+\s+Type: directory", line):
            found.add(current)
    return found


def boot_list(target: str, offsets: dict[str, int]) -> set[str]:
    """Lower-case names in the boot partition's top directory."""
    r = run(["mdir", "-b", "-i", _boot(target, offsets), "::"], env=_mtools_env())
    if r.returncode != 0:
        raise InjectError(f"cannot read the boot partition: {r.stderr.strip()}")
    return {line.strip().removeprefix("::/").lower() for line in r.stdout.splitlines() if line.strip()}


def boot_read(target: str, offsets: dict[str, int], name: str) -> bytes | None:
    """A file from the boot partition's top directory, or None."""
    r = subprocess.run(["mtype", "-i", _boot(target, offsets), f"::{name}"], capture_output=True,
                       env=_mtools_env())
    return r.stdout if r.returncode == 0 else None


def detect(target: str, offsets: dict[str, int]) -> dict[str, str]:
    """cloud-init if the image uses it, else the Imager's firstrun.sh; and where the FAT is mounted."""
    names = boot_list(target, offsets)
    fstab = (root_read(target, offsets, "/etc/fstab") or b"").decode("utf-8", "replace")
    boot_dir = "/boot"
    for line in fstab.splitlines():
        f = line.split()
        if len(f) >= 3 and not f[0].startswith("#") and f[2] == "vfat" and f[1].startswith("/boot"):
            boot_dir = f[1]
    if names & {"user-data", "meta-data"}:
        return {"flavour": "cloud-init", "boot_dir": boot_dir,
                "why": "the boot partition has " + " and ".join(sorted(names & {"user-data", "meta-data"}))}
    for p in ("/usr/bin/cloud-init", "/etc/cloud/cloud.cfg"):
        if root_exists(target, offsets, p):
            return {"flavour": "cloud-init", "boot_dir": boot_dir, "why": f"the root has {p}"}
    return {"flavour": "firstrun", "boot_dir": boot_dir,
            "why": f"no cloud-init on the image; its /etc/fstab mounts the boot partition at {boot_dir}"}


def installed(target: str, offsets: dict[str, int]) -> str:
    """The version of the agent an image already holds (``--agent-in-image``): where
    ``/var/lib/polelink/current`` points (``releases/VERSION``), whose ``venv/bin/agent``
    must be there. InjectError saying what is missing otherwise."""
    base = "/var/lib/polelink"
    out = run(["debugfs", "-c", "-R", f"stat {base}/current", _root(target, offsets)]).stdout
    link = re.search(r'Fast link dest: "(.*)"', out)
    if link is None:
        raise InjectError(f"--agent-in-image: the image holds no agent ({base}/current is not a "
                          "link to a release): give --wheelhouse DIR instead")
    dest = link.group(1)
    version = dest.rstrip("/").rsplit("/", 1)[-1]
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}", version) or \
            dest.rstrip("/") not in (f"releases/{version}", f"{base}/releases/{version}"):
        raise InjectError(f"--agent-in-image: {base}/current points at {dest!r}, not at a release "
                          f"({base}/releases/VERSION)")
    agent = f"{base}/releases/{version}/venv/bin/agent"
    if not root_exists(target, offsets, agent):
        raise InjectError(f"--agent-in-image: the image's release {version} has no {agent}: give "
                          "--wheelhouse DIR instead")
    return version


ELF_MACHINES = {3: "i386", 40: "armhf (32-bit ARM)", 62: "x86_64", 183: "aarch64"}


def pi_target() -> tuple[str, str]:
    """The Python version and CPU the wheelhouse is for (deploy/pi/target.py)."""
    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.insert(0, root)
    from deploy.pi.target import ARCH, PYTHON_VERSION
    return PYTHON_VERSION, ARCH


def python_of(target: str, offsets: dict[str, int]) -> str:
    """Checks that the image's ``/usr/bin/python3`` is the Python the wheels are for (CPython
    3.11 on aarch64: Raspberry Pi OS Bookworm, 64-bit) and returns it as ``3.11 aarch64``;
    InjectError naming what the image has otherwise (a 32-bit image, a Trixie one)."""
    want_version, want_arch = pi_target()
    out = run(["debugfs", "-c", "-R", "stat /usr/bin/python3", _root(target, offsets)]).stdout
    link = re.search(r'Fast link dest: "(.*)"', out)
    if "Inode:" not in out:
        raise InjectError("the image has no /usr/bin/python3, which the agent runs on: not a "
                          "Raspberry Pi OS image?")
    name = link.group(1).rsplit("/", 1)[-1] if link else "python3"
    version = name.removeprefix("python") if re.fullmatch(r"python3\.\d+", name) else None
    if version is None:   # not a link to python3.N: the stdlib folder tells
        version = want_version if root_exists(target, offsets, f"/usr/lib/python{want_version}/os.py") \
            else "not 3.11"
    if version != want_version:
        raise InjectError(f"the image's Python is {version} (/usr/bin/python3 -> {name}); the "
                          f"wheelhouse is for Python {want_version} (Raspberry Pi OS Bookworm): "
                          "use a Bookworm image, or a wheelhouse for its Python")
    binary = root_read(target, offsets, f"/usr/bin/{name}") or b""
    if binary[:4] != b"\x7fELF" or len(binary) < 20:
        raise InjectError(f"the image's /usr/bin/{name} is not a program (ELF)")
    machine = ELF_MACHINES.get(int.from_bytes(binary[18:20], "little"), "another CPU")
    if machine != want_arch:
        raise InjectError(f"the image is for {machine} (its /usr/bin/{name}); the wheelhouse is "
                          f"for {want_arch}: use the 64-bit Raspberry Pi OS (arm64) image")
    return f"{version} {machine}"


def read_manifest(path: str) -> list[Entry]:
    """The manifest's entries (see the module docstring)."""
    entries = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        f = line.split("\t")
        if len(f) != 4 or f[0] not in ("root", "boot", "dir", "link"):
            raise InjectError(f"{path}:{n}: bad manifest line {line!r}")
        entries.append(Entry(f[0], None if f[1] == "-" else int(f[1], 8), f[2], f[3]))
    return entries


def _parents(dest: str) -> list[str]:
    parts = dest.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def root_free(target: str, offsets: dict[str, int]) -> int:
    """Free bytes on the root partition: its superblock's free block count, read with
    ``dumpe2fs -h``, which reads the superblock and nothing else. (``debugfs stats`` loads
    every group's block bitmap first: on the partial copy of an .xz image those of the
    groups past the copied start are zeros, and it fails on a checksum.)"""
    r = run(["dumpe2fs", "-h", _root(target, offsets)])
    free = re.search(r"^Free blocks:\s+(\d+)", r.stdout, re.M)
    size = re.search(r"^Block size:\s+(\d+)", r.stdout, re.M)
    if not free or not size:
        why = (r.stderr.strip().splitlines() or ["no free block count"])[-1]
        raise InjectError(f"cannot read the root partition's superblock (dumpe2fs -h: {why})")
    return int(free.group(1)) * int(size.group(1))


def check_space(target: str, offsets: dict[str, int], entries: list[Entry]) -> None:
    """Refuses when the root partition has not room for the files, with 5 % and 1 MB to spare."""
    need = sum(os.path.getsize(e.source) for e in entries if e.fs == "root")
    free = root_free(target, offsets)
    want = need * 1.05 + 1e6
    if want > free:
        raise InjectError(f"the image's root partition has {free / 1e6:.1f} MB free, the agent and "
                          f"the pole's files need {need / 1e6:.1f} MB, {want / 1e6:.1f} MB with the "
                          "margin (5 % and 1 MB): use a smaller wheelhouse or an image with more room")


def inspect(target: str, offsets: dict[str, int], cmdline_out: str, boot_only: bool) -> dict:
    """What flash.sh checks in the image before writing it (see the module docstring)."""
    names = boot_list(target, offsets)
    cmdline = boot_read(target, offsets, "cmdline.txt") if "cmdline.txt" in names else None
    if cmdline is not None:
        try:
            cmdline.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InjectError(f"the image's cmdline.txt is not UTF-8 text (byte {e.start})") from None
        Path(cmdline_out).write_bytes(cmdline)
    if boot_only and not names & {"user-data", "meta-data"}:
        found = {"flavour": "", "boot_dir": "", "why": "decided after writing (the root of an .xz)"}
    else:
        found = detect(target, offsets)
    return {**found, "cmdline": cmdline is not None, "root_free": root_free(target, offsets)}


def e2fsck(target: str, offsets: dict[str, int]) -> None:
    """``e2fsck -fn`` on the root partition: a clean file system after the injection, or raises."""
    r = run(["e2fsck", "-fn", _root(target, offsets)])
    if r.returncode != 0:
        lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
        raise InjectError(f"e2fsck -fn finds the root file system damaged (exit {r.returncode}): "
                          f"{lines[1] if len(lines) > 1 else (lines or ['?'])[0]}")


def write(target: str, offsets: dict[str, int], entries: list[Entry]) -> None:
    """Copy every entry in: one debugfs session for root, mcopy for boot.

    Refuses first when the root partition has not room for the files (``check_space``).
    """
    check_space(target, offsets, entries)
    cmds: list[str] = []
    wanted = [d for e in entries if e.fs != "boot"
              for d in _parents(e.dest) + ([e.dest] if e.fs == "dir" else [])]
    # only the folders that are not there yet: debugfs's mkdir of one that exists can leave
    # an inode allocated and unconnected (e2fsck: "Unconnected directory inode") behind
    made = root_dirs(target, offsets, list(dict.fromkeys(wanted)))
    for e in entries:
        if e.fs == "boot":
            continue
        for d in _parents(e.dest) + ([e.dest] if e.fs == "dir" else []):
            if d not in made:
                cmds.append(f"mkdir {d}")
                made.add(d)
        if e.fs == "dir":
            cmds += [f"sif {e.dest} mode 0{0o40000 | (e.mode or 0o755):o}", f"sif {e.dest} uid 0",
                     f"sif {e.dest} gid 0"]
        elif e.fs == "link":
            cmds += [f"rm {e.dest}", f"symlink {e.dest} {e.source}"]
        else:
            cmds += [f"rm {e.dest}", f"write {e.source} {e.dest}",
                     f"sif {e.dest} mode 0{0o100000 | (e.mode or 0o644):o}",
                     f"sif {e.dest} uid 0", f"sif {e.dest} gid 0"]
    for e in entries:
        if e.fs != "boot" and any(ch.isspace() for ch in e.source + e.dest):
            raise InjectError(f"a path with white space cannot go through debugfs: {e.dest!r}")
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs", delete=False) as f:
        f.write("\n".join(cmds) + "\n")
    try:
        r = run(["debugfs", "-w", "-f", f.name, _root(target, offsets)])
    finally:
        os.unlink(f.name)
    bad = [ln for ln in r.stderr.splitlines() if ln.strip() and not any(b.search(ln) for b in BENIGN)]
    if r.returncode != 0 or bad:
        raise InjectError(f"writing the root partition failed: {(bad or [r.stderr.strip()])[0]}")
    for e in entries:
        if e.fs == "boot":
            r = run(["mcopy", "-o", "-i", _boot(target, offsets), e.source, f"::{e.dest.lstrip('/')}"],
                    env=_mtools_env())
            if r.returncode != 0:
                raise InjectError(f"writing {e.dest} to the boot partition failed: {r.stderr.strip()}")


def _root_stat(target: str, offsets: dict[str, int], path: str) -> dict[str, str]:
    out = run(["debugfs", "-R", f"stat {path}", _root(target, offsets)]).stdout
    facts = dict(re.findall(r"(Type|Mode|User|Group):\s+(\S+)", out))
    link = re.search(r'Fast link dest: "(.*)"', out)
    if link:
        facts["link"] = link.group(1)
    return facts


def verify(target: str, offsets: dict[str, int], entries: list[Entry]) -> int:
    """Read every entry back and compare; returns how many were checked, raises on a difference."""
    for e in entries:
        if e.fs == "boot":
            got = boot_read(target, offsets, e.dest.lstrip("/"))
            if got != Path(e.source).read_bytes():
                raise InjectError(f"read-back of boot:{e.dest} differs from what was written")
            continue
        st = _root_stat(target, offsets, e.dest)
        if e.fs == "link":
            if st.get("Type") != "symlink" or st.get("link") != e.source:
                raise InjectError(f"read-back of {e.dest}: not a symlink to {e.source}")
            continue
        want_type = "directory" if e.fs == "dir" else "regular"
        if st.get("Type") != want_type or int(st.get("Mode", "-1"), 8) != (e.mode or 0) or \
                st.get("User") != "0" or st.get("Group") != "0":
            raise InjectError(f"read-back of {e.dest}: {st} is not a {want_type} of mode "
                              f"{e.mode:04o} owned by 0:0")
        if e.fs == "root":
            got = root_read(target, offsets, e.dest)
            want = Path(e.source).read_bytes()
            if got is None or hashlib.sha256(got).digest() != hashlib.sha256(want).digest():
                raise InjectError(f"read-back of {e.dest} differs from {e.source}")
    e2fsck(target, offsets)
    return len(entries)


def main(argv: list[str] | None = None) -> int:
    """Command line; see the module docstring. Errors are one line on stderr: exit 1 for an image
    that is not usable, 3 for a failed write or read-back."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] not in ("layout", "detect", "write", "verify", "inspect", "space",
                                        "installed", "python"):
        print(__doc__, file=sys.stderr)
        return 2
    what, target = args[0], args[1]
    try:
        offsets = layout(target)
    except InjectError as e:
        print(f"flash.sh: {e}", file=sys.stderr)
        return 1
    try:
        if what == "layout":
            print(json.dumps(offsets))
        elif what == "detect":
            print(json.dumps(detect(target, offsets)))
        elif what == "installed":
            print(installed(target, offsets))
        elif what == "python":
            print(python_of(target, offsets))
        elif what == "inspect":
            print(json.dumps({**offsets, **inspect(target, offsets, args[2], "--boot-only" in args[3:])}))
        elif what == "space":
            check_space(target, offsets, read_manifest(args[2]))
        elif what == "write":
            write(target, offsets, read_manifest(args[2]))
        else:
            print(verify(target, offsets, read_manifest(args[2])))
    except (InjectError, OSError) as e:
        print(f"flash.sh: {e}", file=sys.stderr)
        before = what in ("installed", "python") and "--before" in args
        return 1 if what in ("inspect", "space") or before else 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
