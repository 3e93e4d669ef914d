"""MQTT uplink: publishes the outbox to the city's broker, in order, at least once.

One network thread owns a paho-mqtt 2.x client:

- connect with MQTT 5 (every connection; 3.1.1 only for a connection whose MQTT 5
  CONNECT the broker explicitly refused as an unsupported protocol version, or when
  configured), with a persistent session (``session_expiry_s``) so commands sent while
  we reconnect wait for us; TLS / mutual TLS when configured; a retained **last will**
  ``offline`` on the status topic and, once connected, a retained **birth** ``online``
  (both carry the boot counter ``bdSeq``, after Sparkplug B);
- with ``primary_host`` set, hold data until the platform's retained STATE topic
  ``<prefix>/STATE/<primary_host>`` says ``online`` (Sparkplug B's primary host): a
  broker that restarted and lost the platform's session then loses nothing, because
  nothing is sent until the platform is back and subscribed;
- publish the outbox's pending messages with QoS 1, a bounded number in flight;
- **delivered means the platform has it**: when the platform's STATE announces
  acknowledgement (``"ack": 1``), a message leaves the outbox only when the platform's
  acknowledgement on ``<prefix>/<site>/<device>/ack`` (``polelink/ack/1``: the ``seq``
  ranges of this outbox epoch it has *stored*, retained, within a second) covers it.
  At most ``ack_window`` messages are sent and not yet acknowledged (flow control: a slow
  platform or a broker's queue limit cannot make the pole outrun it); when the oldest of
  them waits longer than ``ack_timeout_s`` (doubling up to ``ack_timeout_max_s`` while
  nothing is acknowledged) sending goes back to the oldest unacknowledged message (same
  ``msg_id``: the platform drops repeats). A platform that does not announce it (or no
  ``primary_host``) gets today's behaviour: a message is deleted on the broker's PUBACK
  (health says which: ``delivery`` is ``platform-ack`` or ``broker-ack``). Deletions are
  one transaction per acknowledgement or network pass: a power cut in between only means
  a repeat with the same ``msg_id``. A
  PUBACK with a failure reason (MQTT 5 "Not authorized", quota) keeps the message,
  pauses publishing with back-off and raises one ``publish_refused`` alarm. (MQTT 3.1.1
  has no such reason: a broker that drops a denied 3.1.1 publication acknowledges it, and
  only the platform's gap count can show the loss);
- any error inside the thread is logged and counted (``threadRestarts``) and the thread
  reconnects: it never dies while the agent runs; every pass of its loop (and its
  back-off waits) stamps ``heartbeat``, so the service watchdog sees a thread that hangs
  (in a connect or a write no timeout reaches) and restarts the agent;
- on any disconnect, drop the client and its in-flight state, wait with exponential
  back-off and jitter, and connect a fresh client; sending restarts from the oldest
  unacknowledged message, so a message may arrive twice, always with the same ``msg_id``.

Topic tree: ``<prefix>/<site>/<device>/<kind>[/<name>]``; see ``agent/uplink/schemas/``.
"""

from __future__ import annotations

import contextlib
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
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent.service.heartbeat import Heartbeat
from agent.uplink.outbox import Outbox

log = logging.getLogger(__name__)

#: The longest one pass of the network loop may take (a connect's timeout, a TLS
#: handshake, an outbox transaction on a slow SD card) before the thread counts as stuck.
UPLINK_BOUND_S = 60.0
#: MQTT 5 DISCONNECT reason "Session taken over": another client connected with our id.
SESSION_TAKEN_OVER = 0x8E
#: Waits before reconnecting after the 1st, 2nd, … take-over in a row (each at most
#: ``takeover_wait_max_s``); from the 5th on, ``takeover_wait_max_s`` (60 s: at most one
#: reconnect a minute: two poles with one id must not storm the broker).
TAKEOVER_WAITS_S = (2.0, 4.0, 8.0, 16.0)
#: A connection that lasts this long ends a run of take-overs (the alarm clears).
TAKEOVER_CLEAR_S = 300.0
#: mosquitto 2.0 closes a taken-over connection without the 0x8E DISCONNECT (its packet
#: is not flushed before the socket closes), as MQTT 3.1.1 brokers do: this many
#: connections in a row that the broker closed, without a reason, each within
#: QUICK_CLOSE_S of being accepted, all within QUICK_WINDOW_S, each followed by a
#: reconnect that found our session still there (the other client kept it alive: a broker
#: that restarted without persistence has none), are taken for take-overs.
QUICK_CLOSES = 3
QUICK_CLOSE_S = 10.0
QUICK_WINDOW_S = 60.0


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
    primary_host: str | None = None       # hold data until <prefix>/STATE/<it> is online
    session_expiry_s: int = 3600          # 0: a clean session on every connection
    ack_window: int = 200                 # sent, not yet acknowledged by the platform
    ack_timeout_s: float = 30.0           # then go back to the oldest unacknowledged
    ack_timeout_max_s: float = 300.0
    state_future_s: float = 300.0         # a STATE further ahead of our clock is suspect
    receive_maximum: int = 20             # commands the broker may send unacknowledged
    takeover_wait_max_s: float = 60.0     # the wait after the 5th take-over in a row


@dataclass
class UplinkStats:
    """Connection and delivery figures."""

    connects: int = 0
    disconnects: int = 0
    published: int = 0
    acked: int = 0
    refused: int = 0                      # PUBACKs with a failure reason
    thread_restarts: int = 0              # errors the network thread recovered from
    platform_acked: int = 0               # freed by the platform's acknowledgement
    resends: int = 0                      # go-backs after an acknowledgement timeout
    takeovers: int = 0                    # sessions taken over by another client (0x8E)
    last_error: str = ""
    protocol: str = ""


def now_iso() -> str:
    """UTC now, ISO-8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def credentials(secrets_file: Path | None, username: str | None = None,
                password: str | None = None) -> tuple[str | None, str | None]:
    """MQTT username/password, never written in the config itself.

    The config's ``mqtt.password`` (a ``!secret`` or ``${NAME}`` reference, resolved when
    the config was loaded) with ``mqtt.username`` win; then ``POLELINK_MQTT_USERNAME`` /
    ``POLELINK_MQTT_PASSWORD``; otherwise the older ``mqtt.secrets_file`` holds
    ``username: …`` and ``password: …`` lines (YAML).
    """
    if password is not None:
        return username, password
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
                 on_command: Callable[..., None] | None = None) -> None:
        self.s = settings
        self.device, self.site = device, site
        self.outbox = outbox
        #: ``on_command(topic, payload, retained[, done])``: with a 4th parameter, the
        #: command is acknowledged to the broker (PUBACK) only when ``done()`` is called
        #: (once answered): the broker then sends at most ``receive_maximum`` commands
        #: the pole has not finished (MQTT 5 back-pressure). Without, at once.
        self.on_command = on_command
        self._command_done = on_command is not None and _takes_done(on_command)
        self.base = f"{settings.prefix}/{site}/{device}"
        self.state_topic = (f"{settings.prefix}/STATE/{settings.primary_host}"
                            if settings.primary_host else None)
        self.stats = UplinkStats()
        self.boot = outbox.next_boot()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: stamped on every pass of the network loop and while it backs off (watchdog)
        self.heartbeat = Heartbeat("uplink", UPLINK_BOUND_S)
        self._client: mqtt.Client | None = None
        self._connected = threading.Event()
        self._inflight: dict[int, tuple[int, str]] = {}   # paho mid → (outbox id, topic)
        self._acked: list[int] = []                   # PUBACKed, not yet deleted
        self._sent_up_to = 0                          # outbox id last handed to paho
        self._lock = threading.Lock()
        self._attempt = 0                             # connections tried in this life
        self._use_311_once = settings.protocol == "3.1.1"
        self._protocol = mqtt.MQTTv311 if self._use_311_once else mqtt.MQTTv5
        self._platform_ts = -1.0                      # timestamp of the last STATE seen
        self._future_said = False                     # a STATE from the future, logged
        self._taken_over = False                      # this connection ended by 0x8E
        self._closed_silently = False                 # … or by the broker, no reason
        self._quick_closes: list[float] = []          # when such short connections ended
        self._quick_pending: float | None = None      # … the last, until the next CONNACK
        self._takeover_run = 0                        # take-overs in a row
        self._connected_at = 0.0
        self._cmd_acks: list[tuple[mqtt.Client, int]] = []   # commands to PUBACK
        self._platform_online = False
        self._platform_acks = False                   # the platform's STATE announces acks
        self._unacked: dict[int, tuple[int, float]] = {}  # outbox id → (seq, sent at)
        self._frees: list[tuple[str, list[tuple[int, int]]]] = []   # acks to apply
        self._ack_timeout = settings.ack_timeout_s
        self._hold_until = 0.0                        # publishing paused (refused) until
        self._refused_backoff = 0.0
        self.notices: list[tuple[str, str, dict[str, Any]]] = []  # (event, severity, detail)

    # -- public ---------------------------------------------------------------------
    def topic(self, kind: str, name: str | None = None) -> str:
        """``<prefix>/<site>/<device>/<kind>[/<name>]``."""
        return f"{self.base}/{kind}" + (f"/{name}" if name else "")

    def start(self) -> Uplink:
        """Start (or, after it died, restart) the network thread."""
        self._stop.clear()
        self.heartbeat.arm()
        self._thread = threading.Thread(target=self._run, name="mqtt-uplink", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Publish ``offline`` (retained), disconnect, stop."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        """The network thread is running (or was never started)."""
        return self._thread is None or self._thread.is_alive()

    @property
    def connected(self) -> bool:
        """Connected to the broker right now."""
        return self._connected.is_set()

    @property
    def platform_online(self) -> bool:
        """The platform's STATE says online (always True without ``primary_host``)."""
        return self.state_topic is None or self._platform_online

    @property
    def delivery(self) -> str:
        """``platform-ack`` when the platform acknowledges what it stored (a message is
        freed only then), else ``broker-ack`` (freed on the broker's PUBACK)."""
        return "platform-ack" if self.state_topic and self._platform_acks else "broker-ack"

    @property
    def awaiting_ack(self) -> int:
        """Messages sent and not yet acknowledged by the platform."""
        return len(self._unacked)

    @property
    def refused(self) -> bool:
        """The broker is refusing our publications right now (e.g. not authorized)."""
        return time.monotonic() < self._hold_until

    def take_notices(self) -> list[tuple[str, str, dict[str, Any]]]:
        """Events for the runner to publish (refused publications and their recovery)."""
        with self._lock:
            out, self.notices = self.notices, []
        return out

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

    def figures(self) -> dict[str, Any]:
        """For health: connection, delivery, refusals, thread restarts, take-overs."""
        st = self.stats
        return {"connected": self.connected, "protocol": st.protocol, "connects": st.connects,
                "takeovers": st.takeovers,
                "disconnects": st.disconnects, "published": st.published, "acked": st.acked,
                "refused": st.refused, "threadRestarts": st.thread_restarts,
                "delivery": "platform-ack" if self.delivery == "platform-ack" else "broker-ack",
                "awaitingPlatformAck": self.awaiting_ack,
                "platformAcked": st.platform_acked, "resends": st.resends,
                "platformOnline": self.platform_online if self.state_topic else None,
                "lastError": st.last_error[:300]}

    # -- network thread ---------------------------------------------------------------
    def _status(self, state: str) -> dict[str, Any]:
        """A birth/death message. It does not take a data ``seq`` (a last will that is never
        sent must not look like a gap): ``seq`` is the last data seq so far, and ``msg_id``
        is ``device:epoch:bd<bdSeq>.<connection>-<state>``, unique for every connection."""
        return {"schema": "polelink/status/1", "device": self.device, "site": self.site,
                "ts": now_iso(), "state": state, "bdSeq": self.boot,
                "seq": max(1, self.outbox.last_seq),
                "msg_id": f"{self.device}:{self.outbox.epoch}:bd{self.boot}.{self._attempt}"
                          f"-{state}"}

    def _new_client(self) -> mqtt.Client:
        s = self.s
        self._attempt += 1
        v311 = self._use_311_once
        self._protocol = mqtt.MQTTv311 if v311 else mqtt.MQTTv5
        persistent = s.session_expiry_s > 0
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                        client_id=s.client_id or f"polelink-{self.device}",
                        protocol=self._protocol,
                        clean_session=(not persistent) if v311 else None, manual_ack=True)
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

    def _connect(self, client: mqtt.Client) -> None:
        s = self.s
        if self._protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            if s.session_expiry_s > 0:
                props.SessionExpiryInterval = s.session_expiry_s
            # at most this many commands sent to us and not yet answered (back-pressure)
            props.ReceiveMaximum = max(1, min(65535, s.receive_maximum))
            client.connect(s.host, s.port, s.keepalive_s, clean_start=s.session_expiry_s == 0,
                           properties=props)
        else:
            client.connect(s.host, s.port, s.keepalive_s)

    def _on_connect(self, c: mqtt.Client, _u: object, flags: object, reason: Any,
                    _props: object) -> None:
        if reason.is_failure:
            self.stats.last_error = f"connection refused: {reason}"
            log.warning("mqtt: %s", self.stats.last_error)
            if self.s.protocol == "auto" and self._protocol == mqtt.MQTTv5 \
                    and "protocol" in str(reason).lower():
                log.info("mqtt: broker refuses MQTT 5 on this connection; trying 3.1.1")
                self._use_311_once = True
            return
        self.stats.connects += 1
        self.stats.protocol = "5" if self._protocol == mqtt.MQTTv5 else "3.1.1"
        self._platform_online = False          # learnt again from the retained STATE
        # a new connection learns the STATE afresh: a timestamp remembered from a forged
        # or a lost STATE must not outlive the connection it came on
        self._platform_ts = -1.0
        self._future_said = False
        self._taken_over = False
        self._closed_silently = False
        self._connected_at = time.monotonic()
        if self._quick_pending is not None:   # a short connection closed without a reason:
            if getattr(flags, "session_present", False):   # our session lived on: kept
                self._quick_closes.append(self._quick_pending)      # by another client?
            else:
                self._quick_closes.clear()    # the broker forgot it: it restarted
            self._quick_pending = None
        c.publish(self.topic("status"), json.dumps(self._status("online")), qos=1, retain=True)
        if self._protocol == mqtt.MQTTv5:
            # retain-as-published: a command published retained is seen as retained even
            # while we are subscribed (brokers clear the flag otherwise), so it is refused
            c.subscribe(self.topic("cmd"), options=SubscribeOptions(qos=1,
                                                                    retainAsPublished=True))
        else:
            c.subscribe(self.topic("cmd"), qos=1)
        if self.state_topic:
            # the retained acknowledgement first, then the STATE that opens sending: the
            # pole knows what the platform has before it sends anything again
            c.subscribe(self.topic("ack"), qos=1)
            c.subscribe(self.state_topic, qos=1)
        self._connected.set()
        log.info("mqtt: connected to %s:%s (MQTT %s)", self.s.host, self.s.port,
                 self.stats.protocol)

    def _on_disconnect(self, _c: mqtt.Client, _u: object, _flags: object, reason: Any,
                       _props: object) -> None:
        if getattr(reason, "value", None) == SESSION_TAKEN_OVER:
            self._taken_over = True
        elif self._connected.is_set() and not self._stop.is_set() \
                and not getattr(_flags, "is_disconnect_packet_from_server", True) \
                and getattr(reason, "value", None) == 128:
            self._closed_silently = True        # the socket closed under us (EOF, reset)
        if self._connected.is_set():
            self.stats.disconnects += 1
            self.stats.last_error = f"disconnected: {reason}"
        # (a refused connection keeps its clearer reason, e.g. "Not authorized")
        self._connected.clear()

    def _on_publish(self, _c: mqtt.Client, _u: object, mid: int, reason: Any,
                    _props: object) -> None:
        with self._lock:
            entry = self._inflight.pop(mid, None)
        if entry is None:
            return
        oid, topic = entry
        if getattr(reason, "is_failure", False):
            with self._lock:
                self._unacked.pop(oid, None)
            self._publication_refused(oid, topic, str(reason))
            return
        if self.delivery == "broker-ack":
            self._acked.append(oid)  # deleted in a batch after this network pass
        if self._refused_backoff and not self.refused:
            self._refused_backoff = 0.0
            log.info("mqtt: the broker accepts our publications again")
            with self._lock:
                self.notices.append(("publish_refused", "info", {"recovered": True}))

    def _publication_refused(self, oid: int, topic: str, reason: str) -> None:
        """A PUBACK with a failure reason (e.g. "Not authorized"): the message stays in the
        outbox, publishing pauses with back-off, and an alarm is raised once."""
        self.stats.refused += 1
        first = not self._refused_backoff
        self._refused_backoff = min(max(self._refused_backoff * 2, self.s.reconnect_min_s),
                                    self.s.reconnect_max_s)
        self._hold_until = time.monotonic() + self._refused_backoff
        with self._lock:
            self._sent_up_to = min(self._sent_up_to, oid - 1)   # resend it after the pause
        self.stats.last_error = f"broker refused a publication on {topic}: {reason}"
        if first:
            log.error("mqtt: %s; the message stays queued (check the broker ACL)",
                      self.stats.last_error)
            with self._lock:
                self.notices.append(("publish_refused", "alarm",
                                     {"topic": topic, "reason": reason}))

    def _on_message(self, c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if self.state_topic and msg.topic == self.state_topic:
            self._on_platform_state(msg.payload)
            _ack(c, msg)
            return
        if self.state_topic and msg.topic == self.topic("ack"):
            self._on_platform_ack(msg.payload)
            _ack(c, msg)
            return
        if self.on_command is None:
            _ack(c, msg)
            return
        if not self._command_done:
            try:
                self.on_command(msg.topic, msg.payload, bool(msg.retain))
            except Exception:
                log.exception("mqtt: command handler failed")
            _ack(c, msg)
            return
        mid, qos = msg.mid, msg.qos

        def done() -> None:     # (any thread) answered: the broker may send the next one
            if qos:
                with self._lock:
                    self._cmd_acks.append((c, mid))
        try:
            self.on_command(msg.topic, msg.payload, bool(msg.retain), done)
        except Exception:
            log.exception("mqtt: command handler failed")
            done()

    def _on_platform_state(self, payload: bytes) -> None:
        """Sparkplug-style primary host STATE: ``{"online": bool, "timestamp": ms}``; an
        older timestamp than the last one seen on this connection is ignored (a stale
        will). An empty payload (the retained STATE deleted) means nobody says the platform
        is there: hold.

        A timestamp ahead of this pole's clock is remembered as this pole's clock: a STATE
        stamped ahead (forged, or by a platform whose clock is ahead) cannot hide the
        platform's next STATE. One more than ``state_future_s`` ahead is suspect: saying
        ``offline`` it is ignored (holding is what a forger wants: the outbox would fill),
        saying ``online`` it opens sending (the platform's acknowledgements still decide
        what leaves the outbox), and it is never remembered."""
        if not payload:
            self._platform_online = False
            return
        try:
            msg = json.loads(payload)
            online, ts = msg["online"], float(msg.get("timestamp", 0))
            if not isinstance(online, bool):
                raise ValueError("online is not a boolean")
            if ts != ts or ts in (float("inf"), float("-inf")):
                raise ValueError("timestamp is not a finite number")
        except (ValueError, TypeError, KeyError, RecursionError, OverflowError) as e:
            log.warning("mqtt: ignoring a malformed platform STATE (%s)", str(e)[:200])
            return
        if ts < self._platform_ts:
            return
        now_ms = time.time() * 1000
        ahead_s = (ts - now_ms) / 1000
        if ahead_s > self.s.state_future_s:
            if not self._future_said:
                self._future_said = True
                log.warning("mqtt: the platform STATE on %s is %.0f s ahead of this pole's "
                            "clock (tolerance %.0f s): forged (is the broker's ACL on?) or "
                            "this pole's clock is behind; %s", self.state_topic, ahead_s,
                            self.s.state_future_s, "ignored" if not online else
                            "sending, its timestamp not remembered")
            if not online:
                return
        else:
            self._platform_ts = min(ts, max(now_ms, self._platform_ts))
        acks = msg.get("ack") if isinstance(msg, dict) else None
        acks = isinstance(acks, int) and not isinstance(acks, bool) and acks >= 1
        if online and acks != self._platform_acks:
            log.info("mqtt: platform %s %s", self.s.primary_host,
                     "acknowledges what it stores: a message leaves the outbox only then"
                     if acks else "does not acknowledge: a message leaves the outbox on the "
                     "broker's PUBACK")
            self._platform_acks = acks
            self._go_back()
        if online != self._platform_online:
            log.info("mqtt: platform %s is %s", self.s.primary_host,
                     "online: sending" if online else "offline: holding data in the outbox")
            if online:      # what it had not stored before it went away goes again, now
                self._ack_timeout = self.s.ack_timeout_s
                self._go_back()
        self._platform_online = online

    def _on_platform_ack(self, payload: bytes) -> None:
        """``polelink/ack/1``: ``{"epoch": e, "ranges": [[first, last], …]}``, the ``seq``
        ranges of outbox epoch ``e`` the platform has stored. Applied after this pass."""
        if not payload:                 # the retained acknowledgement deleted: nothing new
            return
        try:
            if len(payload) > 65536:
                raise ValueError(f"{len(payload)} bytes")
            msg = json.loads(payload)
            epoch, raw = msg["epoch"], msg["ranges"]
            if not isinstance(epoch, str) or not isinstance(raw, list) or len(raw) > 1024:
                raise ValueError("epoch is not a string or ranges not a list (≤ 1024)")
            ranges = []
            for r in raw:
                if not (isinstance(r, list) and len(r) == 2
                        and all(isinstance(x, int) and not isinstance(x, bool) for x in r)
                        and 1 <= r[0] <= r[1] < 2**62):     # (SQLite integers: 64 bits)
                    raise ValueError(f"not a range of seqs: {str(r)[:40]}")
                ranges.append((r[0], r[1]))
        except (ValueError, TypeError, KeyError, RecursionError) as e:
            log.warning("mqtt: ignoring a malformed acknowledgement (%s)", str(e)[:200])
            return
        with self._lock:
            self._frees.append((epoch, ranges))

    def _apply_acks(self) -> None:
        """Free what the platform acknowledged (one transaction per acknowledgement)."""
        with self._lock:
            frees, self._frees = self._frees, []
        for epoch, ranges in frees:
            # any epoch: rows salvaged from a replaced file keep their old epoch's msg_id
            n = self.outbox.free(epoch, ranges)
            if n < 0:                   # the delete failed: send them again, later
                self._go_back()
                continue
            if epoch != self.outbox.epoch:
                self.stats.platform_acked += n
                continue
            with self._lock:
                done = [oid for oid, (seq, _t) in self._unacked.items()
                        if any(a <= seq <= b for a, b in ranges)]
                for oid in done:
                    del self._unacked[oid]
            if n or done:
                self.stats.platform_acked += n
                self._ack_timeout = self.s.ack_timeout_s     # progress: patience again

    def _go_back(self) -> None:
        """Send again from the oldest message still in the outbox (same msg_ids)."""
        with self._lock:
            self._unacked.clear()
            self._sent_up_to = 0

    def _check_ack_timeout(self) -> None:
        """The oldest unacknowledged message waited too long: go back and send again,
        with a doubled patience (the platform may be slow, or a broker dropped it)."""
        if not self._unacked or self.delivery != "platform-ack" or not self.platform_online:
            return
        oldest = next(iter(self._unacked.values()))[1]
        if time.monotonic() - oldest < self._ack_timeout:
            return
        self.stats.resends += 1
        log.warning("mqtt: no acknowledgement from the platform for %d message(s) in %.0f s; "
                    "sending them again", len(self._unacked), self._ack_timeout)
        self._ack_timeout = min(self._ack_timeout * 2, self.s.ack_timeout_max_s)
        self._go_back()

    def _run(self) -> None:
        """The network thread: never ends on an error, only on :meth:`stop`."""
        backoff = self.s.reconnect_min_s
        while not self._stop.is_set():
            self.heartbeat.beat()
            try:
                backoff = self._connection(backoff)
            except Exception as e:      # a bug or a broken outbox must not end the uplink
                self.stats.thread_restarts += 1
                self.stats.last_error = f"uplink error: {type(e).__name__}: {e}"
                log.exception("mqtt: uplink error; reconnecting")
                self._connected.clear()
                with contextlib.suppress(Exception):
                    if self._client is not None:
                        self._client.disconnect()
                self._client = None
                self._sleep_backoff(backoff)
                backoff = min(backoff * 2, self.s.reconnect_max_s)
        self.heartbeat.retire()

    def _connection(self, backoff: float) -> float:
        """One connection, from connect to its end; returns the next back-off."""
        client = self._new_client()
        self._client = client
        explicit_311 = self._use_311_once
        self._use_311_once = self.s.protocol == "3.1.1"    # a fallback lasts one connection
        try:
            self._connect(client)
        except (OSError, ssl.SSLError, ValueError) as e:
            self.stats.last_error = f"cannot connect to {self.s.host}:{self.s.port}: {e}"
            log.warning("mqtt: %s", self.stats.last_error)
            self._client = None
            self._sleep_backoff(backoff)
            return min(backoff * 2, self.s.reconnect_max_s)
        with self._lock:
            self._inflight.clear()
            self._unacked.clear()
            self._sent_up_to = 0
        deadline = time.monotonic() + 10
        was_connected = False
        while not self._stop.is_set():
            self.heartbeat.beat()
            rc = client.loop(timeout=0.05)
            self._send_command_acks(client)
            self._flush_acks()
            self._apply_acks()
            self._check_ack_timeout()
            self.outbox.retry()
            if rc != mqtt.MQTT_ERR_SUCCESS:
                break
            if self._connected.is_set():
                was_connected = True
                backoff = self.s.reconnect_min_s
                if self._takeover_run and \
                        time.monotonic() - self._connected_at >= TAKEOVER_CLEAR_S:
                    self._takeovers_ended()
                if self.platform_online and not self.refused:
                    self._pump(client)
            elif self._use_311_once and not explicit_311:
                break           # refused MQTT 5: reconnect at once with 3.1.1
            elif time.monotonic() > deadline:
                break  # no CONNACK (or a refusal): start again
        if not was_connected and not self._stop.is_set() \
                and "refused" not in self.stats.last_error:
            self.stats.last_error = (
                "the broker did not answer the CONNECT (no CONNACK): it may be hung or "
                "overloaded" + (", or require a client certificate (mutual TLS)"
                                if self.s.tls else ""))
            log.warning("mqtt: %s", self.stats.last_error)
        if self._stop.is_set():
            if self._connected.is_set():
                self._send_command_acks(client)
                info = client.publish(self.topic("status"),
                                      json.dumps(self._status("offline")), qos=1, retain=True)
                t_end = time.monotonic() + 2
                while not info.is_published() and time.monotonic() < t_end:
                    client.loop(0.05)
                self._flush_acks()
            client.disconnect()
            self._connected.clear()
            return backoff
        self._connected.clear()
        client.disconnect()
        self._client = None
        if self._use_311_once and not explicit_311 and not was_connected:
            return backoff      # the protocol fallback goes at once
        if self._taken_over or self._silent_takeover(was_connected):
            self._sleep_takeover()
            return backoff
        self._sleep_backoff(backoff)
        return min(backoff * 2, self.s.reconnect_max_s)

    def _silent_takeover(self, was_connected: bool) -> bool:
        """This connection was most likely taken over, though the broker did not say so:
        it closed the connection without a reason, soon after accepting it, for the
        QUICK_CLOSES-th time in a row (or during a run of take-overs already seen)."""
        self._quick_pending = None
        if not (was_connected and self._closed_silently):
            self._quick_closes.clear()
            return False
        now = time.monotonic()
        lived = now - self._connected_at
        if self._takeover_run and lived < TAKEOVER_CLEAR_S:
            return True
        if lived >= QUICK_CLOSE_S:
            self._quick_closes.clear()
            return False
        self._quick_closes = [t for t in self._quick_closes if now - t < QUICK_WINDOW_S]
        if len(self._quick_closes) >= QUICK_CLOSES - 1:     # the earlier ones confirmed
            self._quick_closes.clear()
            return True
        self._quick_pending = now       # confirmed (or not) by the next CONNACK
        return False

    def _sleep_takeover(self) -> None:
        """Another client connected with our client id and the broker closed our session
        (0x8E): most likely a second pole with this device id (a copied card or config).
        Reconnecting at once would take its session over, and it ours, without end: one
        alarm, a log line each time, and waits of 2, 4, 8, 16 s, then a minute."""
        self._takeover_run += 1
        self.stats.takeovers += 1
        n = self._takeover_run
        top = self.s.takeover_wait_max_s
        wait = min(TAKEOVER_WAITS_S[n - 1], top) if n <= len(TAKEOVER_WAITS_S) else top
        cid = self.s.client_id or f"polelink-{self.device}"
        how = ("MQTT 5 reason 0x8E, session taken over" if self._taken_over else
               "without a reason, soon after accepting it, as mosquitto 2.0 and MQTT 3.1.1 "
               "brokers do when another client connects with the same client id")
        self.stats.last_error = (f"session taken over: another client connected with client "
                                 f"id {cid} ({n} time(s) in a row)")
        log.error("mqtt: the broker closed this connection, most likely because another "
                  "client connected with client id %s (%s; %d in a row): is another pole "
                  "using device id %s (a copied card or config)? reconnecting in %.0f s",
                  cid, how, n, self.device, wait)
        if n == 1:
            with self._lock:
                self.notices.append(("session_taken_over", "alarm", {
                    "clientId": cid, "device": self.device,
                    "cause": "another client connected with this pole's client id: two "
                             "poles with the same device id, or a copied card or config",
                    "evidence": "reason 0x8E" if self._taken_over else
                                f"{QUICK_CLOSES} connections in a row closed by the broker "
                                "without a reason soon after it accepted them",
                    "backoffS": [min(w, top) for w in TAKEOVER_WAITS_S] + [top]}))
        # jitter upwards only: never more often than the wait says
        self.heartbeat.wait(self._stop, wait * random.uniform(1.0, 1.25))

    def _takeovers_ended(self) -> None:
        """A connection lasted TAKEOVER_CLEAR_S: a run of take-overs is over."""
        if self._takeover_run:
            log.info("mqtt: connected for %.0f s without a take-over: the session conflict "
                     "has ended", TAKEOVER_CLEAR_S)
            with self._lock:
                self.notices.append(("session_taken_over", "info", {
                    "recovered": True, "takeovers": self._takeover_run}))
            self._takeover_run = 0

    def _send_command_acks(self, client: mqtt.Client) -> None:
        """PUBACK the commands answered since the last pass (on this connection only: the
        broker sends an unacknowledged command again on the next one)."""
        if not self._cmd_acks:
            return
        with self._lock:
            todo, self._cmd_acks = self._cmd_acks, []
        for c, mid in todo:
            if c is client:
                client.ack(mid, 1)

    def _flush_acks(self) -> None:
        """Delete the messages PUBACKed during the last network pass, in one transaction.

        A power cut before this runs only means those messages are sent again (same msg_id).
        """
        if self._acked:
            done, self._acked = self._acked, []
            self.outbox.ack_many(done)
            self.stats.acked += len(done)

    def _sleep_backoff(self, backoff: float) -> None:
        # jitter: poles must not stampede; beating: a long back-off is not a hang
        self.heartbeat.wait(self._stop, backoff * random.uniform(0.5, 1.5))

    def _pump(self, client: mqtt.Client) -> None:
        e2e = self.delivery == "platform-ack"
        with self._lock:
            room = self.s.max_inflight - len(self._inflight)
            if e2e:
                room = min(room, self.s.ack_window - len(self._unacked))
            after = self._sent_up_to
        if room <= 0:
            return
        for m in self.outbox.pending(limit=room, after_id=after):
            info = client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return
            with self._lock:
                self._inflight[info.mid] = (m.id, m.topic)
                self._sent_up_to = m.id
                if e2e:
                    self._unacked[m.id] = (m.seq, time.monotonic())
            self.stats.published += 1


def _ack(client: mqtt.Client, msg: mqtt.MQTTMessage) -> None:
    """PUBACK a message handled at once (the client acknowledges manually)."""
    if msg.qos:
        client.ack(msg.mid, msg.qos)


def _takes_done(handler: Callable[..., Any]) -> bool:
    """The command handler takes a ``done`` callback (a 4th positional parameter)."""
    import inspect

    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 4 or any(p.kind == p.VAR_POSITIONAL for p in params)
