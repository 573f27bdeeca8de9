"""Replies threaded correctly while mail arrives over 8 concurrent SMTP connections.

Request Tracker and django-helpdesk mis-thread replies once messages arrive concurrently; here
every reply must land on its parent's ticket (and every parent is exactly one ticket)."""

from __future__ import annotations

import smtplib
import threading
from email.message import EmailMessage
from email.utils import formatdate

from sqlalchemy import select

from store import models as m
from tests.conftest import Gateway, crlf

SENDERS = ["frank@acme.example", "grace@acme.example", "henry@acme.example", "nora@acme.example"]
DEPTS = ["it@acme.example", "facilities@acme.example", "finance@acme.example"]
CONNS = 8


def _parent(i: int) -> tuple[str, str, bytes]:
    sender, dept = SENDERS[i % len(SENDERS)], DEPTS[i % len(DEPTS)]
    m1 = EmailMessage()
    m1["From"], m1["To"], m1["Subject"] = sender, dept, f"Problem {i}"
    m1["Date"], m1["Message-ID"] = formatdate(), f"<parent-{i}@client.example>"
    m1.set_content(f"Parent text {i}.")
    return sender, dept, crlf(m1.as_bytes())


def _reply(i: int) -> tuple[str, str, bytes]:
    sender, dept = SENDERS[i % len(SENDERS)], DEPTS[i % len(DEPTS)]
    r = EmailMessage()
    r["From"], r["To"], r["Subject"] = sender, dept, f"Re: Problem {i}"
    r["Date"], r["Message-ID"] = formatdate(), f"<reply-{i}@client.example>"
    r["In-Reply-To"] = f"<parent-{i}@client.example>"
    r.set_content(f"Reply text {i}.\n\nOn Mon someone wrote:\n> Parent text {i}.")
    return sender, dept, crlf(r.as_bytes())


def _blast(port: int, mails: list[tuple[str, str, bytes]]) -> list[int]:
    codes: list[int] = []
    lock = threading.Lock()

    def worker(chunk: list[tuple[str, str, bytes]]) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
            s.ehlo()
            for sender, rcpt, data in chunk:
                s.mail(sender)
                s.rcpt(rcpt)
                code, _ = s.data(data)
                with lock:
                    codes.append(code)

    threads = [threading.Thread(target=worker, args=(mails[i::CONNS],)) for i in range(CONNS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return codes


def test_replies_land_on_their_tickets_under_concurrency(gateway: Gateway) -> None:
    """40 parents over 8 connections, then 40 replies interleaved with 40 new parents over 8
    connections: 80 tickets, and each reply is a message on its own parent's ticket."""
    first = [_parent(i) for i in range(40)]
    assert _blast(gateway.port, first) == [250] * 40
    # A minute later: each sender's 20 mails of the next blast stay within the burst limit.
    gateway.env.clock.advance(minutes=2)
    mixed = [x for i in range(40) for x in (_reply(i), _parent(40 + i))]
    assert _blast(gateway.port, mixed) == [250] * 80
    gateway.process()
    with gateway.env.app.sessions() as s:
        tickets = {t.root_message_id: t.id for t in s.scalars(select(m.Ticket))}
        msgs = {x.message_id: x.ticket_id for x in s.scalars(select(m.Message))}
    assert len(tickets) == 80
    for i in range(40):
        assert msgs[f"reply-{i}@client.example"] == tickets[f"parent-{i}@client.example"], i
