"""The intake runner: its sole purpose is to take queued mail in arrival order and have its fate decided.

A Mailman-style runner: it reads a batch of queued mails, parses each (pure: bytes → command),
and hands the batch to the service, which claims the mails still queued, applies each one and
sets its outcome in one transaction. A mail whose parsing raises is quarantined with the error;
one whose processing raises is retried, then quarantined (the service counts the attempts).
Storage errors leave the mails queued: the runner says so once, and tries again.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from multiprocessing.synchronize import Event as ProcessEvent

from gateway.domain.lifecycle import Channel
from gateway.mail.parse import ParseLimits
from gateway.mail.translate import TranslateContext, parse_and_translate
from gateway.service.commands import ParsedMail, QueuedMail
from gateway.service.intake import MailIntake
from gateway.service.storage_state import StorageState
from gateway.shared_counters import SharedCounters

log = logging.getLogger("ticketgate.intake")

# A batch holds its mails' raw bytes and parsed attachments until it is applied: it takes no
# more mails once their raw bytes would pass this (a mail bigger than it is a batch of its
# own), so a backlog of large mails is not held `batch_size` at a time (issue 12).
BATCH_BYTES = 16 * 1024 * 1024


# What becomes of a mail that leaves the queue (IntakeResult.outcome; "deferred" and
# "queued" stay in it): the runner counts them, by outcome.
OUTCOMES = ("ticket", "message", "quarantined", "refused")


def outcome_counts() -> SharedCounters:
    """Counters of the mails that left the queue, by outcome, for every runner of `run`."""
    return SharedCounters(OUTCOMES)


class IntakeRunner:
    """Claims queued mail, parses it and has the service apply it; `run_once` for one batch."""

    def __init__(
        self,
        intake: MailIntake,
        *,
        ctx: TranslateContext,
        limits: ParseLimits,
        batch_size: int = 32,
        batch_bytes: int = BATCH_BYTES,
        poll_seconds: float = 0.5,
        retry_seconds: float = 1.0,
        queue_slice: tuple[int, int] = (0, 1),
        wake_on: threading.Event | ProcessEvent | None = None,
        counts: SharedCounters | None = None,
    ) -> None:
        self.intake = intake
        self.ctx = ctx
        self.limits = limits
        self.batch_size = batch_size
        self.batch_bytes = batch_bytes
        self.poll_seconds = poll_seconds
        self.retry_seconds = retry_seconds
        # (i, n): this runner takes the queued mails whose id is i modulo n, so that n
        # runners parse different mails (the service's claim keeps each mail applied once).
        self.queue_slice = queue_slice
        # Mails that left the queue, by outcome (shared by `run`'s runners, whichever process).
        self.counts = counts if counts is not None else outcome_counts()
        # ``wake_on``, `run`'s doorbell (a multiprocessing Event), is set when an edge in any
        # of its processes queued mail. Idle, the runner waits on it at most a poll; `stop`
        # sets it too.
        self._wake = wake_on if wake_on is not None else threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.storage = StorageState(log, "intake runner", meanwhile="mail stays queued")

    def parse(self, mail: QueuedMail) -> ParsedMail:
        """Bytes and envelope → the service's command; a parser failure is kept as the error."""
        ctx = self.ctx if mail.channel is Channel.EMAIL else replace(self.ctx, channel=mail.channel)
        try:
            cmd = parse_and_translate(
                mail.raw, mail.envelope_from, mail.envelope_rcpts, self.limits, ctx
            )
        except Exception as e:
            log.error("queued mail %d could not be parsed", mail.record_id, exc_info=e)
            return ParsedMail(mail, None, f"{type(e).__name__}: {e}")
        return ParsedMail(mail, cmd)

    def run_once(self) -> int:
        """Process one batch of queued mail; returns how many mails left the queue."""
        mails = self.intake.waiting(
            self.batch_size, max_bytes=self.batch_bytes, queue_slice=self.queue_slice
        )
        if not mails:
            return 0
        results = self.intake.process([self.parse(q) for q in mails])
        done = 0
        for record_id, result in results:
            if result.outcome in ("deferred", "queued"):
                log.debug("queued mail %d: %s", record_id, result.rule)
                continue
            done += 1
            self.counts.add(result.outcome)
            ref = f" {result.ticket_ref}" if result.ticket_ref else ""
            log.info("mail %d: %s%s (%s)", record_id, result.outcome, ref, result.rule)
        return done

    def run_until_idle(self) -> int:
        """Process batches until nothing more can be processed now (tests, `ticketgate`
        commands); returns how many mails left the queue."""
        total = 0
        while True:
            n = self.run_once()
            if not n:
                return total
            total += n

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                handled = self.run_once()
            except Exception as e:  # noqa: BLE001 - the loop must outlive any one failure
                self.storage.failed(e)
                self._stop.wait(self.retry_seconds)
                continue
            self.storage.succeeded()
            if not handled:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()

    def start(self, name: str = "intake-runner") -> None:
        index, slices = self.queue_slice
        if slices > 1:
            log.info("%s: takes the queued mails whose id is %d modulo %d", name, index, slices)
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
