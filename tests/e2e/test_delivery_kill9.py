"""kill -9 of the delivery worker in the middle of 1,000 mails (issue 17): `ticketgate run` (its
delivery worker a child process) is killed while it delivers, then started again. Counted at
the sink: every mail arrives, each Message-ID at least once; in the Maildir exactly once (a
re-sent mail finds its own file), at the relay at most twice and only for the one batch that
was in flight (the relay had said 250, the rows were not marked yet: RFC 5321 §6.1 allows
exactly this duplicate, under the same Message-ID)."""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import create_engine, select

from gateway.bootstrap import build
from gateway.config import load_settings
from gateway.service.commands import RaiseTicket
from store import models as m
from tests.conftest import Database, free_port, poll_until
from tests.e2e.test_kill9 import installation

TICKETS = 250  # each: the requester's acknowledgement and a notice to each of IT's 3 members
MAILS = TICKETS * 4
BATCH = 50
KILL_AT = 150  # mails at the sink when the worker is killed (1,000 take ~1.5 s: kill early)


def message_id(data: bytes) -> str:
    return str(message_from_bytes(data, policy=policy.default)["Message-ID"]).strip("<>")


@dataclass
class Sink:
    """A relay on 127.0.0.1 that counts each mail it said 250 to, by Message-ID."""

    port: int = field(default_factory=free_port)
    seen: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        mid = message_id(envelope.original_content or b"")
        with self.lock:
            self.seen[mid] += len(envelope.rcpt_tos)
        return "250 2.0.0 queued"

    def counts(self) -> Counter[str]:
        with self.lock:
            return Counter(self.seen)


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    ctl = Controller(s, hostname="127.0.0.1", port=s.port)
    ctl.start()
    try:
        yield s
    finally:
        ctl.stop()


def outbox(database: Database) -> list[tuple[str, str]]:
    eng = create_engine(database.url)
    try:
        with eng.connect() as c:
            return [(mid, st) for mid, st in c.execute(select(m.Outbox.message_id, m.Outbox.state))]
    finally:
        eng.dispose()


@pytest.mark.faults
@pytest.mark.parametrize("transport", ["maildir", "smtp"])
def test_kill9_of_the_delivery_worker_mid_stream(
    database: Database, tmp_path: Path, sink: Sink, transport: str
) -> None:
    extra = {
        "TICKETGATE__OUTBOUND__TRANSPORT": transport,
        "TICKETGATE__OUTBOUND__RELAY_PORT": str(sink.port),
        "TICKETGATE__OUTBOUND__PROCESSES": "true",
        "TICKETGATE__OUTBOUND__BATCH_SIZE": str(BATCH),
        "TICKETGATE__OUTBOUND__LEASE_SECONDS": "2",
        "TICKETGATE__OUTBOUND__POLL_SECONDS": "0.05",
        "TICKETGATE__MAIL__NOTICES_PER_SENDER_HOUR": "100000",
        "TICKETGATE__MAIL__AUTO_MAIL_PER_DAY": "100000",
        "TICKETGATE__MAIL__AUTO_MAIL_PER_TICKET_HOUR": "100000",
    }
    with installation(database, tmp_path, extra) as inst:
        app = build(load_settings(Path(inst.env["TICKETGATE_CONFIG"]), inst.env))
        try:
            for i in range(TICKETS):
                app.service.raise_ticket(
                    RaiseTicket("frank@acme.example", "it@acme.example", f"Printer {i}", "Jam.")
                )
        finally:
            app.close()
        maildir = inst.dir / "outbox" / "new"

        def at_sink() -> Counter[str]:
            if transport == "smtp":
                return sink.counts()
            files = list(maildir.iterdir()) if maildir.exists() else []
            return Counter(message_id(p.read_bytes()) for p in files)

        def how_many() -> int:
            """Mails at the sink, cheaply (reading every file to count took longer than the
            worker needs for the rest)."""
            if transport == "smtp":
                return sum(sink.counts().values())
            return len(os.listdir(maildir)) if maildir.exists() else 0

        inst.start()
        poll_until(
            lambda: how_many() >= KILL_AT,
            timeout=120,
            interval=0.01,
            what=f"{KILL_AT} mails at the sink",
        )
        inst.kill9()
        before = at_sink()
        assert sum(before.values()) < MAILS, "all delivered before the kill: nothing tested"

        inst.start()
        poll_until(
            lambda: {st for _, st in outbox(database)} == {"sent"},
            timeout=180,
            interval=0.2,
            what="every outbox row sent after the restart",
        )
        inst.stop()
        rows = outbox(database)
        assert len(rows) == MAILS
        counts = at_sink()
        assert set(counts) == {mid for mid, _ in rows}  # every mail, at least once
        if transport == "maildir":
            assert set(counts.values()) == {1}
        else:
            twice = [mid for mid, n in counts.items() if n > 1]
            assert max(counts.values()) <= 2 and len(twice) <= BATCH
            assert set(twice) <= set(before)
