"""The Slack adapter's rows: workspaces of organizations, applied request ids, channel posts,
and the ticket lists `/ticket list` and App Home show."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, and_, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from gateway.domain.lifecycle import TERMINAL, AssignmentType
from store import models as m

TERMINAL_STATUSES = tuple(sorted(s.value for s in TERMINAL))


def claim_key(conn: Connection, key: str, at: datetime) -> bool:
    """Record ``key`` as applied in this transaction; False when it was already (a retry).

    INSERT … ON CONFLICT DO NOTHING: on PostgreSQL a concurrent transaction with the same key
    waits for the first to commit and then inserts nothing."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(m.SlackSeen)
        .values(key=key, at=at)
        .on_conflict_do_nothing()
        .returning(m.SlackSeen.key)
    )
    return conn.execute(stmt).scalar() is not None


def forget_applied_ids(
    conn: Connection, *, before: datetime, limit: int, keep_prefixes: tuple[str, ...] = ()
) -> int:
    """Delete up to ``limit`` applied ids recorded before ``before``, except those that start
    with one of ``keep_prefixes``; how many went."""
    oldest = (
        select(m.SlackSeen.key)
        .where(m.SlackSeen.at < before, *(~m.SlackSeen.key.startswith(p) for p in keep_prefixes))
        .limit(limit)
    )
    res = conn.execute(delete(m.SlackSeen).where(m.SlackSeen.key.in_(oldest)))
    return int(res.rowcount)


def organization_for_team(s: Session, team_id: str) -> m.Organization | None:
    return s.scalars(select(m.Organization).where(m.Organization.slack_team_id == team_id)).first()


def employee_with_slack_id(s: Session, org_id: int, user_id: str) -> m.Employee | None:
    stmt = select(m.Employee).where(
        m.Employee.org_id == org_id, m.Employee.slack_user_id == user_id
    )
    return s.scalars(stmt).first()


def employee_with_email(s: Session, org_id: int, email: str) -> m.Employee | None:
    stmt = select(m.Employee).where(m.Employee.org_id == org_id, m.Employee.email == email)
    return s.scalars(stmt).first()


def set_slack_user_id(s: Session, employee_id: int, user_id: str) -> None:
    s.execute(update(m.Employee).where(m.Employee.id == employee_id).values(slack_user_id=user_id))


def department_with_channel(s: Session, org_id: int, channel: str) -> m.Department | None:
    stmt = select(m.Department).where(
        m.Department.org_id == org_id, m.Department.slack_channel == channel
    )
    return s.scalars(stmt).first()


def departments_of_org(s: Session, org_id: int) -> list[m.Department]:
    stmt = select(m.Department).where(m.Department.org_id == org_id).order_by(m.Department.name)
    return list(s.scalars(stmt))


def post_of(s: Session, ticket_id: int, channel: str) -> m.SlackPost | None:
    stmt = select(m.SlackPost).where(
        m.SlackPost.ticket_id == ticket_id, m.SlackPost.channel == channel
    )
    return s.scalars(stmt).first()


def post_at(s: Session, channel: str, ts: str) -> m.SlackPost | None:
    stmt = select(m.SlackPost).where(m.SlackPost.channel == channel, m.SlackPost.ts == ts)
    return s.scalars(stmt).first()


def record_post(conn: Connection, *, ticket_id: int, channel: str, ts: str, at: datetime) -> None:
    """The ticket's post in ``channel`` is ``ts`` (kept when one is recorded already)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(m.SlackPost)
        .values(ticket_id=ticket_id, channel=channel, ts=ts, created_at=at)
        .on_conflict_do_nothing()
    )
    conn.execute(stmt)


def open_tickets(
    s: Session, *, employee: m.Employee, which: str, limit: int = 25
) -> list[m.Ticket]:
    """Open tickets of one employee, newest first: ``raised`` by them; ``mine``, owned by them
    or raised to them in person; ``queue``, their department's tickets nobody has taken."""
    stmt = select(m.Ticket).where(
        m.Ticket.org_id == employee.org_id, m.Ticket.status.not_in(TERMINAL_STATUSES)
    )
    if which == "raised":
        stmt = stmt.where(m.Ticket.from_employee_id == employee.id)
    elif which == "queue":
        stmt = stmt.where(
            m.Ticket.assignment_type == AssignmentType.DEPARTMENT.value,
            m.Ticket.to_department_id == employee.department_id,
            m.Ticket.owner_id.is_(None),
        )
    else:
        stmt = stmt.where(
            or_(
                m.Ticket.owner_id == employee.id,
                and_(
                    m.Ticket.assignment_type == AssignmentType.INDIVIDUAL.value,
                    m.Ticket.to_employee_id == employee.id,
                ),
            )
        )
    return list(s.scalars(stmt.order_by(m.Ticket.id.desc()).limit(limit)))


def visible_messages(s: Session, ticket_id: int, *, hidden: bool) -> list[m.Message]:
    """The ticket's messages, oldest first; hidden ones only with ``hidden``."""
    stmt = select(m.Message).where(m.Message.ticket_id == ticket_id)
    if not hidden:
        stmt = stmt.where(m.Message.hidden.is_(False))
    return list(s.scalars(stmt.order_by(m.Message.id)))
