"""Remote commands from the city platform: validate, act, answer.

A command arrives on ``<prefix>/<site>/<device>/cmd`` (the only command topic the agent
subscribes to). In order, and before anything changes:

1. a **retained** command is refused (it would run again on every reconnect);
2. more than :data:`MAX_COMMAND_BYTES` is refused unread;
3. it is parsed as strict JSON (:func:`parse_strict`: UTF-8, no NaN/Infinity, no
   duplicate keys, at most :data:`MAX_DEPTH` levels, no integer of over 4,300 digits);
4. it is validated against ``agent/uplink/schemas/command.schema.json``;
5. the guard (``agent.uplink.guard``) checks it is fresh, for this pole, signed when the
   pole requires it, and not a replay of a correlation id already run;
6. its handler runs, and a response with the same ``correlation_id`` goes to
   ``.../cmd/response``.

Anything wrong gets an ``error`` response (its text cut at :data:`MAX_ERROR_CHARS`) and
changes nothing. Handlers must check everything before changing anything.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from agent.uplink.contract import errors
from agent.uplink.guard import CommandGuard, Refused

log = logging.getLogger(__name__)


class CommandError(Exception):
    """A handler refuses a command (the message goes back to the platform)."""


Handler = Callable[[dict[str, Any]], dict[str, Any] | None]


class CommandDispatcher:
    """Parses, validates and dispatches commands; returns the response fields."""

    def __init__(self, handlers: dict[str, Handler], guard: CommandGuard | None = None) -> None:
        self.handlers = handlers
        self.guard = guard
        self.accepted = 0
        #: the correlation id of the command whose handler is running (for the handler)
        self.current: str | None = None
        self.rejected = 0

    def handle(self, payload: bytes, retained: bool = False, now: float | None = None
               ) -> tuple[str | None, str | None, str | None, dict]:
        """``(correlation_id, command, error, data)`` for one raw command payload."""
        if len(payload) > MAX_COMMAND_BYTES:
            self.rejected += 1
            return None, None, (f"command of {len(payload)} bytes refused unread (at most "
                                f"{MAX_COMMAND_BYTES})"), {}
        try:
            msg = parse_strict(payload)
        except ValueError as e:
            self.rejected += 1
            return None, None, _clip(str(e)), {}
        cid = msg.get("correlation_id") if isinstance(msg, dict) else None
        cid = cid if isinstance(cid, str) and 0 < len(cid) <= 128 else None
        cmd = msg.get("command") if isinstance(msg, dict) else None
        cmd = cmd if isinstance(cmd, str) and len(cmd) <= 64 else None
        if retained:
            self.rejected += 1
            return cid, cmd, ("retained commands are refused (they would run on every "
                                "reconnect): publish with retain=false and clear the retained "
                                "message"), {}
        if isinstance(msg, dict) and msg.get("schema") == "polelink/command/1":
            self.rejected += 1
            return cid, cmd, ("polelink/command/1 is no longer accepted: send "
                              "polelink/command/2, which carries an expiry (expires)"), {}
        problems = errors("command", msg)
        if problems:
            self.rejected += 1
            return cid, cmd, _clip("invalid command: " + "; ".join(p[:200] for p in problems[:5])), {}
        if self.guard is not None:
            try:
                self.guard.check(msg, time.time() if now is None else now)
            except Refused as e:
                self.rejected += 1
                return cid, cmd, _clip(str(e)), {}
        handler = self.handlers.get(msg["command"])
        if handler is None:
            self.rejected += 1
            return cid, cmd, f"command {msg['command']!r} is not supported here", {}
        try:
            self.current = cid
            data = handler(msg.get("args") or {}) or {}
        except CommandError as e:
            self.rejected += 1
            return cid, cmd, _clip(str(e)), {}
        except Exception as e:
            log.exception("command %s failed", msg["command"])
            self.rejected += 1
            return cid, cmd, _clip(f"command failed: {type(e).__name__}: {e}"), {}
        finally:
            self.current = None
        self.accepted += 1
        return cid, cmd, None, data


#: The longest error text a response carries (an attacker's huge command is not echoed).
MAX_ERROR_CHARS = 1000
#: The largest command read at all.
MAX_COMMAND_BYTES = 16 * 1024
#: The deepest nesting of objects and arrays accepted.
MAX_DEPTH = 16


def parse_strict(payload: bytes) -> Any:
    """Strict JSON (ValueError naming the problem): UTF-8; no NaN, Infinity or duplicate
    keys; at most :data:`MAX_DEPTH` levels of nesting."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"payload is not UTF-8: {e}") from None
    depth = cur = 0
    in_str = esc = False
    for ch in text:            # bound the nesting before the recursive parser sees it
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            cur += 1
            depth = max(depth, cur)
            if depth > MAX_DEPTH:
                raise ValueError(f"payload is nested more than {MAX_DEPTH} levels deep")
        elif ch in "]}":
            cur -= 1
    try:
        return json.loads(text, parse_constant=_no_constants, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise ValueError(f"payload is not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError("payload is nested too deeply") from None
    except ValueError as e:            # NaN / Infinity, duplicate keys, integer too long
        raise ValueError(f"payload is not valid JSON: {e}") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k[:64]!r}")
        out[k] = v
    return out


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "… (cut)"


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def new_command(command: str, args: dict[str, Any] | None = None, *,
                correlation_id: str | None = None, ttl_s: float = 300,
                device: str | None = None, site: str | None = None,
                signing_key: Any | None = None, now: float | None = None) -> dict[str, Any]:
    """A command as the platform sends it (for the platform simulator, tools and tests):
    a fresh correlation id, ``expires`` ``ttl_s`` ahead, and, with an Ed25519 private
    ``signing_key``, the device, site and signature."""
    import base64
    import uuid
    from datetime import UTC, datetime

    t = time.time() if now is None else now
    msg: dict[str, Any] = {
        "schema": "polelink/command/2", "correlation_id": correlation_id or uuid.uuid4().hex,
        "command": command,
        "expires": datetime.fromtimestamp(t + ttl_s, UTC).isoformat(timespec="seconds")
        .replace("+00:00", "Z")}
    if args:
        msg["args"] = args
    if device is not None:
        msg["device"] = device
    if site is not None:
        msg["site"] = site
    if signing_key is not None:
        from agent.uplink.guard import canonical

        msg["signature"] = base64.b64encode(signing_key.sign(canonical(msg))).decode()
    return msg
