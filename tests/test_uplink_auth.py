"""Credentials from the environment or a secrets file (never the config), against a mosquitto
that requires a password; MQTT 3.1.1 on request, and the fallback to it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from agent.uplink.mqtt import Uplink, UplinkSettings, credentials
from agent.uplink.outbox import Outbox
from tests.mqtt_broker import Broker, wait_until


def password_broker(tmp_path: Path, extra: str = "") -> Broker:
    """A mosquitto (not started) that admits only ``pole-1`` / ``s3cret``."""
    exe = shutil.which("mosquitto_passwd")
    if exe is None:
        pytest.skip("mosquitto_passwd is not installed")
    pw = tmp_path / "passwd"
    subprocess.run([exe, "-b", "-c", str(pw), "pole-1", "s3cret"], check=True,
                   capture_output=True)
    b = Broker(tmp_path, extra=f"password_file {pw}\n{extra}")
    b.conf.write_text(b.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    return b


@pytest.fixture
def auth_broker(tmp_path: Path):
    b = password_broker(tmp_path).start()
    yield b
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
    assert up._use_311_once          # the next attempt (only) uses MQTT 3.1.1
    up._new_client()
    assert up._protocol == 4


def test_a_hung_broker_does_not_make_the_uplink_give_up_mqtt5(tmp_path: Path) -> None:
    """SIGSTOP the broker: connections time out without a CONNACK. That is not a protocol
    refusal, so once the broker resumes the uplink is back on MQTT 5."""
    b = Broker(tmp_path).start()
    try:
        ob = Outbox(tmp_path / "o.db", "p")
        up = Uplink(UplinkSettings(port=b.port, keepalive_s=5, reconnect_min_s=0.2,
                                   reconnect_max_s=1), "p", "city", ob).start()
        assert up.wait_connected(10) and up.stats.protocol == "5"
        os.kill(b.proc.pid, signal.SIGSTOP)  # type: ignore[union-attr]
        try:
            assert wait_until(lambda: not up.connected, 30)
            assert wait_until(lambda: "CONNACK" in up.stats.last_error, 30), up.stats.last_error
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)  # type: ignore[union-attr]
        assert wait_until(lambda: up.connected, 30) and up.stats.protocol == "5"
        ob.put(up.topic("event"), {"x": 1})
        assert wait_until(lambda: len(ob) == 0, 10)
        up.stop()
    finally:
        b.stop()


def test_mqtt_311_reaches_a_311_only_broker(tmp_path: Path) -> None:
    """amqtt speaks only MQTT 3.1.1 (the demo's fallback broker): configured for it, the
    first connection works."""
    pytest.importorskip("amqtt")
    from sim.demo import EmbeddedBroker, free_port

    port = free_port(0)
    broker = EmbeddedBroker(port)
    try:
        ob = Outbox(tmp_path / "o.db", "p")
        up = Uplink(UplinkSettings(port=port, protocol="3.1.1", reconnect_min_s=0.1,
                                   reconnect_max_s=0.3), "p", "city", ob).start()
        assert up.wait_connected(30), up.stats.last_error
        assert up.stats.connects == 1
        assert up.stats.protocol == "3.1.1"
        ob.put(up.topic("event"), {"x": 1})
        assert wait_until(lambda: len(ob) == 0, 10)
        up.stop()
    finally:
        broker.kill()


def test_acl_denial_is_an_alarm_and_the_message_stays_queued(tmp_path: Path) -> None:
    """MQTT 5: a publication the ACL denies comes back as PUBACK "Not authorized". The
    message stays in the outbox (publishing pauses with back-off) and one alarm is raised;
    once the ACL allows it, it is delivered."""
    acl = tmp_path / "acl"
    acl.write_text("user pole-1\ntopic write polelink/city/pole-1/status\n"
                   "topic read polelink/city/pole-1/cmd\n")
    b = password_broker(tmp_path, f"acl_file {acl}\n").start()
    try:
        ob = Outbox(tmp_path / "o.db", "pole-1")
        up = Uplink(UplinkSettings(port=b.port, username="pole-1", password="s3cret",
                                   reconnect_min_s=0.2, reconnect_max_s=1),
                    "pole-1", "city", ob).start()
        assert up.wait_connected(10)
        ob.put(up.topic("traffic", "cam"), {"x": 1})
        assert wait_until(lambda: up.stats.refused >= 1, 10)
        assert up.refused and "Not authorized" in up.stats.last_error
        time.sleep(2)
        assert len(ob) == 1                                  # kept, not deleted
        notices = up.take_notices()
        assert [n[:2] for n in notices] == [("publish_refused", "alarm")]   # once
        assert notices[0][2]["topic"] == "polelink/city/pole-1/traffic/cam"
        # the operator fixes the ACL: the held message goes out
        acl.write_text(acl.read_text() + "topic write polelink/city/pole-1/traffic/+\n")
        b.restart()
        assert wait_until(lambda: len(ob) == 0, 20), up.stats.last_error
        assert ("publish_refused", "info", {"recovered": True}) in up.take_notices()
        up.stop()
    finally:
        b.stop()


def test_a_command_sent_while_the_pole_is_away_waits_in_its_session(tmp_path: Path) -> None:
    """The persistent session: a command published while the pole reconnects (here:
    while it is stopped) is delivered when it is back, not lost."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    b = Broker(tmp_path).start()
    try:
        got: list[bytes] = []
        ob = Outbox(tmp_path / "o.db", "p")
        s = UplinkSettings(port=b.port, session_expiry_s=300)
        up = Uplink(s, "p", "city", ob, on_command=lambda t, p, r: got.append(p)).start()
        assert up.wait_connected(10)
        time.sleep(0.5)                                # subscribed
        up.stop()
        c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="plat")
        c.connect("127.0.0.1", b.port)
        c.loop_start()
        c.publish(up.topic("cmd"), b'{"while": "away"}', qos=1).wait_for_publish(5)
        c.loop_stop()
        c.disconnect()
        up2 = Uplink(s, "p", "city", ob, on_command=lambda t, p, r: got.append(p)).start()
        assert wait_until(lambda: got == [b'{"while": "away"}'], 10), got
        up2.stop()
    finally:
        b.stop()
