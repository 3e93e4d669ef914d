"""The node's own small MQTT 3.1.1 client: nothing in it waits longer than ``timeout_s``,
and nothing it reads is allocated before its size is known.

Why not ``umqtt.simple``: its ``wait_msg`` makes the socket blocking and ``connect`` has no
deadline (a broker that accepts TCP and never answers stops the lamp loop for ever); it
reads a whole packet with ``sock.read(size)`` whatever the size (a 100 KiB retained publish
is a MemoryError in every ``connect``); its callback gets no retain bit; it never sends
PINGREQ unless asked. This client, on the port's ``socket`` and ``select``:

- ``open()`` makes the TCP connection with a deadline and sends CONNECT; the CONNACK is read
  by later :meth:`poll` calls (``connected`` turns True), refused (:class:`Refused`, with the
  return code) or missing after ``connack_s`` (``OSError``);
- :meth:`poll` reads only what ``select`` says is waiting, one packet at a time, each within
  ``timeout_s``; a PUBLISH larger than ``max_packet`` is drained in small pieces (across
  passes) and given to ``on_message`` as ``(topic, None, retained, size)``: too large;
- PINGREQ when ``keepalive / 2`` passed without sending; no packet from the broker for
  ``keepalive`` seconds after a PINGREQ: the connection is dead (``OSError``);
- :meth:`publish` writes QoS 1 packets piece by piece (no copy of the payload) and returns
  the packet id; ``on_puback(pid)`` reports the broker's PUBACK.

Errors are ``OSError`` or :class:`Refused` (and MemoryError or UnicodeError from garbage); the
caller drops the client on any of them and makes a new one later (with back-off).
"""

import select
import socket
import struct
import time

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14
DRAIN_CHUNK = 256


class Refused(Exception):
    """CONNACK with a non-zero return code (``code``)."""

    def __init__(self, code):
        Exception.__init__(self, "broker refused the connection (CONNACK " + str(code) + ")")
        self.code = code


def _ms():
    return time.ticks_ms()


def _since(t):
    return time.ticks_diff(time.ticks_ms(), t)


def _str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def _varlen(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


class Client:
    """One connection to the broker; see the module docstring."""

    def __init__(self, client_id, host, port=1883, keepalive=30, timeout_s=0.5,
                 max_packet=4096, connack_s=10):
        self.client_id = client_id
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self.timeout_s = timeout_s
        self.max_packet = max_packet
        self.connack_s = connack_s
        self.sock = None
        self.poller = None
        self.addr = None
        self.connected = False
        self.pid = 0
        self.on_message = None        # (topic, payload bytes or None, retained, size)
        self.on_puback = None         # (pid)
        self.last_tx = self.last_rx = self.t_open = _ms()
        self.ping_sent = None
        self._drain = None            # [topic, retained, size, left] of a too-large publish
        self.bytes_in = 0

    # -- wire -------------------------------------------------------------------------
    def _write(self, data):
        """All of ``data`` within ``timeout_s``, else OSError."""
        mv = memoryview(data)
        t0 = _ms()
        while len(mv):
            n = self.sock.write(mv)
            if n is None:
                n = 0
            mv = mv[n:]
            if len(mv) and _since(t0) > self.timeout_s * 1000:
                raise OSError(110)
        self.last_tx = _ms()

    def _read(self, n, t0):
        """Exactly ``n`` bytes, all within ``timeout_s`` of ``t0``, else OSError."""
        buf = bytearray(n)
        mv = memoryview(buf)
        got = 0
        while got < n:
            left = self.timeout_s * 1000 - _since(t0)
            if left <= 0 or not self.poller.poll(int(left)):
                raise OSError(110)
            k = self.sock.readinto(mv[got:])
            if k is None:
                continue
            if k == 0:
                raise OSError(104)    # closed by the broker
            got += k
        self.bytes_in += n
        self.last_rx = _ms()
        return buf

    def _readable(self):
        return bool(self.poller.poll(0))

    # -- connection -------------------------------------------------------------------
    def open(self, will_topic=None, will_msg=None, will_retain=True, user=None, password=None,
             addr=None):
        """TCP connect (within ``timeout_s``) and send CONNECT (clean session). ``addr``: an
        address resolved before (``self.addr`` after this call); without it the host name
        is resolved here: a DNS lookup has only the network stack's own timeout, so the node
        keeps the address of its last good connection (or give ``mqtt.host`` as an IP)."""
        if addr is None:
            ai = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0]
            addr = (ai[0], ai[-1])
        self.addr = addr
        self.sock = socket.socket(addr[0], socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout_s)
        self.sock.connect(addr[1])
        self.poller = select.poll()
        self.poller.register(self.sock, select.POLLIN)
        flags = 0x02
        body = bytearray(b"\x00\x04MQTT\x04")
        payload = bytearray(_str(self.client_id))
        if will_topic:
            flags |= 0x04 | 0x08 | (0x20 if will_retain else 0)   # will, QoS 1, retain
            payload += _str(will_topic) + _str(will_msg)
        if user is not None:
            flags |= 0x80
            payload += _str(user)
            if password is not None:
                flags |= 0x40
                payload += _str(password)
        body.append(flags)
        body += struct.pack("!H", self.keepalive)
        body += payload
        self._write(bytes([CONNECT << 4]) + _varlen(len(body)) + body)
        self.t_open = self.last_rx = _ms()

    def close(self):
        """Close the socket (no DISCONNECT: the broker publishes the will)."""
        if self.sock is not None:
            try:  # noqa: SIM105
                self.sock.close()
            except Exception:
                pass
        self.sock = None
        self.connected = False

    def disconnect(self):
        """A clean DISCONNECT (no will), then close."""
        try:  # noqa: SIM105
            self._write(b"\xe0\x00")
        except Exception:
            pass
        self.close()

    # -- sending ----------------------------------------------------------------------
    def _next_pid(self):
        self.pid = self.pid % 65535 + 1
        return self.pid

    def publish(self, topic, payload, retain=False, qos=1):
        """Send a PUBLISH (QoS 0 or 1); the packet id (0 for QoS 0)."""
        t = topic.encode() if isinstance(topic, str) else topic
        p = payload.encode() if isinstance(payload, str) else payload
        pid = self._next_pid() if qos else 0
        n = 2 + len(t) + len(p) + (2 if qos else 0)
        head = bytearray([(PUBLISH << 4) | (qos << 1) | (1 if retain else 0)])
        head += _varlen(n)
        head += struct.pack("!H", len(t))
        head += t
        if qos:
            head += struct.pack("!H", pid)
        self._write(head)
        self._write(p)
        return pid

    def subscribe(self, topic, qos=1):
        """Send a SUBSCRIBE (its SUBACK is read by :meth:`poll`)."""
        t = _str(topic)
        body = struct.pack("!H", self._next_pid()) + t + bytes([qos])
        self._write(bytes([(SUBSCRIBE << 4) | 2]) + _varlen(len(body)) + body)

    # -- receiving --------------------------------------------------------------------
    def poll(self, budget_ms=None):
        """Read what is waiting (within ``budget_ms``, default ``timeout_s``), keep the
        connection alive; OSError when it is dead, Refused on a refused CONNACK."""
        budget = self.timeout_s * 1000 if budget_ms is None else budget_ms
        t0 = _ms()
        while _since(t0) < budget:
            if self._drain is not None:
                if not self._readable():
                    break
                self._drain_some(t0)
                continue
            if not self._readable():
                break
            self._packet()
        if not self.connected:
            if _since(self.t_open) > self.connack_s * 1000:
                raise OSError(110)    # no CONNACK: a broker that accepted and hung
            return
        if self.keepalive:
            ka = self.keepalive * 1000
            if self.ping_sent is not None and _since(self.ping_sent) > ka \
                    and _since(self.last_rx) > ka:
                raise OSError(110)    # no PINGRESP, no byte at all: dead
            if self.ping_sent is None and _since(self.last_tx) >= ka // 2:
                self._write(b"\xc0\x00")
                self.ping_sent = _ms()

    def _packet(self):
        t0 = _ms()
        h = self._read(1, t0)[0]
        size = 0
        shift = 0
        for _ in range(4):
            b = self._read(1, t0)[0]
            size |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        else:
            raise OSError(71)         # a malformed remaining length: protocol error
        kind = h >> 4
        self.ping_sent = None         # the broker is alive
        if kind == PUBLISH:
            self._publish_in(h, size, t0)
            return
        if size > 64:
            raise OSError(71)         # no other packet from a broker is this large
        body = self._read(size, t0) if size else b""
        if kind == CONNACK:
            if size != 2:
                raise OSError(71)
            if body[1]:
                raise Refused(body[1])
            self.connected = True
        elif kind == PUBACK:
            if size == 2 and self.on_puback:
                self.on_puback(struct.unpack("!H", body)[0])
        elif kind == SUBACK:
            if size >= 3 and body[2] == 0x80:
                raise OSError(13)     # subscription refused (ACL)
        elif kind not in (PINGRESP,):
            pass                      # UNSUBACK and others: nothing to do

    def _publish_in(self, h, size, t0):
        qos = (h >> 1) & 3
        retained = bool(h & 1)
        tlen = struct.unpack("!H", self._read(2, t0))[0]
        if tlen > 512 or tlen + 2 + (2 if qos else 0) > size:
            raise OSError(71)         # no topic of ours is this long
        topic = bytes(self._read(tlen, t0)).decode()
        pid = struct.unpack("!H", self._read(2, t0))[0] if qos else 0
        n = size - tlen - 2 - (2 if qos else 0)
        if qos:                       # acknowledged at once: what is not run is answered
            self._write(bytes([PUBACK << 4, 2]) + struct.pack("!H", pid))
        if n > self.max_packet:
            self._drain = [topic, retained, n, n]
            self._drain_some(t0)
            return
        payload = self._read(n, t0) if n else b""
        if self.on_message:
            self.on_message(topic, payload, retained, n)

    def _drain_some(self, t0):
        """Discard the next piece of a too-large publish; tell on_message when it is done."""
        d = self._drain
        while d[3] and self._readable() and _since(t0) < self.timeout_s * 1000:
            self._read(min(DRAIN_CHUNK, d[3]), _ms())
            d[3] -= min(DRAIN_CHUNK, d[3])
        if not d[3]:
            self._drain = None
            if self.on_message:
                self.on_message(d[0], None, d[1], d[2])
        elif _since(self.last_rx) > max(self.keepalive, 1) * 1000:
            raise OSError(110)
