"""DALI driver ↔ gateway emulator through real pseudo-terminals, both codecs, with faults."""

from __future__ import annotations

import math
import random
import time

import pytest
from dali.address import GearBroadcast, GearGroup, GearShort
from dali.gear import led
from dali.gear.general import DAPC, DTR0, QueryActualLevel, QueryMaxLevel, SetMaxLevel
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.bus import BusCollision, BusDisconnected, BusProtocolError, BusTimeout
from drivers.dali import FoxtronCodec, HatCodec, SerialDaliBus, ops
from drivers.dali.codecs import Reply
from sim.dali import DaliEmulator, PoleGear, make_gear
from tests.helpers import SLACK_S, wait_until

CODEC_NAMES = ["hat", "foxtron"]


@pytest.fixture(params=CODEC_NAMES)
def rig(request: pytest.FixtureRequest):
    emu = DaliEmulator(make_gear(4), request.param, late_s=0.4).start()
    bus = SerialDaliBus(emu.path, request.param, timeout=0.2, retries=3)
    yield emu, bus
    bus.close()
    emu.stop()


def levels(bus: SerialDaliBus, n: int = 4) -> list[int]:
    return [bus.send(QueryActualLevel(GearShort(i))).value for i in range(n)]


def test_levels_by_short_group_and_broadcast(rig) -> None:
    emu, bus = rig
    ops.set_level(bus, GearBroadcast(), 80)
    assert levels(bus) == [80, 80, 80, 80]
    ops.set_level(bus, GearGroup(1), 200)             # gear 1 and 3 (groups by parity)
    assert levels(bus) == [80, 200, 80, 200]
    ops.set_level(bus, ops.parse_address("short:2"), 254)
    assert levels(bus) == [80, 200, 254, 200]
    assert [g.level for g in emu.gear] == [80, 200, 254, 200]
    st_ = ops.query_gear(bus, 2)
    assert st_ is not None and st_.lamp_on and not st_.lamp_failure and st_.level == 254
    assert ops.query_gear(bus, 9) is None             # nobody at 9


def test_config_commands_are_sent_twice_and_dt6_enabled_first(rig) -> None:
    emu, bus = rig
    bus.send(DTR0(150))
    bus.send(SetMaxLevel(GearShort(0)))               # a send-twice configuration command
    assert bus.send(QueryMaxLevel(GearShort(0))).value == 150
    assert emu.stats.single_config_ignored == 0
    bus.send(DAPC(GearShort(0), 254))
    assert emu.gear[0].level == 150                   # clamped by the new maximum
    # the emulator, like real gear, ignores a configuration command sent only once
    emu.handle(16, SetMaxLevel(GearShort(1)).frame.as_integer, twice=False)
    assert emu.stats.single_config_ignored == 1 and emu.gear[1].level_max == 254
    bus.send(led.QueryGearType(GearShort(0)))         # DT6 command
    assert emu.stats.commands[-2:] == ["EnableDeviceType(6)", str(led.QueryGearType(GearShort(0)))]


def test_scenes_and_lamp_failure(rig) -> None:
    emu, bus = rig
    ops.store_scene(bus, GearBroadcast(), 5, 123)
    ops.go_to_scene(bus, GearGroup(0), 5)
    assert levels(bus) == [123, 0, 123, 0]
    emu.gear[2].lamp_failure = True
    s = ops.query_gear(bus, 2)
    assert s is not None and s.lamp_failure and not s.lamp_on


def test_d4i_energy_and_power_grow_with_level_and_time(rig) -> None:
    emu, bus = rig
    emu.gear[1].rated_w = 3600.0                      # 1 Wh per second at full output
    ops.set_level(bus, GearShort(1), 254)
    t0 = time.monotonic()
    r1 = ops.read_d4i(bus, 1)
    t1 = time.monotonic()
    time.sleep(1.2)
    t2 = time.monotonic()
    r2 = ops.read_d4i(bus, 1)
    t3 = time.monotonic()
    assert r1.active_power_w == pytest.approx(3600, rel=0.01)
    assert r2.active_energy_wh is not None and r1.active_energy_wh is not None
    # 1 Wh per second between the two reads, however long the machine took for them: the
    # bank holds whole Wh, each read at some time within its call
    diff = r2.active_energy_wh - r1.active_energy_wh
    assert math.floor(t2 - t1) <= diff <= math.ceil(t3 - t0) and diff >= 1
    assert r2.operating_time_s == 3600 and r2.gear_temperature_c == 30.0
    assert r2.light_source_temperature_c == 100.0 and r2.overall_failure_count == 1
    ops.set_level(bus, GearShort(1), 0)
    assert ops.read_d4i(bus, 1).active_power_w == 0


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_commissioning_gives_unique_addresses_despite_clashing_random_addresses(codec: str
                                                                                ) -> None:
    rng = random.Random(3)
    clash = 0x5A5A5A
    gear = [PoleGear(None, random_preload=[clash if i < 3 else rng.randrange(1 << 24),
                                           rng.randrange(1 << 24)]) for i in range(8)]
    emu = DaliEmulator(gear, codec).start()
    try:
        with SerialDaliBus(emu.path, codec) as bus:
            found = ops.commission(bus)
        assert sorted(g.shortaddr for g in gear) == list(range(8))
        assert found == list(range(8))
    finally:
        emu.stop()


@pytest.mark.parametrize("fault", ["collision", "resend", "garbled"])
def test_transient_faults_are_retried(rig, fault: str) -> None:
    emu, bus = rig
    if fault == "resend" and emu.codec_name != "hat":
        pytest.skip("the Foxtron protocol has no transmit-collision reply")
    ops.set_level(bus, GearShort(0), 77)
    emu.inject(fault, fault)                          # twice, then fine
    assert bus.send(QueryActualLevel(GearShort(0))).value == 77
    assert bus.stats["retries"] == 2


def test_persistent_faults_end_in_typed_errors_in_bounded_time(rig) -> None:
    emu, bus = rig
    cases = [("collision", BusCollision), ("garbled", BusProtocolError)]
    if emu.codec_name == "hat":
        cases.append(("resend", BusCollision))
    for fault, exc in cases:
        emu.inject(*[fault] * 4)
        t0 = time.monotonic()
        with pytest.raises(exc):
            bus.send(QueryActualLevel(GearShort(0)))
        assert time.monotonic() - t0 < 2 + SLACK_S
    emu.inject("silent")
    t0 = time.monotonic()
    with pytest.raises(BusTimeout):
        bus.send(QueryActualLevel(GearShort(0)))
    assert time.monotonic() - t0 < 0.5 + SLACK_S


def test_late_reply_times_out_and_does_not_poison_the_next_command(rig) -> None:
    """An answer later than twice the deadline: BusTimeout, and when it does come it is not
    taken for the next command's."""
    emu, bus = rig
    emu.late_s = 1.0
    ops.set_level(bus, GearShort(3), 99)
    emu.inject("late")
    with pytest.raises(BusTimeout):
        bus.send(QueryActualLevel(GearShort(3)))
    assert wait_until(lambda: emu.stats.late_replies_sent == 1, 5 + SLACK_S)  # it arrives
    ops.set_level(bus, GearShort(3), 120)
    assert bus.send(QueryActualLevel(GearShort(3))).value == 120
    assert bus.late_replies == 0 and bus.timeout == bus.base_timeout


def test_a_slow_gateway_lengthens_the_deadline_instead_of_failing(rig) -> None:
    """Every answer 0.25 s late against a 0.2 s deadline: the first late answer is waited
    for and used, the deadline becomes 1.5× longer, and every answer is right (one gear's
    answer never read as another's)."""
    emu, bus = rig
    for a in range(4):
        ops.set_level(bus, GearShort(a), 100 + 10 * a)
    emu.reply_delay_s = 0.25
    got = [bus.send(QueryActualLevel(GearShort(a))).value for a in range(4) for _ in range(3)]
    assert got == [100 + 10 * a for a in range(4) for _ in range(3)]
    # at least the first answer was late; a loaded machine may make a later one late too
    # (each then lengthens the deadline again), never past the cap
    assert bus.late_replies >= 1 and 0.3 - 1e-9 <= bus.timeout <= bus.max_timeout


def test_a_gateway_quick_again_gives_the_lengthened_deadline_back(rig) -> None:
    """A slow spell lengthens the deadline; once the gateway answers quickly again, the
    deadline shrinks back to the configured one after a run of quick answers (each
    answer right throughout), so a dead gateway is noticed as fast as before."""
    from drivers.dali.serial_bus import SHRINK_AFTER

    emu, bus = rig
    ops.set_level(bus, GearShort(1), 150)
    emu.reply_delay_s = 0.3                      # 1.5 x the 0.2 s deadline
    assert bus.send(QueryActualLevel(GearShort(1))).value == 150
    assert bus.timeout > bus.base_timeout
    emu.reply_delay_s = 0.0
    for _ in range(4 * SHRINK_AFTER):
        assert bus.send(QueryActualLevel(GearShort(1))).value == 150
        if bus.timeout == bus.base_timeout:
            break
    assert bus.timeout == bus.base_timeout


def test_unplugged_gateway_is_a_typed_error(rig) -> None:
    emu, bus = rig
    emu.unplug()
    t0 = time.monotonic()
    with pytest.raises((BusDisconnected, BusTimeout)):
        bus.send(QueryActualLevel(GearShort(0)))
    assert time.monotonic() - t0 < 1 + SLACK_S
    with pytest.raises(BusDisconnected, match="cannot open"):
        SerialDaliBus("/dev/does-not-exist", "hat")


def test_random_faults_never_hang_or_crash() -> None:
    emu = DaliEmulator(make_gear(2), "hat", fault_rate=0.3, seed=9, late_s=0.3).start()
    ok = errors = 0
    try:
        with SerialDaliBus(emu.path, "hat", timeout=0.15, retries=2) as bus:
            t0 = time.monotonic()
            for i in range(60):
                try:
                    ops.set_level(bus, GearShort(i % 2), i)
                    bus.send(QueryActualLevel(GearShort(i % 2)))
                    ok += 1
                except (BusCollision, BusProtocolError, BusTimeout):
                    errors += 1
            assert time.monotonic() - t0 < 60
    finally:
        emu.stop()
    assert ok > 20 and emu.stats.faults_injected > 10


def test_codecs_against_the_protocol_documents() -> None:
    # Foxtron's "Communication protocol" v1.7: data 01 00 10 FF 10 has checksum DF
    assert FoxtronCodec.wrap(bytes([0x01, 0x00, 0x10, 0xFF, 0x10])) == b"\x01010010FF10DF\x17"
    # QUERY STATUS to short address 1 as a type-0B send (docek/ha-foxtron-dali's example)
    assert FoxtronCodec().encode(16, 0x0390) == b"\x010B001003900051\x17"
    assert FoxtronCodec().encode(16, 0x0390, twice=True) == b"\x010B001003900150\x17"
    fox = FoxtronCodec()
    assert fox.feed(FoxtronCodec.wrap(bytes([0x0D, 16, 8, 0x03, 0x90, 0x04]))) == [
        Reply("backward", 4, bytes([0x0D, 16, 8, 0x03, 0x90, 0x04]))]
    assert fox.feed(FoxtronCodec.wrap(bytes([0x0E, 16, 0xFF, 0x05])))[0].kind == "none"
    assert fox.feed(FoxtronCodec.wrap(bytes([0x0D, 16, 0, 0x03, 0x90])))[0].kind == "collision"
    ev = fox.feed(FoxtronCodec.wrap(bytes([0x05, 0x01])))[0]
    assert (ev.kind, ev.info) == ("event", "bus_power:lost")
    assert fox.feed(b"\x010B001003900052\x17")[0].kind == "garbled"       # bad checksum
    assert fox.feed(b"\x010b001003900051\x17")[0].kind == "garbled"       # lower case
    # ATX LED HAT (al-dali-pi scripts, python-dali's atxled driver)
    hat = HatCodec()
    assert hat.encode(16, 0xFE80) == b"hFE80\n"                 # "all on 128"
    assert hat.encode(16, 0x012E, twice=True) == b"t012E\n"     # DTR to fade time, twice
    assert hat.encode(24, 0x123456) == b"l123456\n"
    assert hat.encode(25, 0x1234567) == b"m01234567\n"          # one hex pair per byte
    assert hat.replies_per_frame(True) == 2 and hat.replies_per_frame(False) == 1
    assert [r.kind for r in hat.feed(b"J32\nN\nX\nZ\n")] == ["backward", "none", "collision",
                                                              "resend"]
    assert hat.feed(b"JFA\n")[0].value == 0xFA and hat.feed(b"jfa\n")[0].value == 0xFA
    power = hat.feed(b"D00\nD02\nD01\nD03\n")
    assert [r.info for r in power] == ["bus_power:lost", "bus_power:ok", "bus_power:stuck_high",
                                       "bus_power:unknown"]
    assert hat.feed(b"HFF05\n")[0].info == "bus_frame" and not hat.feed(b"HFF05\n")[0].is_answer
    assert hat.feed(b"V0203\n")[0].info == "version:hw 02 fw 03"
    assert hat.parse_request(b"d") == "d" and hat.parse_request(b"t012E") == (16, 0x012E, True)
    assert hat.parse_request(b"hFE") is None and hat.parse_request(b"qFE80") is None


class ScriptedHat:
    """A pty peer answering like the HAT, with the second answer to a send-twice request
    arriving late (after the first, as the second frame takes ~25 ms on the bus)."""

    def __init__(self) -> None:
        import os
        import threading
        import tty

        self.master, self.slave = os.openpty()
        tty.setraw(self.master)
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.stop = threading.Event()
        threading.Thread(target=self.run, daemon=True).start()

    def run(self) -> None:
        import os
        import select

        buf = b""
        while not self.stop.is_set():
            if not select.select([self.master], [], [], 0.05)[0]:
                continue
            buf += os.read(self.master, 100)
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.startswith(b"t"):
                    os.write(self.master, b"N\n")
                    time.sleep(0.03)
                    os.write(self.master, b"N\n")
                elif line.startswith(b"h"):
                    os.write(self.master, b"J2A\n")


def test_both_answers_to_a_send_twice_frame_are_read() -> None:
    peer = ScriptedHat()
    try:
        with SerialDaliBus(peer.path, "hat", timeout=0.2) as bus:
            for _ in range(5):
                bus.send(DTR0(5))
                bus.send(SetMaxLevel(GearShort(0)))       # t…: N, then N 30 ms later
                assert bus.send(QueryActualLevel(GearShort(0))).value == 0x2A   # not the N
    finally:
        peer.stop.set()


@pytest.mark.parametrize("codec", CODEC_NAMES)
def test_bus_power_failure_sends_gear_to_its_failure_level(codec: str) -> None:
    emu = DaliEmulator(make_gear(2), codec).start()
    try:
        with SerialDaliBus(emu.path, codec) as bus:
            if codec == "hat":
                assert bus.query_bus_power() == "ok"
            ops.set_level(bus, GearBroadcast(), 80)
            emu.fail_bus_power()
            assert all(g.level == 254 for g in emu.gear)   # factory failure level: full
            if codec == "hat":
                assert bus.query_bus_power() == "lost"
            assert ops.query_gear(bus, 0) is None           # no gear answers without power
            if codec == "foxtron":
                bus.send(QueryActualLevel(GearShort(0)))
                assert bus.power == "lost"                  # reported unasked by the converter
    finally:
        emu.stop()


def test_replug_behind_a_stable_link(tmp_path) -> None:
    emu = DaliEmulator(make_gear(1), "hat", link=tmp_path / "dali0").start()
    try:
        bus = SerialDaliBus(emu.path, "hat")
        first = emu.pty
        emu.unplug()
        with pytest.raises((BusDisconnected, BusTimeout)):
            bus.send(QueryActualLevel(GearShort(0)))
        bus.close()
        with pytest.raises(BusDisconnected):
            SerialDaliBus(emu.path, "hat")                  # the link dangles while unplugged
        emu.replug()
        assert emu.pty != first or emu.path.endswith("dali0")
        with SerialDaliBus(emu.path, "hat") as bus2:
            ops.set_level(bus2, GearShort(0), 99)
            assert bus2.send(QueryActualLevel(GearShort(0))).value == 99
    finally:
        emu.stop()


def test_a_second_process_cannot_open_a_port_in_use(rig) -> None:
    import subprocess
    import sys

    emu, _bus = rig
    r = subprocess.run([sys.executable, "-c",
                        "import sys; from drivers.dali import SerialDaliBus\n"
                        "from drivers.bus import BusInUse\n"
                        f"try: SerialDaliBus({emu.path!r}, 'hat')\n"
                        "except BusInUse as e: print(e); sys.exit(7)"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 7, r.stderr
    assert "is in use" in r.stdout and f"pid {__import__('os').getpid()}" in r.stdout


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_reply_parsers_survive_any_bytes(data: bytes) -> None:
    for codec in (HatCodec(), FoxtronCodec()):
        for r in codec.feed(data):
            assert r.kind in ("backward", "none", "collision", "resend", "garbled")
            if r.kind == "backward":
                assert 0 <= (r.value or 0) <= 255


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([8, 16, 24, 25]), st.integers(min_value=0), st.booleans())
def test_request_round_trip(bits: int, value: int, twice: bool) -> None:
    value %= 1 << bits
    fox = FoxtronCodec()
    assert fox.feed_requests(fox.encode(bits, value, twice)) == [(bits, value, twice)]
    hat = HatCodec()
    tw = twice and bits == 16
    assert hat.feed_requests(hat.encode(bits, value, tw)) == [(bits, value, tw)]


def test_a_late_answer_in_a_memory_read_shifts_nothing() -> None:
    """A memory-bank read moves the gear's read position with every byte asked for: a late
    answer must be used, never asked for again (a resend read the next byte: the GTIN came
    back as another number)."""
    from dali.memory import info
    emu = DaliEmulator(make_gear(1), "hat", late_s=0.35).start()   # inside 2 x 0.25 s
    bus = SerialDaliBus(emu.path, "hat", timeout=0.25, retries=3)
    try:
        fast = ops._read(bus, info.GTIN, GearShort(0))
        emu.script.extend([None, None, None, "late"])       # the 2nd byte's answer is late
        slow = ops._read(bus, info.GTIN, GearShort(0))
        assert slow == fast and bus.late_replies >= 1, (fast, slow)
    finally:
        bus.close()
        emu.stop()
