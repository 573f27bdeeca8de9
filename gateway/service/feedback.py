"""Feedback on a ticket (SPEC §1.3, §4): the requester's rating 1–5 and comment, one per ticket;
a later answer replaces the earlier one and the change is recorded in the history.

Every channel records an answer here: a mail to the feedback reply address (the intake service,
inside its unit of work) and the Slack buttons (``FeedbackService.record``).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.domain.lifecycle import TERMINAL, Channel, Role, Status
from gateway.service.errors import ActionRefused, NotFound, UserFacingError
from gateway.service.tickets import TicketService, Unit
from store import models as m
from store import schedule_queries as sq

RATINGS = range(1, 6)
# Shown once when an answer had no clear rating (the request's own wording, shorter).
CLARIFY_QUESTION = (
    "Thank you for your answer. We could not tell which rating you meant: please reply with"
    " a single number from 1 (poor) to 5 (excellent); anything after it is your comment."
)


@dataclass(frozen=True)
class FeedbackRecorded:
    """What became of an answer: ``changed`` is False when it said what was stored already;
    ``previous`` is the rating it replaced (None for a first answer)."""

    ticket: str
    rating: int
    comment: str
    changed: bool
    previous: int | None


class FeedbackService:
    """Records feedback answers; the rule (requester only, closed tickets, one answer that a
    later one replaces, every change in the history) lives here alone."""

    def __init__(self, svc: TicketService) -> None:
        self.svc = svc

    def record(
        self,
        *,
        ticket: str | int,
        employee: str,
        rating: int,
        comment: str = "",
        channel: Channel | str = Channel.EMAIL,
    ) -> FeedbackRecorded:
        """Record ``employee``'s answer (an email address) on ``ticket`` (`TKT-n` or n) in its
        own transaction. Raises NotFound, ActionRefused (not the requester, ticket still
        open) or UserFacingError (rating outside 1–5)."""
        with self.svc.unit() as u:
            emp = u.actor(employee)
            t = u.ticket(ticket)
            if not u.d.roles_of(t, emp):
                raise NotFound(f"no ticket TKT-{t.id} for {emp.email}")
            return record_in(u, t, emp, rating=rating, comment=comment, channel=Channel(channel))


def record_in(
    u: Unit,
    t: m.Ticket,
    emp: m.Employee,
    *,
    rating: int,
    comment: str,
    channel: Channel,
) -> FeedbackRecorded:
    """The rule, inside the caller's unit of work (the ticket row locked by the caller)."""
    if rating not in RATINGS:
        raise UserFacingError(f"feedback: the rating is a number from 1 to 5, not {rating}")
    if Role.REQUESTER not in u.d.roles_of(t, emp):
        raise ActionRefused("feedback: only the requester rates a ticket")
    if Status(t.status) not in TERMINAL:
        raise ActionRefused(f"feedback: the ticket is {t.status}; it is rated once it is closed")
    comment = comment.strip()
    ref = f"TKT-{t.id}"
    old = sq.feedback_of(u.conn, t.id)
    if old is not None and (old.rating, old.comment) == (rating, comment):
        return FeedbackRecorded(ref, rating, comment, changed=False, previous=old.rating)
    sq.upsert_feedback(
        u.conn,
        ticket_id=t.id,
        rating=rating,
        comment=comment,
        at=u.now,
        channel=channel.value,
        employee_id=emp.id,
        exists=old is not None,
    )
    if old is None:
        remark = f"rated {rating}/5"
    elif old.rating != rating:
        remark = f"rating changed from {old.rating}/5 to {rating}/5"
    else:
        remark = f"comment of the {rating}/5 rating changed"
    if comment:
        remark += f": {_short(comment)}"
    u.history(t, "feedback", emp, channel, remark)
    t.feedback_due = None  # answered: no reminder
    return FeedbackRecorded(
        ref, rating, comment, changed=True, previous=old.rating if old is not None else None
    )


def unclear_in(u: Unit, t: m.Ticket, emp: m.Employee, *, text: str, channel: Channel) -> bool:
    """An answer without a clear rating: the requester is asked once more (True), and only
    once per ticket (False: nothing is sent; the history keeps what was written)."""
    if t.feedback_clarified:
        u.history(t, "feedback_unclear", emp, channel, f"no rating found: {_short(text)}")
        return False
    t.feedback_clarified = True
    u.history(t, "feedback_unclear", emp, channel, "no rating found; asked once more")
    u.notify.enqueue(
        t,
        "feedback_request",
        actor=None,
        only=frozenset({emp.id}),
        extra={"question": CLARIFY_QUESTION},
    )
    return True


def _short(text: str, limit: int = 300) -> str:
    one = " ".join(text.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"
