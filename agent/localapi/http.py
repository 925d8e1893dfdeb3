"""The local API over HTTP on the loopback interface (``http_port`` in the config).

Apart from :mod:`agent.localapi.server` so that an agent without ``http_port`` never imports
``http.server``. Same operations and replies as the Unix socket.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from agent.localapi.server import MAX_REQUEST_BYTES, LocalApi

log = logging.getLogger(__name__)


class _HttpHandler(BaseHTTPRequestHandler):
    """``POST /v1/<op>`` with the request's JSON body (``op`` taken from the path); ``GET /v1/info``."""

    server: _HttpServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        log.debug("http: " + fmt, *args)

    def do_GET(self) -> None:
        if self.path in ("/v1/info", "/v1/ping"):
            self._reply(self.server.api.handle({"op": self.path.removeprefix("/v1/")}))
        else:
            self._reply({"ok": False, "error": f"no such resource {self.path[:100]!r}"}, 404)

    def do_POST(self) -> None:
        op = self.path.removeprefix("/v1/")
        if op not in ("predict", "feedback", "info", "ping"):
            self._reply({"ok": False, "error": f"no such resource {self.path[:100]!r}"}, 404)
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_REQUEST_BYTES:
            self._reply({"ok": False, "error": f"Content-Length must be 0..{MAX_REQUEST_BYTES}"}, 413)
            return
        body = self.rfile.read(length) if length else b"{}"
        try:
            req = json.loads(body)
            if not isinstance(req, dict):
                raise ValueError("request must be a JSON object")
        except ValueError as exc:
            self._reply({"ok": False, "error": f"bad request: {exc}"}, 400)
            return
        res = self.server.api.handle({**req, "op": op})
        self._reply(res, 200 if res.get("ok") else 422)

    def _reply(self, obj: dict[str, Any], status: int = 200) -> None:
        data = json.dumps(obj, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    api: LocalApi


class HttpServer:
    """The same API over HTTP on the loopback interface only (``http_port`` in the config)."""

    def __init__(self, port: int, api: LocalApi) -> None:
        self._server = _HttpServer(("127.0.0.1", port), _HttpHandler)
        self._server.api = api
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
