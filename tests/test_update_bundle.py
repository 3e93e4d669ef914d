"""Update bundles, the update guard and the update steps on real files (no agent process):
build → verify, every refusal (signature, tampered or extra member, unsafe names, bad
manifest, too little disk, a disk that fills up), the guard's start counting, deadline
and rollback, and the manifest parser under hypothesis."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.update import guard as g
from agent.update.bundle import BundleError, build, parse_manifest, verify
from agent.update.install import Settings, Source, Updater, UpdateRefused, parse_source
from agent.uplink.contract import errors
from tests.conftest import ROOT
from tests.update_rig import GUARD, keypair


def _wheelhouse(tmp: Path, name: str = "polelink-2.0-py3-none-any.whl",
                size: int = 1000) -> Path:
    """A folder with one wheel ``name``: its METADATA (the name's distribution and version)
    and ``size`` random bytes (stored, so the wheel is about that big)."""
    wh = tmp / "wh"
    wh.mkdir(parents=True, exist_ok=True)
    dist, version = name.split("-")[:2]
    with zipfile.ZipFile(wh / name, "w") as z:
        z.writestr(f"{dist}-{version}.dist-info/METADATA",
                   f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        z.writestr(f"{dist}/blob.bin", os.urandom(size))
    return wh


@pytest.fixture()
def keys(tmp_path: Path):
    return keypair(tmp_path, "signer"), keypair(tmp_path, "other")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agent", "bundle", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_build_and_verify_through_the_cli(tmp_path: Path) -> None:
    r = _cli("keygen", "--out", str(tmp_path / "k.pem"))
    assert r.returncode == 0, r.stderr
    assert oct((tmp_path / "k.pem").stat().st_mode & 0o777) == "0o600"
    models = tmp_path / "models"
    (models / "sub").mkdir(parents=True)
    (models / "card.yaml").write_text("name: x\n")
    (models / "sub" / "w.onnx").write_bytes(b"\0" * 300)
    wh = _wheelhouse(tmp_path, "polelink-1.2.3-py3-none-any.whl")
    (wh / "numpy-1.26.4-cp311-cp311-manylinux_2_17_aarch64.whl").write_bytes(b"np" * 50)
    out = tmp_path / "b.tar"
    r = _cli("build", "--version", "1.2.3", "--wheelhouse", str(wh), "--models", str(models),
             "--key", str(tmp_path / "k.pem"), "--out", str(out), "-q")
    assert r.returncode == 0, r.stderr
    assert "version 1.2.3, 4 members" in r.stdout
    r = _cli("verify", str(out), "--key", str(tmp_path / "k.pub.pem"))
    assert r.returncode == 0 and "OK: version 1.2.3" in r.stdout, r.stderr
    with tarfile.open(out) as tar:
        names = tar.getnames()
    assert names[:2] == ["manifest.json", "manifest.json.sig"]
    assert "models/sub/w.onnx" in names
    # the wrong key, a missing wheel, an unusable key: one line, exit 1, no traceback
    _cli("keygen", "--out", str(tmp_path / "o.pem"))
    r = _cli("verify", str(out), "--key", str(tmp_path / "o.pub.pem"))
    assert r.returncode == 1 and "signature does not verify" in r.stderr
    r = _cli("build", "--version", "1.2.4", "--wheelhouse", str(tmp_path / "models"),
             "--key", str(tmp_path / "k.pem"), "--out", str(tmp_path / "c.tar"))
    assert r.returncode == 1 and "expected one polelink-*.whl" in r.stderr
    r = _cli("build", "--version", "0.5.0", "--wheelhouse", str(wh),     # not the wheel's version
             "--key", str(tmp_path / "k.pem"), "--out", str(tmp_path / "c.tar"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and not (tmp_path / "c.tar").exists()
    assert "--version 0.5.0: the agent wheel polelink-1.2.3-py3-none-any.whl is version 1.2.3" in r.stderr
    assert "give --version 1.2.3" in r.stderr, r.stderr
    for version in ("v1.2.3", "1.02.3", "1.2.3.0"):   # other names of it: other release folders
        r = _cli("build", "--version", version, "--wheelhouse", str(wh),
                 "--key", str(tmp_path / "k.pem"), "--out", str(tmp_path / "c.tar"))
        assert r.returncode == 1 and "is version 1.2.3" in r.stderr, (version, r.stderr)
    lies = tmp_path / "lies"                              # renamed: METADATA says 1.2.4
    shutil.copytree(wh, lies)
    (lies / "polelink-1.2.3-py3-none-any.whl").rename(lies / "polelink-1.2.4-py3-none-any.whl")
    r = _cli("build", "--version", "1.2.4", "--wheelhouse", str(lies),
             "--key", str(tmp_path / "k.pem"), "--out", str(tmp_path / "c.tar"))
    assert r.returncode == 1 and "its name says version 1.2.4, its METADATA 1.2.3" in r.stderr, r.stderr
    numpy = "numpy-1.26.4-cp311-cp311-manylinux_2_17_aarch64.whl"
    np_wh = _wheelhouse(tmp_path / "np", numpy)
    r = _cli("build", "--version", "1.26.4", "--wheelhouse", str(np_wh), "--agent-wheel", str(np_wh / numpy),
             "--key", str(tmp_path / "k.pem"), "--out", str(tmp_path / "c.tar"))
    assert r.returncode == 1 and "not the agent's wheel (it is numpy's" in r.stderr, r.stderr
    nine = "polelink-0.0.9-py3-none-any.whl"
    other = _wheelhouse(tmp_path / "v9", nine) / nine
    r = _cli("build", "--version", "0.0.9", "--wheelhouse", str(wh), "--agent-wheel", str(other),
             "--key", str(tmp_path / "k.pem"), "--out", str(tmp_path / "c.tar"))
    assert r.returncode == 1 and "holds another agent wheel (polelink-1.2.3" in r.stderr, r.stderr
    r = _cli("build", "--version", "../x", "--wheelhouse", str(wh),
             "--key", str(tmp_path / "k.pub.pem"), "--out", str(tmp_path / "c.tar"))
    assert r.returncode == 1 and "not a usable PEM private key" in r.stderr
    for r in (_cli("verify", str(tmp_path / "nope.tar"), "--key", str(tmp_path / "k.pub.pem")),
              _cli("verify", str(models / "card.yaml"), "--key", str(tmp_path / "k.pub.pem"))):
        assert r.returncode == 1 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def _rewrite(src: Path, dst: Path, change) -> None:
    """Copy a tar member by member, letting ``change(name, data)`` alter or drop them."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin:
            data = tin.extractfile(m).read()  # type: ignore[union-attr]
            new = change(m.name, data)
            if new is None:
                continue
            info = tarfile.TarInfo(m.name)
            info.size = len(new)
            tout.addfile(info, io.BytesIO(new))


def test_verify_refuses_every_kind_of_bad_bundle(tmp_path: Path, keys) -> None:
    (key, _, _), (other, _, _) = keys
    good = tmp_path / "good.tar"
    build("2.0.0", _wheelhouse(tmp_path, "polelink-2.0.0-py3-none-any.whl"), key, good)
    assert verify(good, key.public_key()).version == "2.0.0"

    def refused(change, match: str) -> None:
        bad = tmp_path / "bad.tar"
        _rewrite(good, bad, change)
        with pytest.raises(BundleError, match=match):
            verify(bad, key.public_key())

    refused(lambda n, d: d[:-1] + bytes([d[-1] ^ 1]) if n.startswith("wheels/") else d,
            "sha256 .* does not match")
    refused(lambda n, d: d + b"x" if n.startswith("wheels/") else d, "bytes, the manifest says")
    refused(lambda n, d: None if n.startswith("wheels/") else d, "listed in the manifest but")
    refused(lambda n, d: d.replace(b'"2.0.0"', b'"2.0.1"') if n == "manifest.json" else d,
            "signature does not verify")
    refused(lambda n, d: None if n == "manifest.json.sig" else d, "no manifest.json.sig")
    with pytest.raises(BundleError, match="signature does not verify"):
        verify(good, other.public_key())
    # an extra member, a symlink, a path escape
    for info in (tarfile.TarInfo("models/extra.bin"), tarfile.TarInfo("../../etc/passwd")):
        bad = tmp_path / "extra.tar"
        _rewrite(good, bad, lambda n, d: d)
        with tarfile.open(bad, "a") as t:
            info.size = 3
            t.addfile(info, io.BytesIO(b"abc"))
        with pytest.raises(BundleError, match="not in the manifest"):
            verify(bad, key.public_key())
    bad = tmp_path / "link.tar"
    _rewrite(good, bad, lambda n, d: d)
    with tarfile.open(bad, "a") as t:
        link = tarfile.TarInfo("models/x")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/shadow"
        t.addfile(link)
    with pytest.raises(BundleError, match="not a regular file"):
        verify(bad, key.public_key())
    (tmp_path / "junk.tar").write_bytes(os.urandom(5000))
    with pytest.raises(BundleError, match="not a"):
        verify(tmp_path / "junk.tar", key.public_key())


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.binary(max_size=300),
    st.dictionaries(st.sampled_from(["format", "version", "created", "agent_wheel",
                                     "required_bytes", "files", "x"]),
                    st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=30),
                              st.just("polelink-bundle/1"), st.just("2026-01-01T00:00:00Z"),
                              st.just("wheels/a.whl"),
                              st.dictionaries(st.text(max_size=20), st.one_of(
                                  st.integers(), st.dictionaries(st.sampled_from(
                                      ["size", "sha256"]), st.one_of(st.integers(),
                                                                     st.text(max_size=64)))),
                                  max_size=3)),
                    max_size=7).map(lambda d: json.dumps(d).encode())))
def test_manifest_parser_fuzz(raw: bytes) -> None:
    """Anything the signer could have signed: a Manifest or a BundleError, nothing else."""
    try:
        m = parse_manifest(raw)
    except BundleError as e:
        assert str(e).startswith("manifest.json")
        return
    assert g.valid_version(m.version) and m.agent_wheel in m.files


def _layout(tmp: Path) -> g.Layout:
    lay = g.Layout(tmp / "root")
    for v in ("1.0", "2.0"):
        (lay.release(v) / "venv").mkdir(parents=True)
    lay.point(lay.current, "2.0")
    lay.point(lay.previous, "1.0")
    lay.write_trial(g.Trial("2.0", "1.0", time.time(), time.time() + 60, 2, via="c1"))
    return lay


def test_guard_counts_starts_and_rolls_back_after_the_limit(tmp_path: Path) -> None:
    lay = _layout(tmp_path)
    assert g.on_start(lay) == "trial of 2.0: start 1 of 2"
    env = {"SERVICE_RESULT": "exit-code", "EXIT_CODE": "exited", "EXIT_STATUS": "1"}
    assert "exit_status=1" in g.on_stopped(lay, env)
    assert g.on_start(lay) == "trial of 2.0: start 2 of 2"
    assert g.on_tick(lay) is False                        # before the deadline: nothing
    assert g.on_start(lay) == "rolled back: starts"
    assert lay.target(lay.current) == "1.0" and lay.read_trial() is None
    assert (lay.release("2.0") / ".failed").exists()
    with lay.lock():
        (ev,) = lay.take_events()
    assert ev["event"] == "update_rolled_back" and ev["detail"]["version"] == "2.0"
    assert "2 start(s)" in ev["detail"]["reason"] and ev["detail"]["lastExit"].endswith("=1")
    assert ev["detail"]["correlationId"] == "c1"
    assert g.on_start(lay) == "no trial" and lay.target(lay.current) == "1.0"


def test_guard_deadline_void_trial_and_missing_current(tmp_path: Path) -> None:
    lay = _layout(tmp_path)
    assert g.on_tick(lay, now=time.time() + 61) is True
    assert lay.target(lay.current) == "1.0"
    # the switch never happened: the trial is void, nothing switched
    lay.write_trial(g.Trial("3.0", "1.0", time.time(), time.time() + 60, 2))
    assert "void" in g.on_start(lay) and lay.read_trial() is None
    assert lay.target(lay.current) == "1.0"
    # current names a release that is gone: back to previous
    lay.point(lay.current, "2.0")
    (lay.release("2.0") / ".incomplete").write_text("")
    assert "back to 1.0" in g.on_start(lay) and lay.target(lay.current) == "1.0"
    # the previous release vanished: the trial ends, an alarm is recorded, current stays
    lay.point(lay.current, "2.0")
    (lay.release("2.0") / ".incomplete").unlink()
    lay.write_trial(g.Trial("2.0", "0.9", time.time(), time.time() - 1, 2))
    g.on_start(lay)
    assert lay.target(lay.current) == "2.0" and lay.read_trial() is None
    with lay.lock():
        assert [e["event"] for e in lay.take_events()][-1] == "update_rollback_failed"
    # a corrupt trial file is ignored, never a traceback
    lay.trial_file.write_text("{not json")
    r = subprocess.run([sys.executable, "-I", str(GUARD), "start", "--root", str(lay.root)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "ignored" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-I", str(GUARD), "status", "--root", str(lay.root)],
                       capture_output=True, text=True, timeout=30)
    assert json.loads(r.stdout)["current"] == "2.0"


def _settings(tmp: Path, key, **kw) -> Settings:
    lay = g.Layout(tmp / "root")
    lay.releases.mkdir(parents=True, exist_ok=True)
    return Settings(lay, key.public_key(), ("127.0.0.1", "platform.example"), **kw)


def test_update_arguments_are_checked_before_anything(tmp_path: Path, keys) -> None:
    (key, _, _), _ = keys
    s = _settings(tmp_path, key, max_bundle_bytes=100)
    s.layout.uploads.mkdir()
    (s.layout.uploads / "b.tar").write_bytes(b"x" * 10)
    (s.layout.uploads / "big.tar").write_bytes(b"x" * 101)
    (tmp_path / "outside.tar").write_bytes(b"x")
    (s.layout.uploads / "link.tar").symlink_to(tmp_path / "outside.tar")
    ok = parse_source({"url": "https://platform.example/b.tar"}, s)
    assert ok.url and ok.path is None
    assert parse_source({"path": "b.tar"}, s).path == (s.layout.uploads / "b.tar").resolve()
    for args, why in (({"url": "ftp://platform.example/b.tar"}, "http or https only"),
                      ({"url": "https://evil.example/b.tar"}, "not an update host"),
                      ({"url": "https://u:p@platform.example/b"}, "credentials"),
                      ({"path": "/etc/passwd"}, "taken only from"),
                      ({"path": "../../outside.tar"}, "taken only from"),
                      ({"path": "link.tar"}, "taken only from"),
                      ({"path": "nope.tar"}, "no such uploaded bundle"),
                      ({"path": "big.tar"}, "more than"),
                      ({}, "exactly one"),
                      ({"url": "https://platform.example/b", "path": "b.tar"}, "exactly one")):
        with pytest.raises(UpdateRefused, match=why):
            parse_source(args, s)
    # and the contract's schema bounds them first
    base = {"schema": "polelink/command/2", "correlation_id": "x", "command": "update",
            "expires": "2030-01-01T00:00:00Z"}
    assert not errors("command", {**base, "args": {"url": "https://platform.example/b.tar"}})
    for bad in ({}, {"url": "x" * 3000}, {"url": "a", "path": "b"}, {"path": "a", "extra": 1},
                {"url": "https://p/b", "sha256": "XYZ"}):
        assert errors("command", {**base, "args": bad}), bad
    assert errors("command", base)


def _run_update(s: Settings, bundle: Path) -> tuple[bool, list[tuple[str, dict]]]:
    events: list[tuple[str, dict]] = []
    restarted: list[str] = []
    up = Updater(s, "1.0", lambda e, _sev, d: events.append((e, d)), restarted.append)
    ok = up.run(Source(path=bundle), "cid", "1.0")
    assert ok == bool(restarted)
    return ok, events


def _snapshot(lay: g.Layout) -> tuple:
    files = sorted(str(p.relative_to(lay.root)) for p in lay.root.rglob("*")
                   if p.name != "lock")
    return lay.target(lay.current), lay.target(lay.previous), files


def test_refused_bundles_change_nothing(tmp_path: Path, keys) -> None:
    (key, _, _), (other, _, _) = keys
    s = _settings(tmp_path, key)
    lay = s.layout
    (lay.release("1.0") / "venv").mkdir(parents=True)
    lay.point(lay.current, "1.0")
    lay.uploads.mkdir()
    wh = _wheelhouse(tmp_path)
    build("2.0", wh, other, lay.uploads / "foreign.tar")
    build("2.0", wh, key, lay.uploads / "huge.tar", required_bytes=1 << 49)
    build("1.0", _wheelhouse(tmp_path / "v1", "polelink-1.0-py3-none-any.whl"), key,
          lay.uploads / "same.tar")
    build("2.0", wh, key, tmp_path / "good.tar")
    _rewrite(tmp_path / "good.tar", lay.uploads / "tampered.tar",
             lambda n, d: d.replace(d[:4], b"EVIL") if n.startswith("wheels/") else d)
    before = _snapshot(lay)
    for name, step, why in (("foreign.tar", "check", "signature does not verify"),
                            ("huge.tar", "check", "not enough free disk"),
                            ("same.tar", "check", "already running"),
                            ("tampered.tar", "check", "does not match the manifest")):
        ok, events = _run_update(s, lay.uploads / name)
        assert not ok
        (last, detail) = events[-1]
        assert last == "update_failed" and detail["step"] == step, events
        assert why in detail["reason"], detail
        assert _snapshot(lay) == before, name


def test_a_disk_that_fills_up_fails_cleanly(tmp_path: Path, keys) -> None:
    """A real 8 MiB tmpfs as the root: the manifest understates what it needs, so the
    disk fills while the members are written; the release folder is removed, current
    stays. Needs root (mount); skipped otherwise."""
    (key, _, _), _ = keys
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({r.stderr.strip()[:80]})")
    try:
        lay = g.Layout(mnt / "root")
        (lay.release("1.0") / "venv").mkdir(parents=True)
        lay.point(lay.current, "1.0")
        lay.uploads.mkdir()
        wh = _wheelhouse(tmp_path, size=5 << 20)
        build("2.0", wh, key, lay.uploads / "b.tar", required_bytes=1)
        s = Settings(lay, key.public_key(), (), free_margin_bytes=0)
        before = _snapshot(lay)
        ok, events = _run_update(s, lay.uploads / "b.tar")
        assert not ok
        assert events[-1][0] == "update_failed" and events[-1][1]["step"] == "install"
        assert "No space left on device" in events[-1][1]["reason"], events[-1]
        assert _snapshot(lay) == before
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_the_units_run_the_guard_from_its_fixed_path() -> None:
    """systemd runs the guard before each start, after each stop, and from the timer, all
    from the path flash.sh installs it at, with failures of the guard ignored."""
    unit = (ROOT / "deploy" / "systemd" / "polelink.service").read_text()
    fixed = "/usr/bin/python3 -I /usr/local/lib/polelink/update-guard.py"
    assert f"ExecStartPre=-{fixed} start\n" in unit
    assert f"ExecStopPost=-{fixed} stopped\n" in unit
    tick = (ROOT / "deploy" / "systemd" / "polelink-update-guard.service").read_text()
    assert f"ExecStart={fixed} tick --restart-unit polelink.service\n" in tick
    assert "SuccessExitStatus=10" in tick and f"{g.EXIT_ROLLED_BACK}" == "10"
    timer = (ROOT / "deploy" / "systemd" / "polelink-update-guard.timer").read_text()
    assert "OnUnitActiveSec=" in timer
    for action in ("start", "stopped", "tick"):
        r = subprocess.run([sys.executable, "-I", str(GUARD), action, "--help"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr


def test_trial_commits_only_when_healthy_and_cleans_up(tmp_path: Path) -> None:
    """The running agent's side: a release on trial commits once every health check
    passes (previous moves, trial ends, stale releases go); an interrupted install is
    removed at start; recorded events are published once."""
    from agent.update.trial import TrialWatch, running_release

    lay = _layout(tmp_path)
    (lay.release("0.9") / ".incomplete").parent.mkdir(parents=True)
    (lay.release("0.9") / ".incomplete").write_text("")
    (lay.release("0.8") / "venv").mkdir(parents=True)
    lay.record("update_rolled_back", "alarm", {"version": "3.0"})
    assert running_release(lay, str(lay.release("2.0") / "venv")) == "2.0"
    assert running_release(lay, str(tmp_path)) is None
    sent: list[tuple[str, dict]] = []
    health = {"birthPublished": True, "intervalWritten": False, "lampsCommanded": True}
    w = TrialWatch(lay, "2.0", lambda e, _s, d: sent.append((e, d)))
    w.step(lambda: dict(health), mono=1.0)
    assert not lay.release("0.9").exists()
    assert [e for e, _ in sent] == ["update_rolled_back"] and sent[0][1]["runningNow"] == "2.0"
    assert lay.read_trial() is not None and not w.committed        # not healthy yet
    health["intervalWritten"] = True
    w.step(lambda: dict(health), mono=3.0)
    assert w.committed and lay.read_trial() is None
    assert lay.target(lay.previous) == "1.0" and lay.target(lay.current) == "2.0"
    ev = sent[-1]
    assert ev[0] == "update_committed" and ev[1]["removedReleases"] == ["0.8"]
    w.step(lambda: dict(health), mono=10.0)
    assert len(sent) == 2
    # another release's agent never commits someone else's trial
    lay.write_trial(g.Trial("2.0", "1.0", time.time(), time.time() + 60, 2))
    other = TrialWatch(lay, "1.0", lambda e, _s, d: sent.append((e, d)))
    other.step(lambda: dict(health), mono=1.0)
    assert lay.read_trial() is not None and not other.committed
