"""MQTT uplink: publishes the outbox to the city's broker, in order, at least once.

One network thread owns a paho-mqtt 2.x client:

- connect (MQTT 5, falling back to 3.1.1 when the broker refuses the protocol version;
  TLS / mutual TLS when configured), with a retained **last will** ``offline`` on the
  status topic and, once connected, a retained **birth** ``online`` (both carry the boot
  counter ``bdSeq``, after Sparkplug B);
- publish the outbox's pending messages with QoS 1, a bounded number in flight, and
  delete each one from the outbox only after its PUBACK (in one transaction per network
  pass: a power cut in between only means a repeat with the same ``msg_id``);
- on any disconnect, drop the client and its in-flight state, wait with exponential
  back-off and jitter, and connect a fresh client; sending restarts from the oldest
  unacknowledged message, so a message may arrive twice, always with the same ``msg_id``.

Topic tree: ``<prefix>/<site>/<device>/<kind>[/<name>]``; see ``agent/uplink/schemas/``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.uplink.outbox import Outbox

log = logging.getLogger(__name__)


@dataclass
class TlsSettings:
    """TLS: the CA that signs the broker, and optionally our own certificate and key."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None


@dataclass
class UplinkSettings:
    """Where and how to connect."""

    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "polelink"
    protocol: str = "auto"              # auto | 5 | 3.1.1
    keepalive_s: int = 30
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    max_inflight: int = 20
    username: str | None = None
    password: str | None = None
    tls: TlsSettings | None = None
    client_id: str | None = None


@dataclass
class UplinkStats:
    """Connection and delivery figures."""

    connects: int = 0
    disconnects: int = 0
    published: int = 0
    acked: int = 0
    last_error: str = ""
    protocol: str = ""


def now_iso() -> str:
    """UTC now, ISO-8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def credentials(secrets_file: Path | None) -> tuple[str | None, str | None]:
    """MQTT username/password from the environment or a secrets file, never from the config.

    ``POLELINK_MQTT_USERNAME`` / ``POLELINK_MQTT_PASSWORD`` win; otherwise the secrets file
    holds ``username: …`` and ``password: …`` lines (YAML).
    """
    user = os.environ.get("POLELINK_MQTT_USERNAME")
    pw = os.environ.get("POLELINK_MQTT_PASSWORD")
    if user is None and secrets_file is not None:
        import yaml

        data = yaml.safe_load(Path(secrets_file).read_text()) or {}
        user, pw = data.get("username"), data.get("password")
    return user, pw


class Uplink:
    """See the module docstring."""

    def __init__(self, settings: UplinkSettings, device: str, site: str, outbox: Outbox,
                 on_command: Callable[[str, bytes], None] | None = None) -> None:
        self.s = settings
        self.device, self.site = device, site
        self.outbox = outbox
        self.on_command = on_command
        self.base = f"{settings.prefix}/{site}/{device}"
        self.stats = UplinkStats()
        self.boot = outbox.next_boot()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._inflight: dict[int, int] = {}          # paho mid → outbox id
        self._acked: list[int] = []                   # PUBACKed, not yet deleted
        self._sent_up_to = 0                          # outbox id last handed to paho
        self._lock = threading.Lock()
        self._protocol = mqtt.MQTTv311 if settings.protocol == "3.1.1" else mqtt.MQTTv5

    # -- public ---------------------------------------------------------------------
    def topic(self, kind: str, name: str | None = None) -> str:
        """``<prefix>/<site>/<device>/<kind>[/<name>]``."""
        return f"{self.base}/{kind}" + (f"/{name}" if name else "")

    def start(self) -> Uplink:
        """Start the network thread."""
        self._thread = threading.Thread(target=self._run, name="mqtt-uplink", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Publish ``offline`` (retained), disconnect, stop."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)

    @property
    def connected(self) -> bool:
        """Connected to the broker right now."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected (True) or ``timeout``."""
        return self._connected.wait(timeout)

    def rebirth(self) -> bool:
        """Republish the retained birth (the ``rebirth`` command); False when offline."""
        c = self._client
        if c is None or not self._connected.is_set():
            return False
        info = c.publish(self.topic("status"), json.dumps(self._status("online")), qos=1,
                         retain=True)
        return info.rc == mqtt.MQTT_ERR_SUCCESS

    # -- network thread ---------------------------------------------------------------
    def _status(self, state: str) -> dict[str, Any]:
        """A birth/death message. It does not take a data ``seq`` (a last will that is never
        sent must not look like a gap): ``seq`` is the last data seq so far, and ``msg_id``
        is ``device:bd<bdSeq>-<state>``, stable for this life of the device."""
        return {"schema": "polelink/status/1", "device": self.device, "site": self.site,
                "ts": now_iso(), "state": state, "bdSeq": self.boot,
                "seq": max(1, self.outbox.last_seq),
                "msg_id": f"{self.device}:bd{self.boot}-{state}"}

    def _new_client(self) -> mqtt.Client:
        s = self.s
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                        client_id=s.client_id or f"polelink-{self.device}",
                        protocol=self._protocol, clean_session=True
                        if self._protocol == mqtt.MQTTv311 else None)
        c.max_inflight_messages_set(s.max_inflight)
        if s.username:
            c.username_pw_set(s.username, s.password)
        if s.tls:
            ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(s.tls.ca))
            if s.tls.cert:
                ctx.load_cert_chain(str(s.tls.cert), str(s.tls.key) if s.tls.key else None)
            c.tls_set_context(ctx)
        will = json.dumps(self._status("offline"))
        c.will_set(self.topic("status"), will, qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        return c

    def _on_connect(self, c: mqtt.Client, _u: object, _flags: object, reason: Any,
                    _props: object) -> None:
        if reason.is_failure:
            self.stats.last_error = f"connection refused: {reason}"
            log.warning("mqtt: %s", self.stats.last_error)
            if self.s.protocol == "auto" and self._protocol == mqtt.MQTTv5 \
                    and "protocol" in str(reason).lower():
                log.info("mqtt: broker refuses MQTT 5, falling back to 3.1.1")
                self._protocol = mqtt.MQTTv311
            return
        self.stats.connects += 1
        self.stats.protocol = "5" if self._protocol == mqtt.MQTTv5 else "3.1.1"
        c.publish(self.topic("status"), json.dumps(self._status("online")), qos=1, retain=True)
        c.subscribe(self.topic("cmd"), qos=1)
        self._connected.set()
        log.info("mqtt: connected to %s:%s (MQTT %s)", self.s.host, self.s.port,
                 self.stats.protocol)

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _flags: object, reason: Any,
                       _props: object) -> None:
        if self._connected.is_set():
            self.stats.disconnects += 1
            self.stats.last_error = f"disconnected: {reason}"
        # (a refused connection keeps its clearer reason, e.g. "Not authorized")
        self._connected.clear()

    def _on_publish(self, _c: mqtt.Client, _u: object, mid: int, reason: Any,
                    _props: object) -> None:
        with self._lock:
            oid = self._inflight.pop(mid, None)
        if oid is not None and not getattr(reason, "is_failure", False):
            self._acked.append(oid)  # deleted in a batch after this network pass

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if self.on_command is not None:
            try:
                self.on_command(msg.topic, msg.payload)
            except Exception:
                log.exception("mqtt: command handler failed")

    def _run(self) -> None:
        backoff = self.s.reconnect_min_s
        while not self._stop.is_set():
            client = self._new_client()
            self._client = client
            try:
                client.connect(self.s.host, self.s.port, self.s.keepalive_s)
            except (OSError, ssl.SSLError, ValueError) as e:
                self.stats.last_error = f"cannot connect to {self.s.host}:{self.s.port}: {e}"
                log.warning("mqtt: %s", self.stats.last_error)
                self._sleep_backoff(backoff)
                backoff = min(backoff * 2, self.s.reconnect_max_s)
                continue
            with self._lock:
                self._inflight.clear()
                self._sent_up_to = 0
            deadline = time.monotonic() + 10
            was_connected = False
            while not self._stop.is_set():
                rc = client.loop(timeout=0.05)
                self._flush_acks()
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    break
                if self._connected.is_set():
                    was_connected = True
                    backoff = self.s.reconnect_min_s
                    self._pump(client)
                elif time.monotonic() > deadline:
                    break  # no CONNACK (or a refusal): start again
            if not was_connected and not self._stop.is_set() \
                    and "refused" not in self.stats.last_error:
                self.stats.last_error = (
                    "the broker closed the connection before answering (no CONNACK): "
                    + ("a client certificate may be required (mutual TLS), or "
                       if self.s.tls else "") + "it may not speak this MQTT version")
                log.warning("mqtt: %s", self.stats.last_error)
            if not was_connected and not self._stop.is_set() and self.s.protocol == "auto" \
                    and self._protocol == mqtt.MQTTv5 and "refused" not in self.stats.last_error:
                # the socket opened but an MQTT 5 CONNECT got no CONNACK at all: brokers that
                # only speak 3.1.1 (amqtt, old appliances) just drop it
                log.info("mqtt: no answer to MQTT 5, trying 3.1.1")
                self._protocol = mqtt.MQTTv311
            if self._stop.is_set():
                if self._connected.is_set():
                    info = client.publish(self.topic("status"),
                                          json.dumps(self._status("offline")), qos=1, retain=True)
                    t_end = time.monotonic() + 2
                    while not info.is_published() and time.monotonic() < t_end:
                        client.loop(0.05)
                    self._flush_acks()
                client.disconnect()
                self._connected.clear()
                break
            self._connected.clear()
            client.disconnect()
            self._client = None
            self._sleep_backoff(backoff)
            backoff = min(backoff * 2, self.s.reconnect_max_s)

    def _flush_acks(self) -> None:
        """Delete the messages PUBACKed during the last network pass, in one transaction.

        A power cut before this runs only means those messages are sent again (same msg_id).
        """
        if self._acked:
            done, self._acked = self._acked, []
            self.outbox.ack_many(done)
            self.stats.acked += len(done)

    def _sleep_backoff(self, backoff: float) -> None:
        self._stop.wait(backoff * random.uniform(0.5, 1.5))  # jitter: poles must not stampede

    def _pump(self, client: mqtt.Client) -> None:
        with self._lock:
            room = self.s.max_inflight - len(self._inflight)
            after = self._sent_up_to
        if room <= 0:
            return
        for m in self.outbox.pending(limit=room, after_id=after):
            info = client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return
            with self._lock:
                self._inflight[info.mid] = m.id
                self._sent_up_to = m.id
            self.stats.published += 1
