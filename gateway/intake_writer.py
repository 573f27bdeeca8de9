"""The intake writer in a process of its own: SMTP sessions and database work share no GIL.

Why (py-spy and per-thread CPU from /proc, 2026-11-26, 8 SMTP sessions on SQLite): inside
`ticketgate run` the group-commit writer thread used 3.5 ms of CPU per mail, against 1.7 ms for
the same writer alone (`benchmarks/intake_writer.py`); the difference went to passing the
interpreter lock back and forth with the event loop and the executor threads, and the process
was pinned at one core while the other was half idle.

The child builds its own App from the same Settings and writes with `GroupCommitIntake`; the parent
sends it each parsed mail over a pipe and waits for the answer. Durability is unchanged: the
child answers a mail only after the commit of its batch. If the child dies, every mail waiting
on it is answered 451 (committed or not, the MTA's retry is then a duplicate or stored once)
and the next mail starts a new writer. Recipient checks (reads) and the quarantine of mails
that could not even be parsed stay in the parent.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import queue
import signal
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from gateway.bootstrap import build, make_intake
from gateway.config import Settings
from gateway.service.commands import FailedMail, IntakeResult, ReceiveMail
from gateway.service.group_commit import GroupCommitIntake, answer
from gateway.service.intake import MailIntake
from store.db import StorageUnavailable, is_storage_error

log = logging.getLogger("ticketgate.intake")

_READY = "ready"


@dataclass
class _Link:
    """One child process and the mails waiting for its answers."""

    conn: Connection
    proc: BaseProcess
    alive: bool = True
    # A session on the event loop waits on an asyncio future, anyone else on a concurrent one.
    pending: dict[int, Future[IntakeResult] | asyncio.Future[IntakeResult]] = field(
        default_factory=dict
    )


class IntakeWriterProcess:
    """The SMTP handler's `Intake`, with `receive` done by a child process."""

    def __init__(
        self,
        settings: Settings,
        local: MailIntake,
        *,
        start_timeout: float = 60.0,
        loop: asyncio.AbstractEventLoop | None = None,
    ):
        self.settings = settings
        self.local = local
        self.start_timeout = start_timeout
        # The SMTP server's event loop, when given: the writer's answers are read there
        # (`add_reader`) and resolve the sessions' futures directly. A reader thread instead
        # woke the loop once per mail and passed the interpreter lock back and forth with it.
        self._loop = loop
        # spawn: this process has threads and open database connections a fork would copy.
        self._mp = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closed = False
        self._link: _Link | None = None
        self._start()

    def known_recipient(self, addr: str) -> str | None:
        return self.local.known_recipient(addr)

    def remembered_recipient(self, addr: str) -> str | None:
        return self.local.remembered_recipient(addr)

    def quarantine_failed(self, failed: FailedMail) -> IntakeResult:
        # A mail that could not be parsed: rare, its own transaction, from this process.
        return self.local.quarantine_failed(failed)

    def receive(self, cmd: ReceiveMail) -> IntakeResult:
        return self.submit(cmd).result()

    def submit(self, cmd: ReceiveMail) -> Future[IntakeResult]:
        """Hand one mail to the writer; the future holds its answer, after its batch's commit.
        Never waits for a writer to start: while there is none, the answer is a storage error
        (451), and the MTA retries."""
        fut: Future[IntakeResult] = Future()
        self._send(cmd, fut)
        return fut

    async def submit_async(self, cmd: ReceiveMail) -> IntakeResult:
        """`submit` for a session on the event loop: the answer, after its batch's commit. If
        the session is dropped meanwhile, the mail keeps its place in the batch."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            return await asyncio.wrap_future(self.submit(cmd))
        fut: asyncio.Future[IntakeResult] = loop.create_future()
        self._send(cmd, fut)
        return await fut

    def _send(
        self, cmd: ReceiveMail, fut: Future[IntakeResult] | asyncio.Future[IntakeResult]
    ) -> None:
        with self._lock:
            link = self._link
            if self._closed or link is None or not link.alive:
                fut.set_exception(StorageUnavailable("the intake writer is (re)starting"))
                return
            rid = next(self._ids)
            link.pending[rid] = fut
            try:
                link.conn.send((rid, cmd))
            except (OSError, ValueError) as e:
                link.pending.pop(rid, None)
                fut.set_exception(StorageUnavailable(f"intake writer unreachable: {e}"))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            link = self._link
        if link is None:
            return
        if link.alive:
            try:
                link.conn.send(None)  # applies what it holds, then exits
            except (OSError, ValueError):
                pass
        link.proc.join(30)
        if link.proc.is_alive():
            log.error("the intake writer did not stop in 30 s; killing it")
            link.proc.kill()
            link.proc.join(5)

    def _start(self) -> None:
        """Start a writer process and make it the one mails go to."""
        parent_end, child_end = self._mp.Pipe()
        proc = self._mp.Process(
            target=serve, args=(self.settings, child_end), name="ticketgate-intake-writer"
        )
        proc.start()
        child_end.close()
        ready: Any = None
        try:
            if parent_end.poll(self.start_timeout):
                ready = parent_end.recv()
        except (EOFError, OSError):
            ready = None
        if ready != (_READY,):
            proc.kill()
            proc.join(5)
            parent_end.close()
            raise StorageUnavailable(f"the intake writer did not start: {ready!r}")
        link = _Link(parent_end, proc)
        with self._lock:
            closed = self._closed
            if not closed:
                self._link = link
        if closed:  # `close` came while this one started
            parent_end.send(None)
            proc.join(30)
            return
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._watch, link)
        else:
            threading.Thread(
                target=self._read, args=(link,), name="intake-writer-answers", daemon=True
            ).start()
        log.info("intake writer started (pid %s)", proc.pid)

    def _watch(self, link: _Link) -> None:
        """On the event loop: read the writer's answers whenever its pipe is readable."""
        assert self._loop is not None
        try:
            self._loop.add_reader(link.conn.fileno(), self._readable, link)
        except (OSError, ValueError):  # the pipe is already closed: the writer is gone
            threading.Thread(target=self._lost, args=(link,), daemon=True).start()

    def _readable(self, link: _Link) -> None:
        """On the event loop: every answer waiting in the pipe; at its end, the writer died."""
        assert self._loop is not None
        try:
            while link.conn.poll():
                for rid, ok, payload in link.conn.recv():  # one batch's answers
                    self._resolve(link, rid, ok, payload)
        except (EOFError, OSError):
            self._loop.remove_reader(link.conn.fileno())
            # Joining the dead process and starting a new one block: not on the loop.
            threading.Thread(
                target=self._lost, args=(link,), name="intake-writer-restart", daemon=True
            ).start()

    def _read(self, link: _Link) -> None:
        """A thread reading the writer's answers (no event loop given)."""
        while True:
            try:
                answers = link.conn.recv()  # one batch's answers
            except (EOFError, OSError):
                break
            for rid, ok, payload in answers:
                self._resolve(link, rid, ok, payload)
        self._lost(link)

    def _resolve(self, link: _Link, rid: int, ok: bool, payload: Any) -> None:
        with self._lock:
            fut = link.pending.pop(rid, None)
        if fut is None:
            return
        if isinstance(fut, asyncio.Future):
            if not fut.done():  # else the session was dropped: nobody is left to answer
                if ok:
                    fut.set_result(payload)
                else:
                    fut.set_exception(StorageUnavailable(payload))
        elif ok:
            answer(fut, payload)
        else:
            answer(fut, error=StorageUnavailable(payload))

    def _lost(self, link: _Link) -> None:
        """The writer's pipe ended: everyone still waiting gets 451, and a new writer starts."""
        with self._lock:
            link.alive = False
            pending, link.pending = link.pending, {}
            closing = self._closed
        link.conn.close()
        link.proc.join(5)
        if pending or not closing:
            log.error(
                "the intake writer (pid %s) stopped with exit code %s; %d waiting mails get 451",
                link.proc.pid,
                link.proc.exitcode,
                len(pending),
            )
        for fut in pending.values():
            error = StorageUnavailable("the intake writer stopped before answering")
            if isinstance(fut, asyncio.Future):
                try:
                    fut.get_loop().call_soon_threadsafe(_fail, fut, error)
                except RuntimeError:
                    pass  # the loop is closed: its sessions are gone
            else:
                answer(fut, error=error)
        if not closing:
            self._restart()

    def _restart(self) -> None:
        """Start a new writer in place of a dead one; retried while it fails to start."""
        delay = 0.1
        while True:
            with self._lock:
                if self._closed:
                    return
            try:
                self._start()
            except StorageUnavailable:
                log.exception("could not start a new intake writer; trying again")
                time.sleep(delay)  # backoff between attempts to start a process
                delay = min(delay * 2, 5.0)
                continue
            return


def _fail(fut: asyncio.Future[IntakeResult], error: BaseException) -> None:
    if not fut.done():
        fut.set_exception(error)


# ---- the child -----------------------------------------------------------------------------
class _Stop(Exception):
    """SIGTERM while the child waits for mail."""


def serve(settings: Settings, conn: Connection) -> None:
    """The child's main: read the mails waiting on `conn`, write them as one group-commit batch,
    answer each after the commit, and again.

    One thread reads and writes: with a reader thread handing mails to a writer thread, the
    two passed the interpreter lock back and forth for every mail (py-spy, 2026-11-26). The
    answers of a batch go out through a sender thread (see below)."""
    # Ctrl-C reaches the whole process group: the parent stops us by closing the pipe.
    # SIGTERM while a batch is written lets it finish (and be answered) first.
    state = {"busy": False, "stop": False}

    def on_term(signum: int, frame: FrameType | None) -> None:
        state["stop"] = True
        if not state["busy"]:
            raise _Stop

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, on_term)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        app = build(settings, need_secret=True)
        intake = make_intake(app)
    except Exception as e:  # noqa: BLE001 - told to the parent, which answers 451
        conn.send(("failed", f"{type(e).__name__}: {e}"))
        return

    # Answers leave through a thread of their own. The parent sends mails from its event loop,
    # which is also where it reads answers: if this thread blocked on a full answer pipe while
    # the parent's loop blocked on a full mail pipe (a big mail), each would wait for the
    # other for ever. This thread only reads mails and writes batches, so it always drains
    # the mail pipe; the sender takes one list of answers per batch (no hand-off per mail)
    # and sends it as one message (one pickle and one write a batch, not one a mail).
    outbox: queue.SimpleQueue[list[tuple[int, bool, object]] | None] = queue.SimpleQueue()

    def send_answers() -> None:
        while (answers := outbox.get()) is not None:
            try:
                conn.send(answers)
            except (OSError, ValueError):
                pass  # the parent is gone; the MTA's retry will be a duplicate

    def quarantine(rid: int, cmd: ReceiveMail, error: BaseException) -> tuple[int, bool, object]:
        log.error("mail %s could not be processed; quarantined", cmd.message_id, exc_info=error)
        try:
            result = intake.quarantine_failed(
                FailedMail(cmd.raw, cmd.envelope_from, cmd.envelope_rcpts, error, cmd)
            )
        except Exception as e:
            if is_storage_error(e):
                return (rid, False, f"{type(e).__name__}: {e}")
            log.exception("could not quarantine mail %s", cmd.message_id)
            result = IntakeResult(
                "tempfail",
                f"processing error: {type(e).__name__}",
                code=451,
                text="4.3.0 Temporary processing failure, try again later",
            )
        return (rid, True, result)

    writer = GroupCommitIntake(intake, thread=False)
    sender = threading.Thread(target=send_answers, name="intake-writer-answers", daemon=True)
    sender.start()
    conn.send((_READY,))
    try:
        while not state["stop"]:
            try:
                item = conn.recv()  # the first mail of a batch: wait for it
            except (EOFError, OSError, _Stop):
                break  # the parent died or closed the pipe, or SIGTERM
            state["busy"] = True
            if item is None:
                break
            batch: list[tuple[int, ReceiveMail]] = [item]
            cap = writer.batch_cap()
            try:
                while len(batch) < cap and conn.poll():
                    item = conn.recv()
                    if item is None:
                        state["stop"] = True
                        break
                    batch.append(item)
            except (EOFError, OSError):
                state["stop"] = True  # write what was read; nobody may be left to answer
            futures: list[Future[IntakeResult]] = [Future() for _ in batch]
            writer.write([(cmd, fut) for (_, cmd), fut in zip(batch, futures, strict=True)])
            answers: list[tuple[int, bool, object]] = []
            for (rid, cmd), fut in zip(batch, futures, strict=True):
                error = fut.exception()
                if error is None:
                    answers.append((rid, True, fut.result()))
                elif is_storage_error(error):
                    answers.append((rid, False, f"{type(error).__name__}: {error}"))
                else:
                    answers.append(quarantine(rid, cmd, error))  # poison: kept, answered 250
            outbox.put(answers)
            state["busy"] = False
    finally:
        outbox.put(None)  # what is queued is still sent
        sender.join(30)
        app.close()
