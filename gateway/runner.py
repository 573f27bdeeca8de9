"""`ticketgate run`: the SMTP edge, the intake runner, outbox delivery and the status endpoint in one process."""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from collections.abc import Mapping
from multiprocessing.process import BaseProcess
from typing import Any

from gateway.bootstrap import (
    App,
    Doorbells,
    SlackRuntime,
    build,
    delivery_processes,
    make_doorbells,
    make_imap_watchers,
    make_runner,
    make_slack,
    make_smtp_server,
    make_ticker,
    make_worker,
    smtp_tls_context,
)
from gateway.config import Settings
from gateway.http_status import StatusServer
from gateway.mail.delivery_worker import DeliveryWorker
from gateway.runners.imap import MailboxWatcher
from gateway.runners.intake import IntakeRunner, outcome_counts
from gateway.runners.process import runner_process_main
from gateway.service.outbox import ChannelSender
from gateway.service.status import StatusService, prometheus_label
from gateway.shared_counters import SharedCounters
from gateway.slack.metrics import post_counters

log = logging.getLogger("ticketgate")

# How long `run` waits for its intake runner processes to start before it opens intake.
RUNNER_READY_SECONDS = 30


class RunnerProcess:
    """An intake runner or a delivery worker (``role``) in a child process (spawned: this
    process has threads and open connections a fork would copy), started again by a watcher
    thread if it dies (a crash or a kill; not when SIGTERM stopped it).
    The queue or the outbox is the hand-off: nothing passes between the processes."""

    def __init__(
        self,
        settings: Settings,
        *,
        name: str,
        role: str = "intake",
        queue_slice: tuple[int, int] = (0, 1),
        doorbells: Doorbells | None = None,
        counts: SharedCounters | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self.role = role
        self.queue_slice = queue_slice
        self.doorbells = doorbells
        self.counts = counts
        self._mp = multiprocessing.get_context("spawn")
        self._proc: BaseProcess | None = None
        self._ready = self._mp.Event()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def _spawn(self) -> None:
        self._proc = self._mp.Process(
            target=runner_process_main,
            args=(
                self.settings,
                self.role,
                self.queue_slice,
                self._ready,
                self.doorbells,
                self.counts,
            ),
            name=self.name,
            daemon=True,
        )
        self._proc.start()
        log.info("%s: started (pid %s)", self.name, self._proc.pid)

    def start(self) -> None:
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name=f"{self.name}-watch", daemon=True)
        self._watcher.start()

    def wait_ready(self, timeout: float) -> bool:
        """Whether the first process got its loop running within ``timeout`` seconds (a
        spawned interpreter imports the gateway first: about a second)."""
        return self._ready.wait(timeout)

    def _watch(self) -> None:
        while not self._stop.is_set():
            proc = self._proc
            assert proc is not None
            proc.join(0.5)
            if proc.exitcode in (0, -signal.SIGTERM) and not self._stop.is_set():
                # A stop on request (SIGTERM to the process group while `run` shuts down: a
                # clean exit, or death by the signal before the handler was set; or its `run`
                # gone): not a crash to restart from.
                log.info("%s: pid %s stopped", self.name, proc.pid)
                return
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


def imap_counters(watchers: list[MailboxWatcher]) -> dict[str, int]:
    """Per mailbox: messages by what became of them, reconnects, and whether it is connected."""
    out: dict[str, int] = {}
    for w in watchers:
        name = prometheus_label(w.box.name)
        for event, n in sorted(w.counts.items()):
            out[f'ticketgate_imap_events_total{{mailbox="{name}",event="{event}"}}'] = n
        out[f'ticketgate_imap_connected{{mailbox="{name}"}}'] = int(w.state == "connected")
    return out


def _start_loop(
    settings: Settings,
    app: App,
    role: str,
    name: str,
    in_child: bool,
    started: list[Any],
    senders: Mapping[str, ChannelSender] | None = None,
    queue_slice: tuple[int, int] = (0, 1),
    counts: SharedCounters | None = None,
) -> IntakeRunner | DeliveryWorker | None:
    """Start the intake runner (over ``queue_slice``, counting in ``counts``) or a delivery
    worker (``role``, with the other channels' ``senders``; a child counts its Slack posts in
    ``counts``): in a child process of its own (which makes its own senders), or as a thread
    of this one (returned); either way added to ``started``."""
    if in_child:
        child = RunnerProcess(
            settings,
            name=name,
            role=role,
            queue_slice=queue_slice,
            doorbells=app.doorbells,
            counts=counts,
        )
        child.start()
        started.append(child)
        return None
    loop: IntakeRunner | DeliveryWorker = (
        make_worker(app, senders) if role == "delivery" else make_runner(app, queue_slice, counts)
    )
    loop.start(name=name)
    started.append(loop)
    return loop


def run(settings: Settings) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # aiosmtpd logs every SMTP command line at INFO: a cost on the hot path and noise in the log.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    # imapclient logs every connection it closes at INFO; the watchers say what matters.
    logging.getLogger("imapclient").setLevel(logging.WARNING)
    # Edges ring `queued` after each commit, runners ring `outbox` after recording notification
    # events: the next one along starts at once, in this process or in a child.
    doorbells = make_doorbells()
    app = build(settings, need_secret=True, doorbells=doorbells)
    if settings.smtp.enabled:
        smtp_tls_context(settings)  # a certificate that does not load stops `run` here
    stop = threading.Event()
    # Before anything starts: a SIGTERM while `run` is still starting (the SMTP port may
    # already be open) stops it cleanly once everything is up, instead of killing it.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    started: list[Any] = []
    try:
        # intake.runners = 0: another gateway process processes the queue (SPEC §7). With
        # several, runner i takes the queued mails whose id is i modulo their number. They
        # count what leaves the queue in shared memory, threads or child processes alike.
        intake_counts = outcome_counts()
        n = settings.intake.runners
        for i in range(n):
            _start_loop(
                settings,
                app,
                "intake",
                f"intake-runner-{i}",
                settings.intake.processes,
                started,
                queue_slice=(i, n),
                counts=intake_counts,
            )

        # The SMTP port opens once the runner processes work: mail accepted meanwhile would
        # only wait in the queue while they import the gateway (about a second each).
        for child in [c for c in started if isinstance(c, RunnerProcess)]:
            if child.wait_ready(RUNNER_READY_SECONDS):
                log.info("%s: running", child.name)
            else:
                log.warning(
                    "%s: not running after %d s; intake opens anyway (mail waits in the queue)",
                    child.name,
                    RUNNER_READY_SECONDS,
                )

        wake_runners = doorbells.queued.set
        if settings.smtp.enabled:
            server = make_smtp_server(app, on_queued=wake_runners)
            server.start()
            started.append(server)
            tls = (
                ("; STARTTLS required" if settings.smtp.require_starttls else "; STARTTLS offered")
                if settings.smtp.tls_cert_file
                else ""
            )
            log.info("SMTP intake on %s:%s%s", settings.smtp.host, settings.smtp.port, tls)
        slack: SlackRuntime | None = None
        posts = post_counters()  # the Slack posts of every delivery worker, thread or child
        if settings.slack.enabled:
            slack = make_slack(app, posts=posts)
            slack.start()
            started.append(slack)
            mode = (
                "Socket Mode"
                if settings.slack.socket_mode
                else (f"HTTP on {settings.slack.host}:{settings.slack.port}/slack/events")
            )
            log.info("Slack: %s", mode)
        senders = {"slack": slack.poster} if slack is not None else {}
        # One watcher per mailbox, each on its own thread: a mailbox that fails (a server
        # down, a wrong password) backs off alone; the others and SMTP go on.
        watchers = make_imap_watchers(app, on_queued=wake_runners) if settings.imap.enabled else []
        for watcher in watchers:
            watcher.start()
            started.append(watcher)
        if watchers:
            log.info("IMAP intake: %d mailbox(es)", len(watchers))
        # outbound.workers = 0: another gateway process delivers (SPEC §7: they share the
        # outbox through FOR UPDATE SKIP LOCKED); this one only takes mail in.
        # Delivery workers as processes (rendering is CPU) when configured, and always for
        # several of them on PostgreSQL; threads of this process otherwise.
        for i in range(settings.outbound.workers):
            in_child = delivery_processes(settings)
            _start_loop(
                settings, app, "delivery", f"delivery-{i}", in_child, started, senders, counts=posts
            )
        if not settings.outbound.workers:
            log.info("outbound delivery: none in this process (outbound.workers = 0)")
        ticker = None
        if settings.scheduler.enabled:
            ticker = make_ticker(app)
            ticker.start()
            started.append(ticker)

        def counters() -> dict[str, int]:
            return {
                **{
                    f'ticketgate_intake_processed_total{{outcome="{k}"}}': n
                    for k, n in intake_counts.snapshot().items()
                },
                **(slack.counters.snapshot() if slack is not None else {}),
                **imap_counters(watchers),
                **(ticker.counters() if ticker is not None else {}),
            }

        if settings.http.enabled:
            status = StatusServer(
                StatusService(app.sessions),
                host=settings.http.host,
                port=settings.http.port,
                counters=counters,
            )
            status.start()
            started.append(status)
        log.info("ticketgate running")
        stop.wait()
        log.info("stopping")
    finally:
        for svc in reversed(started):
            svc.stop()
        app.close()
    return 0
