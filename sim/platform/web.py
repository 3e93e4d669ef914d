"""The platform simulator's live dashboard: one HTML page (no external assets) that polls
``/api/state`` and draws, per pole: status, counts per interval (SVG bars), lamp levels,
energy saved, alarms, delivery figures (gaps, duplicates); and a form to send commands."""

from __future__ import annotations

import json
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PAGE = (Path(__file__).with_name("dashboard.html")).read_text(encoding="utf-8")


def make_server(host: str, port: int, state: Callable[[], dict[str, Any]],
                command: Callable[[dict[str, Any]], dict[str, Any]]) -> ThreadingHTTPServer:
    """HTTP server: ``/`` the page, ``/api/state`` JSON, ``POST /api/command``."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/":
                self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            elif self.path == "/api/state":
                self._send(200, json.dumps(state()).encode(), "application/json")
            else:
                self._send(404, b"not found", "text/plain")

        def do_POST(self) -> None:
            if self.path != "/api/command":
                self._send(404, b"not found", "text/plain")
                return
            try:
                n = int(self.headers.get("Content-Length", "0"))
                req = json.loads(self.rfile.read(min(n, 65536)))
                out = command(req)
                self._send(200, json.dumps(out).encode(), "application/json")
            except (ValueError, KeyError, TypeError) as e:
                self._send(400, json.dumps({"error": str(e)}).encode(), "application/json")

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
