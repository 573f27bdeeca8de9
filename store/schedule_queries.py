"""The scheduler's SQL: due tickets by indexed deadline columns (O(due)), step keys, feedback,
and the report's aggregates."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from store import models as m

# The deadline columns a tick looks at, each with its own index.
DEADLINES = (
    "first_response_due",
    "resolution_due",
    "escalation_due",
    "reminder_due",
    "auto_close_due",
    "feedback_due",
)


def lock_due_tickets(s: Session, *, now: datetime, limit: int) -> list[int]:
    """Ids of up to ``limit`` tickets with a deadline at or before ``now``, locked for this
    transaction; on PostgreSQL rows another process holds are skipped (`FOR UPDATE SKIP
    LOCKED`), so two tickers never work on the same ticket. One indexed range scan per column:
    the cost follows the due rows, not the table."""
    ids: list[int] = []
    seen: set[int] = set()
    for name in DEADLINES:
        if len(ids) >= limit:
            break
        col = getattr(m.Ticket, name)
        stmt = (
            select(m.Ticket.id)
            .where(col <= now)
            .order_by(col)
            .limit(limit - len(ids))
            .with_for_update(skip_locked=True)
        )
        for tid in s.scalars(stmt):
            if tid not in seen:
                seen.add(tid)
                ids.append(tid)
    return ids


def tickets_by_id(s: Session, ids: list[int]) -> list[m.Ticket]:
    """The (already locked) tickets of ``ids`` in one statement."""
    return list(s.scalars(select(m.Ticket).where(m.Ticket.id.in_(ids))))


def claim_step(
    conn: Connection, *, ticket_id: int, kind: str, step: int, due_at: datetime, now: datetime
) -> bool:
    """Record that step ``(ticket, kind, step, due_at)`` is done; False when it already was
    (`INSERT … ON CONFLICT DO NOTHING`: a second process's attempt is a no-op)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(m.ScheduleStep).on_conflict_do_nothing(
        index_elements=["ticket_id", "kind", "step", "due_at"]
    )
    result = conn.execute(
        stmt, {"ticket_id": ticket_id, "kind": kind, "step": step, "due_at": due_at, "done_at": now}
    )
    return bool(result.rowcount)


def status_times(conn: Connection, ticket_id: int) -> list[tuple[str, datetime]]:
    """The ticket's history as (status, at), oldest first (pauses are read from it)."""
    h = m.StatusHistory.__table__
    rows = conn.execute(
        select(h.c.status, h.c.at).where(h.c.ticket_id == ticket_id).order_by(h.c.id)
    )
    return [(status, at) for status, at in rows]


@dataclass(frozen=True)
class FeedbackRow:
    rating: int
    comment: str
    at: datetime
    channel: str


def feedback_of(conn: Connection, ticket_id: int) -> FeedbackRow | None:
    f = m.Feedback.__table__
    row = conn.execute(
        select(f.c.rating, f.c.comment, f.c.at, f.c.channel).where(f.c.ticket_id == ticket_id)
    ).first()
    if row is None:
        return None
    return FeedbackRow(int(row.rating), row.comment, row.at, row.channel)


def upsert_feedback(
    conn: Connection,
    *,
    ticket_id: int,
    rating: int,
    comment: str,
    at: datetime,
    channel: str,
    employee_id: int,
    exists: bool,
) -> None:
    """The ticket's one feedback row: inserted, or replaced by a later answer."""
    values: dict[str, Any] = {
        "rating": rating,
        "comment": comment,
        "at": at,
        "channel": channel,
        "employee_id": employee_id,
    }
    if exists:
        conn.execute(update(m.Feedback).where(m.Feedback.ticket_id == ticket_id).values(values))
    else:
        conn.execute(insert(m.Feedback).values(ticket_id=ticket_id, **values))


@dataclass(frozen=True)
class ReportRow:
    """What the report needs of one ticket."""

    status: str
    department: str
    category: str | None
    created_at: datetime
    first_responded_at: datetime | None
    resolved_at: datetime | None
    has_policy: bool
    first_response_breached: bool
    resolution_breached: bool
    escalation_level: int
    feedback_requests: int
    rating: int | None


def report_rows(s: Session, *, since: datetime | None) -> list[ReportRow]:
    """Every ticket created at or after ``since`` (all without it), with its department's
    address, its category's name and its rating."""
    t, d, c, f = m.Ticket, m.Department, m.Category, m.Feedback
    stmt = (
        select(
            t.status,
            d.address,
            c.name,
            t.created_at,
            t.first_responded_at,
            t.resolved_at,
            t.sla_policy.is_not(None),
            t.first_response_breached,
            t.resolution_breached,
            t.escalation_level,
            t.feedback_requests,
            f.rating,
        )
        .join(d, d.id == t.to_department_id)
        .outerjoin(c, c.id == t.category_id)
        .outerjoin(f, f.ticket_id == t.id)
        .order_by(t.id)
    )
    if since is not None:
        stmt = stmt.where(t.created_at >= since)
    rows: list[tuple[Any, ...]] = [tuple(row) for row in s.execute(stmt)]
    return [ReportRow(*row) for row in rows]


def escalation_steps_since(s: Session, *, since: datetime | None) -> int:
    """Escalation steps done for tickets created at or after ``since``."""
    stmt = (
        select(func.count())
        .select_from(m.ScheduleStep)
        .join(m.Ticket, m.Ticket.id == m.ScheduleStep.ticket_id)
        .where(m.ScheduleStep.kind == "escalation")
    )
    if since is not None:
        stmt = stmt.where(m.Ticket.created_at >= since)
    return int(s.scalar(stmt) or 0)
