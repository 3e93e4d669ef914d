"""Run a command under seccomp rules close to the unit's, without systemd (the tests' machines
have no systemd to start a unit with): ``python tests/seccomp_exec.py ALLOW_FILE [--mdwe] -- CMD …``.

- ``SystemCallFilter=`` + ``SystemCallErrorNumber=EPERM``: only the system calls named in
  ``ALLOW_FILE`` (one a line: the unit's filter as expanded by ``systemd-analyze
  syscall-filter``); any other fails with EPERM;
- ``RestrictAddressFamilies=``: ``socket()`` only for the families of ``--families``
  (systemd answers EAFNOSUPPORT for the others, this EPERM);
- ``MemoryDenyWriteExecute=yes`` (``--mdwe``): systemd 252's rules, EPERM for ``mmap``
  writable and executable at once, ``mprotect``/``pkey_mprotect`` adding execute,
  ``shmat`` with ``SHM_EXEC``.

The rules are inherited by everything the command starts (the model processes, pip). It
uses libseccomp (``libseccomp.so.2``, installed with systemd) through ctypes.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import os
import sys

ALLOW = 0x7FFF0000
CMP_EQ, CMP_MASKED_EQ = 4, 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000


def errno_action(code: int) -> int:
    """``SCMP_ACT_ERRNO(code)``."""
    return 0x00050000 | (code & 0xFFFF)


class _Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64),
                ("b", ctypes.c_uint64)]


def library() -> ctypes.CDLL | None:
    """libseccomp, or None where it is not installed."""
    name = ctypes.util.find_library("seccomp")
    if name is None:
        return None
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(_Cmp)]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    return lib


def _rule(lib: ctypes.CDLL, ctx: int, action: int, name: str, *cmps: _Cmp) -> None:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:
        return                               # not a system call of this architecture
    arr = (_Cmp * max(1, len(cmps)))(*cmps)
    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
    if rc != 0:
        raise OSError(-rc, f"seccomp_rule_add {name}")


def _load(lib: ctypes.CDLL, ctx: int) -> None:
    rc = lib.seccomp_load(ctx)
    if rc != 0:
        raise OSError(-rc, "seccomp_load")


def main(argv: list[str] | None = None) -> int:
    """Load the rules, then exec the command."""
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("allow_file")
    p.add_argument("--families", default="AF_UNIX,AF_INET,AF_INET6")
    p.add_argument("--mdwe", action="store_true")
    a = p.parse_args(argv[:split])
    cmd = argv[split + 1:]
    lib = library()
    if lib is None or not cmd:
        print("seccomp_exec: no libseccomp, or no command", file=sys.stderr)
        return 2
    deny = errno_action(errno.EPERM)
    if a.mdwe:                               # first: the allow list forbids seccomp() itself
        ctx = lib.seccomp_init(ALLOW)
        for name in ("mmap", "mmap2"):
            _rule(lib, ctx, deny, name,
                  _Cmp(2, CMP_MASKED_EQ, PROT_WRITE | PROT_EXEC, PROT_WRITE | PROT_EXEC))
        for name in ("mprotect", "pkey_mprotect"):
            _rule(lib, ctx, deny, name, _Cmp(2, CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
        _rule(lib, ctx, deny, "shmat", _Cmp(2, CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
        _load(lib, ctx)
    with open(a.allow_file, encoding="utf-8") as f:
        allowed = set(f.read().split())
    families = [getattr(__import__("socket"), fam) for fam in a.families.split(",") if fam]
    ctx = lib.seccomp_init(deny)
    for name in sorted(allowed - {"socket"}):
        _rule(lib, ctx, ALLOW, name)
    if "socket" in allowed:
        for fam in families:
            _rule(lib, ctx, ALLOW, "socket", _Cmp(0, CMP_EQ, int(fam), 0))
    _load(lib, ctx)
    os.execvp(cmd[0], cmd)
    return 127


if __name__ == "__main__":
    sys.exit(main())
