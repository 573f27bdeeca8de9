"""`/slack/events` on `slack.port`: Slack's requests, their signatures checked on the raw
bytes before anything is parsed, then dispatched to the bolt app.

A forged signature, or a timestamp more than 5 minutes from now (a replay), is answered
401 and goes no further. Nothing of a request (its body, its signature) or of our secrets is
logged, whatever the outcome."""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from slack_bolt import BoltRequest
from slack_sdk.signature import SignatureVerifier

from gateway.service.clock import Clock
from gateway.slack.app import SlackAdapter
from gateway.slack.metrics import SlackCounters

log = logging.getLogger("ticketgate.slack")
PATH = "/slack/events"
MAX_BODY = 1 << 20  # Slack's payloads are far smaller (a view is at most 250 kB)


class _EpochClock:
    """slack_sdk's clock interface over ours: the replay window follows the injected clock."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def now(self) -> float:
        return self.clock.now().timestamp()


def request_kind(body: str, content_type: str) -> str:
    """For the counters: command, interaction, event, url_verification."""
    if content_type.startswith("application/json"):
        return "url_verification" if '"url_verification"' in body[:200] else "event"
    return "interaction" if body.startswith("payload=") else "command"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # http.server's default backlog of 5 makes a burst of concurrent requests wait for a
    # SYN retransmission (1 s) — a third of Slack's 3 s.
    request_queue_size = 128


class SlackHttpServer:
    def __init__(
        self,
        adapter: SlackAdapter,
        *,
        signing_secret: str,
        clock: Clock,
        counters: SlackCounters,
        host: str,
        port: int,
    ) -> None:
        self.adapter = adapter
        self.verifier = SignatureVerifier(signing_secret, clock=_EpochClock(clock))  # type: ignore[arg-type]
        self.counters = counters
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                outer.answer(self)

            def do_GET(self) -> None:
                outer.send(self, 404, b'{"error":"not found"}')

            def log_message(self, format: str, *args: Any) -> None:
                return  # the request line is all http.server would log; we log our own

        self.httpd = _Server((host, port), Handler)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def answer(self, req: BaseHTTPRequestHandler) -> None:
        started = time.monotonic()
        if urlsplit(req.path).path != PATH:
            self.send(req, 404, b'{"error":"not found"}')
            return
        try:
            length = int(req.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            self.send(req, 413, b'{"error":"too large"}')
            return
        raw = req.rfile.read(length)
        headers = {k.lower(): v for k, v in req.headers.items()}
        if not self.verifier.is_valid(
            body=raw,
            timestamp=headers.get("x-slack-request-timestamp", ""),
            signature=headers.get("x-slack-signature", ""),
        ):
            self.counters.add('ticketgate_slack_refused_total{reason="signature"}')
            log.warning("slack: request with a bad or stale signature refused (401)")
            self.send(req, 401, b'{"error":"invalid request"}')
            return
        body = raw.decode("utf-8", errors="replace")
        kind = request_kind(body, headers.get("content-type", ""))
        self.counters.add(f'ticketgate_slack_requests_total{{kind="{kind}"}}')
        if headers.get("x-slack-retry-num"):
            self.counters.add("ticketgate_slack_retries_total")
        query = urlsplit(req.path).query
        resp = self.adapter.app.dispatch(
            BoltRequest(body=body, query=query, headers={k: [v] for k, v in headers.items()})
        )
        data = resp.body.encode() if isinstance(resp.body, str) else bytes(resp.body or b"")
        ctype = (resp.headers.get("content-type") or ["text/plain;charset=utf-8"])[0]
        self.send(req, resp.status, data, ctype)
        self.counters.add("ticketgate_slack_ack_ms_total", int((time.monotonic() - started) * 1000))

    @staticmethod
    def send(
        req: BaseHTTPRequestHandler, code: int, data: bytes, ctype: str = "application/json"
    ) -> None:
        req.send_response(code)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="slack-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class SlackSocketMode:
    """Socket Mode instead of HTTP (no public URL): the same listeners over Slack's WebSocket;
    no signatures (the connection is authenticated by the app-level token)."""

    def __init__(self, adapter: SlackAdapter, *, app_token: str) -> None:
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        self.handler = SocketModeHandler(adapter.app, app_token)

    def start(self) -> None:
        self.handler.connect()  # type: ignore[no-untyped-call]

    def stop(self) -> None:
        self.handler.close()  # type: ignore[no-untyped-call]
