"""The outbox: claim due rows (SKIP LOCKED across workers), record sent / retry / dead-letter."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from gateway.service.clock import Clock
from gateway.service.notify import retry_delay
from store import models as m

LEASE = timedelta(minutes=5)


@dataclass(frozen=True)
class OutboxItem:
    id: int
    kind: str
    recipient: str
    message_id: str
    payload: dict[str, Any]
    attempts: int


class OutboxService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        clock: Clock,
        max_attempts: int = 8,
        backoff_seconds: float = 30.0,
        backoff_max_seconds: float = 3600.0,
    ) -> None:
        self.sessions = sessions
        self.clock = clock
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.backoff_max_seconds = backoff_max_seconds

    def claim(self, limit: int = 20) -> list[OutboxItem]:
        """Take due rows for this worker: pending and due, or 'sending' whose lease ran out.

        On PostgreSQL `FOR UPDATE SKIP LOCKED` lets several workers claim disjoint rows; on
        SQLite the write transaction (BEGIN IMMEDIATE) serialises claims."""
        now = self.clock.now()
        with self.sessions() as s, s.begin():
            rows = list(
                s.scalars(
                    select(m.Outbox)
                    .where(
                        or_(m.Outbox.state == "pending", m.Outbox.state == "sending"),
                        m.Outbox.next_attempt_at <= now,
                    )
                    .order_by(m.Outbox.id)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            )
            for r in rows:
                r.state = "sending"
                r.attempts += 1
                r.next_attempt_at = now + LEASE
            return [
                OutboxItem(r.id, r.kind, r.recipient, r.message_id, dict(r.payload), r.attempts)
                for r in rows
            ]

    def sent(self, item_id: int) -> None:
        with self.sessions() as s, s.begin():
            r = s.get(m.Outbox, item_id, with_for_update=True)
            if r is not None:
                r.state = "sent"
                r.sent_at = self.clock.now()
                r.last_error = ""

    def failed(self, item_id: int, error: str, *, permanent: bool) -> str:
        """Retry later with backoff, or dead-letter after the last try or a permanent error."""
        now = self.clock.now()
        with self.sessions() as s, s.begin():
            r = s.get(m.Outbox, item_id, with_for_update=True)
            if r is None:
                return "gone"
            r.last_error = error[:2000]
            if permanent or r.attempts >= self.max_attempts:
                r.state = "dead"
            else:
                r.state = "pending"
                r.next_attempt_at = now + retry_delay(
                    r.attempts, self.backoff_seconds, self.backoff_max_seconds
                )
            return r.state

    def retry(self, ids: list[int] | None = None) -> int:
        """`outbox retry`: put dead (or given) rows back to pending, due now."""
        now = self.clock.now()
        with self.sessions() as s, s.begin():
            q = select(m.Outbox)
            q = q.where(m.Outbox.id.in_(ids)) if ids else q.where(m.Outbox.state == "dead")
            n = 0
            for r in s.scalars(q):
                if r.state == "sent":
                    continue
                r.state = "pending"
                r.attempts = 0
                r.next_attempt_at = now
                n += 1
            return n

    def rows(self, state: str | None = None) -> list[dict[str, Any]]:
        with self.sessions() as s:
            q = select(m.Outbox).order_by(m.Outbox.id)
            if state:
                q = q.where(m.Outbox.state == state)
            return [
                {
                    "id": r.id,
                    "ticket": f"TKT-{r.ticket_id}" if r.ticket_id else None,
                    "kind": r.kind,
                    "recipient": r.recipient,
                    "message_id": r.message_id,
                    "state": r.state,
                    "attempts": r.attempts,
                    "next_attempt_at": _iso(r.next_attempt_at),
                    "last_error": r.last_error,
                    "created_at": _iso(r.created_at),
                    "sent_at": _iso(r.sent_at),
                }
                for r in s.scalars(q)
            ]


def _iso(d: datetime | None) -> str | None:
    return d.isoformat() if d else None
