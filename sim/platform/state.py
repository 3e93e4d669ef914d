"""The platform's primary host STATE, spoken by one consumer only (the lease holder).

Sparkplug B assumes one primary host; a platform with several consumers sharing one
subscription must still speak with one voice on ``<prefix>/STATE/<host_id>``, or one
consumer's will would tell every pole to hold while the others store its data. So the
STATE has a client of its own, connected only by the consumer that holds the lease
(:class:`~sim.platform.lease.StateLease`), always with the same client id
(``polelink-platform-state-<host_id>``: the broker lets one session have it at a time):

- it connects with a retained will ``{"online": false, "timestamp": T}`` and, once the
  consumer's data subscription is up, publishes ``{"online": true, "timestamp": T}``
  (retained; ``"ack": 1`` when the platform acknowledges what it stores) with a ``T``
  later than any holder's before it;
- it watches the topic: a STATE that is not its own (a forged one, the will of a holder
  that hung and was taken over) is answered at once with its own ``online`` and a later
  timestamp, then a reconnect that moves its will to that timestamp;
- a consumer that loses the lease (it hung past the lease's ttl) closes the STATE client
  cleanly (no will: the new holder speaks); the holder that stops cleanly says
  ``offline`` and gives the lease up, and another consumer, if any, takes it over and says
  ``online`` within a fraction of a second.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from sim.platform.lease import StateLease

log = logging.getLogger(__name__)



class StateSpeaker:
    """See the module docstring. :meth:`step` is called from one thread, a few times a
    second; :meth:`stop` from that thread or after it ended."""

    def __init__(self, host: str, port: int, prefix: str, host_id: str, lease: StateLease,
                 ready: Callable[[], bool], acks: bool = True, v5: bool = True,
                 username: str | None = None, password: str | None = None) -> None:
        self.host, self.port = host, port
        self.topic = f"{prefix}/STATE/{host_id}"
        self.client_id = f"polelink-platform-state-{host_id}"
        self.lease, self.ready, self.acks, self.v5 = lease, ready, acks, v5
        self.username, self.password = username, password
        self.client: mqtt.Client | None = None
        self.ts = 0
        self._online = b""              # our current online payload
        self._connected = False
        self._move_will = False         # reconnect: our will's timestamp is behind
        self._answered_at = 0.0
        self.announcements = 0
        self._stopping = False
        self._refused_said = -60.0

    def _body(self, online: bool, ts: int) -> bytes:
        body: dict[str, object] = {"online": online, "timestamp": ts}
        if self.acks:
            body["ack"] = 1
        return json.dumps(body).encode()

    @property
    def speaking(self) -> bool:
        """This consumer holds the lease and its STATE client is connected."""
        return self.lease.held and self._connected

    def step(self) -> None:
        """Renew or take the lease; connect, announce, watch, or stand down."""
        held = self.lease.renew()
        if not held:
            if self.client is not None:
                log.warning("platform: another consumer holds the STATE lease now; this one "
                            "stands down (its STATE client closes without its will)")
                self._drop(clean=True)
            return
        if self.client is None or self._move_will:
            if self.client is not None:
                self._drop(clean=True)
            if self.ready():
                self._connect()
        if self.client is not None:
            rc = self.client.loop(0.05)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                self._drop(clean=False)

    def _connect(self) -> None:
        self._move_will = False
        self.ts = self.lease.next_ts()
        self._online = self._body(True, self.ts)
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                        client_id=self.client_id,
                        protocol=mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311)
        if self.username:
            c.username_pw_set(self.username, self.password)
        c.will_set(self.topic, self._body(False, self.ts), qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_disconnect = self._on_disconnect
        try:
            # the consumers' keep-alive: a hung platform is offline after 90 s, as before
            c.connect(self.host, self.port, 60)
        except (OSError, ValueError) as e:
            log.warning("platform: the STATE client cannot connect (%s)", e)
            return
        self.client = c

    def _on_connect(self, c: mqtt.Client, _u: object, _f: object, reason: object,
                    _p: object) -> None:
        if getattr(reason, "is_failure", False):
            now = time.monotonic()
            if now - self._refused_said >= 60:      # (it is tried again 5 times a second)
                self._refused_said = now
                log.warning("platform: the STATE client (user %s, client id %s) was refused "
                            "by the broker: %s; create that user (mosquitto_passwd) and let "
                            "`agent broker-acl` write its ACL (it may write %s); the poles "
                            "hold their data until it can speak", self.username or "(none)",
                            self.client_id, reason, self.topic)
            return
        self._connected = True
        # announce first, then watch: the retained message the subscription brings back
        # is then our own (the broker handles one client's packets in order)
        c.publish(self.topic, self._online, qos=1, retain=True)
        c.subscribe(self.topic, qos=1)
        self.announcements += 1
        log.info("platform: holding the STATE lease; %s online (timestamp %d)", self.topic,
                 self.ts)

    def _on_disconnect(self, *_a: object) -> None:
        self._connected = False

    def _on_message(self, c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic != self.topic or msg.payload == self._online or self._stopping:
            return
        now = time.monotonic()
        if now - self._answered_at < 1.0:       # never a storm (two speakers, a forger)
            return
        self._answered_at = now
        # never follow a foreign timestamp (a forger could push ours ahead, for good): poles
        # remember none ahead of their clock, so ours, from our clock, is taken
        self.ts = self.lease.next_ts()
        self._online = self._body(True, self.ts)
        log.warning("platform: a STATE that is not this platform's on %s (%s); answered "
                    "online with timestamp %d", self.topic, msg.payload[:120], self.ts)
        c.publish(self.topic, self._online, qos=1, retain=True)
        self.announcements += 1
        self._move_will = True          # our will must not be older than what we said

    def _drop(self, clean: bool) -> None:
        c, self.client = self.client, None
        self._connected = False
        if c is not None and clean:
            with contextlib.suppress(Exception):
                c.disconnect()          # a normal DISCONNECT: the broker drops our will
                for _ in range(20):     # until it is written and the socket closed
                    if c.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:
                        break

    def stop(self) -> None:
        """A clean stop: say offline (when we speak), close, give the lease up."""
        self._stopping = True
        c = self.client
        if c is not None and self._connected:
            info = c.publish(self.topic, self._body(False, self.lease.next_ts()), qos=1,
                             retain=True)
            end = time.monotonic() + 2
            while not info.is_published() and time.monotonic() < end:
                if c.loop(0.05) != mqtt.MQTT_ERR_SUCCESS:
                    break
        self._drop(clean=True)
        self.lease.release()
        self.lease.close()
