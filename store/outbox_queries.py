"""Outbox rows and notification events: inserts, claims (SKIP LOCKED), the loop breaker's counts."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from store import models as m


def event_row(
    *, ticket_id: int, kind: str, payload: dict[str, Any], created_at: datetime
) -> dict[str, Any]:
    """The columns of one pending notification event, for `insert_events`."""
    return {
        "ticket_id": ticket_id,
        "kind": kind,
        "payload": payload,
        "state": "pending",
        "last_error": "",
        "created_at": created_at,
        "done_at": None,
    }


def insert_events(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Add pending notification events (`event_row`), in order (one INSERT, executemany)."""
    if rows:
        conn.execute(insert(m.OutboxEvent), list(rows))


def insert_outbox_rows(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Add outbox rows (one INSERT, executemany)."""
    if rows:
        conn.execute(insert(m.Outbox), list(rows))


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


def _OUTBOX() -> Table:
    return cast(Table, m.Outbox.__table__)


def claim_due_outbox(
    s: Session, *, now: datetime, limit: int, channels: Collection[str], lease_until: datetime
) -> list[Any]:
    """Claim up to ``limit`` due rows of ``channels`` (pending, or sending with the lease run
    out), oldest first: one locking SELECT (`FOR UPDATE SKIP LOCKED` on PostgreSQL) and one
    UPDATE that marks them all `sending`, counts the attempt and sets the lease. Returns the
    rows' columns, ``attempts`` already counted."""
    o = _OUTBOX()
    stmt = (
        select(
            o.c.id,
            o.c.channel,
            o.c.kind,
            o.c.recipient,
            o.c.message_id,
            o.c.payload,
            o.c.attempts,
            o.c.ticket_id,
        )
        .where(
            or_(o.c.state == "pending", o.c.state == "sending"),
            o.c.next_attempt_at <= now,
            o.c.channel.in_(sorted(channels)),
        )
        .order_by(o.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    rows = list(s.execute(stmt))
    if rows:
        s.execute(
            update(o)
            .where(o.c.id.in_([r.id for r in rows]))
            .values(state="sending", attempts=o.c.attempts + 1, next_attempt_at=lease_until)
        )
    return rows


def lock_attempts(s: Session, ids: Collection[int]) -> dict[int, int]:
    """The attempts so far of these outbox rows, locked for this transaction."""
    o = _OUTBOX()
    stmt = select(o.c.id, o.c.attempts).where(o.c.id.in_(sorted(ids))).with_for_update()
    return {int(i): int(a) for i, a in s.execute(stmt)}


def mark_sent(s: Session, ids: Collection[int], *, now: datetime) -> None:
    """These rows were delivered (one UPDATE for all)."""
    o = _OUTBOX()
    s.execute(
        update(o).where(o.c.id.in_(sorted(ids))).values(state="sent", sent_at=now, last_error="")
    )


def mark_unsent(s: Session, changes: Sequence[Mapping[str, Any]]) -> None:
    """Per row (``oid``): its new ``state`` (pending | dead), ``error``, ``attempts`` and
    ``due`` (next_attempt_at); one executemany UPDATE."""
    if not changes:
        return
    o = _OUTBOX()
    stmt = (
        update(o)
        .where(o.c.id == bindparam("oid"))
        .values(
            state=bindparam("new_state"),
            last_error=bindparam("error"),
            attempts=bindparam("tries"),
            next_attempt_at=bindparam("due"),
        )
    )
    s.connection().execute(stmt, list(changes))


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


def automatic_rows_since(
    s: Session,
    *,
    ticket_ids: Collection[int],
    recipients: Collection[str],
    kinds: Collection[str],
    since: datetime,
) -> list[tuple[int, str, datetime]]:
    """(ticket, recipient, created_at) of the outbox rows of these kinds these tickets gave
    these recipients after ``since``: one query for a fan-out batch's loop breaker."""
    o = _OUTBOX()
    stmt = select(o.c.ticket_id, o.c.recipient, o.c.created_at).where(
        o.c.ticket_id.in_(sorted(ticket_ids)),
        o.c.recipient.in_(sorted(recipients)),
        o.c.kind.in_(sorted(kinds)),
        o.c.created_at > since,
    )
    return [(int(t), r, at) for t, r, at in s.execute(stmt)]


def notice_rows_since(
    s: Session,
    *,
    sender_ids: Collection[int],
    recipients: Collection[str],
    kinds: Collection[str],
    since: datetime,
) -> list[tuple[int, str, datetime]]:
    """(sender, recipient, created_at) of the outbox rows of these kinds caused by these
    employees (``actor_id``, index ix_outbox_notices) for these recipients after ``since``; suppressed
    rows do not count. One query for a fan-out batch's notice cap."""
    o = _OUTBOX()
    stmt = select(o.c.actor_id, o.c.recipient, o.c.created_at).where(
        o.c.recipient.in_(sorted(recipients)),
        o.c.actor_id.in_(sorted(sender_ids)),
        o.c.created_at > since,
        o.c.kind.in_(sorted(kinds)),
        o.c.state != "suppressed",
    )
    return [(int(a), r, at) for a, r, at in s.execute(stmt)]


def lock_auto_mail_counters(
    s: Session, keys: Collection[tuple[str, str]]
) -> dict[tuple[str, str], int]:
    """The automatic-mail counters of these (address, day) pairs, created at 0 where missing
    and locked for this transaction (one upsert, in key order: fewer lock-order deadlocks
    between workers); {(address, day): count}. An upsert, not a SELECT: two processes mailing
    one address for the first time that day must not both INSERT the row."""
    if not keys:
        return {}
    dialect = postgresql if s.get_bind().dialect.name == "postgresql" else sqlite
    c = m.AutoMailCounter
    stmt = (
        dialect.insert(c)
        .values([{"address": a, "day": d, "count": 0} for a, d in sorted(keys)])
        .on_conflict_do_update(index_elements=[c.address, c.day], set_={"count": c.count})
        .returning(c.address, c.day, c.count)
    )
    return {(a, d): int(n) for a, d, n in s.execute(stmt)}


def set_auto_mail_counters(s: Session, counts: Mapping[tuple[str, str], int]) -> None:
    """Write counters locked by `lock_auto_mail_counters` (one executemany UPDATE)."""
    if not counts:
        return
    c = cast(Table, m.AutoMailCounter.__table__)
    stmt = (
        update(c)
        .where(c.c.address == bindparam("a"), c.c.day == bindparam("d"))
        .values(count=bindparam("n"))
    )
    s.connection().execute(stmt, [{"a": a, "d": d, "n": n} for (a, d), n in sorted(counts.items())])
