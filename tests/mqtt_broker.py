"""A real mosquitto broker on loopback for tests (started and stopped by the tests)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.helpers import SLACK_S, free_port, wait_until  # noqa: F401 (re-exported)


class Broker:
    """mosquitto on 127.0.0.1:<port>; ``restart`` keeps the port."""

    def __init__(self, tmp: Path, extra: str = "") -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            pytest.skip("mosquitto is not installed (CI installs the Debian package)")
        self.exe = exe
        self.port = free_port()
        self.conf = tmp / "mosquitto.conf"
        self.log = tmp / "mosquitto.log"
        # run as root, mosquitto would switch to its own user, who cannot read our temp files
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(f"{user}listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                             f"persistence false\n{extra}")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        """Start mosquitto and return once *it* listens on the port: another process on
        that port (a second test suite's broker that took it between free_port() and
        now) is not taken for ours."""
        # its log to a file: a pipe nobody reads would fill and stop the broker
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)],
                                         stdout=subprocess.DEVNULL, stderr=log)
        end = time.monotonic() + 10 + SLACK_S
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                err = self.log.read_text(errors="replace")
                raise RuntimeError(f"mosquitto exited ({self.proc.returncode}) on port "
                                   f"{self.port}: {err.strip()[-500:]}")
            if listens(self.proc.pid, self.port):
                return self
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def listens(pid: int, port: int) -> bool:
    """Process ``pid`` holds a socket listening on TCP ``port`` on 127.0.0.1 (Linux
    /proc; elsewhere: anything accepting connections on the port)."""
    try:
        table = Path("/proc/net/tcp").read_text() + Path("/proc/net/tcp6").read_text()
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0
    inodes = set()
    for line in table.splitlines()[1:]:
        f = line.split()
        if len(f) > 9 and f[1].endswith(f":{port:04X}") and f[3] == "0A":   # LISTEN
            inodes.add(f"socket:[{f[9]}]")
    mine = set()
    for fd in fds:
        try:
            mine.add(os.readlink(fd))
        except OSError:
            continue
    return bool(inodes & mine)


class Collector:
    """A subscriber that records every message (topic, decoded JSON, retain flag)."""

    def __init__(self, port: int, topic: str = "#", timeout: float = 10 + SLACK_S) -> None:
        """Returns once the broker has acknowledged the subscription: a message published
        after that is recorded (no sleep needed, however slow the machine)."""
        self.messages: list[tuple[str, dict, bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=f"collector-{os.getpid()}-{time.monotonic_ns()}")
        self.c.on_message = self._on
        self.c.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        if not self.subscribed.wait(timeout):
            self.close()
            raise RuntimeError(f"the collector's subscription to {topic} on port {port} was "
                               f"not acknowledged within {timeout:.0f} s")

    def _on(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        try:
            body = json.loads(msg.payload)
        except (UnicodeDecodeError, ValueError):
            body = {"_raw": msg.payload.hex()}     # e.g. a garbage command sent by a test
        with self.lock:
            self.messages.append((msg.topic, body if isinstance(body, dict) else {"_v": body},
                                  bool(msg.retain)))

    def where(self, pred) -> list[dict]:
        with self.lock:
            return [m for t, m, r in self.messages if pred(t, m, r)]

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()
