"""`/healthz` and `/metrics` of `ticketgate run`, on `http.port`."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gateway.service.status import StatusService


class StatusServer:
    """Answers `/healthz` (200, or 503 with the reason while the database cannot be written)
    and `/metrics` (Prometheus text: tickets, the inbound queue, the outbox, the runners)."""

    def __init__(
        self,
        status: StatusService,
        *,
        host: str,
        port: int,
        counters: Callable[[], dict[str, int]] = dict,
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.status = status
        self.counters = counters
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self._thread: threading.Thread | None = None

    def answer(self, req: BaseHTTPRequestHandler) -> None:
        if req.path == "/healthz":
            problem = self.status.storage_problem()
            body = (
                {"status": "ok"}
                if problem is None
                else {"status": "storage unavailable", "error": problem}
            )
            self._send(req, 200 if problem is None else 503, "application/json", json.dumps(body))
        elif req.path == "/metrics":
            lines = self.status.metric_lines()
            lines += [f"{name} {value}" for name, value in sorted(self.counters().items())]
            self._send(req, 200, "text/plain; version=0.0.4", "\n".join(lines) + "\n")
        else:
            self._send(req, 404, "application/json", json.dumps({"error": "not found"}))

    @staticmethod
    def _send(req: BaseHTTPRequestHandler, code: int, ctype: str, text: str) -> None:
        data = text.encode()
        req.send_response(code)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
