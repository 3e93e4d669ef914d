"""The lamp node's loop: clock rules → level → output; MQTT birth/will, state, health,
commands, outbox. The lamp is set first in every pass; then each part of the pass (events,
reports, the network) runs inside its own ``try``: a fault in one, MemoryError included, is
counted (``faults``) and the loop goes on. The network never waits longer than
``mqtt.timeout_s`` per step (``node/mqttc.py``), so a broker that stops answering costs the
lamp nothing.

Delivery follows the agent's rule: without ``mqtt.primary_host`` a message leaves the
outbox on the broker's PUBACK; with it, data waits until the platform's retained STATE
(``<prefix>/STATE/<primary_host>``) says online, and when that STATE announces
``"ack": 1`` a message leaves the outbox only when the platform's acknowledgement
(``<base>/ack``, ``polelink/ack/1``) names its seq; without progress for ``ACK_TIMEOUT_S``
(doubling to ten times that) the node sends again from the oldest message it holds.

Node files are MicroPython: no ``contextlib`` (hence ``noqa: SIM105``), and ``%`` formatting
(``noqa: UP031``) since f-string support differs between ports."""

import gc
import json
import time

import clockrules
import cmdrules
import mqttc
import outbox
from common import schedule

FULL = 100
#: Messages sent and not yet acknowledged, at most: PUBACKs awaited (each a dict entry),
#: and messages the platform has not acknowledged yet (a count: the platform acknowledges
#: every 50 messages or every second, so a backlog drains at up to this many a second).
WINDOW = 16
PLATFORM_WINDOW = 64
#: Messages sent per loop pass, at most (the pass stays short).
SEND_PER_PASS = 8
ACK_TIMEOUT_S = 30
#: The largest packet read whole: a command is at most 2 KiB (a larger one is drained in
#: pieces and answered "too large"); an ack or a STATE is far smaller.
MAX_PACKET = cmdrules.MAX_COMMAND_BYTES
#: Seconds of back-off after a failed connection: doubling from retry_s to this.
BACKOFF_MAX_S = 60
#: Refused commands answered per minute, at most.
REFUSALS_PER_MIN = 60
#: Seconds between NTP attempts while the clock is not synchronised.
NTP_RETRY_S = 600
#: A platform STATE stamped further ahead of a plausible node clock is suspect (as the
#: agent's ``mqtt.state_future_s``): never remembered, and ``offline`` from it ignored.
STATE_FUTURE_MS = 300000


def iso(t):
    """Epoch → ``YYYY-MM-DDTHH:MM:SSZ``."""
    from common import sun
    y, m, d = sun.civil(int(t // 86400))
    s = int(t) % 86400
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (y, m, d, s // 3600, s // 60 % 60, s % 60)  # noqa: UP031


class State:
    """Small JSON file: seq, epoch, boot count, clock state, overrides. Saved at start, on
    an override or clock change, and with each health report, never per message (the seq
    of the newest message is also in the outbox, which wins at start)."""

    def __init__(self, path):
        self.path = path
        self.bytes_written = 0
        self.d = {}
        try:
            with open(path) as f:
                d = json.loads(f.read(4096))
            if isinstance(d, dict):
                self.d = d
        except Exception:               # missing, damaged or too large: start afresh
            pass
        e = self.d.get("epoch")
        if not (isinstance(e, str) and len(e) == 8
                and all(c in "0123456789abcdef" for c in e)):
            import os
            self.d["epoch"] = "".join("%02x" % b for b in os.urandom(4))  # noqa: UP031
        for k in ("boot", "seq"):
            if not isinstance(self.d.get(k), int) or self.d[k] < 0:
                self.d[k] = 0
        self.d["boot"] += 1
        if not isinstance(self.d.get("clock"), dict):
            self.d.pop("clock", None)
        self.d.setdefault("clock", {})          # the clock rules' state (Trust)
        ov = self.d.get("overrides")
        self.d["overrides"] = [o for o in ov if _override_ok(o)][:9] \
            if isinstance(ov, list) else []
        try:  # noqa: SIM105 (a full flash: the node runs, the boot count is not kept)
            self.save()
        except OSError:
            pass

    def save(self):
        """Write atomically."""
        import os
        text = json.dumps(self.d)
        with open(self.path + ".tmp", "w") as f:
            f.write(text)
        os.rename(self.path + ".tmp", self.path)
        self.bytes_written += len(text)


def _override_ok(o):
    try:
        return 0 <= o["level"] <= 100 and 1 <= o["priority"] <= 9 and o["until"] > 0
    except Exception:
        return False


class Node:
    """One lamp node; see the module docstring. ``refused``: why the configured file was
    refused (this ``cfg`` is the last good one): the lamp stays at 100 %."""

    def __init__(self, cfg, out, clock, refused=None):
        self.cfg = cfg
        self.out = out
        self.out.set(FULL)                      # power-on level: full output
        self.faults = 0
        self._naming = False
        sd = cfg["state_dir"].rstrip("/") + "/"
        self.state = State(sd + "state.json")
        self.box = outbox.Outbox(sd + "ob", cfg["outbox_max"], self.state.d["epoch"])
        if self.box.epoch != self.state.d["epoch"]:
            # the state file was lost or damaged: the records' msg_ids keep their epoch
            self.state.d["epoch"] = self.box.epoch
            self.state.save()
        try:                                    # an outbox from before segments
            self.box.migrate(sd + "outbox.jsonl")
        except Exception:                       # counted; the node starts whatever it finds
            self.faults += 1
        self.seq = max(self.state.d["seq"], self.box.last_seq, self.box.freed_seq)
        self.seen_path = sd + "seen.json"
        if "_key" not in cfg:                   # nodemain prepares these before it unloads
            import nodecfg  # the config validator
            nodecfg.prepare(cfg)
        self.trust = clockrules.Trust(clock, self.state.d["clock"], cfg["rtc_trust_s"])
        self.clock = clock
        m = cfg["mqtt"]
        self.base = "%s/%s/%s" % (m["prefix"], cfg["site"], cfg["device"])  # noqa: UP031
        self.state_topic = m["prefix"] + "/STATE/" + m["primary_host"] \
            if m.get("primary_host") else None
        self.refused = refused
        self.client = None
        self.online = False
        self.platform_online = self.state_topic is None
        self.platform_acks = False
        self.platform_ts = -1
        self.inflight = {}                      # pid → seq (broker-ack delivery)
        self.unacked = 0                        # sent, not freed (platform-ack delivery)
        self.ack_wait_since = None
        self.ack_timeout = ACK_TIMEOUT_S
        self.backoff = cfg["retry_s"]
        self.next_try = 0
        self.last_report = -1e9
        self.last_health = -1e9
        self.peak_alloc = 0
        self.mode = ""
        self.source = ""
        self.rejected = 0                       # commands refused since the last event
        self.refusal_tokens = REFUSALS_PER_MIN
        self.refusal_t = time.ticks_ms()
        self.next_sync = time.ticks_ms()
        self.addr = None                        # the broker's address, resolved once
        self.failures = 0
        self.last_refusal = ("", None)
        self.next_reject_event = 0
        self.loss = None                        # [count, first seq, last seq, reasons]
        self.loss_first = None                  # first seq lost since the outbox emptied
        self.max_gap_ms = 0
        self.t_pass = None
        self.t_start = time.ticks_ms()

    # -- messages --------------------------------------------------------------------
    def _meta(self, kind, now):
        return {"schema": "polelink/%s/1" % kind, "device": self.cfg["device"],  # noqa: UP031
                "site": self.cfg["site"], "ts": iso(now)}

    def queue(self, kind, body, now, topic=None):
        """Give ``body`` a seq and msg_id and append it to the outbox; a message that could
        not be written is named (``outbox_overflow``, reason ``failed``), and what the
        outbox dropped to make room is named in the same pass."""
        self.seq += 1
        msg = self._meta(kind, now)
        if kind in ("lighting", "health"):      # not the agent's forms: own schema ids
            msg["schema"] = "polelink/node-%s/1" % kind  # noqa: UP031
        msg.update(body)
        msg["seq"] = self.seq
        msg["msg_id"] = "%s:%s:%d" % (self.cfg["device"], self.state.d["epoch"], self.seq)  # noqa: UP031
        try:
            self.box.put(self.seq, topic or self.base + "/" + kind, json.dumps(msg))
        except Exception:
            self.box._note_lost("failed", 1, self.seq, self.seq)
            self.box.dropped += 1
            raise
        finally:
            if self.box.lost and not self._naming:
                self._naming = True
                try:
                    self.overflow(now)
                finally:
                    self._naming = False

    def status(self, state, now):
        """Birth/will message (no seq of its own, as on the agent)."""
        msg = self._meta("status", now)
        msg.update({"state": state, "bdSeq": self.state.d["boot"],
                    "seq": max(1, self.seq), "role": "node",
                    "msg_id": "%s:%s:bd%d-%s" % (self.cfg["device"], self.state.d["epoch"],  # noqa: UP031
                                                 self.state.d["boot"], state)})
        return json.dumps(msg)

    # -- MQTT ------------------------------------------------------------------------
    def connect(self, now):
        """Open a connection when due (TCP within ``mqtt.timeout_s``; the CONNACK is read
        by later passes)."""
        if self.client is not None or time.ticks_diff(time.ticks_ms(), self.next_try) < 0:
            return
        m = self.cfg["mqtt"]
        c = mqttc.Client(self.cfg["device"], m["host"], m["port"], m["keepalive"],
                         m["timeout_s"], MAX_PACKET, connack_s=max(5, m["keepalive"] // 2))
        c.on_message = self.on_message
        c.on_puback = self.on_puback
        self.client = c
        if self.failures >= 5:                  # the name may point elsewhere now
            self.addr = None
        c.open(self.base + "/status", self.status("offline", now), True,
               m.get("user"), m.get("password"), self.addr)

    def _connected(self, now):
        """The CONNACK came: subscribe, birth, send from the oldest message held."""
        c = self.client
        self.platform_ts = -1       # a new connection learns the STATE afresh
        # subscribed before the birth: a platform that answers the birth with a command
        # at once must find the node listening; the retained ack before the STATE
        c.subscribe(self.base + "/cmd", 1)
        if self.state_topic:
            c.subscribe(self.base + "/ack", 1)
            c.subscribe(self.state_topic, 1)
        c.publish(self.base + "/status", self.status("online", now), True, 1)
        self.online = True
        self.failures = 0
        self.addr = c.addr
        self.backoff = self.cfg["retry_s"]
        self._go_back()
        if not self.trust.synced_now and time.ticks_diff(time.ticks_ms(), self.next_sync) >= 0:
            self.next_sync = time.ticks_add(time.ticks_ms(), NTP_RETRY_S * 1000)
            if self.trust.try_sync():           # (ntptime: DNS and a 1 s UDP wait)
                self.state.save()

    def drop(self):
        """Forget the connection; try again after the back-off (doubling, with jitter)."""
        if self.client is not None:
            self.client.close()
        self.client = None
        self.online = False
        self.failures += 1
        import os
        wait = self.backoff * (0.75 + os.urandom(1)[0] / 510)
        self.next_try = time.ticks_add(time.ticks_ms(), int(wait * 1000))
        self.backoff = min(max(self.backoff * 2, self.cfg["retry_s"]),
                           max(BACKOFF_MAX_S, self.cfg["retry_s"]))

    def _go_back(self):
        """Send again from the oldest message held."""
        self.box.rewind()
        self.inflight = {}
        self.unacked = 0
        self.ack_wait_since = None

    @property
    def delivery(self):
        """``platform-ack`` or ``broker-ack`` (the agent's words)."""
        return "platform-ack" if self.state_topic and self.platform_acks else "broker-ack"

    def network(self, now):
        """This pass's network work: connect, read, keep alive, send."""
        try:
            self.connect(now)
            c = self.client
            if c is None:
                return
            c.poll()
            if c.connected and not self.online:
                self._connected(now)
            if self.online:
                self.send(now)
        except Exception:       # OSError, a refused CONNACK, garbage, MemoryError: reconnect
            self.drop()

    def send(self, now):
        """Send what waits (holding data while the platform is away, when it is named)."""
        if not self.platform_online:
            return
        platform = self.delivery == "platform-ack"
        if platform and self.unacked and self.ack_wait_since is not None and \
                time.ticks_diff(time.ticks_ms(), self.ack_wait_since) > self.ack_timeout * 1000:
            self.ack_timeout = min(self.ack_timeout * 2, ACK_TIMEOUT_S * 10)
            self._go_back()
        for _ in range(SEND_PER_PASS):
            if (self.unacked >= PLATFORM_WINDOW) if platform else \
                    (len(self.inflight) >= WINDOW):
                break
            r = self.box.next()
            if r is None:
                break
            seq, topic, payload = r
            pid = self.client.publish(topic, payload, False, 1)
            if platform:
                self.unacked += 1
                if self.ack_wait_since is None:
                    self.ack_wait_since = time.ticks_ms()
            else:
                self.inflight[pid] = seq

    def on_puback(self, pid):
        """The broker has a message: freed here unless the platform acknowledges."""
        seq = self.inflight.pop(pid, None)
        if seq is not None and self.delivery == "broker-ack":
            self.box.free_through(seq)

    def on_message(self, topic, payload, retained, size):
        """A packet on one of the node's subscriptions (payload None: too large)."""
        try:
            if topic == self.base + "/cmd":
                self.on_command(payload, retained, size)
            elif topic == self.base + "/ack":
                self.on_ack(payload)
            elif topic == self.state_topic:
                self.on_state(payload)
        except Exception:
            self.faults += 1

    def on_state(self, payload):
        """The platform's retained STATE: online or not, acknowledging or not."""
        if not payload:
            self.platform_online = False
            return
        try:
            msg = json.loads(payload)
            online, ts = msg["online"], msg.get("timestamp", 0)
            if not isinstance(online, bool) or not isinstance(ts, (int, float)):
                return
        except Exception:
            return
        if ts < self.platform_ts:
            return                              # a stale will
        now_ms = self.clock.now() * 1000
        if now_ms < clockrules.BUILD_EPOCH * 1000:
            self.platform_ts = ts               # (no clock to judge it by)
        elif ts - now_ms > STATE_FUTURE_MS:
            if not online:
                return                          # forged, far ahead: cannot stop sending
        else:                                   # ahead: remembered as of our clock
            self.platform_ts = min(ts, max(now_ms, self.platform_ts))
        acks = msg.get("ack")
        acks = isinstance(acks, int) and not isinstance(acks, bool) and acks >= 1
        if online and acks != self.platform_acks:
            self.platform_acks = acks
            self._go_back()
        if online and not self.platform_online:
            self.ack_timeout = ACK_TIMEOUT_S
            self._go_back()
        self.platform_online = online

    def on_ack(self, payload):
        """``polelink/ack/1`` for this node's epoch: free what it names, oldest first."""
        if not payload:
            return
        msg = json.loads(payload)
        if msg.get("epoch") != self.state.d["epoch"]:
            return
        ranges = msg.get("ranges")
        if not isinstance(ranges, list):
            return
        ok = [r for r in ranges if isinstance(r, list) and len(r) == 2
              and isinstance(r[0], int) and isinstance(r[1], int)]

        def covered(seq):
            return any(a <= seq <= b for a, b in ok)
        n = self.box.free_if(covered)
        if n:
            self.unacked = max(0, self.unacked - n)
            self.ack_timeout = ACK_TIMEOUT_S
            self.ack_wait_since = time.ticks_ms() if self.unacked else None

    def on_command(self, payload, retained, size):
        """A command arrived: check, act, answer (through the outbox). The command modules
        stay loaded from the start: loaded and unloaded per command, they needed more heap
        (a fragmented heap could not give their tables; ``bench/node_budget.py``)."""
        now = self.clock.now()
        cfg = self.cfg
        guard = cmdrules.Guard(cfg["device"], cfg["site"], cfg["max_ttl_s"], self.seen_path,
                               cfg["_key"])
        try:
            if payload is None:
                raise cmdrules.Refused("command of " + str(size) + " bytes (limit "
                                       + str(cmdrules.MAX_COMMAND_BYTES) + ")")
            if retained:
                raise cmdrules.Refused("retained commands are refused")
            gc.collect()                    # room for the signature check's big numbers
            msg = guard.check(payload, retained, now)
            data = self.act(msg["command"], msg.get("args", {}), now)
            err = None
        except cmdrules.Refused as e:
            err, data = str(e)[:1000], {}
        except Exception as e:              # MemoryError above all: answer, keep running
            self.faults += 1
            err, data = "not run: the node failed checking it (" + type(e).__name__ + ")", {}
            gc.collect()
        cid, command = guard.peek           # what the strictly parsed command said, if any
        del guard
        cid = cmdrules.clean(cid, 128) if isinstance(cid, str) else None
        command = cmdrules.clean(command, 64) if isinstance(command, str) else None
        if err:
            err = cmdrules.clean(err, 1000)
            self.rejected += 1
            self.last_refusal = (err[:500], command)
            # refusals answered at most REFUSALS_PER_MIN a minute: a flood on the command
            # topic must not push the night's reports out of the outbox (the rest are
            # counted in the command_rejected event)
            t = time.ticks_ms()
            self.refusal_tokens = min(REFUSALS_PER_MIN, self.refusal_tokens + time.ticks_diff(
                t, self.refusal_t) * REFUSALS_PER_MIN / 60000)
            self.refusal_t = t
            if self.refusal_tokens < 1:
                return
            self.refusal_tokens -= 1
        self.queue("response", {"correlation_id": cid, "command": command,
                                "result": "error" if err else "ok", "error": err,
                                "data": data}, now, topic=self.base + "/cmd/response")

    def act(self, command, args, now):
        """Run a checked command."""
        ov = self.state.d["overrides"]
        if command == "set_override":
            level, prio, ttl = cmdrules.override_args(args)
            ov[:] = [o for o in ov if o["priority"] != prio and o["until"] > now]
            ov.append({"level": level, "priority": prio, "until": now + ttl})
            self.state.save()
            self.last_report = -1e9
            return {"until": iso(now + ttl)}
        if command == "clear_override":
            prio = args.get("priority")
            n = len(ov)
            ov[:] = [o for o in ov if prio is not None and o["priority"] != prio]
            self.state.save()
            self.last_report = -1e9
            return {"cleared": n - len(ov)}
        if command == "rebirth" and self.online:
            self.client.publish(self.base + "/status", self.status("online", now), True, 1)
        return {}

    # -- events ----------------------------------------------------------------------
    def event(self, name, severity, subject, detail, now):
        """Queue a ``polelink/event/1``: the agent's event schema and names."""
        self.queue("event", {"event": name, "severity": severity, "subject": subject,
                             "detail": detail}, now)

    def events(self, mode, was, now):
        """Events for what changed in this pass: the fail-safe entered or left (a fault in
        the pass), the clock distrusted or trusted again, messages dropped from a full or
        damaged outbox (at once: one event per segment dropped), refused commands (one
        event per 10 s, with a count, as the agent does)."""
        if mode != was:
            if mode == "fault":
                detail = {"mode": "fault", "levelPct": FULL}
                if self.refused:
                    detail.update({"mode": "config", "reason": self.refused[:300]})
                self.event("failsafe_entered", "alarm", "output", detail, now)
            elif was == "fault":
                self.event("failsafe_left", "info", "output", {"mode": mode}, now)
            if mode == "untrusted":
                self.event("clock_untrusted", "alarm", "clock",
                           {"levelPct": FULL, "reason": self.trust.reason}, now)
            elif was == "untrusted" and mode != "fault":
                self.event("clock_trusted", "info", "clock", {"clock": mode}, now)
        self.overflow(now)
        if self.rejected and now >= self.next_reject_event:
            self.event("command_rejected", "warning", "cmd",
                       {"error": self.last_refusal[0], "command": self.last_refusal[1],
                        "count": self.rejected}, now)
            self.rejected = 0
            self.next_reject_event = now + 10

    def overflow(self, now):
        """``outbox_overflow``: what was dropped (full) or unreadable (corrupt) since the
        last one, and the seq range lost since the outbox was last empty (so the newest
        event names everything, even when an older event was itself dropped)."""
        for reason, n, first, last in self.box.take_lost():
            lo = self.loss or [0, None, None, []]
            lo[0] += n
            if first is not None:
                self.loss_first = first if self.loss_first is None \
                    else min(self.loss_first, first)
            if last is not None:
                lo[2] = last if lo[2] is None else max(lo[2], last)
            if reason not in lo[3]:
                lo[3].append(reason)
            self.loss = lo
        if self.loss:           # at once: what is lost is known only in memory until then
            lo = self.loss
            was, self._naming = self._naming, True
            try:                # kept when the event cannot be written: said next time
                self.event("outbox_overflow", "alarm", "outbox",
                           {"dropped": lo[0], "firstSeq": self.loss_first, "lastSeq": lo[2],
                            "epoch": self.state.d["epoch"],
                            "outboxMax": self.cfg["outbox_max"], "reason": ",".join(lo[3])},
                           now)
                if self.loss is lo:
                    self.loss = None
            finally:
                self._naming = was
        if self.box.count == 0 and not self.loss:
            self.loss_first = None

    # -- lighting --------------------------------------------------------------------
    def level(self, now):
        """``(level, mode, source)`` under the clock rules."""
        mode = self.trust.mode(now)
        if mode == "untrusted":
            return FULL, mode, "clock-untrusted"
        cfg = self.cfg
        tz = cfg["_tz"]
        program = cfg["_plan"] if mode == "trusted" else cfg["fixed_program"]
        lvl, src, _ = schedule.level_at(program, cfg["latitude"], cfg["longitude"], tz, now,
                                        self.state.d["overrides"])
        if mode != "trusted":
            safe = clockrules.never_synced_level(lvl, cfg["latitude"], cfg["longitude"], now,
                                                 FULL)
            return safe, mode, "fixed-program" if safe == lvl else "never-synced-dusk"
        if lvl is None:
            return FULL, mode, "no-step"
        return lvl, mode, src

    def tick(self):
        """One pass of the loop: the lamp first, then each part contained on its own."""
        t = time.ticks_ms()
        if self.t_pass is not None:
            self.max_gap_ms = max(self.max_gap_ms, time.ticks_diff(t, self.t_pass))
        self.t_pass = t
        try:
            now = self.clock.now()
            if self.refused:
                lvl, mode, src = FULL, "fault", "fault"
            else:
                lvl, mode, src = self.level(now)
        except Exception:
            lvl, mode, src = FULL, "fault", "fault"
            now = getattr(self, "_now", 0)
            self.faults += 1
        self._now = now
        changed = lvl != self.out.level or mode != self.mode or src != self.source
        try:
            self.out.set(lvl)
        except Exception:                       # the bus: tried again next pass
            self.faults += 1
        was, self.mode, self.source = self.mode, mode, src
        try:
            self.events(mode, was, now)
            if changed or now - self.last_report >= self.cfg["report_s"]:
                self.last_report = now
                self.queue("lighting", {"role": "node", "levelPct": lvl, "clock": mode,
                                        "source": src}, now)
            if now - self.last_health >= self.cfg["health_s"]:
                self.last_health = now
                self.state.d["seq"] = self.seq
                self.state.save()
                self.queue("health", self.health(), now)
        except Exception:                       # a full flash must not stop the lighting
            self.faults += 1
        self.network(now)
        try:
            gc.collect()                        # keep the heap flat; measure live memory
            self.peak_alloc = max(self.peak_alloc, gc.mem_alloc())
        except Exception:
            pass

    def health(self):
        """The ``polelink/node-health/1`` body (``memFree``: after a collection)."""
        gc.collect()
        return {"role": "node", "memFree": gc.mem_free(), "memAllocPeak": self.peak_alloc,
                "outbox": self.box.count, "outboxDropped": self.box.dropped,
                "faults": self.faults,
                "uptimeS": time.ticks_diff(time.ticks_ms(), self.t_start) // 1000}
