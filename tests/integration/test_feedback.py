"""Feedback by mail end to end (SPEC §4, issue 13): a closed ticket's request goes out after the
delay, the requester answers the signed reply address over SMTP, the rating is stored, shown in
`ticket show --json`, replaced by a later answer with the change in the history; an unclear
answer gets one clarification; the Slack side records through the same service."""

from __future__ import annotations

from datetime import timedelta
from email.message import EmailMessage
from email.utils import getaddresses

import pytest
from sqlalchemy import select

from gateway.bootstrap import make_scheduler
from gateway.service.commands import Act, RaiseTicket
from gateway.service.errors import ActionRefused, UserFacingError
from gateway.service.feedback import CLARIFY_QUESTION, FeedbackService
from gateway.service.tickets import parse_ref
from store import models as m
from tests.conftest import Gateway, mail

REQ = "frank@acme.example"


def closed_ticket(gw: Gateway) -> str:
    svc = gw.env.service
    ref = svc.raise_ticket(RaiseTicket(REQ, "it@acme.example", "VPN drops", "every hour"))
    svc.act(Act(ref, "alice@acme.example", "take"))
    svc.act(Act(ref, "alice@acme.example", "deliver"))
    svc.act(Act(ref, REQ, "close"))
    return str(ref)


_SEEN: set[str] = set()


def feedback_mails(gw: Gateway, ref: str) -> list[EmailMessage]:
    """The feedback mails to the requester delivered since the last call."""
    new = [x for x in gw.deliver() if str(x["Message-ID"]) not in _SEEN]
    _SEEN.update(str(x["Message-ID"]) for x in new)
    out = [
        x
        for x in new
        if str(x.get("Delivered-To", "")).lower() == REQ
        and ref in str(x["Subject"])
        and "number from" in x.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    ]
    return out  # type: ignore[return-value]


def tick_after(gw: Gateway, **delta: float) -> None:
    gw.env.clock.advance(**delta)
    make_scheduler(gw.env.app).tick()


def answer(gw: Gateway, request: EmailMessage, text: str) -> None:
    to = getaddresses([str(request["Reply-To"])])[0][1]
    assert to.startswith("reply+")
    quoted = "\n".join(
        "> " + line for line in request.get_body(("plain",)).get_content().splitlines()
    )  # type: ignore[union-attr]
    msg = mail(
        REQ,
        [to],
        "Re: " + str(request["Subject"]),
        f"{text}\n\nOn Mon, 9 Mar 2026 at 14:02, Acme Tickets <tickets@tickets.acme.example> wrote:\n{quoted}",
    )
    assert gw.send(msg, REQ, [to])[0] == 250


def history(gw: Gateway, ref: str) -> list[tuple[str, str]]:
    return [(h["actor"], h["remark"]) for h in gw.ticket(ref)["history"]]


def requests_sent(gw: Gateway, ref: str) -> int:
    with gw.env.app.sessions() as s:
        return len(
            s.scalars(
                select(m.OutboxEvent).where(
                    m.OutboxEvent.ticket_id == parse_ref(ref),
                    m.OutboxEvent.kind == "feedback_request",
                )
            ).all()
        )


def test_answer_by_mail_is_stored_and_a_second_replaces_it(gateway: Gateway) -> None:
    """The request goes out an hour after CLOSED; "4 - quick" above the quote is rating 4 and
    comment "quick"; no reminder once answered; "2 - broke again" replaces it, recorded."""
    gw = gateway
    ref = closed_ticket(gw)
    gw.deliver()
    tick_after(gw, minutes=59)
    assert requests_sent(gw, ref) == 0
    tick_after(gw, minutes=1)
    (request,) = feedback_mails(gw, ref)
    assert "How was the service" in request.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "http" not in request.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    answer(gw, request, "4 - quick")
    fb = gw.ticket(ref)["feedback"]
    assert (fb["rating"], fb["comment"]) == (4, "quick")
    assert history(gw, ref)[-1] == (REQ, "rated 4/5: quick")
    assert gw.ticket(ref)["status"] == "CLOSED"  # an answer is no reopening reply
    tick_after(gw, hours=100)
    assert requests_sent(gw, ref) == 1
    answer(gw, request, "2 - it broke again")
    fb = gw.ticket(ref)["feedback"]
    assert (fb["rating"], fb["comment"]) == (2, "it broke again")
    assert history(gw, ref)[-1] == (REQ, "rating changed from 4/5 to 2/5: it broke again")
    with gw.env.app.sessions() as s:
        assert len(s.scalars(select(m.Feedback)).all()) == 1


def test_unclear_answer_gets_one_clarification(gateway: Gateway) -> None:
    """ "thanks" has no rating: one short clarification; another unclear answer gets none; then
    "5" is the rating."""
    gw = gateway
    ref = closed_ticket(gw)
    tick_after(gw, hours=1)
    (request,) = feedback_mails(gw, ref)
    answer(gw, request, "thanks, all good")
    assert gw.ticket(ref)["feedback"] is None
    (clarify,) = feedback_mails(gw, ref)
    assert CLARIFY_QUESTION.split(":")[0] in " ".join(
        clarify.get_body(("plain",)).get_content().split()  # type: ignore[union-attr]
    )
    answer(gw, clarify, "as I said, all good")
    assert feedback_mails(gw, ref) == []
    assert history(gw, ref)[-1][1].startswith("no rating found: as I said, all good")
    answer(gw, clarify, "5")
    assert gw.ticket(ref)["feedback"]["rating"] == 5


def test_unanswered_request_is_reminded_once(gateway: Gateway) -> None:
    """No answer: one reminder 72 hours later, then nothing."""
    gw = gateway
    ref = closed_ticket(gw)
    tick_after(gw, hours=1)
    tick_after(gw, hours=72)
    tick_after(gw, hours=500)
    assert requests_sent(gw, ref) == 2


def test_cancelled_ticket_asks_about_the_decision(gateway: Gateway) -> None:
    """CANCELLED: the question is whether it was clear what happened, not how good the fix was."""
    gw = gateway
    svc = gw.env.service
    ref = str(svc.raise_ticket(RaiseTicket(REQ, "it@acme.example", "Never mind", "")))
    svc.act(Act(ref, REQ, "cancel"))
    tick_after(gw, hours=1)
    (request,) = feedback_mails(gw, ref)
    assert "You cancelled this ticket" in request.get_body(("plain",)).get_content()  # type: ignore[union-attr]


def test_the_service_for_slack_buttons(gateway: Gateway) -> None:
    """FeedbackService.record: requester only, ratings 1–5, closed tickets only; the same answer
    twice changes nothing; the channel is kept."""
    gw = gateway
    fbs = FeedbackService(gw.env.service)
    svc = gw.env.service
    open_ref = str(svc.raise_ticket(RaiseTicket(REQ, "it@acme.example", "Still open", "")))
    with pytest.raises(ActionRefused):
        fbs.record(ticket=open_ref, employee=REQ, rating=4, channel="slack")
    ref = closed_ticket(gw)
    with pytest.raises(ActionRefused):
        fbs.record(ticket=ref, employee="alice@acme.example", rating=5)
    with pytest.raises(UserFacingError):
        fbs.record(ticket=ref, employee=REQ, rating=6)
    first = fbs.record(ticket=ref, employee=REQ, rating=3, comment="ok", channel="slack")
    assert (first.changed, first.previous) == (True, None)
    again = fbs.record(ticket=ref, employee=REQ, rating=3, comment="ok", channel="slack")
    assert again.changed is False
    with gw.env.app.sessions() as s:
        (row,) = s.scalars(select(m.Feedback)).all()
        assert (row.rating, row.channel) == (3, "slack")
    assert [h for h in gw.ticket(ref)["history"] if h["remark"].startswith("rated")] == [
        {
            "status": "CLOSED",
            "actor": REQ,
            "at": gw.ticket(ref)["history"][-1]["at"],
            "channel": "slack",
            "remark": "rated 3/5: ok",
        }
    ]
    # answered: the scheduled request is not sent
    tick_after(gw, hours=2)
    assert requests_sent(gw, ref) == 0
    _ = timedelta
