"""The body of a child process of `ticketgate run`: an intake runner or a delivery worker.

Its own module, importing only what such a child needs, so that a spawned child does not import
the SMTP edge, IMAP, APScheduler and Slack's listeners that `gateway.runner` needs for `run`."""

from __future__ import annotations

import logging
import os
import signal
import threading
from multiprocessing.synchronize import Event as EventType
from typing import TYPE_CHECKING

from gateway.bootstrap import Doorbells, build, make_runner, make_slack_poster, make_worker
from gateway.config import Settings
from gateway.shared_counters import SharedCounters
from gateway.slack.metrics import SlackCounters

if TYPE_CHECKING:
    from gateway.mail.delivery_worker import DeliveryWorker
    from gateway.runners.intake import IntakeRunner

log = logging.getLogger("ticketgate")


def runner_process_main(
    settings: Settings,
    role: str = "intake",
    queue_slice: tuple[int, int] = (0, 1),
    ready: EventType | None = None,
    doorbells: Doorbells | None = None,
    counts: SharedCounters | None = None,
) -> None:
    """A runner process: its own App on the same database, the loop of ``role`` (the intake
    runner, over its ``queue_slice``, or a delivery worker), until SIGTERM; ``ready`` is set
    once the loop runs; ``doorbells`` are `run`'s (bootstrap.Doorbells), ``counts`` its
    counters for /metrics (the runner's outcomes, or the worker's Slack posts)."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = build(settings, doorbells=doorbells)
    runner: IntakeRunner | DeliveryWorker
    if role == "delivery":
        slack = (
            {"slack": make_slack_poster(app, counters=SlackCounters(counts))}
            if settings.slack.enabled
            else {}
        )
        runner = make_worker(app, slack)
    else:
        runner = make_runner(app, queue_slice, counts)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
    runner.start()
    if ready is not None:
        ready.set()
    parent = os.getppid()
    # Killed with its parent's process group, or on its own: a runner whose `run` is gone
    # (kill -9 of the parent alone) stops too instead of working on beside the next `run`.
    while not stop.wait(1.0):
        if os.getppid() != parent:
            log.warning("the `run` process is gone; this %s process stops", role)
            break
    runner.stop()
    app.close()
