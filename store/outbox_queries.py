"""Outbox rows and notification events: inserts, claims (SKIP LOCKED), the loop breaker's counts."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from store import models as m


def insert_event(
    conn: Connection, *, ticket_id: int, kind: str, payload: dict[str, Any], created_at: datetime
) -> None:
    """Add one pending notification event."""
    params = {
        "ticket_id": ticket_id,
        "kind": kind,
        "payload": payload,
        "state": "pending",
        "last_error": "",
        "created_at": created_at,
        "done_at": None,
    }
    conn.execute(insert(m.OutboxEvent), params)


def lock_pending_events(s: Session, *, limit: int) -> list[m.OutboxEvent]:
    """Up to ``limit`` pending events, oldest first, locked for this transaction; rows another
    transaction holds are skipped (`FOR UPDATE SKIP LOCKED` on PostgreSQL)."""
    stmt = (
        select(m.OutboxEvent)
        .where(m.OutboxEvent.state == "pending")
        .order_by(m.OutboxEvent.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(s.scalars(stmt))


def lock_due_outbox(
    s: Session, *, now: datetime, limit: int, channels: Collection[str] = ("email",)
) -> list[m.Outbox]:
    """Up to ``limit`` outbox rows of ``channels`` that are due at ``now`` (pending, or sending
    with the lease run out), oldest first, locked for this transaction; rows another
    transaction holds are skipped (`FOR UPDATE SKIP LOCKED` on PostgreSQL)."""
    stmt = (
        select(m.Outbox)
        .where(
            or_(m.Outbox.state == "pending", m.Outbox.state == "sending"),
            m.Outbox.next_attempt_at <= now,
            m.Outbox.channel.in_(sorted(channels)),
        )
        .order_by(m.Outbox.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(s.scalars(stmt))


def outbox_by_ids_or_dead(s: Session, ids: Sequence[int] | None) -> list[m.Outbox]:
    """The outbox rows with these ids; without ids, every dead row."""
    stmt = select(m.Outbox)
    stmt = stmt.where(m.Outbox.id.in_(ids)) if ids else stmt.where(m.Outbox.state == "dead")
    return list(s.scalars(stmt))


def outbox_rows(s: Session, state: str | None = None) -> list[m.Outbox]:
    """Every outbox row (or those in ``state``), in id order."""
    stmt = select(m.Outbox).order_by(m.Outbox.id)
    if state:
        stmt = stmt.where(m.Outbox.state == state)
    return list(s.scalars(stmt))


def suppressed_among(s: Session, addresses: Collection[str]) -> set[str]:
    """Those of ``addresses`` that get no more automatic mail (repeated hard bounces)."""
    stmt = select(m.SuppressedAddress.address).where(
        m.SuppressedAddress.address.in_(addresses),
        m.SuppressedAddress.suppressed.is_(True),
    )
    return set(s.scalars(stmt))


def outbox_counts_since(
    s: Session,
    *,
    ticket_id: int,
    recipients: Collection[str],
    kinds: Collection[str],
    since: datetime,
) -> dict[str, int]:
    """Per recipient, how many outbox rows of these kinds the ticket got after ``since``."""
    stmt = (
        select(m.Outbox.recipient, func.count())
        .where(
            m.Outbox.ticket_id == ticket_id,
            m.Outbox.recipient.in_(recipients),
            m.Outbox.kind.in_(sorted(kinds)),
            m.Outbox.created_at > since,
        )
        .group_by(m.Outbox.recipient)
    )
    return {recipient: int(n) for recipient, n in s.execute(stmt)}


def notice_counts_since(
    s: Session,
    *,
    sender_id: int,
    recipients: Collection[str],
    kinds: Collection[str],
    since: datetime,
) -> dict[str, int]:
    """Per recipient, how many outbox rows of these kinds caused by employee ``sender_id``
    (the payload's ``actor_id``) were written after ``since``; suppressed rows do not count."""
    stmt = (
        select(m.Outbox.recipient, func.count())
        .where(
            m.Outbox.recipient.in_(recipients),
            m.Outbox.kind.in_(sorted(kinds)),
            m.Outbox.created_at > since,
            m.Outbox.state != "suppressed",
            m.Outbox.payload["actor_id"].as_integer() == sender_id,
        )
        .group_by(m.Outbox.recipient)
    )
    return {recipient: int(n) for recipient, n in s.execute(stmt)}


def bump_auto_mail_counter(s: Session, *, address: str, day: str) -> int:
    """Add one to the day's automatic-mail counter of ``address``; returns the new count.

    An atomic upsert: two processes mailing one address for the first time that day must
    not both INSERT the row (the loser's whole transaction would fail)."""
    dialect = postgresql if s.get_bind().dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(m.AutoMailCounter)
        .values(address=address, day=day, count=1)
        .on_conflict_do_update(
            index_elements=[m.AutoMailCounter.address, m.AutoMailCounter.day],
            set_={"count": m.AutoMailCounter.count + 1},
        )
        .returning(m.AutoMailCounter.count)
    )
    return int(s.execute(stmt).scalar_one())
