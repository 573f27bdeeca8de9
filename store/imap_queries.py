"""The IMAP intake's records: per watched folder its UIDVALIDITY and last queued UID, and per
queued message its UID, its processing record and whether it has left the folder (issue 15)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from store import models as m

WAITING = "waiting"  # queued; not moved out of the folder yet
SUPERSEDED = "superseded"  # its UIDVALIDITY is gone: the folder was recreated


@dataclass(frozen=True)
class FolderState:
    id: int
    uidvalidity: int | None
    last_uid: int


@dataclass(frozen=True)
class Decided:
    """A message whose processing record left the queue: where it goes now."""

    uid: int
    inbound_id: int
    outcome: str
    copies: int = 1  # messages (in any watched folder) that became this record


def folder_state(s: Session, name: str, *, now: datetime) -> FolderState:
    """The folder's row, created (no UIDVALIDITY yet) when it is new."""
    row = s.scalars(select(m.ImapMailbox).where(m.ImapMailbox.name == name)).first()
    if row is None:
        ins = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
        s.execute(
            ins(m.ImapMailbox)
            .values(name=name, uidvalidity=None, last_uid=0, updated_at=now)
            .on_conflict_do_nothing(index_elements=[m.ImapMailbox.name])
        )
        row = s.scalars(select(m.ImapMailbox).where(m.ImapMailbox.name == name)).one()
    return FolderState(row.id, row.uidvalidity, int(row.last_uid))


def find_folder(s: Session, name: str) -> FolderState | None:
    """The folder's row, or None before its watcher first looked at it."""
    row = s.scalars(select(m.ImapMailbox).where(m.ImapMailbox.name == name)).first()
    return None if row is None else FolderState(row.id, row.uidvalidity, int(row.last_uid))


def start_uidvalidity(
    s: Session, mailbox_id: int, *, uidvalidity: int, last_uid: int, now: datetime
) -> int:
    """The folder has a new UIDVALIDITY (first look, or recreated): UIDs from now on count in
    it; the messages still waiting under the old one are superseded (the folder lists them
    again under new UIDs). Returns how many were superseded."""
    s.execute(
        update(m.ImapMailbox)
        .where(m.ImapMailbox.id == mailbox_id)
        .values(uidvalidity=uidvalidity, last_uid=last_uid, updated_at=now)
    )
    res = s.execute(
        update(m.ImapMessage)
        .where(
            m.ImapMessage.mailbox_id == mailbox_id,
            m.ImapMessage.uidvalidity != uidvalidity,
            m.ImapMessage.state == WAITING,
        )
        .values(state=SUPERSEDED, moved_at=now)
    )
    return int(res.rowcount or 0)  # type: ignore[attr-defined]


def record_queued(
    s: Session,
    mailbox_id: int,
    *,
    uidvalidity: int,
    items: Sequence[tuple[int, int]],
    last_uid: int,
    now: datetime,
) -> None:
    """(uid, processing record) of messages committed to the queue in this transaction, and
    the folder's last queued UID; a UID already recorded is left as it is."""
    if items:
        ins = pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert
        s.execute(
            ins(m.ImapMessage)
            .values(
                [
                    {
                        "mailbox_id": mailbox_id,
                        "uidvalidity": uidvalidity,
                        "uid": uid,
                        "inbound_id": rid,
                        "state": WAITING,
                        "at": now,
                    }
                    for uid, rid in items
                ]
            )
            .on_conflict_do_nothing(index_elements=["mailbox_id", "uidvalidity", "uid"])
        )
    s.execute(
        update(m.ImapMailbox)
        .where(m.ImapMailbox.id == mailbox_id, m.ImapMailbox.last_uid < last_uid)
        .values(last_uid=last_uid, updated_at=now)
    )


def decided(s: Session, mailbox_id: int, *, uidvalidity: int, limit: int) -> list[Decided]:
    """Waiting messages whose processing record has left the queue, in UID order."""
    other = m.ImapMessage.__table__.alias("other")
    copies = (
        select(func.count())
        .select_from(other)
        .where(other.c.inbound_id == m.ImapMessage.inbound_id)
        .scalar_subquery()
    )
    rows = s.execute(
        select(m.ImapMessage.uid, m.ImapMessage.inbound_id, m.InboundMail.outcome, copies)
        .join(m.InboundMail, m.InboundMail.id == m.ImapMessage.inbound_id)
        .where(
            m.ImapMessage.mailbox_id == mailbox_id,
            m.ImapMessage.uidvalidity == uidvalidity,
            m.ImapMessage.state == WAITING,
            m.InboundMail.outcome != "queued",
        )
        .order_by(m.ImapMessage.uid)
        .limit(limit)
    )
    return [Decided(int(uid), int(rid), str(outcome), int(n)) for uid, rid, outcome, n in rows]


def waiting_count(s: Session, mailbox_id: int) -> int:
    return int(
        s.scalar(
            select(func.count())
            .select_from(m.ImapMessage)
            .where(m.ImapMessage.mailbox_id == mailbox_id, m.ImapMessage.state == WAITING)
        )
        or 0
    )


def known_uids(
    s: Session, mailbox_id: int, *, uidvalidity: int, uids: Iterable[int]
) -> dict[int, int]:
    """Of `uids`, those already committed to the queue: uid → processing record."""
    wanted = list(uids)
    if not wanted:
        return {}
    rows = s.execute(
        select(m.ImapMessage.uid, m.ImapMessage.inbound_id).where(
            m.ImapMessage.mailbox_id == mailbox_id,
            m.ImapMessage.uidvalidity == uidvalidity,
            m.ImapMessage.uid.in_(wanted),
        )
    )
    return {int(uid): int(rid) for uid, rid in rows}


def mark_moved(
    s: Session,
    mailbox_id: int,
    *,
    uidvalidity: int,
    uids: Sequence[int],
    state: str,
    now: datetime,
) -> None:
    if not uids:
        return
    s.execute(
        update(m.ImapMessage)
        .where(
            m.ImapMessage.mailbox_id == mailbox_id,
            m.ImapMessage.uidvalidity == uidvalidity,
            m.ImapMessage.uid.in_(list(uids)),
            m.ImapMessage.state == WAITING,
        )
        .values(state=state, moved_at=now)
    )


def widen_envelope(s: Session, record_id: int, rcpts: Sequence[str]) -> tuple[str, int | None]:
    """Add `rcpts` to a processing record's envelope recipients; returns its outcome and
    ticket. A record still queued is processed with them; one already processed is only
    updated (the caller applies what they change)."""
    rec = s.get(m.InboundMail, record_id, with_for_update=True)
    assert rec is not None
    have = [str(r) for r in rec.envelope_rcpts or []]
    added = [r for r in rcpts if r not in have]
    if added:
        rec.envelope_rcpts = have + added
    return rec.outcome, rec.ticket_id


def envelope_of_record(s: Session, record_id: int) -> tuple[str, int | None, list[str]]:
    """(outcome, ticket, envelope recipients) of a processing record."""
    rec = s.get(m.InboundMail, record_id)
    assert rec is not None
    return rec.outcome, rec.ticket_id, [str(r) for r in rec.envelope_rcpts or []]


def mailboxes_of(s: Session, record_id: int) -> list[tuple[str, int, str]]:
    """(mailbox name, uid, state) of every IMAP message that became this processing record."""
    rows = s.execute(
        select(m.ImapMailbox.name, m.ImapMessage.uid, m.ImapMessage.state)
        .join(m.ImapMailbox, m.ImapMailbox.id == m.ImapMessage.mailbox_id)
        .where(m.ImapMessage.inbound_id == record_id)
        .order_by(m.ImapMessage.id)
    )
    return [(str(n), int(u), str(st)) for n, u, st in rows]


def counts_by_state(s: Session) -> dict[tuple[str, str], int]:
    """(mailbox name, state) → messages, for /metrics."""
    rows = s.execute(
        select(m.ImapMailbox.name, m.ImapMessage.state, func.count())
        .join(m.ImapMailbox, m.ImapMailbox.id == m.ImapMessage.mailbox_id)
        .group_by(m.ImapMailbox.name, m.ImapMessage.state)
    )
    return {(str(n), str(st)): int(c) for n, st, c in rows}
