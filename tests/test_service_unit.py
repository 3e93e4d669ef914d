"""The systemd unit and its user: the keys the agent relies on, ``systemd-analyze verify``
of the unit as installed, and ``systemd-sysusers`` on a scratch root (both skipped, with
the reason, where systemd is not installed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
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
