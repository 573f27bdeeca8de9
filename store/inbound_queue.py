"""The inbound queue: every inbound mail's processing record, its raw bytes and the Message-IDs it names.

The edge (SMTP or IMAP) only inserts rows in state `queued`; the intake runner claims them in
arrival order and sets the outcome (`ticket`, `message`, `quarantined`, `refused`) in the same
transaction as the ticket changes. See docs/DECISIONS.md, "The inbound queue".
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, true, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from store import models as m

QUEUED = "queued"
RELEASED = "queued: released from quarantine"
# References kept per mail for the wait rules: In-Reply-To and the newest References.
MAX_REFS = 50


@dataclass(frozen=True)
class NewInbound:
    """One mail as the edge queues it."""

    dedupe_key: str
    message_id: str | None
    sender: str
    channel: str
    envelope_from: str
    envelope_rcpts: tuple[str, ...]
    raw: bytes
    raw_sha256: str
    refs: tuple[str, ...]


@dataclass(frozen=True)
class Enqueued:
    """What became of one queued mail: its record's id, and whether it was there already."""

    record_id: int
    duplicate: bool
    outcome: str  # the record's outcome: `queued` for a new one
    rule: str


@dataclass(frozen=True)
class QueuedRow:
    """A queued mail as the runner reads it."""

    id: int
    at: datetime
    channel: str
    envelope_from: str
    envelope_rcpts: tuple[str, ...]
    message_id: str | None
    raw: bytes
    attempts: int
    rule: str


@functools.cache
def _enqueue_statements(dialect: str) -> tuple[Any, Any, Any]:
    """The edge's three INSERTs in the dialect's spelling of ON CONFLICT DO NOTHING, built once
    (building one is about as costly as running it)."""
    ins = pg_insert if dialect == "postgresql" else sqlite_insert
    blob = ins(m.Blob).on_conflict_do_nothing(index_elements=[m.Blob.sha256])
    record = (
        ins(m.InboundMail)
        .on_conflict_do_nothing(index_elements=[m.InboundMail.dedupe_key])
        .returning(m.InboundMail.id)
    )
    return blob, record, insert(m.InboundRef)


def store_blob(conn: Connection, sha256: str, data: bytes) -> None:
    """Content-addressed bytes: a no-op when they are already stored."""
    blob, _, _ = _enqueue_statements(conn.dialect.name)
    conn.execute(blob, {"sha256": sha256, "size": len(data), "data": data})


def enqueue(conn: Connection, mails: Sequence[NewInbound], *, now: datetime) -> list[Enqueued]:
    """Insert each mail as `queued` (a mail whose dedupe key is known is a duplicate and adds
    nothing), in the caller's transaction on `conn`; the caller commits. In order: one answer
    per mail."""
    blob, record, ref = _enqueue_statements(conn.dialect.name)
    out: list[Enqueued] = []
    for mail in mails:
        conn.execute(blob, {"sha256": mail.raw_sha256, "size": len(mail.raw), "data": mail.raw})
        new_id = conn.execute(
            record,
            {
                "dedupe_key": mail.dedupe_key,
                "message_id": mail.message_id,
                "sender": mail.sender,
                "channel": mail.channel,
                "outcome": QUEUED,
                "rule": "queued: waiting for the intake runner",
                "ticket_id": None,
                "raw_sha256": mail.raw_sha256,
                "at": now,
                "detail": {},
                "envelope_from": mail.envelope_from,
                "envelope_rcpts": list(mail.envelope_rcpts),
                "attempts": 0,
                "last_error": "",
            },
        ).scalar()
        if new_id is None:
            prior = conn.execute(
                select(m.InboundMail.id, m.InboundMail.outcome, m.InboundMail.rule).where(
                    m.InboundMail.dedupe_key == mail.dedupe_key
                )
            ).one()
            out.append(Enqueued(prior.id, True, prior.outcome, prior.rule))
            continue
        if mail.refs:
            conn.execute(
                ref, [{"inbound_id": new_id, "message_id": r} for r in mail.refs[:MAX_REFS]]
            )
        out.append(Enqueued(int(new_id), False, QUEUED, ""))
    return out


def queued_batch(
    s: Session,
    *,
    now: datetime,
    limit: int,
    max_bytes: int | None = None,
    queue_slice: tuple[int, int] = (0, 1),
) -> list[QueuedRow]:
    """The oldest queued mails that may be claimed now, with their raw bytes: at most `limit`
    mails, and with `max_bytes`, no more once their raw bytes would pass it (the first is
    always taken), so that a queue of large mails is not read into memory at once.
    `queue_slice` (i, n) takes only the mails whose id is i modulo n: n runners, each with a
    slice of its own, read and parse different mails (Mailman's queue slices)."""
    index, slices = queue_slice
    in_slice = (m.InboundMail.id % slices == index) if slices > 1 else true()
    rows = s.execute(
        select(
            m.InboundMail.id,
            m.InboundMail.at,
            m.InboundMail.channel,
            m.InboundMail.envelope_from,
            m.InboundMail.envelope_rcpts,
            m.InboundMail.message_id,
            m.InboundMail.attempts,
            m.InboundMail.rule,
            m.Blob.size,
        )
        .join(m.Blob, m.Blob.sha256 == m.InboundMail.raw_sha256)
        .where(
            m.InboundMail.outcome == QUEUED,
            (m.InboundMail.not_before.is_(None)) | (m.InboundMail.not_before <= now),
            in_slice,
        )
        .order_by(m.InboundMail.id)
        .limit(limit)
    ).all()
    taken: list[Any] = []
    total = 0
    for r in rows:
        if taken and max_bytes is not None and total + r.size > max_bytes:
            break
        taken.append(r)
        total += r.size
    raw = raw_bytes(s, [r.id for r in taken]) if taken else {}
    return [
        QueuedRow(
            r.id,
            r.at,
            r.channel,
            r.envelope_from,
            tuple(r.envelope_rcpts or ()),
            r.message_id,
            raw[r.id],
            r.attempts,
            r.rule,
        )
        for r in taken
    ]


def raw_bytes(s: Session, ids: Sequence[int]) -> dict[int, bytes]:
    """The raw bytes of the inbound mails `ids`, by id. On PostgreSQL they are read in binary
    format: psycopg reads a bytea as hex text by default, and that read alone took six times a
    large mail's size at its peak, one in binary format once (issue 12)."""
    if s.get_bind().dialect.name != "postgresql":
        rows = s.execute(
            select(m.InboundMail.id, m.Blob.data)
            .join(m.Blob, m.Blob.sha256 == m.InboundMail.raw_sha256)
            .where(m.InboundMail.id.in_(list(ids)))
        )
        return {int(i): bytes(data) for i, data in rows}
    driver = s.connection().connection.driver_connection
    assert driver is not None
    with driver.cursor(binary=True) as cur:
        cur.execute(
            f"SELECT i.id, b.data FROM {m.InboundMail.__tablename__} i"
            f" JOIN {m.Blob.__tablename__} b ON b.sha256 = i.raw_sha256 WHERE i.id = ANY(%s)",
            (list(ids),),
        )
        return {int(i): bytes(data) for i, data in cur.fetchall()}


@dataclass(frozen=True)
class _RunnerStatements:
    """The runner's statements for one dialect, built once (building a statement costs about
    as much as running it: a third of the runner's database time, cProfile 2026-12-01). They
    run on the session's connection as Core statements, not through the ORM's bulk paths."""

    lock: Any
    refs: Any
    queued_ids: Any
    seen: tuple[Any, ...]
    defer: Any
    waiting_replies: Any
    release: Any
    finish: Any
    drop_refs: Any
    fail: Any
    recent: Any
    by_message_id: tuple[Any, ...]


def _ids(name: str) -> Any:
    return bindparam(name, expanding=True)


@functools.cache
def _runner_statements(dialect: str) -> _RunnerStatements:
    mail, ref = m.InboundMail, m.InboundRef
    lock = select(mail.id).where(mail.id.in_(_ids("ids")), mail.outcome == QUEUED)
    lock = lock.order_by(mail.id)
    waiting = select(mail.id).where(
        mail.id.in_(select(ref.inbound_id).where(ref.message_id.in_(_ids("mids")))),
        mail.outcome == QUEUED,
        mail.not_before.is_not(None),
    )
    if dialect == "postgresql":
        # Rows another runner holds are skipped: that runner decides them.
        lock = lock.with_for_update(skip_locked=True)
        waiting = waiting.with_for_update(skip_locked=True)

    def window(since: str, limit: str) -> Any:
        return (
            select(mail.id)
            .where(
                mail.sender == bindparam("sender"),
                mail.at >= bindparam(since, type_=mail.at.type),
                mail.id < bindparam("before_id"),
            )
            .limit(bindparam(limit))
            .subquery()
        )

    burst, hour = window("burst_since", "burst_limit"), window("since", "limit")
    by_id = mail.id == bindparam("rid")
    return _RunnerStatements(
        lock=lock,
        refs=select(ref.inbound_id, ref.message_id)
        .where(ref.inbound_id.in_(_ids("ids")))
        .order_by(ref.id),
        queued_ids=select(mail.message_id, func.min(mail.id))
        .where(mail.message_id.in_(_ids("mids")), mail.outcome == QUEUED)
        .group_by(mail.message_id),
        # Received and decided (a queued mail is `queued_ids`' business: counted here, a
        # parent queued between that look-up and this one would count as seen, and its reply
        # would be processed before it), sent, or a ticket's root.
        seen=(
            select(mail.message_id)
            .where(mail.message_id.in_(_ids("mids")), mail.outcome != QUEUED)
            .distinct(),
            *(
                select(col).where(col.in_(_ids("mids"))).distinct()
                for col in (m.Message.message_id, m.Outbox.message_id, m.Ticket.root_message_id)
            ),
        ),
        defer=update(mail).where(by_id).values(not_before=bindparam("until")),
        waiting_replies=waiting,
        release=update(mail).where(mail.id.in_(_ids("ids"))).values(not_before=None),
        finish=update(mail)
        .where(by_id)
        .values(
            outcome=bindparam("outcome"),
            rule=bindparam("rule"),
            ticket_id=bindparam("ticket_id"),
            detail=bindparam("detail", type_=mail.detail.type),
            processed_at=bindparam("now", type_=mail.processed_at.type),
            not_before=None,
        ),
        drop_refs=delete(ref).where(ref.inbound_id == bindparam("rid")),
        fail=update(mail)
        .where(by_id)
        .values(attempts=mail.attempts + 1, last_error=bindparam("error"))
        .returning(mail.attempts),
        recent=select(
            select(func.count()).select_from(burst).scalar_subquery(),
            select(func.count()).select_from(hour).scalar_subquery(),
        ),
        by_message_id=tuple(
            select(col).where(where == bindparam("mid")).limit(1)
            for col, where in (
                (m.Outbox.ticket_id, m.Outbox.message_id),
                (m.Message.ticket_id, m.Message.message_id),
                (m.Ticket.id, m.Ticket.root_message_id),
            )
        ),
    )


def _run(s: Session) -> tuple[Connection, _RunnerStatements]:
    conn = s.connection()
    return conn, _runner_statements(conn.dialect.name)


def lock_queued(s: Session, ids: Iterable[int]) -> list[int]:
    """Of `ids`, those still queued, locked for this transaction, oldest first. On PostgreSQL
    rows another runner holds are skipped (FOR UPDATE SKIP LOCKED); SQLite has one writer."""
    conn, q = _run(s)
    return list(conn.execute(q.lock, {"ids": list(ids)}).scalars())


def refs_of(s: Session, ids: Iterable[int]) -> dict[int, list[str]]:
    """The Message-IDs each of these mails names (In-Reply-To and References)."""
    conn, q = _run(s)
    out: dict[int, list[str]] = {}
    for rid, mid in conn.execute(q.refs, {"ids": list(ids)}):
        out.setdefault(rid, []).append(mid)
    return out


def queued_with_message_ids(s: Session, mids: Iterable[str]) -> dict[str, int]:
    """Message-ID → the oldest queued mail that has it, for those of `mids` still queued."""
    wanted = list(set(mids))
    if not wanted:
        return {}
    conn, q = _run(s)
    rows = conn.execute(q.queued_ids, {"mids": wanted})
    return {mid: int(rid) for mid, rid in rows if mid is not None}


def seen_message_ids(s: Session, mids: Iterable[str]) -> set[str]:
    """Those of `mids` the gateway has seen: received and no longer queued, sent, or a
    ticket's root."""
    wanted = list(set(mids))
    if not wanted:
        return set()
    conn, q = _run(s)
    seen: set[str] = set()
    for stmt in q.seen:
        seen.update(v for v in conn.execute(stmt, {"mids": wanted}).scalars() if v)
    return seen


def defer(s: Session, record_id: int, *, until: datetime) -> None:
    """Leave a queued mail for later: not claimed before `until` (or until released)."""
    conn, q = _run(s)
    conn.execute(q.defer, {"rid": record_id, "until": until})


def release_replies_to(s: Session, message_ids: Iterable[str]) -> None:
    """Queued mails that name one of `message_ids` may be claimed at once (their parent is
    processed)."""
    mids = list(set(message_ids))
    if not mids:
        return
    conn, q = _run(s)
    ids = list(conn.execute(q.waiting_replies, {"mids": mids}).scalars())
    if ids:
        conn.execute(q.release, {"ids": ids})


@dataclass(frozen=True)
class Outcome:
    """What became of a claimed mail, for `finish_many`; ``had_refs``: it named Message-IDs
    (its rows in inbound_refs go with it)."""

    record_id: int
    outcome: str
    rule: str
    ticket_id: int | None
    detail: dict[str, Any]
    now: datetime
    had_refs: bool = True


def finish(
    s: Session,
    record_id: int,
    *,
    outcome: str,
    rule: str,
    ticket_id: int | None,
    detail: dict[str, Any],
    now: datetime,
    had_refs: bool = True,
) -> None:
    """Set a claimed mail's outcome: it leaves the queue (with the Message-IDs it named, when
    it `had_refs`)."""
    finish_many(s, [Outcome(record_id, outcome, rule, ticket_id, detail, now, had_refs)])


def finish_many(s: Session, outcomes: Sequence[Outcome]) -> None:
    """`finish` for several claimed mails: one UPDATE and one DELETE, each an executemany."""
    if not outcomes:
        return
    conn, q = _run(s)
    conn.execute(
        q.finish,
        [
            {
                "rid": o.record_id,
                "outcome": o.outcome,
                "rule": o.rule,
                "ticket_id": o.ticket_id,
                "detail": o.detail,
                "now": o.now,
            }
            for o in outcomes
        ],
    )
    named = [{"rid": o.record_id} for o in outcomes if o.had_refs]
    if named:
        conn.execute(q.drop_refs, named)


def note_failure(s: Session, record_id: int, *, error: str) -> int:
    """One more failed attempt at a queued mail; returns how many there have been."""
    conn, q = _run(s)
    return int(conn.execute(q.fail, {"rid": record_id, "error": error}).scalar_one())


def record(s: Session, record_id: int) -> m.InboundMail | None:
    return s.get(m.InboundMail, record_id)


def records_with_message_id(s: Session, message_id: str) -> list[m.InboundMail]:
    return list(
        s.scalars(
            select(m.InboundMail)
            .where(m.InboundMail.message_id == message_id)
            .order_by(m.InboundMail.id)
        )
    )


def quarantined(s: Session) -> list[m.InboundMail]:
    return list(
        s.scalars(
            select(m.InboundMail)
            .where(m.InboundMail.outcome == "quarantined")
            .order_by(m.InboundMail.id)
        )
    )


def raw_of(s: Session, rec: m.InboundMail) -> bytes | None:
    blob = s.get(m.Blob, rec.raw_sha256) if rec.raw_sha256 else None
    return bytes(blob.data) if blob is not None else None


def requeue(s: Session, record_id: int) -> bool:
    """Put a quarantined mail back into the queue (`quarantine release`)."""
    res = s.execute(
        update(m.InboundMail)
        .where(m.InboundMail.id == record_id, m.InboundMail.outcome == "quarantined")
        .values(
            outcome=QUEUED,
            rule=RELEASED,
            attempts=0,
            last_error="",
            not_before=None,
            processed_at=None,
        )
    )
    return bool(res.rowcount)  # type: ignore[attr-defined]


def sender_mails_since(
    s: Session,
    *,
    sender: str,
    before_id: int,
    windows: tuple[tuple[datetime, int], tuple[datetime, int]],
) -> tuple[int, int]:
    """How many mails from `sender` arrived before record `before_id` within each of two
    windows, ((since, limit) for the burst, then for the hour), each counted up to its limit
    only, so that a flood costs no more per mail; one round trip."""
    conn, q = _run(s)
    (burst_since, burst_limit), (since, limit) = windows
    params = {
        "sender": sender,
        "before_id": before_id,
        "burst_since": burst_since,
        "burst_limit": burst_limit,
        "since": since,
        "limit": limit,
    }
    row = conn.execute(q.recent, params).one()
    return int(row[0] or 0), int(row[1] or 0)


def queue_counts(s: Session) -> dict[str, int]:
    """Processing records by outcome (the queue's depth is `queued`)."""
    return {
        outcome: int(n)
        for outcome, n in s.execute(
            select(m.InboundMail.outcome, func.count()).group_by(m.InboundMail.outcome)
        )
    }


def ticket_for_message_id(s: Session, message_id: str) -> int | None:
    """Threading rule 2: the ticket of a Message-ID we sent, received, or a ticket's root."""
    conn, q = _run(s)
    for stmt in q.by_message_id:
        found = conn.execute(stmt, {"mid": message_id}).scalar()
        if found is not None:
            return int(found)
    return None


def outbox_row_with_message_id(s: Session, message_id: str) -> m.Outbox | None:
    return s.scalars(select(m.Outbox).where(m.Outbox.message_id == message_id)).first()
