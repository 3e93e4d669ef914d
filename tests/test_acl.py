"""The production broker config and the ACL from ``agent broker-acl``, proved rule by rule
against a real mosquitto (MQTT 5: a denied publish is answered with PUBACK 0x87, a denied
subscription with SUBACK 0x87, and the subscriber side checks that nothing arrives).

The broker runs the shipped ``deploy/mosquitto/mosquitto.conf`` with only its paths, the
listener address and the TLS lines swapped for the test's; devices ``a`` and ``b`` are at
site ``s1``, ``c`` at site ``s2``; ``platform`` is the platform's user."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.cli.acl import DeviceEntry, render_acl
from agent.cli.main import main
from tests.mqtt_broker import Broker

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
MODEL = ROOT / "models" / "simnet.yaml"
OPENSSL = shutil.which("openssl")
PASSWORDS = {"a": "pw-a", "b": "pw-b", "c": "pw-c", "platform": "pw-platform"}
FLEET = [DeviceEntry("a", "s1"), DeviceEntry("b", "s1"), DeviceEntry("c", "s2")]
NOT_AUTHORIZED = 0x87
TLS_LINES = ("certfile", "keyfile", "cafile", "tls_version", "require_certificate",
             "use_identity_as_username")


def wait_until(cond: Callable[[], object], timeout: float) -> bool:
    """Poll ``cond`` every 5 ms until it is truthy (True) or ``timeout`` runs out (False);
    tests.helpers polls every 50 ms, which would add up over dozens of round trips here."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.005)
    return bool(cond())


def write_passwords(path: Path) -> None:
    """A mosquitto password file for PASSWORDS, written by mosquitto_passwd."""
    exe = shutil.which("mosquitto_passwd")
    if exe is None:
        pytest.skip("mosquitto_passwd is not installed")
    for i, (user, pw) in enumerate(PASSWORDS.items()):
        subprocess.run([exe, "-b", *(["-c"] if i == 0 else []), str(path), user, pw],
                       check=True, capture_output=True)


def shipped_conf(tmp: Path, port: int, tls: dict[str, Path] | None = None,
                 client_certs: bool = False, drop: tuple[str, ...] = ()) -> str:
    """The shipped config with the test's paths, ``listener <port> 127.0.0.1``, and either
    no TLS or the given certificates (``client_certs``: its commented-out client-certificate
    lines switched on). ``drop``: option names to leave out (to show what they prevent)."""
    text = SHIPPED.read_text()
    subst = {"password_file": tmp / "passwd", "acl_file": tmp / "acl",
             "persistence_location": f"{tmp}/", "log_dest": f"file {tmp / 'mosquitto.log'}"}
    if tls:
        subst.update(certfile=tls["srv_crt"], keyfile=tls["srv_key"])
    if client_certs:
        text = re.sub(r"^#\s+((cafile|require_certificate|use_identity_as_username) \S+)$",
                      r"\1", text, flags=re.M)
        subst["cafile"] = tls["ca"] if tls else ""
    out = ["user root"] if _root() else []
    for line in text.splitlines():
        key = line.split(" ", 1)[0]
        if not line.strip() or line.startswith("#") or key in drop:
            continue
        if key == "listener":
            line = f"listener {port} 127.0.0.1"
        elif key in TLS_LINES and not tls:
            continue
        elif key in subst:
            line = f"{key} {subst[key]}"
        out.append(line)
    return "\n".join(out) + "\n"


def _root() -> bool:
    import os

    return os.geteuid() == 0


def start_broker(tmp: Path, **kw: object) -> Broker:
    """mosquitto on the shipped config, the FLEET's ACL and PASSWORDS."""
    tmp.mkdir(parents=True, exist_ok=True)
    write_passwords(tmp / "passwd")
    (tmp / "acl").write_text(render_acl(FLEET, "platform"))
    b = Broker(tmp)
    b.conf.write_text(shipped_conf(tmp, b.port, **kw))  # type: ignore[arg-type]
    return b.start()


class Client:
    """A paho MQTT 5 client that records connects, disconnects, messages, PUBACK and
    SUBACK reason codes."""

    def __init__(self, port: int, user: str | None, password: str | None = None,
                 client_id: str | None = None, tls: dict[str, Path] | None = None) -> None:
        self.c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2,
                             client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv5)
        if user is not None:
            self.c.username_pw_set(user, password if password is not None else PASSWORDS[user])
        if tls:
            self.c.tls_set(ca_certs=str(tls["ca"]), certfile=str(tls.get("cli_crt") or "") or None,
                           keyfile=str(tls.get("cli_key") or "") or None)
        self.connack: int | None = None
        self.disconnects: list[int] = []
        self.messages: list[tuple[str, bytes, bool]] = []
        self.pubacks: dict[int, int] = {}
        self.subacks: dict[int, list[int]] = {}
        self.lock = threading.Lock()
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda _c, _u, _f, rc, _p: self.disconnects.append(rc.value)
        self.c.on_message = self._on_message
        self.c.on_publish = lambda _c, _u, mid, rc, _p: self.pubacks.__setitem__(mid, rc.value)
        self.c.on_subscribe = lambda _c, _u, mid, rcs, _p: self.subacks.__setitem__(
            mid, [r.value for r in rcs])
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_connect(self, _c: object, _u: object, _f: object, rc: mqtt.ReasonCode,
                    _p: object) -> None:
        self.connack = rc.value

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def connected(self, timeout: float = 5) -> bool:
        """True once the broker accepted the connection."""
        return wait_until(lambda: self.connack == 0, timeout)

    def refused(self, timeout: float = 5) -> int | None:
        """The CONNACK failure code (None if it was accepted or never came)."""
        wait_until(lambda: self.connack is not None or self.disconnects, timeout)
        return self.connack if self.connack else None

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> int:
        """Publish at QoS 1 and return the PUBACK reason code."""
        mid = self.c.publish(topic, payload, qos=1, retain=retain).mid
        assert wait_until(lambda: mid in self.pubacks, 5), f"no PUBACK for {topic}"
        return self.pubacks[mid]

    def subscribe(self, topic: str) -> int:
        """Subscribe at QoS 1 and return the SUBACK reason code."""
        _, mid = self.c.subscribe(topic, qos=1)
        assert wait_until(lambda: mid in self.subacks, 5), f"no SUBACK for {topic}"
        return self.subacks[mid][0]

    def got(self, payload: bytes) -> list[str]:
        """Topics on which ``payload`` arrived."""
        with self.lock:
            return [t for t, p, _ in self.messages if p == payload]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    b = start_broker(tmp_path_factory.mktemp("acl"))
    yield b
    b.stop()


@pytest.fixture
def clients(broker: Broker):
    """Connected ``{"a", "b", "c", "platform"}`` clients; the platform reads ``polelink/#``,
    each device its own ``cmd`` and the platform's STATE."""
    cs = {u: Client(broker.port, u, client_id=u) for u in PASSWORDS}
    for c in cs.values():
        assert c.connected(), c.connack
    assert cs["platform"].subscribe("polelink/#") == 1
    for site, dev in (("s1", "a"), ("s1", "b"), ("s2", "c")):
        assert cs[dev].subscribe(f"polelink/{site}/{dev}/cmd") == 1
        assert cs[dev].subscribe("polelink/STATE/platform") == 1
    yield cs
    for c in cs.values():
        c.close()


def token() -> bytes:
    return uuid.uuid4().hex.encode()


def fence(sender: Client, topic: str, *receivers: Client) -> None:
    """Publish an allowed message and wait until every receiver has it: anything the broker
    had let through before it would have arrived by then."""
    t = token()
    assert sender.publish(topic, t) < 0x80
    for r in receivers:
        assert wait_until(lambda r=r: r.got(t), 5), f"fence on {topic} did not arrive"


# --- the production config itself ---------------------------------------------------------

def test_shipped_conf_settings_and_a_single_listener(broker: Broker) -> None:
    text = SHIPPED.read_text()
    for line in ("allow_anonymous false", "use_username_as_clientid true", "persistence true",
                 "listener 8883", "password_file ", "acl_file ", "#   require_certificate true",
                 "#   use_identity_as_username true"):
        assert re.search(rf"^{re.escape(line)}", text, re.M), line
    # a listener option above the first `listener` makes mosquitto 2.0 open port 1883 too
    log = (broker.conf.parent / "mosquitto.log").read_text()
    assert re.findall(r"Opening ipv[46] listen socket on port (\d+)", log) == [str(broker.port)]


# --- devices -----------------------------------------------------------------------------

@pytest.mark.parametrize("topic", [
    "polelink/s1/b/traffic/x",        # as another device at its own site
    "polelink/s2/a/traffic/x",        # as itself under another site
    "polelink/s2/c/status",           # as a device at another site
    "polelink/s1/a/cmd",              # its own commands
    "polelink/s1/b/cmd",              # another device's commands
    "polelink/STATE/platform",        # the platform's state
    "polelink/STATE/a",
    "polelink/s1/a/other",            # not a topic of the contract
    "polelink/s1/a/traffic/x/y",      # deeper than the contract
    "polelink/s1/a",
    "other/s1/a/status",              # outside the prefix
])
def test_device_cannot_publish_outside_its_own_topics(clients: dict[str, Client],
                                                      topic: str) -> None:
    a, b, platform = clients["a"], clients["b"], clients["platform"]
    t = token()
    assert a.publish(topic, t) == NOT_AUTHORIZED
    fence(a, "polelink/s1/a/event", platform)
    fence(platform, "polelink/s1/b/cmd", b)
    fence(platform, "polelink/s1/a/cmd", a)
    assert platform.got(t) == [] and a.got(t) == [] and b.got(t) == []
    assert not a.disconnects, "a denied publish must not disconnect the device"


def test_device_publishes_its_own_topics_and_the_platform_receives_them(
        clients: dict[str, Client], broker: Broker) -> None:
    a, platform = clients["a"], clients["platform"]
    sent = {}
    for sub in ("status", "health", "event", "traffic/north", "lighting/street",
                "diagnostics/street", "cmd/response"):
        topic = f"polelink/s1/a/{sub}"
        sent[topic] = token()
        assert a.publish(topic, sent[topic], retain=sub == "status") == 0, topic
    for topic, t in sent.items():
        assert wait_until(lambda t=t: platform.got(t), 5), topic
        assert platform.got(t) == [topic]
    # the retained birth is there for the platform after a restart (one connection per
    # username: the old one goes first, or the two would take over from each other)
    platform.close()
    late = Client(broker.port, "platform")
    assert late.connected() and late.subscribe("polelink/s1/a/status") == 1
    assert wait_until(lambda: late.got(sent["polelink/s1/a/status"]), 5)
    late.close()


@pytest.mark.parametrize("topic", [
    "polelink/s1/b/cmd",              # another device's commands
    "polelink/s1/+/cmd",              # everyone's commands at its site
    "polelink/#",
    "#",
    "$SYS/#",                         # broker internals
    "polelink/s1/b/status",           # another device's (retained) data
    "polelink/s1/a/traffic/+",        # even its own data: a device reads only cmd and STATE
])
def test_device_reads_nothing_outside_its_cmd_and_state(clients: dict[str, Client],
                                                        topic: str) -> None:
    """mosquitto's acl_file does not refuse a SUBSCRIBE (its SUBACK grants it: a
    maintainer's answer in eclipse/mosquitto#2042); it checks `read` on every message it
    would deliver, retained ones included. So the proof is on the subscriber's side."""
    a, b, platform = clients["a"], clients["b"], clients["platform"]
    old = token()
    assert b.publish("polelink/s1/b/status", old, retain=True) == 0
    assert a.subscribe(topic) in (1, NOT_AUTHORIZED)
    t = token()
    assert platform.publish("polelink/s1/b/cmd", t) == 0
    assert b.publish("polelink/s1/b/status", t) == 0
    assert a.publish("polelink/s1/a/traffic/x", t) == 0
    fence(platform, "polelink/s1/a/cmd", a)
    assert wait_until(lambda: len(platform.got(t)) == 3, 5)
    assert a.got(t) == [] and a.got(old) == [], "a device received messages not meant for it"
    with a.lock:
        assert not [m for m in a.messages if m[0].startswith("$SYS")]


def test_platform_commands_a_device_and_only_that_device(clients: dict[str, Client]) -> None:
    a, b, c, platform = clients["a"], clients["b"], clients["c"], clients["platform"]
    t = token()
    assert platform.publish("polelink/s1/a/cmd", t) == 0
    assert wait_until(lambda: a.got(t), 5)
    fence(platform, "polelink/s1/b/cmd", b)
    fence(platform, "polelink/s2/c/cmd", c)
    assert a.got(t) == ["polelink/s1/a/cmd"] and b.got(t) == [] and c.got(t) == []


def test_platform_state_reaches_devices(clients: dict[str, Client], broker: Broker) -> None:
    platform = clients["platform"]
    t = token()
    assert platform.publish("polelink/STATE/platform", t, retain=True) == 0
    for dev in ("a", "b", "c"):
        assert wait_until(lambda dev=dev: clients[dev].got(t), 5), dev
    # the platform reads its own retained STATE back (readwrite) after a restart
    platform.close()
    again = Client(broker.port, "platform")
    assert again.connected() and again.subscribe("polelink/STATE/platform") == 1
    assert wait_until(lambda: again.got(t), 5)
    again.close()


@pytest.mark.parametrize("topic", [
    "polelink/s1/a/traffic/x",        # the platform cannot forge pole data
    "polelink/s1/a/status",
    "polelink/STATE/other",           # nor another host's STATE
])
def test_platform_cannot_publish_as_a_device(clients: dict[str, Client], topic: str) -> None:
    platform = clients["platform"]
    t = token()
    assert platform.publish(topic, t) == NOT_AUTHORIZED
    fence(clients["a"], "polelink/s1/a/event", platform)
    assert platform.got(t) == []


# --- who may connect ---------------------------------------------------------------------

def test_bad_credentials_and_anonymous_are_refused(broker: Broker) -> None:
    tries = [Client(broker.port, user, pw) for user, pw in
             [("a", "wrong"), ("platform", "pw-a"), ("nobody", "pw-a"), ("a", ""), (None, None)]]
    try:
        # mosquitto 2.0 answers 0x87 "not authorized" (0x86 "bad user name or password"
        # is the other code the MQTT 5 spec allows)
        assert [c.refused() in (0x86, NOT_AUTHORIZED) for c in tries] == [True] * len(tries)
    finally:
        for c in tries:
            c.close()


def test_another_devices_client_id_does_not_kick_it(broker: Broker) -> None:
    platform = Client(broker.port, "platform")
    b = Client(broker.port, "b", client_id="b")
    assert platform.connected() and platform.subscribe("polelink/#") == 1 and b.connected()
    impostor = Client(broker.port, "a", client_id="b")
    assert impostor.connected()
    time.sleep(3)
    assert b.disconnects == [] and impostor.disconnects == []
    fence(b, "polelink/s1/b/health", platform)
    # the broker renamed the impostor's session to its username: a second "a" replaces it
    # (one connection per username: paho reconnecting would now flap between the two "a")
    impostor.c.reconnect_delay_set(30, 30)
    second = Client(broker.port, "a", client_id="whatever")
    assert second.connected()
    assert wait_until(lambda: impostor.disconnects, 5)
    assert b.disconnects == []
    for c in (second, impostor, b, platform):
        c.close()


def test_without_use_username_as_clientid_a_device_kicks_another(tmp_path: Path) -> None:
    """The control: what use_username_as_clientid prevents."""
    brk = start_broker(tmp_path, drop=("use_username_as_clientid",))
    try:
        b = Client(brk.port, "b", client_id="b")
        assert b.connected()
        impostor = Client(brk.port, "a", client_id="b")
        assert impostor.connected()
        assert wait_until(lambda: b.disconnects, 5), "b was not kicked off"
        b.close()
        impostor.close()
    finally:
        brk.stop()


# --- TLS as shipped, and the commented-out client-certificate option ----------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if OPENSSL is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run([OPENSSL, *args], check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"]
    run("req", "-x509", *ec, "-subj", "/CN=test-ca", "-keyout", str(d / "ca.key"),
        "-out", str(d / "ca.crt"))
    for name, ext in (("broker", "subjectAltName=IP:127.0.0.1\n"),
                      ("a", "basicConstraints=CA:FALSE\n")):
        (d / f"{name}.ext").write_text(ext)
        run("req", *ec, "-subj", f"/CN={name}", "-keyout", str(d / f"{name}.key"),
            "-out", str(d / f"{name}.csr"))
        run("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"),
            "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
            "-out", str(d / f"{name}.crt"), "-extfile", str(d / f"{name}.ext"))
    return {"ca": d / "ca.crt", "srv_crt": d / "broker.crt", "srv_key": d / "broker.key",
            "cli_crt": d / "a.crt", "cli_key": d / "a.key"}


def test_shipped_tls_listener_with_passwords(tmp_path: Path, pki: dict[str, Path]) -> None:
    brk = start_broker(tmp_path, tls=pki)
    try:
        server_only = {"ca": pki["ca"]}
        a = Client(brk.port, "a", tls=server_only)
        assert a.connected()
        assert a.publish("polelink/s1/a/health", b"{}") < 0x80
        assert a.publish("polelink/s1/b/health", b"{}") == NOT_AUTHORIZED
        a.close()
        bad = Client(brk.port, "a", "wrong", tls=server_only)
        assert bad.refused() in (0x86, NOT_AUTHORIZED)
        bad.close()
    finally:
        brk.stop()


def test_client_certificate_option_makes_the_cn_the_username(tmp_path: Path,
                                                              pki: dict[str, Path]) -> None:
    brk = start_broker(tmp_path, tls=pki, client_certs=True)
    try:
        # no username sent (or a false one, ignored): the certificate's CN "a" is the user
        a = Client(brk.port, None, tls=pki, client_id="b")
        assert a.connected()
        assert a.publish("polelink/s1/a/traffic/x", b"{}") < 0x80
        assert a.publish("polelink/s1/b/traffic/x", b"{}") == NOT_AUTHORIZED
        liar = Client(brk.port, "b", "pw-b", tls=pki)
        assert liar.connected()
        assert liar.publish("polelink/s1/b/traffic/x", b"{}") == NOT_AUTHORIZED
        liar.close()
        a.close()
        # without a client certificate the broker ends the TLS session (under TLS 1.3 the
        # client may see that only after its CONNECT): a password alone gets nowhere
        try:
            nocert = Client(brk.port, "b", "pw-b", tls={"ca": pki["ca"]})
        except OSError:
            pass
        else:
            assert not nocert.connected(1.0)
            nocert.close()
    finally:
        brk.stop()


# --- agent broker-acl --------------------------------------------------------------------

def pole_config(tmp: Path, name: str, device: str, site: str, mqtt: str = "") -> Path:
    video = tmp / "clip.avi"
    video.touch()
    p = tmp / f"{name}.yaml"
    p.write_text(f"device: {{id: {device}, site: {site}}}\n"
                 f"cameras:\n  - name: north\n    source: {{kind: file, path: {video}}}\n"
                 f"    detector: {{model: {MODEL}}}\n"
                 f"    lines: [{{name: main, points: [[0, 10], [100, 10]]}}]\n{mqtt}")
    return p


def test_broker_acl_from_two_config_files(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    one = pole_config(tmp_path, "one", "pole-1", "hanoi", "mqtt: {primary_host: central}\n")
    two = pole_config(tmp_path, "two", "pole-2", "hue", "mqtt: {prefix: city/pl}\n")
    assert main(["broker-acl", str(one), str(two), "--platform-user", "central"]) == 0
    out = capsys.readouterr().out
    blocks = {b.splitlines()[0 if b.startswith("user") else 1]: [
        ln for ln in b.splitlines() if ln.startswith("topic")] for b in out.split("\n\n")
        if "user " in b}
    assert blocks["user central"] == [
        "topic read city/pl/#", "topic write city/pl/+/+/cmd",
        "topic write city/pl/+/+/ack", "topic readwrite city/pl/STATE/central",
        "topic read polelink/#", "topic write polelink/+/+/cmd",
        "topic write polelink/+/+/ack", "topic readwrite polelink/STATE/central"]
    assert blocks["user pole-1"] == [
        "topic write polelink/hanoi/pole-1/status", "topic write polelink/hanoi/pole-1/health",
        "topic write polelink/hanoi/pole-1/event",
        "topic write polelink/hanoi/pole-1/traffic/+",
        "topic write polelink/hanoi/pole-1/lighting/+",
        "topic write polelink/hanoi/pole-1/diagnostics/+",
        "topic write polelink/hanoi/pole-1/cmd/response",
        "topic read polelink/hanoi/pole-1/cmd", "topic read polelink/hanoi/pole-1/ack",
        "topic read polelink/STATE/+"]
    assert blocks["user pole-2"][0] == "topic write city/pl/hue/pole-2/status"
    assert "pattern" not in out and "%u" not in out
    assert not [ln for ln in out.splitlines()
                if ln.startswith("topic") and out.index(ln) < out.index("user ")]
    # --out writes the same text
    acl = tmp_path / "acl"
    assert main(["broker-acl", str(one), str(two), "--platform-user", "central",
                 "-o", str(acl)]) == 0
    assert acl.read_text() == out


def test_broker_acl_refuses_duplicates_and_bad_input(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    one = pole_config(tmp_path, "one", "pole-1", "hanoi")
    dup = pole_config(tmp_path, "dup", "pole-1", "hue")
    cases = [
        ([str(one), str(dup)], f"duplicate device id 'pole-1' in {one} and {dup}"),
        ([str(one), "--device", "hue/pole-1"], "duplicate device id 'pole-1'"),
        (["--device", "s1/platform"], "is the platform's username"),
        (["--device", "S1/a"], "expected SITE/DEVICE"),
        (["--device", "a"], "expected SITE/DEVICE"),
        ([str(tmp_path / "missing.yaml")], "file not found"),
        ([], "no devices"),
        ([str(pole_config(tmp_path, "ph", "pole-3", "s", "mqtt: {primary_host: central}\n"))],
         "mqtt.primary_host is 'central' but the platform user is 'platform'"),
    ]
    for args, msg in cases:
        assert main(["broker-acl", *args]) == 1, args
        cap = capsys.readouterr()
        assert cap.out == "" and msg in cap.err and "Traceback" not in cap.err, (args, cap.err)
        assert len(cap.err.strip().splitlines()) == 1, cap.err
