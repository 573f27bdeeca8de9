"""The IMAP intake's side of the service: per watched folder, what is queued and what may be moved.

A watcher (gateway/runners/imap.py) fetches messages in UID order and hands them here: in one
transaction they are queued (the same inbound queue as the SMTP edge), their UIDs recorded with
their processing records, and the folder's last queued UID advanced. Only what that commit
made durable is ever moved out of the folder, and only once the intake runner decided it: to
the processed folder, or to the quarantine folder (quarantined or refused). A crash before
the commit leaves the message unqueued and in place; after it, the next pass finds the UID
recorded (or, after a UIDVALIDITY change, the dedupe key known) and moves it, nothing twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.domain.lifecycle import Channel
from gateway.domain.routing import PartyKind
from gateway.service.commands import Queued, QueueMail
from gateway.service.inbound import new_inbound
from gateway.service.storage import storage_errors
from gateway.service.tickets import TicketService, Unit
from store import imap_queries as iq
from store import inbound_queue as queue
from store import models as m
from store.db import read_session, write_session

log = logging.getLogger("ticketgate.imap")

Folder = Literal["processed", "quarantine"]


@dataclass(frozen=True)
class FolderState:
    """What the database knows of a watched folder."""

    uidvalidity: int | None
    last_uid: int


@dataclass(frozen=True)
class Fetched:
    """One message fetched from a folder, as the queue takes it."""

    uid: int
    mail: QueueMail


@dataclass(frozen=True)
class Move:
    """A decided message and the folder it goes to."""

    uid: int
    to: Folder
    outcome: str
    record_id: int = 0
    several: bool = False  # the record came from more than one message (mailboxes, re-reads)


def folder_for(outcome: str) -> Folder:
    """Where a decided message goes: tickets and messages are processed; quarantined and
    refused mail (automatic mail, unknown senders: never answered) is kept in quarantine."""
    return "processed" if outcome in ("ticket", "message") else "quarantine"


class ImapIntake:
    """The watchers' way into the queue and the record of their folders."""

    def __init__(
        self, service: TicketService, *, on_storage_error: Callable[[], None] = lambda: None
    ) -> None:
        self.svc = service
        self.on_storage_error = on_storage_error

    def state(self, mailbox: str) -> FolderState:
        """What the database knows of the folder; its row is made at the first look (a read
        on every later pass: no write turn taken from the intake runner)."""
        known = self.stored_state(mailbox)
        if known is not None:
            return known
        with storage_errors(self.on_storage_error), write_session(self.svc.sessions) as s:
            st = iq.folder_state(s, mailbox, now=self.svc.now())
        return FolderState(st.uidvalidity, st.last_uid)

    def stored_state(self, mailbox: str) -> FolderState | None:
        """What the database holds for the folder, None before its first look (read only)."""
        with storage_errors(self.on_storage_error), read_session(self.svc.sessions) as s:
            st = iq.find_folder(s, mailbox)
        return None if st is None else FolderState(st.uidvalidity, st.last_uid)

    def start_uidvalidity(self, mailbox: str, *, uidvalidity: int, last_uid: int) -> int:
        """Count UIDs under a new UIDVALIDITY from `last_uid` on; returns how many messages
        that waited under the old one are superseded (they come again under new UIDs, and
        their dedupe keys find their records)."""
        with storage_errors(self.on_storage_error), write_session(self.svc.sessions) as s:
            st = iq.folder_state(s, mailbox, now=self.svc.now())
            return iq.start_uidvalidity(
                s, st.id, uidvalidity=uidvalidity, last_uid=last_uid, now=self.svc.now()
            )

    def known(self, mailbox: str, *, uidvalidity: int, uids: Sequence[int]) -> dict[int, int]:
        """Of `uids`, those already queued: uid → processing record."""
        with storage_errors(self.on_storage_error), read_session(self.svc.sessions) as s:
            st = iq.find_folder(s, mailbox)
            if st is None:
                return {}
            return iq.known_uids(s, st.id, uidvalidity=uidvalidity, uids=uids)

    def enqueue(
        self, mailbox: str, *, uidvalidity: int, fetched: Sequence[Fetched], last_uid: int
    ) -> list[Queued]:
        """Queue `fetched` and record their UIDs and the folder's `last_uid`, in one
        transaction; returns after the commit. A mail queued before (the same Message-ID from
        the same sender in another watched mailbox, or this folder again after a UIDVALIDITY
        change) is not queued twice: its record is the answer, and the recipients this copy
        adds become copies of its ticket (SPEC §2.2: one mail is one ticket)."""
        with storage_errors(self.on_storage_error), self.svc.unit() as u:
            st = iq.folder_state(u.s, mailbox, now=u.now)
            done = queue.enqueue(
                u.s.connection(), [new_inbound(f.mail) for f in fetched], now=u.now
            )
            for f, d in zip(fetched, done, strict=True):
                if d.duplicate and f.mail.envelope_rcpts:
                    self._widen(u, d.record_id, f.mail.envelope_rcpts, mailbox)
            iq.record_queued(
                u.s,
                st.id,
                uidvalidity=uidvalidity,
                items=[(f.uid, d.record_id) for f, d in zip(fetched, done, strict=True)],
                last_uid=last_uid,
                now=u.now,
            )
        return [Queued(d.record_id, d.duplicate, d.outcome, d.rule) for d in done]

    def _widen(self, u: Unit, record_id: int, rcpts: Sequence[str], mailbox: str) -> None:
        """A second copy of a queued mail names more recipients (it was found in another
        department's mailbox): a record still queued is processed with them all; a ticket
        raised from it gets each department or employee not yet on it as a hidden copy (they
        were not in To/Cc, or routing would have put them there)."""
        outcome, ticket_id = iq.widen_envelope(u.s, record_id, rcpts)
        if outcome == "ticket" and ticket_id is not None:
            self._hidden_copies(u, record_id, ticket_id, rcpts, mailbox)

    def settle_copies(self, mailbox: str, record_ids: Sequence[int]) -> None:
        """Records that several messages became, now decided: every recipient their envelope
        gathered is on the ticket. (The runner may have read a record before a second copy
        widened its envelope, and applied it with the recipients it had read.)"""
        if not record_ids:
            return
        with storage_errors(self.on_storage_error), self.svc.unit() as u:
            for rid in record_ids:
                outcome, ticket_id, rcpts = iq.envelope_of_record(u.s, rid)
                if outcome == "ticket" and ticket_id is not None and rcpts:
                    self._hidden_copies(u, rid, ticket_id, rcpts, mailbox)

    def _hidden_copies(
        self, u: Unit, record_id: int, ticket_id: int, rcpts: Sequence[str], mailbox: str
    ) -> None:
        t = u.s.get(m.Ticket, ticket_id, with_for_update=True)
        if t is None:
            return
        copies = u.d.copies(t.id)
        added = False
        for addr in rcpts:
            r = u.d.resolve(addr)
            if r is None or r.party.org_id != t.org_id:
                continue
            p = r.party
            emp = p.id if p.kind is PartyKind.EMPLOYEE else None
            dep = p.id if p.kind is PartyKind.DEPARTMENT else None
            target = (emp is not None and t.to_employee_id == emp and dep is None) or (
                dep is not None and t.to_department_id == dep and t.to_employee_id is None
            )
            if target or t.from_employee_id == emp and emp is not None:
                continue
            if any(c.employee_id == emp and c.department_id == dep for c in copies):
                continue
            added |= u.add_copy(t, "RHC", p)
        if added:
            # Never name a hidden copy in history: history is shown to visible participants.
            u.history(t, "bcc", None, Channel.EMAIL, "hidden copy added")
            log.info("mail %d arrived in mailbox %s too: a hidden copy added", record_id, mailbox)

    def decided(self, mailbox: str, *, uidvalidity: int, limit: int = 500) -> list[Move]:
        """Queued messages of the folder whose fate the runner decided, in UID order."""
        with storage_errors(self.on_storage_error), read_session(self.svc.sessions) as s:
            st = iq.find_folder(s, mailbox)
            if st is None:
                return []
            rows = iq.decided(s, st.id, uidvalidity=uidvalidity, limit=limit)
        return [
            Move(r.uid, folder_for(r.outcome), r.outcome, r.inbound_id, r.copies > 1) for r in rows
        ]

    def moved(self, mailbox: str, *, uidvalidity: int, uids: Sequence[int], state: str) -> None:
        """`uids` left the folder (`processed`, `quarantine`, or `gone`: no longer there)."""
        with storage_errors(self.on_storage_error), write_session(self.svc.sessions) as s:
            st = iq.folder_state(s, mailbox, now=self.svc.now())
            iq.mark_moved(
                s, st.id, uidvalidity=uidvalidity, uids=uids, state=state, now=self.svc.now()
            )

    def waiting(self, mailbox: str) -> int:
        """Messages queued from the folder and not moved yet."""
        with storage_errors(self.on_storage_error), read_session(self.svc.sessions) as s:
            st = iq.find_folder(s, mailbox)
            return 0 if st is None else iq.waiting_count(s, st.id)
