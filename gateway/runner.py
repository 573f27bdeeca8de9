"""`ticketgate run`: SMTP intake, outbox delivery and the health endpoint in one process."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

from gateway.bootstrap import App, build, make_intake
from gateway.config import Settings
from gateway.intake_writer import IntakeWriterProcess
from gateway.mail.delivery import MaildirTransport, SmtpRelayTransport, Transport
from gateway.mail.delivery_worker import DeliveryWorker
from gateway.mail.outbound import Renderer, templates_dir
from gateway.mail.parse import ParseLimits
from gateway.mail.smtp_server import IntakeHandler, SmtpIntakeServer
from gateway.mail.translate import TranslateContext
from gateway.service.group_commit import GroupCommitIntake
from gateway.service.intake import MailIntake
from gateway.service.outbox import OutboxService
from store import models as m
from store.db import read_session

log = logging.getLogger("ticketgate")


def make_transport(settings: Settings) -> Transport:
    o = settings.outbound
    if o.transport == "maildir":
        return MaildirTransport(Path(o.maildir))
    if o.transport == "smtp":
        return SmtpRelayTransport(
            host=o.relay_host,
            port=o.relay_port,
            starttls=o.starttls,
            username=o.username or None,
            password=o.password or None,
        )
    raise ValueError(f"outbound.transport: unknown transport {o.transport!r} (smtp or maildir)")


def make_handler(
    app: App,
    intake: MailIntake,
    *,
    writer_process: bool = False,
    loop: asyncio.AbstractEventLoop | None = None,
) -> IntakeHandler:
    """The SMTP handler; with `writer_process`, mails are written by a child process whose
    answers are read on `loop` (the SMTP server's event loop) when given."""
    s = app.settings.smtp
    front: GroupCommitIntake | IntakeWriterProcess = (
        IntakeWriterProcess(app.settings, intake, loop=loop)
        if writer_process
        else GroupCommitIntake(intake)
    )
    return IntakeHandler(
        front,
        ctx=TranslateContext(
            own_domains=frozenset({app.identity.domain}),
            loop_token=app.identity.loop_token,
            trusted_authserv_ids=app.settings.mail.trusted_authserv_ids,
        ),
        limits=ParseLimits(
            max_parts=s.max_parts,
            max_depth=s.max_depth,
            max_attachment_bytes=s.max_attachment_bytes,
            max_total_attachment_bytes=s.max_total_attachment_bytes,
        ),
        parse_processes=s.parse_processes,
        parse_inline_max_bytes=s.parse_inline_max_bytes,
    )


def make_worker(app: App) -> DeliveryWorker:
    o = app.settings.outbound
    outbox = OutboxService(
        app.sessions,
        clock=app.service.clock,
        identity=app.identity,
        tokens=app.tokens,
        auto_mail_per_day=app.service.options.auto_mail_per_day,
        auto_mail_per_ticket_hour=app.service.options.auto_mail_per_ticket_hour,
        max_attempts=o.max_attempts,
        backoff_seconds=o.backoff_seconds,
        backoff_max_seconds=o.backoff_max_seconds,
    )
    return DeliveryWorker(
        outbox,
        make_transport(app.settings),
        Renderer(templates_dir()),
        poll_seconds=o.poll_seconds,
    )


class _Health(BaseHTTPRequestHandler):
    app: App

    def do_GET(self) -> None:
        if self.path == "/healthz":
            try:
                with self.app.engine.connect() as c:
                    c.execute(text("select 1"))
                body, code = {"status": "ok"}, 200
            except Exception as e:  # noqa: BLE001 - health says what is wrong
                body, code = {"status": "storage unavailable", "error": str(e)}, 503
        elif self.path == "/metrics":
            with read_session(self.app.sessions) as s:
                rows = s.execute(
                    select(m.Outbox.state, func.count()).group_by(m.Outbox.state)
                ).all()
                events = s.execute(
                    select(m.OutboxEvent.state, func.count()).group_by(m.OutboxEvent.state)
                ).all()
                tickets = s.scalar(select(func.count()).select_from(m.Ticket))
            lines = [f"ticketgate_tickets_total {tickets}"]
            lines += [f'ticketgate_outbox{{state="{st}"}} {n}' for st, n in rows]
            lines += [f'ticketgate_outbox_events{{state="{st}"}} {n}' for st, n in events]
            data = ("\n".join(lines) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(data)
            return
        else:
            body, code = {"error": "not found"}, 404
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return


def run(settings: Settings) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # aiosmtpd logs every SMTP command line at INFO: a cost on the hot path and noise in the log.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    app = build(settings, need_secret=True)
    stop = threading.Event()
    started: list[Any] = []
    try:
        if settings.smtp.enabled:
            intake = make_intake(app)
            # One event loop for the SMTP sessions and the intake writer's answers.
            loop = asyncio.new_event_loop()
            server = SmtpIntakeServer(
                make_handler(app, intake, writer_process=settings.smtp.writer_process, loop=loop),
                host=settings.smtp.host,
                port=settings.smtp.port,
                max_message_bytes=settings.smtp.max_message_bytes,
                hostname=settings.smtp.hostname or app.identity.domain,
                loop=loop,
            )
            server.start()
            started.append(server)
            log.info("SMTP intake on %s:%s", settings.smtp.host, settings.smtp.port)
        # outbound.workers = 0: another gateway process delivers (SPEC §7: they share the
        # outbox through FOR UPDATE SKIP LOCKED); this one only takes mail in.
        for i in range(settings.outbound.workers):
            worker = make_worker(app)
            worker.start(name=f"delivery-{i}")
            started.append(worker)
        if not settings.outbound.workers:
            log.info("outbound delivery: none in this process (outbound.workers = 0)")
        if settings.http.enabled:
            handler = type("Health", (_Health,), {"app": app})
            httpd = ThreadingHTTPServer((settings.http.host, settings.http.port), handler)
            threading.Thread(target=httpd.serve_forever, name="http", daemon=True).start()
            started.append(httpd)
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        log.info("ticketgate running")
        stop.wait()
        log.info("stopping")
    finally:
        for svc in reversed(started):
            if isinstance(svc, ThreadingHTTPServer):
                svc.shutdown()
            else:
                svc.stop()
        app.close()
    return 0
