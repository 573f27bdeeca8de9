"""Group commit for mail intake: concurrent mails share one transaction and one fsync.

Each SMTP session hands its command to a single writer thread and waits. The writer takes
what is queued (up to about 40 ms of work at its recent pace), applies the mails in one
transaction, commits once, and only then answers every waiting session. If a mail raises,
that transaction is rolled back and the batch applied again with a SAVEPOINT per mail, so one
failing mail never spoils the others (it is retried alone). A session is answered 250 only
after its own data is durable; a failed commit answers every mail of the batch with the error
(the SMTP layer turns storage errors into 451).

Why: with one transaction per mail, SQLite writers queue on the database lock (its busy handler
sleeps, which showed up as a p99 of 1.5 s) and every mail pays its own fsync.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError

from gateway.service.commands import FailedMail, IntakeResult, ReceiveMail
from gateway.service.directory import DirectoryCache
from gateway.service.intake import MailIntake
from store.db import is_storage_error

log = logging.getLogger("ticketgate.intake")

_STOP = object()


def answer(
    fut: Future[IntakeResult],
    result: IntakeResult | None = None,
    *,
    error: BaseException | None = None,
) -> None:
    """Resolve a waiting session's future, unless the session gave up on it: a client that
    hangs up right after its "." cancels the wait (aiosmtpd drops the session), and setting
    a cancelled future raises, which must not end the writer. The mail is written either
    way; the MTA's retry is then a duplicate."""
    try:
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:
        pass  # the session gave up: nobody is left to answer


class _MailFailed(Exception):
    """A mail raised while its batch was written together: the batch is rolled back."""


class GroupCommitIntake:
    """Same interface as `MailIntake.receive`, batched through one writer thread."""

    def __init__(
        self,
        intake: MailIntake,
        *,
        max_batch: int = 64,
        max_batch_ms: float = 40.0,
        thread: bool = True,
    ) -> None:
        self.intake = intake
        self.max_batch = max_batch
        # A batch holds about this much work. Every session of a batch is answered at once,
        # and with no cap all sessions came back at once too, the writer idle in between
        # (8 sessions in lockstep): a smaller batch keeps the others' mails coming while this
        # one is written, and bounds how long a session waits for other sessions' mails.
        # 10 ms was too little on a slow machine (5 ms a mail: batches of two, each paying
        # its commit): 40 ms wrote 20 % more mails a second there, with a lower p99.
        self.max_batch_seconds = max_batch_ms / 1000
        self._per_mail = 0.001  # seconds per mail, a moving average of the batches written
        # Organization rows kept from batch to batch (the writer thread's own).
        self._directory = DirectoryCache()
        self._q: queue.Queue[object] = queue.Queue()
        # Without a thread of its own (the intake writer process), the caller takes batches
        # itself and hands them to `write`, and `submit` is not used.
        self._thread: threading.Thread | None = None
        if thread:
            self._thread = threading.Thread(target=self._run, name="intake-writer", daemon=True)
            self._thread.start()

    def known_recipient(self, addr: str) -> str | None:
        return self.intake.known_recipient(addr)

    def remembered_recipient(self, addr: str) -> str | None:
        return self.intake.remembered_recipient(addr)

    def quarantine_failed(self, failed: FailedMail) -> IntakeResult:
        # Rare, and after a failure: its own transaction, outside the batches.
        return self.intake.quarantine_failed(failed)

    def receive(self, cmd: ReceiveMail) -> IntakeResult:
        return self.submit(cmd).result()

    def submit(self, cmd: ReceiveMail) -> Future[IntakeResult]:
        """Queue one mail; the future is resolved after the commit of its batch."""
        fut: Future[IntakeResult] = Future()
        self._q.put((cmd, fut))
        return fut

    def close(self) -> None:
        if self._thread is not None:
            self._q.put(_STOP)
            self._thread.join(timeout=30)

    def batch_cap(self) -> int:
        """How many mails the next batch may hold: the time budget at the recent pace."""
        return max(1, min(self.max_batch, int(self.max_batch_seconds / self._per_mail)))

    def _take_batch(self) -> tuple[list[tuple[ReceiveMail, Future[IntakeResult]]], bool]:
        """The next batch: the oldest mail and what else is waiting, up to the size that the
        time budget allows at the writer's recent pace (at least one mail)."""
        first = self._q.get()
        if first is _STOP:
            return [], True
        cap = self.batch_cap()
        batch = [first]
        stop = False
        while len(batch) < cap:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            batch.append(item)
        return batch, stop  # type: ignore[return-value]

    def _run(self) -> None:
        while True:
            batch, stop = self._take_batch()
            if batch:
                self.write(batch)
            if stop:
                return

    def write(self, batch: list[tuple[ReceiveMail, Future[IntakeResult]]]) -> None:
        """Write ``batch`` and answer each mail's future after the commit; keeps the pace."""
        started = time.monotonic()
        self._apply(batch)
        per_mail = (time.monotonic() - started) / len(batch)
        self._per_mail = 0.8 * self._per_mail + 0.2 * per_mail

    def _apply(self, batch: list[tuple[ReceiveMail, Future[IntakeResult]]]) -> None:
        """Write ``batch`` in one transaction; answer each mail only after the commit.

        First without SAVEPOINTs: two statements and the ORM's bookkeeping per mail were a
        fifth of the writer's time (benchmarks/intake_writer.py: 1.6 → 1.3 ms a mail). If a
        mail raises, that whole transaction is rolled back, and the batch is written again
        with a SAVEPOINT per mail so that only the failing mail is set aside."""
        try:
            results = self._apply_together(batch)
        except _MailFailed:
            self._apply_each(batch)
            return
        except Exception as e:  # noqa: BLE001 - storage trouble or the commit failed
            for _, fut in batch:
                answer(fut, error=e)
            return
        for (_, fut), res in zip(batch, results, strict=True):
            answer(fut, res)

    def _apply_together(
        self, batch: list[tuple[ReceiveMail, Future[IntakeResult]]]
    ) -> list[IntakeResult]:
        results: list[IntakeResult] = []
        with self.intake.svc.unit(self._directory) as u:
            for cmd, _ in batch:
                try:
                    results.append(self.intake.apply(u, cmd))
                except Exception as e:
                    if is_storage_error(e):
                        raise  # every mail of the batch gets it (451): none is durable
                    log.debug("mail %s failed in its batch", cmd.message_id, exc_info=True)
                    raise _MailFailed from e
        return results

    def _apply_each(self, batch: list[tuple[ReceiveMail, Future[IntakeResult]]]) -> None:
        """The batch again, each mail in its SAVEPOINT; a failing one is retried alone."""
        done: list[tuple[Future[IntakeResult], IntakeResult]] = []
        retry_alone: list[tuple[ReceiveMail, Future[IntakeResult]]] = []
        try:
            with self.intake.svc.unit(self._directory) as u:
                for cmd, fut in batch:
                    try:
                        with u.s.begin_nested():
                            done.append((fut, self.intake.apply(u, cmd)))
                    except Exception:
                        log.debug(
                            "mail %s retried outside the batch", cmd.message_id, exc_info=True
                        )
                        # Its SAVEPOINT was rolled back: copies or history the unit cached
                        # while applying it are gone from the database, so from the caches.
                        u.forget_cached()
                        retry_alone.append((cmd, fut))
        except Exception as e:  # noqa: BLE001 - the commit failed: nobody's data is durable
            for _, fut in batch:
                if not fut.done():
                    answer(fut, error=e)
            return
        for fut, res in done:
            answer(fut, res)
        # A mail that failed inside the batch gets its own transaction: a dedupe race or a
        # real error then surfaces with the ordinary handling (duplicate, 451, …).
        for cmd, fut in retry_alone:
            try:
                answer(fut, self.intake.receive(cmd))
            except Exception as e:  # noqa: BLE001 - handed to the waiting SMTP session
                answer(fut, error=e)
