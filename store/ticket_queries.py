"""A ticket's rows: history entries, messages and attachments, content-addressed blobs, copies."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, and_, func, insert, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from store import models as m


@dataclass(frozen=True, slots=True)
class CopyRow:
    """One RC or RHC entry of a ticket, as plain values (read only)."""

    id: int
    kind: str  # RC | RHC
    employee_id: int | None
    department_id: int | None


def insert_history(
    conn: Connection,
    *,
    ticket_id: int,
    status: str,
    action: str,
    actor_id: int | None,
    actor_label: str,
    at: datetime,
    channel: str,
    remark: str,
) -> int:
    """Add one `status_history` entry; returns its id."""
    stmt = insert(m.StatusHistory).returning(m.StatusHistory.id)
    params = {
        "ticket_id": ticket_id,
        "status": status,
        "action": action,
        "actor_id": actor_id,
        "actor_label": actor_label,
        "at": at,
        "channel": channel,
        "remark": remark,
    }
    return int(conn.execute(stmt, params).scalar_one())


def newest_history_id(conn: Connection, ticket_id: int) -> int:
    """The id of the ticket's newest history entry, 0 when it has none."""
    stmt = select(func.max(m.StatusHistory.id)).where(m.StatusHistory.ticket_id == ticket_id)
    return int(conn.execute(stmt).scalar() or 0)


def history_upto(s: Session, ticket_id: int, upto: int, *, limit: int) -> list[m.StatusHistory]:
    """The ticket's last ``limit`` history entries up to (and with) entry ``upto``, oldest first."""
    rows = s.scalars(
        select(m.StatusHistory)
        .where(m.StatusHistory.ticket_id == ticket_id, m.StatusHistory.id <= upto)
        .order_by(m.StatusHistory.id.desc())
        .limit(limit)
    )
    return list(reversed(list(rows)))


def history_upto_many(
    s: Session, upto: Mapping[int, int], *, window: int
) -> dict[int, list[m.StatusHistory]]:
    """Per ticket of ``upto`` ({ticket: newest entry wanted}), its newest ``window`` history
    entries up to that one, newest first: one query for a fan-out batch."""
    if not upto:
        return {}
    h = m.StatusHistory
    newest = (
        select(
            h.id, func.row_number().over(partition_by=h.ticket_id, order_by=h.id.desc()).label("rn")
        )
        .where(or_(*(and_(h.ticket_id == t, h.id <= u) for t, u in sorted(upto.items()))))
        .subquery()
    )
    rows = s.scalars(
        select(h)
        .join(newest, newest.c.id == h.id)
        .where(newest.c.rn <= window)
        .order_by(h.id.desc())
    )
    out: dict[int, list[m.StatusHistory]] = {t: [] for t in upto}
    for row in rows:
        out[row.ticket_id].append(row)
    return out


def insert_blob_if_new(conn: Connection, *, sha256: str, data: bytes) -> None:
    """Store ``data`` under its SHA-256: `INSERT … ON CONFLICT (sha256) DO NOTHING`, so bytes
    already stored (by this or another transaction) are left as they are."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(m.Blob).on_conflict_do_nothing(index_elements=[m.Blob.sha256])
    conn.execute(stmt, {"sha256": sha256, "size": len(data), "data": data})


def insert_message(
    conn: Connection,
    *,
    ticket_id: int,
    sender_id: int | None,
    sender_label: str,
    body: str,
    html: str | None,
    hidden: bool,
    channel: str,
    at: datetime,
    message_id: str | None,
    raw_sha256: str | None,
) -> int:
    """Add one message to a ticket; returns its id."""
    stmt = insert(m.Message).returning(m.Message.id)
    params = {
        "ticket_id": ticket_id,
        "sender_id": sender_id,
        "sender_label": sender_label,
        "body": body,
        "html": html,
        "hidden": hidden,
        "channel": channel,
        "at": at,
        "message_id": message_id,
        "raw_sha256": raw_sha256,
        "slack_ts": None,
    }
    return int(conn.execute(stmt, params).scalar_one())


def insert_attachment(
    conn: Connection,
    *,
    message_id: int,
    sha256: str,
    filename: str,
    content_type: str,
    size: int,
    inline: bool,
) -> None:
    """Add one attachment row to a message (its bytes are a blob, `insert_blob_if_new`)."""
    params = {
        "message_id": message_id,
        "sha256": sha256,
        "filename": filename,
        "content_type": content_type,
        "size": size,
        "inline": inline,
    }
    conn.execute(insert(m.Attachment), params)


def insert_copy(
    conn: Connection,
    *,
    ticket_id: int,
    kind: str,
    employee_id: int | None,
    department_id: int | None,
    added_at: datetime,
) -> int:
    """Add one RC or RHC entry to a ticket; returns its id."""
    stmt = insert(m.TicketCopy).returning(m.TicketCopy.id)
    params = {
        "ticket_id": ticket_id,
        "kind": kind,
        "employee_id": employee_id,
        "department_id": department_id,
        "added_at": added_at,
    }
    return int(conn.execute(stmt, params).scalar_one())


def copies_of_tickets(conn: Connection, ticket_ids: Collection[int]) -> dict[int, list[CopyRow]]:
    """Per ticket, its RC and RHC entries, oldest first (one query for many tickets)."""
    out: dict[int, list[CopyRow]] = {t: [] for t in ticket_ids}
    if not out:
        return out
    stmt = (
        select(
            m.TicketCopy.ticket_id,
            m.TicketCopy.id,
            m.TicketCopy.kind,
            m.TicketCopy.employee_id,
            m.TicketCopy.department_id,
        )
        .where(m.TicketCopy.ticket_id.in_(sorted(out)))
        .order_by(m.TicketCopy.id)
    )
    for ticket_id, copy_id, kind, employee_id, department_id in conn.execute(stmt):
        out[ticket_id].append(CopyRow(copy_id, kind, employee_id, department_id))
    return out


def copies_of_ticket(conn: Connection, ticket_id: int) -> list[CopyRow]:
    """The ticket's RC and RHC entries, oldest first."""
    return copies_of_tickets(conn, [ticket_id])[ticket_id]
