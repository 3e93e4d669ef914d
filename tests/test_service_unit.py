"""The systemd unit and its user: the keys the agent relies on, ``systemd-analyze verify``
of the unit as installed, ``systemd-sysusers`` on a scratch root, the sandbox's exposure
(``systemd-analyze security --offline=true``) and its system call filter against what a
real ``agent run`` and an update's ``venv`` + ``pip`` call (``strace``). Each is skipped,
with the reason, where systemd or strace is not installed."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

UNIT = ROOT / "deploy" / "systemd" / "polelink.service"


def unit_keys() -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for ln in UNIT.read_text().splitlines():
        if "=" in ln and not ln.lstrip().startswith("#"):
            k, v = ln.split("=", 1)
            keys.setdefault(k.strip(), []).append(v.strip())
    return keys


def test_the_unit_asks_for_what_the_agent_does() -> None:
    k = unit_keys()
    assert k["Type"] == ["notify"] and k["NotifyAccess"] == ["main"]
    assert k["Restart"] == ["always"] and int(k["StartLimitBurst"][0]) >= 3
    assert k["ProtectSystem"] == ["strict"] and k["StateDirectory"] == ["polelink"]
    assert "dialout" in k["SupplementaryGroups"][0].split()
    assert any(v.endswith("agent service-exit") for v in k["ExecStopPost"])
    assert any("update-guard.py stopped" in v for v in k["ExecStopPost"])
    assert k["LoadCredential"] == ["secrets.yaml:/etc/polelink/secrets.yaml"]
    watchdog = int(k["WatchdogSec"][0])
    # the agent pings at half of it; a stop has time to leave the lamps safe
    assert watchdog >= 10 and int(k["TimeoutStopSec"][0]) >= 45


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (apt-get install systemd)")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """The unit as installed, with its executables pointed at this checkout's ``agent``
    (verify checks that they exist)."""
    agent = Path(sys.executable).with_name("agent")
    if not agent.exists():
        pytest.skip(f"no agent console script beside {sys.executable}")
    text = UNIT.read_text().replace("/var/lib/polelink/current/venv/bin/agent", str(agent))
    unit = tmp_path / "polelink.service"
    unit.write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60)
    ours = [ln for ln in done.stderr.splitlines() if "polelink" in ln]
    assert done.returncode == 0 and not ours, done.stderr


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None,
                    reason="systemd-sysusers is not installed (apt-get install systemd)")
def test_sysusers_creates_the_agents_user_in_dialout_and_video(tmp_path: Path) -> None:
    """``polelink.sysusers.conf`` applied to a scratch root (``--root``: nothing on this
    machine changes)."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (tmp_path / "etc" / "group").write_text("root:x:0:\ndialout:x:20:\nvideo:x:44:\n")
    conf = UNIT.with_name("polelink.sysusers.conf")
    done = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(conf)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    user = next(ln for ln in (tmp_path / "etc" / "passwd").read_text().splitlines()
                if ln.startswith("polelink:")).split(":")
    assert user[5] == "/var/lib/polelink" and user[6] == "/usr/sbin/nologin"
    groups = (tmp_path / "etc" / "group").read_text().splitlines()
    assert "dialout:x:20:polelink" in groups and "video:x:44:polelink" in groups


# -- the sandbox -------------------------------------------------------------------------
#: The most ``systemd-analyze security`` may rate the unit (0 safest, 10 exposed).
MAX_EXPOSURE = 3.0
#: The address families of the unit's RestrictAddressFamilies=.
FAMILIES = "AF_UNIX,AF_INET,AF_INET6"

need_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                  reason="systemd-analyze is not installed (apt-get install systemd)")


def test_the_sandbox_keeps_what_the_agent_needs() -> None:
    """The protections that would break the agent stay off, those it relies on stay on."""
    k = unit_keys()
    assert "ProtectClock" not in k               # it filters the read-only adjtimex
    assert "PrivateUsers" not in k and "PrivateDevices" not in k
    assert k["DevicePolicy"] == ["closed"]
    allowed = {v.split()[0] for v in k["DeviceAllow"]}
    assert {"char-ttyAMA", "char-ttyS", "char-ttyUSB", "char-ttyACM", "char-video4linux"} <= allowed
    assert set(k["RestrictAddressFamilies"][0].split()) == set(FAMILIES.split(","))
    assert k["SystemCallErrorNumber"] == ["EPERM"]
    assert k["MemoryDenyWriteExecute"] == ["yes"]


@need_analyze
def test_the_units_exposure_is_at_most_3() -> None:
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNIT)],
                          capture_output=True, text=True, timeout=60)
    if "--offline" in done.stderr and done.returncode != 0:
        pytest.skip(f"this systemd-analyze has no --offline (systemd >= 250): {done.stderr[:200]}")
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", done.stdout)
    assert m, done.stdout[-2000:] + done.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, done.stdout


def syscall_groups() -> dict[str, list[str]]:
    """Every ``@group`` of this systemd and its members (names and nested groups)."""
    out = subprocess.run(["systemd-analyze", "syscall-filter", "--no-pager"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for ln in out.splitlines():
        if ln.startswith("@"):
            current = groups.setdefault(ln.split()[0], [])
        elif ln.startswith("    ") and current is not None and not ln.strip().startswith("#"):
            current.append(ln.strip())
        elif not ln.strip() or ln.startswith("#"):
            current = None
    return groups


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    """System call names, groups expanded (recursively)."""
    out: set[str] = set()
    for n in names:
        out |= expand(groups[n], groups) if n.startswith("@") else {n}
    return out


def unit_filter() -> set[str]:
    """The system calls the unit's ``SystemCallFilter=`` lines allow, as systemd reads them:
    an allow list (the first line), later lines add, ``~`` lines take away."""
    lines = unit_keys()["SystemCallFilter"]
    assert not lines[0].startswith("~"), "the filter must be an allow list"
    groups = syscall_groups()
    allowed: set[str] = set()
    for ln in lines:
        names = expand(ln.lstrip("~").split(), groups)
        allowed = allowed - names if ln.startswith("~") else allowed | names
    return allowed


def traced(summary: Path) -> set[str]:
    """The system calls in a ``strace -c`` summary (the rows between its dashed lines)."""
    names: set[str] = set()
    rows = False
    for ln in summary.read_text().splitlines():
        if ln.startswith("-----"):
            if rows:
                break
            rows = True
        elif rows and ln.strip():
            names.add(ln.split()[-1])
    return names


def strace_prefix(tmp: Path, out: Path) -> tuple[list[str], bool]:
    """``strace -f -c`` of a command, run under the unit's filter as well where libseccomp
    is installed (``tests/seccomp_exec.py``); the bool says whether it is. Skips where
    strace is missing or cannot trace here (no ptrace in a container)."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (apt-get install strace)")
    probe = subprocess.run(["strace", "-f", "-qq", "-c", "-o", os.devnull, "true"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here: {probe.stderr.strip()[:200]}")
    cmd = ["strace", "-f", "-qq", "-c", "-o", str(out)]
    from tests.seccomp_exec import library
    if library() is None:
        return cmd, False
    allow = tmp / "allowed-syscalls.txt"
    allow.write_text("\n".join(sorted(unit_filter())) + "\n")
    return [*cmd, sys.executable, str(ROOT / "tests" / "seccomp_exec.py"), str(allow),
            "--families", FAMILIES, "--mdwe", "--"], True


def outside(summary: Path, filtered: bool) -> list[str]:
    """The traced system calls the unit's filter does not allow. ``seccomp`` is the
    wrapper's own (it loads the rules before it execs the command)."""
    return sorted(traced(summary) - unit_filter() - ({"seccomp"} if filtered else set()))


@need_analyze
def test_a_real_agent_run_calls_nothing_outside_the_filter(tmp_path: Path) -> None:
    """``agent run`` under ``strace -f`` (and the unit's filter, EPERM and no W+X memory,
    where libseccomp is installed): a file camera whose detector runs in the model process,
    the dimming model, the DALI emulator on a pty, a mosquitto on loopback, the `kernel`
    clock source (adjtimex), sd_notify with a watchdog; it must become ready, dim adaptively
    (traffic counted through the model process) and stop cleanly on SIGTERM. Then every
    system call it made must be in the unit's SystemCallFilter=."""
    from bench.agent_run import children
    from sim.traffic import SceneConfig, write_clip
    from tests.helpers import wait_until
    from tests.pole_rig import PoleRig

    summary = tmp_path / "strace.txt"
    prefix, filtered = strace_prefix(tmp_path, summary)
    clip = tmp_path / "clip.avi"
    write_clip(clip, 10, seed=11, cfg=SceneConfig(vehicles_per_minute=40))
    rig = PoleRig(tmp_path, f"{{kind: file, path: {clip}, loop: true}}",
                  clock="{sources: [kernel, assume_synced]}")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(0.2)
    said: list[str] = []

    def heard(what: str) -> bool:
        with contextlib.suppress(TimeoutError):
            said.append(notify.recv(4096).decode())
        return any(what in m for m in said)

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": str(tmp_path / "notify"),
           "WATCHDOG_USEC": "2000000"}
    env.pop("POLELINK_MODELS_IN_PROCESS", None)
    tracer = subprocess.Popen([*prefix, sys.executable, "-m", "agent", "run", "--config",
                               str(rig.cfg), "-q"], cwd=ROOT, stdout=rig.log.open("a"),
                              stderr=subprocess.STDOUT, env=env)
    try:
        assert wait_until(lambda: heard("READY=1"), 120), rig.output()[-3000:]
        assert wait_until(lambda: any(m["lampActuator"]["mode"] == "adaptive"
                                      for m in rig.lighting()), 120), rig.output()[-3000:]
        agent = children(tracer.pid)
        assert len(agent) == 1 and children(agent[0]), "no agent, or no model process"
        os.kill(agent[0], signal.SIGTERM)
        assert tracer.wait(60) == 0, rig.output()[-3000:]
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait()
        notify.close()
        rig.close()
    assert "lamps left at their safe level" in rig.output()
    assert not outside(summary, filtered), \
        f"system calls outside the unit's SystemCallFilter=: {outside(summary, filtered)}"


def probe_wheel(folder: Path) -> Path:
    """A one-module wheel (pure Python, a console script), written by hand: no build."""
    whl = folder / "polelink_probe-1.0-py3-none-any.whl"
    info = "polelink_probe-1.0.dist-info"
    files = {"polelink_probe/__init__.py": b"def main():\n    return 0\n",
             f"{info}/METADATA": b"Metadata-Version: 2.1\nName: polelink-probe\nVersion: 1.0\n",
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
                              b"Tag: py3-none-any\n",
             f"{info}/entry_points.txt": b"[console_scripts]\npolelink-probe = polelink_probe:main\n"}
    record = []
    with zipfile.ZipFile(whl, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{name},sha256={digest},{len(data)}")
        z.writestr(f"{info}/RECORD", "\n".join([*record, f"{info}/RECORD,,"]) + "\n")
    return whl


@need_analyze
def test_an_update_and_the_units_hooks_call_nothing_outside_the_filter(tmp_path: Path) -> None:
    """What ``agent/update/install.py`` runs for an update (a venv, then ``pip install
    --no-index`` of the bundle's wheels into it, then the new release's Python), the update
    guard's ``start``/``stopped`` (ExecStartPre/ExecStopPost) and ``agent service-exit``,
    under ``strace -f`` (and the unit's filter where libseccomp is installed)."""
    summary = tmp_path / "strace.txt"
    prefix, filtered = strace_prefix(tmp_path, summary)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    whl = probe_wheel(wheels)
    env_dir = tmp_path / "releases" / "9.9.9" / "venv"
    root, state = tmp_path / "root", tmp_path / "state"
    state.mkdir()
    script = f"""
import subprocess, sys, venv
venv.EnvBuilder(with_pip=False, symlinks=True).create({str(env_dir)!r})
run = lambda *cmd: subprocess.run(cmd, check=True, timeout=300)
run(sys.executable, "-m", "pip", "--python", {str(env_dir / "bin" / "python")!r},
    "--disable-pip-version-check", "install", "--quiet", "--no-index", "--only-binary=:all:",
    "--find-links", {str(wheels)!r}, {str(whl)!r})
run({str(env_dir / "bin" / "polelink-probe")!r})
guard = {str(ROOT / "agent" / "update" / "guard.py")!r}
run(sys.executable, "-I", guard, "start", "--root", {str(root)!r})
run(sys.executable, "-I", guard, "stopped", "--root", {str(root)!r})
run(sys.executable, "-m", "agent", "service-exit", "--state-dir", {str(state)!r})
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PIP_NO_INPUT="1", SERVICE_RESULT="success", EXIT_CODE="exited", EXIT_STATUS="0")
    done = subprocess.run([*prefix, sys.executable, "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert (env_dir / "bin" / "polelink-probe").exists()
    assert not outside(summary, filtered), \
        f"system calls outside the unit's SystemCallFilter=: {outside(summary, filtered)}"
