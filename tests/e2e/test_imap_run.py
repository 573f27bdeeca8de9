"""`ticketgate run` with IMAP intake against a real Dovecot (issue 15): it reconnects after the
server restarts, a broken mailbox stops nothing else, and kill -9 mid-batch loses or doubles
nothing (every message ends in the processed folder, each applied once)."""

from __future__ import annotations

import json
import smtplib
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from store import models as m
from tests.conftest import Database, crlf, poll_until
from tests.dovecot import PASSWORD, Dovecot, running_dovecot
from tests.e2e.test_kill9 import installation

SENDERS = ("frank@acme.example", "grace@acme.example", "alice@acme.example", "bob@acme.example")


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    with running_dovecot() as d:
        yield d


def message(i: int, tag: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = SENDERS[i % 4], "it@acme.example", f"{tag} {i}"
    msg["Date"] = formatdate()
    msg["Message-ID"] = f"<{tag}-{i}@client.example>"
    msg.set_content(f"Mail {i} of {tag}.")
    return crlf(msg.as_bytes())


def imap_env(dovecot: Dovecot, *, broken: bool = False) -> dict[str, str]:
    boxes = [
        {
            "name": "it-desk",
            "host": "127.0.0.1",
            "port": dovecot.port,
            "tls": "none",
            "user": "it",
            "password": PASSWORD,
            "departments": ["it@acme.example"],
        }
    ]
    if broken:
        boxes.append({**boxes[0], "name": "hr-wrong-password", "user": "hr", "password": "nope"})
    return {
        "TICKETGATE__IMAP__ENABLED": "true",
        "TICKETGATE__IMAP__MAILBOXES": json.dumps(boxes),
        "TICKETGATE__IMAP__BACKOFF_SECONDS": "0.2",
        "TICKETGATE__IMAP__BACKOFF_MAX_SECONDS": "1",
        "TICKETGATE__SMTP__SENDER_RATE_PER_HOUR": "100000",
    }


def counts(database: Database) -> tuple[int, int]:
    """(tickets, processing records) in the installation's database."""
    engine = create_engine(database.url)
    try:
        with engine.connect() as c:
            tickets = c.scalar(select(func.count()).select_from(m.Ticket)) or 0
            records = c.scalar(select(func.count()).select_from(m.InboundMail)) or 0
            return int(tickets), int(records)
    finally:
        engine.dispose()


def settled(database: Database, dovecot: Dovecot, n: int) -> bool:
    return counts(database)[0] == n and dovecot.count("it", "Processed") == n


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Database:
    return Database("sqlite", f"sqlite:///{tmp_path}/tg.db")


def test_run_reconnects_after_dovecot_restarts(
    sqlite_db: Database, dovecot: Dovecot, tmp_path: Path
) -> None:
    """Mail APPENDed before and after Dovecot restarts becomes one ticket each and is moved;
    the log says lost / backing off / connected once each time; a mailbox with a wrong
    password backs off alone; /metrics shows the IMAP counters."""
    with installation(sqlite_db, tmp_path, imap_env(dovecot, broken=True)) as inst:
        inst.start()
        dovecot.append("it", [message(i, "before") for i in range(10)])
        poll_until(lambda: settled(sqlite_db, dovecot, 10), timeout=30, what="10 tickets moved")
        dovecot.restart()
        dovecot.append("it", [message(i, "after") for i in range(10)])
        poll_until(lambda: settled(sqlite_db, dovecot, 20), timeout=30, what="20 tickets moved")
        assert counts(sqlite_db) == (20, 20)
        assert dovecot.count("it", "INBOX") == 0
        # SMTP went on beside the failing mailbox and the restart.
        with smtplib.SMTP("127.0.0.1", inst.smtp_port, timeout=30) as smtp:
            smtp.sendmail(SENDERS[0], ["it@acme.example"], message(0, "by-smtp"))
        poll_until(lambda: counts(sqlite_db) == (21, 21), timeout=30, what="the SMTP mail")
        port = inst.env["TICKETGATE__HTTP__PORT"]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        text = metrics.decode()
        assert 'ticketgate_imap_connected{mailbox="it-desk"} 1' in text
        assert 'ticketgate_imap_connected{mailbox="hr-wrong-password"} 0' in text
        assert 'ticketgate_imap_events_total{mailbox="it-desk",event="processed"} 20' in text
        assert 'ticketgate_imap_messages{mailbox="it-desk",state="processed"} 20' in text
        log = inst.log.read_text()
        assert log.count("imap it-desk: lost") >= 1
        assert "imap it-desk: backing off" in log
        assert log.count("imap it-desk: connected") >= 2
        assert "imap hr-wrong-password: backing off (cannot connect" in log
        # One line per change of state, not one per failed try.
        assert log.count("imap hr-wrong-password: backing off") == 1


@pytest.mark.faults
def test_kill9_during_a_batch_of_100_applies_each_once(
    sqlite_db: Database, dovecot: Dovecot, tmp_path: Path
) -> None:
    """kill -9 of `ticketgate run` while it applies a batch of 100 messages, then a restart:
    100 tickets, one per message, and all 100 in the processed folder."""
    dovecot.append("it", [message(i, "batch") for i in range(100)])
    with installation(sqlite_db, tmp_path, imap_env(dovecot)) as inst:
        inst.start()
        poll_until(lambda: counts(sqlite_db)[0] >= 5, timeout=30, what="processing under way")
        inst.kill9()
        at_kill = counts(sqlite_db)
        inst.start()
        poll_until(lambda: settled(sqlite_db, dovecot, 100), timeout=60, what="all 100 moved")
    assert at_kill[0] < 100, "the kill came after the batch: nothing was interrupted"
    assert counts(sqlite_db) == (100, 100)
    assert dovecot.count("it", "INBOX") == 0 and dovecot.count("it", "Quarantine") == 0
    subjects = [
        m_.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0]
        for m_ in dovecot.messages("it", "Processed")
    ]
    assert sorted(subjects) == sorted(f"batch {i}".encode() for i in range(100))
