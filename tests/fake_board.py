"""A MicroPython board on a pty: the raw REPL protocol in front of the real interpreter.

mpremote talks to the pty's slave side as it would to /dev/ttyUSB0. This side speaks the raw
REPL protocol (Ctrl-A raw mode, Ctrl-D run or soft reset, Ctrl-B back, Ctrl-E A Ctrl-A raw
paste with flow control) and runs each piece of code in ``../shared/bin/micropython`` (the
real unix port: its ``os``, ``hashlib``, ``open``), whose working directory is the "board's"
filesystem. The code runs in one namespace until a soft reset, as on a board. Not exercised:
USB, baud rates, a board's flash filesystem, its firmware.
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import threading
import tty
from pathlib import Path

# runs inside micropython: read "LEN\n" + code, exec it, answer stdout \x04 error \x04
SERVER = r"""
import sys
g = {'__name__': '__main__'}
inp = sys.stdin.buffer
while True:
    n = inp.readline()
    if not n:
        break
    code = inp.read(int(n))
    try:
        exec(code, g)
    except BaseException as e:
        sys.stdout.write('\x04')
        sys.print_exception(e, sys.stdout)
        sys.stdout.write('\x04')
    else:
        sys.stdout.write('\x04\x04')
"""
BANNER = b"raw REPL; CTRL-B to exit\r\n>"
WINDOW = 256


class FakeBoard:
    """A pty whose far side is MicroPython; ``port`` is the path to give mpremote."""

    def __init__(self, micropython: Path, root: Path) -> None:
        self.micropython = micropython
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self.proc: subprocess.Popen[bytes] | None = None
        self.raw = False
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the interpreter and the pty."""
        self._stop = True
        self._kill()
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the interpreter --------------------------------------------------------------------
    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def _run(self, code: bytes) -> bytes:
        if self.proc is None:
            self.proc = subprocess.Popen(
                [str(self.micropython), "-c", SERVER], cwd=self.root,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={"PATH": os.environ.get("PATH", "")},
            )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"%d\n" % len(code) + code)
        self.proc.stdin.flush()
        out = bytearray()
        ends = 0
        while ends < 2:
            b = self.proc.stdout.read(1)
            if not b:
                return bytes(out) + b"\x04interpreter died\x04"
            out += b
            if b == b"\x04":
                ends += 1
        return bytes(out).replace(b"\n", b"\r\n")

    # -- the protocol -----------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        os.write(self.master, data)

    def _serve(self) -> None:
        buf = bytearray()
        paste: bytearray | None = None
        received = 0
        while not self._stop:
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                return
            if not chunk:
                return
            for c in chunk:
                ch = bytes([c])
                if paste is not None:  # raw paste: code until Ctrl-D, flow control by windows
                    if ch == b"\x04":
                        self._send(b"\x04")
                        self._send(self._run(bytes(paste)) + b">")
                        paste = None
                        continue
                    paste += ch
                    received += 1
                    if received % WINDOW == 0:
                        self._send(b"\x01")
                    continue
                if self.raw and ch == b"\x01" and bytes(buf) == b"\x05A":
                    buf.clear()
                    paste = bytearray()
                    received = 0
                    self._send(b"R\x01" + struct.pack("<H", WINDOW))
                elif ch == b"\x01":
                    self.raw = True
                    buf.clear()
                    self._send(b"\r\n" + BANNER)
                elif ch == b"\x02":
                    self.raw = False
                    buf.clear()
                    self._send(b"\r\nMicroPython (fake board) on unix port\r\n>>> ")
                elif ch == b"\x03":
                    buf.clear()
                    if not self.raw:
                        self._send(b"\r\n>>> ")
                elif not self.raw:
                    continue  # the friendly REPL: nothing mpremote needs
                elif ch == b"\x04":
                    if not buf:  # soft reset
                        self._kill()
                        self._send(b"OK\r\nMPY: soft reboot\r\n" + BANNER)
                    else:
                        code = bytes(buf)
                        buf.clear()
                        self._send(b"OK" + self._run(code) + b">")
                elif ch == b"\x05":
                    buf.clear()
                    buf += ch
                else:
                    buf += ch


def micropython_binary(repo: Path) -> Path | None:
    """../shared/bin/micropython beside the repository, or None when absent."""
    path = repo.parent / "shared" / "bin" / "micropython"
    return path if path.is_file() and os.access(path, os.X_OK) else None

