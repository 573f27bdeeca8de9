"""IMAP intake against a real Dovecot on 127.0.0.1 (SPEC §2.1–2.2, issue 15): messages APPENDed
to a folder become tickets, thread as over SMTP, and leave the folder once, after their commit."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from email import policy
from email.message import EmailMessage

import pytest
from sqlalchemy import select

from gateway.bootstrap import make_imap_watcher
from gateway.mail.imap_client import MailboxConfig
from gateway.runners.imap import MailboxWatcher
from store import models as m
from tests.conftest import Gateway, mail, storage_unreachable
from tests.dovecot import PASSWORD, Dovecot, running_dovecot

IT = "it@acme.example"
HR = "hr@acme.example"
REQ = "frank@acme.example"


@pytest.fixture(scope="module")
def dovecot() -> Iterator[Dovecot]:
    """One Dovecot for the module; each test reads folders of its own."""
    with running_dovecot() as d:
        yield d


def box_for(dovecot: Dovecot, user: str = "it", **kw: object) -> MailboxConfig:
    folder = f"in-{uuid.uuid4().hex[:8]}"
    base = MailboxConfig(
        name=f"{user}/{folder}",
        host="127.0.0.1",
        port=dovecot.port,
        tls="none",
        user=user,
        password=PASSWORD,
        folder=folder,
        processed_folder=f"{folder}-done",
        quarantine_folder=f"{folder}-quarantine",
        departments=(IT,) if user == "it" else (HR,),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@dataclass
class Desk:
    """A watched folder of the test's Dovecot and the gateway it feeds."""

    gw: Gateway
    dovecot: Dovecot
    box: MailboxConfig
    watcher: MailboxWatcher

    def append(self, *msgs: object, seen: bool = False) -> None:
        self.dovecot.append(
            self.box.user, [raw(x) for x in msgs], folder=self.box.folder, seen=seen
        )

    def cycle(self) -> None:
        """One pass (queue), the runner, another pass (move): what `run` does in a loop."""
        conn = self.watcher.open()
        try:
            self.watcher.run_pass(conn)
            self.gw.process()
            self.watcher.run_pass(conn)
        finally:
            conn.close()

    def count(self, which: str = "folder") -> int:
        name = getattr(self.box, which if which == "folder" else f"{which}_folder")
        return self.dovecot.count(self.box.user, name)


def raw(msg: object) -> bytes:
    if isinstance(msg, EmailMessage):
        return msg.as_bytes(policy=policy.SMTP)
    assert isinstance(msg, bytes)
    return msg


def desk(gw: Gateway, dovecot: Dovecot, user: str = "it", **kw: object) -> Desk:
    box = box_for(dovecot, user, **kw)
    dovecot.append(box.user, [], folder=box.folder)  # the folder exists before the watcher looks
    return Desk(gw, dovecot, box, make_imap_watcher(gw.env.app, box))


def test_appended_messages_become_tickets_and_leave_the_folder(
    gateway: Gateway, dovecot: Dovecot
) -> None:
    """Two APPENDed mails, one already \\Seen, become two tickets; both end in the processed
    folder, the record says which mailbox and UID they came from."""
    d = desk(gateway, dovecot)
    d.append(mail(REQ, [IT], "Printer", "It jams.", msgid="<p1@client.example>"))
    d.append(
        mail(REQ, [IT], "Opened first", "Read in a client.", msgid="<p2@client.example>"), seen=True
    )
    d.cycle()
    assert [t["subject"] for t in gateway.tickets()] == ["Printer", "Opened first"]
    assert gateway.explain("<p2@client.example>")["outcome"] == "ticket"
    assert (d.count(), d.count("processed"), d.count("quarantine")) == (0, 2, 0)
    t = gateway.tickets()[0]
    assert t["from"]["channel"] == "email" and t["to"]["department"] == IT
    with gateway.env.app.sessions() as s:
        rows = s.execute(select(m.ImapMessage.uid, m.ImapMessage.state)).all()
    assert sorted(rows) == [(1, "processed"), (2, "processed")]
    # Nothing new: another pass queues and moves nothing.
    d.cycle()
    assert len(gateway.tickets()) == 2


def test_reply_threads_as_over_smtp(sqlite_gateway: Gateway, dovecot: Dovecot) -> None:
    """A reply APPENDed with In-Reply-To lands on the ticket its parent raised."""
    d = desk(sqlite_gateway, dovecot)
    d.append(mail(REQ, [IT], "VPN", "Down again.", msgid="<vpn@client.example>"))
    d.cycle()
    reply = mail(
        REQ,
        [IT],
        "Re: VPN",
        "Still down.",
        msgid="<vpn-2@client.example>",
        headers={"In-Reply-To": "<vpn@client.example>"},
    )
    d.append(reply)
    d.cycle()
    (t,) = sqlite_gateway.tickets()
    assert [x["body"] for x in t["messages"]] == ["Down again.", "Still down."]
    assert sqlite_gateway.explain("<vpn-2@client.example>")["rule"] == (
        "threaded by In-Reply-To <vpn@client.example>"
    )
    assert d.count("processed") == 2


def test_unknown_sender_and_automatic_mail_go_to_quarantine_unanswered(
    sqlite_gateway: Gateway, dovecot: Dovecot
) -> None:
    """A stranger's mail is recorded as refused, an auto-reply quarantined; both are moved to
    the quarantine folder and nothing is sent to anyone."""
    d = desk(sqlite_gateway, dovecot)
    d.append(mail("stranger@example.org", [IT], "Hello", "Buy now.", msgid="<s1@example.org>"))
    d.append(
        mail(
            REQ,
            [IT],
            "Out of office",
            "Away.",
            msgid="<ooo@client.example>",
            headers={"Auto-Submitted": "auto-replied"},
        )
    )
    d.cycle()
    assert sqlite_gateway.explain("<s1@example.org>")["rule"] == "refused: sender not an employee"
    assert sqlite_gateway.explain("<ooo@client.example>")["outcome"] == "quarantined"
    assert (d.count(), d.count("processed"), d.count("quarantine")) == (0, 0, 2)
    assert sqlite_gateway.tickets() == [] and sqlite_gateway.deliver() == []


def test_bcc_recovered_from_delivered_to_is_a_hidden_copy(
    sqlite_gateway: Gateway, dovecot: Dovecot
) -> None:
    """HR's mailbox (no departments configured) got a mail To: IT whose Delivered-To names HR:
    one ticket to IT, HR an RHC."""
    d = desk(sqlite_gateway, dovecot, "hr", departments=())
    msg = mail(REQ, [IT], "Laptop for new hire", "Needed Monday.", msgid="<bcc@client.example>")
    d.append(b"Delivered-To: hr@acme.example\r\n" + raw(msg))
    d.cycle()
    (t,) = sqlite_gateway.tickets()
    assert t["to"]["department"] == IT
    assert t["copies"] == {"rc": [], "rhc": [HR]}


@pytest.mark.parametrize("processed_between", [False, True])
def test_same_message_in_two_mailboxes_is_one_ticket(
    gateway: Gateway, dovecot: Dovecot, processed_between: bool
) -> None:
    """The same Message-ID in IT's and HR's mailboxes: one ticket to IT, HR a copy, whether the
    second copy comes while the first is still queued or after it became a ticket; both
    copies end in their processed folders."""
    it, hr = desk(gateway, dovecot, "it"), desk(gateway, dovecot, "hr")
    msg = mail(REQ, [IT], "Desk move", "Where to?", msgid="<both@client.example>")
    it.append(msg)
    hr.append(msg)
    if processed_between:
        it.cycle()
        hr.cycle()
    else:
        for x in (it, hr):
            conn = x.watcher.open()
            x.watcher.run_pass(conn)
            conn.close()
        it.cycle()
        hr.cycle()
    (t,) = gateway.tickets()
    assert t["to"]["department"] == IT and t["copies"]["rhc"] == [HR]
    assert [x.count("processed") for x in (it, hr)] == [1, 1]
    assert [x.count() for x in (it, hr)] == [0, 0]


def test_crash_between_commit_and_move_moves_once_and_applies_once(
    gateway: Gateway, dovecot: Dovecot
) -> None:
    """The watcher queued the mail and died before moving it; a new watcher (a restarted
    gateway) moves it without queueing it again."""
    d = desk(gateway, dovecot)
    d.append(mail(REQ, [IT], "Crash", "Once only.", msgid="<crash@client.example>"))
    conn = d.watcher.open()
    d.watcher.run_pass(conn)  # queued; the runner has not decided, nothing moved
    conn.close()
    assert d.count() == 1
    gateway.process()
    restarted = make_imap_watcher(gateway.env.app, d.box)
    conn = restarted.open()
    restarted.run_pass(conn)
    conn.close()
    assert restarted.counts["queued"] == 0 and restarted.counts["processed"] == 1
    assert len(gateway.tickets()) == 1 and (d.count(), d.count("processed")) == (0, 1)


def test_storage_outage_leaves_the_message_in_place(
    sqlite_gateway: Gateway, dovecot: Dovecot
) -> None:
    """While the database is unreachable the pass fails with StorageUnavailable and the message
    stays in the folder; afterwards it is queued and moved once."""
    from gateway.service.errors import StorageUnavailable

    d = desk(sqlite_gateway, dovecot)
    d.append(mail(REQ, [IT], "Outage", "Still here?", msgid="<outage@client.example>"))
    conn = d.watcher.open()
    try:
        with storage_unreachable(sqlite_gateway.env), pytest.raises(StorageUnavailable):
            d.watcher.run_pass(conn)
        assert d.count() == 1
    finally:
        conn.close()
    d.cycle()
    assert len(sqlite_gateway.tickets()) == 1 and (d.count(), d.count("processed")) == (0, 1)


def test_uidvalidity_change_reads_again_without_applying_twice(
    gateway: Gateway, dovecot: Dovecot, caplog: pytest.LogCaptureFixture
) -> None:
    """The folder is deleted and recreated with the old mail and a new one put back: the new
    mail becomes a ticket, the old one is recognised by its dedupe key and only moved."""
    d = desk(gateway, dovecot)
    first = mail(REQ, [IT], "Before", "old", msgid="<uv1@client.example>")
    d.append(first)
    conn = d.watcher.open()
    d.watcher.run_pass(conn)  # queued, not moved yet
    conn.close()
    with dovecot.client("it") as c:
        before = c.folder_status(d.box.folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"]
        c.delete_folder(d.box.folder)
        c.create_folder(d.box.folder)
        # Dovecot keeps UIDVALIDITY increasing per user (dovecot-uidvalidity).
        assert c.folder_status(d.box.folder, [b"UIDVALIDITY"])[b"UIDVALIDITY"] != before
    d.append(first, mail(REQ, [IT], "After", "new", msgid="<uv2@client.example>"))
    with caplog.at_level(logging.WARNING, logger="ticketgate.imap"):
        d.cycle()
    assert any("UIDVALIDITY" in r.getMessage() for r in caplog.records)
    assert sorted(t["subject"] for t in gateway.tickets()) == ["After", "Before"]
    assert (d.count(), d.count("processed")) == (0, 2)
    assert d.watcher.counts["duplicate"] == 1


def test_start_from_now_leaves_old_mail_alone(sqlite_gateway: Gateway, dovecot: Dovecot) -> None:
    """start_from = "now": what the folder held at the first look stays; new mail is queued."""
    d = desk(sqlite_gateway, dovecot, start_from="now")
    d.append(mail(REQ, [IT], "Old", "from last year", msgid="<old@client.example>"))
    d.cycle()
    d.append(mail(REQ, [IT], "New", "today", msgid="<new@client.example>"))
    d.cycle()
    assert [t["subject"] for t in sqlite_gateway.tickets()] == ["New"]
    assert (d.count(), d.count("processed")) == (1, 1)


def test_backlog_is_queued_in_batches_with_progress(
    sqlite_gateway: Gateway, dovecot: Dovecot, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder of 120 old messages, batch size 50: three commits, progress logged, all moved."""
    d = desk(sqlite_gateway, dovecot)
    d.watcher.batch_size = 50
    senders = ("frank@acme.example", "grace@acme.example", "alice@acme.example", "bob@acme.example")
    msgs = [
        mail(senders[i % 4], [IT], f"Old {i}", "x", msgid=f"<old-{i}@client.example>")
        for i in range(120)
    ]
    dovecot.append("it", [raw(x) for x in msgs], folder=d.box.folder)
    # Old mail of four senders: over the flood guards, which are not what this test is about.
    intake = sqlite_gateway.runner.intake  # type: ignore[attr-defined]
    intake.options = replace(intake.options, sender_burst_per_minute=500, sender_rate_per_hour=500)
    with caplog.at_level(logging.INFO, logger="ticketgate.imap"):
        d.cycle()
    lines = [r.getMessage() for r in caplog.records]
    assert any("120 messages to queue" in x for x in lines)
    assert any("120 of 120 messages queued" in x for x in lines)
    assert len(sqlite_gateway.tickets()) == 120
    assert (d.count(), d.count("processed")) == (0, 120)


def test_server_without_idle_or_move_is_polled_and_copied_expunged(
    sqlite_gateway: Gateway,
) -> None:
    """A server that offers neither IDLE nor MOVE: the watcher polls, and moves by COPY,
    \\Deleted and UID EXPUNGE; the mail ends in the processed folder once."""
    with running_dovecot(capabilities="IMAP4rev1 UIDPLUS LITERAL+ SASL-IR") as dv:
        d = desk(sqlite_gateway, dv)
        conn = d.watcher.open()
        assert (conn.idle, conn.move_supported, conn.uidplus) == (False, False, True)
        conn.close()
        d.append(mail(REQ, [IT], "Old server", "no IDLE", msgid="<poll@client.example>"))
        d.cycle()
        assert len(sqlite_gateway.tickets()) == 1
        assert (d.count(), d.count("processed")) == (0, 1)


def test_imap_check_reports_each_mailbox(sqlite_gateway: Gateway, dovecot: Dovecot) -> None:
    """`ticketgate imap check`: logs in to each mailbox, says what the server offers and how
    many messages wait; a mailbox that cannot log in is reported and the exit status is 1."""
    import json

    from tests.conftest import run_cli

    d = desk(sqlite_gateway, dovecot)
    d.append(mail(REQ, [IT], "Waiting", "x", msgid="<check@client.example>"))
    good = {
        "name": "it-desk",
        "host": "127.0.0.1",
        "port": dovecot.port,
        "tls": "none",
        "user": "it",
        "password": PASSWORD,
        "folder": d.box.folder,
    }
    env = {**sqlite_gateway.env.env, "TICKETGATE__IMAP__MAILBOXES": json.dumps([good])}
    r = run_cli(env, "imap", "check")
    assert r.returncode == 0, r.stderr
    assert "it-desk: 127.0.0.1" in r.stdout and "IDLE yes, MOVE yes" in r.stdout
    assert "not read yet: 1 messages to queue at the first run" in r.stdout
    bad = {**good, "name": "wrong", "password": "nope"}
    env["TICKETGATE__IMAP__MAILBOXES"] = json.dumps([good, bad])
    r = run_cli(env, "imap", "check", "--json")
    assert r.returncode == 1
    report = json.loads(r.stdout)
    assert [x["ok"] for x in report] == [True, False]
    assert report[0]["to_queue"] == 1 and report[0]["folders"]["folder"]["messages"] == 1
    assert "cannot log in" in report[1]["error"]
    assert d.count() == 1  # a check reads; it queues and moves nothing
    # The processing record names the mailbox and UID the mail came from.
    d.cycle()
    r = run_cli(env, "mail", "explain", "<check@client.example>")
    assert r.returncode == 0, r.stderr
    assert f"imap:    mailbox {d.box.name}, UID 1 (processed)" in r.stdout


@pytest.mark.faults
def test_first_run_against_10000_messages_is_bounded(
    sqlite_gateway: Gateway, dovecot: Dovecot, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder of 10,000 old messages of ~5 KB (50 MB): one pass queues them all in batches of
    100, logs its progress, and its Python heap never holds more than a few batches."""
    import tracemalloc

    d = desk(sqlite_gateway, dovecot)
    filler = ("x" * 76 + "\n") * 64
    with dovecot.client("it") as c:
        for i in range(10_000):
            msg = mail(REQ, [IT], f"Old {i}", filler, msgid=f"<big-{i}@client.example>")
            c.append(d.box.folder, raw(msg))
    conn = d.watcher.open()
    tracemalloc.start()
    try:
        with caplog.at_level(logging.INFO, logger="ticketgate.imap"):
            d.watcher.run_pass(conn)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        conn.close()
    lines = [r.getMessage() for r in caplog.records]
    assert any("10000 messages to queue" in x for x in lines)
    assert [x for x in lines if "of 10000 messages queued" in x][-1].startswith(
        f"imap {d.box.name}: 10000 of 10000"
    )
    assert len([x for x in lines if "of 10000 messages queued" in x]) == 20  # every 500
    assert d.watcher.counts["queued"] == 10_000
    assert peak < 20 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB for 50 MB of mail"


def test_second_copy_while_the_runner_holds_the_first_still_adds_its_department(
    sqlite_gateway: Gateway, dovecot: Dovecot
) -> None:
    """The runner has read the mail from IT's mailbox (with IT's envelope) when HR's copy
    arrives and widens the queued record: the ticket it raises still gets HR as a copy, once
    the copies are moved."""
    it, hr = desk(sqlite_gateway, dovecot, "it"), desk(sqlite_gateway, dovecot, "hr")
    msg = mail(REQ, [IT], "Race", "Both desks.", msgid="<race@client.example>")
    it.append(msg)
    hr.append(msg)
    conn = it.watcher.open()
    it.watcher.run_pass(conn)
    conn.close()
    runner = sqlite_gateway.runner
    parsed = [runner.parse(q) for q in runner.intake.waiting(32)]  # type: ignore[attr-defined]
    conn = hr.watcher.open()
    hr.watcher.run_pass(conn)  # widens the queued record; the runner read it before
    conn.close()
    runner.intake.process(parsed)  # type: ignore[attr-defined]
    it.cycle()
    hr.cycle()
    (t,) = sqlite_gateway.tickets()
    assert t["to"]["department"] == IT and t["copies"]["rhc"] == [HR]
    assert [x.count("processed") for x in (it, hr)] == [1, 1]
