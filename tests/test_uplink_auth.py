"""Credentials from the environment or a secrets file (never the config), against a mosquitto
that requires a password; MQTT 3.1.1 on request, and the fallback to it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.uplink.mqtt import Uplink, UplinkSettings, credentials
from agent.uplink.outbox import Outbox
from tests.mqtt_broker import Broker, wait_until


@pytest.fixture
def auth_broker(tmp_path: Path):
    exe = shutil.which("mosquitto_passwd")
    if exe is None:
        pytest.skip("mosquitto_passwd is not installed")
    pw = tmp_path / "passwd"
    subprocess.run([exe, "-b", "-c", str(pw), "pole-1", "s3cret"], check=True,
                   capture_output=True)
    b = Broker(tmp_path, extra=f"password_file {pw}\n")
    b.conf.write_text(b.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    yield b.start()
    b.stop()


def test_credentials_from_env_or_secrets_file(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = tmp_path / "mqtt.secret"
    secrets.write_text("username: pole-1\npassword: s3cret\n")
    monkeypatch.delenv("POLELINK_MQTT_USERNAME", raising=False)
    monkeypatch.delenv("POLELINK_MQTT_PASSWORD", raising=False)
    assert credentials(secrets) == ("pole-1", "s3cret")
    assert credentials(None) == (None, None)
    monkeypatch.setenv("POLELINK_MQTT_USERNAME", "env-user")
    monkeypatch.setenv("POLELINK_MQTT_PASSWORD", "env-pw")
    assert credentials(secrets) == ("env-user", "env-pw")


def test_password_broker_accepts_right_and_refuses_wrong(auth_broker: Broker,
                                                         tmp_path: Path) -> None:
    ok = Uplink(UplinkSettings(port=auth_broker.port, username="pole-1", password="s3cret"),
                "pole-1", "city", Outbox(tmp_path / "a.db", "pole-1")).start()
    assert ok.wait_connected(10)
    ok.stop()
    bad = Uplink(UplinkSettings(port=auth_broker.port, username="pole-1", password="nope",
                                reconnect_min_s=0.2, reconnect_max_s=0.4),
                 "pole-1", "city", Outbox(tmp_path / "b.db", "pole-1")).start()
    assert wait_until(lambda: "refused" in bad.stats.last_error, 10), bad.stats.last_error
    assert bad.stats.connects == 0
    bad.stop()


def test_mqtt_311_on_request(tmp_path: Path) -> None:
    b = Broker(tmp_path).start()
    try:
        ob = Outbox(tmp_path / "o.db", "p")
        up = Uplink(UplinkSettings(port=b.port, protocol="3.1.1"), "p", "city", ob).start()
        assert up.wait_connected(10) and up.stats.protocol == "3.1.1"
        ob.put(up.topic("event"), {"x": 1})
        assert wait_until(lambda: len(ob) == 0, 10)
        up.stop()
    finally:
        b.stop()


def test_falls_back_to_311_when_the_broker_refuses_mqtt5(tmp_path: Path) -> None:
    up = Uplink(UplinkSettings(), "p", "city", Outbox(tmp_path / "o.db", "p"))
    refused = ReasonCode(PacketTypes.CONNACK, "Unsupported protocol version")
    up._on_connect(None, None, None, refused, None)  # type: ignore[arg-type]
    assert "refused" in up.stats.last_error
    assert up._protocol == 4  # MQTTv311: the next connection attempt uses it


def test_auto_protocol_reaches_a_311_only_broker(tmp_path: Path) -> None:
    """amqtt speaks only MQTT 3.1.1 and drops an MQTT 5 CONNECT without a CONNACK."""
    pytest.importorskip("amqtt")
    from sim.demo import EmbeddedBroker, free_port

    port = free_port(0)
    broker = EmbeddedBroker(port)
    try:
        ob = Outbox(tmp_path / "o.db", "p")
        up = Uplink(UplinkSettings(port=port, reconnect_min_s=0.1, reconnect_max_s=0.3),
                    "p", "city", ob).start()
        assert up.wait_connected(30), up.stats.last_error
        assert up.stats.protocol == "3.1.1"
        ob.put(up.topic("event"), {"x": 1})
        assert wait_until(lambda: len(ob) == 0, 10)
        up.stop()
    finally:
        broker.kill()
