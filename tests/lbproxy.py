"""A tiny HTTP load balancer for tests: one address in front of several controller replicas.

Each request goes to the next live backend (round robin); a backend that refuses the
connection is skipped, as a real load balancer with health checks would. Headers that
matter to devices (``Range``) are forwarded; answers are passed back as they came.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class LoadBalancer:
    def __init__(self, backends: list[str]) -> None:
        self.backends = backends  # the caller may add and remove backends while it runs
        self._next = 0
        self._lock = threading.Lock()
        lb = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                for url in lb.order():
                    try:
                        r = httpx.request(self.command, url + self.path, headers=headers, content=body, timeout=30)
                    except httpx.TransportError:
                        continue
                    self.send_response(r.status_code)
                    for k, v in r.headers.items():
                        if k.lower() not in HOP and k.lower() != "content-encoding":
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(r.content)))
                    self.end_headers()
                    self.wfile.write(r.content)
                    return
                self.send_error(502, "no live backend")

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _forward  # noqa: N815 (http.server names)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def order(self) -> list[str]:
        with self._lock:
            i = self._next
            self._next = (self._next + 1) % len(self.backends)
        return self.backends[i:] + self.backends[:i]

    def __enter__(self) -> LoadBalancer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
