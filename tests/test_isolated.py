"""Models in a process of their own (``agent.vision.detect.isolated``), with real model
processes: the same detections as in-process, and a process that crashes, hangs, dies
with its agent or answers garbage never raises anything but RuntimeUnavailable (restart
with back-off) or ModelError (the model's own fault). ``test_failsafe`` drives the same
faults through ``agent run`` and the lamps."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.settings.modelcard import ModelError, load_card
from agent.vision.detect import load_detector
from agent.vision.detect.isolated import IsolatedRuntime, ModelHosts
from agent.vision.detect.runtime import RuntimeUnavailable
from sim.traffic import random_training_frame
from tests.conftest import ROOT, SIMNET
from tests.helpers import SLACK_S, wait_until

SSD = ROOT / "models" / "simnet_ssd.yaml"


def gone(pid: int) -> bool:
    """True once ``pid`` is no process (or only a zombie nobody reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.fixture
def hosts():
    h = ModelHosts(backoff_min_s=0.3, backoff_max_s=1.2)
    yield h
    h.close()


@pytest.mark.parametrize("card", [SIMNET, SSD], ids=["onnx", "tflite"])
def test_a_model_in_its_own_process_detects_what_it_detects_in_this_one(hosts, card) -> None:
    inline = load_detector(card, {"car", "bus", "truck", "motorbike"}, 0.3)
    isolated = load_detector(card, {"car", "bus", "truck", "motorbike"}, 0.3, shared=hosts)
    assert isinstance(isolated.runtime, IsolatedRuntime)
    rng = np.random.default_rng(3)
    for _ in range(5):
        img, _ = random_training_frame(rng)
        a, b = inline.detect(img), isolated.detect(img)
        assert np.allclose(a.boxes, b.boxes, atol=1e-4) and np.array_equal(a.labels, b.labels)
        assert np.allclose(a.scores, b.scores, atol=1e-5)


def test_cameras_on_one_model_share_its_process_and_all_survive_its_crash(hosts) -> None:
    a = load_detector(SIMNET, {"car"}, shared=hosts)
    b = load_detector(SIMNET, {"car", "bus"}, 0.5, shared=hosts)
    assert a.runtime.host is b.runtime.host and len(hosts) == 1
    img, _ = random_training_frame(np.random.default_rng(1))
    a.detect(img), b.detect(img)
    host = a.runtime.host
    pid = host.proc.pid
    os.kill(pid, signal.SIGSEGV)
    for det in (a, b):                  # each lane finds out, the first one reaps
        with pytest.raises(RuntimeUnavailable, match="SIGSEGV"):
            det.detect(img)
    assert gone(pid) and host.failures == 1
    # within the back-off: refused at once, nothing started
    t0 = time.monotonic()
    with pytest.raises(RuntimeUnavailable) as e:
        a.detect(img)
    assert time.monotonic() - t0 < 0.2 and 0 < e.value.retry_in_s <= 0.3
    assert wait_until(lambda: time.monotonic() >= host.retry_at, 2)
    a.detect(img), b.detect(img)        # both run again, on one new process
    assert host.restarts == 1 and host.proc.pid != pid and a.runtime.host.up
    inline = load_detector(SIMNET, {"car"})
    assert np.allclose(a.detect(img).boxes, inline.detect(img).boxes, atol=1e-4)


def test_a_hung_model_process_is_killed_at_its_deadline_and_the_back_off_grows(hosts) -> None:
    det = load_detector(SIMNET, {"car"}, shared=hosts, run_timeout_s=1.0)
    host = det.runtime.host
    img, _ = random_training_frame(np.random.default_rng(2))
    det.detect(img)
    waits = []
    for _ in range(3):
        pid = host.proc.pid
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(RuntimeUnavailable, match=r"hung \(no answer within 1 s\)") as e:
            det.detect(img)
        assert time.monotonic() - t0 < 1.0 + 2 + SLACK_S
        assert wait_until(lambda p=pid: gone(p), 5)
        waits.append(e.value.retry_in_s)
        assert wait_until(lambda: time.monotonic() >= host.retry_at, 3)
        det.detect(img)                 # restarted
    # 0.3, 0.6, 1.2 (the cap): twice as long each time
    assert waits[0] < waits[1] < waits[2] <= 1.2 + 1e-6, waits
    assert host.failures == 3 and host.restarts == 3


def test_a_model_the_process_cannot_load_is_a_model_error_in_one_line(hosts, tmp_path) -> None:
    card = tmp_path / "card.yaml"
    card.write_text(SIMNET.read_text())                    # its simnet.onnx is not here
    with pytest.raises(ModelError) as e:
        load_detector(card, shared=hosts)
    assert "\n" not in str(e.value) and "not found" in str(e.value)
    bad = tmp_path / "cut.tflite"
    data = (ROOT / "models" / "simnet_ssd.tflite").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    text = SSD.read_text()
    card2 = tmp_path / "cut.yaml"
    lines = [f"file: {bad}" if ln.startswith("file:") else
             f"sha256: {hashlib.sha256(bad.read_bytes()).hexdigest()}"
             if ln.startswith("sha256:") else ln for ln in text.splitlines()]
    card2.write_text("\n".join(lines) + "\n")
    with pytest.raises(ModelError) as e:
        load_detector(card2, shared=hosts)
    assert "\n" not in str(e.value) and "cut.tflite" in str(e.value)


def test_the_model_process_ends_with_its_agent(tmp_path: Path) -> None:
    """SIGKILL the process that started a model process: nothing is left running."""
    script = tmp_path / "owner.py"
    script.write_text(f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
from agent.vision.detect import load_detector
from agent.vision.detect.isolated import ModelHosts
h = ModelHosts()
d = load_detector({str(SIMNET)!r}, shared=h)
print(d.runtime.host.proc.pid, flush=True)
time.sleep(60)
""")
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(owner.stdout.readline())          # type: ignore[union-attr]
        assert not gone(pid)
        owner.kill()
        owner.wait(10)
        assert wait_until(lambda: gone(pid), 10)
    finally:
        owner.kill()


_place = st.one_of(st.integers(-2**40, 2**40), st.text(max_size=3), st.none(),
                   st.lists(st.one_of(st.integers(-5, 10**7), st.just(2**62)), max_size=4))
_reply = st.fixed_dictionaries({"ok": st.just(True)}, optional={
    "outputs": st.one_of(st.none(), st.integers(), st.lists(
        st.one_of(st.lists(_place, max_size=3), _place), max_size=3))})


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(reply=_reply)
def test_an_answer_that_does_not_fit_is_the_process_s_fault_never_a_crash_here(
        hosts, reply) -> None:
    """Whatever the model process answers, this side raises RuntimeUnavailable (and
    restarts it) or returns arrays inside its shared memory: never another exception."""
    rt = _fuzz_runtime(hosts)
    rt._grow(4096)
    try:
        out = rt._outputs(reply)
    except RuntimeUnavailable as e:
        assert "malformed" in str(e)
    else:
        assert len(out) == len(rt._bound) and all(a.dtype == np.float32 for a in out)


_cached: dict[str, IsolatedRuntime] = {}


def _fuzz_runtime(hosts: ModelHosts) -> IsolatedRuntime:
    rt = _cached.get("rt")
    if rt is None or rt.host not in hosts.hosts():
        rt = _cached["rt"] = hosts.get(load_card(SIMNET))
    host = rt.host
    if not host.up:                     # a malformed answer stopped it: start it again
        host.retry_at = 0.0
        host.open_lane(rt.model)[0].close()
    return rt


def test_a_lamp_path_model_restarts_in_the_background_never_in_the_caller(tmp_path) -> None:
    """The dimming model's host (``background_restart``): while its process starts again
    the caller is told RuntimeUnavailable at once, never made to wait for the start."""
    from agent.lighting.dimming import DimmingModel, propose_pct

    m = DimmingModel(ROOT / "models" / "dimming.md")
    m.host.backoff_min_s = m.host.backoff_s = 0.2
    args = (23.0, -20.0, 300.0, 2000.0, 0.1, 0.6, 3)
    try:
        first = propose_pct(m, *args)
        assert first is not None
        pid = m.host.proc.pid
        os.kill(pid, signal.SIGSEGV)
        worst, got = 0.0, None
        end = time.monotonic() + 20
        while got is None and time.monotonic() < end:
            t0 = time.monotonic()
            got = propose_pct(m, *args)
            worst = max(worst, time.monotonic() - t0)
            time.sleep(0.02)
        assert got == pytest.approx(first) and m.host.restarts == 1
        # the calls that found it down or starting returned at once (the load took the
        # restart thread ~0.3 s here); the lamp path's deadline is 1 s
        assert worst < 1.0 + SLACK_S, worst
        assert m.down == ""
    finally:
        m.close()


def test_one_process_holds_every_onnx_model_and_a_reload_unloads_the_unused(
        hosts, tmp_path: Path) -> None:
    """The cameras' model and the dimming model share one process (one more Python on the
    pole, not one per model); a model that cannot load leaves the others running; a model
    no camera uses any more is unloaded (the process starts again without it)."""
    import gc

    from agent.lighting.dimming import DimmingModel, propose_pct

    det = load_detector(SIMNET, {"car"}, shared=hosts)
    dim = DimmingModel(ROOT / "models" / "dimming.md", hosts)
    host = det.runtime.host
    assert dim.host is host and len(hosts) == 1 and len(host.models) == 2
    img, _ = random_training_frame(np.random.default_rng(4))
    args = (23.0, -20.0, 300.0, 2000.0, 0.1, 0.6, 3)
    first, pid = propose_pct(dim, *args), host.proc.pid
    inline = load_detector(SIMNET, {"car"})
    assert first is not None
    assert np.allclose(det.detect(img).boxes, inline.detect(img).boxes, atol=1e-4)
    junk = tmp_path / "junk.onnx"                         # its card's sha256, not a model
    junk.write_bytes(b"\x08\x07not an onnx graph" * 100)
    card = tmp_path / "junk.yaml"
    card.write_text("\n".join(
        f"file: {junk}" if ln.startswith("file:") else
        f"sha256: {hashlib.sha256(junk.read_bytes()).hexdigest()}"
        if ln.startswith("sha256:") else ln for ln in SIMNET.read_text().splitlines()) + "\n")
    with pytest.raises(ModelError, match=r"junk\.onnx"):
        load_detector(card, shared=hosts)
    assert host.proc.pid == pid and propose_pct(dim, *args) == pytest.approx(first)
    del det
    gc.collect()
    assert hosts.prune() == 1 and [m.card.file.name for m in host.models] == ["dimming.onnx"]
    assert host.proc.pid != pid and propose_pct(dim, *args) == pytest.approx(first)
    dim.close()


def test_the_lamp_path_never_waits_for_a_restart_another_thread_is_doing(hosts) -> None:
    """While a camera's thread holds the model process (starting it again: up to 25 s),
    the dimming model's calls, from the lighting thread, return at once with no proposal,
    whether the process had died under them or is being started."""
    import threading

    from agent.lighting.dimming import DimmingModel, propose_pct

    det = load_detector(SIMNET, {"car"}, shared=hosts)
    dim = DimmingModel(ROOT / "models" / "dimming.md", hosts)
    args = (23.0, -20.0, 300.0, 2000.0, 0.1, 0.6, 3)
    assert propose_pct(dim, *args) is not None
    host = det.runtime.host
    os.kill(host.proc.pid, signal.SIGKILL)
    held, release = threading.Event(), threading.Event()

    def restarting() -> None:           # what a camera's inline restart looks like
        with host._lock:
            held.set()
            release.wait(10)

    t = threading.Thread(target=restarting)
    t.start()
    try:
        assert held.wait(5)
        for _ in range(5):
            t0 = time.monotonic()
            assert propose_pct(dim, *args) is None
            assert time.monotonic() - t0 < 0.5 + SLACK_S
    finally:
        release.set()
        t.join()
    assert wait_until(lambda: propose_pct(dim, *args) is not None, 10)
    img = random_training_frame(np.random.default_rng(6))[0]  # the cameras' lanes work too
    assert np.allclose(det.detect(img).boxes, load_detector(SIMNET, {"car"}).detect(img).boxes,
                       atol=1e-4)


def test_out_of_file_descriptors_is_a_wait_not_a_dead_camera(hosts) -> None:
    """A lane that cannot be opened (no file descriptor left) is RuntimeUnavailable, which
    a camera waits out, never a ModelError, which would stop it for good."""
    import resource

    det = load_detector(SIMNET, {"car"}, shared=hosts)
    img, _ = random_training_frame(np.random.default_rng(7))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # No free descriptor at all, whatever gaps the process's table has (a count of the open
    # ones is not the highest number: gaps below it would leave free slots): the limit at
    # the highest open one, then every free number below it taken.
    top = max(int(n) for n in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1, hard))
    fillers: list[int] = []
    try:
        while True:
            try:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
            except OSError:
                break
        with pytest.raises(RuntimeUnavailable, match="cannot open a lane"):
            det.detect(img)
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert np.allclose(det.detect(img).boxes, load_detector(SIMNET, {"car"}).detect(img).boxes,
                       atol=1e-4)


def test_a_process_that_dies_while_a_model_loads_is_started_again_for_it(tmp_path) -> None:
    """The model process hangs (stopped) while a second model loads: the load's deadline
    kills it, and the load starts it again (the first model loaded again too) instead of
    refusing every model from then on, which left a pole without counting or dimming."""
    from agent.lighting.dimming import DimmingModel, propose_pct

    hosts = ModelHosts(first_load_deadline_s=2.0, backoff_min_s=5.0)
    try:
        det = load_detector(SIMNET, {"car"}, shared=hosts)
        host = det.runtime.host
        pid = host.proc.pid
        os.kill(pid, signal.SIGSTOP)
        dim = DimmingModel(ROOT / "models" / "dimming.md", hosts)     # waits 2 s, then
        assert wait_until(lambda: gone(pid), 5)                       # kills, restarts
        assert host.up and host.proc.pid != pid and len(host.models) == 2
        assert propose_pct(dim, 23.0, -20.0, 300.0, 2000.0, 0.1, 0.6, 3) is not None
        img, _ = random_training_frame(np.random.default_rng(8))
        assert np.allclose(det.detect(img).boxes,
                           load_detector(SIMNET, {"car"}).detect(img).boxes, atol=1e-4)
        # found dead (its back-off not over): a new model's load starts it again at once
        os.kill(host.proc.pid, signal.SIGKILL)
        assert wait_until(lambda: host.proc.poll() is not None, 5)
        host.fail(host.generation, "ended")
        assert not host.up and host.retry_at > time.monotonic()
        card = tmp_path / "simnet.yaml"          # another card: another model to load
        card.write_text(SIMNET.read_text().replace("file: ", f"file: {SIMNET.parent}/", 1))
        again = load_detector(card, {"car", "bus"}, shared=hosts)
        assert host.up and len(host.models) == 3
        assert np.allclose(again.detect(img).boxes,
                           load_detector(SIMNET, {"car", "bus"}).detect(img).boxes, atol=1e-4)
    finally:
        hosts.close()


def test_the_model_process_ends_quietly_when_its_agent_is_gone_before_hello() -> None:
    """Its agent died before it said hello: it ends with status 0 and says nothing (a
    traceback on the agent's terminal was what a user saw)."""
    import socket

    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    mine.close()
    r = subprocess.run([sys.executable, "-m", "agent.vision.detect.host", str(theirs.fileno())],
                       pass_fds=(theirs.fileno(),), capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    theirs.close()
    assert r.returncode == 0 and r.stderr == "" and r.stdout == "", r.stderr
