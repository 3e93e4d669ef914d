"""The clock-shift tool that proves the suite does not depend on when it runs
(``python -m tests.clockshift``; the full campaign is ``make test-clock``): a command and
every process it starts read the shifted wall clock, while timeouts (the monotonic clock),
sleeps and waits behave as on a machine whose clock is simply set to another hour."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.clockshift import (
    CAMPAIGN,
    EU_SPRING_FORWARD,
    BuildError,
    NoCompiler,
    Setting,
    build,
    environment,
    main,
    real_time,
    shift_for,
    target_time,
)
from tests.conftest import ROOT, SHARED

PROBE = """
import json, subprocess, sys, threading, time
t0, m0 = time.time(), time.monotonic()
time.sleep(0.2)
threading.Event().wait(0.2)
child = subprocess.run([sys.executable, "-c", "import time; print(time.time())"],
                       capture_output=True, text=True).stdout
print(json.dumps({"wall": t0, "mono": m0, "waited": time.monotonic() - m0,
                  "child": float(child)}))
"""


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built shim. Without a C compiler these tests skip, except in CI (``CI=true``,
    which installs one): there, and whenever the file does not compile, they fail."""
    try:
        return build(tmp_path_factory.mktemp("clockshift"))
    except NoCompiler as e:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI must build the clock shim: {e}")
        pytest.skip(str(e))


def test_a_process_and_its_children_read_the_shifted_wall_clock(shim: Path) -> None:
    setting = Setting("15:50", "Europe/Berlin")
    now = real_time()                   # this test may itself run shifted (make test-clock)
    env = environment(setting, shim, now)
    target = now + shift_for(setting, now)
    real_mono = time.monotonic()
    out = json.loads(subprocess.run([sys.executable, "-c", PROBE], env=env, check=True,
                                    capture_output=True, text=True, timeout=60).stdout)
    seen = datetime.fromtimestamp(out["wall"], UTC)
    assert (seen.hour, seen.minute) == (15, 50)
    assert abs(out["child"] - out["wall"]) < 60           # children inherit the shift
    assert abs(out["mono"] - real_mono) < 60               # timeouts' clock is untouched
    assert 0.4 <= out["waited"] < 30                       # sleeps and waits still wait
    date = subprocess.run(["date", "-u", "+%H:%M"], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert date in ("15:50", "15:51")
    tz = subprocess.run([sys.executable, "-c", "import time; print(time.strftime('%Z'))"],
                        env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert tz == datetime.fromtimestamp(target, ZoneInfo("Europe/Berlin")).tzname()  # CET/CEST


def test_micropython_reads_the_shifted_clock(shim: Path) -> None:
    mp = SHARED / "bin" / "micropython"
    if not mp.exists():
        pytest.skip("needs ../shared (MicroPython)")
    env = environment(Setting("07:40"), shim)
    out = subprocess.run([str(mp), "-c", "import time; print(time.gmtime()[3:5])"], env=env,
                         capture_output=True, text=True, check=True, timeout=30).stdout
    assert out.strip() in ("(7, 40)", "(7, 41)")


@pytest.mark.parametrize("at", ["00:00", "07:40", "12:00", "23:59"])
def test_the_shift_is_forward_and_lands_on_the_hour(at: str) -> None:
    now = datetime(2026, 12, 6, 17, 53, 12, tzinfo=UTC).timestamp()
    s = shift_for(Setting(at), now)
    assert 0 < s <= 86400
    assert datetime.fromtimestamp(now + s, UTC).strftime("%H:%M") == at


def test_a_date_in_the_past_is_refused() -> None:
    now = datetime(2026, 12, 6, tzinfo=UTC).timestamp()
    assert shift_for(Setting("01:30", day="2027-03-28"), now) > 100 * 86400
    with pytest.raises(ValueError, match="only moved forward"):
        shift_for(Setting("01:30", day="2026-01-01"), now)


@pytest.mark.parametrize("when", ["2026-12-06T17:53:12", "2027-06-21T03:00:00",
                                  "2027-03-28T00:56:00"])
def test_sunrise_sunset_and_the_spring_forward_night_follow_the_date(when: str) -> None:
    """The campaign's sunrise and sunset are the node site's, whatever the season, and its
    last setting is 5 minutes before the next change to summer time in Europe."""
    from zoneinfo import ZoneInfo

    from agent.common.sun import elevation_at

    now = datetime.fromisoformat(when).replace(tzinfo=UTC).timestamp()
    for event in ("sunrise", "sunset"):
        t = target_time(Setting(event), now)
        assert now < t <= now + 86400 + 600
        assert abs(elevation_at(53.55, 9.99, t) - -0.833) < 0.1
    t = target_time(Setting("00:55", "Europe/Berlin", EU_SPRING_FORWARD), now)
    berlin = ZoneInfo("Europe/Berlin")
    before = datetime.fromtimestamp(t, berlin)
    after = datetime.fromtimestamp(t + 600, berlin)
    assert t > now and (before.tzname(), after.tzname()) == ("CET", "CEST")


def test_the_campaign_covers_four_hours_zones_and_a_date() -> None:
    now = datetime(2026, 12, 6, tzinfo=UTC).timestamp()
    hours = {datetime.fromtimestamp(target_time(s, now), UTC).hour for s in CAMPAIGN}
    assert len(hours) >= 4 and len({s.tz for s in CAMPAIGN}) >= 4
    assert any(s.day for s in CAMPAIGN)


def run_main(argv: list[str], shim: Path | None, monkeypatch: pytest.MonkeyPatch,
             capfd: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    if shim is not None:
        monkeypatch.setattr("tests.clockshift.build", lambda cache=None: shim)
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = int(e.code or 0)
    got = capfd.readouterr()
    return rc, got.out, got.err


def test_the_command_line_runs_each_setting_and_says_which_failed(
        shim: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    rc, out, err = run_main(["--at", "03:00,21:30", "--", sys.executable, "-c",
                             "import time,sys; print('hi'); "
                             "sys.exit(time.gmtime().tm_hour == 21)"],
                            shim, monkeypatch, capfd)
    assert rc == 1
    assert out == "hi\nhi\n"                     # the tool's own lines go to stderr
    assert "passed" in err and "FAILED (exit 1)" in err and "21:30 UTC" in err
    rc, _, err = run_main(["--at", "sunset", "--", sys.executable, "-c",
                           "import sys; sys.exit(3)"], shim, monkeypatch, capfd)
    assert rc == 3 and "summary" not in err       # one setting: the command's own status


@pytest.mark.parametrize("argv,words", [
    (["--at", "03:00"], "no command given"),
    (["--at", "25:00", "--", "true"], "expected HH:MM"),
    (["--at", "noon", "--", "true"], "expected HH:MM"),
    (["--at", "7:40,", "--", "true"], "expected HH:MM"),
    (["--date", "tomorrow", "--", "true"], "expected YYYY-MM-DD"),
    (["--date", "2001-01-01", "--", "true"], "has passed"),
    (["--date", "2400-01-01", "--", "true"], "up to 2199"),
    (["--tz", "Mars/Olympus", "--", "true"], "not a time zone"),
    (["--place", "95,0", "--", "true"], "latitude"),
    (["--campaign", "--at", "03:00", "--", "true"], "--campaign has its own settings"),
])
def test_usage_errors_are_one_line_and_exit_2(argv: list[str], words: str, shim: Path,
                                             capfd: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    rc, out, err = run_main(argv, shim, monkeypatch, capfd)
    assert rc == 2 and words in err and "Traceback" not in err and out == "", err


def test_a_missing_command_is_127_and_a_compiler_problem_is_one_line(
        shim: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    rc, _, err = run_main(["--", "no-such-command-x"], shim, monkeypatch, capfd)
    assert rc == 127 and "command not found" in err
    monkeypatch.undo()
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(NoCompiler, match="not there"):
        build(tmp_path / "a")
    broken = tmp_path / "broken.c"
    broken.write_text("#error this does not compile\n")
    monkeypatch.delenv("CC")
    monkeypatch.setattr("tests.clockshift.SOURCE", broken)
    with pytest.raises(BuildError, match="does not compile"):   # a failure, not a skip
        build(tmp_path / "b")


def test_a_time_sensitive_test_passes_at_two_other_hours(shim: Path) -> None:
    """The short mode of ``make test-clock``: one test that reads the machine's clock (the
    rig places the pole where it is noon now; a GNSS receiver, the agent and the lamps
    then agree or disagree about the time) run with the clock at two other hours."""
    test = "tests/test_failsafe.py::test_untrusted_clock_keeps_lamps_on_by_day"
    for setting in (Setting("15:50", "Europe/Berlin"), Setting("00:00", "Asia/Kolkata")):
        env = environment(setting, shim)
        env.pop("PYTEST_ADDOPTS", None)
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "-p", "no:xdist", test], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, (setting, r.stdout[-3000:], r.stderr[-2000:])
        assert "1 passed" in r.stdout, r.stdout[-2000:]
