"""A local fake of Slack's Web API (in the style of bolt's tests/mock_web_api_server) and a
harness that drives the running Slack app over signed HTTP.

The fake answers `POST|GET /api/<method>` with the real response shapes, records every call
(method and its arguments, form or JSON), checks the bot token, and can be told to answer a
method with a 429 (and Retry-After) or with `ok: false` and an error. It also serves files at
`/files/<name>` to the bot token, as files.slack.com does."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TEAM = "T0DEMO"
APP = "A0DEMO"
BOT_TOKEN = "xoxb-test-0123456789"
SIGNING_SECRET = "test-signing-secret-abcdef"
BOT_USER = "U0TICKETBOT"


@dataclass
class Call:
    method: str
    args: dict[str, Any]


@dataclass
class Failure:
    status: int = 200
    error: str = ""
    retry_after: int | None = None
    times: int = 1


class FakeSlack:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.users: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self.files: dict[str, bytes] = {}
        self.failures: dict[str, list[Failure]] = {}
        self.delay: dict[str, float] = {}
        self._lock = threading.Lock()
        self._ts = 1_700_000_000_000100
        self._views = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer._handle(self, b"")

            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                outer._handle(self, self.rfile.read(n))

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/api/"

    @property
    def files_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/files/"

    def start(self) -> FakeSlack:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    # ---- set-up --------------------------------------------------------------------------
    def add_user(self, user_id: str, email: str, *, team: str = TEAM, **flags: Any) -> None:
        self.users[user_id] = {
            "id": user_id,
            "team_id": team,
            "name": email.split("@")[0],
            "real_name": email.split("@")[0].capitalize(),
            "deleted": False,
            "is_bot": False,
            "is_restricted": False,
            "is_ultra_restricted": False,
            "profile": {"email": email, "real_name": email.split("@")[0].capitalize()},
            **flags,
        }

    def fail(self, method: str, **kw: Any) -> None:
        self.failures.setdefault(method, []).append(Failure(**kw))

    def next_ts(self) -> str:
        with self._lock:
            self._ts += 100
            return f"{self._ts // 1_000_000}.{self._ts % 1_000_000:06d}"

    # ---- what was called -----------------------------------------------------------------
    def of(self, method: str) -> list[dict[str, Any]]:
        with self._lock:
            return [c.args for c in self.calls if c.method == method]

    def count(self, method: str) -> int:
        return len(self.of(method))

    def all_text(self) -> str:
        """Everything the app sent to Slack, as one string (for visibility scans)."""
        with self._lock:
            return "\n".join(json.dumps(c.args, ensure_ascii=False) for c in self.calls)

    def channel_text(self, channel: str) -> str:
        """Everything posted to (or updated in) ``channel``, ephemeral answers excluded."""
        with self._lock:
            return "\n".join(
                json.dumps(c.args, ensure_ascii=False)
                for c in self.calls
                if c.method in ("chat.postMessage", "chat.update")
                and c.args.get("channel") == channel
            )

    # ---- the server ----------------------------------------------------------------------
    def _handle(self, req: BaseHTTPRequestHandler, raw: bytes) -> None:
        path = urllib.parse.urlsplit(req.path)
        auth = req.headers.get("Authorization", "")
        if path.path.startswith("/files/"):
            data = self.files.get(path.path.removeprefix("/files/"))
            if auth != f"Bearer {BOT_TOKEN}" or data is None:
                self._send(req, 404, b"not found", "text/plain")
            else:
                self._send(req, 200, data, "application/octet-stream")
            return
        method = path.path.removeprefix("/api/")
        args: dict[str, Any] = dict(urllib.parse.parse_qsl(path.query))
        ctype = req.headers.get("Content-Type", "")
        if raw:
            if ctype.startswith("application/json"):
                args.update(json.loads(raw))
            else:
                args.update(urllib.parse.parse_qsl(raw.decode()))
        for k in ("blocks", "view"):
            if isinstance(args.get(k), str):
                args[k] = json.loads(args[k])
        with self._lock:
            self.calls.append(Call(method, args))
            queue = self.failures.get(method) or []
            failure = queue[0] if queue else None
            if failure is not None:
                failure.times -= 1
                if failure.times <= 0:
                    queue.pop(0)
        if self.delay.get(method):
            # A slow Slack (latency injected into the answer, e.g. users.info taking longer
            # than Slack's 3 s ack window): the test asserts the ack did not wait for it.
            time.sleep(self.delay[method])
        if auth != f"Bearer {BOT_TOKEN}":
            self._json(req, 200, {"ok": False, "error": "not_authed"})
            return
        if failure is not None:
            headers = {"Retry-After": str(failure.retry_after)} if failure.retry_after else {}
            body = {"ok": False, "error": failure.error or "ratelimited"}
            self._json(req, failure.status, body, headers)
            return
        self._json(req, 200, self._answer(method, args))

    def _answer(self, method: str, a: dict[str, Any]) -> dict[str, Any]:
        if method == "auth.test":
            return {
                "ok": True,
                "url": "https://acme.slack.com/",
                "team": "Acme",
                "user": "ticketgate",
                "team_id": TEAM,
                "user_id": BOT_USER,
                "bot_id": "B0TICKETBOT",
                "is_enterprise_install": False,
            }
        if method == "users.info":
            user = self.users.get(a.get("user", ""))
            return {"ok": True, "user": user} if user else {"ok": False, "error": "user_not_found"}
        if method == "chat.postMessage":
            ts = self.next_ts()
            channel = a["channel"]
            msg = {
                "type": "message",
                "user": BOT_USER,
                "bot_id": "B0TICKETBOT",
                "ts": ts,
                "text": a.get("text", ""),
            }
            if a.get("thread_ts"):
                msg["thread_ts"] = a["thread_ts"]
            return {"ok": True, "channel": channel, "ts": ts, "message": msg}
        if method == "chat.update":
            return {"ok": True, "channel": a["channel"], "ts": a["ts"], "text": a.get("text", "")}
        if method == "chat.postEphemeral":
            return {"ok": True, "message_ts": self.next_ts()}
        if method in ("views.open", "views.update", "views.publish", "views.push"):
            with self._lock:
                self._views += 1
                vid = f"V{self._views:08d}"
            view = dict(a.get("view") or {})
            return {
                "ok": True,
                "view": {
                    **view,
                    "id": a.get("view_id") or vid,
                    "team_id": TEAM,
                    "hash": f"{int(time.time())}.abc",
                    "app_id": APP,
                },
            }
        if method in ("conversations.history", "conversations.replies"):
            msgs = self.messages.get(a.get("channel", ""), [])
            ts = a.get("latest") or a.get("ts")
            found = [m for m in msgs if m["ts"] == ts]
            return {"ok": True, "messages": found, "has_more": False}
        return {"ok": False, "error": "unknown_method"}

    def _json(
        self,
        req: BaseHTTPRequestHandler,
        code: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        self._send(req, code, json.dumps(body).encode(), "application/json", headers)

    @staticmethod
    def _send(
        req: BaseHTTPRequestHandler,
        code: int,
        data: bytes,
        ctype: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        req.send_response(code)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            req.send_header(k, v)
        req.end_headers()
        req.wfile.write(data)


# ---- signed requests to the app --------------------------------------------------------------
def sign(body: bytes, timestamp: int, secret: str = SIGNING_SECRET) -> str:
    base = b"v0:" + str(timestamp).encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


@dataclass
class Answer:
    status: int
    body: str
    seconds: float


@dataclass
class SlackClient:
    """Sends requests to the app as Slack does: form-encoded commands and interactions, JSON
    events, each signed with the signing secret at the given clock's time."""

    url: str
    clock: Any  # the gateway's clock: signatures are checked against it
    secret: str = SIGNING_SECRET
    counter: list[int] = field(default_factory=lambda: [0])

    def _id(self, prefix: str) -> str:
        self.counter[0] += 1
        return f"{prefix}{self.counter[0]:06d}"

    def post(
        self,
        body: bytes,
        content_type: str,
        *,
        timestamp: int | None = None,
        signature: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        ts = int(self.clock.now().timestamp()) if timestamp is None else timestamp
        req = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": content_type,
                "X-Slack-Request-Timestamp": str(ts),
                "X-Slack-Signature": signature or sign(body, ts, self.secret),
                **(headers or {}),
            },
        )
        started = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return Answer(r.status, r.read().decode(), time.monotonic() - started)
        except urllib.error.HTTPError as e:
            return Answer(e.code, e.read().decode(), time.monotonic() - started)

    def command(
        self,
        text: str,
        *,
        user: str = "U0ALICE",
        channel: str = "C0ITSUPPORT",
        team: str = TEAM,
        app: str = APP,
        **kw: Any,
    ) -> Answer:
        form = {
            "token": "legacy-ignored",
            "team_id": team,
            "team_domain": "acme",
            "channel_id": channel,
            "channel_name": "it-support",
            "user_id": user,
            "user_name": user.lower(),
            "command": "/ticket",
            "text": text,
            "api_app_id": app,
            "is_enterprise_install": "false",
            "response_url": self.url.replace("/slack/events", "/response"),
            "trigger_id": self._id("13345224609.738474920.trigger"),
        }
        return self.post(
            urllib.parse.urlencode(form).encode(), "application/x-www-form-urlencoded", **kw
        )

    def interaction(self, payload: dict[str, Any], **kw: Any) -> Answer:
        payload.setdefault("api_app_id", APP)
        payload.setdefault("team", {"id": TEAM, "domain": "acme"})
        payload.setdefault("trigger_id", self._id("trig"))
        body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
        return self.post(body, "application/x-www-form-urlencoded", **kw)

    def event(
        self,
        event: dict[str, Any],
        *,
        event_id: str | None = None,
        team: str = TEAM,
        app: str = APP,
        retry: int | None = None,
        **kw: Any,
    ) -> Answer:
        body = {
            "token": "legacy-ignored",
            "team_id": team,
            "api_app_id": app,
            "event": event,
            "type": "event_callback",
            "event_id": event_id or self._id("Ev"),
            "event_time": int(self.clock.now().timestamp()),
            "authorizations": [
                {
                    "team_id": team,
                    "user_id": BOT_USER,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
        }
        headers = kw.pop("headers", {}) or {}
        if retry is not None:
            headers = {
                **headers,
                "X-Slack-Retry-Num": str(retry),
                "X-Slack-Retry-Reason": "http_timeout",
            }
        return self.post(json.dumps(body).encode(), "application/json", headers=headers, **kw)

    # ---- payload shapes ------------------------------------------------------------------
    def button(
        self,
        action_id: str,
        value: str,
        *,
        user: str = "U0ALICE",
        channel: str = "C0ITSUPPORT",
        message_ts: str = "1700000000.000200",
        **kw: Any,
    ) -> Answer:
        return self.interaction(
            {
                "type": "block_actions",
                "user": {"id": user, "username": user.lower(), "team_id": TEAM},
                "container": {
                    "type": "message",
                    "message_ts": message_ts,
                    "channel_id": channel,
                    "is_ephemeral": False,
                },
                "channel": {"id": channel, "name": "it-support"},
                "message": {"type": "message", "ts": message_ts, "text": "ticket"},
                "response_url": self.url.replace("/slack/events", "/response"),
                "actions": [
                    {
                        "type": "button",
                        "action_id": action_id,
                        "block_id": "ticket_actions",
                        "value": value,
                        "text": {"type": "plain_text", "text": action_id},
                        "action_ts": f"{time.time():.6f}",
                    }
                ],
            },
            **kw,
        )

    def submit(
        self,
        callback_id: str,
        values: dict[str, dict[str, Any]],
        *,
        user: str = "U0ALICE",
        private_metadata: str = "",
        view_id: str | None = None,
        **kw: Any,
    ) -> Answer:
        return self.interaction(
            {
                "type": "view_submission",
                "user": {"id": user, "username": user.lower(), "team_id": TEAM},
                "view": {
                    "id": view_id or self._id("V"),
                    "type": "modal",
                    "callback_id": callback_id,
                    "private_metadata": private_metadata,
                    "hash": "1700000000.abc",
                    "state": {"values": values},
                    "team_id": TEAM,
                    "app_id": APP,
                },
            },
            **kw,
        )


def text_input(value: str) -> dict[str, Any]:
    return {"value": {"type": "plain_text_input", "value": value}}


def select(value: str) -> dict[str, Any]:
    return {
        "value": {
            "type": "static_select",
            "selected_option": {"text": {"type": "plain_text", "text": value}, "value": value},
        }
    }


def user_pick(user: str | None) -> dict[str, Any]:
    return {"value": {"type": "users_select", "selected_user": user}}


def users_pick(users: list[str]) -> dict[str, Any]:
    return {"value": {"type": "multi_users_select", "selected_users": users}}


@contextmanager
def fake_slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    try:
        yield fake
    finally:
        fake.stop()


# ---- the whole gateway with Slack -------------------------------------------------------------
@dataclass
class SlackGateway:
    """The demo installation with SMTP (``gw``), the Slack app on a free port (``client``
    sends it signed requests), the fake Web API (``fake``) and a delivery worker that
    delivers mail and Slack posts (``deliver``)."""

    gw: Any
    fake: FakeSlack
    runtime: Any
    client: SlackClient
    worker: Any

    @property
    def service(self) -> Any:
        return self.gw.env.app.service

    def deliver(self) -> int:
        return int(self.worker.run_once())

    def wait(self, method: str, n: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The recorded calls of ``method`` once there are at least ``n``."""
        from tests.conftest import poll_until

        poll_until(
            lambda: self.fake.count(method) >= n,
            timeout=timeout,
            what=f"{n} × {method} (have {self.fake.count(method)})",
        )
        return self.fake.of(method)

    def counter(self, name: str) -> int:
        return int(self.runtime.counters.snapshot().get(name, 0))


@contextmanager
def slack_gateway(
    db: Any, folder: Any, extra: dict[str, str] | None = None
) -> Iterator[SlackGateway]:
    from gateway.bootstrap import make_slack, make_worker
    from tests.conftest import demo_env, serving

    with fake_slack() as fake:
        env = {
            "TICKETGATE__SLACK__ENABLED": "true",
            "TICKETGATE__SLACK__API_URL": fake.url.rstrip("/"),  # normalised to end in "/"
            "TICKETGATE__SLACK__BOT_TOKEN": BOT_TOKEN,
            "TICKETGATE__SLACK__SIGNING_SECRET": SIGNING_SECRET,
            **(extra or {}),
        }
        with demo_env(db, folder, env) as e, serving(e) as gw:
            runtime = make_slack(e.app, port=0)
            runtime.start()
            try:
                url = f"http://127.0.0.1:{runtime.entry.port}/slack/events"
                worker = make_worker(e.app, {"slack": runtime.poster})
                yield SlackGateway(gw, fake, runtime, SlackClient(url, e.clock), worker)
            finally:
                runtime.stop()
