"""Helpers for the update tests: signing keys, agent wheels of other versions built from
this checkout (optionally broken on purpose), a first release laid out like the pole's,
a loopback HTTP server for bundles, and :class:`Supervisor`, which plays systemd's role:
``update-guard start`` before each start, ``current/venv/bin/agent run``, ``update-guard
stopped`` after each exit, a restart after ``restart_s``, and ``update-guard tick`` every
``tick_s`` (the timer), restarting the agent when it rolled back."""

from __future__ import annotations

import http.server
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import venv
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import ROOT

GUARD = ROOT / "agent" / "update" / "guard.py"
SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])


def keypair(tmp: Path, name: str) -> tuple[Ed25519PrivateKey, Path, Path]:
    """A new Ed25519 key, written as ``name.pem`` and ``name.pub.pem``."""
    key = Ed25519PrivateKey.generate()
    priv, pub = tmp / f"{name}.pem", tmp / f"{name}.pub.pem"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, priv, pub


def agent_wheel(tmp: Path, version: str, patch: Callable[[Path], None] | None = None) -> Path:
    """The agent's wheel built from this checkout with ``__version__ = version`` (and
    ``patch`` applied to the copied source). Returns a wheelhouse folder holding it."""
    src = tmp / f"src-{version}"
    for part in ("agent", "drivers", "sim"):
        shutil.copytree(ROOT / part, src / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for f in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    init = src / "agent" / "__init__.py"
    text = init.read_text()
    init.write_text(text.replace('__version__ = "', f'__version__ = "{version}"  # was "', 1))
    if patch:
        patch(src)
    out = tmp / f"wheels-{version}"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "--no-index", "-w", str(out), str(src)],
                   check=True, timeout=300, cwd=tmp)
    shutil.rmtree(src)
    return out


def base_release(root: Path, version: str = "0.1.0") -> Path:
    """A first release as flash.sh would leave it, made cheaply: its venv sees this
    checkout and the test venv's packages. ``current`` points at it."""
    rel = root / "releases" / version
    env = rel / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env)
    site = next((env / "lib").glob("python3*/site-packages"))
    (site / "_polelink_dev.pth").write_text(f"{ROOT}\n{SITE_PACKAGES}\n")
    agent = env / "bin" / "agent"
    agent.write_text(f"#!{env / 'bin' / 'python'}\nimport sys\nfrom agent.cli import main\n"
                     "sys.exit(main())\n")
    agent.chmod(0o755)
    (root / "current").symlink_to(f"releases/{version}")
    return rel


class BundleServer:
    """``http.server`` on 127.0.0.1 serving one folder."""

    def __init__(self, folder: Path) -> None:
        handler = _quiet_handler(str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        """The URL of a file in the folder."""
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        """Stop serving."""
        self.httpd.shutdown()
        self.httpd.server_close()


def _quiet_handler(folder: str) -> type:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **k: object) -> None:
            super().__init__(*a, directory=folder, **k)  # type: ignore[arg-type]

        def log_message(self, *_a: object) -> None:
            pass
    return Handler


def guard(root: Path, action: str, env: dict[str, str] | None = None) -> int:
    """Run the guard as systemd does: the file on its own, isolated from the agent's
    packages (``python -I``), so it proves it needs only the standard library."""
    r = subprocess.run([sys.executable, "-I", str(GUARD), action, "--root", str(root)],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, **(env or {})})
    if r.stderr.strip():
        print(r.stderr.strip(), file=sys.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    return r.returncode


class Supervisor:
    """See the module docstring."""

    def __init__(self, root: Path, config: Path, log: Path, restart_s: float = 0.5,
                 tick_s: float = 2.0) -> None:
        self.root, self.config, self.log = root, config, log
        self.restart_s, self.tick_s = restart_s, tick_s
        self.proc: subprocess.Popen | None = None
        self.starts: list[tuple[float, str]] = []        # (monotonic, release started)
        self.exits: list[int] = []
        self.rollbacks = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.ticker = threading.Thread(target=self._tick, daemon=True)

    def start(self) -> Supervisor:
        """Start supervising."""
        self.thread.start()
        self.ticker.start()
        return self

    def current(self) -> str:
        """The release ``current`` names now."""
        return Path(os.readlink(self.root / "current")).name

    def _run(self) -> None:
        while not self._stop.is_set():
            guard(self.root, "start")
            with self._lock:
                if self._stop.is_set():
                    return
                self.starts.append((time.monotonic(), self.current()))
                self.proc = subprocess.Popen(
                    [str(self.root / "current" / "venv" / "bin" / "agent"), "run", "--config",
                     str(self.config), "-q"], stdout=self.log.open("a"),
                    stderr=subprocess.STDOUT, cwd=self.root,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
            rc = self.proc.wait()
            self.exits.append(rc)
            guard(self.root, "stopped", {"SERVICE_RESULT": "success" if rc == 0 else "exit-code",
                                         "EXIT_CODE": "exited", "EXIT_STATUS": str(rc)})
            self._stop.wait(self.restart_s)

    def _tick(self) -> None:
        while not self._stop.wait(self.tick_s):
            if guard(self.root, "tick") == 10:        # rolled back: systemctl restart
                self.rollbacks += 1
                with self._lock:
                    if self.proc is not None and self.proc.poll() is None:
                        self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 40) -> int | None:
        """Stop supervising and the agent (SIGTERM); its exit code."""
        self._stop.set()
        with self._lock:
            p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            return p.wait()
