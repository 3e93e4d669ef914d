"""The node's parsers under hostile input, with hypothesis: the command guard, the expiry
parser, the override arguments, the outbox file and the config validator. They are plain
Python that MicroPython runs (tests/test_node_mp.py runs their fixed cases there); here
CPython drives them with generated input. Any failure but a refusal is a bug: on a device it
would end the loop pass (the node then goes to full output, but stops obeying the platform)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import ROOT

sys.path[:0] = [str(ROOT / "node"), str(ROOT / "agent")]
cmdrules = pytest.importorskip("cmdrules")
outbox = pytest.importorskip("outbox")
nodecfg = pytest.importorskip("nodecfg")

NOW = 1795003200 - 30
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
    max_leaves=20)
command_like = st.fixed_dictionaries(
    {"schema": st.sampled_from(["polelink/command/2", "x"]),
     "correlation_id": st.text(max_size=20),
     "command": st.sampled_from(["ping", "set_override", "clear_override", "rebirth", "boom"]),
     "expires": st.one_of(st.text(max_size=30),
                          st.just("2026-11-18T12:00:00Z"), st.integers())},
    optional={"args": json_values, "device": json_values, "site": json_values})


def guard(tmp: Path) -> object:
    return cmdrules.Guard("node-0042", "hanoi-d1", 3600, str(tmp / "seen.json"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(st.binary(max_size=300),
                         command_like.map(lambda d: json.dumps(d).encode()),
                         json_values.map(lambda v: json.dumps(v).encode())),
       retained=st.booleans())
def test_command_guard_refuses_or_accepts_never_crashes(tmp_path: Path, payload: bytes,
                                                        retained: bool) -> None:
    try:
        guard(tmp_path).check(payload, retained, NOW)
    except cmdrules.Refused as e:
        assert str(e)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_expiry_parser_refuses_or_parses(text: str) -> None:
    try:
        v = cmdrules.parse_expiry(text)
    except cmdrules.Refused:
        return
    assert isinstance(v, (int, float))


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_override_arguments_refused_or_valid(args: object) -> None:
    try:
        cmdrules.override_args(args)
    except cmdrules.Refused as e:
        assert str(e)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seg0=st.binary(max_size=400), seg1=st.binary(max_size=200), ptr=st.binary(max_size=60),
       keep=st.integers(0, 60), flip=st.integers(0, 4000))
def test_whatever_is_on_flash_the_outbox_opens_and_sends_what_is_new(
        tmp_path: Path, seg0: bytes, seg1: bytes, ptr: bytes, keep: int, flip: int) -> None:
    """Garbage segments, a damaged pointer, or a real outbox cut short or with one flipped
    bit: opening never fails, what is put afterwards is read back, and every record read
    is one that was written."""
    import tempfile
    d = Path(tempfile.mkdtemp(dir=tmp_path))
    real = outbox.Outbox(str(d / "ob"), 64)
    for i in range(1, 21):
        real.put(i, "t", f"payload {i}")
    raw = bytearray((d / "ob.0").read_bytes())
    raw[flip % len(raw)] ^= 1 << (flip % 8)
    (d / "ob.0").write_bytes(bytes(raw[:len(raw) - keep]))
    for name, data in (("g.0", seg0), ("g.1", seg1), ("g.ptr", ptr)):
        if data:
            (d / name).write_bytes(data)
    for prefix in ("ob", "g"):
        box = outbox.Outbox(str(d / prefix), 64)
        box.put(999, "t", "new")
        got = []
        while (r := box.next()) is not None:
            got.append((r[0], bytes(r[2])))
        assert got[-1] == (999, b"new")
        if prefix == "ob":
            assert all(p == f"payload {s}".encode() for s, p in got[:-1]), got
            named = sum(n for _reason, n, _a, _b in box.take_lost())
            assert len(got) - 1 + named >= 20 - (keep > 0) - 1 or keep > 30, (got, named)


strict = pytest.importorskip("strictjson")
json_texts = st.one_of(
    st.binary(max_size=120),
    json_values.map(lambda v: json.dumps(v).encode()),
    json_values.map(lambda v: json.dumps(v, ensure_ascii=False).encode()),
    st.lists(st.sampled_from(['{', '}', '[', ']', ',', ':', '"a"', '1', '-0.5e3', 'true',
                              'null', ' ', '"\\ud83d\\ude00"', '"\\u00e9"', 'NaN', '01',
                              '"x\\q"', '1.', '{"a":1,"a":2}']), max_size=12)
    .map(lambda xs: "".join(xs).encode()))


@settings(max_examples=600, deadline=None)
@given(json_texts)
def test_the_node_refuses_exactly_the_json_the_agent_refuses(raw: bytes) -> None:
    """``node/strictjson.py`` (before MicroPython's lenient parser) against the agent's
    ``parse_strict``: the same verdict, the same value. (The node also refuses a lone
    escaped surrogate, which no UTF-8 text can hold.)"""
    from agent.uplink.commands import parse_strict
    try:
        want = parse_strict(raw)
    except ValueError:
        want = ValueError
    try:
        got = strict.loads(raw)
    except ValueError:
        got = ValueError
    if want is not ValueError and got is ValueError:
        assert any(0xD800 <= ord(c) <= 0xDFFF for c in json.dumps(want, ensure_ascii=False)
                   .encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")), raw
        return
    assert got == want, raw


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_config_validator_lists_problems_never_crashes(doc: object) -> None:
    errs = nodecfg.validate(doc)
    assert isinstance(errs, list) and all(isinstance(e, str) for e in errs)


@settings(max_examples=300, deadline=None)
@given(json_values.filter(lambda v: isinstance(v, dict)) | st.dictionaries(st.text(), json_values))
def test_canonical_bytes_match_the_agents(doc: dict) -> None:
    """The node's canonical form is the agent's (CPython side; tests/test_node_signatures.py
    checks the same inside MicroPython)."""
    from agent.uplink.guard import canonical
    try:
        want = canonical(doc)
    except (ValueError, UnicodeEncodeError):
        with pytest.raises(cmdrules.Refused):
            cmdrules.canonical(doc)
        return
    assert cmdrules.canonical(doc) == want


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.one_of(st.binary(max_size=300),
                         command_like.map(lambda d: json.dumps(d).encode())),
       sig=st.one_of(st.text(max_size=100), st.binary(min_size=64, max_size=64).map(
           lambda b: __import__("base64").b64encode(b).decode())))
def test_a_node_with_a_key_runs_nothing_unsigned(tmp_path: Path, payload: bytes,
                                                  sig: str) -> None:
    """With a ``command_key`` no generated command runs, signed with garbage or not."""
    g = cmdrules.Guard("node-0042", "hanoi-d1", 3600, str(tmp_path / "seen.json"), bytes(range(32)))
    try:
        msg = json.loads(payload)
        if isinstance(msg, dict):
            msg.update({"device": "node-0042", "site": "hanoi-d1", "signature": sig,
                        "expires": "2026-11-18T12:00:00Z"})
            payload = json.dumps(msg).encode()
    except ValueError:
        pass
    with pytest.raises(cmdrules.Refused):
        g.check(payload, False, NOW)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80) | st.binary(max_size=60).map(
    lambda b: __import__("base64").b64encode(b).decode()))
def test_a_command_key_is_parsed_or_refused_with_a_reason(text: str) -> None:
    try:
        key = nodecfg.public_key(text)
    except ValueError as e:
        assert str(e)
        return
    assert len(key) == 32
