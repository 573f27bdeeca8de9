"""Notification events → Slack outbox rows: the department channel's ticket post, its thread,
and DMs; what a channel reads is what an RC may see (SPEC §1.4, §3).

A channel is read by people who are not on the ticket, so a channel row carries no hidden
message, no hidden-copy change and no RHC member's name. Hidden messages and notices about
hidden copies go by DM to the Slack-linked people who may see them; a Slack-linked requester
gets DMs of what happens on their ticket. Rows are rendered into Block Kit by the adapter's
poster (`gateway/slack/poster.py`) when they are delivered."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from gateway.domain.lifecycle import AssignmentType, Role
from gateway.domain.visibility import sees_hidden
from gateway.service.directory import TicketAt
from gateway.service.notify import Notifier, new_message_id, ticket_at
from store import models as m

# Kinds that change what the channel post shows: the post is updated and its thread told.
STATUS_KINDS = frozenset({"status_change", "escalation"})
# Kinds a Slack-linked requester gets by DM.
REQUESTER_DM_KINDS = frozenset({"new_message", "status_change", "escalation", "feedback_request"})


class SlackFanOut:
    """Writes the Slack rows of one event beside its mail rows (a `ChannelFanOut`)."""

    def __call__(self, s: Session, event: m.OutboxEvent, notifier: Notifier) -> list[m.Outbox]:
        e = event.payload
        ticket = ticket_at(event)
        now = datetime.fromisoformat(e["at"])
        hidden = bool(e["hidden"])
        only = frozenset(e["only"]) if e["only"] is not None else None
        exclude = frozenset(e["exclude"])
        kind = event.kind
        rows: list[m.Outbox] = []
        domain = notifier.identity.domain
        ref = f"TKT-{ticket.id}"

        def add(recipient: str, recipient_id: int | None, payload: dict[str, Any]) -> None:
            row = m.Outbox(
                ticket_id=ticket.id,
                channel="slack",
                kind=kind,
                recipient=recipient,
                recipient_id=recipient_id,
                message_id="slack." + new_message_id(ref, domain),
                hidden=hidden,
                payload={"ticket_id": ticket.id, "ref": ref, "kind": kind, **payload},
                state="pending",
                attempts=0,
                next_attempt_at=now,
                last_error="",
                created_at=now,
            )
            s.add(row)
            rows.append(row)

        channel = self._channel(notifier, ticket)
        # Only what the whole ticket hears goes to the channel: not a notice for one person
        # (`only`: an acknowledgement, a refusal, a confirmation of commands), never hidden.
        if channel and not hidden and only is None:
            card = self.card(s, notifier, ticket)
            base = {"channel": channel, "card": card}
            if kind == "new_ticket":
                add(f"slack:#{channel}", None, {**base, "op": "post", "text": e["body"]})
            elif kind == "new_message":
                if e["extra"].get("slack_origin") != channel:
                    add(
                        f"slack:#{channel}",
                        None,
                        {**base, "op": "thread", "actor": e["actor"], "text": e["body"]},
                    )
                # A message may move the status (a reply → REPLIED): the post shows it.
                add(f"slack:#{channel}", None, {**base, "op": "update"})
            elif kind in STATUS_KINDS:
                add(f"slack:#{channel}", None, {**base, "op": "update"})
                note = {**base, "op": "thread", "actor": e["actor"], "remark": e["remark"]}
                add(f"slack:#{channel}", None, {**note, "status": ticket.status, "text": ""})
        # DMs: hidden things to Slack-linked people who may see them; the rest to a
        # Slack-linked requester.
        for emp, roles in notifier.participants(ticket):
            if emp.id in exclude or (only is not None and emp.id not in only):
                continue
            if not emp.slack_user_id:
                continue
            if hidden:
                if not sees_hidden(roles):
                    continue
            elif Role.REQUESTER not in roles or kind not in REQUESTER_DM_KINDS:
                continue
            add(
                f"slack:@{emp.slack_user_id}",
                emp.id,
                {
                    "op": "dm",
                    "user": emp.slack_user_id,
                    "subject": ticket.subject,
                    "status": ticket.status,
                    "actor": e["actor"],
                    "text": e["body"],
                    "remark": e["remark"],
                    "hidden": hidden,
                    "feedback": kind == "feedback_request",
                    "question": str(e["extra"].get("question", "")),
                },
            )
        return rows

    @staticmethod
    def _channel(notifier: Notifier, ticket: TicketAt) -> str | None:
        """The target department's channel; a ticket raised to a person has none."""
        if ticket.assignment_type != AssignmentType.DEPARTMENT.value:
            return None
        dep = notifier.d.get(m.Department, ticket.to_department_id)
        return dep.slack_channel if dep is not None and dep.slack_channel else None

    @staticmethod
    def card(s: Session, notifier: Notifier, ticket: TicketAt) -> dict[str, Any]:
        """What the channel post shows, as an RC sees it: no hidden copy named."""
        d = notifier.d
        live = s.get(m.Ticket, ticket.id)
        category = ""
        if live is not None and live.category_id:
            cat = d.get(m.Category, live.category_id)
            sub = d.get(m.Category, live.sub_category_id) if live.sub_category_id else None
            category = (cat.name if cat else "") + (f"/{sub.name}" if sub else "")
        rc: list[str] = []
        for c in d.copies_of(ticket):
            if c.kind != "RC":
                continue  # SPEC §1.4: an RHC is never disclosed to anyone else
            if c.employee_id is not None:
                rc.append(d.employee_by_id(c.employee_id).name)
            elif c.department_id is not None:
                dep = d.get(m.Department, c.department_id)
                rc.append(dep.name if dep else "")
        return {
            "ref": f"TKT-{ticket.id}",
            "subject": ticket.subject,
            "status": ticket.status,
            "priority": live.priority if live is not None else "",
            "category": category,
            "requester": d.employee_by_id(ticket.from_employee_id).name,
            "target": notifier.target_label(ticket),
            "owner": d.employee_by_id(ticket.owner_id).name if ticket.owner_id else "",
            "rc": rc,
        }
