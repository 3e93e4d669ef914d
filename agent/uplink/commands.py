"""Remote commands from the city platform: validate, act, answer.

A command arrives on ``<prefix>/<site>/<device>/cmd`` (the only command topic the agent
subscribes to), is parsed as JSON and validated against ``agent/uplink/schemas/command.schema.json``.
Its handler runs, and a response with the same ``correlation_id`` goes to
``.../cmd/response``. Anything wrong (not JSON, NaN or Infinity, nested too deeply, fails
the schema, unknown group, a handler that refuses) gets an ``error`` response (its text
cut at :data:`MAX_ERROR_CHARS`) and changes nothing. Handlers must check everything
before changing anything.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from agent.uplink.contract import errors

log = logging.getLogger(__name__)


class CommandError(Exception):
    """A handler refuses a command (the message goes back to the platform)."""


Handler = Callable[[dict[str, Any]], dict[str, Any] | None]


class CommandDispatcher:
    """Parses, validates and dispatches commands; returns the response fields."""

    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.handlers = handlers
        self.accepted = 0
        #: the correlation id of the command whose handler is running (for the handler)
        self.current: str | None = None
        self.rejected = 0

    def handle(self, payload: bytes) -> tuple[str | None, str | None, str | None, dict]:
        """``(correlation_id, command, error, data)`` for one raw command payload."""
        try:
            msg = json.loads(payload.decode("utf-8"), parse_constant=_no_constants)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            self.rejected += 1
            return None, None, _clip(f"payload is not UTF-8 JSON: {e}"), {}
        except RecursionError:
            self.rejected += 1
            return None, None, "payload is nested too deeply", {}
        except ValueError as e:             # NaN / Infinity, or an integer too long
            self.rejected += 1
            return None, None, _clip(f"payload is not valid JSON: {e}"), {}
        cid = msg.get("correlation_id") if isinstance(msg, dict) else None
        cid = cid if isinstance(cid, str) and 0 < len(cid) <= 128 else None
        cmd = msg.get("command") if isinstance(msg, dict) else None
        cmd = cmd if isinstance(cmd, str) and len(cmd) <= 64 else None
        try:
            problems = errors("command", msg)
        except RecursionError:
            problems = ["the command is nested too deeply"]
        if problems:
            self.rejected += 1
            return cid, cmd, _clip("invalid command: " + "; ".join(p[:200] for p in problems[:5])), {}
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


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "… (cut)"


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")
