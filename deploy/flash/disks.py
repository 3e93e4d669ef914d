"""Decide whether a block device may be flashed: flash.sh's safety check.

The facts come from ``lsblk --json --list -b -o NAME,PATH,TYPE,RM,SIZE,MODEL,SERIAL,MOUNTPOINTS,PKNAME``
and from the mount table (``/proc/mounts``). Tests point ``POLELINK_FLASH_LSBLK_JSON`` and
``POLELINK_FLASH_MOUNTS`` at recorded files instead, the only fake in flash.sh's tests: a CI machine
has no removable disk. A device the recorded lsblk lists then stands for a block device (in that
TEST MODE only: otherwise the device must be a block device).

Prints the target's facts as one JSON object on stdout (exit 0), or one line saying why the device
is refused on stderr (exit 1). Never writes anything.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass

LSBLK_COLUMNS = "NAME,PATH,TYPE,RM,SIZE,MODEL,SERIAL,MOUNTPOINTS,PKNAME"


class Refused(Exception):
    """The device must not be written; the message says why, in one line."""


@dataclass(frozen=True)
class Row:
    """One lsblk row (a disk, a partition, a loop, a device-mapper target...)."""

    name: str
    path: str
    type: str
    removable: bool
    size: int
    model: str
    serial: str
    mountpoints: tuple[str, ...]
    parent: str | None


def _flag(value: object) -> bool:
    """lsblk writes RM as true/false, or as "1"/"0" in older versions."""
    return value is True or str(value).strip() in ("1", "true")


def printable(text: str) -> str:
    """Text as it may be shown on a terminal: anything not printable (escapes...) becomes '?'."""
    return "".join(ch if ch.isprintable() else "?" for ch in text)


def _list(value: object, what: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"lsblk's {what} is not a list")
    return value


def _text(value: object, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ValueError(f"lsblk's {what} is not text")
    return str(value)


def parse_lsblk(text: str) -> list[Row]:
    """Rows of ``lsblk --json --list`` output (a nested tree is flattened too).

    Anything not shaped like lsblk's output is a ValueError (one line), never another exception.
    """
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("lsblk's output is not a JSON object")
    rows: list[Row] = []

    def walk(devices: object, parent: str | None, depth: int = 0) -> None:
        if depth > 32:
            raise ValueError("lsblk's device tree is deeper than 32 levels")
        for d in _list(devices, "blockdevices"):
            if not isinstance(d, dict):
                raise ValueError("lsblk lists a device that is not a JSON object")
            name = _text(d.get("name"), "name")
            mps = d.get("mountpoints")
            if mps is None:
                mps = [d.get("mountpoint")]
            try:
                size = int(d.get("size") or 0)
            except (TypeError, ValueError):
                raise ValueError(f"lsblk's size of {printable(name)!r} is not a number") from None
            pkname = _text(d.get("pkname"), "pkname")
            rows.append(Row(
                name=name,
                path=_text(d.get("path"), "path") or "/dev/" + name,
                type=_text(d.get("type"), "type"),
                removable=_flag(d.get("rm")),
                size=size,
                model=printable(_text(d.get("model"), "model").strip()),
                serial=printable(_text(d.get("serial"), "serial").strip()),
                mountpoints=tuple(_text(m, "mountpoint") for m in _list(mps, "mountpoints") if m),
                parent=pkname or parent,
            ))
            walk(d.get("children"), name, depth + 1)

    walk(doc.get("blockdevices"), None)
    return rows


# the kernel escapes space, tab, newline and backslash in /proc/mounts as a backslash and
# three octal digits, nothing else
# (unicode_escape would also rewrite a path's other backslashes and its non-ASCII letters)
_OCTAL = re.compile(r"\\([0-7]{3})")


def parse_mounts(text: str) -> list[tuple[str, str]]:
    """(source, mount point) pairs of a /proc/mounts-format table (octal escapes decoded)."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2:
            dec = [_OCTAL.sub(lambda m: chr(int(m.group(1), 8)), f) for f in fields[:2]]
            out.append((dec[0], dec[1]))
    return out


def descendants(rows: list[Row], disk: str) -> list[Row]:
    """The disk's row and every row below it (partitions, and what sits on them: LVM, crypt)."""
    found = {disk}
    changed = True
    while changed:
        changed = False
        for r in rows:
            if r.name not in found and r.parent in found:
                found.add(r.name)
                changed = True
    return [r for r in rows if r.name in found]


# the kinds of device that have no parent disk; anything else must be tied to one
WHOLE = ("disk", "loop", "rom")


def tie_orphans(rows: list[Row]) -> list[Row]:
    """Rows whose parent lsblk did not give get it from their name (sdb1 -> sdb, mmcblk0p1 ->
    mmcblk0, nvme0n1p2 -> nvme0n1); raises Refused for one that cannot be tied to a disk, since
    the system-disk and mount checks could not see it."""
    disks = sorted((r.name for r in rows if r.type in WHOLE and r.name), key=len, reverse=True)
    out = []
    for r in rows:
        if r.parent is None and r.type not in WHOLE:
            parent = next((d for d in disks if r.name != d and r.name.startswith(d)
                           and r.name[len(d):].removeprefix("p").isdigit()), None)
            if parent is None:
                raise Refused(f"lsblk lists {printable(r.path)} ({printable(r.type)}) without its disk: "
                              "cannot tell whether it is on the card, so nothing is written")
            r = Row(**{**r.__dict__, "parent": parent})
        out.append(r)
    return out


def human(size: int) -> str:
    """A byte count as the technician reads it on the card's label (decimal GB)."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def check(device: str, rows: list[Row], mounts: list[tuple[str, str]], is_block: bool,
          image_size: int | None = None) -> Row:
    """The disk row ``device`` names if it may be flashed; raises Refused otherwise."""
    rows = tie_orphans(rows)
    real = os.path.realpath(device)
    by_path = {r.path: r for r in rows}
    row = by_path.get(real) or by_path.get(device)
    if row is None or not is_block:
        if not is_block:
            raise Refused(f"{device} is not a block device: give the SD card's whole disk, e.g. /dev/sdb")
        raise Refused(f"{device}: lsblk does not list it; is the card reader plugged in?")
    if row.type == "part":
        parent = next((r.path for r in rows if r.name == row.parent), "its disk")
        raise Refused(f"{device} is a partition, not a whole disk: give {parent} instead")
    if row.type == "loop":
        raise Refused(f"{device} is a loop device, not a removable disk: "
                      "use --to-file to write an image file")
    if row.type != "disk":
        raise Refused(f"{device} is a {row.type} device, not a whole removable disk")
    tree = descendants(rows, row.name)
    paths = {r.path for r in tree}
    system = [r for r in tree if "/" in r.mountpoints]
    system += [r for r in tree for src, mp in mounts if mp == "/" and src in paths and r.path == src]
    if system:
        raise Refused(f"{device} holds the running system (/ is on {system[0].path}): "
                      "refusing to write to it")
    if not row.removable:
        raise Refused(f"{device} ({row.model or 'no model'}, {human(row.size)}) is not a removable disk "
                      "(lsblk RM=0): flash.sh writes only to removable media such as a USB SD card reader")
    mounted = [(r.path, mp) for r in tree for mp in r.mountpoints]
    mounted += [(src, mp) for src, mp in mounts if src in paths]
    if mounted:
        src, mp = mounted[0]
        raise Refused(f"{device} has a mounted partition ({src} on {mp}): unmount it first "
                      f"(udisksctl unmount -b {src}, or umount {mp})")
    if row.size == 0:
        raise Refused(f"{device} has no medium (size 0): is the SD card in the reader?")
    if image_size is not None and image_size > row.size:
        raise Refused(f"{device} is too small: the image needs {human(image_size)}, the card has "
                      f"{human(row.size)}")
    return row


def _facts() -> tuple[list[Row], list[tuple[str, str]]]:
    lsblk_file = os.environ.get("POLELINK_FLASH_LSBLK_JSON")
    mounts_file = os.environ.get("POLELINK_FLASH_MOUNTS")
    if lsblk_file:
        with open(lsblk_file, encoding="utf-8") as f:
            lsblk_text = f.read()
    else:
        lsblk_text = subprocess.run(["lsblk", "--json", "--list", "-b", "-o", LSBLK_COLUMNS],
                                    check=True, capture_output=True, text=True).stdout
    with open(mounts_file or "/proc/mounts", encoding="utf-8") as f:
        mounts_text = f.read()
    return parse_lsblk(lsblk_text), parse_mounts(mounts_text)


def main(argv: list[str] | None = None) -> int:
    """Command line: ``disks.py DEVICE [--image-size N]``; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("device")
    ap.add_argument("--image-size", type=int)
    args = ap.parse_args(argv)
    shown = printable(args.device)
    if not os.path.lexists(args.device):
        print(f"flash.sh: {shown}: no such device", file=sys.stderr)
        return 1
    try:
        mode = os.stat(args.device).st_mode
    except OSError as e:  # a dangling symbolic link, a loop of them
        print(f"flash.sh: {shown}: cannot reach the device it names ({e.strerror})", file=sys.stderr)
        return 1
    try:
        rows, mounts = _facts()
    except (OSError, ValueError, subprocess.CalledProcessError) as e:
        why = printable(str(e).splitlines()[0] if str(e) else type(e).__name__)
        print(f"flash.sh: cannot read the disk facts (lsblk, mount table): {why}: nothing written",
              file=sys.stderr)
        return 1
    # only the recorded facts of the tests let a plain file stand for a disk
    listed = {os.path.realpath(r.path) for r in rows}
    is_block = stat.S_ISBLK(mode) or (bool(os.environ.get("POLELINK_FLASH_LSBLK_JSON"))
                                      and stat.S_ISREG(mode) and os.path.realpath(args.device) in listed)
    try:
        row = check(args.device, rows, mounts, is_block, args.image_size)
    except Refused as e:
        print(f"flash.sh: refused: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"path": row.path, "model": row.model, "serial": row.serial,
                      "size": row.size, "size_human": human(row.size)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
