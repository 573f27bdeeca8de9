"""The SMTP edge (aiosmtpd): refuse what the envelope and the headers decide, queue the rest durably, then 250.

Like Postfix's smtpd, Mailman's LMTP runner and Zulip's email gateway, the edge does no MIME
parse and no ticket work: it checks recipients at RCPT TO, reads the header block at the end
of DATA, refuses a sender who is not an active employee (automatic mail aside, SPEC §2.5) and
a DMARC failure from the organization's own domain, and writes the raw bytes to the inbound
queue. Only after that commit does it answer 250; the intake runner does the rest.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from gateway.mail.auth_results import dmarc_verdict
from gateway.mail.headers import MailHeaders, queue_mail, read_headers
from gateway.mail.parse import ParseLimits
from gateway.mail.translate import TranslateContext, parse_and_translate
from gateway.service.commands import Queued, QueueMail, SenderStanding
from gateway.service.errors import StorageUnavailable

log = logging.getLogger("ticketgate.smtp")

TEMPFAIL = "451 4.3.0 Temporary failure: storage unavailable, try again later"
PROCESSING_TEMPFAIL = "451 4.3.0 Temporary failure, try again later"
TOO_MANY_SESSIONS = b"421 4.7.0 Too many connections, try again later\r\n"


class Inbound(Protocol):
    """What the edge needs of the service (gateway/service/inbound.py)."""

    def remembered_recipient(self, addr: str) -> str | None: ...
    def known_recipient(self, addr: str) -> str | None: ...
    def remembered_sender(self, email: str) -> SenderStanding | None: ...
    def sender_standing(self, email: str) -> SenderStanding: ...
    def enqueue(self, mails: Sequence[QueueMail]) -> list[Queued]: ...


def _is_utf8(address: str) -> bool:
    """RFC 6531 allows UTF-8 addresses; raw bytes that are not UTF-8 are no address at all."""
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class QueueWriter:
    """One batch loop: the mails of concurrent sessions are queued in one transaction, so they
    share one commit (group commit). Each session waits for the commit of its batch; while one
    batch commits, the next one gathers."""

    def __init__(
        self,
        enqueue: Callable[[Sequence[QueueMail]], list[Queued]],
        *,
        max_batch: int = 64,
        on_committed: Callable[[], None] = lambda: None,
    ) -> None:
        self.enqueue = enqueue
        self.max_batch = max_batch
        self.on_committed = on_committed
        # The database work of a batch runs in this one thread, off the event loop.
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-writer")
        self._waiting: asyncio.Queue[tuple[QueueMail, asyncio.Future[Queued]]] | None = None
        self._task: asyncio.Task[None] | None = None

    async def submit(self, mail: QueueMail) -> Queued:
        """Queue one mail; returns once it is durable. Raises what the commit raised."""
        if self._waiting is None:
            self._waiting = asyncio.Queue()
            self._task = asyncio.get_running_loop().create_task(self._run(self._waiting))
        fut: asyncio.Future[Queued] = asyncio.get_running_loop().create_future()
        await self._waiting.put((mail, fut))
        # Shielded: a session dropped meanwhile must not take the mail out of its batch.
        return await asyncio.shield(fut)

    async def _run(self, waiting: asyncio.Queue[tuple[QueueMail, asyncio.Future[Queued]]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await waiting.get()]
            while len(batch) < self.max_batch and not waiting.empty():
                batch.append(waiting.get_nowait())
            mails = [mail for mail, _ in batch]
            try:
                results = await loop.run_in_executor(self._db, self.enqueue, mails)
            except Exception as e:  # noqa: BLE001 - every session of the batch is told
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
            self.on_committed()

    def close(self) -> None:
        """Stop the batch loop (from any thread) and wait for a commit under way."""
        if self._task is not None and not self._task.get_loop().is_closed():
            self._task.get_loop().call_soon_threadsafe(self._task.cancel)
        self._db.shutdown(wait=True)


@dataclass(frozen=True)
class EdgePolicy:
    """What the edge refuses and how much it takes."""

    refuse_dmarc_fail: bool = True
    max_recipients: int = 100


class EdgeHandler:
    """aiosmtpd handler of the edge: translates only; the service decides."""

    def __init__(
        self,
        inbound: Inbound,
        writer: QueueWriter,
        *,
        ctx: TranslateContext,
        limits: ParseLimits,
        policy: EdgePolicy = EdgePolicy(),
    ) -> None:
        self.inbound = inbound
        self.writer = writer
        self.ctx = ctx
        self.limits = limits
        self.policy = policy
        # Directory look-ups that miss the service's memory, and the rare full parse of a mail
        # from someone who is not an employee, run here, off the event loop.
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="smtp-edge")

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
        if len(envelope.rcpt_tos) >= self.policy.max_recipients:
            return "452 4.5.3 Too many recipients"
        kind = self.inbound.remembered_recipient(address)
        try:
            if kind is None:
                loop = asyncio.get_running_loop()
                kind = await loop.run_in_executor(self.pool, self.inbound.known_recipient, address)
        except StorageUnavailable:
            return TEMPFAIL
        except Exception:
            log.exception("RCPT check failed for %r", address)
            return PROCESSING_TEMPFAIL
        if kind is None:
            return "550 5.1.1 Bad destination mailbox address"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)
        mail_from = envelope.mail_from or ""
        sender = "" if mail_from in ("<>", "") else mail_from
        rcpts = list(envelope.rcpt_tos)
        head = read_headers(raw)
        try:
            refusal = await self._refusal(raw, head, sender, rcpts)
        except StorageUnavailable:
            return TEMPFAIL
        if refusal is not None:
            return refusal
        mail = queue_mail(raw, head, envelope_from=sender, envelope_rcpts=rcpts)
        try:
            queued = await self.writer.submit(mail)
        except StorageUnavailable as e:
            log.warning("storage unavailable: %s", e)
            return TEMPFAIL
        except Exception:
            log.exception("could not queue a mail from %r", sender)
            return PROCESSING_TEMPFAIL
        if queued.duplicate:
            return "250 2.0.0 OK: duplicate of an accepted mail"
        return f"250 2.0.0 OK: queued as {queued.record_id}"

    async def _refusal(
        self, raw: bytes, head: MailHeaders, sender: str, rcpts: list[str]
    ) -> str | None:
        """The SMTP answer refusing this mail in the session, or None to queue it."""
        loop = asyncio.get_running_loop()
        standing = None
        if head.from_email is not None:
            standing = self.inbound.remembered_sender(head.from_email)
            if standing is None:
                standing = await loop.run_in_executor(
                    self.pool, self.inbound.sender_standing, head.from_email
                )
        if standing is None or not standing.active:
            # Rare: no From we can read, or not an active employee. Automatic mail is accepted
            # for quarantine (SPEC §2.5: refusing a bounce makes a double bounce); to tell it,
            # this mail alone gets the full classification here.
            try:
                cmd = await loop.run_in_executor(
                    self.pool, parse_and_translate, raw, sender, rcpts, self.limits, self.ctx
                )
            except Exception:  # noqa: BLE001 - poison mail: the runner quarantines it
                log.warning("a mail from %r could not be parsed; queued for quarantine", sender)
                return None
            if cmd.quarantine is not None:
                return None
            if head.from_email is None:
                return "550 5.7.1 From header missing or malformed"
            why = "not an employee" if standing is None or not standing.employee else "deactivated"
            return f"550 5.7.1 {head.from_email} is {why} of an organization served here"
        domain = head.from_email.rsplit("@", 1)[-1] if head.from_email else ""
        if (
            self.policy.refuse_dmarc_fail
            and domain in standing.org_domains
            and dmarc_verdict(head.auth_results, self.ctx.trusted_authserv_ids) == "fail"
        ):
            return "550 5.7.1 DMARC check failed for your domain; message not accepted"
        return None

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default is "500 Error", which makes the sending MTA bounce the mail.
        log.exception("SMTP session error", exc_info=error)
        return PROCESSING_TEMPFAIL

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=False)
        self.writer.close()


class SessionSlots:
    """How many SMTP sessions are open, and how many may be (`smtp.max_sessions`). Used only
    from the server's event loop thread."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0


class LimitedSMTP(SMTP):
    """aiosmtpd's session, taking one of the server's slots when its connection is made and
    freeing it when the connection is lost. With no slot free, the connection is answered
    `421 4.7.0` and closed before aiosmtpd sees it: no session, no task is made for it.

    Only asyncio's public Protocol methods are overridden (aiosmtpd 1.4.6 makes the session
    and starts its handler task in `connection_made`, and ends them in `connection_lost`)."""

    def __init__(self, handler: Any, *, slots: SessionSlots, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.slots = slots
        self.holds_slot = False
        self.refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.holds_slot:  # a second call would be STARTTLS's (not offered here)
            if self.slots.open >= self.slots.limit:
                self.refused = True
                assert isinstance(transport, asyncio.WriteTransport)
                transport.write(TOO_MANY_SESSIONS)
                transport.close()  # flushes the 421, then connection_lost
                return
            self.slots.open += 1
            self.holds_slot = True
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            return  # aiosmtpd never saw this connection
        try:
            super().connection_lost(error)
        finally:
            if self.holds_slot:
                self.holds_slot = False
                self.slots.open -= 1


class LimitedController(Controller):
    """aiosmtpd's Controller making `LimitedSMTP` sessions that share one `SessionSlots`."""

    def __init__(self, handler: Any, *, slots: SessionSlots, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.slots = slots

    def factory(self) -> LimitedSMTP:
        return LimitedSMTP(self.handler, slots=self.slots, **self.SMTP_kwargs)


class SmtpEdgeServer:
    """Runs the edge on host:port with SIZE advertised (552 over the limit, from aiosmtpd),
    at most `max_sessions` sessions at once (421 beyond); the greeting names the host and
    ticketgate, no versions. With ``tls_context``, STARTTLS is offered (aiosmtpd's); with
    ``require_starttls`` too, a client must use it before MAIL (530 otherwise)."""

    def __init__(
        self,
        handler: EdgeHandler,
        *,
        host: str,
        port: int,
        max_message_bytes: int,
        hostname: str,
        max_sessions: int = 200,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.handler = handler
        self.slots = SessionSlots(max_sessions)
        self.controller = LimitedController(
            handler,
            slots=self.slots,
            loop=loop,
            hostname=host,
            port=port,
            server_hostname=hostname,
            ident="ticketgate ESMTP",
            data_size_limit=max_message_bytes,
            decode_data=False,
            enable_SMTPUTF8=True,
            ready_timeout=10.0,
            tls_context=tls_context,
            require_starttls=require_starttls,
        )

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
        self.handler.close()

    @property
    def port(self) -> int:
        return int(self.controller.port)

    @property
    def open_sessions(self) -> int:
        """SMTP sessions open now."""
        return self.slots.open
