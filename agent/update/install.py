"""An update, step by step, on its own thread: fetch → check → install → switch → restart.

:func:`parse_source` checks the ``update`` command's arguments before anything happens (the
command's response says why when it refuses). :class:`Updater` then runs the steps; each
ends with an event (``update_downloaded``, ``update_verified``, ``update_installed``,
``update_switched``), any failure with one ``update_failed`` event naming the step and the
reason, and nothing left behind: the download is deleted, a half-installed release folder
is removed, ``current`` is untouched. Only the switch changes what runs, and it is two
atomic steps: the trial record first, then the ``current`` link (see ``agent.update.guard``:
a trial whose switch never happened is void).

The new release's venv is built offline from the bundle's wheelhouse
(``pip install --no-index --find-links``); before the switch the new version must run
``agent validate`` on this pole's config, so a release that cannot read it never starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import venv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.settings.modelcard import sha256_file
from agent.update.bundle import CHUNK, BundleError, Manifest, extract, verify
from agent.update.guard import Layout, Trial

log = logging.getLogger(__name__)

Emit = Callable[[str, str, dict[str, Any]], None]


class UpdateRefused(ValueError):
    """The update cannot start or a step failed (the message says why)."""


@dataclass(frozen=True)
class Source:
    """Where the bundle comes from: a URL, or a file already on the pole."""

    url: str | None = None
    path: Path | None = None
    sha256: str | None = None
    version: str | None = None

    def describe(self) -> str:
        """The source, for events."""
        return self.url or str(self.path)


@dataclass(frozen=True)
class Settings:
    """What an update may do (from the config's ``update:`` section)."""

    layout: Layout
    key: Any                               # Ed25519 public key
    url_hosts: tuple[str, ...]
    health_deadline_s: int = 600
    max_trial_starts: int = 3
    free_margin_bytes: int = 200 << 20
    max_bundle_bytes: int = 1 << 30
    download_timeout_s: int = 300
    install_timeout_s: int = 900
    site_packages_from: Path | None = None
    config_path: Path | None = None        # validated by the new version before the switch


def parse_source(args: dict[str, Any], s: Settings) -> Source:
    """The bundle's source from the command's (schema-checked) ``args``; UpdateRefused
    naming the problem for anything but an http(s) URL to an allowed host or a file
    under ``<root>/uploads``."""
    url, path = args.get("url"), args.get("path")
    if (url is None) == (path is None):
        raise UpdateRefused("give exactly one of url and path")
    sha, version = args.get("sha256"), args.get("version")
    if url is not None:
        u = urllib.parse.urlsplit(url)
        if u.scheme not in ("http", "https"):
            raise UpdateRefused(f"url scheme {u.scheme!r:.20} refused: http or https only")
        if u.username or u.password:
            raise UpdateRefused("url must not carry credentials")
        host = (u.hostname or "").lower()
        if host not in {h.lower() for h in s.url_hosts}:
            raise UpdateRefused(f"url host {host!r:.100} is not an update host of this pole "
                                f"(update.url_hosts: {', '.join(s.url_hosts) or 'none'})")
        return Source(url=url, sha256=sha, version=version)
    p = Path(path)
    uploads = s.layout.uploads.resolve()
    if not p.is_absolute():
        p = uploads / p
    try:
        real = p.resolve(strict=True)
    except (OSError, RuntimeError):
        raise UpdateRefused(f"path {str(path)[:200]!r}: no such uploaded bundle") from None
    if uploads not in real.parents:
        raise UpdateRefused(f"path {str(path)[:200]!r} refused: bundles are taken only from "
                            f"{uploads}")
    if not real.is_file():
        raise UpdateRefused(f"path {str(path)[:200]!r} is not a file")
    if real.stat().st_size > s.max_bundle_bytes:
        raise UpdateRefused(f"path {str(path)[:200]!r}: {real.stat().st_size} bytes, more than "
                            f"update.max_bundle_mb")
    return Source(path=real, sha256=sha, version=version)


class Updater:
    """Runs one update at a time on its own thread; see the module docstring."""

    def __init__(self, settings: Settings, running: str | None, emit: Emit,
                 restart: Callable[[str], None]) -> None:
        self.s = settings
        self.running = running                 # the release this agent runs from
        self.emit = emit
        self.restart = restart
        self.thread: threading.Thread | None = None
        self.step = ""

    @property
    def busy(self) -> bool:
        """An update is running."""
        return self.thread is not None and self.thread.is_alive()

    def preflight(self) -> str:
        """The release to update from (UpdateRefused when no update may start now)."""
        lay = self.s.layout
        if self.busy:
            raise UpdateRefused(f"an update is already running (step {self.step})")
        trial = lay.read_trial()
        if trial is not None:
            raise UpdateRefused(f"release {trial.to} is on trial until it reports healthy or "
                                "is rolled back; try again after that")
        cur = lay.target(lay.current)
        if cur is None or not lay.complete(cur):
            raise UpdateRefused(f"no current release under {lay.root} (this agent does not "
                                "run from the release layout)")
        return cur

    def start(self, source: Source, correlation_id: str | None) -> str:
        """Start the update on its thread; returns the release it updates from."""
        cur = self.preflight()
        self.thread = threading.Thread(target=self.run, args=(source, correlation_id, cur),
                                       name="update", daemon=True)
        self.step = "download"
        self.thread.start()
        return cur

    # -- the steps ------------------------------------------------------------------------
    def run(self, source: Source, cid: str | None, current: str) -> bool:
        """All steps; True when switched (the agent then restarts)."""
        bundle: Path | None = None
        release: Path | None = None
        base = {"correlationId": cid, "source": source.describe()[:300]}
        try:
            self.step = "download"
            t0 = time.monotonic()
            bundle = self._fetch(source)
            digest = sha256_file(bundle)
            if source.sha256 and digest != source.sha256:
                raise UpdateRefused(f"bundle sha256 {digest[:16]}… is not the command's "
                                    f"{source.sha256[:16]}…")
            self.emit("update_downloaded", "info", {**base, "bytes": bundle.stat().st_size,
                                                    "sha256": digest,
                                                    "seconds": round(time.monotonic() - t0, 1)})
            self.step = "check"
            man = self._check(bundle, source, current)
            free = shutil.disk_usage(self.s.layout.releases).free
            self.emit("update_verified", "info", {**base, "version": man.version,
                                                  "created": man.created,
                                                  "members": len(man.files),
                                                  "requiredBytes": man.required_bytes,
                                                  "freeBytes": free})
            self.step = "install"
            t0 = time.monotonic()
            release = self.s.layout.release(man.version)
            self._install(bundle, man, release)
            installed = _du(release)
            release_done = release
            release = None                     # from here on it stays
            self.emit("update_installed", "info", {**base, "version": man.version,
                                                   "installedBytes": installed,
                                                   "seconds": round(time.monotonic() - t0, 1)})
            self.step = "switch"
            self._switch(man.version, current, cid)
            self.emit("update_switched", "info", {
                **base, "version": man.version, "previous": current,
                "healthDeadlineS": self.s.health_deadline_s,
                "maxStarts": self.s.max_trial_starts, "release": str(release_done)})
            self.step = "restart"
            self.restart(man.version)
            return True
        except (UpdateRefused, BundleError, OSError, subprocess.SubprocessError) as e:
            reason = _reason(e)
            log.error("update: %s failed: %s", self.step, reason)
            self.emit("update_failed", "warning", {**base, "step": self.step, "reason": reason,
                                                   "running": current})
            return False
        except Exception as e:  # never the end of the agent
            log.exception("update: %s failed", self.step)
            self.emit("update_failed", "warning", {**base, "step": self.step,
                                                   "reason": f"{type(e).__name__}: {e}"[:500],
                                                   "running": current})
            return False
        finally:
            if release is not None:
                shutil.rmtree(release, ignore_errors=True)
            if bundle is not None and self.s.layout.downloads in bundle.parents:
                bundle.unlink(missing_ok=True)

    def _fetch(self, source: Source) -> Path:
        if source.path is not None:
            return source.path
        assert source.url is not None
        dl = self.s.layout.downloads
        dl.mkdir(parents=True, exist_ok=True)
        for old in dl.glob("*"):               # a download a crash left behind
            old.unlink(missing_ok=True)
        out = dl / f"bundle-{os.getpid()}-{time.monotonic_ns()}.tar"
        opener = urllib.request.build_opener(_SameHosts(self.s.url_hosts))
        try:
            with opener.open(source.url, timeout=self.s.download_timeout_s) as r:
                length = r.headers.get("Content-Length")
                if length is not None and length.isdigit():
                    n = int(length)
                    if n > self.s.max_bundle_bytes:
                        raise UpdateRefused(f"bundle of {n} bytes is larger than "
                                            f"update.max_bundle_mb")
                    free = shutil.disk_usage(dl).free
                    if n + self.s.free_margin_bytes > free:
                        raise UpdateRefused(f"not enough free disk to download: {n} bytes + "
                                            f"margin {self.s.free_margin_bytes}, {free} free")
                got, end = 0, time.monotonic() + self.s.download_timeout_s
                with open(out, "xb") as f:
                    while chunk := r.read(CHUNK):
                        got += len(chunk)
                        if got > self.s.max_bundle_bytes:
                            raise UpdateRefused("bundle larger than update.max_bundle_mb")
                        if time.monotonic() > end:
                            raise UpdateRefused(f"download took longer than "
                                                f"{self.s.download_timeout_s} s")
                        f.write(chunk)
        except urllib.error.HTTPError as e:
            out.unlink(missing_ok=True)
            raise UpdateRefused(f"download failed: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, UpdateRefused) as e:
            out.unlink(missing_ok=True)
            if isinstance(e, UpdateRefused):
                raise
            raise UpdateRefused(f"download failed: {_reason(e)}") from None
        return out

    def _check(self, bundle: Path, source: Source, current: str) -> Manifest:
        man = verify(bundle, self.s.key)
        if source.version and man.version != source.version:
            raise UpdateRefused(f"bundle is version {man.version}, the command asked for "
                                f"{source.version}")
        lay = self.s.layout
        if man.version == current:
            raise UpdateRefused(f"version {man.version} is already running")
        if man.version == lay.target(lay.previous):
            raise UpdateRefused(f"version {man.version} is the previous release (roll back "
                                "with update-guard, or send a bundle with a new version)")
        lay.releases.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(lay.releases).free
        need = man.required_bytes + self.s.free_margin_bytes
        if free < need:
            raise UpdateRefused(f"not enough free disk: the bundle needs {man.required_bytes} "
                                f"bytes + margin {self.s.free_margin_bytes}, {free} free")
        return man

    def _install(self, bundle: Path, man: Manifest, release: Path) -> None:
        if release.exists():                   # an old failed or rolled-back attempt
            shutil.rmtree(release)
        release.mkdir(parents=True)
        (release / ".incomplete").write_text("installing\n")
        staged = release / "bundle"
        extract(bundle, self.s.key, staged)
        (staged / "manifest.json").rename(release / "manifest.json")
        (staged / "manifest.json.sig").rename(release / "manifest.json.sig")
        if (staged / "models").is_dir():
            (staged / "models").rename(release / "models")
        env = release / "venv"
        venv.EnvBuilder(with_pip=False, symlinks=True).create(env)
        py = env / "bin" / "python"
        if self.s.site_packages_from is not None:
            site = _site_packages(env)
            (site / "_polelink_shared.pth").write_text(f"{self.s.site_packages_from}\n")
        cmd = [sys.executable, "-m", "pip", "--python", str(py), "--disable-pip-version-check",
               "install", "--quiet", "--no-index", "--only-binary=:all:", "--find-links",
               str(staged / "wheels"), str(staged / man.agent_wheel)]
        if self.s.site_packages_from is not None:
            cmd[cmd.index("install") + 1:cmd.index("install") + 1] = ["--no-deps",
                                                                       "--ignore-installed"]
        self._run(cmd, "pip install")
        agent = env / "bin" / "agent"
        if not agent.exists():
            raise UpdateRefused(f"the bundle's agent wheel installed no {agent}")
        if self.s.config_path is not None:
            self._run([str(agent), "validate", str(self.s.config_path)],
                      f"the new version's `agent validate {self.s.config_path}`")
        shutil.rmtree(staged)
        (release / ".incomplete").unlink()

    def _run(self, cmd: list[str], what: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["PIP_NO_INPUT"] = "1"
        r = subprocess.run(cmd, capture_output=True, text=True, env=env,
                           timeout=self.s.install_timeout_s, cwd=self.s.layout.root)
        if r.returncode != 0:
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            raise UpdateRefused(f"{what} failed (exit {r.returncode}): " + " | ".join(tail)[:400])

    def _switch(self, version: str, current: str, cid: str | None) -> None:
        lay = self.s.layout
        now = time.time()
        with lay.lock():
            if lay.target(lay.current) != current:
                raise UpdateRefused("current changed during the update; not switched")
            lay.write_trial(Trial(version, current, now, now + self.s.health_deadline_s,
                                  self.s.max_trial_starts, via=cid or ""))
            lay.point(lay.current, version)


class _SameHosts(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to an allowed host, over http(s)."""

    def __init__(self, hosts: tuple[str, ...]) -> None:
        self.hosts = {h.lower() for h in hosts}

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> Any:
        u = urllib.parse.urlsplit(newurl)
        if u.scheme not in ("http", "https") or (u.hostname or "").lower() not in self.hosts:
            raise UpdateRefused(f"download redirected to {newurl[:200]!r}, not an update host")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        where = f" ({e.filename})" if e.filename else ""
        return f"{e.strerror}{where}"[:500]
    if isinstance(e, subprocess.TimeoutExpired):
        return f"{' '.join(map(str, e.cmd))[:100]} took longer than {e.timeout:.0f} s"
    return str(e)[:500] or type(e).__name__


def _du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


def _site_packages(env: Path) -> Path:
    found = sorted((env / "lib").glob("python3*/site-packages"))
    if not found:
        raise UpdateRefused(f"{env}: the new venv has no site-packages")
    return found[0]
