"""The platform simulator's live dashboard: one HTML page (no external assets) that polls
``/api/state`` and draws, per pole: status and last seen, counts per interval on a time axis
(SVG bars; a missing interval is a gap), the newest interval per class and direction, lamp
levels, energy saved, camera / bus / outbox health, active alarms (until they recover),
delivery figures (gaps, duplicates); and a form to send commands.

Everything on the page comes from MQTT, where anyone on the broker can publish anything
(device ids are topic levels nobody checks): the page builds its DOM with ``textContent``
only, and its Content-Security-Policy lets no script run but its own (a per-response nonce).

``POST /api/command`` needs the token (``Authorization: Bearer <token>``, compared in
constant time), a JSON content type (so a cross-site form cannot post one: anything else is
refused with 415; a page elsewhere cannot set the header without a CORS pre-flight, which
is never granted) and a small body (413). ``GET /api/state`` accepts the token too, and
needs it unless the server listens on loopback only. On loopback, a ``Host`` header that is
not a loopback name is refused (DNS rebinding)."""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import re
import secrets
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PAGE = (Path(__file__).with_name("dashboard.html")).read_text(encoding="utf-8")
MAX_BODY = 16 * 1024                # a command is a few hundred bytes
DRAIN_LIMIT = 1024 * 1024           # read (and drop) a refused body up to this, then close
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")    # the contract's device and site ids
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def dashboard_url(host: str, port: int, token: str) -> str:
    """The dashboard's address with its token in the fragment (which browsers never send to
    a server, so it stays out of requests and logs)."""
    h = f"[{host}]" if ":" in host else host
    return f"http://{h}:{port}/#token={token}"


def security_headers(nonce: str | None = None) -> dict[str, str]:
    """Headers on every answer; a page answer gets a CSP that runs only its own nonce."""
    own = f"'nonce-{nonce}'" if nonce else "'none'"
    csp = (f"default-src 'none'; script-src {own}; style-src {own}; connect-src 'self'; "
           "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY", "Cross-Origin-Resource-Policy": "same-origin"}


def finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities (valid in a schema's "number", not in JSON) as None,
    so one hostile message cannot make ``/api/state`` unreadable to the page."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    return obj


def check_command(req: Any) -> str | None:
    """Why a command request cannot be sent (None when it can): device and site must be
    contract ids (they become topic levels), the command a short name, args an object."""
    if not isinstance(req, dict):
        return "the body must be a JSON object"
    for key in ("device", "site"):
        if not isinstance(req.get(key), str) or not NAME.match(req[key]):
            return f"{key} must match {NAME.pattern}"
    if not isinstance(req.get("command"), str) or not NAME.match(req["command"]):
        return "command must be a command name"
    if "args" in req and req["args"] is not None and not isinstance(req["args"], dict):
        return "args must be an object"
    cid = req.get("correlation_id")
    if cid is not None and (not isinstance(cid, str) or len(cid) > 128):
        return "correlation_id must be a string of at most 128 characters"
    return None


def make_server(host: str, port: int, state: Callable[[], dict[str, Any]],
                command: Callable[[dict[str, Any]], dict[str, Any]],
                token: str) -> ThreadingHTTPServer:
    """HTTP server: ``/`` the page, ``/api/state`` JSON, ``POST /api/command`` (with the
    token)."""
    if not token:
        raise ValueError("the dashboard needs a token")
    expected = f"Bearer {token}".encode()
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False

    class Handler(BaseHTTPRequestHandler):
        server_version = "polelink-platform"
        sys_version = ""

        def log_message(self, *args: object) -> None:
            pass

        def _send(self, code: int, body: bytes, ctype: str, nonce: str | None = None,
                  extra: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in {**security_headers(nonce), **(extra or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, code: int, obj: Any, extra: dict[str, str] | None = None) -> None:
            self._send(code, json.dumps(finite(obj)).encode(), "application/json", extra=extra)

        def _authorised(self) -> bool:
            got = self.headers.get("Authorization", "").strip().encode()
            return hmac.compare_digest(got, expected)

        def _unauthorised(self) -> None:
            self._json(401, {"error": "missing or wrong token (Authorization: Bearer …)"},
                       {"WWW-Authenticate": 'Bearer realm="polelink-platform"'})

        def _host_ok(self) -> bool:
            """On loopback, only a loopback Host (a rebound DNS name is someone else's)."""
            if not loopback:
                return True
            h = (self.headers.get("Host") or "").strip().lower()
            name = h.rsplit(":", 1)[0] if h.count(":") == 1 or h.startswith("[") else h
            return name in LOOPBACK_NAMES or name == host.lower()

        def do_GET(self) -> None:
            if not self._host_ok():
                self._json(421, {"error": "unexpected Host"})
                return
            path = self.path.split("?", 1)[0]
            if path == "/":
                nonce = secrets.token_urlsafe(16)
                self._send(200, PAGE.replace("{{nonce}}", nonce).encode(),
                           "text/html; charset=utf-8", nonce)
            elif path == "/api/state":
                if not loopback and not self._authorised():
                    self._unauthorised()
                    return
                if self.headers.get("Authorization") and not self._authorised():
                    self._unauthorised()        # a wrong token is never quietly ignored
                    return
                self._json(200, state())
            else:
                self._send(404, b"not found", "text/plain; charset=utf-8")

        def do_HEAD(self) -> None:
            self.do_GET()

        def _drain(self, n: int) -> None:
            """Read a refused body (so the client sees the answer, not a reset), or close."""
            if 0 < n <= DRAIN_LIMIT:
                while n > 0:
                    chunk = self.rfile.read(min(n, 65536))
                    if not chunk:
                        break
                    n -= len(chunk)
            self.close_connection = True

        def do_POST(self) -> None:
            try:
                n = int(self.headers.get("Content-Length", ""))
            except ValueError:
                n = -1
            if not self._host_ok():
                self._drain(n)
                self._json(421, {"error": "unexpected Host"})
                return
            if self.path != "/api/command":
                self._drain(n)
                self._send(404, b"not found", "text/plain; charset=utf-8")
                return
            if not self._authorised():
                self._drain(n)
                self._unauthorised()
                return
            ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                self._drain(n)
                self._json(415, {"error": "Content-Type must be application/json"})
                return
            if n < 0:
                self._json(411, {"error": "Content-Length is required"})
                self.close_connection = True
                return
            if n > MAX_BODY:
                self._drain(n)
                self._json(413, {"error": f"body over {MAX_BODY} bytes"})
                return
            try:
                req = json.loads(self.rfile.read(n))
            except (UnicodeDecodeError, ValueError) as e:
                self._json(400, {"error": f"not JSON: {e}"})
                return
            problem = check_command(req)
            if problem:
                self._json(400, {"error": problem})
                return
            try:
                self._json(200, command(req))
            except (ValueError, KeyError, TypeError) as e:
                self._json(400, {"error": str(e)})

        def _not_allowed(self) -> None:
            try:
                n = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                n = -1
            self._drain(n)
            self._json(405, {"error": "method not allowed"}, {"Allow": "GET, HEAD, POST"})

        def do_OPTIONS(self) -> None:       # no CORS pre-flight is ever granted
            self._not_allowed()

        def do_PUT(self) -> None:
            self._not_allowed()

        def do_DELETE(self) -> None:
            self._not_allowed()

        def do_PATCH(self) -> None:
            self._not_allowed()

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
