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

from tests.helpers import free_port, wait_until  # noqa: F401 (re-exported for tests)


class Broker:
    """mosquitto on 127.0.0.1:<port>; ``restart`` keeps the port."""

    def __init__(self, tmp: Path, extra: str = "") -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            pytest.skip("mosquitto is not installed (CI installs the Debian package)")
        self.exe = exe
        self.port = free_port()
        self.conf = tmp / "mosquitto.conf"
        # run as root, mosquitto would switch to its own user, who cannot read our temp files
        user = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(f"{user}listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                             f"persistence false\n{extra}")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
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


class Collector:
    """A subscriber that records every message (topic, decoded JSON, retain flag)."""

    def __init__(self, port: int, topic: str = "#") -> None:
        self.messages: list[tuple[str, dict, bool]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=f"collector-{time.monotonic_ns()}")
        self.c.on_message = self._on
        self.c.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

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
