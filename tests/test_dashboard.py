"""The platform simulator's dashboard against a hostile broker and a hostile browser: data
from MQTT is shown as text (headless Chromium, a real mosquitto), commands need the token and
a JSON body, and what the page shows (time axis with gaps, breakdowns, health, alarms that
clear) is in ``state()``."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sim.platform import PlatformSim
from tests.helpers import SLACK_S
from tests.mqtt_broker import Broker, Collector, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TOKEN = "test-token-0123456789"
HOSTILE = "<img src=x onerror=document.title='pwned'>"


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Broker, PlatformSim, mqtt.Client]]:
    """mosquitto, the platform simulator (with a known token) and a publishing device."""
    broker = Broker(tmp_path).start()
    platform = PlatformSim(port=broker.port, token=TOKEN).start()
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="dev-pub")
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    assert wait_until(platform.subscribed.is_set, 10)
    yield broker, platform, pub
    pub.loop_stop()
    pub.disconnect()
    platform.stop()
    broker.stop()


def publish(pub: mqtt.Client, topic: str, body: dict | bytes) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    pub.publish(topic, raw, qos=1).wait_for_publish(5)


def event(seq: int, name: str, severity: str, subject: str, **detail: object) -> dict:
    return {"schema": "polelink/event/1", "device": "p1", "site": "s1", "seq": seq,
            "msg_id": f"p1:{seq}", "ts": f"2026-11-22T23:00:{seq:02d}Z", "event": name,
            "severity": severity, "subject": subject, "detail": detail}


def traffic(seq: int, start: str, end: str, counts: list[tuple[str, str, int]],
            partial: bool = False) -> dict:
    return {"schema": "polelink/traffic/1", "device": "p1", "site": "s1", "seq": seq,
            "msg_id": f"p1:{seq}", "ts": end, "camera": "cam1", "line": "main",
            "samplingPeriod": {"start": start, "end": end, "seconds": 10, "partial": partial},
            "roadUserCounts": [{"roadUserType": c, "direction": d, "count": n}
                               for c, d, n in counts],
            "totalCount": sum(n for _, _, n in counts),
            "quality": {"framesAnalysed": 100, "framesExpected": 100, "framesDropped": 0,
                        "framesLate": 0, "detectorLatencyMs": 5.0, "idSwitches": 0,
                        "cameraBlinded": False, "cameraFrozen": False, "cameraState": "live"}}


def health(seq: int) -> dict:
    return {"schema": "polelink/health/1", "device": "p1", "site": "s1", "seq": seq,
            "msg_id": f"p1:{seq}", "ts": "2026-11-22T23:01:00Z", "cpuPercent": 12.5,
            "memoryPercent": 40.0, "temperatureC": None, "diskFreePercent": 70.0,
            "uptimeS": 3600.0, "versions": {}, "outbox": {"queued": 3, "dropped": 2},
            "cameras": {"cam1": "reconnecting", HOSTILE: "live"},
            "clock": {"trusted": True, "reasons": []},
            "lighting": {"buses": {"dali0": {"state": "down", "error": "no answer"}},
                         "groups": {}}}


class Dom(HTMLParser):
    """Elements and text of a dumped DOM, as a browser's parser sees them."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.title = ""
        self._in_title = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_title = tag == "title" and "svg" not in {t for t, _ in self.tags}  # <head>'s

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_title:
            self.title += data


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def test_hostile_strings_from_mqtt_are_text_in_headless_chromium(tmp_path: Path, stack) -> None:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (CI installs the Debian package)")
    _, platform, pub = stack
    # a contract-valid body under a hostile device id (the topic is all that names it) ...
    publish(pub, f"polelink/s1/{HOSTILE}/event", event(1, "camera_lost", "alarm", HOSTILE))
    # ... a raw, invalid one, and hostile strings inside valid messages of a valid device
    publish(pub, f"polelink/{HOSTILE}/{HOSTILE}x/{HOSTILE}", HOSTILE.encode())
    publish(pub, "polelink/s1/p1/event", event(2, "bus_fault", "alarm", HOSTILE))
    publish(pub, "polelink/s1/p1/health", health(3))
    publish(pub, "polelink/s1/p1/traffic/cam1", traffic(
        4, "2026-11-22T23:00:00Z", "2026-11-22T23:00:10Z", [("car", HOSTILE, 2)]))
    assert wait_until(lambda: {HOSTILE, f"{HOSTILE}x", "p1"} <= set(platform.state()["devices"])
                      and platform.state()["devices"]["p1"]["traffic"]["slots"], 10)
    url = f"http://127.0.0.1:{platform.http_port}/#token={TOKEN}"
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={tmp_path / 'chrome'}",
            "--virtual-time-budget=3000", "--window-size=1200,800", "--dump-dom", url]
    html = subprocess.run(args, capture_output=True, text=True, timeout=60).stdout
    dom = Dom(html)
    poles = [a.get("data-device") for t, a in dom.tags if t == "div" and "data-device" in a]
    assert {HOSTILE, f"{HOSTILE}x", "p1"} <= set(poles), html[:2000]   # rendered, live data
    text = "".join(dom.text)
    assert text.count(HOSTILE) >= 4          # device ids, alarm subject, camera name, direction
    assert not [a for t, a in dom.tags if t == "img"]                   # no element made of it
    assert not [a for _, a in dom.tags if any(k.startswith("on") for k in a)]
    assert dom.title == "polelink platform"                             # no script ran
    assert "pwned" not in dom.title


def test_the_page_carries_a_strict_policy_and_no_inline_handlers(stack) -> None:
    _, platform, _ = stack
    code, headers, body = request(platform.http_port, "GET", "/")
    assert code == 200
    csp = headers["content-security-policy"]
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert "script-src 'nonce-" in csp and "unsafe-inline" not in csp
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["cache-control"] == "no-store"
    page = body.decode()
    assert f'<script nonce="{nonce}">' in page and "{{nonce}}" not in page
    assert " onclick=" not in page and "src=\"http" not in page
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in page
    assert request(platform.http_port, "GET", "/")[1]["content-security-policy"] != csp
    # the state: readable on loopback, with the token too, never with a wrong one
    assert request(platform.http_port, "GET", "/api/state")[0] == 200
    auth = {"Authorization": f"Bearer {TOKEN}"}
    code, headers, _ = request(platform.http_port, "GET", "/api/state", headers=auth)
    assert code == 200 and headers["cache-control"] == "no-store"
    assert request(platform.http_port, "GET", "/api/state",
                   headers={"Authorization": "Bearer nope"})[0] == 401
    # a rebound DNS name pointing at loopback is not us
    assert request(platform.http_port, "GET", "/api/state",
                   headers={"Host": "evil.example:80"})[0] == 421


def test_commands_need_the_token_json_and_a_small_body(stack) -> None:
    broker, platform, _ = stack
    port = platform.http_port
    cmds = Collector(broker.port, "polelink/+/+/cmd")
    try:
        body = json.dumps({"device": "p1", "site": "s1", "command": "ping"}).encode()
        js = {"Content-Type": "application/json"}
        good = {**js, "Authorization": f"Bearer {TOKEN}"}
        code, headers, _ = request(port, "POST", "/api/command", body, js)
        assert code == 401 and headers["www-authenticate"].startswith("Bearer")
        assert request(port, "POST", "/api/command", body,
                       {**js, "Authorization": f"Bearer {TOKEN}x"})[0] == 401
        assert request(port, "POST", "/api/command", body,
                       {**js, "Authorization": TOKEN})[0] == 401
        # what a cross-site form can send: no token, a form content type
        assert request(port, "POST", "/api/command", b"device=p1&site=s1&command=ping",
                       {"Content-Type": "application/x-www-form-urlencoded"})[0] == 401
        for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
            assert request(port, "POST", "/api/command", body,
                           {**good, "Content-Type": ctype})[0] == 415
        huge = json.dumps({"device": "p1", "site": "s1", "command": "ping",
                           "args": {"x": "y" * 200_000}}).encode()
        assert request(port, "POST", "/api/command", huge, good)[0] == 413
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)   # a lie, not sent
        c.putrequest("POST", "/api/command")
        for k, v in {**good, "Content-Length": str(10**9)}.items():
            c.putheader(k, v)
        c.endheaders()
        assert c.getresponse().status == 413
        c.close()
        assert request(port, "OPTIONS", "/api/command", None,
                       {"Origin": "https://evil.example",
                        "Access-Control-Request-Method": "POST"})[0] == 405
        # ids that would make another topic are refused before anything is published
        for bad in ({"device": "p1/#", "site": "s1", "command": "ping"},
                    {"device": "p1", "site": "s1/x", "command": "ping"}, [1, 2]):
            assert request(port, "POST", "/api/command", json.dumps(bad).encode(),
                           good)[0] == 400
        assert cmds.where(lambda *_: True) == []
        code, _, out = request(port, "POST", "/api/command", body,
                               {**good, "Content-Type": "application/json; charset=utf-8"})
        assert code == 200
        sent = json.loads(out)
        assert sent["topic"] == "polelink/s1/p1/cmd"
        assert wait_until(lambda: cmds.where(
            lambda t, m, _r: t == "polelink/s1/p1/cmd"
            and m.get("correlation_id") == sent["correlation_id"]
            and m.get("command") == "ping"), 5)
        assert len(cmds.where(lambda *_: True)) == 1
    finally:
        cmds.close()


def test_alarms_clear_and_the_state_has_what_operations_need(stack) -> None:
    _, platform, pub = stack

    def active() -> list[tuple[str, str]]:
        dev = platform.state()["devices"].get("p1")
        return sorted((a["event"], a["subject"]) for a in dev["alarms"]) if dev else []

    publish(pub, "polelink/s1/p1/event", event(1, "camera_lost", "alarm", "cam1"))
    publish(pub, "polelink/s1/p1/event", event(2, "bus_fault", "alarm", "dali0"))
    publish(pub, "polelink/s1/p1/event", event(3, "storage_error", "alarm", "aggregates"))
    assert wait_until(lambda: len(active()) == 3, 5)
    publish(pub, "polelink/s1/p1/event", event(4, "camera_restored", "info", "cam2"))  # another
    publish(pub, "polelink/s1/p1/event", event(5, "camera_restored", "info", "cam1"))
    publish(pub, "polelink/s1/p1/event", event(6, "storage_error", "info", "aggregates",
                                               recovered=True))
    assert wait_until(lambda: active() == [("bus_fault", "dali0")], 5), active()
    publish(pub, "polelink/s1/p1/event", event(7, "bus_restored", "info", "dali0"))
    assert wait_until(lambda: active() == [], 5), active()
    # traffic: 23:00:00, :10 and :30 arrive (:20 is missing), out of order
    publish(pub, "polelink/s1/p1/traffic/cam1", traffic(
        8, "2026-11-22T23:00:30Z", "2026-11-22T23:00:40Z",
        [("car", "north", 3), ("truck", "north", 1), ("car", "south", 2)]))
    publish(pub, "polelink/s1/p1/traffic/cam1", traffic(
        9, "2026-11-22T23:00:00Z", "2026-11-22T23:00:10Z", [("car", "north", 5)], partial=True))
    publish(pub, "polelink/s1/p1/traffic/cam1", traffic(
        10, "2026-11-22T23:00:10Z", "2026-11-22T23:00:20Z", [("bus", "south", 1)]))
    publish(pub, "polelink/s1/p1/health", health(11))
    assert wait_until(lambda: platform.state()["devices"]["p1"]["health"] is not None
                      and len(platform.store.recent("traffic", "p1")) == 3, 5)
    dev = platform.state()["devices"]["p1"]
    tr = dev["traffic"]
    assert tr["interval_s"] == 10 and tr["missing"] == 1
    assert [(s["start"][-10:], s["total"], s["partial"]) for s in tr["slots"]] == [
        ("T23:00:00Z", 5, True), ("T23:00:10Z", 1, False), ("T23:00:20Z", None, False),
        ("T23:00:30Z", 6, False)]
    latest = tr["latest"]
    assert latest["start"] == "2026-11-22T23:00:30Z" and latest["total"] == 6
    assert latest["by_class"] == {"car": 5, "truck": 1}
    assert latest["by_direction"] == {"north": 4, "south": 2}
    assert [(r["direction"], r["counts"]) for r in latest["rows"]] == [
        ("north", {"car": 3, "truck": 1}), ("south", {"car": 2})]
    h = dev["health"]
    assert h["outbox"] == {"queued": 3, "dropped": 2}
    assert h["cameras"]["cam1"] == "reconnecting"
    assert h["buses"] == {"dali0": {"state": "down", "error": "no answer"}}
    assert dev["last_seen"]["age_s"] < 5 + SLACK_S and dev["site"] == "s1"
    assert dev["summary"]["gaps"] == 0 and dev["total_vehicles"] == 12
