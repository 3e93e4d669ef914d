"""The lamp node's loop: clock rules → level → output; MQTT birth/will, state, health,
commands, outbox. Any fault in a tick sets full output (the road is never left dark).

Node files are MicroPython: no ``contextlib`` (hence ``noqa: SIM105``), and ``%`` formatting
(``noqa: UP031``) since f-string support differs between ports."""

import gc
import json
import time

import clockrules
import cmdrules
import nodecfg
import outbox
from common import schedule

FULL = 100


def iso(t):
    """Epoch → ``YYYY-MM-DDTHH:MM:SSZ``."""
    from common import sun
    y, m, d = sun.civil(int(t // 86400))
    s = int(t) % 86400
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (y, m, d, s // 3600, s // 60 % 60, s % 60)  # noqa: UP031


class State:
    """Small JSON file: seq, epoch, boot count, clock state, overrides."""

    def __init__(self, path):
        self.path = path
        try:
            with open(path) as f:
                self.d = json.load(f)
        except (OSError, ValueError):
            self.d = {}
        if "epoch" not in self.d:
            import os
            self.d["epoch"] = "".join("%02x" % b for b in os.urandom(4))  # noqa: UP031
        self.d["boot"] = self.d.get("boot", 0) + 1
        self.d.setdefault("seq", 0)
        self.d.setdefault("clock", {})
        self.d.setdefault("overrides", [])
        self.save()

    def save(self):
        """Write atomically."""
        import os
        with open(self.path + ".tmp", "w") as f:
            json.dump(self.d, f)
        os.rename(self.path + ".tmp", self.path)


class Node:
    """One lamp node; see the module docstring."""

    def __init__(self, cfg, out, clock, mqtt_factory):
        self.cfg = cfg
        self.out = out
        self.out.set(FULL)                      # power-on level: full output
        sd = cfg["state_dir"].rstrip("/") + "/"
        self.state = State(sd + "state.json")
        self.box = outbox.Outbox(sd + "outbox.jsonl", cfg["outbox_max"])
        key = cfg.get("command_key")
        self.guard = cmdrules.Guard(cfg["device"], cfg["site"], cfg["max_ttl_s"],
                                    sd + "seen.json",
                                    None if key is None else nodecfg.public_key(key))
        self.trust = clockrules.Trust(clock, self.state.d["clock"], cfg["rtc_trust_s"])
        self.clock = clock
        self.base = "%s/%s/%s" % (cfg["mqtt"]["prefix"], cfg["site"], cfg["device"])  # noqa: UP031
        self.mqtt_factory = mqtt_factory
        self.client = None
        self.next_try = 0
        self.last_report = -1e9
        self.last_health = -1e9
        self.peak_alloc = 0
        self.mode = ""
        self.source = ""
        self.faults = 0
        self.rejected = 0                   # commands refused since the last event
        self.last_refusal = ("", None)
        self.next_reject_event = 0
        self.dropped_seen = 0
        self.next_overflow_event = 0
        self.t_start = time.ticks_ms()

    # -- messages --------------------------------------------------------------------
    def _meta(self, kind, now):
        return {"schema": "polelink/%s/1" % kind, "device": self.cfg["device"],  # noqa: UP031
                "site": self.cfg["site"], "ts": iso(now)}

    def queue(self, kind, body, now, retain=False, topic=None):
        """Give ``body`` a seq and msg_id (kept across reboots) and put it in the outbox."""
        self.state.d["seq"] += 1
        self.state.save()
        msg = self._meta(kind, now)
        if kind in ("lighting", "health"):      # not the agent's forms: own schema ids
            msg["schema"] = "polelink/node-%s/1" % kind  # noqa: UP031
        msg.update(body)
        msg["seq"] = self.state.d["seq"]
        msg["msg_id"] = "%s:%s:%d" % (self.cfg["device"], self.state.d["epoch"], msg["seq"])  # noqa: UP031
        self.box.put(topic or self.base + "/" + kind, json.dumps(msg), retain)

    def status(self, state, now):
        """Birth/will message (no seq of its own, as on the agent)."""
        msg = self._meta("status", now)
        msg.update({"state": state, "bdSeq": self.state.d["boot"],
                    "seq": max(1, self.state.d["seq"]), "role": "node",
                    "msg_id": "%s:%s:bd%d-%s" % (self.cfg["device"], self.state.d["epoch"],  # noqa: UP031
                                                 self.state.d["boot"], state)})
        return json.dumps(msg)

    # -- MQTT ------------------------------------------------------------------------
    def connect(self, now):
        """(Re)connect when due; birth, subscribe. Errors leave the node offline."""
        if self.client is not None or time.ticks_diff(time.ticks_ms(), self.next_try) < 0:
            return
        m = self.cfg["mqtt"]
        c = self.mqtt_factory(self.cfg["device"], m["host"], m["port"], m["keepalive"])
        c.set_last_will(self.base + "/status", self.status("offline", now), retain=True, qos=1)
        c.set_callback(self.on_message)
        try:
            c.connect()
            # subscribed before the birth: a platform that answers the birth with a
            # command at once must find the node listening
            c.subscribe(self.base + "/cmd", qos=1)
            c.publish(self.base + "/status", self.status("online", now), retain=True, qos=1)
            self.client = c
            if not self.trust.synced_now:
                self.trust.try_sync()
                self.state.save()
        except OSError:
            self.drop()

    def drop(self):
        """Forget the connection; retry after ``retry_s``."""
        if self.client is not None:
            try:  # noqa: SIM105
                self.client.sock.close()
            except Exception:
                pass
        self.client = None
        self.next_try = time.ticks_add(time.ticks_ms(), int(self.cfg["retry_s"] * 1000))

    def _publish(self, topic, payload, retain):
        self.client.publish(topic, payload, retain=retain, qos=1)

    def on_message(self, topic, payload, retained=False):
        """A command arrived: check, act, answer (through the outbox)."""
        now = self.clock.now()
        cid = command = None
        try:
            try:
                peek = json.loads(payload)
                cid, command = peek.get("correlation_id"), peek.get("command")
            except Exception:
                pass
            gc.collect()                    # room for the signature check's big numbers
            msg = self.guard.check(payload, retained, now)
            data = self.act(msg["command"], msg.get("args", {}), now)
            err = None
        except cmdrules.Refused as e:
            err, data = str(e)[:1000], {}
        except Exception as e:              # MemoryError above all: answer, keep running
            self.faults += 1
            err, data = "not run: the node failed checking it (" + type(e).__name__ + ")", {}
            gc.collect()
        if not isinstance(cid, str):
            cid = None
        if not isinstance(command, str):
            command = None
        if err:
            self.rejected += 1
            self.last_refusal = (err[:500], command)
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
        if command == "rebirth" and self.client is not None:
            self.client.publish(self.base + "/status", self.status("online", now),
                                retain=True, qos=1)
        return {}

    # -- events ----------------------------------------------------------------------
    def event(self, name, severity, subject, detail, now):
        """Queue a ``polelink/event/1``: the agent's event schema and names."""
        self.queue("event", {"event": name, "severity": severity, "subject": subject,
                             "detail": detail}, now)

    def events(self, mode, was, now):
        """Events for what changed in this pass: the fail-safe entered or left (a fault in
        the pass), the clock distrusted or trusted again, messages dropped from a full
        outbox (at most one event a minute), refused commands (one event per 10 s, with a
        count, as the agent does)."""
        if mode != was:
            if mode == "fault":
                self.event("failsafe_entered", "alarm", "output",
                           {"mode": "fault", "levelPct": FULL}, now)
            elif was == "fault":
                self.event("failsafe_left", "info", "output", {"mode": mode}, now)
            if mode == "untrusted":
                self.event("clock_untrusted", "alarm", "clock",
                           {"levelPct": FULL, "reason": self.trust.reason}, now)
            elif was == "untrusted" and mode != "fault":
                self.event("clock_trusted", "info", "clock", {"clock": mode}, now)
        if self.box.dropped > self.dropped_seen and now >= self.next_overflow_event:
            self.event("outbox_overflow", "warning", "outbox",
                       {"dropped": self.box.dropped - self.dropped_seen,
                        "outboxMax": self.cfg["outbox_max"]}, now)
            self.dropped_seen = self.box.dropped
            self.next_overflow_event = now + 60
        if self.rejected and now >= self.next_reject_event:
            self.event("command_rejected", "warning", "cmd",
                       {"error": self.last_refusal[0], "command": self.last_refusal[1],
                        "count": self.rejected}, now)
            self.rejected = 0
            self.next_reject_event = now + 10

    # -- lighting --------------------------------------------------------------------
    def level(self, now):
        """``(level, mode, source)`` under the clock rules."""
        mode = self.trust.mode(now)
        if mode == "untrusted":
            return FULL, mode, "clock-untrusted"
        cfg = self.cfg
        tz = getattr(self, "_tz", None)
        if tz is None:                   # parsed once: the tz rule and the calendar plan
            tz = self._tz = nodecfg.zone(cfg)
            self._plan = nodecfg.plan(cfg)
        program = self._plan if mode == "trusted" else cfg["fixed_program"]
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
        """One pass of the loop."""
        now = self.clock.now()
        try:
            lvl, mode, src = self.level(now)
        except Exception:
            lvl, mode, src = FULL, "fault", "fault"
            self.faults += 1
        changed = lvl != self.out.level or mode != self.mode or src != self.source
        self.out.set(lvl)
        was, self.mode, self.source = self.mode, mode, src
        try:
            self.events(mode, was, now)
        except Exception:                   # a full flash must not stop the lighting
            self.faults += 1
        if changed or now - self.last_report >= self.cfg["report_s"]:
            self.last_report = now
            self.queue("lighting", {"role": "node", "levelPct": lvl, "clock": mode,
                                    "source": src}, now)
        if now - self.last_health >= self.cfg["health_s"]:
            self.last_health = now
            self.state.save()
            self.queue("health", {"role": "node", "memFree": gc.mem_free(),
                                  "memAllocPeak": self.peak_alloc,
                                  "outbox": len(self.box.items),
                                  "outboxDropped": self.box.dropped, "faults": self.faults,
                                  "uptimeS": time.ticks_diff(time.ticks_ms(),
                                                             self.t_start) // 1000}, now)
        self.connect(now)
        if self.client is not None:
            try:
                self.client.check_msg()
                self.box.flush(self._publish)
            except Exception:               # OSError, or garbage from the broker: reconnect
                self.drop()
        gc.collect()                            # keep the heap flat; measure live memory
        self.peak_alloc = max(self.peak_alloc, gc.mem_alloc())
