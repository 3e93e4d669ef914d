"""The service pieces on their own, with real sockets, threads and files: the sd_notify
protocol (a path and an abstract socket, one nobody reads, addresses and watchdog values
no systemd sets), heartbeats of real threads (one that hangs, one that dies, one that
waits), the run records (fuzzed; corrupt ones moved aside; failed writes under a real
file-size limit), systemd's exit variables and the ``agent service-exit`` hook as a
process."""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.service.heartbeat import Heartbeat, problems
from agent.service.notify import Notifier, socket_address, watchdog_interval
from agent.service.runs import (
    EXIT_FILE,
    MAX_RECORD_BYTES,
    REASONS,
    RUNS_FILE,
    RunLog,
    from_systemd,
    read_exit,
    record_from_systemd,
    state_directory,
    write_exit,
)
from agent.service.supervisor import Supervisor
from agent.service.watchdog import Watchdog
from tests.conftest import ROOT
from tests.helpers import SLACK_S, wait_until


def bound_socket(address: str | bytes) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(address)
    s.settimeout(2)
    return s


# -- sd_notify ----------------------------------------------------------------------------
def test_notify_sends_to_a_path_socket(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    rx = bound_socket(str(path))
    n = Notifier({"NOTIFY_SOCKET": str(path)})
    assert n.enabled and n.ready("up\nand running")
    msg = rx.recv(4096).decode()
    lines = msg.split("\n")
    assert "READY=1" in lines and "STATUS=up and running" in lines
    assert f"MAINPID={os.getpid()}" in lines
    assert n.watchdog() and rx.recv(4096) == b"WATCHDOG=1"
    assert n.stopping("bye") and rx.recv(4096) == b"STOPPING=1\nSTATUS=bye"
    rx.close()


def test_notify_sends_to_an_abstract_socket() -> None:
    name = f"polelink-unit-{os.getpid()}"
    rx = bound_socket("\0" + name)
    n = Notifier({"NOTIFY_SOCKET": "@" + name})
    assert socket_address("@" + name) == b"\0" + name.encode()
    assert n.status("cameras cam1 live")
    assert rx.recv(4096) == b"STATUS=cameras cam1 live"
    rx.close()


def test_notify_is_a_no_op_without_a_socket_and_survives_a_vanished_one(
        tmp_path: Path) -> None:
    assert not Notifier({}).enabled and not Notifier({}).ready("x")
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1"}).enabled
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.enabled and not n.watchdog() and not n.watchdog()   # logged, never raised


def test_watchdog_interval_is_half_watchdog_usec_for_this_process() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) \
        == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


@pytest.mark.parametrize("value", [
    "@\udcff",                          # NOTIFY_SOCKET=$'@\xff' as Python sees it
    "/run/\udcfe\udcff/notify",
    "/" + "x" * 200,                     # longer than sun_path
    "@" + "y" * 200,
])
def test_a_notify_socket_no_systemd_sets_is_off_with_one_log_line(
        value: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.service")
    assert socket_address(value) is None
    n = Notifier({"NOTIFY_SOCKET": value})
    assert not n.enabled and not n.ready("up") and not n.watchdog()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "not notifying" in lines[0], lines
    lines[0].encode("ascii")            # the undecodable bytes are shown escaped


@pytest.mark.parametrize("value", [
    "1" + "0" * 400, "1" * 4301, "18446744073709551616", "99999999999999999999999",
    "-5", " 5", "1_000", "\u0663", "5e6", "\udcff",
])
def test_a_watchdog_usec_no_systemd_sets_is_off_with_one_log_line(
        value: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.service")
    assert watchdog_interval({"WATCHDOG_USEC": value}) is None
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "not pinging the watchdog" in lines[0], lines
    assert len(lines[0]) < 200
    assert watchdog_interval({"WATCHDOG_USEC": "18446744073709551614"}) == (2**64 - 2) / 2e6


def test_a_notify_socket_nobody_reads_never_blocks_and_logs_rarely(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="agent.service")
    path = tmp_path / "n.sock"
    rx = bound_socket(str(path))                   # bound, never read (until the end)
    n = Notifier({"NOTIFY_SOCKET": str(path)})
    sent: list[bool] = []
    sender = threading.Thread(target=lambda: sent.extend(n.watchdog() for _ in range(500)),
                              daemon=True)
    t0 = time.monotonic()
    sender.start()
    sender.join(10)
    assert not sender.is_alive(), f"blocked in send after {len(sent)} messages"
    assert time.monotonic() - t0 < 5 + SLACK_S
    assert sent[0] and not sent[-1] and n.dropped == sent.count(False) > 400
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "nobody reads it" in warnings[0], warnings
    rx.settimeout(0.5)
    while True:                                    # systemd reads again
        try:
            rx.recv(100)
        except TimeoutError:
            break
    assert n.status("back") and rx.recv(100) == b"STATUS=back"
    assert any("again" in r.getMessage() and "dropped before" in r.getMessage()
               for r in caplog.records)
    rx.close()


# -- heartbeats ---------------------------------------------------------------------------
def test_a_thread_that_hangs_is_stuck_one_that_waits_is_not() -> None:
    hang, stop = threading.Event(), threading.Event()
    stuck, waiting = Heartbeat("hangs", 0.5), Heartbeat("waits", 2.5)

    def hangs() -> None:
        stuck.beat()
        hang.wait()                       # blocked where its loop cannot beat

    def waits() -> None:
        while not stop.is_set():
            waiting.wait(stop, 3.0)       # a long back-off: beats while it waits

    threads = [threading.Thread(target=f, daemon=True) for f in (hangs, waits)]
    for hb in (stuck, waiting):
        hb.arm()
    for t in threads:
        t.start()
    # the stuck one is found once its bound has passed; the waiting one, beating through
    # its back-off, never is (however late the threads run on a busy machine)
    assert wait_until(lambda: problems([stuck, waiting]), 1.6 + SLACK_S)
    found = problems([stuck, waiting])
    assert len(found) == 1 and found[0].startswith("hangs: thread") and "stuck" in found[0]
    hang.set()
    stop.set()
    for t in threads:
        t.join(5)
    assert "died" in problems([stuck])[0]
    stuck.retire()
    assert problems([stuck]) == []


def test_a_part_that_never_started_its_loop_is_a_problem() -> None:
    hb = Heartbeat("lighting", 1.0)
    hb.arm()
    assert problems([hb]) == []
    assert "has not started its loop" in problems([hb], time.monotonic() + 2)[0]


def test_the_watchdog_pings_only_while_every_part_is_healthy(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    rx = bound_socket(str(path))
    runs = RunLog(tmp_path).begin()
    wd = Watchdog(Notifier({"NOTIFY_SOCKET": str(path)}), 0.1, runs)
    hb = Heartbeat("uplink", 5.0)
    hb.beat()
    now = time.monotonic()
    assert wd.check([hb], now) == [] and rx.recv(100) == b"WATCHDOG=1"
    late = now + 10
    assert wd.check([hb], late)[0].startswith("uplink: thread MainThread stuck")
    assert rx.recv(200).startswith(b"STATUS=STUCK: uplink")
    assert read_exit(tmp_path)["reason"] == "watchdog"    # provisional: the kill comes next
    wd.check([hb], late + 1)
    rx.settimeout(0.3)
    with pytest.raises(TimeoutError):
        rx.recv(100)                                       # nothing while stuck
    hb.beat()
    assert wd.check([hb]) == [] and rx.recv(100) == b"WATCHDOG=1"
    assert read_exit(tmp_path) is None and wd.pings == 2   # recovered: the record is gone


# -- run records ----------------------------------------------------------------------------
def test_starts_are_counted_and_the_last_exit_is_read_once(tmp_path: Path) -> None:
    first = RunLog(tmp_path).begin()
    assert first.figures() == {"restarts": 1, "lastExit": None}
    second = RunLog(tmp_path).begin()              # the first left no record: a kill
    assert second.figures()["restarts"] == 2
    assert second.figures()["lastExit"]["reason"] == "unclean"
    second.end("clean", "stopped by SIGTERM")
    third = RunLog(tmp_path).begin()
    assert third.last_exit["reason"] == "clean" and third.last_exit["detail"] \
        == "stopped by SIGTERM" and third.last_exit["at"].endswith("Z")
    assert not (tmp_path / EXIT_FILE).exists() and third.starts == 3


def test_an_unwritable_state_directory_does_not_stop_the_agent(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    log = RunLog(blocker / "state").begin()       # a file where the directory should be
    assert log.figures() == {"restarts": None, "lastExit": None}
    log.end("clean")                              # logged, not raised


def test_state_directory_prefers_systemds() -> None:
    assert state_directory(Path("/data"), {}) == Path("/data")
    assert state_directory(Path("/data"), {"STATE_DIRECTORY": "/var/lib/polelink:/x"}) \
        == Path("/var/lib/polelink")


@settings(max_examples=150, deadline=None)
@given(runs=st.binary(max_size=200), exit_=st.one_of(
    st.binary(max_size=200),
    st.dictionaries(st.sampled_from(["reason", "detail", "at", "x"]),
                    st.one_of(st.none(), st.integers(), st.text(max_size=400),
                              st.sampled_from(REASONS)), max_size=4).map(
        lambda d: json.dumps(d).encode())))
def test_whatever_the_files_hold_a_start_is_counted(tmp_path_factory: pytest.TempPathFactory,
                                                    runs: bytes, exit_: bytes) -> None:
    d = tmp_path_factory.mktemp("state")
    (d / RUNS_FILE).write_bytes(runs)
    (d / EXIT_FILE).write_bytes(exit_)
    log = RunLog(d).begin()
    assert isinstance(log.starts, int) and log.starts >= 1
    last = log.last_exit
    assert last is None or (last["reason"] in REASONS and isinstance(last["detail"], str)
                            and len(last["detail"]) <= 300)
    assert json.loads((d / RUNS_FILE).read_text())["starts"] == log.starts


DEEP = b"[" * 100_000                 # the hostile tester's record: RecursionError in json


@pytest.mark.parametrize("name", [RUNS_FILE, EXIT_FILE])
@pytest.mark.parametrize(("what", "content"), [
    ("nested 100000 deep", DEEP),
    ("nested 5000 deep, under the size bound", b'{"starts": ' + b"[" * 5000),
    ("an integer of 5000 digits", b'{"starts": ' + b"7" * 5000 + b"}"),
    ("over the size bound", b'{"starts": 1' + b" " * MAX_RECORD_BYTES + b"}"),
    ("not UTF-8", b'{"reason": "clean", "detail": "\xff\xfe"}'),
    ("not JSON", b'{"starts": 3'),
    ("a list", b"[1, 2]"),
    ("empty", b""),
])
def test_a_corrupt_record_is_moved_aside_and_the_agent_starts(
        tmp_path: Path, name: str, what: str, content: bytes,
        caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / name).write_bytes(content)
    log = RunLog(tmp_path).begin()
    assert isinstance(log.starts, int) and log.starts >= 1, what
    assert (tmp_path / (name + ".corrupt")).read_bytes() == content
    moved = [r.getMessage() for r in caplog.records if "moved aside" in r.getMessage()]
    assert len(moved) == 1 and name in moved[0], (what, moved)
    assert json.loads((tmp_path / RUNS_FILE).read_text())["starts"] == log.starts
    assert not list(tmp_path.glob("*.tmp"))
    # the next start meets a sound record
    caplog.clear()
    assert RunLog(tmp_path).begin().starts == log.starts + 1
    assert not any("moved aside" in r.getMessage() for r in caplog.records)


def test_records_that_are_no_files_are_moved_aside_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / RUNS_FILE)                 # reading it would wait for a writer
    (tmp_path / EXIT_FILE).mkdir()
    (tmp_path / EXIT_FILE / "x").write_text("")
    got: list[RunLog] = []
    t = threading.Thread(target=lambda: got.append(RunLog(tmp_path).begin()), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "blocked reading a FIFO"
    assert got[0].starts == 1 and got[0].last_exit is None
    assert (tmp_path / (RUNS_FILE + ".corrupt")).is_fifo()
    assert (tmp_path / (EXIT_FILE + ".corrupt")).is_dir()


def test_an_exit_record_without_a_reason_is_moved_aside_and_details_are_printable(
        tmp_path: Path) -> None:
    (tmp_path / EXIT_FILE).write_text(json.dumps({"reason": ["clean"], "detail": "x"}))
    assert read_exit(tmp_path) is None and (tmp_path / (EXIT_FILE + ".corrupt")).exists()
    (tmp_path / EXIT_FILE).write_text(json.dumps(
        {"reason": "clean", "detail": "bad \udcff\x1b[31m end", "at": {"a": 1}}))
    rec = read_exit(tmp_path)
    assert rec == {"reason": "clean", "detail": "bad ??[31m end", "at": None}
    (tmp_path / RUNS_FILE).write_text('{"starts": true}')
    assert RunLog(tmp_path).begin().starts == 1      # a bool is no count


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    (tmp_path / EXIT_FILE).mkdir()                   # os.replace onto it fails
    (tmp_path / EXIT_FILE / "x").write_text("")
    assert not write_exit(tmp_path, "clean", "stopped")
    assert not list(tmp_path.glob("*.tmp"))


def test_a_full_disk_leaves_no_temporary_file_and_the_hook_says_so(tmp_path: Path) -> None:
    """A real full disk, per process: RLIMIT_FSIZE 0 makes every write fail (EFBIG)."""
    def full() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    clean = {k: v for k, v in os.environ.items() if k not in ("SERVICE_RESULT",)}
    done = subprocess.run([sys.executable, "-m", "agent", "service-exit"], cwd=ROOT,
                          env={**clean, "STATE_DIRECTORY": str(tmp_path),
                               "SERVICE_RESULT": "signal", "EXIT_CODE": "killed",
                               "EXIT_STATUS": "KILL"},
                          capture_output=True, text=True, timeout=60, preexec_fn=full)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "could not record the exit" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    probe = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                            "from agent.service.runs import RunLog; "
                            "r = RunLog(Path(sys.argv[1])).begin(); print(r.starts)",
                            str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                           timeout=60, preexec_fn=full)
    assert probe.returncode == 0 and probe.stdout.strip() == "None", probe.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_supervisor_starts_whatever_the_records_raise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Fault injection (a failure no real input is known to cause any more): the last line
    of defence in front of the lamps."""
    def broken(self: RunLog) -> RunLog:
        raise RuntimeError("a bug in the run records")

    monkeypatch.setattr(RunLog, "begin", broken)
    sup = Supervisor(tmp_path, {})
    assert sup.figures() == {"restarts": None, "lastExit": None}
    assert any("a bug in the run records" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("env", "reason"), [
    ({"SERVICE_RESULT": "success", "EXIT_CODE": "exited", "EXIT_STATUS": "0"}, "clean"),
    ({"SERVICE_RESULT": "watchdog", "EXIT_CODE": "dumped", "EXIT_STATUS": "ABRT"}, "watchdog"),
    ({"SERVICE_RESULT": "signal", "EXIT_CODE": "killed", "EXIT_STATUS": "KILL"}, "crash"),
    ({"SERVICE_RESULT": "core-dump", "EXIT_CODE": "dumped", "EXIT_STATUS": "SEGV"}, "crash"),
    ({"SERVICE_RESULT": "exit-code", "EXIT_CODE": "exited", "EXIT_STATUS": "3"}, "crash"),
    ({"SERVICE_RESULT": "oom-kill", "EXIT_CODE": "killed", "EXIT_STATUS": "KILL"}, "crash"),
    ({"SERVICE_RESULT": "timeout", "EXIT_CODE": "killed", "EXIT_STATUS": "KILL"}, "timeout"),
])
def test_systemds_exit_variables(env: dict[str, str], reason: str) -> None:
    got = from_systemd(env)
    assert got is not None and got[0] == reason and env["SERVICE_RESULT"] in got[1]
    assert from_systemd({}) is None


def test_the_agents_own_account_is_kept_where_systemd_agrees(tmp_path: Path) -> None:
    RunLog(tmp_path).begin().end("watchdog", "camera cam1 reader: thread camera-cam1 stuck")
    assert record_from_systemd(tmp_path, {"SERVICE_RESULT": "watchdog", "EXIT_CODE": "dumped",
                                          "EXIT_STATUS": "ABRT"}) == "watchdog"
    detail = read_exit(tmp_path)["detail"]
    assert "camera-cam1 stuck" in detail and "systemd: watchdog, dumped ABRT" in detail
    RunLog(tmp_path).begin().end("clean", "stopped by SIGTERM")
    record_from_systemd(tmp_path, {"SERVICE_RESULT": "success", "EXIT_CODE": "exited",
                                   "EXIT_STATUS": "0"})
    assert read_exit(tmp_path)["detail"] == "stopped by SIGTERM"
    RunLog(tmp_path).begin()                      # a run killed before it wrote anything
    record_from_systemd(tmp_path, {"SERVICE_RESULT": "signal", "EXIT_CODE": "killed",
                                   "EXIT_STATUS": "KILL"})
    assert read_exit(tmp_path)["reason"] == "crash"


def test_the_exec_stop_post_hook_as_systemd_runs_it(tmp_path: Path) -> None:
    def hook(*args: str, **env: str) -> subprocess.CompletedProcess:
        clean = {k: v for k, v in os.environ.items()
                 if k not in ("SERVICE_RESULT", "STATE_DIRECTORY")}
        return subprocess.run([sys.executable, "-m", "agent", "service-exit", *args],
                              cwd=ROOT, env={**clean, **env}, capture_output=True, text=True,
                              timeout=60)

    done = hook(STATE_DIRECTORY=str(tmp_path), SERVICE_RESULT="signal", EXIT_CODE="killed",
                EXIT_STATUS="KILL")
    assert done.returncode == 0 and "last exit: crash" in done.stdout, done.stderr
    assert RunLog(tmp_path).begin().last_exit["detail"] == "systemd: signal, killed KILL"
    # a corrupt record the last run left: moved aside, systemd's view recorded
    (tmp_path / EXIT_FILE).write_bytes(DEEP)
    done = hook(STATE_DIRECTORY=str(tmp_path), SERVICE_RESULT="signal", EXIT_CODE="killed",
                EXIT_STATUS="KILL")
    assert done.returncode == 0 and "last exit: crash" in done.stdout, done.stderr
    assert "Traceback" not in done.stderr and "moved aside" in done.stderr
    assert (tmp_path / (EXIT_FILE + ".corrupt")).read_bytes() == DEEP
    # the agent's own record with a detail that cannot be printed as it is
    (tmp_path / EXIT_FILE).write_text(json.dumps({"reason": "clean", "detail": "bye \udcff"}))
    done = hook(STATE_DIRECTORY=str(tmp_path), SERVICE_RESULT="success", EXIT_CODE="exited",
                EXIT_STATUS="0")
    assert done.returncode == 0 and done.stdout == "last exit: clean (bye ?)\n", done.stderr
    for args, env, words in [((), {"SERVICE_RESULT": "success"}, "no state directory"),
                             (("--state-dir", str(tmp_path)), {}, "SERVICE_RESULT is not set")]:
        done = hook(*args, **env)
        assert done.returncode == 2 and words in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
