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
    return json.dumps({"schema": "polelink/command/2", "correlation_id": "c1",
                       "expires": "2999-01-01T00:00:00Z", **kw}).encode()


@pytest.mark.parametrize("payload, words", [
    (b"[" * 10_000, "nested more than"),
    (b'{"a":' * 1000 + b"1" + b"}" * 1000, "nested more than"),
    (cmd(command="set_override", args={"level_pct": 40, "expires_in_s": 60}).replace(
        b"40", b"NaN"), "NaN is not a JSON number"),
    (cmd(command="set_override", args={"level_pct": 40, "expires_in_s": 60}).replace(
        b"40", b"Infinity"), "Infinity is not a JSON number"),
    (b'{"n": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (b'{"n": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\"[[["}', "invalid command"),
    (cmd(command="set_override", args={"level_pct": 40, "expires_in_s": 60,
                                       "group": "g" * 3_000_000}), "refused unread"),
    (cmd(command="ping", args={"x": ["y"] * 300_000}), "refused unread"),
    (cmd(command="set_override", args={"level_pct": 40, "expires_in_s": 60,
                                       "group": "g" * 3_000}), "pattern '^(\\\\*|[a-z0-9]"),
    (cmd(command="ping", args={"x": ["y"] * 3000}), "invalid command"),
    (b"\xff\xfe", "not UTF-8"),
    (b'{"schema": "a", "schema": "b"}', "duplicate key 'schema'"),
    (cmd(command="ping").replace(b'"command"', b'"command": "ping", "command"'),
     "duplicate key 'command'"),
    (b" " * 20_000 + b"{}", "refused unread"),
    (json.dumps({"schema": "polelink/command/1", "correlation_id": "x",
                 "command": "ping"}).encode(), "no longer accepted"),
    (cmd(command="ping", args={"a": [[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]}),
     "nested more than 16 levels"),
    (cmd(command="ping").replace(b', "expires": "2999-01-01T00:00:00Z"', b""),
     "'expires' is a required property"),
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


# -- authentic, fresh, once ---------------------------------------------------------------

def guarded(tmp_path: Path, key: object | None = None) -> CommandDispatcher:
    from agent.uplink.guard import CommandGuard, ReplayWindow

    CALLED.clear()
    guard = CommandGuard("pole-1", "city", ReplayWindow(tmp_path / "commands.db"), 3600, key)
    return CommandDispatcher({"ping": lambda a: CALLED.append(a) or {"pong": 1}}, guard)


def send(d: CommandDispatcher, msg: dict, now: float, retained: bool = False) -> str | None:
    return d.handle(json.dumps(msg).encode(), retained, now)[2]


def test_expired_too_far_ahead_and_zoneless_commands_are_refused(tmp_path: Path) -> None:
    from agent.uplink.commands import new_command

    d, now = guarded(tmp_path), 2_000_000_000.0
    assert "expired" in send(d, new_command("ping", ttl_s=-1, now=now), now)
    assert "ahead" in send(d, new_command("ping", ttl_s=86_400, now=now), now)
    zoneless = {**new_command("ping", now=now), "expires": "2033-05-18T03:38:20"}
    assert "is not a 'date-time'" in send(d, zoneless, now)
    assert send(d, new_command("ping", ttl_s=60, now=now), now) is None and len(CALLED) == 1


def test_a_correlation_id_runs_once_even_across_restarts(tmp_path: Path) -> None:
    from agent.uplink.commands import new_command

    now = 2_000_000_000.0
    msg = new_command("ping", correlation_id="once", ttl_s=600, now=now)
    d = guarded(tmp_path)
    assert send(d, msg, now) is None
    assert "duplicate" in send(d, msg, now + 1) and "not run again" in send(d, msg, now + 2)
    d2 = guarded(tmp_path)                      # a restarted agent remembers
    assert "duplicate" in send(d2, msg, now + 3)
    assert len(CALLED) == 0 and d2.guard.replays == 1   # (CALLED was reset by guarded())
    assert "expired" in send(d2, msg, now + 601)         # and after expiry it is stale


def test_retained_commands_are_refused(tmp_path: Path) -> None:
    from agent.uplink.commands import new_command

    d, now = guarded(tmp_path), 2_000_000_000.0
    error = send(d, new_command("ping", now=now), now, retained=True)
    assert "retained commands are refused" in error and not CALLED


def test_commands_for_another_pole_are_refused(tmp_path: Path) -> None:
    from agent.uplink.commands import new_command

    d, now = guarded(tmp_path), 2_000_000_000.0
    assert "this is 'pole-1'" in send(d, new_command("ping", device="pole-2", now=now), now)
    assert "this is 'city'" in send(d, new_command("ping", device="pole-1", site="x", now=now),
                                    now)
    assert not CALLED


def test_signed_commands_only_with_a_verify_key(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from agent.uplink.commands import new_command

    site_key, thief_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    d, now = guarded(tmp_path, site_key.public_key()), 2_000_000_000.0
    unsigned = new_command("ping", device="pole-1", site="city", now=now)
    assert "signature missing" in send(d, unsigned, now)
    forged = new_command("ping", device="pole-1", site="city", signing_key=thief_key, now=now)
    assert "does not verify" in send(d, forged, now)
    good = new_command("ping", device="pole-1", site="city", signing_key=site_key, now=now)
    tampered = {**good, "command": "rebirth"}
    assert "does not verify" in send(d, tampered, now)
    for_other = new_command("ping", device="pole-2", site="city", signing_key=site_key, now=now)
    assert "this is 'pole-1'" in send(d, for_other, now)     # a signature is bound to a pole
    no_target = new_command("ping", signing_key=site_key, now=now)
    assert "must name its device and site" in send(d, no_target, now)
    assert not CALLED
    assert send(d, good, now) is None and len(CALLED) == 1
    assert "duplicate" in send(d, good, now)                   # a replayed signed command


def test_the_replay_window_falls_back_to_memory_when_its_file_cannot_be_written(
        tmp_path: Path) -> None:
    from agent.uplink.guard import ReplayWindow

    (tmp_path / "dir").mkdir()
    w = ReplayWindow(tmp_path / "dir")             # a directory: cannot be a database
    assert not w.durable and w.error
    assert w.first_time("a", 10.0, 1.0) is None and w.first_time("a", 10.0, 2.0) == 1.0
