"""The outbox end to end (SPEC §2.5, §2.6): a real relay on 127.0.0.1 that accepts, defers (451),
refuses (550) or is down; retries with backoff, dead letters, `outbox list|retry|deliver`,
concurrent workers, and bounces coming back."""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import select

from gateway.bootstrap import make_worker
from gateway.mail.delivery_worker import DeliveryWorker
from gateway.service.commands import Act, RaiseTicket
from store import models as m
from tests.conftest import (
    Database,
    Env,
    Gateway,
    crlf,
    free_port,
    mail,
    make_env,
    run_cli,
    write_demo_org,
)

REQ = "frank@acme.example"
IT = "it@acme.example"
IT_MEMBERS = {"alice@acme.example", "bob@acme.example", "carol@acme.example"}


@dataclass
class Relay:
    """An aiosmtpd relay that records (envelope recipient, bytes), or answers `reply` at RCPT
    (`data_reply` after reading the data), or is down: its port closed."""

    port: int
    reply: str | None = None
    data_reply: str | None = None
    received: list[tuple[str, bytes]] = field(default_factory=list)
    deferred: list[tuple[str, bytes]] = field(default_factory=list)
    controller: Controller | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.reply:
            return self.reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        with self.lock:
            if self.data_reply:
                self.deferred.extend((r, data) for r in envelope.rcpt_tos)
                return self.data_reply
            self.received.extend((r, data) for r in envelope.rcpt_tos)
        return "250 2.0.0 queued"

    def up(self) -> None:
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def down(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def message_ids(self, which: list[tuple[str, bytes]] | None = None) -> list[str]:
        with self.lock:
            got = list(self.received if which is None else which)
        return [
            str(message_from_bytes(d, policy=policy.default)["Message-ID"]).strip("<>")
            for _, d in got
        ]


@dataclass
class RelayEnv:
    env: Env
    relay: Relay
    worker: DeliveryWorker

    def rows(self) -> list[dict[str, Any]]:
        return self.worker.outbox.rows()

    def raise_ticket(self, subject: str = "Printer jammed", *, fan_out: bool = True) -> str:
        """Frank raises to IT: one event, fanned out (as the worker does first) to four outbox
        rows (his ack, the three active IT members)."""
        ref = str(self.env.service.raise_ticket(RaiseTicket(REQ, IT, subject, "Paper stuck.")))
        if fan_out:
            while self.worker.outbox.fan_out():
                pass
        return ref

    def events(self) -> list[tuple[int, str]]:
        with self.env.app.sessions() as s:
            return [
                (e.id, e.state) for e in s.scalars(select(m.OutboxEvent).order_by(m.OutboxEvent.id))
            ]

    def cli(self, *args: str) -> Any:
        p = run_cli(self.env.env, *args)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout) if "--json" in args else p.stdout


@pytest.fixture
def relay_env(database: Database, tmp_path: Path) -> Iterator[RelayEnv]:
    """The demo org whose outbound transport is `smtp` to a relay on a free local port."""
    relay = Relay(free_port())
    relay.up()
    env = make_env(
        database,
        tmp_path / "install",
        {
            "TICKETGATE__OUTBOUND__TRANSPORT": "smtp",
            "TICKETGATE__OUTBOUND__RELAY_HOST": "127.0.0.1",
            "TICKETGATE__OUTBOUND__RELAY_PORT": str(relay.port),
            # 15 tickets from one requester at once: no notice held by the per-sender cap.
            "TICKETGATE__MAIL__NOTICES_PER_SENDER_HOUR": "1000",
        },
    )
    try:
        env.import_org(write_demo_org(tmp_path / "install"))
        yield RelayEnv(env, relay, make_worker(env.app))
    finally:
        relay.down()
        env.app.close()


def _unbound(data: bytes) -> bytes:
    return re.sub(rb"={15}\d+==", b"BOUNDARY", data)


def _at(iso: str | None) -> datetime:
    assert iso is not None
    return datetime.fromisoformat(iso)


def test_relay_down_backs_off_then_delivers_once(relay_env: RelayEnv) -> None:
    """While the relay is down rows stay pending with growing backoff (30 s, 60 s, 120 s); once it
    is up each mail arrives exactly once, with the Message-ID it was given when queued."""
    r = relay_env
    r.relay.down()
    r.raise_ticket()
    queued = {row["message_id"] for row in r.rows()}
    assert len(queued) == 4
    clock = r.env.clock
    for attempt, delay in ((1, 30), (2, 60), (3, 120)):
        assert r.worker.run_once() == 4
        rows = r.rows()
        assert {row["state"] for row in rows} == {"pending"}
        assert {row["attempts"] for row in rows} == {attempt}
        assert all("127.0.0.1" in row["last_error"] for row in rows)
        assert {_at(row["next_attempt_at"]) - clock.now() for row in rows} == {
            timedelta(seconds=delay)
        }
        assert r.worker.run_once() == 0  # not due before the backoff ran out
        clock.advance(seconds=delay - 1)
        assert r.worker.run_once() == 0
        clock.advance(seconds=1)
    r.relay.up()
    assert r.worker.run_once() == 4
    assert {(row["state"], row["attempts"]) for row in r.rows()} == {("sent", 4)}
    clock.advance(hours=2)
    assert r.worker.run_once() == 0
    assert sorted(r.relay.message_ids()) == sorted(queued)
    assert {rcpt for rcpt, _ in r.relay.received} == IT_MEMBERS | {REQ}


def test_deferred_after_data_is_resent_with_the_same_message_id(relay_env: RelayEnv) -> None:
    """A 451 after DATA (the relay saw the mail) is retried; the resent mail is byte-for-byte
    the same message with the same Message-ID (at-least-once, stable identity)."""
    r = relay_env
    r.relay.data_reply = "451 4.3.0 Try again later"
    r.raise_ticket()
    assert r.worker.run_once() == 4
    assert {(row["state"], row["attempts"]) for row in r.rows()} == {("pending", 1)}
    assert all("451" in row["last_error"] for row in r.rows())
    first = dict(
        zip(r.relay.message_ids(r.relay.deferred), (d for _, d in r.relay.deferred), strict=True)
    )
    r.relay.data_reply = None
    r.env.clock.advance(seconds=30)
    assert r.worker.run_once() == 4
    second = dict(zip(r.relay.message_ids(), (d for _, d in r.relay.received), strict=True))
    assert sorted(first) == sorted(second) == sorted(row["message_id"] for row in r.rows())
    # Rendered again from the stored row: only the MIME boundary (random per rendering) differs.
    assert all(_unbound(first[k]) == _unbound(second[k]) for k in first)


def test_permanent_and_exhausted_failures_dead_letter_and_retry(relay_env: RelayEnv) -> None:
    """550 dead-letters at once; 451 is retried until `max_attempts` (8), then dead;
    `outbox list --json` shows why; `outbox retry` requeues and `outbox deliver` sends them."""
    r = relay_env
    r.relay.reply = "550 5.1.1 Mailbox unavailable"
    refused = r.raise_ticket("Mouse broken")
    assert r.worker.run_once() == 4
    assert {(row["state"], row["attempts"]) for row in r.rows()} == {("dead", 1)}
    r.relay.reply = "451 4.7.1 Greylisted, try later"
    deferred = r.raise_ticket("Screen dark")
    for attempt in range(1, 9):
        assert r.worker.run_once() == 4
        states = {row["state"] for row in r.rows() if row["ticket"] == deferred}
        assert states == ({"pending"} if attempt < 8 else {"dead"})
        r.env.clock.advance(hours=1)  # past the largest backoff (backoff_max_seconds)
    assert r.worker.run_once() == 0

    listed = r.cli("outbox", "list", "--json")
    assert [(x["ticket"], x["state"], x["attempts"]) for x in listed] == [
        *[(refused, "dead", 1)] * 4,
        *[(deferred, "dead", 8)] * 4,
    ]
    assert all("550" in x["last_error"] for x in listed if x["ticket"] == refused)
    assert all("451" in x["last_error"] for x in listed if x["ticket"] == deferred)
    assert r.relay.received == []

    r.relay.reply = None
    assert r.cli("outbox", "retry", "--json") == {"requeued": 8}
    assert "8 message(s) handled" in r.cli("outbox", "deliver")
    rows = r.rows()
    assert {row["state"] for row in rows} == {"sent"}
    assert sorted(r.relay.message_ids()) == sorted(row["message_id"] for row in rows)


def test_two_delivery_processes_send_each_mail_once(relay_env: RelayEnv) -> None:
    """Two `ticketgate outbox deliver` processes at once over 60 due rows: the relay gets every
    Message-ID exactly once and every row ends `sent` (SKIP LOCKED on PostgreSQL, BEGIN
    IMMEDIATE on SQLite)."""
    r = relay_env
    refs = [r.raise_ticket(f"Badge {i}") for i in range(15)]
    rows = r.rows()
    assert len(rows) == 60 and len(set(refs)) == 15
    with ThreadPoolExecutor(2) as pool:
        outputs = list(pool.map(lambda _: r.cli("outbox", "deliver"), range(2)))
    handled = [int(o.split()[0]) for o in outputs]
    assert sum(handled) == 60, outputs
    counts = Counter(r.relay.message_ids())
    assert counts == Counter({row["message_id"]: 1 for row in rows})
    assert {(row["state"], row["attempts"]) for row in r.rows()} == {("sent", 1)}


def test_two_delivery_processes_fan_out_each_event_once(relay_env: RelayEnv) -> None:
    """Two `ticketgate outbox deliver` processes at once over 30 pending events (15 tickets, an
    ack and a notice each): every event is fanned out exactly once (60 rows, not more), every
    row is sent once, every event ends `done`."""
    r = relay_env
    refs = [r.raise_ticket(f"Badge {i}", fan_out=False) for i in range(15)]
    assert r.rows() == [] and len(set(refs)) == 15
    assert [st for _, st in r.events()] == ["pending"] * 30
    with ThreadPoolExecutor(2) as pool:
        outputs = list(pool.map(lambda _: r.cli("outbox", "deliver"), range(2)))
    handled = [int(o.split()[0]) for o in outputs]
    assert sum(handled) == 60, outputs
    rows = r.rows()
    assert len(rows) == 60
    assert Counter((row["ticket"], row["kind"], row["recipient"]) for row in rows) == Counter(
        {
            (ref, k, a): 1
            for ref in refs
            for k, a in [("ack", REQ)] + [("new_ticket", x) for x in IT_MEMBERS]
        }
    )
    assert Counter(r.relay.message_ids()) == Counter({row["message_id"]: 1 for row in rows})
    assert [st for _, st in r.events()] == ["done"] * 30


def test_concurrent_fan_out_threads_claim_disjoint_events(relay_env: RelayEnv) -> None:
    """Four threads calling `fan_out` at once (each its own session; SKIP LOCKED on PostgreSQL,
    BEGIN IMMEDIATE on SQLite) split the pending events: each handled once, 4 rows per ticket."""
    r = relay_env
    refs = [r.raise_ticket(f"Desk {i}", fan_out=False) for i in range(10)]

    def drain(_: int) -> int:
        n = 0
        while k := r.worker.outbox.fan_out(3):
            n += k
        return n

    with ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(drain, range(4)))
    assert sum(counts) == 20
    rows = r.rows()
    assert Counter(row["ticket"] for row in rows) == Counter({ref: 4 for ref in refs})
    assert len({row["message_id"] for row in rows}) == 40
    assert [st for _, st in r.events()] == ["done"] * 20


# ---- bounces coming back ----------------------------------------------------------------------


def rcpt(x: EmailMessage) -> str:
    return str(x.get("Delivered-To", "")).strip().lower()


def dsn(original: EmailMessage, recipient: str) -> bytes:
    """A Postfix-style RFC 3464 report about `original`, as the recipient's MTA sends it back."""
    headers = "".join(f"{k}: {original[k]}\n" for k in ("From", "To", "Subject", "Message-ID"))
    return crlf(
        f"""\
From: Mail Delivery System <MAILER-DAEMON@mx.acme.example>
To: helpdesk@tickets.acme.example
Subject: Undelivered Mail Returned to Sender
Message-ID: <{uuid.uuid4().hex}@mx.acme.example>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="BND"

--BND
Content-Type: text/plain

I'm sorry to have to inform you that your message could not be delivered.

--BND
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.acme.example

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822; {recipient}
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: Recipient address rejected

--BND
Content-Type: text/rfc822-headers

{headers}
--BND--
""".encode()
    )


def test_bounces_mark_rows_and_suppress_automatic_mail(gateway: Gateway) -> None:
    """A DSN naming our Message-ID marks that row `bounced` (outbox list, ticket history); after
    three hard bounces the address gets no more automatic mail, while others still do."""
    alice = "alice@acme.example"
    refs = []
    for i in range(3):
        assert (
            gateway.send(mail(REQ, [IT], f"Chair {i} wobbles", "Loose screw."), REQ, [IT])[0] == 250
        )
        refs.append(gateway.tickets()[-1]["ref"])
    out = gateway.deliver()
    to_alice = {str(x["Subject"]).split("]")[0][1:]: x for x in out if rcpt(x) == alice}

    def bounce(ref: str) -> None:
        code, _ = gateway.send(dsn(to_alice[ref], alice), "", ["helpdesk@tickets.acme.example"])
        assert code == 250

    bounce(refs[0])
    listed = json.loads(run_cli(gateway.env.env, "outbox", "list", "--json").stdout)
    bounced = [x for x in listed if x["state"] == "bounced"]
    assert [(x["ticket"], x["recipient"]) for x in bounced] == [(refs[0], alice)]
    assert bounced[0]["message_id"] == str(to_alice[refs[0]]["Message-ID"]).strip("<>")
    assert alice in bounced[0]["last_error"]
    assert any(
        alice in h["remark"] and "bounce" in h["remark"] for h in gateway.ticket(refs[0])["history"]
    )
    assert len(gateway.tickets()) == 3  # a bounce is never a ticket

    bounce(refs[1])
    gateway.env.service.act(Act(refs[0], REQ, "cancel"))
    seen = len(gateway.deliver())
    bounce(refs[2])
    gateway.env.service.act(Act(refs[1], REQ, "cancel"))
    after = gateway.deliver()
    first_cancel, second_cancel = after[len(out) : seen], after[seen:]
    assert {rcpt(x) for x in first_cancel} == IT_MEMBERS
    assert {rcpt(x) for x in second_cancel} == IT_MEMBERS - {alice}


def test_verp_envelope_sender_attributes_a_bounce_that_quotes_nothing(gateway: Gateway) -> None:
    """Every mail leaves with its own envelope sender `reply+<bounce token>@domain` (VERP). A
    bounce sent there that quotes nothing of the original (no Message-ID, no headers) still
    marks exactly that mail `bounced`. A forged or altered token is refused at RCPT, and a
    bounce token cannot be used to post on a ticket."""
    alice = "alice@acme.example"
    assert gateway.send(mail(REQ, [IT], "Desk lamp", "Flickers."), REQ, [IT])[0] == 250
    ref = gateway.tickets()[-1]["ref"]
    out = gateway.deliver()
    to_alice = next(x for x in out if rcpt(x) == alice)
    return_paths = {str(x["Return-Path"]).strip("<>") for x in out}
    assert len(return_paths) == len(out)  # one envelope sender per mail
    verp = str(to_alice["Return-Path"]).strip("<>")
    assert verp.startswith("reply+") and verp.endswith("@tickets.acme.example")
    assert verp != str(to_alice["Reply-To"])

    quoting_nothing = (
        "From: Mail Delivery System <MAILER-DAEMON@mx.elsewhere.example>\r\n"
        f"To: {verp}\r\n"
        "Subject: Undeliverable\r\n"
        f"Message-ID: <{uuid.uuid4().hex}@mx.elsewhere.example>\r\n"
        "\r\n"
        "Your message could not be delivered. Mailbox full.\r\n"
    ).encode()
    forged = verp.replace("reply+", "reply+a", 1)
    assert gateway.send(quoting_nothing, "", [forged])[0] == 550
    assert gateway.send(quoting_nothing, "", [verp])[0] == 250
    listed = json.loads(run_cli(gateway.env.env, "outbox", "list", "--json").stdout)
    bounced = [x for x in listed if x["state"] == "bounced"]
    assert [(x["ticket"], x["recipient"]) for x in bounced] == [(ref, alice)]
    assert bounced[0]["message_id"] == str(to_alice["Message-ID"]).strip("<>")
    assert any(alice in h["remark"] for h in gateway.ticket(ref)["history"])

    # Alice (a participant) mailing the bounce address instead of the Reply-To: not a reply.
    messages = len(gateway.ticket(ref)["messages"])
    reply = mail(alice, [verp], "Re: Desk lamp", "I will bring a new bulb.")
    gateway.send(reply, alice, [verp])
    assert len(gateway.ticket(ref)["messages"]) == messages
