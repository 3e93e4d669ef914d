"""The command dispatcher against hostile payloads: every one gets a short, clear error
and reaches no handler; the overrides store refuses what it could not read back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.lighting.overrides import Override, OverrideStore
from agent.uplink.commands import MAX_ERROR_CHARS, CommandDispatcher

CALLED: list[dict] = []


def dispatcher() -> CommandDispatcher:
    CALLED.clear()
    return CommandDispatcher({"set_override": lambda a: CALLED.append(a) or {},
                              "ping": lambda a: {"pong": 1}})


def cmd(**kw: object) -> bytes:
    return json.dumps({"schema": "polelink/command/1", "correlation_id": "c1", **kw}).encode()


@pytest.mark.parametrize("payload, words", [
    (b"[" * 100_000, "nested too deeply"),
    (b'{"a":' * 5000 + b"1" + b"}" * 5000, "nested too deeply"),
    (cmd(command="set_override", args={"level_pct": 40, "expires_in_s": 60}).replace(
        b"40", b"NaN"), "NaN is not a JSON number"),
    (cmd(command="set_override", args={"level_pct": 40, "expires_in_s": 60}).replace(
        b"40", b"Infinity"), "Infinity is not a JSON number"),
    (b'{"n": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (cmd(command="set_override", args={"level_pct": 40, "expires_in_s": 60,
                                       "group": "g" * 3_000_000}), "pattern '^(\\\\*|[a-z0-9]"),
    (cmd(command="ping", args={"x": ["y"] * 300_000}), "invalid command"),
    (b"\xff\xfe", "not UTF-8 JSON"),
])
def test_hostile_payloads_get_a_short_error_and_reach_no_handler(payload: bytes,
                                                                 words: str) -> None:
    d = dispatcher()
    _cid, _cmd, error, data = d.handle(payload)
    assert error and words in error and len(error) <= MAX_ERROR_CHARS + 10
    assert data == {} and not CALLED and d.accepted == 0


def test_a_valid_command_still_works() -> None:
    d = dispatcher()
    assert d.handle(cmd(command="ping"))[2:] == (None, {"pong": 1})


def test_overrides_refuse_nan_and_survive_a_hostile_file(tmp_path: Path) -> None:
    store = OverrideStore(tmp_path / "o.json")
    for bad in (Override(float("nan"), 5, 1e10), Override(40, 12, 1e10),
                Override(140, 5, 1e10), Override(40, 5, float("inf"))):
        with pytest.raises(ValueError):
            store.set(["g"], bad)
    assert not (tmp_path / "o.json").exists() and not (tmp_path / "o.json.tmp").exists()
    (tmp_path / "o.json").write_text("[" * 50_000)
    again = OverrideStore(tmp_path / "o.json")
    assert "unreadable" in again.problem and (tmp_path / "o.json.corrupt").exists()
