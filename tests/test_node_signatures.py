"""The lamp node checks command signatures as the agent does, inside the real MicroPython.

One batch of commands is signed here with the platform's real signer
(``agent.uplink.commands.new_command`` with a ``cryptography`` Ed25519 key), some of them then
tampered with, and each is judged twice: by the agent's ``CommandGuard`` in CPython and by the
node's ``cmdrules.Guard`` in MicroPython (tests/node_mp/sigcheck.py). For every command:
- the node's canonical bytes are the agent's, byte for byte (unicode, control characters,
  floats, nesting);
- both accept it or both refuse it, and a tampered one is refused by both.
The node's own SHA-512 (for ports without ``hashlib.sha512``, as this one) is checked against
``hashlib`` on lengths around every block boundary."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.uplink.commands import new_command
from agent.uplink.guard import CommandGuard, Refused, ReplayWindow, canonical
from tests.conftest import ROOT, SHARED, need_shared

MICROPYTHON = SHARED / "bin" / "micropython"
SCRIPT = ROOT / "tests" / "node_mp" / "sigcheck.py"
NOW = 1795000000.0
DEVICE, SITE = "node-0042", "harbour"
L = 2 ** 252 + 27742317777372353535851937790883648493


def pem_line(key: Ed25519PrivateKey) -> str:
    """The middle line of the public key's PEM: what a crew pastes as ``command_key``."""
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem.decode().splitlines()[1]


def raw_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A JSON value with the awkward parts: control characters, quotes, backslashes,
    non-ASCII and astral characters, floats of every size, big integers, nesting."""
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.choice([None, True, False, 0, -1, 2 ** 70, -(2 ** 40)])
    if kind == 1:
        return rng.choice([rng.uniform(0, 100), round(rng.uniform(0, 100), rng.randrange(4)),
                           rng.uniform(-1e-7, 1e-7), rng.uniform(1e15, 1e17), 1e22, 0.1 + 0.2,
                           -0.0, 5e-324, 1.7976931348623157e308])
    if kind in (2, 3, 4):
        return text(rng)
    if kind == 5:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {text(rng) if rng.random() < 0.5 else f"k{rng.randrange(99)}":
            random_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def text(rng: random.Random) -> str:
    """A string with the characters JSON writers disagree on."""
    alphabet = 'ab"\\/\n\r\t\b\f\x00\x01\x1f\x7f é€中\u2028\U0001f6a6'
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))


def tamper(msg: dict[str, Any], how: str, other: Ed25519PrivateKey) -> dict[str, Any]:
    """One way an attacker changes a signed command."""
    m = json.loads(json.dumps(msg))
    sig = base64.b64decode(m["signature"])
    if how == "level":
        m["args"]["level_pct"] = 100 - m["args"]["level_pct"] if m["args"]["level_pct"] != 50 else 51
    elif how == "other_key":
        m["signature"] = base64.b64encode(other.sign(canonical(m))).decode()
    elif how == "s_plus_l":                 # the same signature made malleable: S + L
        s = int.from_bytes(sig[32:], "little") + L
        m["signature"] = base64.b64encode(sig[:32] + s.to_bytes(32, "little")).decode()
    elif how == "truncated":
        m["signature"] = base64.b64encode(sig[:63]).decode()
    elif how == "not_base64":
        m["signature"] = m["signature"][:-4] + "!!!!"
    elif how == "missing":
        del m["signature"]
    elif how == "no_device":                # unsigned fields removed, signature kept
        del m["device"]
    elif how == "added_field":
        m["args"]["extra"] = 1
    elif how == "zero_r":
        m["signature"] = base64.b64encode(bytes(32) + sig[32:]).decode()
    return m


@cache
def batch() -> tuple[list[dict[str, Any]], list[str]]:
    """The cases (as sigcheck.py reads them) and the node's output lines for them."""
    rng = random.Random(20261123)
    site_key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    cases: list[dict[str, Any]] = []

    def add(msg: dict[str, Any], key: str | None, device: str = DEVICE) -> None:
        cases.append({"payload": json.dumps(msg, ensure_ascii=rng.random() < 0.5),
                      "now": NOW, "key": key, "device": device, "site": SITE, "msg": msg})

    for i in range(150):
        args = {"level_pct": rng.choice([20, 37.5, 0, 100, round(rng.uniform(0, 100), 2)]),
                "priority": rng.randrange(1, 10), "expires_in_s": 600,
                "note": random_value(rng)}
        command = "set_override" if i % 3 else "ping"
        msg = new_command(command, args if command == "set_override" else {"x": random_value(rng)},
                          correlation_id=f"c{i}-{rng.random()}", ttl_s=600, device=DEVICE,
                          site=SITE, signing_key=site_key, now=NOW)
        add(msg, pem_line(site_key) if i % 2 else raw_b64(site_key))
        if command == "set_override":
            how = ("level", "other_key", "s_plus_l", "truncated", "not_base64", "missing",
                   "no_device", "added_field", "zero_r")[len(cases) % 9]
            add(tamper(msg, how, other), pem_line(site_key))
    # long strings (over cmdrules.SPAN_OVER bytes: checked in place in the payload when
    # unescaped, decoded when escaped), each also with one character changed
    for i, note in enumerate(["x" * 900, "é€中\U0001f6a6 ab" * 40, "\u2028\x7f/" + "y" * 700]):
        msg = new_command("set_override", {"level_pct": 50, "priority": 3, "expires_in_s": 600,
                                           "note": note}, correlation_id=f"long{i}", ttl_s=600,
                          device=DEVICE, site=SITE, signing_key=site_key, now=NOW)
        add(msg, raw_b64(site_key))
        changed = json.loads(json.dumps(msg))
        changed["args"]["note"] = note[:-1] + "z"
        add(changed, raw_b64(site_key))
    # astral characters escaped as surrogate pairs and written raw: in a key (order against
    # U+FFFD) and in a 65-character correlation id (130 halves on MicroPython's json)
    for ensure in (True, False):
        msg = new_command("ping", {"\U0001f600": 1, "\ufffd": 2}, correlation_id="\U0001f600" * 65,
                          device=DEVICE, site=SITE, signing_key=site_key, now=NOW)
        cases.append({"payload": json.dumps(msg, ensure_ascii=ensure), "now": NOW,
                      "key": raw_b64(site_key), "device": DEVICE, "site": SITE, "msg": msg})
    # signed for another node of the same site; expired; and the same command to a node
    # that has no key (accepted: signatures are checked only where a key is configured)
    other_node = new_command("ping", correlation_id="x1", device="node-0043", site=SITE,
                             signing_key=site_key, now=NOW)
    add(other_node, pem_line(site_key))
    add(new_command("ping", correlation_id="x2", device=DEVICE, site=SITE, ttl_s=10,
                    signing_key=site_key, now=NOW - 60), pem_line(site_key))
    add(new_command("ping", correlation_id="x3", device=DEVICE, site=SITE, now=NOW), None)

    need_shared(MICROPYTHON)
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"sigcheck-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    (tmp / "cases.jsonl").write_text("\n".join(
        json.dumps({**{k: v for k, v in c.items() if k != "msg"},
                    "raw": c["payload"].encode("utf-8", "surrogatepass").hex()})
        for c in cases) + "\n")
    t = time.monotonic()
    p = subprocess.run([str(MICROPYTHON), str(SCRIPT), str(tmp / "cases.jsonl"),
                        str(tmp / "seen.json")], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "MICROPYPATH": f"{ROOT / 'node'}:{ROOT / 'agent'}"})
    print(f"node checked {len(cases)} commands in {time.monotonic() - t:.1f} s")
    lines = p.stdout.splitlines()
    assert len(lines) == len(cases), p.stdout[-2000:] + p.stderr[-2000:]
    return cases, lines


def agent_verdict(case: dict[str, Any]) -> str:
    """What the agent's guard says about the same command."""
    key = None
    if case["key"] is not None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        raw = base64.b64decode(case["key"])
        key = Ed25519PublicKey.from_public_bytes(raw[-32:])
    guard = CommandGuard(case["device"], case["site"], ReplayWindow(None), 86400, key)
    try:
        guard.check(json.loads(case["payload"]), case["now"])
    except Refused as e:
        return f"refused: {e}"
    return "ok"


def test_node_canonical_bytes_are_the_agents() -> None:
    cases, lines = batch()
    for case, line in zip(cases, lines, strict=True):
        canon = line.split(" ", 2)[1]
        msg = json.loads(case["payload"])
        assert canon == canonical(msg).hex(), (case["payload"], line)


def test_node_and_agent_accept_and_refuse_the_same_commands() -> None:
    cases, lines = batch()
    accepted = refused = 0
    for case, line in zip(cases, lines, strict=True):
        node = line.split(" ", 2)[2]
        agent = agent_verdict(case)
        assert (node == "ok") == (agent == "ok"), (case["payload"], node, agent)
        accepted += node == "ok"
        refused += node != "ok"
    assert accepted >= 100 and refused >= 50, (accepted, refused)
    longs = [line.split(" ", 2)[2] for case, line in zip(cases, lines, strict=True)
             if case["msg"].get("correlation_id", "").startswith("long")]
    assert longs == ["ok", "refused: signature does not verify with this site's key; not run"] \
        * 3, longs


def test_every_tampered_command_is_refused_with_a_reason() -> None:
    cases, lines = batch()
    for case, line in zip(cases, lines, strict=True):
        signed_ok = case["key"] is None or (
            "signature" in case["msg"] and case["msg"].get("device") == case["device"])
        verdict = line.split(" ", 2)[2]
        if verdict != "ok":
            assert verdict.startswith("refused: ") and len(verdict) > 15, verdict
        elif not signed_ok:
            pytest.fail(f"accepted without a valid signature: {case['payload']}")
    reasons = {line.split(" ", 2)[2] for line in lines}
    assert "refused: signature does not verify with this site's key; not run" in reasons
    assert "refused: this node only accepts signed commands: signature missing" in reasons
    assert "refused: a signed command must name its device and site" in reasons


@pytest.mark.parametrize("interpreter", ["cpython", "micropython"])
def test_the_nodes_sha512_is_sha512(tmp_path: Path, interpreter: str) -> None:
    lengths = [0, 1, 55, 111, 112, 113, 127, 128, 129, 239, 240, 255, 256, 1000, 4096]
    data = [os.urandom(n) for n in lengths]
    script = tmp_path / "sha.py"
    script.write_text("import sys, ed25519\nfrom binascii import hexlify, unhexlify\n"
                      "for line in open(sys.argv[1]):\n"
                      "    data = unhexlify(line.strip())\n"
                      "    print(hexlify(ed25519.sha512(data)).decode())\n"
                      "    h, i, step = ed25519.Sha512(), 0, 1\n"   # fed in uneven pieces
                      "    while i < len(data):\n"
                      "        h.update(data[i:i + step])\n"
                      "        i, step = i + step, step * 3 % 199 + 1\n"
                      "    print(hexlify(h.digest()).decode())\n")
    (tmp_path / "in.txt").write_text("".join(d.hex() + "\n" for d in data))
    if interpreter == "micropython":
        need_shared(MICROPYTHON)
        cmd, env = [str(MICROPYTHON)], {"MICROPYPATH": str(ROOT / "node")}
    else:
        cmd, env = [sys.executable], {"PYTHONPATH": str(ROOT / "node")}
    p = subprocess.run([*cmd, str(script), str(tmp_path / "in.txt")], capture_output=True,
                       text=True, timeout=120, env={**os.environ, **env})
    assert p.stdout.split() == [hashlib.sha512(d).hexdigest() for d in data
                                for _ in (1, 2)], p.stderr


def test_the_sha512_tables_are_the_standards_derivation() -> None:
    """The round constants and initial hash typed into ``node/ed25519.py`` are the ones its
    ``_constants`` derives from the first 80 primes (FIPS 180-4)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("node_ed25519", ROOT / "node" / "ed25519.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    k, h0 = mod._constants()
    assert [mod._word(mod._KB, i) for i in range(80)] == k
    assert [mod._word(mod._H0B, i) for i in range(8)] == h0
    assert len(mod._KB) == 640 and len(mod._H0B) == 64


def test_the_curve_constants_are_rfc_8032s() -> None:
    import importlib.util
    spec = importlib.util.spec_from_file_location("node_ed25519", ROOT / "node" / "ed25519.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    p = 2 ** 255 - 19
    assert -121665 * pow(121666, p - 2, p) % p == mod.D
    assert pow(2, (p - 1) // 4, p) == mod.SQRT_M1 and mod.SQRT_M1 ** 2 % p == p - 1


def test_a_replay_under_another_spelling_is_refused(tmp_path: Path) -> None:
    """The same signed command with its correlation id written raw, then with the astral
    character escaped as a surrogate pair (the signed bytes are the same): the node runs it
    once and refuses the replay, as the agent does."""
    need_shared(MICROPYTHON)
    key = Ed25519PrivateKey.generate()
    msg = new_command("ping", correlation_id="c-\U0001f600", device=DEVICE, site=SITE,
                      ttl_s=600, signing_key=key, now=NOW)
    (tmp_path / "a.json").write_bytes(json.dumps(msg, ensure_ascii=False).encode())
    (tmp_path / "b.json").write_bytes(json.dumps(msg, ensure_ascii=True).encode())
    script = tmp_path / "replay.py"
    script.write_text(f"""
import cmdrules, nodecfg
key = nodecfg.public_key({raw_b64(key)!r})
for name in ("a.json", "b.json"):
    with open({str(tmp_path)!r} + "/" + name, "rb") as f:
        raw = f.read()
    g = cmdrules.Guard({DEVICE!r}, {SITE!r}, 86400, {str(tmp_path / "seen.json")!r}, key)
    try:
        g.check(raw, False, {NOW!r})
        print("ok")
    except cmdrules.Refused as e:
        print("refused: " + str(e))
""")
    p = subprocess.run([str(MICROPYTHON), str(script)], capture_output=True, text=True,
                       timeout=60, env={**os.environ,
                                        "MICROPYPATH": f"{ROOT / 'node'}:{ROOT / 'agent'}"})
    lines = p.stdout.splitlines()
    assert lines[0] == "ok" and lines[1].startswith("refused: duplicate correlation_id"), \
        p.stdout + p.stderr
