"""City platform simulator: stands in for the operations centre.

Subscribes to everything under ``<prefix>/#``, validates each message against the
contract (``agent/uplink/schemas``), detects gaps (missing ``seq``) and duplicates (repeated
``msg_id``), stores messages in SQLite, serves a live dashboard on localhost and sends
commands. ``python -m sim.platform --broker 127.0.0.1:1883 --http 127.0.0.1:8080``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from sim.platform.store import Store
from sim.platform.web import make_server

log = logging.getLogger(__name__)


class PlatformSim:
    """Subscriber + store + dashboard + command sender."""

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, prefix: str = "polelink",
                 db: str = ":memory:", http_host: str = "127.0.0.1", http_port: int = 0) -> None:
        self.prefix = prefix
        self.store = Store(db)
        self.invalid_log: list[tuple[str, list[str]]] = []
        # a persistent MQTT 5 session (as a real platform should have): while the platform
        # is away, the broker keeps its QoS 1 messages for it
        self.client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                                  client_id=f"polelink-platform-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv5)
        self.subscribed = threading.Event()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_disconnect = lambda *a: self.subscribed.clear()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.5, 5)
        self.host, self.port = host, port
        self.http = make_server(http_host, http_port, self.state, self.command)
        self.http_port = self.http.server_address[1]

    def start(self) -> PlatformSim:
        """Connect and serve the dashboard."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect_async(self.host, self.port, clean_start=False, properties=props)
        self.client.loop_start()
        threading.Thread(target=self.http.serve_forever, daemon=True, name="platform-http").start()
        return self

    def stop(self) -> None:
        """Disconnect and stop the dashboard."""
        self.client.loop_stop()
        self.client.disconnect()
        self.http.shutdown()

    def _on_connect(self, c: mqtt.Client, _u: object, _f: object, _rc: object,
                    _p: object) -> None:
        self.subscribed.clear()
        c.subscribe(f"{self.prefix}/#", qos=1)

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        outcome, probs = self.store.add(msg.topic, msg.payload, time.time())
        if outcome == "invalid":
            log.warning("invalid message on %s: %s", msg.topic, "; ".join(probs))
            self.invalid_log.append((msg.topic, probs))

    def command(self, req: dict[str, Any]) -> dict[str, Any]:
        """Send a command to a device; returns the correlation id and topic."""
        cid = req.get("correlation_id") or uuid.uuid4().hex
        body = {"schema": "polelink/command/1", "correlation_id": cid, "command": req["command"]}
        if req.get("args"):
            body["args"] = req["args"]
        topic = f"{self.prefix}/{req['site']}/{req['device']}/cmd"
        self.client.publish(topic, json.dumps(body), qos=1)
        return {"correlation_id": cid, "topic": topic}

    def state(self) -> dict[str, Any]:
        """Everything the dashboard shows, per device."""
        summary = self.store.summary()
        devices: dict[str, Any] = {}
        traffic = self.store.latest("traffic", 400)
        lighting = self.store.latest("lighting", 400)
        events = self.store.latest("event", 100)
        for dev, s in summary.items():
            tr = [m for m in traffic if m["device"] == dev and "line" in m]
            lt = [m for m in lighting if m["device"] == dev]
            site = (tr or lt or [{"site": ""}])[-1]["site"] or next(
                (m["site"] for m in events if m["device"] == dev), "")
            devices[dev] = {
                "site": site, "summary": s,
                "traffic": [{"start": m["samplingPeriod"]["start"], "line": m["line"],
                             "total": m["totalCount"]} for m in tr[-40:]],
                "total_vehicles": sum(m["totalCount"] for m in tr),
                "lighting": {m["group"]: {"target": m["lampActuator"]["targetLightState"],
                                          "actual": m["lampActuator"]["actualLightState"],
                                          "mode": m["lampActuator"]["mode"]} for m in lt},
                "energy_saved_wh": sum(m["energySavedWh"] for m in lt),
                "events": [{"ts": m["ts"], "event": m["event"], "severity": m["severity"],
                            "subject": m["subject"]} for m in events if m["device"] == dev]}
        return {"devices": devices, "invalid": len(self.invalid_log)}
