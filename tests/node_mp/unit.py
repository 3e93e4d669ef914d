"""Unit cases of the node's outbox, command rules and clock rules, run inside MicroPython
(and CPython) by tests/test_node_mp.py: prints ``<name> ok|FAIL <detail>`` per case."""

import json
import sys

import clockrules
import cmdrules
import outbox

TMP = sys.argv[1]
RESULTS = []


def case(name, got, want):
    """Record one case."""
    print(name, "ok" if got == want else "FAIL", repr(got), "!=", repr(want))


def refused(fn):
    """The Refused text of ``fn()``, or None when it passed."""
    try:
        fn()
    except cmdrules.Refused as e:
        return str(e)
    return None


# outbox: append-only segments, drop-oldest at the cap, named losses, damage, reboot
def drain(b):
    """The seqs the send cursor reads, in order."""
    out = []
    while True:
        r = b.next()
        if r is None:
            return out
        out.append(r[0])


box = outbox.Outbox(TMP + "/ob", 16)          # 16 records: two segments of 16
for i in range(1, 41):
    box.put(i, "t", "p%d" % i)  # noqa: UP031
case("outbox_keeps_newest", drain(box), list(range(17, 41)))
case("outbox_counts_dropped", (box.dropped, box.take_lost()), (16, [["full", 16, 1, 16]]))
again = outbox.Outbox(TMP + "/ob", 16)
case("outbox_survives_reboot", (drain(again), again.count, again.last_seq),
     (list(range(17, 41)), 24, 40))
case("outbox_frees_in_order", again.free_through(20), 4)
again = outbox.Outbox(TMP + "/ob", 16)
case("outbox_freed_stay_freed", drain(again)[:2], [21, 22])
r = again.read_at(again.head, again.off)
case("outbox_record_body", (r[1], bytes(r[2])), ("t", b"p21"))

b2 = outbox.Outbox(TMP + "/cb", 64)
for i in range(1, 11):
    b2.put(i, "t", "payload-%d" % i)  # noqa: UP031
with open(TMP + "/cb.0", "rb") as f:
    raw = bytearray(f.read())
raw[raw.find(b"payload-5") + 3] ^= 0x01                 # one flipped bit in record 5
with open(TMP + "/cb.0", "wb") as f:
    f.write(raw)
b2 = outbox.Outbox(TMP + "/cb", 64)
b2.put(11, "t", "payload-11")
case("outbox_flipped_bit_named", (drain(b2), b2.take_lost()),
     ([1, 2, 3, 4, 11], [["corrupt", 6, 5, 10]]))

b3 = outbox.Outbox(TMP + "/tb", 64)
for i in range(1, 4):
    b3.put(i, "t", "x")
with open(TMP + "/tb.0", "ab") as f:
    f.write(b"0000000400000000")                         # a write cut by a power loss
b3 = outbox.Outbox(TMP + "/tb", 64)
b3.put(5, "t", "y")
case("outbox_torn_write_not_followed", (drain(b3), b3.take_lost()),
     ([1, 2, 3, 5], [["corrupt", 1, 4, 4]]))

with open(TMP + "/gb.0", "w") as f:
    f.write("{not an outbox at all\n" * 50)
b4 = outbox.Outbox(TMP + "/gb", 64)
b4.put(1, "t", "z")
case("outbox_garbage_file_skipped", drain(b4), [1])

with open(TMP + "/ob.ptr", "w") as f:
    f.write("\x00\xff garbage")
case("outbox_damaged_pointer_finds_oldest", drain(outbox.Outbox(TMP + "/ob", 16))[:1], [17])

# an outbox from before segments (outbox.jsonl, 1,024 lines) is moved in line by line
import os  # noqa: E402

os.mkdir(TMP + "/mig")
with open(TMP + "/mig/outbox.jsonl", "w") as f:
    for i in range(1, 1025):
        f.write(json.dumps(["t", json.dumps({"seq": i, "x": "y" * 200}), False]) + "\n")
    f.write("{not json\n")
    f.write("z" * 20000 + "\n")
mb = outbox.Outbox(TMP + "/mig/ob", 2048)
moved = mb.migrate(TMP + "/mig/outbox.jsonl")
case("old_outbox_migrated", (moved, len(drain(mb)), mb.count, mb.take_lost()[0][:2]),
     (1024, 1024, 1024, ["corrupt", 2]))
case("old_outbox_renamed", sorted(os.listdir(TMP + "/mig"))[-1], "outbox.jsonl.migrated")

def flip_bit(path, marker):
    """Flip one bit of the record holding ``marker`` in segment file ``path``."""
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    raw[raw.find(marker) + 2] ^= 0x04
    with open(path, "wb") as f:
        f.write(raw)


# a damaged record in the head segment: what was sent before it stays until acknowledged
hb = outbox.Outbox(TMP + "/hd", 64)
for i in range(1, 7):
    hb.put(i, "t", "payload-%d" % i)  # noqa: UP031
flip_bit(TMP + "/hd.0", b"payload-6")
hb = outbox.Outbox(TMP + "/hd", 64)
first_pass = drain(hb)
hb.rewind()
case("head_damage_keeps_the_unacknowledged", (first_pass, drain(hb), hb.take_lost()),
     ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [["corrupt", 1, 6, 6]]))
case("head_damage_freed_after_the_acks", (hb.free_if(lambda q: q <= 5), hb.head),
     (5, 1))

# a damaged record further on does not stall freeing (platform acknowledgement: its seq
# is never acknowledged)
fb = outbox.Outbox(TMP + "/fb", 64)
for i in range(1, 41):
    fb.put(i, "t", "payload-%d" % i)  # noqa: UP031
flip_bit(TMP + "/fb.1", b"payload-21")
sent = drain(fb)
named = fb.take_lost()
freed = fb.free_if(lambda q: q in sent)
fb.rewind()
case("damage_further_on_does_not_stall", (21 in sent, named, freed, drain(fb), fb.count),
     (False, [["corrupt", 12, 21, 32]], 28, [], 0))


# a put that fails halfway (flash full, power): the next records go to a new segment
class HalfFile:
    """A file whose second write fails."""

    def __init__(self, f):
        self.f, self.n = f, 0

    def write(self, b):
        self.n += 1
        if self.n == 2:
            raise OSError(28)
        return self.f.write(b)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.f.close()


pb = outbox.Outbox(TMP + "/pb", 64)
for i in range(1, 4):
    pb.put(i, "t", "x")
outbox.open = lambda path, mode="r": HalfFile(open(path, mode))  # noqa: SIM115
try:  # noqa: SIM105 (MicroPython has no contextlib)
    pb.put(4, "t", "x")
except OSError:
    pass
del outbox.open
for i in range(5, 8):
    pb.put(i, "t", "x")
got = drain(pb)
case("half_written_put_not_followed", (got, pb.take_lost()), ([1, 2, 3, 5, 6, 7],
                                                                 [["corrupt", 1, 4, 4]]))

# a pointer whose offset points past its segment: sent again from the start
with open(TMP + "/pb.ptr", "w") as f:
    f.write('{"head": 0, "off": 999999, "seq": 0}')
case("pointer_past_the_end_resends", drain(outbox.Outbox(TMP + "/pb", 64))[:3], [1, 2, 3])

# command rules
NOW = 1795000000
g = cmdrules.Guard("node-1", "s", 86400, TMP + "/seen.json")


def cmd(**kw):
    """A command body."""
    m = {"schema": "polelink/command/2", "correlation_id": "c1", "command": "ping",
         "expires": "2026-11-18T12:00:00Z"}
    m.update(kw)
    return json.dumps(m).encode()


# replay protection in constant memory: 64 unexpired ids, never one forgotten early
g64 = cmdrules.Guard("node-1", "s", 86400, TMP + "/seen64.json")
for i in range(64):
    g64.check(cmd(correlation_id="r%d" % i), False, NOW)  # noqa: UP031
case("sixty_fifth_command_waits", "too many commands" in refused(
    lambda: g64.check(cmd(correlation_id="r64"), False, NOW)), True)
case("replay_after_64_newer_refused", "duplicate" in refused(lambda: cmdrules.Guard(
    "node-1", "s", 86400, TMP + "/seen64.json").check(cmd(correlation_id="r0"), False, NOW)),
    True)
case("an_expired_id_frees_its_place", refused(lambda: g64.check(
    cmd(correlation_id="r65", expires="2026-11-19T12:00:00Z"), False, NOW + 86400 - 60)),
    None)

case("expiry_parse_z", cmdrules.parse_expiry("2026-11-18T12:00:00Z"), 1795003200)
case("expiry_parse_offset", cmdrules.parse_expiry("2026-11-18T13:00:00.5+01:00"), 1795003200)
case("expiry_without_zone", "zone" in refused(
    lambda: cmdrules.parse_expiry("2026-11-18T12:00:00")), True)
case("ok_command_runs", refused(lambda: g.check(cmd(), False, NOW)), None)
case("once_only", "duplicate" in refused(lambda: g.check(cmd(), False, NOW)), True)
case("once_survives_reboot", "duplicate" in refused(lambda: cmdrules.Guard(
    "node-1", "s", 86400, TMP + "/seen.json").check(cmd(), False, NOW)), True)
case("expired", "expired" in refused(lambda: g.check(
    cmd(correlation_id="c2", expires="2026-11-18T00:00:00Z"), False, NOW)), True)
case("too_far_ahead", "ahead" in refused(lambda: g.check(
    cmd(correlation_id="c3", expires="2026-12-18T00:00:00Z"), False, NOW)), True)
case("retained", "retained" in refused(lambda: g.check(cmd(correlation_id="c4"), True, NOW)),
     True)
case("too_big", "limit" in refused(lambda: g.check(b" " * 2049, False, NOW)), True)
case("not_json", refused(lambda: g.check(b"{", False, NOW))[:14], "not valid JSON")
case("other_device", "another" in refused(lambda: g.check(
    cmd(correlation_id="c5", device="node-2"), False, NOW)), True)
case("unknown_command", "not supported" in refused(lambda: g.check(
    cmd(correlation_id="c6", command="update"), False, NOW)), True)
case("override_args_ok", cmdrules.override_args({"level_pct": 20, "expires_in_s": 60}),
     (20, 5, 60))
for name, args in (("level_high", {"level_pct": 101, "expires_in_s": 60}),
                   ("prio_zero", {"level_pct": 1, "priority": 0, "expires_in_s": 60}),
                   ("ttl_missing", {"level_pct": 1}), ("level_bool", {"level_pct": True,
                                                                      "expires_in_s": 1})):
    case("override_refuses_" + name, refused(lambda a=args: cmdrules.override_args(a)) is not None,
         True)


# clock rules
class Fixed:
    """A clock that reads ``t`` and syncs when told."""

    def __init__(self, t, ok):
        self.t, self.ok = t, ok

    def now(self):
        """Reading."""
        return self.t

    def sync(self):
        """NTP outcome."""
        return self.ok


st = {}
tr = clockrules.Trust(Fixed(NOW, False), st, 86400)
case("never_synced", tr.mode(NOW), "never-synced")
case("before_build_untrusted", tr.mode(978307200), "untrusted")
case("synced_trusted", (tr.try_sync() or True) and clockrules.Trust(
    Fixed(NOW, True), st, 86400).try_sync(), True)
tr2 = clockrules.Trust(Fixed(NOW, False), st, 86400)      # reboot: RTC only
case("rtc_recent_trusted", tr2.mode(NOW + 3600), "trusted")
case("rtc_stale_untrusted", tr2.mode(NOW + 2 * 86400), "untrusted")
case("backwards_untrusted", tr2.mode(NOW), "untrusted")

# a never-synchronised node: the fixed program, but lit while the sun is down by its clock
HAMBURG = (53.55, 9.99)
DEC15_1530Z = 1797348600   # 2026-12-15 15:30 UTC: after sunset (about 15:00 UTC), before 17:00 local
DEC15_1200Z = 1797336000   # 2026-12-15 12:00 UTC: daylight
case("never_synced_dusk_lit", clockrules.never_synced_level(0, HAMBURG[0], HAMBURG[1],
                                                            DEC15_1530Z), 100)
case("never_synced_day_fixed", clockrules.never_synced_level(0, HAMBURG[0], HAMBURG[1],
                                                             DEC15_1200Z), 0)
case("never_synced_no_step_lit", clockrules.never_synced_level(None, HAMBURG[0], HAMBURG[1],
                                                               DEC15_1200Z), 100)

# the node's time zone: a POSIX TZ rule (daylight saving time) in Node.level
import app  # noqa: E402
import nodecfg  # noqa: E402


class Out:
    """An output that remembers its level."""

    def set(self, level):
        """Remember."""
        self.level = level


def node_with(tz_key, tz_value, t, **extra):
    """A Node (the example's program at Hamburg) with ``tz_key: tz_value``, its clock synced at ``t``."""
    cfg = {"device": "node-0042", "site": "harbour", "latitude": 53.55, "longitude": 9.99,
           "mqtt": {"host": "127.0.0.1"}, "output": {"kind": "file", "path": TMP + "/lvl"},
           "program": [{"at": "sunset", "offset_min": -10, "level": 100},
                       {"at": "23:00", "level": 50}, {"at": "05:00", "level": 80},
                       {"at": "sunrise", "offset_min": 10, "level": 0}],
           "state_dir": TMP, tz_key: tz_value}
    for k in extra:
        cfg[k] = extra[k]
    if "programs" in extra:
        cfg.pop("program")
    path = TMP + "/tzcfg.json"
    with open(path, "w") as f:
        json.dump(cfg, f)
    n = app.Node(nodecfg.load(path), Out(), Fixed(t, True), None)
    n.trust.try_sync()
    return n


JUL1_2130Z = 1814477400    # 2027-07-01 23:30 CEST: after the 23:00 step (50 %)
DEC15_2230Z = 1828909800   # 2027-12-15 23:30 CET
BERLIN = "CET-1CEST,M3.5.0,M10.5.0/3"
case("tz_rule_summer_late", node_with("tz", BERLIN, JUL1_2130Z).level(JUL1_2130Z),
     (50, "trusted", "schedule"))
case("tz_fixed_offset_drifts_in_summer",
     node_with("tz_offset_min", 60, JUL1_2130Z).level(JUL1_2130Z)[0], 100)
case("tz_rule_winter_late", node_with("tz", BERLIN, DEC15_2230Z).level(DEC15_2230Z)[0], 50)
with open(TMP + "/huge.json", "w") as f:        # written in pieces: a small heap here too
    f.write('{"device": "')
    for _ in range(200):
        f.write("a" * 1000)
    f.write('"}')
with open(TMP + "/deep.json", "w") as f:        # 4,000 levels in 8,000 bytes (5,000: too big)
    for _ in range(4):
        f.write("[" * 1000)
    for _ in range(4):
        f.write("]" * 1000)


def load_error(path):
    """The first line of nodecfg.load's ValueError for ``path``."""
    try:
        nodecfg.load(path)
    except ValueError as e:
        return str(e).split(": ", 1)[1][:40]
    return None


case("config_200k_refused_before_parsing", "200014 bytes" in load_error(TMP + "/huge.json"),
     True)
case("config_4000_deep_refused", "nested" in (load_error(TMP + "/deep.json") or ""), True)
BASECFG = {"device": "a", "site": "b", "latitude": 0, "longitude": 0, "mqtt": {"host": "h"},
           "output": {"kind": "pwm", "pin": 4}, "program": [{"at": "01:00", "level": 1}]}


def fields(**kw):
    """The fields nodecfg.validate names for BASECFG updated with ``kw``."""
    c = dict(BASECFG)
    for k in kw:
        c[k] = kw[k]
    return [e.split(":")[0] for e in nodecfg.validate(c)]


case("watchdog_shorter_than_a_pass_refused", fields(tick_s=10), ["wdt_ms"])
case("watchdog_off_with_a_long_tick_ok", fields(tick_s=10, wdt_ms=0), [])
case("pwm_pin_out_of_range_refused", fields(output={"kind": "pwm", "pin": 99}), ["output.pin"])
case("pwm_freq_zero_refused", fields(output={"kind": "pwm", "pin": 4, "freq": 0}),
     ["output.freq"])
case("dali_uart_7_refused", fields(output={"kind": "dali", "uart": 7}), ["output.uart"])
case("tz_bad_rule_named", [e.split(":")[0] for e in nodecfg.validate(
    {"device": "a", "site": "b", "latitude": 0, "longitude": 0, "mqtt": {"host": "h"},
     "output": {"kind": "file", "path": "x"}, "program": [{"at": "01:00", "level": 1}],
     "tz": "Europe/Berlin"})], ["tz"])
case("tz_and_offset_refused", len([e for e in nodecfg.validate(
    {"device": "a", "site": "b", "latitude": 0, "longitude": 0, "mqtt": {"host": "h"},
     "output": {"kind": "file", "path": "x"}, "program": [{"at": "01:00", "level": 1}],
     "tz": "UTC0", "tz_offset_min": 0}) if e.startswith("tz: give")]), 1)

# the node's calendar: 24 December runs the holiday program (100 % all night)
HOLIDAY = {"programs": {"holiday": [{"at": "sunset", "level": 100}, {"at": "sunrise", "level": 0}],
                        "normal": [{"at": "sunset", "level": 100}, {"at": "23:00", "level": 30},
                                   {"at": "sunrise", "level": 0}]},
           "calendar": [{"program": "holiday", "dates": ["12-24"]}, {"program": "normal"}]}
DEC24_2230Z = 1829687400   # 2027-12-24 23:30 CET
case("calendar_holiday_full", node_with("tz", BERLIN, DEC24_2230Z, **HOLIDAY).level(
    DEC24_2230Z)[0], 100)
case("calendar_other_day_dimmed", node_with("tz", BERLIN, DEC15_2230Z, **HOLIDAY).level(
    DEC15_2230Z)[0], 30)

# events: a fault in a loop pass → failsafe_entered (output 100 %), then failsafe_left;
# a full outbox → outbox_overflow with the count
import time  # noqa: E402


def events_of(n):
    """The event names queued in ``n``'s outbox, in order."""
    out = []
    n.box.rewind()
    while True:
        r = n.box.next()
        if r is None:
            return out
        if r[1].endswith("/event"):
            out.append(json.loads(r[2])["event"])


ev = node_with("tz", BERLIN, JUL1_2130Z)
ev.next_try = time.ticks_add(time.ticks_ms(), 600000)      # stay offline
ev.level = lambda now: 1 / 0
ev.tick()
case("event_fault_full_output", ev.out.level, 100)
del ev.level
ev.tick()
case("event_failsafe_entered_and_left", events_of(ev), ["failsafe_entered", "failsafe_left"])
import os  # noqa: E402

os.mkdir(TMP + "/ovs")
ov = node_with("tz", BERLIN, JUL1_2130Z, outbox_max=16, state_dir=TMP + "/ovs")
ov.next_try = time.ticks_add(time.ticks_ms(), 600000)
for _ in range(40):
    ov.queue("lighting", {"role": "node", "levelPct": 1, "clock": "trusted", "source": "x"},
             JUL1_2130Z)
ov.tick()
ov.box.rewind()
found = []
while True:
    r = ov.box.next()
    if r is None:
        break
    if r[1].endswith("/event") and json.loads(r[2])["event"] == "outbox_overflow":
        found.append(json.loads(r[2])["detail"])
case("event_outbox_overflow_counted", [(d["dropped"], d["firstSeq"], d["reason"])
                                       for d in found][-1:], [(found[-1]["dropped"], 1, "full")]
     if found and found[-1]["dropped"] >= 16 else "no event")
