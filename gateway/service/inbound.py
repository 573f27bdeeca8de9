"""The edge's side of the service: recipient and sender checks, and the durable inbound queue."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TypeVar

from gateway.domain.tokens import token_from_address
from gateway.service.commands import Queued, QueueMail, SenderStanding
from gateway.service.directory import Directory
from gateway.service.storage import storage_errors
from gateway.service.tickets import TicketService
from store import inbound_queue as queue
from store import models as m
from store.db import read_session, write_session

log = logging.getLogger("ticketgate.intake")
T = TypeVar("T")

# How long a recipient or sender looked up is taken as known without asking the database again.
DIRECTORY_TTL = 30.0


class InboundQueue:
    """What an edge (SMTP, IMAP) asks before and when it accepts a mail.

    Answers that need the directory are remembered for DIRECTORY_TTL: the same department
    addresses and senders come again and again. Only a recipient's "yes" is remembered (a
    550 is final for the sending MTA, so an address added by `org import` must be accepted at
    once); an employee removed is at worst accepted for DIRECTORY_TTL and then refused by the
    runner, which checks again."""

    def __init__(
        self, service: TicketService, *, on_storage_error: Callable[[], None] = lambda: None
    ) -> None:
        self.svc = service
        self.on_storage_error = on_storage_error
        self._recipients: dict[str, tuple[str, float]] = {}
        self._senders: dict[str, tuple[SenderStanding, float]] = {}

    # ---- recipients (RCPT TO) -------------------------------------------------------------------
    def remembered_recipient(self, addr: str) -> str | None:
        """RCPT TO where no database is needed: postmaster, our own address, a valid reply
        token, or an address found within DIRECTORY_TTL. None: ask `known_recipient`."""
        return self._without_database(addr.strip().lower())[1]

    def known_recipient(self, addr: str) -> str | None:
        """RCPT TO check: 'department' | 'employee' | 'reply' | 'postmaster' | None."""
        a = addr.strip().lower()
        decided, kind = self._without_database(a)
        if decided:
            return kind
        with self._storage(), read_session(self.svc.sessions) as s:
            d = Directory(s)
            kind = (
                "department"
                if d.department(a) is not None
                else "employee"
                if d.employee(a) is not None
                else None
            )
        if kind is not None:
            _remember(self._recipients, a, kind)
        return kind

    def _without_database(self, a: str) -> tuple[bool, str | None]:
        """(decided, kind) for a lower-cased address; not decided: the directory must say."""
        ident = self.svc.identity
        if a.split("@")[0] == "postmaster":
            return True, "postmaster"
        tok = token_from_address(a, local=ident.reply_local, domain=ident.domain)
        if tok is not None:  # a reply address is decided by its token alone
            valid = self.svc.tokens is not None and self.svc.tokens.verify(tok, now=self.svc.now())
            return True, "reply" if valid else None
        if a == ident.from_address:
            return True, "reply"
        known = self._recipients.get(a)
        if known is not None and time.monotonic() - known[1] < DIRECTORY_TTL:
            return True, known[0]
        return False, None

    # ---- senders (the From header) --------------------------------------------------------------
    def remembered_sender(self, email: str) -> SenderStanding | None:
        """The standing of a sender looked up within DIRECTORY_TTL, else None."""
        known = self._senders.get(email)
        if known is not None and time.monotonic() - known[1] < DIRECTORY_TTL:
            return known[0]
        return None

    def sender_standing(self, email: str) -> SenderStanding:
        """Whether `email` is an (active) employee, and their organization's mail domains."""
        found = self.remembered_sender(email)
        if found is not None:
            return found
        with self._storage(), read_session(self.svc.sessions) as s:
            d = Directory(s)
            emp = d.employee(email)
            if emp is None:
                standing = SenderStanding(employee=False, active=False)
            else:
                org = d.get(m.Organization, emp.org_id)
                domains = tuple(str(x).lower() for x in (org.domains if org else []))
                standing = SenderStanding(employee=True, active=emp.active, org_domains=domains)
        _remember(self._senders, email, standing)
        return standing

    # ---- the queue ------------------------------------------------------------------------------
    def enqueue(self, mails: Sequence[QueueMail]) -> list[Queued]:
        """Queue the mails in one transaction; returns after the commit, when they are durable
        (SQLite synchronous=FULL, PostgreSQL synchronous_commit=on). A mail whose dedupe key
        is known is a duplicate: its earlier record is the answer. Storage errors raise, after
        the connections are dropped so that the next try opens new ones."""
        new = [new_inbound(x) for x in mails]
        with self._storage(), write_session(self.svc.sessions) as s:
            done = queue.enqueue(s.connection(), new, now=self.svc.now())
        return [Queued(d.record_id, d.duplicate, d.outcome, d.rule) for d in done]

    def _storage(self) -> AbstractContextManager[None]:
        return storage_errors(self.on_storage_error)

    def release(self, record_id: int) -> bool:
        """`quarantine release ID`: a quarantined mail goes back into the queue."""
        with write_session(self.svc.sessions) as s:
            return queue.requeue(s, record_id)


def new_inbound(x: QueueMail) -> queue.NewInbound:
    """What the store inserts for a mail an edge queues."""
    return queue.NewInbound(
        dedupe_key=x.dedupe_key,
        message_id=x.message_id,
        sender=x.sender,
        channel=x.channel.value,
        envelope_from=x.envelope_from,
        envelope_rcpts=x.envelope_rcpts,
        raw=x.raw,
        raw_sha256=x.raw_sha256,
        refs=x.refs,
    )


def _remember(memo: dict[str, tuple[T, float]], key: str, value: T) -> None:
    if len(memo) >= 10_000:
        memo.clear()
    memo[key] = (value, time.monotonic())
