"""Delivery in batches (issue 17), SQLite and PostgreSQL: fanned-out rows rendered once per
audience, one relay session for a batch, a refused recipient not stopping the others, the
maildir's re-send after a crash, and the channel senders sharing one claim/record loop
(Slack's 429 Retry-After)."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import select

from gateway.bootstrap import make_worker
from gateway.mail.delivery_worker import DeliveryWorker, EmailSender, notice_from_payload
from gateway.mail.outbound import audience
from gateway.service.commands import RaiseTicket
from gateway.service.outbox import DeliveryOutcome, OutboxItem
from store import models as m
from tests.conftest import Database, Env, demo_env, free_port, poll_until

REQ = "frank@acme.example"
IT = "it@acme.example"
IT_MEMBERS = {"alice@acme.example", "bob@acme.example", "carol@acme.example"}
MANY = {
    "TICKETGATE__MAIL__NOTICES_PER_SENDER_HOUR": "1000",
    "TICKETGATE__MAIL__AUTO_MAIL_PER_DAY": "1000",
}


@dataclass
class Relay:
    """An aiosmtpd relay on 127.0.0.1 that records each mail with the session it came in on,
    and refuses RCPT for the addresses in ``refuse``."""

    port: int = field(default_factory=free_port)
    refuse: set[str] = field(default_factory=set)
    received: list[tuple[Session, str, bytes]] = field(default_factory=list)  # session, rcpt, data
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refuse:
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.lock:
            for r in envelope.rcpt_tos:
                self.received.append((session, r, envelope.original_content or b""))
        return "250 2.0.0 queued"

    def sessions(self) -> int:
        with self.lock:
            return len({id(s) for s, _, _ in self.received})  # each held: ids not reused

    def message_ids(self) -> Counter[str]:
        with self.lock:
            return Counter(
                str(message_from_bytes(d, policy=policy.default)["Message-ID"]).strip("<>")
                for _, _, d in self.received
            )


@pytest.fixture
def relay() -> Iterator[Relay]:
    r = Relay()
    ctl = Controller(r, hostname="127.0.0.1", port=r.port)
    ctl.start()
    try:
        yield r
    finally:
        ctl.stop()


def smtp_settings(relay: Relay, **more: str) -> dict[str, str]:
    return {
        "TICKETGATE__OUTBOUND__TRANSPORT": "smtp",
        "TICKETGATE__OUTBOUND__RELAY_PORT": str(relay.port),
        **MANY,
        **more,
    }


def raise_tickets(env: Env, n: int, to: str = IT) -> None:
    for i in range(n):
        env.service.raise_ticket(RaiseTicket(REQ, to, f"Printer {i}", "Paper stuck."))


def rows(env: Env) -> list[m.Outbox]:
    with env.app.sessions() as s:
        return list(s.scalars(select(m.Outbox).order_by(m.Outbox.id)))


def claimed(env: Env, tickets: int) -> tuple[DeliveryWorker, list[OutboxItem]]:
    """``tickets`` raised to IT, fanned out, and their rows claimed by a new worker."""
    raise_tickets(env, tickets)
    worker = make_worker(env.app)
    while worker.outbox.fan_out():
        pass
    return worker, worker.outbox.claim(50)


def email_sender(worker: DeliveryWorker) -> EmailSender:
    sender = worker.senders["email"]
    assert isinstance(sender, EmailSender)
    return sender


def test_fanned_out_rows_render_once_per_audience_and_as_alone(
    database: Database, tmp_path: Path
) -> None:
    """Three tickets to IT: the worker renders each audience once (recipients with the same
    role see the same mail), and every row's bytes are exactly what rendering that row alone
    gives."""
    with demo_env(database, tmp_path / "install", MANY) as env:
        worker, items = claimed(env, 3)
        assert len(items) == 12
        sender = email_sender(worker)
        data, errors = sender.render(items)
        assert errors == {}
        audiences = {repr(audience(notice_from_payload(i.payload))) for i in items}
        assert sender.renderings == len(audiences) < len(items)
        for item in items:
            assert data[item.id] == sender.renderer.render(notice_from_payload(item.payload))


@pytest.mark.parametrize(("per_session", "sessions"), [(100, 1), (8, 3)])
def test_one_relay_session_carries_a_batch(
    database: Database, tmp_path: Path, relay: Relay, per_session: int, sessions: int
) -> None:
    """Twenty mails in one claimed batch go over one SMTP session (relay_sessions = 1); with
    relay_max_per_connection = 8 over three. Each Message-ID arrives once, every row is sent."""
    extra = smtp_settings(
        relay,
        TICKETGATE__OUTBOUND__RELAY_MAX_PER_CONNECTION=str(per_session),
        TICKETGATE__OUTBOUND__RELAY_SESSIONS="1",
    )
    with demo_env(database, tmp_path / "install", extra) as env:
        raise_tickets(env, 5)
        assert make_worker(env.app).run_once() == 20
        assert relay.sessions() == sessions
        assert relay.message_ids() == Counter({r.message_id: 1 for r in rows(env)})
        assert {(r.state, r.attempts) for r in rows(env)} == {("sent", 1)}


def threads_named(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


@pytest.mark.parametrize("transport", ["smtp", "maildir"])
def test_a_stopped_worker_leaves_no_sender_threads(
    database: Database, tmp_path: Path, relay: Relay, transport: str
) -> None:
    """A batch over four relay sessions (or a maildir batch) runs on the transport's threads;
    once the worker has stopped, none of them is left (`run` stopping, `outbox deliver`)."""
    prefix = "relay-session" if transport == "smtp" else "maildir-fsync"
    extra = smtp_settings(relay, TICKETGATE__OUTBOUND__RELAY_SESSIONS="4")
    if transport == "maildir":
        extra = {**MANY, "TICKETGATE__OUTBOUND__TRANSPORT": "maildir"}
        extra["TICKETGATE__OUTBOUND__MAILDIR"] = str(tmp_path / "outbox")
    with demo_env(database, tmp_path / "install", extra) as env:
        raise_tickets(env, 10)
        before = threads_named(prefix)
        worker = make_worker(env.app)
        worker.start()
        poll_until(
            lambda: [r.state for r in rows(env)] == ["sent"] * 40, timeout=30, what="40 sent"
        )
        assert len(threads_named(prefix)) > len(before)
        worker.stop()
        assert threads_named(prefix) == before
        if transport == "smtp":
            assert relay.message_ids() == Counter({r.message_id: 1 for r in rows(env)})


def test_a_refused_recipient_does_not_stop_the_session(
    database: Database, tmp_path: Path, relay: Relay
) -> None:
    """The relay refuses bob (550) in the middle of a batch: his rows are dead-lettered, the
    session goes on (RSET) and everyone else's mail arrives, over that one session."""
    relay.refuse = {"bob@acme.example"}
    with demo_env(database, tmp_path / "install", smtp_settings(relay)) as env:
        raise_tickets(env, 3)
        assert make_worker(env.app).run_once() == 12
        states = Counter((r.recipient, r.state) for r in rows(env))
        assert states == Counter(
            {
                ("bob@acme.example", "dead"): 3,
                ("alice@acme.example", "sent"): 3,
                ("carol@acme.example", "sent"): 3,
                (REQ, "sent"): 3,
            }
        )
        assert all("550" in r.last_error for r in rows(env) if r.state == "dead")
        assert relay.sessions() == 1 and len(relay.received) == 9


def maildir_files(env: Env) -> list[Path]:
    box = env.dir / "outbox"
    return sorted([*(box / "new").iterdir(), *(box / "cur").iterdir()])


def test_maildir_resend_after_a_crash_writes_each_mail_once(
    database: Database, tmp_path: Path
) -> None:
    """The worker wrote a batch into the Maildir and died before marking the rows: once the
    lease ran out the rows are claimed again (attempt 2) and found delivered, also one a reader
    already moved to cur/; the Maildir holds each Message-ID once and every row is sent."""
    with demo_env(database, tmp_path / "install", MANY) as env:
        worker, items = claimed(env, 2)
        outcomes = email_sender(worker).deliver(items)
        assert {o.result for o in outcomes} == {"sent"}  # ... and then the crash: not recorded
        assert {r.state for r in rows(env)} == {"sending"}
        first = maildir_files(env)
        assert len(first) == 8
        first[0].rename(env.dir / "outbox" / "cur" / f"{first[0].name}:2,S")
        assert worker.run_once() == 0  # the lease still holds
        env.clock.advance(seconds=301)
        assert worker.run_once() == 8
        assert {(r.state, r.attempts) for r in rows(env)} == {("sent", 2)}
        files = maildir_files(env)
        ids = Counter(
            str(message_from_bytes(p.read_bytes(), policy=policy.default)["Message-ID"]).strip("<>")
            for p in files
        )
        assert ids == Counter({r.message_id: 1 for r in rows(env)})


@dataclass
class FakeSlack:
    """A ChannelSender for `slack` rows: answers from a script, records what it was given."""

    script: list[str]
    channel: str = "slack"
    given: list[list[int]] = field(default_factory=list)

    def deliver(self, items: Sequence[OutboxItem]) -> list[DeliveryOutcome]:
        self.given.append([i.id for i in items])
        step = self.script.pop(0)
        if step == "raise":
            raise ConnectionError("slack unreachable")
        if step == "429":
            return [DeliveryOutcome(i.id, "retry", "429 ratelimited", retry_after=7) for i in items]
        return [DeliveryOutcome(i.id, "sent") for i in items]

    def close(self) -> None:
        pass


def add_slack_post(env: Env) -> int:
    now = env.clock.now()
    with env.app.sessions() as s, s.begin():
        row = m.Outbox(
            ticket_id=None,
            channel="slack",
            kind="new_ticket",
            recipient="C0IT",
            message_id="slack-post-1",
            payload={"text": "TKT-1"},
            state="pending",
            attempts=0,
            next_attempt_at=now,
            last_error="",
            created_at=now,
        )
        s.add(row)
        s.flush()
        return row.id


def test_channel_senders_share_the_claim_and_record_loop(
    database: Database, tmp_path: Path
) -> None:
    """One worker with the mail sender and a Slack sender: each gets its channel's rows. A 429
    with Retry-After makes the post due exactly that much later, without using up an attempt;
    a sender that raises leaves its rows for the usual backoff. A worker without a Slack
    sender never claims the post."""
    with demo_env(database, tmp_path / "install", MANY) as env:
        post = add_slack_post(env)
        raise_tickets(env, 1)
        mail_only = make_worker(env.app)
        assert mail_only.run_once() == 4
        assert [(r.channel, r.state) for r in rows(env) if r.id == post] == [("slack", "pending")]

        slack = FakeSlack(["429", "raise", "ok"])
        worker = DeliveryWorker(mail_only.outbox, {**mail_only.senders, "slack": slack}, batch=10)
        assert worker.run_once() == 1
        [row] = [r for r in rows(env) if r.id == post]
        assert (row.state, row.attempts, row.last_error) == ("pending", 0, "429 ratelimited")
        due = row.next_attempt_at.replace(tzinfo=None)
        assert due == (env.clock.now() + timedelta(seconds=7)).replace(tzinfo=None)
        env.clock.advance(seconds=6)
        assert worker.run_once() == 0
        env.clock.advance(seconds=1)
        assert worker.run_once() == 1  # the sender raises: retried after the 30 s backoff
        [row] = [r for r in rows(env) if r.id == post]
        assert (row.state, row.attempts) == ("pending", 1)
        assert "ConnectionError" in row.last_error
        env.clock.advance(seconds=30)
        assert worker.run_once() == 1
        assert slack.given == [[post], [post], [post]]
        assert {(r.channel, r.state) for r in rows(env)} == {("email", "sent"), ("slack", "sent")}


@dataclass
class StuckSlack:
    """A ChannelSender for `slack` rows that does not come back until released (a Slack
    that answers nothing, within the client's timeout)."""

    channel: str = "slack"
    release: threading.Event = field(default_factory=threading.Event)
    entered: threading.Event = field(default_factory=threading.Event)

    def deliver(self, items: Sequence[OutboxItem]) -> list[DeliveryOutcome]:
        self.entered.set()
        assert self.release.wait(60)
        return [DeliveryOutcome(i.id, "sent") for i in items]

    def close(self) -> None:
        self.release.set()


def test_a_stuck_channel_holds_only_its_own_rows(database: Database, tmp_path: Path) -> None:
    """The running worker has a lane per channel: while the Slack sender hangs on a post,
    mail raised meanwhile is still delivered to the Maildir; released, the post is sent."""
    with demo_env(database, tmp_path / "install", MANY) as env:
        mail_only = make_worker(env.app)
        slack = StuckSlack()
        worker = DeliveryWorker(
            mail_only.outbox, {**mail_only.senders, "slack": slack}, poll_seconds=0.05
        )
        post = add_slack_post(env)
        worker.start()
        try:
            assert slack.entered.wait(30)
            raise_tickets(env, 2)  # an acknowledgement and three notices each
            # A file is durable before its row is marked sent: wait for both.
            poll_until(
                lambda: (
                    (env.dir / "outbox" / "new").is_dir()
                    and len(maildir_files(env)) == 8
                    and {r.state for r in rows(env) if r.channel == "email"} == {"sent"}
                ),
                timeout=30,
                what="the mails, sent",
            )
            states = {(r.channel, r.state) for r in rows(env)}
            assert states == {("email", "sent"), ("slack", "sending")}
            slack.release.set()
            poll_until(
                lambda: [r.state for r in rows(env) if r.id == post] == ["sent"],
                timeout=30,
                what="the post",
            )
        finally:
            worker.stop()
        assert not [t for t in threading.enumerate() if t.name.startswith("delivery")]


def test_a_failing_event_is_marked_failed_and_the_rest_fan_out(
    database: Database, tmp_path: Path
) -> None:
    """An event that cannot be fanned out (its payload lacks what fan-out reads) fails alone:
    the batch is done again event by event, the others (an acknowledgement and a notice per
    ticket) yield their rows: all but the first ticket's acknowledgement."""
    with demo_env(database, tmp_path / "install", MANY) as env:
        raise_tickets(env, 2)
        with env.app.sessions() as s, s.begin():
            first = s.scalars(select(m.OutboxEvent).order_by(m.OutboxEvent.id)).first()
            assert first is not None
            broken = dict(first.payload)
            del broken["ticket"]
            first.payload = json.loads(json.dumps(broken))
            broken_id = first.id
        worker = make_worker(env.app)
        assert worker.outbox.fan_out() == 4
        with env.app.sessions() as s:
            events = {e.id: (e.state, e.last_error) for e in s.scalars(select(m.OutboxEvent))}
        assert events[broken_id][0] == "failed" and "KeyError" in events[broken_id][1]
        assert [st for i, (st, _) in events.items() if i != broken_id] == ["done"] * 3
        assert len(rows(env)) == 7


def test_run_starts_delivery_with_every_channel_and_as_processes_when_asked(
    database: Database, tmp_path: Path
) -> None:
    """`run` gives a delivery thread the other channels' senders beside mail; it starts the
    workers as processes when `outbound.processes` says so, and always for several on
    PostgreSQL (on SQLite several stay threads)."""
    import dataclasses

    from gateway.bootstrap import delivery_processes
    from gateway.runner import _start_loop

    with demo_env(database, tmp_path / "install", MANY) as env:
        started: list[object] = []
        slack = FakeSlack([])
        worker = _start_loop(
            env.app.settings, env.app, "delivery", "delivery-0", False, started, {"slack": slack}
        )
        try:
            assert isinstance(worker, DeliveryWorker) and started == [worker]
            assert sorted(worker.senders) == ["email", "slack"]
            assert worker.senders["slack"] is slack
        finally:
            assert isinstance(worker, DeliveryWorker)
            worker.stop()
        s = env.app.settings
        out = s.outbound
        assert not delivery_processes(s)
        assert delivery_processes(
            dataclasses.replace(s, outbound=dataclasses.replace(out, processes=True))
        )
        several = dataclasses.replace(s, outbound=dataclasses.replace(out, workers=2))
        assert delivery_processes(several) == s.database.url.startswith("postgresql")


def test_a_batch_is_split_over_concurrent_relay_sessions(
    database: Database, tmp_path: Path, relay: Relay
) -> None:
    """With relay_sessions = 2, a claimed batch of 50 goes over two sessions at once, the
    last 10 rows over one. Each outcome lands on its own row: bob's mails, refused in every
    part, are dead-lettered, everyone else's sent, each Message-ID once."""
    relay.refuse = {"bob@acme.example"}
    extra = smtp_settings(
        relay, TICKETGATE__OUTBOUND__RELAY_SESSIONS="2", TICKETGATE__OUTBOUND__BATCH_SIZE="50"
    )
    with demo_env(database, tmp_path / "install", extra) as env:
        raise_tickets(env, 15)
        assert make_worker(env.app).run_once() == 60
        assert relay.sessions() == 3
        states = Counter((r.recipient, r.state) for r in rows(env))
        assert states == Counter(
            {
                ("bob@acme.example", "dead"): 15,
                ("alice@acme.example", "sent"): 15,
                ("carol@acme.example", "sent"): 15,
                (REQ, "sent"): 15,
            }
        )
        sent = [r.message_id for r in rows(env) if r.state == "sent"]
        assert relay.message_ids() == Counter({mid: 1 for mid in sent})
