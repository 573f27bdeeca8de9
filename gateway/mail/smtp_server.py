"""The aiosmtpd front door: check recipients early, hand DATA to the service, answer after commit."""

from __future__ import annotations

import asyncio
import enum
import logging
import multiprocessing
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import lru_cache
from types import SimpleNamespace
from typing import Protocol

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, Envelope, Session

from gateway.mail.parse import ParseLimits
from gateway.mail.translate import TranslateContext, parse_and_translate
from gateway.service.commands import FailedMail, IntakeResult, ReceiveMail
from store.db import is_storage_error

log = logging.getLogger("ticketgate.smtp")

TEMPFAIL = "451 4.3.0 Temporary failure: storage unavailable, try again later"


def _is_utf8(address: str) -> bool:
    """RFC 6531 allows UTF-8 addresses; raw bytes that are not UTF-8 are no address at all."""
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Intake(Protocol):
    """What the handler needs of the service. A batching intake also offers
    ``submit(cmd) -> concurrent.futures.Future[IntakeResult]`` or ``async submit_async(cmd)``,
    which the handler then awaits."""

    def known_recipient(self, addr: str) -> str | None: ...
    def receive(self, cmd: ReceiveMail) -> IntakeResult: ...
    def quarantine_failed(self, failed: FailedMail) -> IntakeResult: ...


def _answer(result: IntakeResult) -> IntakeResult:
    """The service's result with the SMTP reply text of an accepted mail."""
    if result.code != 250:
        return result
    ref = f" {result.ticket_ref}" if result.ticket_ref else ""
    return IntakeResult(
        result.outcome,
        result.rule,
        result.ticket_ref,
        250,
        f"2.0.0 OK: {result.outcome}{ref}",
        result.commands,
    )


class IntakeHandler:
    """aiosmtpd handler: translates only; the service decides.

    Blocking work (parsing, the database transaction) runs in a thread pool so that one slow
    commit never stalls the other SMTP sessions on the event loop."""

    def __init__(
        self,
        intake: Intake,
        *,
        ctx: TranslateContext,
        limits: ParseLimits,
        workers: int = 8,
        parse_processes: int = 0,
        parse_inline_max_bytes: int = 0,
    ) -> None:
        self.intake = intake
        self.ctx = ctx
        self.limits = limits
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="smtp-intake")
        self.parse_processes = parse_processes
        self.parse_inline_max_bytes = parse_inline_max_bytes
        self.parsers: Executor | None = self._new_parsers()

    def _new_parsers(self) -> Executor | None:
        # Parsing is pure CPU; in the writer's interpreter it competes for the GIL with the
        # database work (the profile: about a fifth of it). forkserver, not fork: this process
        # has threads and open database connections that a forked child must not inherit.
        if self.parse_processes <= 0:
            return None
        ctx = multiprocessing.get_context("forkserver")
        # The fork server imports the parser once; each parser process forks from it ready.
        ctx.set_forkserver_preload(["gateway.mail.translate"])
        return ProcessPoolExecutor(self.parse_processes, mp_context=ctx)

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        # aiosmtpd hands on bytes that are not UTF-8 as surrogates; no database can store them.
        if not _is_utf8(address) or len(address) > 256:  # RFC 5321 §4.5.3.1.3: path ≤ 256
            return "553 5.1.7 Bad sender mailbox address syntax"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if not _is_utf8(address):
            return "550 5.1.1 Bad destination mailbox address"
        # Most recipients are answered on the loop (a token, or an address seen recently);
        # only the others cost a database read in a pool thread.
        remembered = getattr(self.intake, "remembered_recipient", None)
        kind = remembered(address) if remembered is not None else None
        try:
            if kind is None:
                loop = asyncio.get_running_loop()
                kind = await loop.run_in_executor(self.pool, self.intake.known_recipient, address)
        except Exception as e:
            if is_storage_error(e):
                return TEMPFAIL
            log.exception("RCPT check failed for %r", address)
            return "451 4.3.0 Temporary failure, try again later"
        if kind is None:
            return "550 5.1.1 Bad destination mailbox address"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        loop = asyncio.get_running_loop()
        mail_from = envelope.mail_from or ""
        sender = "" if mail_from in ("<>", "") else mail_from
        rcpts = list(envelope.rcpt_tos)
        parsers = self.parsers
        try:
            if len(raw) <= self.parse_inline_max_bytes:
                # A small mail is parsed right here, on the event loop. Shipping it to a parser
                # process cost more than parsing it (pickling both ways, two hand-offs: about
                # 3 ms for 0.5 ms of parsing), and a pool thread cost the main process a
                # fifth of its CPU in hand-offs and GIL contention with the loop, which it
                # held meanwhile all the same (py-spy, 2026-12-01). Its worst case is bounded
                # by the size (hostile 32 KiB mails: under 150 ms, docs/DECISIONS.md).
                cmd = parse_and_translate(raw, sender, rcpts, self.limits, self.ctx)
            else:
                # Larger ones, where a long parse or a crash could hurt the SMTP sessions, go to
                # the parser processes (or, without any, to a pool thread).
                where: Executor = parsers if parsers is not None else self.pool
                cmd = await loop.run_in_executor(
                    where, parse_and_translate, raw, sender, rcpts, self.limits, self.ctx
                )
        except BrokenProcessPool:
            assert parsers is not None
            # A parser process died (killed, out of memory): nothing was stored; start new ones
            # and let the MTA retry.
            log.error("a parser process died; starting new ones")
            if self.parsers is parsers:
                self.parsers = self._new_parsers()
            parsers.shutdown(wait=False, cancel_futures=True)
            return "451 4.3.0 Temporary processing failure, try again later"
        except Exception as e:  # noqa: BLE001 - poison mail: quarantined, not lost
            result = await loop.run_in_executor(
                self.pool, self.quarantine, raw, sender, rcpts, e, None
            )
        else:
            submit_async = getattr(self.intake, "submit_async", None)
            submit = getattr(self.intake, "submit", None)
            try:
                if submit_async is not None:
                    # The writer process answers on this loop; a session dropped meanwhile
                    # leaves the mail its place in the batch.
                    result = _answer(await submit_async(cmd))
                elif submit is not None:
                    # The writer answers through a future: no thread of ours waits for it.
                    # Shielded: a session dropped meanwhile (aiosmtpd cancels this task) must
                    # not cancel the mail's place in the writer's batch.
                    result = _answer(await asyncio.shield(asyncio.wrap_future(submit(cmd))))
                else:
                    result = await loop.run_in_executor(
                        self.pool, self.hand_over, raw, sender, rcpts, cmd
                    )
            except Exception as e:  # noqa: BLE001 - storage → 451; anything else is poison
                result = await loop.run_in_executor(
                    self.pool, self.failed, raw, sender, rcpts, cmd, e
                )
        return f"{result.code} {result.text}"

    def hand_over(
        self, raw: bytes, sender: str, rcpts: list[str], cmd: ReceiveMail
    ) -> IntakeResult:
        """Give the command to the service; storage trouble becomes 451 (the MTA retries)."""
        try:
            result = self.intake.receive(cmd)
        except Exception as e:  # noqa: BLE001 - storage → 451; anything else is poison mail
            return self.failed(raw, sender, rcpts, cmd, e)
        return _answer(result)

    def failed(
        self, raw: bytes, sender: str, rcpts: list[str], cmd: ReceiveMail, error: Exception
    ) -> IntakeResult:
        """Applying the mail raised: storage trouble is a 451; anything else is poison mail."""
        if is_storage_error(error):
            log.warning("storage unavailable: %s", error)
            return IntakeResult("tempfail", "storage unavailable", code=451, text=TEMPFAIL[4:])
        return self.quarantine(raw, sender, rcpts, error, cmd)

    def quarantine(
        self,
        raw: bytes,
        sender: str,
        rcpts: list[str],
        error: BaseException,
        cmd: ReceiveMail | None,
    ) -> IntakeResult:
        """Poison mail (parsing or applying it raised): kept in quarantine and accepted; only
        when even that cannot be stored is the answer 451."""
        log.error("mail from %r could not be processed; quarantined", sender, exc_info=error)
        try:
            result = self.intake.quarantine_failed(
                FailedMail(raw, sender, tuple(rcpts), error, cmd)
            )
        except Exception as e:
            if is_storage_error(e):
                log.warning("storage unavailable: %s", e)
                return IntakeResult("tempfail", "storage unavailable", code=451, text=TEMPFAIL[4:])
            log.exception("could not quarantine a mail from %r", sender)
            return IntakeResult(
                "tempfail",
                f"processing error: {type(e).__name__}",
                code=451,
                text="4.3.0 Temporary processing failure, try again later",
            )
        return _answer(result)

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default is "500 Error", which makes the sending MTA bounce the mail.
        log.exception("SMTP session error", exc_info=error)
        return "451 4.3.0 Temporary failure, try again later"

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=False)
        if self.parsers is not None:
            self.parsers.shutdown(wait=True, cancel_futures=False)
        closer = getattr(self.intake, "close", None)
        if closer is not None:
            closer()


class DataState(enum.Enum):
    """How a DATA stream ended: whole, with a line over the limit, or over the size limit."""

    NOMINAL = "nominal"
    TOO_LONG = "too long"  # 500, as aiosmtpd answers it
    TOO_MUCH = "too much"  # 552


# RFC 5321 §4.1.1.4: the mail data ends with a line of one "." — CRLF "." CRLF, where the
# first CRLF ends the last line of the data (or the stream begins with the "." line).
_DOT_LINE = b".\r\n"


async def read_data(
    reader: asyncio.StreamReader, *, size_limit: int | None, line_limit: int
) -> tuple[bytes, DataState]:
    """The mail data up to <CRLF>.<CRLF>, dot-unstuffed (RFC 5321 §4.5.2), as aiosmtpd 1.4.6's
    `smtp_DATA` reads it, but a buffer at a time instead of a line at a time.

    aiosmtpd awaits `readuntil(b"\r\n")` for every line, about 400 for a mail with a 20 KB
    attachment: a fifth of the SMTP process's time (py-spy, 2026-12-01). Here each
    `readuntil(b".\r\n")` takes what the stream holds up to the next ".\r\n", or (past the
    reader's limit) the bytes that cannot start one; a ".\r\n" ends the data only when the two
    bytes before it are CRLF (so a bare LF "." CRLF — SMTP smuggling — does not). Bytes after
    the end stay in the reader for the next command. Answers as aiosmtpd does: a line over
    `line_limit` (with its CRLF) is TOO_LONG, more than `size_limit` bytes TOO_MUCH (whichever
    comes first; the data is then dropped), and a connection lost raises."""
    chunks: list[bytes] = []
    size = 0
    state = DataState.NOMINAL
    before = b"\r\n"  # the two bytes before what the reader holds; the stream starts a line
    while True:
        try:
            piece = await reader.readuntil(_DOT_LINE)
        except asyncio.LimitOverrunError as e:
            piece = await reader.read(max(1, e.consumed))
        except asyncio.IncompleteReadError as e:
            raise ConnectionResetError("connection lost during DATA") from e
        if not piece:
            raise ConnectionResetError("connection lost during DATA")
        ends = piece.endswith(_DOT_LINE)
        if ends and (piece[-5:-3] if len(piece) >= 5 else (before + piece)[-5:-3]) == b"\r\n":
            piece = piece[:-3]
        else:
            ends = False
        size += len(piece)
        before = piece[-2:] if len(piece) >= 2 else (before + piece)[-2:]
        if state is DataState.NOMINAL:
            chunks.append(piece)
            # Over the size limit: kept until the line that crossed it is whole (which of the
            # two failures came first depends on it), then dropped, as aiosmtpd drops it.
            if size_limit and size > size_limit and (ends or size > size_limit + 2 * line_limit):
                state = _first_failure(b"".join(chunks), size_limit, line_limit)
                chunks = []
        if ends:
            break
    if state is not DataState.NOMINAL:
        return b"", state
    data = b"".join(chunks)
    if len(data) > line_limit and max(map(len, data.split(b"\r\n"))) + 2 > line_limit:
        return b"", DataState.TOO_LONG
    if data.startswith(b"."):
        data = data[1:]
    return data.replace(b"\r\n.", b"\r\n"), DataState.NOMINAL


def _first_failure(data: bytes, size_limit: int, line_limit: int) -> DataState:
    """For data over `size_limit`: TOO_LONG if aiosmtpd met a line over `line_limit` before it
    counted more than `size_limit` bytes, else TOO_MUCH. It gives up on a line whose text
    alone passes the limit before counting it; a line over only with its CRLF is counted
    first; past the size limit it no longer looks at lines."""
    offset = 0
    for line in data.split(b"\r\n"):
        if offset > size_limit:
            break
        whole = len(line) + 2
        if whole > line_limit:
            if len(line) > line_limit or offset + whole <= size_limit:
                return DataState.TOO_LONG
            return DataState.TOO_MUCH
        offset += whole
    return DataState.TOO_MUCH


@lru_cache(maxsize=4096)
def _parsed_path(arg: str, local_part_limit: int) -> tuple[str | None, str | None]:
    return SMTP._getaddr(SimpleNamespace(local_part_limit=local_part_limit), arg)  # type: ignore[arg-type]


class _IntakeSMTP(SMTP):
    """aiosmtpd's session, with the parsing of MAIL FROM and RCPT TO paths memoised and the
    mail data read a buffer at a time (`read_data`).

    aiosmtpd's `_getaddr` builds a `typing.Protocol` class and runs the email package's header
    parser on every MAIL FROM and RCPT TO: an eighth of the event loop's time in the profile
    (py-spy --gil, 2026-11-26). Its answer depends on the path text and the local-part limit
    only, and the same senders and department addresses come again and again."""

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        if len(arg) > 1024:
            return super()._getaddr(arg)
        return _parsed_path(arg, self.local_part_limit)

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd 1.4.6's DATA (the same checks, answers and hook), reading with `read_data`.
        Decoded data and the old `process_message` API are left to aiosmtpd."""
        if self._decode_data or "DATA" not in self._handle_hooks:
            await super().smtp_DATA(arg)
            return
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            data, state = await read_data(
                self._reader, size_limit=self.data_size_limit, line_limit=self.line_length_limit
            )
        except (asyncio.CancelledError, ConnectionResetError):
            log.info("connection lost during DATA")
            self._writer.close()
            raise
        if state is not DataState.NOMINAL:
            await self.push(
                "500 Line too long (see RFC5321 4.5.3.1.6)"
                if state is DataState.TOO_LONG
                else "552 Error: Too much mail data"
            )
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        self.envelope.content = data
        self.envelope.original_content = data
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)


class _Controller(Controller):
    def factory(self) -> SMTP:
        return _IntakeSMTP(self.handler, **self.SMTP_kwargs)


class SmtpIntakeServer:
    """Runs the handler on host:port with SIZE advertised (552 over the limit)."""

    def __init__(
        self,
        handler: IntakeHandler,
        *,
        host: str,
        port: int,
        max_message_bytes: int,
        hostname: str,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.handler = handler
        self.controller = _Controller(
            handler,
            loop=loop,
            hostname=host,
            port=port,
            server_hostname=hostname,
            data_size_limit=max_message_bytes,
            decode_data=False,
            enable_SMTPUTF8=True,
            ready_timeout=10.0,
        )

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
        self.handler.close()

    @property
    def port(self) -> int:
        return int(self.controller.port)
