"""`ticketgate run`: the SMTP edge, the intake runner, outbox delivery and the status endpoint in one process."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from collections import Counter
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from gateway.bootstrap import App, build, make_inbound, make_intake
from gateway.config import Settings
from gateway.http_status import StatusServer
from gateway.mail.delivery import MaildirTransport, SmtpRelayTransport, Transport
from gateway.mail.delivery_worker import DeliveryWorker
from gateway.mail.outbound import Renderer, templates_dir
from gateway.mail.parse import ParseLimits
from gateway.mail.smtp_server import EdgeHandler, EdgePolicy, QueueWriter, SmtpEdgeServer
from gateway.mail.translate import TranslateContext
from gateway.runners.intake import IntakeRunner
from gateway.service.outbox import OutboxService
from gateway.service.status import StatusService

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


def translate_context(app: App) -> TranslateContext:
    return TranslateContext(
        own_domains=frozenset({app.identity.domain}),
        loop_token=app.identity.loop_token,
        trusted_authserv_ids=app.settings.mail.trusted_authserv_ids,
    )


def parse_limits(settings: Settings) -> ParseLimits:
    s = settings.smtp
    return ParseLimits(
        max_parts=s.max_parts,
        max_depth=s.max_depth,
        max_attachment_bytes=s.max_attachment_bytes,
        max_total_attachment_bytes=s.max_total_attachment_bytes,
    )


def make_runner(app: App) -> IntakeRunner:
    """The intake runner over `app`'s inbound queue."""
    i = app.settings.intake
    return IntakeRunner(
        make_intake(app),
        ctx=translate_context(app),
        limits=parse_limits(app.settings),
        batch_size=i.batch_size,
        poll_seconds=i.poll_seconds,
    )


def make_edge(app: App, *, on_queued: Callable[[], None] = lambda: None) -> EdgeHandler:
    """The SMTP edge's handler; `on_queued` runs after each commit of queued mail (it wakes
    the intake runner)."""
    inbound = make_inbound(app)
    return EdgeHandler(
        inbound,
        QueueWriter(inbound.enqueue, on_committed=on_queued),
        ctx=translate_context(app),
        limits=parse_limits(app.settings),
        policy=EdgePolicy(
            refuse_dmarc_fail=app.settings.mail.refuse_dmarc_fail,
            max_recipients=app.settings.smtp.max_recipients,
        ),
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
        notices_per_sender_hour=app.settings.mail.notices_per_sender_hour,
        max_attempts=o.max_attempts,
        backoff_seconds=o.backoff_seconds,
        backoff_max_seconds=o.backoff_max_seconds,
        on_storage_error=app.engine.dispose,
    )
    return DeliveryWorker(
        outbox,
        make_transport(app.settings),
        Renderer(templates_dir()),
        poll_seconds=o.poll_seconds,
    )


def _runner_process_main(settings: Settings) -> None:
    """A runner process: its own App on the same database, the intake runner's loop, until
    SIGTERM."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = build(settings)
    runner = make_runner(app)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    runner.start()
    parent = os.getppid()
    # Killed with its parent's process group, or on its own: a runner whose `run` is gone
    # (kill -9 of the parent alone) stops too instead of working on beside the next `run`.
    while not stop.wait(1.0):
        if os.getppid() != parent:
            log.warning("the `run` process is gone; this intake runner stops")
            break
    runner.stop()
    app.close()


class RunnerProcess:
    """An intake runner in a child process (spawned: this process has threads and open
    connections a fork would copy), started again by a watcher thread if it dies. The queue is
    the hand-off: nothing passes between the two processes."""

    def __init__(self, settings: Settings, *, name: str) -> None:
        self.settings = settings
        self.name = name
        self._mp = multiprocessing.get_context("spawn")
        self._proc: BaseProcess | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def _spawn(self) -> None:
        self._proc = self._mp.Process(
            target=_runner_process_main, args=(self.settings,), name=self.name, daemon=True
        )
        self._proc.start()
        log.info("%s: started (pid %s)", self.name, self._proc.pid)

    def start(self) -> None:
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name=f"{self.name}-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            proc = self._proc
            assert proc is not None
            proc.join(0.5)
            if proc.exitcode is not None and not self._stop.is_set():
                log.error(
                    "%s: pid %s exited (%s); starting a new one", self.name, proc.pid, proc.exitcode
                )
                self._stop.wait(1.0)  # not a restart loop per millisecond if it dies at once
                if not self._stop.is_set():
                    self._spawn()

    def stop(self) -> None:
        self._stop.set()
        if self._proc is not None and self._proc.exitcode is None:
            self._proc.terminate()
            self._proc.join(30)
        if self._watcher is not None:
            self._watcher.join(5)


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
        # intake.runners = 0: another gateway process processes the queue (SPEC §7).
        runners: list[IntakeRunner] = []
        for i in range(settings.intake.runners):
            if settings.intake.processes:
                child = RunnerProcess(settings, name=f"intake-runner-{i}")
                child.start()
                started.append(child)
            else:
                runner = make_runner(app)
                runner.start(name=f"intake-runner-{i}")
                started.append(runner)
                runners.append(runner)

        def wake_runners() -> None:
            for r in runners:
                r.wake()

        if settings.smtp.enabled:
            server = SmtpEdgeServer(
                make_edge(app, on_queued=wake_runners),
                host=settings.smtp.host,
                port=settings.smtp.port,
                max_message_bytes=settings.smtp.max_message_bytes,
                hostname=settings.smtp.hostname or app.identity.domain,
                max_sessions=settings.smtp.max_sessions,
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
            status = StatusServer(
                StatusService(app.sessions),
                host=settings.http.host,
                port=settings.http.port,
                counters=lambda: {
                    f'ticketgate_intake_processed_total{{outcome="{k}"}}': n
                    for k, n in sum((r.counts for r in runners), Counter()).items()
                },
            )
            status.start()
            started.append(status)
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        log.info("ticketgate running")
        stop.wait()
        log.info("stopping")
    finally:
        for svc in reversed(started):
            svc.stop()
        app.close()
    return 0
