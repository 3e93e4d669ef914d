"""The node's outbox in flash: append-only segments with a checksum per record and an
acknowledgement pointer. Never loaded whole, never rewritten.

Files (in ``state_dir``): ``ob.<n>`` segments of at most :data:`SEG_RECORDS` records each,
and ``ob.ptr`` (JSON ``{"head": n, "off": bytes, "seq": last freed seq, "epoch": e}``,
written atomically when messages are freed; ``epoch`` is the one the records' msg_ids
carry, which outlives a damaged state file). A record is one line::

    SSSSSSSSCCCCCCCCLLLL topic<TAB>payload\\n

``S`` the message's seq, ``C`` the CRC-32 of ``S``, ``L`` and ``topic<TAB>payload``,
``L`` the length of ``topic<TAB>payload`` (8, 8 and 4 hex digits). Appending writes one
record to the newest segment; freeing moves the pointer and deletes a segment once all
its records are freed. Reading takes one record at a time, its size checked before
anything is allocated.

At most ``max_records`` wait (rounded up to whole segments): appending past that drops the
oldest segment, and what it held is counted (``dropped``) and named (:meth:`take_lost`:
count and seq range) for an ``outbox_overflow`` event. A damaged record (bad header, size,
checksum or a torn write after a power cut) ends its segment for reading: the records after
it in that segment are named the same way (reason ``corrupt``). At start the newest segment
is checked record by record; a torn end is left behind and a new segment started, so new
records never follow a damaged one.
"""

import json
import os

SEG_RECORDS = 16
MAX_RECORD = 4096
HEAD = 21                  # 8 + 8 + 4 hex digits and a space


def _crc(data, crc=0):
    import binascii
    return binascii.crc32(data, crc) & 0xFFFFFFFF


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


class Outbox:
    """See the module docstring."""

    def __init__(self, path, max_records, epoch=None):
        self.path = path                          # prefix: state_dir + "ob"
        self.max_segs = max(2, (max_records + SEG_RECORDS - 1) // SEG_RECORDS + 1)
        self.max_records = max_records
        self.dropped = 0                          # since boot
        self.bytes_written = 0                    # since boot (flash wear)
        self.lost = []                            # [reason, count, first seq, last seq]
        self.head, self.off, self.freed_seq = 0, 0, 0
        self.epoch = epoch                        # of the msg_ids in the records
        try:
            with open(path + ".ptr") as f:
                p = json.loads(f.read(200))
            self.head, self.off, self.freed_seq = int(p["head"]), int(p["off"]), int(p["seq"])
            e = p.get("epoch")
            if isinstance(e, str) and len(e) == 8:
                self.epoch = e
        except Exception:                         # missing or damaged: find the oldest
            self.head, self.off = self._oldest(), 0
        oldest = self._oldest()
        if oldest < self.head:                    # never orphan what is older: send again
            self.head, self.off = oldest, 0
        if self.off and self._skip_header_seq(self.head, self.off) is False:
            self.off = 0                          # a pointer into no record: from the start
        self.damaged = {}                         # (segment, offset) → last seq named
        self.tail = self.head
        while _exists(self._seg(self.tail + 1)) and self.tail - self.head < self.max_segs * 4:
            self.tail += 1
        if not _exists(self._seg(self.head)):
            self.off = 0
        self.last_seq = self.freed_seq
        try:
            if self.off > os.stat(self._seg(self.head))[6]:
                self.off = 0
        except OSError:
            pass
        self.tail_n, ok = self._check_tail()
        if not ok:                                # torn end: new records go to a new file
            self.tail += 1
            self.tail_n = 0
        self.count = self._count()
        self.cursor = (self.head, self.off)       # next record to send
        self._fit_to_flash()
        if self.epoch and not _exists(path + ".ptr"):
            try:  # noqa: SIM105
                self._save_ptr()                  # the epoch on flash from the start
            except OSError:                       # a full flash: the node starts anyway
                pass

    def _fit_to_flash(self, margin=16384, seg_bytes=SEG_RECORDS * 512):
        """Fewer segments than ``max_records`` asks for when the file system has no room
        for them (a full flash would fail every write, unnamed): what is free now, less a
        margin for the state files, plus what the outbox holds already."""
        try:
            st = os.statvfs(self.path.rsplit("/", 1)[0] or "/" if "/" in self.path else ".")
            free = st[0] * st[4]
        except (AttributeError, OSError, IndexError):
            return
        room = (free - margin) // seg_bytes + (self.tail - self.head + 1)
        self.max_segs = max(2, min(self.max_segs, room))

    def _seg(self, n):
        return self.path + "." + str(n)

    def _oldest(self):
        """The lowest segment number on flash (the pointer file was lost)."""
        try:
            names = os.listdir((self.path.rsplit("/", 1)[0] or "/") if "/" in self.path
                               else ".")
        except OSError:
            return 0
        base = self.path.rsplit("/", 1)[-1] + "."
        nums = [int(n[len(base):]) for n in names
                if n.startswith(base) and n[len(base):].isdigit()]
        return min(nums) if nums else 0

    # -- reading ----------------------------------------------------------------------
    def _header(self, f):
        """``(seq, crc, length)`` of the record at ``f``'s position; None at the end of the
        file; ValueError when it is damaged."""
        h = f.read(HEAD)
        if not h:
            return None
        if len(h) != HEAD or h[20] != 32:
            raise ValueError("short header")
        self._hcrc = _crc(h[16:20], _crc(h[0:8]))       # the checksum covers seq and size
        h = h.decode()
        seq, crc, n = int(h[0:8], 16), int(h[8:16], 16), int(h[16:20], 16)
        if not 0 < n <= MAX_RECORD:
            raise ValueError("size")
        return seq, crc, n

    def read_at(self, seg, off, body=True):
        """``(seq, topic, payload, next offset)`` of the record at ``off`` in segment
        ``seg`` (topic and payload None without ``body``: checked, not kept); None at the
        segment's end or where it is damaged (see :meth:`skip_damaged`)."""
        try:
            with open(self._seg(seg), "rb") as f:
                f.seek(off)
                h = self._header(f)
                if h is None:
                    return None
                seq, crc, n = h
                if body:
                    data = f.read(n + 1)
                    if len(data) != n + 1 or data[n] != 10 or _crc(memoryview(data)[:n], self._hcrc) != crc:
                        raise ValueError("checksum")
                    tab = data.find(b"\t")
                    if tab < 0:
                        raise ValueError("no topic")
                    return seq, data[:tab].decode(), data[tab + 1:n], off + HEAD + n + 1
                c = self._hcrc
                left = n
                while left:
                    piece = f.read(min(256, left))
                    if not piece:
                        raise ValueError("torn")
                    c = _crc(piece, c)
                    left -= len(piece)
                if c != crc or f.read(1) != b"\n":
                    raise ValueError("checksum")
                return seq, None, None, off + HEAD + n + 1
        except OSError:
            return None
        except (ValueError, UnicodeError, IndexError):
            return False

    def _check_tail(self):
        """Records in the newest segment, and whether it ends cleanly; sets ``last_seq``."""
        off = n = 0
        seg = self.tail
        while True:
            r = self.read_at(seg, off, body=False)
            if r is None:
                return n, True
            if r is False:                    # the damaged record's seq is not reused
                self.last_seq = max(self.last_seq, self._raw_seq(seg, off))
                return n, False
            self.last_seq = max(self.last_seq, r[0])
            off = r[3]
            n += 1

    def _raw_seq(self, seg, off):
        """The seq field of a (damaged) record's header, 0 when it cannot be read."""
        try:
            with open(self._seg(seg), "rb") as f:
                f.seek(off)
                return int(f.read(8), 16)
        except Exception:
            return 0

    def _count(self):
        """Records waiting (headers only, one open per segment; the newest segment was just
        counted)."""
        total = 0
        for seg in range(self.head, self.tail + 1):
            off = self.off if seg == self.head else 0
            if seg == self.tail and not off:
                total += self.tail_n
                continue
            try:
                with open(self._seg(seg), "rb") as f:
                    while True:
                        f.seek(off)
                        h = self._header(f)
                        if h is None:
                            break
                        off += HEAD + h[2] + 1
                        total += 1
            except (OSError, ValueError, UnicodeError):
                pass
        return total

    # -- writing ----------------------------------------------------------------------
    def put(self, seq, topic, payload):
        """Append one message (durable on return); drops the oldest segment at the cap."""
        t = topic.encode() if isinstance(topic, str) else topic
        p = payload.encode() if isinstance(payload, str) else payload
        n = len(t) + 1 + len(p)
        if n > MAX_RECORD:
            raise ValueError("message of " + str(n) + " bytes (limit " + str(MAX_RECORD) + ")")
        if self.tail_n >= SEG_RECORDS:
            if self.tail + 1 - self.head + 1 > self.max_segs:
                self._drop_head("full")
            self.tail += 1
            self.tail_n = 0
        sq, ln = ("%08x" % seq).encode(), ("%04x" % n).encode()  # noqa: UP031
        crc = _crc(p, _crc(b"\t", _crc(t, _crc(ln, _crc(sq)))))
        head = sq + ("%08x" % crc).encode() + ln + b" "  # noqa: UP031
        try:
            with open(self._seg(self.tail), "ab") as f:
                f.write(head)
                f.write(t)
                f.write(b"\t")
                f.write(p)
                f.write(b"\n")
        except Exception:                         # part of a record may be on flash: the
            self.tail += 1                        # next ones go to a new segment, never
            self.tail_n = 0                       # after torn bytes
            raise
        self.tail_n += 1
        self.count += 1
        self.last_seq = max(self.last_seq, seq)
        self.bytes_written += HEAD + n + 1

    def _drop_head(self, reason):
        """Delete the oldest segment; count and name what it still held."""
        first = last = None
        n = 0
        off = self.off
        while True:
            r = self._skip_header_seq(self.head, off)
            if not r:
                break
            seq, off = r
            first = seq if first is None else first
            last = seq
            n += 1
        if r is False:                        # damaged further on: up to the next file
            nxt = self._first_seq(self.head + 1)
            first = self.freed_seq + 1 if first is None else first
            if nxt and nxt - 1 >= first:
                n, last = nxt - first, nxt - 1
        self._note_lost(reason, n, first, last)
        self.dropped += n
        self.count = max(0, self.count - n)
        self._remove(self.head)
        self.head += 1
        self.off = 0
        for k in [k for k in self.damaged if k[0] < self.head]:
            del self.damaged[k]
        if self.cursor[0] < self.head:
            self.cursor = (self.head, 0)
        if last is not None:
            self.freed_seq = max(self.freed_seq, last)
        self._save_ptr()

    def _skip_header_seq(self, seg, off):
        """``(seq, next offset)`` from the header at ``off``; None at the end, False when
        the header is damaged."""
        try:
            with open(self._seg(seg), "rb") as f:
                f.seek(off)
                h = self._header(f)
                return None if h is None else (h[0], off + HEAD + h[2] + 1)
        except OSError:
            return None
        except (ValueError, UnicodeError):
            return False

    def _note_lost(self, reason, n, first, last):
        if not n:
            return
        for lo in self.lost:
            if lo[0] == reason:
                lo[1] += n
                lo[2] = first if lo[2] is None else lo[2]
                lo[3] = last if last is not None else lo[3]
                return
        if len(self.lost) < 4:
            self.lost.append([reason, n, first, last])

    def take_lost(self):
        """``[[reason, count, first seq, last seq], ...]`` named since the last call."""
        out, self.lost = self.lost, []
        return out

    def _remove(self, seg):
        try:  # noqa: SIM105
            os.remove(self._seg(seg))
        except OSError:
            pass

    def _save_ptr(self):
        text = '{"head": %d, "off": %d, "seq": %d, "epoch": "%s"}' % (  # noqa: UP031
            self.head, self.off, self.freed_seq, self.epoch or "")
        with open(self.path + ".ptr.tmp", "w") as f:
            f.write(text)
        os.rename(self.path + ".ptr.tmp", self.path + ".ptr")
        self.bytes_written += len(text)

    def migrate(self, old_path, max_line=MAX_RECORD + 512):
        """Move the messages of an outbox from before segments (``outbox.jsonl``: one JSON
        ``[topic, payload, retain]`` per line) into this one, line by line, then rename the
        old file ``.migrated`` (a line that is too long or not that shape is counted and named
        lost: its seq is unknown). Returns how many moved."""
        import re
        try:
            f = open(old_path, "rb")  # noqa: SIM115 (closed below; no contextlib)
        except OSError:
            return 0
        n = bad = 0
        seq_re = re.compile('"seq": ([0-9]+)')
        try:
            while True:
                line = f.readline(max_line)
                if not line:
                    break
                if not line.endswith(b"\n") and len(line) >= max_line:
                    bad += 1                      # the rest of a too-long line: skipped
                    while line and not line.endswith(b"\n"):
                        line = f.readline(max_line)
                    continue
                try:
                    topic, payload = json.loads(line.decode())[:2]
                    m = seq_re.search(payload)
                    self.put(int(m.group(1)), topic, payload)
                    n += 1
                except Exception:
                    bad += 1
        finally:
            f.close()
        if bad:
            self._note_lost("corrupt", bad, None, None)
            self.dropped += bad
        try:  # noqa: SIM105
            os.rename(old_path, old_path + ".migrated")
        except OSError:
            pass
        return n

    # -- sending and freeing ----------------------------------------------------------
    def next(self):
        """``(seq, topic, payload)`` at the send cursor, moving it on; None when nothing
        more waits. A damaged record skips the rest of its segment (named as lost)."""
        for _ in range(self.max_segs * 4):
            seg, off = self.cursor
            if seg > self.tail:
                return None
            r = self.read_at(seg, off)
            if r is None and seg >= self.tail:
                return None
            if r is None or r is False:
                if r is False:
                    self._skip_damaged(seg, off)
                else:
                    self.cursor = (seg + 1, 0)
                continue
            self.cursor = (seg, r[3])
            return r[0], r[1], r[2]
        return None

    def _skip_damaged(self, seg, off):
        """The rest of segment ``seg`` from ``off`` cannot be read: name it, move on."""
        nxt = self._first_seq(seg + 1) if seg < self.tail else None
        prev = self._seq_before(seg, off)
        first = prev + 1 if prev is not None else None
        last = nxt - 1 if nxt is not None else self._raw_seq(seg, off) or None
        if first is not None and last is not None:
            n = max(0, last - first + 1)
        else:
            n = 1
        if (seg, off) not in self.damaged:   # named once (again only after a restart)
            self._note_lost("corrupt", n, first, last)
            self.dropped += n
            self.count = max(0, self.count - n)
            self.damaged[(seg, off)] = last
        if seg == self.tail:                  # never append after a damaged record
            self.tail += 1
            self.tail_n = 0
        self.cursor = (seg + 1, 0)            # freed (the segment deleted) by free_if once
        #                                       everything before it is acknowledged

    def _first_seq(self, seg):
        r = self._skip_header_seq(seg, 0)
        return r[0] if r else None

    def _seq_before(self, seg, off):
        """The seq of the last readable record before ``off`` in ``seg`` (or the freed
        seq when there is none)."""
        seq = self.freed_seq if seg == self.head else None
        o = self.off if seg == self.head else 0
        while o < off:
            r = self._skip_header_seq(seg, o)
            if not r:
                break
            seq, o = r
        return seq

    def rewind(self):
        """Send again from the oldest message not freed (a new connection, or the
        platform's acknowledgement did not come)."""
        self.cursor = (self.head, self.off)

    def free_through(self, seq):
        """Free the messages in order up to and including ``seq`` (a PUBACK of the
        oldest sent); returns how many."""
        return self.free_if(lambda s: s <= seq)

    def free_if(self, covered):
        """Free messages from the oldest while ``covered(seq)``; returns how many."""
        n = 0
        while True:
            if (self.head, self.off) in self.damaged:   # named: the rest of it goes
                last = self.damaged.pop((self.head, self.off))
                self._remove(self.head)
                self.head, self.off = self.head + 1, 0
                if last is not None:
                    self.freed_seq = max(self.freed_seq, last)
                if self.cursor[0] < self.head:
                    self.cursor = (self.head, 0)
                self._save_ptr()
                continue
            r = self._skip_header_seq(self.head, self.off)
            if r is False:                    # damaged: next() names it first
                break
            if r is None:
                if self.head < self.tail:     # a finished segment: delete it
                    self._remove(self.head)
                    self.head, self.off = self.head + 1, 0
                    if self.cursor[0] < self.head:
                        self.cursor = (self.head, 0)
                    continue
                break
            seq, end = r
            if not covered(seq):
                break
            self.off = end
            self.freed_seq = max(self.freed_seq, seq)
            n += 1
        if n:
            self.count = max(0, self.count - n)
            if self.cursor[0] == self.head and self.cursor[1] < self.off:
                self.cursor = (self.head, self.off)
            self._save_ptr()
        return n
