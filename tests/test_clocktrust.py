"""Clock trust: each rule of agent/lighting/clocktrust.py, the injectable clocks, and a GNSS
receiver emulated on a real pseudo-terminal."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import BUILD_DATE
from agent.clock import ManualClock, ScaledClock, ScaledClockSpec, from_environment
from agent.lighting.clocktrust import (
    STA_UNSYNC,
    TIME_ERROR,
    AssumeSynced,
    ClockTrust,
    KernelSync,
    RtcSource,
    SimulatedSync,
    kernel_sync_state,
)
from agent.lighting.gnss import GnssTime
from sim.gnss import GnssEmulator, rmc
from tests.helpers import wait_until

NOW = datetime(2026, 11, 23, 12, tzinfo=UTC).timestamp()


class FakeKernel:
    """adjtimex's answers, settable (the real call is read-only and this machine is not
    NTP-disciplined, so the rules are driven through this stand-in; the real call is
    exercised in test_real_adjtimex_is_readable)."""

    def __init__(self) -> None:
        self.state = (0, 0, 0.05)

    def __call__(self) -> tuple[int, int, float]:
        return self.state

    def unsync(self) -> None:
        self.state = (TIME_ERROR, STA_UNSYNC, 16.0)

    def sync(self, maxerror: float = 0.05) -> None:
        self.state = (0, 0, maxerror)


def test_real_adjtimex_is_readable() -> None:
    state = kernel_sync_state()
    assert state is not None
    rc, _status, maxerror = state
    assert rc >= 0 and maxerror >= 0
    vote = KernelSync().vote(NOW, 0)
    assert vote.verdict in (True, None) and vote.detail.startswith("kernel: ")


def test_kernel_vouches_only_when_synchronised_with_a_small_error() -> None:
    k = FakeKernel()
    trust = ClockTrust([KernelSync(5.0, k)], BUILD_DATE)
    assert trust.check(NOW, 0).trusted
    k.sync(maxerror=9.0)                                  # NTP stopped: the error grew
    st_ = trust.check(NOW + 5, 5)
    assert not st_.trusted and "maximum error 9.0 s" in st_.reasons[0]
    k.unsync()                                            # fake-hwclock / date -s at boot
    st_ = trust.check(NOW + 10, 10)
    assert not st_.trusted and "not synchronised" in st_.reasons[0]


def test_an_implausible_clock_is_never_trusted() -> None:
    trust = ClockTrust([AssumeSynced()], BUILD_DATE)
    assert not trust.check(datetime(2019, 5, 1, tzinfo=UTC).timestamp(), 0).trusted
    assert "before this software was built" in trust.state.reasons[0]
    assert not ClockTrust([AssumeSynced()], BUILD_DATE).check(3600.0, 0).trusted    # 1970
    assert not ClockTrust([AssumeSynced()], BUILD_DATE).check(NOW + 40 * 365 * 86400, 0).trusted


def test_a_jump_is_untrusted_until_the_kernel_resynchronises() -> None:
    k = FakeKernel()
    trust = ClockTrust([KernelSync(5.0, k)], BUILD_DATE, max_jump_s=120, kernel_rejoin_s=3600)
    assert trust.check(NOW, 0).trusted
    st_ = trust.check(NOW + 10 + 8 * 3600, 10)            # +8 h, kernel still says synced
    assert not st_.trusted and "jumped +28800 s" in st_.reasons[0]
    # ten minutes on (the old rule trusted it again here), an hour less a second: no
    assert not trust.check(NOW + 610 + 8 * 3600, 610).trusted
    assert not trust.check(NOW + 3609 + 8 * 3600, 3609).trusted
    k.unsync()                                            # the daemon notices and re-syncs
    assert not trust.check(NOW + 3620 + 8 * 3600, 3620).trusted
    k.sync()
    assert trust.check(NOW + 3630, 3630).trusted          # stepped back by NTP: trusted


def test_kernel_that_stays_synchronised_after_a_jump_is_trusted_after_the_rejoin_time() -> None:
    k = FakeKernel()
    trust = ClockTrust([KernelSync(5.0, k)], BUILD_DATE, kernel_rejoin_s=3600)
    trust.check(NOW, 0)
    assert not trust.check(NOW + 600, 10).trusted         # +590 s jump
    assert not trust.check(NOW + 600 + 3000, 3010).trusted
    assert trust.check(NOW + 600 + 3601, 3611).trusted


def test_assume_synced_never_explains_a_jump() -> None:
    trust = ClockTrust([AssumeSynced()], BUILD_DATE)
    assert trust.check(NOW, 0).trusted
    for t in (10, 600, 86400):
        assert not trust.check(NOW + 3 * 3600 + t, t).trusted


def test_a_simulated_clock_vouches_for_itself_as_told() -> None:
    synced = ScaledClock(ScaledClockSpec(NOW, 60.0, synced=True))
    assert ClockTrust([SimulatedSync(synced)], BUILD_DATE).check(NOW, 0).trusted
    unsynced = ScaledClock(ScaledClockSpec(NOW, 60.0, synced=False))
    st_ = ClockTrust([SimulatedSync(unsynced)], BUILD_DATE).check(NOW, 0)
    assert not st_.trusted and "no time source vouches" in st_.reasons[0]


def test_rtc_agreement_vouches_and_disagreement_contradicts(tmp_path: Path) -> None:
    # a regular file stands in for /sys/class/rtc/rtc0/since_epoch (no RTC on this machine)
    f = tmp_path / "since_epoch"
    f.write_text(f"{int(NOW)}\n")
    rtc = RtcSource(f, tolerance_s=5)
    k = FakeKernel()
    assert ClockTrust([KernelSync(5.0, k), rtc], BUILD_DATE).check(NOW + 1, 0).trusted
    f.write_text(f"{int(NOW) - 3600}\n")               # the wall clock is an hour ahead
    st_ = ClockTrust([KernelSync(5.0, k), rtc], BUILD_DATE).check(NOW, 0)
    assert not st_.trusted and "+3600 s off the RTC" in st_.reasons[0]
    f.unlink()
    assert RtcSource(f).vote(NOW, 0).verdict is None
    import os
    os.mkfifo(f)                       # a FIFO nobody writes: no vote, and no hang
    v = RtcSource(f).vote(NOW, 0)
    assert v.verdict is None and "not a regular file" in v.detail, v


def test_gnss_over_a_pty_vouches_contradicts_and_goes_stale() -> None:
    emu = GnssEmulator(period_s=0.2).start()
    gnss = GnssTime(emu.path, tolerance_s=2.0, max_age_s=2.0)
    try:
        assert wait_until(lambda: gnss.fix is not None, 5), gnss.error
        v = gnss.vote(time.time(), time.monotonic())
        assert v.verdict is True, v.detail
        emu.offset_s = -600                                # the receiver's time: 10 min behind
        assert wait_until(lambda: gnss.vote(time.time(), time.monotonic()).verdict is False, 5)
        assert "+600 s off GNSS" in gnss.vote(time.time(), time.monotonic()).detail
        emu.offset_s, emu.fix = 0, False                    # no satellites
        assert wait_until(lambda: gnss.vote(time.time(), time.monotonic()).verdict is None, 5)
        emu.garbage, emu.fix = True, True                   # noise and bad checksums between
        n = gnss.rejected
        assert wait_until(lambda: gnss.rejected > n + 2, 5)
        assert wait_until(lambda: gnss.vote(time.time(), time.monotonic()).verdict is True, 5)
        emu.stop()                                          # receiver unplugged
        assert wait_until(lambda: gnss.vote(time.time(), time.monotonic()).verdict is None, 5)
    finally:
        gnss.close()
        emu.stop()


def test_gnss_settles_a_jump_at_once() -> None:
    k = FakeKernel()
    gnss = GnssTime("/dev/null-nothing-here")
    try:
        trust = ClockTrust([KernelSync(5.0, k), gnss], BUILD_DATE)
        assert trust.check(NOW, 100).trusted
        gnss.feed_line(rmc(NOW + 3 * 3600 + 10, True), 110)
        assert trust.check(NOW + 3 * 3600 + 10, 110).trusted   # GNSS agrees with the new time
    finally:
        gnss.close()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_gnss_parser_survives_any_line(line: str) -> None:
    g = GnssTime.__new__(GnssTime)
    g.fix, g.lines, g.rejected = None, 0, 0
    g.feed_line(line, 0.0)
    assert g.lines == 1 and (g.fix is None or isinstance(g.fix.utc, float))


def test_scaled_clocks_agree_across_instances_and_jump_as_specified() -> None:
    """Checked against the real time measured around each reading, so that a slow or busy
    machine (a reading late by any amount) cannot fail it."""
    anchor = time.time()
    spec = ScaledClockSpec(NOW, speed=600.0, anchor=anchor, jumps=((0.3, 3600.0),))

    def bounds(read: Callable[[], float]) -> tuple[float, float, float]:
        """(earliest, reading, latest): the simulated wall time the spec allows at the real
        times just before and just after the reading (jumps included)."""
        def sim(r: float) -> float:
            return NOW + r * 600 + (3600 if r >= 0.3 else 0)
        before = time.time() - anchor
        value = read()
        after = time.time() - anchor
        return sim(before) - 1, value, sim(after) + 1

    a = ScaledClock(spec)
    b = ScaledClock(ScaledClockSpec.parse(spec.to_env()))
    for clock in (a, b):                         # both follow the same spec, jump included
        lo, v, hi = bounds(clock.time)
        assert lo <= v <= hi
    r0, m0, r0_ = time.monotonic(), a.monotonic(), time.monotonic()
    while time.time() - anchor < 0.4:            # past the jump, however long that takes
        time.sleep(0.05)
    lo, v, hi = bounds(a.time)
    assert lo <= v <= hi and v >= NOW + 3600 + 0.4 * 600
    r1, m1, r1_ = time.monotonic(), a.monotonic(), time.monotonic()
    assert (r1 - r0_) * 600 - 0.01 <= m1 - m0 <= (r1_ - r0) * 600 + 0.01   # it never jumps
    stop = threading.Event()
    t0 = time.monotonic()
    assert a.wait(stop, 60) is False                # 60 simulated seconds: 0.1 s real
    assert 0.09 <= time.monotonic() - t0 < 30


def test_clock_spec_errors_are_clear() -> None:
    assert isinstance(from_environment({}), type(from_environment({"X": "1"})))
    for bad, words in [("speed=2", "'start'"), ("start=yesterday", "ISO-8601"),
                       ("start=2026-01-01T00:00Z,speed=0", "speed must be"),
                       ("start=2026-01-01T00:00Z,pace=3", "keys start"),
                       ("start=2026-01-01T00:00Z,synced=yes", "synced must be 0 or 1"),
                       ("start=2026-01-01T00:00Z,jump=x", "numbers"),
                       ("start=2026-01-01T00:00Z,anchor=nan", "anchor must be"),
                       ("start=2026-01-01T00:00Z,anchor=-1e20", "anchor must be"),
                       ("start=2026-01-01T00:00Z,jump=1:nan", "jump=R:.S needs"),
                       ("start=2026-01-01T00:00Z,jump=1:1e300", "jump=R:.S needs"),
                       ("start=9999-12-31T23:59:59Z", "between 1971 and 2199")]:
        with pytest.raises(ValueError, match=words):
            from_environment({"POLELINK_SIM_CLOCK": bad})


def test_manual_clock_moves_only_when_told() -> None:
    c = ManualClock(NOW, 5.0)
    assert (c.time(), c.monotonic()) == (NOW, 5.0)
    c.wait(threading.Event(), 30)
    assert (c.time(), c.monotonic()) == (NOW + 30, 35.0)
    c.set_wall(NOW - 100)
    assert (c.time(), c.monotonic()) == (NOW - 100, 35.0)
