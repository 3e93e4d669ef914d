"""Write an OS image (raw or .xz, streamed) to a disk or file and read it back: flash.sh's copier.

``imagecopy.py size IMAGE``            the image's uncompressed size in bytes
``imagecopy.py write IMAGE TARGET KIND [NAME]``
                                       writes it, with progress on stderr; prints the source's sha256.
                                       KIND ``device``: TARGET must exist and be a block device (a
                                       regular file in flash.sh's TEST MODE); ``file``: TARGET must be
                                       an existing regular file (flash.sh's temporary output). Never
                                       creates TARGET. NAME: what the messages call it
``imagecopy.py prefix IMAGE OUT``      the image's partition table, boot partition and the start of
                                       its root partition, uncompressed into a sparse OUT of the
                                       image's size (to inspect an .xz before writing anything)
``imagecopy.py hash TARGET SIZE``      sha256 of TARGET's first SIZE bytes read back (progress on stderr)
``imagecopy.py flip TARGET OFFSET``    inverts one byte (flash.sh's test-only corruption hook)

The target's page cache is dropped after writing so that the read-back reads the medium.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import lzma
import os
import stat
import subprocess
import sys
import time
from typing import BinaryIO

CHUNK = 4 * 1024 * 1024


def is_xz(path: str) -> bool:
    """True when the file starts with the xz magic bytes (whatever its name says)."""
    with open(path, "rb") as f:
        return f.read(6) == b"\xfd7zXZ\x00"


def image_size(path: str) -> int:
    """Uncompressed size of a raw or .xz image, without decompressing it."""
    if not is_xz(path):
        return os.path.getsize(path)
    try:  # the xz index at the end records the size: `xz --list` reads it in no time
        out = subprocess.run(["xz", "--robot", "--list", path], capture_output=True, text=True,
                             check=True).stdout
        return next(int(line.split("\t")[4]) for line in out.splitlines() if line.startswith("totals"))
    except (OSError, subprocess.CalledProcessError, StopIteration, IndexError, ValueError):
        with lzma.open(path) as f:  # no xz(1): decompress once to count
            return f.seek(0, os.SEEK_END)


class Progress:
    """One updating line on stderr: what, percentage, MB done, rate, time left."""

    def __init__(self, what: str, total: int) -> None:
        self.what, self.total = what, max(total, 1)
        self.start = self.last = time.monotonic()
        self.tty = sys.stderr.isatty()

    def update(self, done: int, final: bool = False) -> None:
        """Report ``done`` bytes; at most twice a second (every 10 s when stderr is a log)."""
        now = time.monotonic()
        if not final and now - self.last < (0.5 if self.tty else 10.0):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-6)
        left = (self.total - done) / rate if rate > 0 else 0
        line = (f"{self.what}: {100 * done / self.total:5.1f}%  {done / 1e6:,.0f} of "
                f"{self.total / 1e6:,.0f} MB  {rate / 1e6:.1f} MB/s  {left:.0f} s left")
        if final:
            line = f"{self.what}: {done / 1e6:,.0f} MB in {now - self.start:.1f} s ({rate / 1e6:.1f} MB/s)"
        end = "\n" if final or not self.tty else ""
        sys.stderr.write(("\r\x1b[K" if self.tty else "") + line + end)
        sys.stderr.flush()


def _open_image(path: str) -> BinaryIO:
    return lzma.open(path) if is_xz(path) else open(path, "rb")


def _drop_cache(fd: int) -> None:
    os.fsync(fd)
    if hasattr(os, "posix_fadvise"):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


class Refused(Exception):
    """The target is not what flash.sh checked: nothing was written."""


def open_target(target: str, kind: str) -> int:
    """Open target for writing without ever creating it, and check what it is, right before the
    write: a card pulled out since the checks must not become a file at its path."""
    try:
        fd = os.open(target, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
                     * (kind == "file"))
    except OSError as e:
        raise Refused(f"{target}: {e.strerror}: nothing written") from None
    mode = os.fstat(fd).st_mode
    test_mode = bool(os.environ.get("POLELINK_FLASH_LSBLK_JSON"))
    ok = stat.S_ISBLK(mode) or (test_mode and stat.S_ISREG(mode)) if kind == "device" else stat.S_ISREG(mode)
    if not ok:
        os.close(fd)
        raise Refused(f"{target} is no longer a {'block device' if kind == 'device' else 'regular file'}"
                      ": nothing written")
    return fd


def write(image: str, target: str, kind: str = "file") -> str:
    """Copy the image onto target (not truncated: a disk stays a disk); returns the source sha256."""
    total = image_size(image)
    digest = hashlib.sha256()
    fd = open_target(target, kind)
    progress = Progress("writing", total)
    done = 0
    try:
        with _open_image(image) as src:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
                done += len(chunk)
                progress.update(done)
        sys.stderr.write("syncing...\n" if sys.stderr.isatty() else "")
        _drop_cache(fd)
    finally:
        os.close(fd)
    progress.update(done, final=True)
    return digest.hexdigest()


def read_hash(target: str, size: int) -> str:
    """sha256 of the first ``size`` bytes of target, read back from the medium."""
    digest = hashlib.sha256()
    progress = Progress("verifying", size)
    fd = os.open(target, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            with contextlib.suppress(OSError):  # not a file or disk (a pipe): no cache to drop
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        done = 0
        while done < size:
            chunk = os.read(fd, min(CHUNK, size - done))
            if not chunk:
                break
            digest.update(chunk)
            done += len(chunk)
            progress.update(done)
    finally:
        os.close(fd)
    progress.update(done, final=True)
    if done < size:
        raise OSError(f"{target} ended after {done} of {size} bytes")
    return digest.hexdigest()


def prefix(image: str, out: str) -> None:
    """Uncompress what inspecting the image needs (partition table, boot partition, the root's
    first 8 MiB) into ``out``, a sparse file of the image's size; the rest stays holes."""
    total = image_size(image)
    need = 1024 * 1024  # the partition tables first, then as far as they say
    done = 0
    with _open_image(image) as src, open(out, "wb") as dst:
        dst.truncate(total)
        while done < need:
            chunk = src.read(min(CHUNK, need - done))
            if not chunk:
                break
            if chunk.count(0) != len(chunk):
                dst.seek(done)
                dst.write(chunk)
            done += len(chunk)
            if done >= 1024 * 1024 and need == 1024 * 1024:
                dst.flush()
                need = max(need, min(total, _needed(out)))


def _needed(path: str) -> int:
    """Where the boot partition (the first FAT one, whole) or the first 8 MiB of a Linux one
    (the root's superblock and start: whichever it is, wherever it is) end, the furthest."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:                      # imported, not run: inject.py is beside it
        sys.path.insert(0, here)
    from inject import FAT_TYPES, LINUX_TYPES  # one list of both


    r = subprocess.run(["sfdisk", "--json", path], capture_output=True, text=True)
    if r.returncode != 0:
        return 0
    try:
        table = json.loads(r.stdout)["partitiontable"]
        sector = int(table.get("sectorsize", 512))
        ends, fat = [], False
        for p in table.get("partitions", []):
            kind, start, size = str(p.get("type", "")).lower(), int(p["start"]), int(p["size"])
            if kind in FAT_TYPES and not fat:
                ends.append((start + size) * sector)
                fat = True
            elif kind in LINUX_TYPES:
                ends.append((start + min(size, 16384)) * sector)
    except (ValueError, KeyError, TypeError, AttributeError):
        return 0
    return max(ends, default=0)


def flip(target: str, offset: int) -> None:
    """Invert the byte at offset (test-only: simulates a card that returns what was not written)."""
    with open(target, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0xFF]))
        f.flush()
        os.fsync(f.fileno())


def main(argv: list[str] | None = None) -> int:
    """Command line; see the module docstring. Errors are one line on stderr, exit 3."""
    args = sys.argv[1:] if argv is None else argv
    name = args[4] if len(args) == 5 and args[0] == "write" else \
        args[2] if len(args) >= 3 and args[0] == "write" else args[1] if len(args) >= 2 else ""
    try:
        if len(args) == 2 and args[0] == "size":
            print(image_size(args[1]))
        elif len(args) in (4, 5) and args[0] == "write" and args[3] in ("device", "file"):
            try:
                print(write(args[1], args[2], args[3]))
            except Refused as e:
                _line(f"flash.sh: refused: {str(e).replace(args[2], name)}")
                return 1
        elif len(args) == 3 and args[0] == "prefix":
            prefix(args[1], args[2])
        elif len(args) == 3 and args[0] == "hash":
            print(read_hash(args[1], int(args[2])))
        elif len(args) == 3 and args[0] == "flip":
            flip(args[1], int(args[2]))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except KeyboardInterrupt:  # flash.sh says it, in one line
        _line("")
        return 130
    except (OSError, lzma.LZMAError, EOFError) as e:
        what = {"write": f"writing {name}", "hash": f"reading {name} back", "size": "reading the image",
                "prefix": "reading the image"}.get(args[0], args[0])
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
        if isinstance(e, (lzma.LZMAError, EOFError)):
            why = f"the .xz image is damaged ({why})"
        _line(f"flash.sh: {what} failed: {why}")
        return 3
    return 0


def _line(text: str) -> None:
    """One line on stderr, the progress line (on a terminal) wiped first; nothing for ''."""
    wipe = "\r\x1b[K" if sys.stderr.isatty() else ""
    sys.stderr.write(wipe + (text + "\n" if text else ""))
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
