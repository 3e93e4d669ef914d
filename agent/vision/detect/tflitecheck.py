"""A bounds check of a TFLite model file before the runtime opens it.

The TFLite runtime trusts the flatbuffer it is given: a file cut short (a copy interrupted,
a download stopped) makes it read past the end of the file and crash the process, not
always in the same way (``tests/test_detect.py``: a model cut in half crashed a child
process in some runs only). This walks the parts of the model the runtime reads first (the
schema's ``Model``: operator codes, subgraphs with their tensors, inputs, outputs and
operators, and the weight buffers), checking that every table, vector and string lies
inside the file and that every index points at something that exists. It reads a few
kilobytes of structure and never the weights themselves (a buffer is checked by its bounds).

Field numbers are those of TensorFlow Lite's ``schema.fbs`` (version 3): they are part of
the file format and do not change.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

#: The most tensors, operators or buffers a model may declare (a pole's detector has
#: a few hundred; a garbage count is refused before anything is walked).
MAX_ITEMS = 1_000_000
#: The most tables and indices the whole check visits. A crafted file can point many
#: entries at the same tables (a million subgraphs sharing one of a million tensors: 10^12
#: visits, days of CPU in the camera's start); real detectors need a few thousand.
MAX_VISITS = 200_000


class BadFlatbuffer(ValueError):
    """The file is not a whole TFLite model; the message says where it breaks."""


class _Reader:
    def __init__(self, buf: bytes | mmap.mmap) -> None:
        self.b = buf
        self.n = len(buf)
        self.visits = 0

    def _visit(self, k: int = 1) -> None:
        self.visits += k
        if self.visits > MAX_VISITS:
            raise BadFlatbuffer(f"more than {MAX_VISITS} tables and indices to check: no "
                                f"detector is this large (a crafted file?)")

    def _need(self, at: int, size: int, what: str) -> None:
        if at < 0 or size < 0 or at + size > self.n:
            raise BadFlatbuffer(f"{what} at byte {at} ({size} bytes) lies outside the "
                                f"{self.n}-byte file: truncated or not a TFLite model")

    def u32(self, at: int, what: str) -> int:
        self._need(at, 4, what)
        return struct.unpack_from("<I", self.b, at)[0]

    def table(self, at: int, what: str) -> tuple[int, int, int]:
        """``(table, vtable, vtable size)`` of the table at ``at``."""
        self._visit()
        self._need(at, 4, what)
        vt = at - struct.unpack_from("<i", self.b, at)[0]
        self._need(vt, 4, f"{what}'s vtable")
        vsize, tsize = struct.unpack_from("<HH", self.b, vt)
        self._need(vt, vsize, f"{what}'s vtable")
        self._need(at, tsize, what)
        return at, vt, vsize

    def field(self, t: tuple[int, int, int], i: int) -> int | None:
        """The absolute position of field ``i`` of table ``t``, None when absent."""
        at, vt, vsize = t
        if 4 + 2 * i + 2 > vsize:
            return None
        off = struct.unpack_from("<H", self.b, vt + 4 + 2 * i)[0]
        return at + off if off else None

    def ref(self, t: tuple[int, int, int], i: int, what: str) -> int | None:
        """The target of offset field ``i`` (a table, vector or string), None when absent."""
        pos = self.field(t, i)
        if pos is None:
            return None
        return pos + self.u32(pos, what)

    def vector(self, t: tuple[int, int, int], i: int, elem: int, what: str
               ) -> tuple[int, int]:
        """``(first element, length)`` of vector field ``i``; ``(0, 0)`` when absent."""
        at = self.ref(t, i, what)
        if at is None:
            return 0, 0
        n = self.u32(at, what)
        if n > MAX_ITEMS and elem != 1:
            raise BadFlatbuffer(f"{what} claims {n} entries: not a TFLite model")
        self._need(at + 4, n * elem, what)
        return at + 4, n

    def tables(self, t: tuple[int, int, int], i: int, what: str
               ) -> list[tuple[int, int, int]]:
        first, n = self.vector(t, i, 4, what)
        return [self.table(first + 4 * k + self.u32(first + 4 * k, what), f"{what}[{k}]")
                for k in range(n)]

    def ints(self, t: tuple[int, int, int], i: int, what: str) -> list[int]:
        first, n = self.vector(t, i, 4, what)
        self._visit(n)
        return list(struct.unpack_from(f"<{n}i", self.b, first)) if n else []

    def scalar(self, t: tuple[int, int, int], i: int, fmt: str, default: int = 0) -> int:
        pos = self.field(t, i)
        if pos is None:
            return default
        self._need(pos, struct.calcsize(fmt), "a field")
        return struct.unpack_from("<" + fmt, self.b, pos)[0]


def check_tflite(path: Path) -> None:
    """BadFlatbuffer when ``path`` is not a whole TFLite model (see the module docstring)."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size < 8:
            raise BadFlatbuffer(f"{size} bytes: too short for a TFLite model")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            _check(_Reader(m))


def _check(r: _Reader) -> None:
    if bytes(r.b[4:8]) != b"TFL3":
        raise BadFlatbuffer("no TFLite file identifier (TFL3) at byte 4: not a TFLite model")
    model = r.table(r.u32(0, "the root offset"), "the model")
    opcodes = r.tables(model, 1, "operator_codes")
    buffers = r.tables(model, 4, "buffers")
    for k, b in enumerate(buffers):
        r.vector(b, 0, 1, f"buffers[{k}].data")
        offset, length = r.scalar(b, 1, "Q"), r.scalar(b, 2, "Q")
        if offset > 1:                  # weights outside the flatbuffer, in the same file
            r._need(offset, length, f"buffers[{k}]'s external data")
    subgraphs = r.tables(model, 2, "subgraphs")
    if not subgraphs:
        raise BadFlatbuffer("the model has no subgraph")
    for g, sg in enumerate(subgraphs):
        tensors = r.tables(sg, 0, f"subgraphs[{g}].tensors")
        for k, t in enumerate(tensors):
            r.vector(t, 0, 4, f"subgraphs[{g}].tensors[{k}].shape")
            buf = r.scalar(t, 2, "I")
            if buf >= max(1, len(buffers)):
                raise BadFlatbuffer(f"subgraphs[{g}].tensors[{k}] names buffer {buf} of "
                                    f"{len(buffers)}")
            name = r.ref(t, 3, f"subgraphs[{g}].tensors[{k}].name")
            if name is not None:
                r._need(name + 4, r.u32(name, "a tensor name"), "a tensor name")

        def indices(ids: list[int], what: str, n: int = len(tensors), g: int = g) -> None:
            bad = [x for x in ids if not -1 <= x < n]
            if bad:
                raise BadFlatbuffer(f"subgraphs[{g}].{what} names tensor {bad[0]} of {n}")
        indices(r.ints(sg, 1, f"subgraphs[{g}].inputs"), "inputs")
        indices(r.ints(sg, 2, f"subgraphs[{g}].outputs"), "outputs")
        for k, op in enumerate(r.tables(sg, 3, f"subgraphs[{g}].operators")):
            code = r.scalar(op, 0, "I")
            if code >= len(opcodes):
                raise BadFlatbuffer(f"subgraphs[{g}].operators[{k}] names operator code "
                                    f"{code} of {len(opcodes)}")
            indices(r.ints(op, 1, f"operators[{k}].inputs"), f"operators[{k}].inputs")
            indices(r.ints(op, 2, f"operators[{k}].outputs"), f"operators[{k}].outputs")
            r.vector(op, 5, 1, f"operators[{k}].custom_options")
            opts = r.ref(op, 4, f"operators[{k}].builtin_options")
            if opts is not None:                # a union member: a table
                r.table(opts, f"operators[{k}].builtin_options")
