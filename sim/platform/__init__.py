"""City platform simulator: stands in for the operations centre.

Subscribes to everything under ``<prefix>/#``, validates each message against the
contract (``agent/uplink/schemas``), detects gaps (missing ``seq``) and duplicates (repeated
``msg_id``), stores messages in SQLite, serves a live dashboard on localhost and sends
commands. ``python -m sim.platform --broker 127.0.0.1:1883 --http 127.0.0.1:8080``.

It behaves as a real platform should, so that poles can rely on it:

- a fixed client id and a persistent MQTT 5 session: while it is away, the broker keeps
  its QoS 1 messages; restarted on the same ``--db`` it carries on its ledger;
- a Sparkplug-style **primary host STATE**: once subscribed it publishes a retained
  ``{"online": true, "timestamp": ms}`` on ``<prefix>/STATE/<host_id>`` and leaves a will
  saying ``online: false``; poles configured with ``primary_host`` hold their data while
  it is offline, so a broker that restarts and forgets the platform's session loses nothing.
  With several consumers only one speaks: the holder of a lease in the shared store, on a
  client of its own (``sim.platform.state``); a consumer that dies or hangs is replaced
  as the speaker by another, and a STATE that is not the speaker's is answered at once.
  The host id is ``platform`` by default, as ``agent broker-acl --platform-user`` grants
  it; with ``username`` (an ACL'd broker), the STATE client logs in as
  ``<host_id>-state``, the user ``agent broker-acl`` writes for it;
- **acknowledges what it stored** (``acks``, on by default; the STATE says ``"ack": 1``):
  per device and outbox epoch that sent data, once a second or as soon as ``ack_every``
  (50) of its messages were stored since the last one (so that a replay is never held to
  one window a second), the ``seq`` ranges its store holds, retained QoS 1 on
  ``<prefix>/<site>/<device>/ack`` (``polelink/ack/1``).
  A pole frees a message only then. Several platform processes may share one ``--db``
  and one subscription (``share``: MQTT 5 ``$share/<group>/<prefix>/#``): the ranges are
  read from the shared file, so none acknowledges what another has not stored;
- commands expire (``ttl_s``), are signed when given an Ed25519 key, and are sent again
  with the same correlation id until answered or expired (the pole runs each id once); a
  ``busy`` answer (``data.busy``: the pole had no room for it, nothing ran) is no answer:
  the command is sent again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from agent.uplink.commands import new_command
from sim.platform.store import Store, active_alarms, traffic_view
from sim.platform.web import make_server

log = logging.getLogger(__name__)


class PlatformSim:
    """Subscriber + store + dashboard + command sender."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, prefix: str = "polelink",
                 db: str = ":memory:", http_host: str = "127.0.0.1", http_port: int = 0,
                 host_id: str | None = None, signing_key: Any | None = None,
                 protocol: str = "5", retry_s: float = 5.0, token: str | None = None,
                 clock: Callable[[], float] = time.time, acks: bool = True,
                 share: str | None = None, ack_interval_s: float = 1.0, ack_every: int = 50,
                 client_id: str | None = None, session_expiry_s: int = 3600,
                 username: str | None = None, password: str | None = None,
                 state_username: str | None = None, state_password: str | None = None,
                 lease_ttl_s: float = 3.0) -> None:
        host_id = host_id or "platform"
        self.prefix = prefix
        self.clock = clock              # what commands' ``expires`` count from
        self.host_id = host_id
        self.state_topic = f"{prefix}/STATE/{host_id}"
        self.signing_key = signing_key
        self.retry_s = retry_s
        self.acks = acks
        self.share = share
        self.ack_interval_s = ack_interval_s
        self.ack_every = ack_every
        self.session_expiry_s = session_expiry_s
        self.acks_sent = 0
        self.busy_answers = 0           # "busy" responses (the command is sent again)
        self.store = Store(db)
        self.invalid_log: list[tuple[str, list[str]]] = []
        self.unanswered: dict[str, tuple[str, bytes, float]] = {}  # cid → topic, body, expiry
        self._next_send: dict[str, float] = {}      # cid → when to send it again (monotonic)
        self.responses: dict[str, dict[str, Any]] = {}
        self._node_warned: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.v5 = protocol == "5"
        # a fixed client id and a persistent session (as a real platform should have):
        # while the platform is away, the broker keeps its QoS 1 messages for it
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"polelink-platform-{host_id}",
                                  protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311,
                                  clean_session=None if self.v5 else False)
        self.subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = lambda *a: self.subscribed.clear()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.5, 5)
        if username:
            self.client.username_pw_set(username, password)
        self.host, self.port = host, port
        self._speaker_thread: threading.Thread | None = None
        from sim.platform.lease import StateLease
        from sim.platform.state import StateSpeaker

        self.speaker = StateSpeaker(
            host, port, prefix, host_id,
            StateLease(db, client_id or f"polelink-platform-{host_id}", host_id, lease_ttl_s),
            self.subscribed.is_set, acks=acks, v5=self.v5,
            # (its own username: the shipped broker makes the username the client id)
            username=state_username or (f"{host_id}-state" if username else None),
            password=state_password if state_password is not None else password)
        # the dashboard's bearer token for commands (the page reads it from the URL fragment)
        self.token = token or secrets.token_urlsafe(24)
        self.http = make_server(http_host, http_port, self.state, self.command, self.token)
        self.http_port = self.http.server_address[1]

    def start(self) -> PlatformSim:
        """Connect and serve the dashboard."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        if self.v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.session_expiry_s
            self.client.connect_async(self.host, self.port,
                                      clean_start=self.session_expiry_s == 0,
                                      properties=props)
        else:
            self.client.connect_async(self.host, self.port)
        self.client.loop_start()
        threading.Thread(target=self.http.serve_forever, daemon=True, name="platform-http").start()
        threading.Thread(target=self._retry_loop, daemon=True, name="platform-retry").start()
        self._speaker_thread = threading.Thread(target=self._speak, daemon=True,
                                                name="platform-state")
        self._speaker_thread.start()
        if self.acks:
            threading.Thread(target=self._ack_loop, daemon=True, name="platform-ack").start()
        return self

    def _speak(self) -> None:
        """The STATE, when this consumer holds the lease (a few passes a second)."""
        while not self._stopping.wait(0.2):
            try:
                self.speaker.step()
            except Exception:               # a locked database, a broken client: next pass
                log.exception("platform: the STATE pass failed; trying again")

    def _ack_loop(self) -> None:
        """About once a second: acknowledge what the store holds, per device and epoch."""
        while not self._stopping.wait(min(0.05, self.ack_interval_s)):
            try:
                self.send_acks(self.ack_interval_s, self.ack_every)
            except Exception:               # a locked database, a broken client: next pass
                log.exception("platform: acknowledging failed; trying again")

    def send_acks(self, max_age_s: float = 0.0, min_count: int = 1) -> int:
        """Publish the acknowledgements due (by default all pending; retained, QoS 1);
        returns how many."""
        if not self.acks:
            return 0
        n = 0
        for base, epoch, ranges in self.store.take_acks(max_age_s, min_count):
            device = base.rsplit("/", 1)[-1]
            body = {"schema": "polelink/ack/1", "device": device, "epoch": epoch,
                    "ranges": ranges,
                    "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            self.client.publish(f"{base}/ack", json.dumps(body, separators=(",", ":")),
                                qos=1, retain=True)
            n += 1
        self.acks_sent += n
        return n

    def stop(self) -> None:
        """Say offline (retained), disconnect and stop the dashboard."""
        self._stopping.set()
        if self.subscribed.is_set():
            with contextlib.suppress(RuntimeError, ValueError):
                self.send_acks()
        if self._speaker_thread is not None:
            self._speaker_thread.join(5)
        self.speaker.stop()             # offline, and the lease to another consumer
        self.client.disconnect()
        self.client.loop_stop()
        self.http.shutdown()

    def _on_connect(self, c: mqtt.Client, _u: object, _f: object, _rc: object,
                    _p: object) -> None:
        self.subscribed.clear()
        c.subscribe(f"$share/{self.share}/{self.prefix}/#" if self.share
                    else f"{self.prefix}/#", qos=1)

    def _on_subscribe(self, c: mqtt.Client, *_a: object) -> None:
        # only now, subscribed, may the poles send: the STATE speaker says so (retained)
        self.subscribed.set()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.startswith(f"{self.prefix}/STATE/") or msg.topic.endswith("/ack"):
            return
        outcome, probs = self.store.add(msg.topic, msg.payload, time.time())
        if outcome == "invalid":
            # a lamp node's messages may have no schema yet: say so once per topic, and
            # keep counting them (the dashboard shows the node anyway)
            parts = msg.topic.split("/")
            node = len(parts) > 2 and parts[2] in self.store.nodes
            if not node or msg.topic not in self._node_warned:
                if node:
                    self._node_warned.add(msg.topic)
                log.warning("invalid message on %s: %s%s", msg.topic, "; ".join(probs),
                            " (lamp node: repeats on this topic are counted, not logged)"
                            if node else "")
            self.invalid_log.append((msg.topic, probs))
        elif msg.topic.endswith("/cmd/response") and outcome in ("stored", "duplicate"):
            with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
                resp = json.loads(msg.payload)
                data = resp.get("data") or {}
                if data.get("busy") is True:
                    # the pole had no room: not an answer; sent again after its retry-after
                    self.busy_answers += 1
                    after = data.get("retryAfterS")
                    after = after if isinstance(after, (int, float)) and 0 < after <= 600 \
                        else self.retry_s
                    with self._lock:
                        if resp.get("correlation_id") in self.unanswered:
                            self._next_send[resp["correlation_id"]] = time.monotonic() + after
                    return
                with self._lock:            # the first answer counts; repeats are dropped
                    self.unanswered.pop(resp["correlation_id"], None)
                    self._next_send.pop(resp["correlation_id"], None)
                    self.responses.setdefault(resp["correlation_id"], resp)

    def command(self, req: dict[str, Any], ttl_s: float = 300) -> dict[str, Any]:
        """Send a command to a device (``req``: device, site, command, args); it is sent
        again every ``retry_s`` until answered or expired. Returns the correlation id."""
        if not isinstance(req.get("command"), str) or not isinstance(req.get("device"), str) \
                or not isinstance(req.get("site"), str):
            raise ValueError("a command needs device, site and command (strings)")
        now = self.clock()
        body = new_command(req["command"], req.get("args") or None,
                           correlation_id=req.get("correlation_id"), ttl_s=ttl_s,
                           device=req["device"], site=req["site"],
                           signing_key=self.signing_key, now=now)
        topic = f"{self.prefix}/{req['site']}/{req['device']}/cmd"
        raw = json.dumps(body).encode()
        with self._lock:
            self.unanswered[body["correlation_id"]] = (topic, raw, now + ttl_s)
            self._next_send[body["correlation_id"]] = time.monotonic() + self.retry_s
        self.client.publish(topic, raw, qos=1)
        return {"correlation_id": body["correlation_id"], "topic": topic}

    def _retry_loop(self) -> None:
        """Send an unanswered command again (same correlation id) ``retry_s`` after it was
        last sent (or a busy answer's retry-after), until it expires."""
        while not self._stopping.wait(min(0.5, self.retry_s)):
            now, mono = self.clock(), time.monotonic()
            todo = []
            with self._lock:
                for cid, (topic, raw, expiry) in list(self.unanswered.items()):
                    if expiry <= now:
                        del self.unanswered[cid]
                        self._next_send.pop(cid, None)
                    elif self._next_send.get(cid, 0.0) <= mono:
                        todo.append((topic, raw))
                        self._next_send[cid] = mono + self.retry_s
            if self.subscribed.is_set():
                for topic, raw in todo:
                    self.client.publish(topic, raw, qos=1)

    def state(self) -> dict[str, Any]:
        """Everything the dashboard shows, per device (as named by its topics, which nothing
        checks: the page must treat every string here as text). A lamp node (``role``
        ``node``) has ``node``: its level, clock state and health, even while the contract
        has no schema for its messages."""
        now = time.time()
        summary = self.store.summary()
        seen = self.store.devices()
        health = self.store.newest("health")
        nodes = self.store.node_views()
        devices: dict[str, Any] = {}
        for dev in sorted(set(summary) | set(seen)):
            s = summary.get(dev, {})
            tr = self.store.recent("traffic", dev, 400)
            lt = self.store.recent("lighting", dev, 400)
            ev = self.store.recent("event", dev, 2000)
            last = seen.get(dev, {}).get("last_seen")
            h = health.get(dev)
            traffic = traffic_view(tr)
            node = nodes.get(dev)
            devices[dev] = {
                "role": "node" if node else "pole", "node": node,
                "site": seen.get(dev, {}).get("site", "") or (node or {}).get("site", ""),
                "summary": s,
                "last_seen": None if last is None else {
                    "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last)),
                    "age_s": round(max(0.0, now - last), 1)},
                "traffic": traffic,
                "total_vehicles": sum(x["total"] or 0 for x in traffic["slots"]),
                "lighting": {m["group"]: {"target": m["lampActuator"]["targetLightState"],
                                          "actual": m["lampActuator"]["actualLightState"],
                                          "mode": m["lampActuator"]["mode"]} for m in lt},
                "energy_saved_wh": sum(m["energySavedWh"] for m in lt),
                "health": None if h is None else {
                    "ts": h["ts"], "outbox": h["outbox"], "cameras": h.get("cameras") or {},
                    "buses": (h.get("lighting") or {}).get("buses") or {},
                    "clock": h.get("clock"), "cpuPercent": h["cpuPercent"],
                    "memoryPercent": h["memoryPercent"],
                    "diskFreePercent": h["diskFreePercent"],
                    "temperatureC": h.get("temperatureC"), "uptimeS": h["uptimeS"]},
                "alarms": active_alarms(ev),
                "events": [{"ts": m["ts"], "event": m["event"], "severity": m["severity"],
                            "subject": m["subject"]} for m in ev[-100:]]}
        return {"devices": devices, "invalid": len(self.invalid_log),
                "now": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}
