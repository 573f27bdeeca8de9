"""Events → outbox rows: one event row in the change's transaction, one row per recipient at fan-out."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from gateway.domain.lifecycle import Action, AssignmentType, Role
from gateway.domain.subjects import clean_header_text
from gateway.domain.thread_index import thread_guid, thread_index
from gateway.domain.tokens import ReplyTokens, reply_address
from gateway.domain.visibility import sees_hidden
from gateway.service.commands import CommandResult
from gateway.service.directory import Directory, TicketAt
from store import models as m
from store import outbox_queries as oq
from store import ticket_queries as tq

# Kinds that are automatic mail in the sense of RFC 3834 (counted by the loop breaker).
AUTOMATIC_KINDS = frozenset(
    {
        "ack",
        "status_change",
        "escalation",
        "feedback_request",
        "reminder",
        "refusal",
        "attachments_not_kept",
    }
)

# Loop breaker per (ticket, recipient), after Zammad's notification_email.rb (≤10 mails in
# 10 min … 100 in 10 h): a ticket that ping-pongs with an autoresponder stops mailing it.
TICKET_RECIPIENT_WINDOW = timedelta(hours=1)

# Notices of what a person did (a new ticket, a new message) are not automatic mail, but one
# sender's flood must not become a flood in every recipient's inbox: at most
# ``notices_per_sender_hour`` of them per (recipient, sender) within this window. Those over
# it are kept as outbox rows in state ``suppressed`` (never sent; `outbox retry ID` sends one).
NOTICE_KINDS = frozenset({"new_ticket", "new_message"})
NOTICE_WINDOW = timedelta(hours=1)

# A notice shows the ticket's last HISTORY_LINES history entries as of its event; a fan-out
# batch reads each ticket's newest HISTORY_WINDOW entries once (a ticket with several events
# in the batch needs a few more than five).
HISTORY_LINES = 5
HISTORY_WINDOW = 15

_HINTS: dict[Role, tuple[str, ...]] = {
    Role.ASSIGNEE: (
        "#take",
        "#deliver",
        "#return <remark>",
        "#hold <remark>",
        "#pending <remark>",
        "#reject <remark>",
        "#to_higher_authority",
        "#assign <email>",
        "#cc <email>",
        "#category A/B",
        "#priority high",
    ),
    Role.OWNER: ("#release",),
    Role.HIGHER_AUTHORITY: ("#approve", "#escalate", "#reject <remark>"),
    Role.REQUESTER: ("#close", "#cancel", "#reopen", "#cc <email>"),
}


@dataclass(frozen=True)
class MailIdentity:
    """How the gateway signs its mail: domain, From, reply-address local part, X-Loop value."""

    domain: str
    from_address: str
    from_name: str
    reply_local: str
    loop_token: str


@dataclass
class _Caps:
    """What the loop breaker and the notice cap count, for one fan-out batch: read in a few
    queries before its first event and kept up to date as its rows are made."""

    suppressed: set[str] = field(default_factory=set)
    # (ticket, recipient) → when its automatic rows of the last hour were made
    automatic: dict[tuple[int, str], list[datetime]] = field(default_factory=dict)
    # (sender, recipient) → when the notices it caused that count were made
    notices: dict[tuple[int, str], list[datetime]] = field(default_factory=dict)
    # (address, day) → automatic mails counted; as read (locked) and as now
    day_counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    day_read: dict[tuple[str, str], int] = field(default_factory=dict)

    def changed_days(self) -> dict[tuple[str, str], int]:
        return {k: n for k, n in self.day_counts.items() if n != self.day_read.get(k)}


def role_label(roles: frozenset[Role]) -> str:
    for r in (Role.OWNER, Role.ASSIGNEE, Role.HIGHER_AUTHORITY, Role.REQUESTER, Role.RC, Role.RHC):
        if r in roles:
            return r.value
    return "participant"


def commands_hint(roles: frozenset[Role]) -> tuple[str, ...]:
    out: list[str] = []
    for r in (Role.REQUESTER, Role.ASSIGNEE, Role.OWNER, Role.HIGHER_AUTHORITY):
        if r in roles:
            out.extend(h for h in _HINTS[r] if h not in out)
    return tuple(out)


def new_message_id(ref: str, domain: str) -> str:
    return f"{uuid.uuid4().hex}.{ref.lower()}@{domain}"


class Notifier:
    """Notification events for what happened to a ticket, and their fan-out to outbox rows.

    ``enqueue`` runs in the change's transaction and writes one ``outbox_events`` row with
    what must be captured then (the ticket's routing, status, newest history entry, actor,
    exclusions, body …). ``fan_out`` runs in the delivery worker and turns such an event into
    one ``outbox`` row per recipient, each filtered for its audience (visibility decided here,
    by ``domain.visibility``, never in templates)."""

    def __init__(
        self,
        session: Session,
        *,
        identity: MailIdentity,
        tokens: ReplyTokens | None,
        now: datetime,
        auto_mail_per_day: int = 40,
        auto_mail_per_ticket_hour: int = 10,
        notices_per_sender_hour: int = 10,
        directory: Directory | None = None,
        connection: Connection | None = None,
    ) -> None:
        self.s = session
        # The unit's connection, when it gives it: asking the session each time is not free.
        self._conn = connection
        self.d = directory or Directory(session)
        self.identity = identity
        self.tokens = tokens
        self.now = now
        self.auto_mail_per_day = auto_mail_per_day
        self.auto_mail_per_ticket_hour = auto_mail_per_ticket_hour
        self.notices_per_sender_hour = notices_per_sender_hour
        # Per ticket: the newest status_history row of this unit, or its id looked up once.
        self._newest_history: dict[int, int] = {}
        # Per department: its active members, looked up once in this unit (fan-out batches).
        self._members: dict[int, list[m.Employee]] = {}
        # Per ticket: its newest history entries, read for the fan-out batch at hand.
        self._history: dict[int, list[m.StatusHistory]] = {}
        # Events this unit recorded: after its commit the delivery workers are woken.
        self.enqueued = 0
        # Inside `batched`: the events waiting to be written in one INSERT.
        self._batch: list[dict[str, Any]] | None = None

    def forget(self) -> None:
        """A SAVEPOINT of this unit was rolled back: drop what the look-ups learnt."""
        self._members.clear()
        self._history.clear()
        self.d.forget_all()

    def _members_of(self, department_id: int) -> list[m.Employee]:
        if department_id not in self._members:
            self._members[department_id] = self.d.members(department_id)
        return self._members[department_id]

    def participants(self, ticket: m.Ticket | TicketAt) -> list[tuple[m.Employee, frozenset[Role]]]:
        """Every active person on the ticket with their roles, requester first."""
        ids: list[int] = [ticket.from_employee_id]
        if ticket.owner_id:
            ids.append(ticket.owner_id)
        if ticket.assignment_type == AssignmentType.INDIVIDUAL.value and ticket.to_employee_id:
            ids.append(ticket.to_employee_id)
        else:
            ids.extend(e.id for e in self._members_of(ticket.to_department_id))
        for c in self.d.copies_of(ticket):
            if c.employee_id is not None:
                ids.append(c.employee_id)
            elif c.department_id is not None:
                ids.extend(e.id for e in self._members_of(c.department_id))
        seen: set[int] = set()
        out: list[tuple[m.Employee, frozenset[Role]]] = []
        for i in ids:
            if i in seen:
                continue
            seen.add(i)
            e = self.d.employee_by_id(i)
            roles = self.d.roles_of(ticket, e)
            if roles:
                out.append((e, roles))
        return out

    def history_added(self, ticket_id: int, row_id: int) -> None:
        """The unit added a history entry: it is the newest one events of this ticket show."""
        self._newest_history[ticket_id] = row_id

    def _newest_history_id(self, ticket_id: int) -> int:
        newest = self._newest_history.get(ticket_id)
        if newest is None:
            found = tq.newest_history_id(self._conn or self.s.connection(), ticket_id)
            newest = self._newest_history[ticket_id] = found
        return newest

    def history_lines(self, ticket_id: int, upto: int) -> list[dict[str, str]]:
        """The last five history entries up to (and with) entry ``upto``: from what
        `_read_batch` looked up for the batch when that suffices, else asked for."""
        held = self._history.get(ticket_id)
        entries: list[m.StatusHistory] | None = None
        if held is not None:
            wanted = [h for h in held if h.id <= upto]
            # `held` is the ticket's newest HISTORY_WINDOW entries up to the batch's newest
            # wanted one: complete when fewer came back, else enough when five are in it.
            if len(wanted) >= HISTORY_LINES or len(held) < HISTORY_WINDOW:
                entries = list(reversed(wanted[:HISTORY_LINES]))
        if entries is None:
            entries = tq.history_upto(self.s, ticket_id, upto, limit=HISTORY_LINES)
        return [
            {"status": h.status, "actor": h.actor_label, "at": h.at.isoformat(), "remark": h.remark}
            for h in entries
        ]

    def target_label(self, ticket: m.Ticket | TicketAt) -> str:
        if ticket.assignment_type == AssignmentType.INDIVIDUAL.value and ticket.to_employee_id:
            return self.d.employee_by_id(ticket.to_employee_id).name
        dep = self.d.get(m.Department, ticket.to_department_id)
        return dep.name if dep else ""

    def _allow_automatic(self, ticket_id: int, addresses: list[str], caps: _Caps) -> set[str]:
        """RFC 3834 loop breaker: of ``addresses``, those that may get one more automatic mail.

        Caps per (ticket, recipient) and hour and per address and day; an address that
        hard-bounced repeatedly gets none. Counted from what `_read_batch` read for the batch,
        kept up to date as the batch's rows are made (`_rows_of`)."""
        since = self.now - TICKET_RECIPIENT_WINDOW
        allowed: set[str] = set()
        for a in sorted(addresses):
            if a in caps.suppressed:
                continue
            recent = sum(1 for at in caps.automatic.get((ticket_id, a), ()) if at > since)
            if recent >= self.auto_mail_per_ticket_hour:
                continue
            day = (a, self.now.date().isoformat())
            caps.day_counts[day] += 1  # counted whether or not it is over the cap, as before
            if caps.day_counts[day] <= self.auto_mail_per_day:
                allowed.add(a)
        return allowed

    def _over_notice_cap(self, sender_id: int, addresses: list[str], caps: _Caps) -> set[str]:
        """Of ``addresses``, those that already got ``notices_per_sender_hour`` notices caused
        by employee ``sender_id`` within the last hour (suppressed ones not counted)."""
        since = self.now - NOTICE_WINDOW
        return {
            a
            for a in addresses
            if sum(1 for at in caps.notices.get((sender_id, a), ()) if at > since)
            >= self.notices_per_sender_hour
        }

    def _suppressed_note(self, sender_id: int | None) -> str:
        """Why a notice row was not sent, for `outbox list`."""
        sender = self.d.employee_by_id(sender_id).email if sender_id is not None else "system"
        return f"not sent: over {self.notices_per_sender_hour} notices an hour from {sender}"

    # ---- in the change's transaction ------------------------------------------------------------
    def enqueue(
        self,
        ticket: m.Ticket,
        kind: str,
        *,
        actor: m.Employee | None,
        exclude: frozenset[int] = frozenset(),
        only: frozenset[int] | None = None,
        hidden: bool = False,
        body: str = "",
        remark: str = "",
        in_reply_to: str | None = None,
        applied: tuple[CommandResult, ...] = (),
        extra: dict[str, str] | None = None,
    ) -> None:
        """Record one notification event; the delivery worker fans it out (``fan_out``)."""
        copies = self.d.copies(ticket.id)
        payload: dict[str, Any] = {
            "ticket": {
                "org_id": ticket.org_id,
                "from_employee_id": ticket.from_employee_id,
                "assignment_type": ticket.assignment_type,
                "to_employee_id": ticket.to_employee_id,
                "to_department_id": ticket.to_department_id,
                "owner_id": ticket.owner_id,
                "status": ticket.status,
                "subject": ticket.subject,
                "created_at": ticket.created_at.isoformat(),
                "root_message_id": ticket.root_message_id,
                "copies_upto": max((c.id for c in copies), default=0),
            },
            "history_upto": self._newest_history_id(ticket.id),
            "actor_id": actor.id if actor is not None else None,
            "actor": actor.name if actor is not None else "system",
            "exclude": sorted(exclude),
            "only": sorted(only) if only is not None else None,
            "hidden": hidden,
            "body": body,
            "remark": remark,
            "in_reply_to": in_reply_to,
            "applied_commands": [
                {"command": c.command, "applied": c.applied, "reason": c.reason} for c in applied
            ],
            "extra": dict(extra or {}),
            "at": self.now.isoformat(),
        }
        # A Core INSERT: the unit never reads the event back.
        self.enqueued += 1
        row = oq.event_row(ticket_id=ticket.id, kind=kind, payload=payload, created_at=self.now)
        if self._batch is not None:
            self._batch.append(row)
        else:
            oq.insert_events(self._conn or self.s.connection(), [row])

    @contextmanager
    def batched(self) -> Iterator[None]:
        """The events enqueued inside the block are written when it ends, in one INSERT (the
        intake runner's batch of mails). Only for a block that no SAVEPOINT rolls back in
        part: an exception discards them, as the transaction's rollback would."""
        self._batch = []
        try:
            yield
            oq.insert_events(self._conn or self.s.connection(), self._batch)
        finally:
            self._batch = None

    # ---- in the delivery worker ------------------------------------------------------------------
    def fan_out(self, event: m.OutboxEvent) -> list[dict[str, Any]]:
        """`fan_out_batch` of one event."""
        return self.fan_out_batch([event])

    def fan_out_batch(self, events: Sequence[m.OutboxEvent]) -> list[dict[str, Any]]:
        """One outbox row per recipient of each event, as of the event (its time, its
        snapshot of the ticket), in event order; written in one INSERT. Returns the rows.

        What the events' audiences and caps need is looked up for the whole batch in a few
        queries (`_read_batch`), not per event."""
        self.d.load_copies({ev.ticket_id for ev in events})
        planned = [(ev, self._audience(ev)) for ev in events]
        caps = self._read_batch(planned)
        rows: list[dict[str, Any]] = []
        for ev, audience in planned:
            rows += self._rows_of(ev, audience, caps)
        oq.set_auto_mail_counters(self.s, caps.changed_days())
        oq.insert_outbox_rows(self._conn or self.s.connection(), rows)
        return rows

    def _audience(self, event: m.OutboxEvent) -> list[tuple[m.Employee, frozenset[Role]]]:
        """Who an event is for, before the caps: its participants less the excluded, only
        those it names, and for a hidden one only who sees hidden messages (SPEC §1.4)."""
        e = event.payload
        exclude = frozenset(e["exclude"])
        only = frozenset(e["only"]) if e["only"] is not None else None
        hidden = bool(e["hidden"])
        return [
            (emp, roles)
            for emp, roles in self.participants(ticket_at(event))
            if emp.id not in exclude
            and (only is None or emp.id in only)
            and (not hidden or sees_hidden(roles))
        ]

    def _read_batch(
        self, planned: Sequence[tuple[m.OutboxEvent, list[tuple[m.Employee, frozenset[Role]]]]]
    ) -> _Caps:
        """The look-ups of a batch, one query each: suppressed addresses, the automatic rows
        and notices of the last hour that the caps count, the day counters (locked), and the
        tickets' newest history entries."""
        caps = _Caps()
        if not planned:
            return caps
        addresses = {emp.email.lower() for _, aud in planned for emp, _ in aud}
        times = [datetime.fromisoformat(ev.payload["at"]) for ev, _ in planned]
        automatic = [ev for ev, _ in planned if ev.kind in AUTOMATIC_KINDS]
        notices = [
            ev
            for ev, _ in planned
            if ev.kind in NOTICE_KINDS and ev.payload["actor_id"] is not None
        ]
        if automatic and addresses:
            caps.suppressed = oq.suppressed_among(self.s, addresses)
            for ticket_id, recipient, at in oq.automatic_rows_since(
                self.s,
                ticket_ids={ev.ticket_id for ev in automatic},
                recipients=addresses,
                kinds=AUTOMATIC_KINDS,
                since=min(times) - TICKET_RECIPIENT_WINDOW,
            ):
                caps.automatic.setdefault((ticket_id, recipient), []).append(at)
            days = {
                (emp.email.lower(), datetime.fromisoformat(ev.payload["at"]).date().isoformat())
                for ev, aud in planned
                if ev.kind in AUTOMATIC_KINDS
                for emp, _ in aud
            }
            caps.day_counts = Counter(oq.lock_auto_mail_counters(self.s, days))
            caps.day_read = dict(caps.day_counts)
        if notices and addresses:
            for sender, recipient, at in oq.notice_rows_since(
                self.s,
                sender_ids={int(ev.payload["actor_id"]) for ev in notices},
                recipients=addresses,
                kinds=NOTICE_KINDS,
                since=min(times) - NOTICE_WINDOW,
            ):
                caps.notices.setdefault((sender, recipient), []).append(at)
        upto: dict[int, int] = {}
        for ev, _ in planned:
            upto[ev.ticket_id] = max(upto.get(ev.ticket_id, 0), int(ev.payload["history_upto"]))
        self._history = tq.history_upto_many(self.s, upto, window=HISTORY_WINDOW)
        return caps

    def _rows_of(
        self,
        event: m.OutboxEvent,
        audience: list[tuple[m.Employee, frozenset[Role]]],
        caps: _Caps,
    ) -> list[dict[str, Any]]:
        """The outbox rows of one event of the batch, after the caps; counted in ``caps``."""
        self.now = datetime.fromisoformat(event.payload["at"])
        e = event.payload
        ticket = ticket_at(event)
        kind = event.kind
        hidden = bool(e["hidden"])
        in_reply_to: str | None = e["in_reply_to"]
        actor_id: int | None = e["actor_id"]
        ref = f"TKT-{ticket.id}"
        history = self.history_lines(ticket.id, int(e["history_upto"]))
        target = self.target_label(ticket)
        requester = self.d.employee_by_id(ticket.from_employee_id).name
        root = ticket.root_message_id
        references = tuple(x for x in (root, in_reply_to) if x)
        references = tuple(dict.fromkeys(references))
        auto = {
            "refusal": "auto-replied",
            "attachments_not_kept": "auto-replied",
            "new_message": None,
        }.get(kind, "auto-generated")
        rows: list[dict[str, Any]] = []
        if kind in AUTOMATIC_KINDS:
            allowed = self._allow_automatic(ticket.id, [p.email.lower() for p, _ in audience], caps)
            audience = [(p, r) for p, r in audience if p.email.lower() in allowed]
        over_cap: set[str] = set()
        if kind in NOTICE_KINDS and actor_id is not None:
            over_cap = self._over_notice_cap(actor_id, [p.email.lower() for p, _ in audience], caps)
        for emp, roles in audience:
            address = emp.email.lower()
            reply_addr = self.identity.from_address
            if self.tokens is not None:
                # An answer to a feedback request is a rating, not a message (issue 13).
                purpose = "feedback" if kind == "feedback_request" else "reply"
                token = self.tokens.issue(
                    ticket_id=ticket.id, participant_id=emp.id, purpose=purpose, now=self.now
                )
                reply_addr = reply_address(self.identity.reply_local, token, self.identity.domain)
            msg_id = new_message_id(ref, self.identity.domain)
            payload: dict[str, Any] = {
                "kind": kind,
                "ticket_ref": ref,
                "subject": clean_header_text(ticket.subject),
                "status": ticket.status,
                "target": target,
                "requester": requester,
                "recipient_email": address,
                "recipient_name": emp.name,
                "role": role_label(roles),
                "from_address": self.identity.from_address,
                "from_name": self.identity.from_name,
                "reply_address": reply_addr,
                "message_id": msg_id,
                "in_reply_to": in_reply_to or root,
                "references": list(references),
                "thread_index": thread_index(
                    ticket.created_at,
                    thread_guid(f"{ref}@{self.identity.domain}"),
                    (self.now,) if self.now > ticket.created_at else (),
                ),
                "auto_submitted": auto,
                "actor": e["actor"],
                "actor_id": actor_id,
                "body": e["body"],
                "remark": e["remark"],
                "history": history,
                "applied_commands": list(
                    e["applied_commands"] if actor_id is not None and emp.id == actor_id else ()
                ),
                "commands_hint": list(commands_hint(roles)),
                "extra": dict(e["extra"]),
                "date": self.now.isoformat(),
                "loop_token": self.identity.loop_token,
            }
            suppressed = address in over_cap
            rows.append(
                {
                    "ticket_id": ticket.id,
                    "channel": "email",
                    "kind": kind,
                    "recipient": address,
                    "recipient_id": emp.id,
                    "actor_id": actor_id,
                    "message_id": msg_id,
                    "hidden": hidden or Role.RHC in roles,
                    "payload": payload,
                    "state": "suppressed" if suppressed else "pending",
                    "attempts": 0,
                    "next_attempt_at": self.now,
                    "last_error": self._suppressed_note(actor_id) if suppressed else "",
                    "created_at": self.now,
                    "sent_at": None,
                }
            )
        for row in rows:
            if kind in AUTOMATIC_KINDS:
                caps.automatic.setdefault((ticket.id, row["recipient"]), []).append(self.now)
            if kind in NOTICE_KINDS and actor_id is not None and row["state"] != "suppressed":
                caps.notices.setdefault((actor_id, row["recipient"]), []).append(self.now)
        return rows


def ticket_at(event: m.OutboxEvent) -> TicketAt:
    """The ticket as the event captured it."""
    snap = event.payload["ticket"]
    return TicketAt(
        id=event.ticket_id,
        org_id=snap["org_id"],
        from_employee_id=snap["from_employee_id"],
        assignment_type=snap["assignment_type"],
        to_employee_id=snap["to_employee_id"],
        to_department_id=snap["to_department_id"],
        owner_id=snap["owner_id"],
        status=snap["status"],
        subject=snap["subject"],
        created_at=datetime.fromisoformat(snap["created_at"]),
        root_message_id=snap["root_message_id"],
        copies_upto=int(snap["copies_upto"]),
    )


def status_kind(action: Action) -> str:
    return (
        "escalation" if action in (Action.ESCALATE, Action.TO_HIGHER_AUTHORITY) else "status_change"
    )


def retry_delay(attempts: int, base: float, cap: float) -> timedelta:
    """Exponential backoff: base · 2^(attempts-1), capped."""
    return timedelta(seconds=min(cap, base * (2 ** max(0, attempts - 1))))
