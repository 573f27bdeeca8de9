"""The outbox: claim due rows (SKIP LOCKED across workers), record sent / retry / dead-letter.

One loop delivers every channel (`ChannelSender`: mail, Slack posts): the worker claims a
batch of due rows of the channels it has senders for, hands each sender its part, and
records the outcomes of the whole batch in one transaction (`record`).

The delivery worker's calls (`fan_out`, `claim`, `record`) raise StorageUnavailable
when the database is down or read-only, after `on_storage_error` (which drops the pooled
connections), so that the worker can tell an outage from a defect."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from gateway.domain.tokens import ReplyTokens, reply_address
from gateway.service.clock import Clock
from gateway.service.directory import Directory, DirectoryCache
from gateway.service.notify import MailIdentity, Notifier, retry_delay
from gateway.service.storage import storage_errors
from store import models as m
from store import outbox_queries as q
from store.db import read_session

LEASE = timedelta(minutes=5)
FAN_OUT_TRIES = 5
SQLITE_BUSY, SQLITE_LOCKED = 5, 6  # sqlite3.h primary result codes

log = logging.getLogger("ticketgate.outbox")


@dataclass(frozen=True)
class OutboxItem:
    id: int
    kind: str
    recipient: str
    message_id: str
    payload: dict[str, Any]
    attempts: int  # this attempt included
    ticket_id: int | None = None
    channel: str = "email"


@dataclass(frozen=True)
class DeliveryOutcome:
    """What became of one claimed row: delivered, try again later, or never going to work."""

    item_id: int
    result: Literal["sent", "retry", "dead"]
    error: str = ""
    retry_after: float | None = None  # seconds to wait, e.g. Slack's 429 Retry-After


class ChannelSender(Protocol):
    """Delivers the outbox rows of one channel. Gets a batch of claimed rows, returns one
    outcome per row (a row without an outcome is retried); it does not touch the database."""

    channel: str  # the outbox.channel it delivers: "email", "slack"

    def deliver(self, items: Sequence[OutboxItem]) -> list[DeliveryOutcome]: ...

    def close(self) -> None:
        """The worker stops: let go of what is kept between batches (threads, sessions)."""
        ...


# Another channel's rows for one event, written at fan-out beside the mail rows (the Slack
# channel post, its thread, DMs): (session, event, the event's notifier) → rows added.
ChannelFanOut = Callable[[Session, m.OutboxEvent, Notifier], object]


class OutboxService:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        clock: Clock,
        identity: MailIdentity,
        tokens: ReplyTokens | None,
        auto_mail_per_day: int = 40,
        auto_mail_per_ticket_hour: int = 10,
        notices_per_sender_hour: int = 10,
        max_attempts: int = 8,
        backoff_seconds: float = 30.0,
        backoff_max_seconds: float = 3600.0,
        lease: timedelta = LEASE,
        on_storage_error: Callable[[], None] = lambda: None,
        channel_fan_outs: Sequence[ChannelFanOut] = (),
    ) -> None:
        self.channel_fan_outs = tuple(channel_fan_outs)
        self.sessions = sessions
        self.clock = clock
        self.identity = identity
        self.tokens = tokens
        self.auto_mail_per_day = auto_mail_per_day
        self.auto_mail_per_ticket_hour = auto_mail_per_ticket_hour
        self.notices_per_sender_hour = notices_per_sender_hour
        self.max_attempts = max_attempts
        self.backoff_seconds = backoff_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.lease = lease
        self.on_storage_error = on_storage_error
        # Organization rows kept from one fan-out batch to the next while the directory
        # version stays (each worker has its own OutboxService, used by one thread).
        self._directory = DirectoryCache()

    def fan_out(self, limit: int = 20) -> int:
        """Turn up to ``limit`` pending events into per-recipient outbox rows; returns how many
        events were handled.

        Events are claimed in id order with `FOR UPDATE SKIP LOCKED` (PostgreSQL; on SQLite the
        write transaction serialises workers), fanned out and marked done in one transaction:
        each event yields its rows exactly once. Two workers may still collide on the daily
        counters of the loop breaker (a deadlock on PostgreSQL, a busy database on SQLite):
        then the whole batch is rolled back and tried again. An event whose fan-out fails for
        any other reason is marked failed, with the error, instead of blocking those after it.
        A database that is down is no collision: StorageUnavailable at once."""
        with storage_errors(self.on_storage_error):
            for attempt in range(1, FAN_OUT_TRIES + 1):
                try:
                    return self._fan_out(limit)
                except OperationalError as e:
                    if attempt == FAN_OUT_TRIES or not _collided(e):
                        raise
                    log.info("outbox events: fan-out collided with another worker; again")
                    time.sleep(0.05 * attempt)
        return 0  # pragma: no cover - the loop returns or raises

    def _fan_out(self, limit: int) -> int:
        """The batch in one go; if one of its events fails, the batch again with each event
        in a SAVEPOINT of its own, so that one is marked failed and the others go on (the
        SAVEPOINTs cost three statements an event: paid only when something failed)."""
        try:
            return self._fan_out_batch(limit, isolate=False)
        except _EventFailed:
            self._directory.clear()  # a rollback expired the rows it loaded
            return self._fan_out_batch(limit, isolate=True)
        except BaseException:
            self._directory.clear()
            raise

    def _fan_out_batch(self, limit: int, *, isolate: bool) -> int:
        with self.sessions() as s, s.begin():
            events = q.lock_pending_events(s, limit=limit)
            self._directory.sync(s.connection())
            d = Directory(s, self._directory)
            done_at = self.clock.now()
            # One notifier for the batch (its look-ups serve every event); its clock is each
            # event's own time.
            notifier = Notifier(
                s,
                identity=self.identity,
                tokens=self.tokens,
                now=done_at,
                auto_mail_per_day=self.auto_mail_per_day,
                auto_mail_per_ticket_hour=self.auto_mail_per_ticket_hour,
                notices_per_sender_hour=self.notices_per_sender_hour,
                directory=d,
            )
            if not isolate:
                try:
                    notifier.fan_out_batch(events)
                    for ev in events:
                        notifier.now = datetime.fromisoformat(ev.payload["at"])
                        for extra in self.channel_fan_outs:
                            extra(s, ev, notifier)
                except DBAPIError:
                    raise
                except Exception as e:
                    raise _EventFailed() from e  # rolls the batch back
                for ev in events:
                    ev.state, ev.done_at = "done", done_at
                return len(events)
            for ev in events:
                try:
                    with s.begin_nested():
                        notifier.fan_out(ev)
                        for extra in self.channel_fan_outs:
                            extra(s, ev, notifier)
                        ev.state = "done"
                except DBAPIError:
                    raise
                except Exception as e:
                    log.exception("outbox event %s: cannot fan out", ev.id)
                    # Its SAVEPOINT was rolled back: forget what the look-ups learnt inside it.
                    notifier.forget()
                    ev.state = "failed"
                    ev.last_error = f"{type(e).__name__}: {e}"[:2000]
                ev.done_at = done_at
            return len(events)

    def claim(self, limit: int = 20, channels: Collection[str] = ("email",)) -> list[OutboxItem]:
        """Take due rows of ``channels`` for this worker: pending and due, or 'sending' whose
        lease ran out; each is `sending` with its attempt counted when this returns.

        On PostgreSQL `FOR UPDATE SKIP LOCKED` lets several workers claim disjoint rows; on
        SQLite the write transaction (BEGIN IMMEDIATE) serialises claims."""
        now = self.clock.now()
        with storage_errors(self.on_storage_error), self.sessions() as s, s.begin():
            rows = q.claim_due_outbox(
                s, now=now, limit=limit, channels=channels, lease_until=now + self.lease
            )
            return [
                OutboxItem(
                    r.id,
                    r.kind,
                    r.recipient,
                    r.message_id,
                    dict(r.payload),
                    r.attempts + 1,
                    r.ticket_id,
                    r.channel,
                )
                for r in rows
            ]

    def envelope_sender(self, item: OutboxItem) -> str:
        """VERP (RFC 5321 reverse path per mail): `<reply_local>+<bounce token>@<domain>`, the
        token naming this outbox row; without a token key, the plain From address."""
        if self.tokens is None:
            return self.identity.from_address
        token = self.tokens.issue(
            ticket_id=item.ticket_id or 0,
            participant_id=item.id,
            purpose="bounce",
            now=self.clock.now(),
        )
        return reply_address(self.identity.reply_local, token, self.identity.domain)

    def record(self, outcomes: Sequence[DeliveryOutcome]) -> dict[int, str]:
        """Record a batch's outcomes in one transaction; returns each row's new state.

        `sent` rows are marked sent. `retry` rows are due again after the backoff of their
        attempt count, or after ``retry_after`` when the channel named a time (a rate limit:
        that attempt is not counted, so a busy channel never dead-letters a post). `dead`
        rows, and `retry` rows out of attempts, are dead-lettered."""
        if not outcomes:
            return {}
        now = self.clock.now()
        with storage_errors(self.on_storage_error), self.sessions() as s, s.begin():
            states: dict[int, str] = {}
            sent = [o.item_id for o in outcomes if o.result == "sent"]
            if sent:
                q.mark_sent(s, sent, now=now)
                states |= dict.fromkeys(sent, "sent")
            unsent = [o for o in outcomes if o.result != "sent"]
            if unsent:
                attempts = q.lock_attempts(s, {o.item_id for o in unsent})
                changes: list[dict[str, Any]] = []
                for o in unsent:
                    tries = attempts.get(o.item_id)
                    if tries is None:
                        states[o.item_id] = "gone"
                        continue
                    if o.result == "retry" and o.retry_after is not None:
                        state, tries = "pending", max(0, tries - 1)
                        due = now + timedelta(seconds=max(0.0, o.retry_after))
                    elif o.result == "dead" or tries >= self.max_attempts:
                        state, due = "dead", now
                    else:
                        state = "pending"
                        due = now + retry_delay(
                            tries, self.backoff_seconds, self.backoff_max_seconds
                        )
                    changes.append(
                        {
                            "oid": o.item_id,
                            "new_state": state,
                            "error": o.error[:2000],
                            "tries": tries,
                            "due": due,
                        }
                    )
                    states[o.item_id] = state
                q.mark_unsent(s, changes)
            return states

    def sent(self, item_id: int) -> None:
        self.record([DeliveryOutcome(item_id, "sent")])

    def failed(self, item_id: int, error: str, *, permanent: bool) -> str:
        """Retry later with backoff, or dead-letter after the last try or a permanent error."""
        outcome = DeliveryOutcome(item_id, "dead" if permanent else "retry", error)
        return self.record([outcome]).get(item_id, "gone")

    def retry(self, ids: list[int] | None = None) -> int:
        """`outbox retry`: put dead (or given) rows back to pending, due now."""
        now = self.clock.now()
        with self.sessions() as s, s.begin():
            n = 0
            for r in q.outbox_by_ids_or_dead(s, ids):
                if r.state == "sent":
                    continue
                r.state = "pending"
                r.attempts = 0
                r.next_attempt_at = now
                n += 1
            return n

    def rows(self, state: str | None = None) -> list[dict[str, Any]]:
        with read_session(self.sessions) as s:
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
                for r in q.outbox_rows(s, state)
            ]


class _EventFailed(Exception):
    """An event of a batch fanned out without SAVEPOINTs failed: do the batch with them."""


def _collided(e: OperationalError) -> bool:
    """A deadlock or serialization failure (PostgreSQL) or a busy, locked database (SQLite):
    another worker held what this one needed. Not a connection that broke or a file that
    cannot be opened or written: trying again at once would not help those."""
    if e.connection_invalidated:
        return False
    if getattr(e.orig, "sqlstate", None) in ("40P01", "40001"):
        return True
    # sqlite3 (Python 3.11+): the primary result code is the low byte of the extended one.
    code = getattr(e.orig, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (SQLITE_BUSY, SQLITE_LOCKED)


def _iso(d: datetime | None) -> str | None:
    return d.isoformat() if d else None
